"""usage: probe_explore.py CODES.npz (from allcodes.py or monitor.py): group AUC of logistic probes fitted on the
training visits (by penalty, and on 2-16 principal components) and ridge r of each cohort volume, on training,
validation and test visits; the true volumes' AUC beside them."""
import sys, numpy as np
from sklearn.linear_model import LogisticRegression, Ridge
from sklearn.metrics import roc_auc_score
from sklearn.preprocessing import StandardScaler
from sklearn.decomposition import PCA
z = np.load(sys.argv[1])
X, sp, g, age, V, vc = z['codes'], z['split'], z['group'], z['age'], z['vols'], list(z['vcols'])
y = np.array([x == 'disease' or x == 'AD' for x in g]); print('groups', set(g), 'splits', {s:(sp==s).sum() for s in set(sp)})
tr, va, te = sp == 'train', sp == 'val', sp == 'test'
sc = StandardScaler().fit(X[tr]); Xs = sc.transform(X)
for C in [1e-4, 1e-3, 1e-2, 1e-1, 1, 10, 100]:
    m = LogisticRegression(C=C, max_iter=5000).fit(Xs[tr], y[tr])
    print(f'LR C={C:g}: train {roc_auc_score(y[tr], m.decision_function(Xs[tr])):.3f} val {roc_auc_score(y[va], m.decision_function(Xs[va])):.3f} test {roc_auc_score(y[te], m.decision_function(Xs[te])):.3f}')
for k in [2, 4, 8, 16]:
    p = PCA(k).fit(Xs[tr]); P = p.transform(Xs)
    m = LogisticRegression(C=1, max_iter=5000).fit(P[tr], y[tr])
    print(f'PCA{k}+LR: train {roc_auc_score(y[tr], m.decision_function(P[tr])):.3f} val {roc_auc_score(y[va], m.decision_function(P[va])):.3f} test {roc_auc_score(y[te], m.decision_function(P[te])):.3f}')
# codes -> volumes generalisation
for j, c in enumerate(vc):
    for a in [1, 100]:
        r = Ridge(alpha=a).fit(Xs[tr], V[tr, j]); p = r.predict(Xs)
        print(f'{c} ridge{a}: r train {np.corrcoef(p[tr], V[tr,j])[0,1]:.3f} val {np.corrcoef(p[va], V[va,j])[0,1]:.3f} test {np.corrcoef(p[te], V[te,j])[0,1]:.3f}')
# true volumes -> group
vs = StandardScaler().fit(V[tr]); Vs = vs.transform(V)
m = LogisticRegression(C=1, max_iter=5000).fit(Vs[tr], y[tr])
print(f'true vols LR: train {roc_auc_score(y[tr], m.decision_function(Vs[tr])):.3f} val {roc_auc_score(y[va], m.decision_function(Vs[va])):.3f} test {roc_auc_score(y[te], m.decision_function(Vs[te])):.3f}')
# two-stage: codes -> predicted vols -> group
Pv = np.column_stack([Ridge(alpha=10).fit(Xs[tr], Vs[tr, j]).predict(Xs) for j in range(len(vc))])
m = LogisticRegression(C=1, max_iter=5000).fit(Pv[tr], y[tr])
print(f'codes->vols->LR: train {roc_auc_score(y[tr], m.decision_function(Pv[tr])):.3f} val {roc_auc_score(y[va], m.decision_function(Pv[va])):.3f} test {roc_auc_score(y[te], m.decision_function(Pv[te])):.3f}')

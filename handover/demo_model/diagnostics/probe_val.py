"""usage: probe_val.py CODES.npz: the same probes fitted on the validation subjects' codes (subjects the encoder never
saw), and on training and validation together, scored on the test subjects."""
import sys, numpy as np
from sklearn.linear_model import LogisticRegression, Ridge
from sklearn.metrics import roc_auc_score
from sklearn.preprocessing import StandardScaler
z = np.load(sys.argv[1])
X, sp, g, age, V, vc = z['codes'], z['split'], z['group'], z['age'], z['vols'], list(z['vcols'])
y = np.array([x == 'disease' for x in g])
tr, va, te = sp == 'train', sp == 'val', sp == 'test'
sc = StandardScaler().fit(X[tr]); Xs = sc.transform(X)
for fit, name in [(va, 'val'), (tr | va, 'train+val')]:
  for C in [1e-3, 1e-2, 1e-1, 1]:
    m = LogisticRegression(C=C, max_iter=5000).fit(Xs[fit], y[fit])
    print(f'{name} LR C={C:g}: train {roc_auc_score(y[tr], m.decision_function(Xs[tr])):.3f} val {roc_auc_score(y[va], m.decision_function(Xs[va])):.3f} test {roc_auc_score(y[te], m.decision_function(Xs[te])):.3f}')
  for a in [1, 10, 100]:
    r = Ridge(alpha=a).fit(Xs[fit], age[fit]); p = r.predict(Xs)
    print(f'{name} age ridge{a}: MAE test {np.abs(p[te]-age[te]).mean():.2f} r {np.corrcoef(p[te], age[te])[0,1]:.3f}')
    r = Ridge(alpha=a).fit(Xs[fit], V[fit,0]); p = r.predict(Xs)
    print(f'{name} vent ridge{a}: r test {np.corrcoef(p[te], V[te,0])[0,1]:.3f}')

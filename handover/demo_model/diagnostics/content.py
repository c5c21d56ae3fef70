"""What the semantic codes hold: R² of a ridge regression from the code to each measured volume and
the age, and the group AUC, in 6 folds of whole subjects over all splits (RUN/codes.pt from
codes.py; volumes from the cohort table). usage: content.py RUN"""
import sys, json, numpy as np, torch
from pathlib import Path
from LDAELib.directions import fit_linear_probe
from LDAELib.training.data import read_cohort
from LDAELib.training.probes import auc
run = Path(sys.argv[1]); D = torch.load(run / "codes.pt")
split = json.loads((run / "split.json").read_text()); rows = read_cohort(Path(split["settings"]["cohort_csv"]))
codes, sub = [], []
for part in ("train", "val", "test"):
    picked = [r for r in rows if r.subject in set(split["subjects"][part])]
    assert [r.subject for r in picked] == D[part]["subject"], "codes.pt was made from another cohort order"
    codes.append(D[part]["codes"]); sub += picked
codes = torch.cat(codes)
targets = {"ventricles_ml": [r.number("ventricles_ml") for r in sub],
           "hippocampus_ml": [r.number("hippocampus_l_ml") + r.number("hippocampus_r_ml") for r in sub],
           "whole_brain_ml": [r.number("whole_brain_ml") for r in sub], "age": [r.number("age") for r in sub]}
subjects = sorted({r.subject for r in sub}); order = np.random.default_rng(0).permutation(len(subjects))
fold_of = {subjects[j]: i % 6 for i, j in enumerate(order)}; fold = np.array([fold_of[r.subject] for r in sub])
for name, v in targets.items():
    y = torch.tensor(v, dtype=torch.float64); pred = torch.zeros_like(y)
    for f in range(6):
        tr, te = torch.from_numpy(fold != f), torch.from_numpy(fold == f)
        a = fit_linear_probe(codes[tr], y[tr], name, "continuous", l2=0.1)
        pred[te] = a.meta["target_mean"] + a.meta["target_std"] * a.score(codes[te]).double()
    print(f"{name:15s} R² {1 - float(((pred - y) ** 2).mean() / y.var(unbiased=False)):+.3f} (SD {float(y.std()):.2f})")
sick = np.array([r.get("group") == "disease" for r in sub]); aucs = []
for f in range(6):
    tr, te = fold != f, fold == f
    d = fit_linear_probe(codes[torch.from_numpy(tr)], torch.tensor(sick[tr], dtype=torch.float64), "d", "binary", l2=0.01)
    aucs.append(auc(d.score(codes[torch.from_numpy(te)]).numpy(), sick[te]))
print("group AUC per fold", " ".join(f"{a:.2f}" for a in aucs), f"mean {np.mean(aucs):.3f}")

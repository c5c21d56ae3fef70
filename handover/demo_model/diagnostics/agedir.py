"""The codes' within-subject change per year as an `age` direction, against the shipped age probe.
usage: agedir.py RUN [N_TEST]   (RUN holds split.json; RUN/bundle the model; edits use the bundle's guidance)
Prints the cosines between directions, the per-year change, and guided edits α −2 … 2 (one unit = 5 years
of the within-subject trend) on the first visits of N test subjects, in ventricle / hippocampus mL (raw measure)."""
import sys, json, math, numpy as np, torch
from pathlib import Path
from LDAELib.inference.image import read_image
from LDAELib.space import to_model_space
from LDAELib.weights import load_model
from LDAELib.pipeline import LDAEPipeline
from LDAELib.directions import Direction
from LDAELib.evaluation.volumes import build_measure, DEFAULT_LABELS, spearman
from LDAELib.training.data import read_cohort, visit_order
torch.set_grad_enabled(False)
run = Path(sys.argv[1]); n_test = int(sys.argv[2]) if len(sys.argv) > 2 else 4
model = load_model(run / "bundle"); pipe = LDAEPipeline(model); sp = model.config.space
split = json.loads((run / "split.json").read_text()); csv = Path(split["settings"]["cohort_csv"])
rows = read_cohort(csv); rows.sort(key=lambda r: (r.subject, visit_order(r), str(r.path)))
for r in rows: r.fields['_cohort_root'] = str(csv.parent)
def ms(r):
    v = read_image(r.path); x, _ = to_model_space(v.data, v.affine, sp); return np.asarray(x, np.float32).squeeze()
train = [r for r in rows if r.subject in set(split["subjects"]["train"])]
codes = torch.cat([pipe.embed(ms(r)) for r in train]).double()
da, dd = model.directions["age"], model.directions["disease"]
z = (codes - da.mean.double()) / da.std.double()
age = torch.tensor([r.number("age") for r in train], dtype=torch.float64)
sick = np.array([r.get("group") == "disease" for r in train]); subj = np.array([r.subject for r in train])
def within_slope(mask):
    num = torch.zeros(z.shape[1], dtype=torch.float64); den = 0.0
    for s in np.unique(subj[mask]):
        i = torch.from_numpy(np.where(subj == s)[0]); zc = z[i] - z[i].mean(0); ac = age[i] - age[i].mean()
        num += (zc * ac[:, None]).sum(0); den += float((ac ** 2).sum())
    return num / den
S = {"healthy": within_slope(~sick), "disease": within_slope(sick), "all": within_slope(np.ones_like(sick))}
u = lambda v: v / v.norm()
wa, wd = u(da.weight.double()), u(dd.weight.double())
for k, v in S.items():
    print(f"within-subject change per year ({k}): |S| {v.norm():.4f} normalised units; cos to age probe {float(u(v) @ wa):+.3f}, to disease probe {float(u(v) @ wd):+.3f}")
print(f"cos(age probe, disease probe) {float(wa @ wd):+.3f}; cos(healthy, disease slopes) {float(u(S['healthy']) @ u(S['disease'])):+.3f}")
E = z.shape[1]
print(f"shipped units: age {da.scale * math.sqrt(E):.3f}, disease {dd.scale * math.sqrt(E):.3f} normalised units per alpha; "
      f"5 years of the healthy within-subject trend: {5 * S['healthy'].norm():.3f}")
# between-subject spread along the healthy within-subject direction
pos = z @ u(S["healthy"]); print(f"training codes' SD along it: {pos.std():.3f}; subject-mean SD {torch.tensor([float(pos[torch.from_numpy(np.where(subj == s)[0])].mean()) for s in np.unique(subj)]).std():.3f}")
long = Direction(name="age", weight=u(S["healthy"]).float(), mean=da.mean, std=da.std, positive="older", negative="younger",
                 alpha_unit="5.0 years", scale=float(5 * S["healthy"].norm() / math.sqrt(E)))
meas = build_measure(train, sp, ms, DEFAULT_LABELS, max_subjects=6)
test = [r for r in rows if r.subject in set(split["subjects"]["test"]) and visit_order(r) == min(visit_order(q) for q in rows if q.subject == r.subject)][:n_test]
alphas = [-2.0, -1.0, 0.0, 1.0, 2.0]
for mult in [float(m) for m in (sys.argv[3:] or ["1"])]:
    long.scale = float(mult * 5 * S["healthy"].norm() / math.sqrt(E))
    for r in test:
        x = ms(r)
        for name, d in (("within", long), ("probe", da)):
            if name == "probe" and mult != 1.0: continue
            out = pipe.edit(x, d, alphas, steps=10).numpy()[:, 0]
            v = [meas.raw(o) for o in out]
            ven = [round(q["ventricles"], 1) for q in v]; hip = [round(q["hippocampus"], 1) for q in v]
            print(f"x{mult:g} {r.subject} {r.get('group')} {name:6s} ven {ven} rho {spearman(alphas, ven):+.2f} hip {hip} rho {spearman(alphas, hip):+.2f} |d| {np.abs(out[-1] - out[0]).mean():.4f}", flush=True)

"""What a move of the code renders whatever its direction: the global brightness change of edits along random directions.
usage: randdir.py RUN BUNDLE N_TRAIN K [SEED]   (RUN holds split.json; the bundle's guidance, T = 10)

K random unit directions in the `age` direction's normalised code space (seeded), each with the `age`
direction's step, next to `age` and `disease` themselves, edited to α ±2 on the first visits of
N training subjects (the `ldae orient` draw with SEED): per direction the mean change over the brain
from −2 to +2 and the evaluation's ventricle change, each subject's and their median. If random moves
darken or brighten the brain as much as `age` does, the brightness change is how this model renders
any move of the code, not something the direction carries."""
import sys, numpy as np, torch
from pathlib import Path
from LDAELib.directions import Direction
from LDAELib.evaluation.orient import first_visits
from LDAELib.evaluation.sections import EvalSettings, Loader, read_inputs
from LDAELib.evaluation.volumes import build_measure, label_values
from LDAELib.pipeline import LDAEPipeline
from LDAELib.weights import load_model
torch.set_grad_enabled(False)
torch.set_num_threads(int(__import__("os").environ.get("LDAE_THREADS", "2")))
run, bundle, n, k = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
seed = int(sys.argv[5]) if len(sys.argv) > 5 else 0
model = load_model(bundle); pipe = LDAEPipeline(model, cache_size=64); sp = model.config.space
inp = read_inputs(EvalSettings(workdir=run, output="/tmp/none", model=bundle)); load = Loader(inp.rows, sp, run)
train = inp.train_rows
da = model.directions["age"]
g = torch.Generator().manual_seed(seed)
dirs = {"age": da, "disease": model.directions["disease"]}
for j in range(k):
    w = torch.randn(da.weight.numel(), generator=g, dtype=torch.float64)
    dirs[f"random{j}"] = Direction("age", (w / w.norm()).float(), da.mean, da.std, 0.0, "", "", "", {}, da.scale, 1)
meas = build_measure(train, sp, load, label_values(inp.cohort_csv.parent / "cohort.json"), max_subjects=16, rng=np.random.default_rng(0))
scans = [(r.subject, load(r)) for r in first_visits(train, n, seed)]
for name, d in dirs.items():
    b, v = [], []
    for _, x in scans:
        out = pipe.edit(x, d, [-2.0, 2.0], steps=10).numpy()[:, 0]
        b.append(float((out[1] - out[0])[x > 0.05].mean())); v.append(meas.measure(out[1])["ventricles"] - meas.measure(out[0])["ventricles"])
    print(f"{name:9s} brain {' '.join(f'{q:+.3f}' for q in b)} (median {np.median(b):+.3f}, median |.| {np.median(np.abs(b)):.3f}); "
          f"ventricles {' '.join(f'{q:+.1f}' for q in v)} mL (median {np.median(v):+.2f})", flush=True)

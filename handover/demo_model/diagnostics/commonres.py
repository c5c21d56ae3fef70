"""The evaluation's ventricle measure taken at a common resolution: every image (training visits for the
calibration, raw test visits, blurred inputs, autoencoder reconstructions) smoothed by a Gaussian of
SIGMA voxels first. Prints how it follows the truth on the raw test visits and the bias of each kind of
image on 12 test subjects. usage: commonres.py RUN BUNDLE SIGMA  (SIGMA 0 = the evaluation's measure)"""
import json, math, sys, numpy as np, torch
from pathlib import Path
from scipy import ndimage as ndi
from LDAELib.weights import load_model
from LDAELib.training.config import Recipe
from LDAELib.training.session import TrainingSession
from LDAELib.evaluation.volumes import build_measure, DEFAULT_LABELS, truth_of, agreement
torch.set_num_threads(1)
S = float(sys.argv[3])
model = load_model(sys.argv[2]); ae = model.autoencoder.float().eval(); sp = model.config.space
run0 = Path(sys.argv[1]); recipe = Recipe.from_dict(json.loads((run0 / 'recipe.json').read_text()))
split = json.loads((run0 / 'split.json').read_text()); root = Path(split['settings']['cohort_csv']).parent
data = TrainingSession(recipe, root, run0, progress=False, echo=lambda s: None).data
for r in data.rows: r.fields['_cohort_root'] = str(root)
idx = {id(r): i for i, r in enumerate(data.rows)}
sm = lambda v: ndi.gaussian_filter(v, S) if S > 0 else v
load = lambda r: np.asarray(data.volumes[idx[id(r)]], np.float32).squeeze()
meas = build_measure([data.rows[i] for i in data.indices['train']], sp, lambda r: sm(load(r)), DEFAULT_LABELS, max_subjects=16, rng=np.random.default_rng(0))
f = lambda v: meas.measure(sm(v))
test = [data.rows[i] for i in data.indices['test']]
for reg in ('ventricles', 'hippocampus'):
    ag = agreement([f(load(r))[reg] for r in test], [truth_of(r, reg) for r in test], [r.subject for r in test])
    print(f"S={S} {reg}: raw test r {ag['pearson_r']:.3f} slope {ag['slope']:.3f} MAE {ag['mae_ml']:.2f} within-r {ag['within_subject_r']:.3f}")
firsts = {}
for r in test: firsts.setdefault(r.subject, r)
res = {}
for r in list(firsts.values())[:12]:
    x = load(r); t = truth_of(r, 'ventricles')
    with torch.inference_mode():
        mu, _ = ae.encode(torch.from_numpy(x)[None, None]); rec = ae.decode(mu).float().numpy()[0, 0]
    for k, v in {'input': x, 'blur0.5': ndi.gaussian_filter(x, 0.5), 'blur0.7': ndi.gaussian_filter(x, 0.7), 'ae': rec}.items():
        res.setdefault(k, []).append(f(v)['ventricles'] - t)
print(f"S={S} ventricle bias: " + ", ".join(f"{k} {np.mean(v):+.2f}±{np.std(v):.2f}" for k, v in res.items()), flush=True)

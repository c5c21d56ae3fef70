"""How far softness alone moves the evaluation's ventricle measure (dark voxels in a fixed ROI), against
the autoencoder's reconstruction, on the first visits of 12 test subjects; and a partial-volume variant
(CSF fraction summed over the ROI) for comparison. usage: blurbias.py RUN BUNDLE [MODE]
MODE: gm (clip((gm − I)/(gm − csf), 0, 1), default), wm (unclipped (wm − I)/(wm − csf)), wmonly (clip((wm − I)/wm, 0, 1))."""
import sys, json, math, numpy as np, torch
from pathlib import Path
from scipy import ndimage as ndi
from LDAELib.weights import load_model
from LDAELib.training.config import Recipe
from LDAELib.training.session import TrainingSession
from LDAELib.evaluation.volumes import build_measure, DEFAULT_LABELS, truth_of, tissue_levels, agreement, BRAIN_THRESHOLD, pearson
torch.set_num_threads(1)
run, bundle = Path(sys.argv[1]), sys.argv[2]
MODE = sys.argv[3] if len(sys.argv) > 3 else "gm"
model = load_model(bundle); ae = model.autoencoder.float().eval(); sp = model.config.space
recipe = Recipe.from_dict(json.loads((run / 'recipe.json').read_text()))
split = json.loads((run / 'split.json').read_text()); root = Path(split['settings']['cohort_csv']).parent
data = TrainingSession(recipe, root, run, progress=False, echo=lambda s: None).data
for r in data.rows: r.fields['_cohort_root'] = str(root)
idx = {id(r): i for i, r in enumerate(data.rows)}
load = lambda r: np.asarray(data.volumes[idx[id(r)]], np.float32).squeeze()
train = [data.rows[i] for i in data.indices['train']]
meas = build_measure(train, sp, load, DEFAULT_LABELS, max_subjects=16, rng=np.random.default_rng(0))
roi, vox = meas.rois['ventricles'], meas.voxel_ml
def pv(v):
    csf, gm, wm = tissue_levels(v)
    f = {"gm": lambda: np.clip((gm - v) / (gm - csf), 0, 1), "wm": lambda: (wm - v) / (wm - csf),
         "wmonly": lambda: np.clip((wm - v) / wm, 0, 1)}[MODE]()
    return float((f * (v > BRAIN_THRESHOLD))[roi].sum() * vox)
rows_fit = [r for r in train if r.subject in set(meas.atlas_subjects)]
P = np.array([pv(load(r)) for r in rows_fit]); T = np.array([truth_of(r, 'ventricles') for r in rows_fit])
b = math.copysign(T.std() / P.std(), pearson(P, T)); a = T.mean() - b * P.mean()
measures = {"dark": lambda v: meas.calibrate('ventricles', meas.raw(v)['ventricles']), f"pv-{MODE}": lambda v: a + b * pv(v)}
test = [data.rows[i] for i in data.indices['test']]
for name, f in measures.items():
    ag = agreement([f(load(r)) for r in test], [truth_of(r, 'ventricles') for r in test], [r.subject for r in test])
    print(f"{name}: raw test visits r {ag['pearson_r']:.3f}, MAE {ag['mae_ml']:.2f} mL, within-subject r {ag['within_subject_r']:.3f}")
firsts = {}
for r in test: firsts.setdefault(r.subject, r)
res = {}
for r in list(firsts.values())[:12]:
    x = load(r); t = truth_of(r, 'ventricles')
    with torch.inference_mode():
        mu, _ = ae.encode(torch.from_numpy(x)[None, None]); rec = ae.decode(mu).float().numpy()[0, 0]
    ims = {'input': x, **{f'blur {s}': ndi.gaussian_filter(x, s) for s in (0.5, 0.7, 1.0)}, 'autoencoder': rec}
    for k, v in ims.items():
        res.setdefault(k, []).append([f(v) - t for f in measures.values()])
for k, v in res.items():
    v = np.array(v)
    print(f"{k:12s} " + "   ".join(f"{n} bias {v[:, j].mean():+.2f} ± {v[:, j].std():.2f} mL" for j, n in enumerate(measures)))

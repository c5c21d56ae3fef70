"""Directions read off the gradient estimator: the code direction along which g moves the denoiser's
prediction x̂0 towards the cohort's change in latent space (the groups' mean latent difference for
`disease`, the pooled within-subject latent change per year for `age`), d ∝ Σ_t J_t(y)ᵀ·Δz / ‖·‖,
J_t = ∂g(z_t, t, y)/∂ŷ at forward-noised training latents with their own codes. x̂0 moves by
+(1−ᾱ_t)/√ᾱ_t·w·J_t·δy, so to first order the edit's latent change has a positive inner product with
Δz whatever sign the probe landed on. Edits measured as guide.py does (raw ROI measure, mL).

usage: decdir.py RUN BUNDLE [N_JAC]   RUN: a work folder with latents/ and cache/ of the same cohort and split
"""
import sys, json, math, numpy as np, torch
from pathlib import Path
from LDAELib.weights import load_model
from LDAELib.pipeline import LDAEPipeline
from LDAELib.directions import Direction
from LDAELib.diffusion.schedule import ddim_schedule
from LDAELib.evaluation.similarity import ssim
from LDAELib.evaluation.volumes import build_measure, DEFAULT_LABELS, spearman
from LDAELib.training.config import Recipe
from LDAELib.training.session import TrainingSession
from LDAELib.training.probes import _targets

run, bundle = Path(sys.argv[1]), Path(sys.argv[2]); n_jac = int(sys.argv[3]) if len(sys.argv) > 3 else 24
torch.manual_seed(0)
model = load_model(bundle); pipe = LDAEPipeline(model); su = model.shift_unet
recipe = Recipe.from_dict(json.loads((run / "recipe.json").read_text()))
split = json.loads((run / "split.json").read_text())
sess = TrainingSession(recipe, Path(split["settings"]["cohort_csv"]).parent, run, progress=False)
data, lat = sess.data, sess.latents()
tr = data.indices["train"]; rows = [data.rows[i] for i in tr]
sick, age = _targets(rows, recipe.probes)
z0 = lat.scaled_means(tr)  # N×C×d×h×w, the diffusion's latent
dz_dis = z0[sick.bool()].mean(0) - z0[~sick.bool()].mean(0)
subj = np.array([r.subject for r in rows]); zc = z0.clone(); ac = age.clone().float()
for s in set(subj):
    m = torch.from_numpy(subj == s)
    zc[m] -= zc[m].mean(0); ac[m] -= ac[m].mean()
dz_age = (ac.view(-1, 1, 1, 1, 1) * zc).sum(0) / (ac ** 2).sum()  # latent change per year within subjects
print(f"|Δz disease| {dz_dis.norm():.2f} (per voxel rms {dz_dis.pow(2).mean().sqrt():.4f}); |Δz age/yr| {dz_age.norm():.3f}; "
      f"cos(dis, age) {torch.nn.functional.cosine_similarity(dz_dis.flatten(), dz_age.flatten(), 0):+.3f}", flush=True)
codes = torch.cat([pipe.embed(data.volumes[i]) for i in tr])
old = model.directions
mu, sd = old["disease"].mean, old["disease"].std
sched = ddim_schedule(10)
alphas_cum = torch.as_tensor(sched.alphas_cumprod, dtype=torch.float64)
pick = np.linspace(0, len(tr) - 1, n_jac).round().astype(int)


def aligned(target):
    per_t = []
    for k in range(1, 11):
        t = int(sched.timesteps[k]); a = float(alphas_cum[k])
        grads = torch.zeros(codes.shape[1], dtype=torch.float64)
        for i in pick:
            x0 = z0[i:i + 1]; noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(1000 + int(i) * 17 + k))
            zt = math.sqrt(a) * x0 + math.sqrt(1 - a) * noise
            yh = ((codes[i:i + 1] - mu) / sd).clone().requires_grad_(True)
            with torch.enable_grad():
                _, g = su(zt, torch.full((1,), t), yh * sd + mu)
                (g * target).sum().backward()
            grads += yh.grad[0].double()
        per_t.append(grads / grads.norm())
    P = torch.stack(per_t)
    d = P.mean(0)
    return d / d.norm(), P


def unit(v): return v.double() / v.double().norm()


res = {}
for name, target in (("disease", dz_dis), ("age", dz_age)):
    d, P = aligned(target)
    cs = P @ P.T
    print(f"{name}: cos between t's min {cs.min():.2f}; cos to the probe {float(d @ unit(old[name].weight)):+.3f}; per t to mean "
          + " ".join(f"{float(p @ d):.2f}" for p in P), flush=True)
    res[name] = Direction(name, d.float(), mu, sd, 0.0, old[name].positive, old[name].negative, scale=old[name].scale)

sp = model.config.space
for r in data.rows: r.fields['_cohort_root'] = str(Path(split['settings']['cohort_csv']).parent)
from LDAELib.training.data import read_cohort, visit_order
meas = build_measure([data.rows[i] for i in tr], sp, lambda r: data.volumes[data.rows.index(r)], DEFAULT_LABELS, max_subjects=6)
te = [i for i in data.indices["test"]] if "test" in data.indices else []
if not te:
    test_subj = set(split["subjects"]["test"]); te = [i for i, r in enumerate(data.rows) if r.subject in test_subj]
firsts, seen = [], set()
for i in te:
    if data.rows[i].subject not in seen:
        seen.add(data.rows[i].subject); firsts.append(i)
alphas = [-2.0, -1.0, 0.0, 1.0, 2.0]
for i in firsts[:int(sys.argv[4]) if len(sys.argv) > 4 else 4]:
    x = np.asarray(data.volumes[i], np.float32); r = data.rows[i]
    for label, dirs in (("probe", old), ("aligned", res)):
        for dn in ("disease", "age"):
            out = pipe.edit(x, dirs[dn], alphas, steps=10).numpy()[:, 0]
            v = [meas.raw(o) for o in out]
            ven = [round(q["ventricles"], 1) for q in v]; hip = [round(q["hippocampus"], 1) for q in v]
            print(f"{r.subject} {r.get('group')} {label:7s} {dn:7s} rec {ssim(out[2], x, 1.0):.3f} ven {ven} rho {spearman(alphas, ven):+.2f} "
                  f"hip {hip} rho {spearman(alphas, hip):+.2f} |d| {np.abs(out[-1] - out[0]).mean():.4f}", flush=True)

"""decdir.py, but differentiated through the whole edit: d ∝ Σ_scans ∇_ŷ ⟨ẑ0(y), Δz_disease⟩, ẑ0 the DDIM
sample (T = 10, the model's code guidance, x̂0 clip) from the scan's inverted z_T with its own code, over N
training scans; then edits of 4 test subjects along it. usage: chaindir.py RUN BUNDLE N (run from RUN's parent)."""
import sys, json, numpy as np, torch
from pathlib import Path
RUN, BUNDLE, NJ = sys.argv[1], sys.argv[2], int(sys.argv[3])
exec(open('/work/main/handover/demo_model/diagnostics/decdir.py').read().split("res = {}")[0].replace("run, bundle = Path(sys.argv[1]), Path(sys.argv[2]); n_jac = int(sys.argv[3]) if len(sys.argv) > 3 else 24", f"run, bundle = Path('{RUN}'), Path('{BUNDLE}'); n_jac = {NJ}").split("def aligned")[0])
from LDAELib.diffusion.ddim import guided_eps, ddim_step, sampling_indices, shift_applies, timestep, code_guided_shift
from LDAELib.pipeline.progress import Progress
import time
w = model.config.code_guidance; ref = model.reference_code
def shift(x, t, y):
    if w == 1.0: return su(x, t, y)
    e, g, g0 = su.forward_with_reference(x, t, y, ref)
    return e, code_guided_shift(g, g0, w)
def sample(zT, y):
    x = zT
    for k in sampling_indices(sched):
        e, g = shift(x, timestep(sched, k, x.shape[0], x.device), y)
        e = guided_eps(e, g, k, sched) if shift_applies(k, sched) else e
        x = ddim_step(x, e, k, sched, inverse=False, clip=pipe.x0_clip)
    return x
def chain_dir(target, idx):
    tot = torch.zeros(codes.shape[1], dtype=torch.float64); t0 = time.time()
    for i in idx:
        x = np.asarray(data.volumes[tr[i]], np.float32)
        enc = pipe.encode(x, steps=10)
        yh = ((enc.y_sem - mu) / sd).clone().requires_grad_(True)
        with torch.enable_grad():
            z = sample(enc.z_T[10], yh * sd + mu)
            (z * target).sum().backward()
        gvec = yh.grad[0].double(); tot += gvec / gvec.norm()
    print(f"chain gradient over {len(idx)} scans {time.time()-t0:.0f}s", flush=True)
    return tot / tot.norm()
for r in data.rows: r.fields['_cohort_root'] = str(Path(split['settings']['cohort_csv']).parent)
meas = build_measure([data.rows[i] for i in tr], model.config.space, lambda r: data.volumes[data.rows.index(r)], DEFAULT_LABELS, max_subjects=6)
test_subj = set(split["subjects"]["test"]); te = [i for i, r in enumerate(data.rows) if r.subject in test_subj]
firsts, seen = [], set()
for i in te:
    if data.rows[i].subject not in seen: seen.add(data.rows[i].subject); firsts.append(i)
alphas = [-2.0, -1.0, 0.0, 1.0, 2.0]
for dn, target in (("disease", dz_dis),):
    d = chain_dir(target, pick)
    print(dn, "cos to probe", float(d @ (old[dn].weight.double() / old[dn].weight.double().norm())), flush=True)
    D = Direction(dn, d.float(), mu, sd, 0.0, scale=old[dn].scale)
    torch.save(d, f"/tmp/chain_{dn}_{Path(BUNDLE).name}.pt")
    for i in firsts[:4]:
        x = np.asarray(data.volumes[i], np.float32); r = data.rows[i]
        out = pipe.edit(x, D, alphas, steps=10).numpy()[:, 0]
        v = [meas.raw(o) for o in out]
        ven = [round(q["ventricles"], 1) for q in v]; hip = [round(q["hippocampus"], 1) for q in v]
        print(f"{r.subject} {r.get('group')} chain {dn} ven {ven} rho {spearman(alphas, ven):+.2f} hip {hip} rho {spearman(alphas, hip):+.2f} |d| {np.abs(out[-1]-out[0]).mean():.4f}", flush=True)

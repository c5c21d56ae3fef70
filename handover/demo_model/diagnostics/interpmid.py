"""Where the interpolated middle visit loses to the AE-latent blend (the evaluation's design, section 2).
usage: interpmid.py RUN BUNDLE N MODE VALUES [T]   (RUN holds split.json; first N eligible test subjects of the
evaluation's draw; T DDIM steps, default 10)

MODE guidance: VALUES are code guidances w (the bundle's is 8); the pipeline's guidance set to each.
MODE clip: VALUES are x̂0 clips ("none" for none; the authors' is 1): the round trip of the first
endpoint against its AE reconstruction, the interpolation, and the inverted z_T's SD and largest |value|.
MODE zT: VALUES are step counts T; SLERP (the authors') and LERP of z_T, each against the AE of the middle
visit and against the AE-latent blend, and the cosine of the two endpoints' z_T.
Every line also prints the AE-latent blend's SSIM against the AE of the middle visit; the last line the means."""
import sys, numpy as np, torch
from pathlib import Path
from LDAELib.evaluation.sections import EvalSettings, Loader, read_inputs, select_subjects, _sim
from LDAELib.pipeline import LDAEPipeline
from LDAELib.pipeline.core import slerp
from LDAELib.pipeline.progress import Progress
from LDAELib.weights import load_model
torch.set_grad_enabled(False); torch.set_num_threads(2)
run, bundle, n, mode = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3]), sys.argv[4]
values = [None if v == "none" else float(v) for v in sys.argv[5].split(",")]
T = int(sys.argv[6]) if len(sys.argv) > 6 else 10
model = load_model(bundle)
inp = read_inputs(EvalSettings(workdir=run, output="/tmp/none", model=bundle)); load = Loader(inp.rows, model.config.space, run)
res = {}
def note(key, value, line, text):
    res.setdefault(key, []).append(value); line.append(text)
for subj in [s for s in select_subjects(inp.test_rows, 12, 0) if len(inp.test_rows[s]) >= 3][:n]:
    v = inp.test_rows[subj]; months = [float(r.get("months")) for r in v]
    mid = (months[0] + months[-1]) / 2; m = min(range(1, len(v) - 1), key=lambda i: (abs(months[i] - mid), i)); a, b = m - 1, m + 1
    f = (months[m] - months[a]) / (months[b] - months[a])
    xa, xm, xb = (torch.as_tensor(np.asarray(load(v[i])))[None, None].float() for i in (a, m, b))
    line = [subj, f"f={f:.2f}"]
    for k, value in enumerate(values):
        pipe = LDAEPipeline(model)
        if mode == "guidance":
            pipe.code_guidance = value
        elif mode == "clip":
            pipe.x0_clip = value
        steps = int(value) if mode == "zT" else T
        ea, eb, em = pipe.encode(xa, steps), pipe.encode(xb, steps), pipe.encode(xm, None)
        ae_mid = pipe.decode(em.z0); blend = pipe.decode((1 - f) * ea.z0 + f * eb.z0)
        if k == 0:
            sb = _sim(blend, ae_mid)["ssim"]; note("blend", sb, line, f"blend {sb:.4f}")
        if mode == "zT":
            za, zb = ea.z_T[steps], eb.z_T[steps]
            line.append(f"T{steps} cos(z_T) {float((za * zb).sum() / za.norm() / zb.norm()):.3f}")
            y = (1 - f) * ea.y_sem + f * eb.y_sem
            for name, zt in (("slerp", slerp(za, zb, f)), ("lerp", (1 - f) * za + f * zb)):
                img = pipe.decode(pipe.sample_latents(zt, y, steps, Progress(10**6, None, None)))
                note(f"T{steps} {name}", _sim(img, ae_mid)["ssim"], line, f"{name} {_sim(img, ae_mid)['ssim']:.4f} (vs blend {_sim(img, blend)['ssim']:.4f})")
            continue
        it = _sim(pipe.interpolate(ea, eb, [f], steps), ae_mid)["ssim"]
        if mode == "clip":
            rt = _sim(pipe.reconstruct(ea, steps), pipe.decode(ea.z0))["ssim"]; za = ea.z_T[steps]
            note(f"round trip {value}", rt, line, f"clip {value}: round trip {rt:.4f}")
            line.append(f"z_T SD {float(za.std()):.2f} max {float(za.abs().max()):.0f}")
        note(f"interp {value}", it, line, f"interp {it:.4f}" if mode == "clip" else f"w {value:g}: interp {it:.4f}")
    print(*line, flush=True)
print({k: round(float(np.mean(x)), 4) for k, x in res.items()})

"""How much of a code swap an edit realises, by where sampling starts. Test scan A is decoded with
its own code and with test scan B's from the same start: the fully inverted z_T (the authors'
edit), a partial inversion to DDIM index K, or forward noise to K (seeded). Printed: the
least-squares gain and correlation of the change with B − A inside the brain, and the
reconstruction's SSIM against A (what the start keeps of A). usage: editgain.py RUN [STEPS]"""
import sys, json, numpy as np, torch
from pathlib import Path
from LDAELib.inference.image import read_image
from LDAELib.space import to_model_space
from LDAELib.weights import load_model
from LDAELib.pipeline import LDAEPipeline
from LDAELib.pipeline.progress import Progress
from LDAELib.diffusion.ddim import ddim_step, guided_eps, shift_applies, timestep
from LDAELib.diffusion.schedule import ddim_schedule
from LDAELib.evaluation.similarity import ssim
from LDAELib.training.data import read_cohort, visit_order
torch.set_grad_enabled(False)
run = Path(sys.argv[1]); N = int(sys.argv[2]) if len(sys.argv) > 2 else 10
model = load_model(run / "bundle"); pipe = LDAEPipeline(model); sp = model.config.space
split = json.loads((run / "split.json").read_text()); csv = Path(split["settings"]["cohort_csv"])
crow = read_cohort(csv)
test = {r.subject: r for r in crow if r.subject in set(split["subjects"]["test"]) and visit_order(r) == 1}
def ms(r):
    v = read_image(r.path); x, _ = to_model_space(v.data, v.affine, sp); return np.asarray(x, np.float32).squeeze()
sched = ddim_schedule(N); p = Progress(10**9, None, None); unet = pipe._unet
def step_all(x, y, ks, inverse):
    for k in ks:
        eps, g = unet(x, timestep(sched, k, x.shape[0], x.device), y)
        if inverse or shift_applies(k, sched):
            eps = guided_eps(eps, g, k, sched)
        x = ddim_step(x, eps, k, sched, inverse=inverse, clip=pipe.x0_clip)
    return x
for a, b in (("sub-0014", "sub-0016"), ("sub-0001", "sub-0016"), ("sub-0016", "sub-0014")):
    xa, xb = ms(test[a]), ms(test[b])
    ea, eb = pipe.ensure(xa, N, p, None), pipe.ensure(xb, N, p, None)
    m = (xa > 0.02) | (xb > 0.02); diff = (xb - xa)[m]
    noise = torch.randn(ea.z0.shape, generator=torch.Generator().manual_seed(0)).to(ea.z0)
    for how in ("inverted", "forward"):
        for K in (N, (7 * N) // 10, N // 2):
            if how == "inverted":
                zK = step_all(ea.z0, ea.y_sem, range(K), True)
            else:
                ab = float(sched.alphas_cumprod[K]); zK = ab ** 0.5 * ea.z0 + (1 - ab) ** 0.5 * noise
            outs = [step_all(zK, y, range(K, 0, -1), False) for y in (ea.y_sem, eb.y_sem)]
            img = pipe.decode(torch.cat(outs), p).float().numpy()[:, 0]
            d = (img[1] - img[0])[m]
            gain = float((d * diff).sum() / (diff ** 2).sum()); corr = float(np.corrcoef(d, diff)[0, 1])
            print(f"{a} → code of {b}: {how:8s} to k {K:2d}/{N}: gain {gain:+.3f} corr {corr:+.2f}; reconstruction SSIM vs A {ssim(img[0], xa, 1.0):.3f}", flush=True)

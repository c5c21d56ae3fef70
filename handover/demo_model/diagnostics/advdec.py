"""Experiment: refine the autoencoder's decoder with an added patch-adversarial loss, encoder frozen.

The decoder stage (LDAELib/training/decoder.py) trains decode(μ) on L1 + 0.5·(1 − SSIM) only, and
such a decoder blurs what it cannot predict. This script continues from a bundle's decoder with
that loss plus ``adv_weight`` × a hinge GAN term from a small 3-D PatchGAN, to see whether the
reconstructions get sharper without losing SSIM or moving the ventricle measure (``--score``).
The decoder stage now has the term as a setting (``decoder.adversarial_weight``, docs/training.md);
this script stays for the eleventh run's measurements (hand-over README).

  train:  advdec.py BUNDLE SPLIT_RUN OUT_DIR [--steps N] [--adv-weight W] [--start-adv K]
                    [--save-every M] [--threads T] [--lr 1e-4] [--disc-lr 2e-4] [--adaptive]
          (defaults: 2000 steps, adv weight 0.05, start_adv 200, save every 250, 1 thread, --warmup 100, --seed 0)
  score:  advdec.py BUNDLE SPLIT_RUN --score OUT_DIR/step-00500.pt[:raw] ... | shipped

BUNDLE: the start point (its autoencoder, float32; only "post_quant_conv." and "decoder." train).
SPLIT_RUN: a work folder with recipe.json, split.json and the volume cache (e.g. /work/demo21/dec5k).

Steps < start_adv: the discriminator alone trains, on real x against decode(μ) of the unchanged
decoder (the decoder is not updated, so the GAN phase starts from the bundle's weights exactly).
From start_adv: generator loss = reconstruction_loss(rec, x, ssim_weight=0.5) + w · (−mean D(rec)),
with w = adv_weight, or with --adaptive w = adv_weight · ‖∇_last L_rec‖ / ‖∇_last L_adv‖ on the
decoder's last conv (the taming-transformers rule, clamped to [0, 1e4]); the decoder's lr ramps up
linearly over --warmup steps (a fresh Adam on a converged decoder); then one discriminator step on
hinge(x real, rec.detach() fake). Batches: 2 training visits a step, epoch-wise shuffled with --seed;
augment_volume with p 0.5 from item_generator(seed, 5, step, row), as the decoder stage. Forward
passes under bfloat16 autocast; AdamW betas (0.5, 0.9), no weight decay, decoder gradient clipped
to norm 1; a decoder EMA (decay 0.999, no warm-up: it starts at the bundle's weights).
Discriminator: conv 4³ stride 2 (16) → conv 4³ stride 2 (32) + GroupNorm → conv 4³ stride 1 (64) +
GroupNorm → conv 3³ (1), LeakyReLU 0.2; 1×64×80×64 in, 16×20×16 patch logits out (receptive field
30 voxels); weights N(0, 0.02).
Every 25 steps one log line (window means; also OUT_DIR/log.txt). Every --save-every steps, at the end
and on Ctrl-C or kill -INT/-TERM: OUT_DIR/step-NNNNN.pt = {'ema', 'raw', 'disc': state dicts of plain tensors, 'step'}
(torch.load(..., weights_only=True)). --score loads each file's EMA decoder (FILE:raw the raw one)
into the bundle's autoencoder and prints decscore.py's line: SSIM volume / brain on 9 val + 9 test
visits, ventricle bias on 12 test subjects' first visits.
"""
import argparse, signal, statistics, sys, time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from LDAELib.weights import load_model
from LDAELib.training.autoencoder import reconstruction_loss
from LDAELib.training.augment import augment_volume
from LDAELib.training.decoder import is_decoder_parameter, STAGE_ID
from LDAELib.training.distributed import item_generator
from decscore import load_split, make_scorer  # this folder's scoring (the script's folder is on sys.path)

p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
p.add_argument("bundle"); p.add_argument("split_run"); p.add_argument("out_dir", nargs="?")
p.add_argument("--steps", type=int, default=2000); p.add_argument("--adv-weight", type=float, default=0.05)
p.add_argument("--start-adv", type=int, default=200); p.add_argument("--save-every", type=int, default=250)
p.add_argument("--threads", type=int, default=1); p.add_argument("--lr", type=float, default=1e-4)
p.add_argument("--disc-lr", type=float, default=2e-4); p.add_argument("--warmup", type=int, default=100)
p.add_argument("--adaptive", action="store_true"); p.add_argument("--seed", type=int, default=0)
p.add_argument("--score", nargs="+", metavar="STEP_FILE")
args = p.parse_args()
if args.score is None and args.out_dir is None:
    p.error("OUT_DIR is needed unless --score is given")
torch.set_num_threads(args.threads)

model = load_model(args.bundle); ae = model.autoencoder.float()
base = {k: v.clone() for k, v in ae.state_dict().items()}
data = load_split(args.split_run)


def score_files(files):
    """decscore.py's scoring (same visits, same measure), on decoder states saved by this script."""
    score = make_scorer(ae, model.config.space, data)
    for arg in files:
        if arg == "shipped":
            ae.load_state_dict(base)
        else:
            path, _, which = arg.partition(":")
            ae.load_state_dict({**base, **torch.load(path, weights_only=True)[which or "ema"]})
        score(arg)


if args.score is not None:
    score_files(args.score); sys.exit(0)


class PatchDisc(nn.Module):
    """3-D PatchGAN: B×1×64×80×64 → B×1×16×20×16 logits."""

    def __init__(self, widths=(16, 32, 64)):
        super().__init__()
        a, b, c = widths
        act = lambda: nn.LeakyReLU(0.2, inplace=True)
        self.net = nn.Sequential(
            nn.Conv3d(1, a, 4, 2, 1), act(),
            nn.Conv3d(a, b, 4, 2, 1, bias=False), nn.GroupNorm(8, b), act(),
            nn.Conv3d(b, c, 4, 1, 1, bias=False), nn.GroupNorm(8, c), act(),
            nn.Conv3d(c, 1, 3, 1, 1))  # the k4 s1 conv shrinks each axis by 1; this one keeps it
        for m in self.modules():
            if isinstance(m, nn.Conv3d):
                nn.init.normal_(m.weight, 0.0, 0.02)
                if m.bias is not None: nn.init.zeros_(m.bias)

    def forward(self, x):
        return self.net(x)


out = Path(args.out_dir); out.mkdir(parents=True, exist_ok=True)
logf = open(out / "log.txt", "a")
def log(s):
    print(s, flush=True); logf.write(s + "\n"); logf.flush()
log(f"# {' '.join(sys.argv)}")

dec_params = {n: q for n, q in ae.named_parameters() if is_decoder_parameter(n)}
for n, q in ae.named_parameters(): q.requires_grad_(n in dec_params)
last_w = [q for n, q in dec_params.items() if n.startswith("decoder.") and q.ndim == 5][-1]  # the output conv
ema = {n: q.detach().clone() for n, q in dec_params.items()}
torch.manual_seed(args.seed)
disc = PatchDisc()
opt_g = torch.optim.AdamW(list(dec_params.values()), lr=args.lr, betas=(0.5, 0.9), weight_decay=0.0)
opt_d = torch.optim.AdamW(disc.parameters(), lr=args.disc_lr, betas=(0.5, 0.9), weight_decay=0.0)
train_rows = list(data.indices["train"])
gen = torch.Generator().manual_seed(args.seed)
order, pos = [], 0
autocast = lambda: torch.autocast("cpu", dtype=torch.bfloat16)


def batch(step):
    global order, pos
    rows = []
    while len(rows) < 2:
        if pos >= len(order): order, pos = torch.randperm(len(train_rows), generator=gen).tolist(), 0
        rows.append(train_rows[order[pos]]); pos += 1
    xs = []
    for r in rows:
        g = item_generator(args.seed, STAGE_ID, step, r)
        x = torch.from_numpy(np.asarray(data.volumes[r], np.float32))
        if float(torch.rand((), generator=g)) < 0.5:
            x = augment_volume(x, g)
        xs.append(x)
    return torch.stack(xs)[:, None]


def save(step):
    raw = {n: q.detach().clone() for n, q in dec_params.items()}
    state = {"ema": {n: t.clone() for n, t in ema.items()}, "raw": raw,
             "disc": {k: v.detach().clone() for k, v in disc.state_dict().items()}, "step": step}
    path = out / f"step-{step:05d}.pt"; tmp = path.with_suffix(".tmp")
    torch.save(state, tmp); tmp.replace(path)
    log(f"# saved {path}")


def set_train_mode():
    ae.train()
    for part in (ae.encoder, ae.quant_conv_mu, ae.quant_conv_log_sigma): part.eval()
    disc.train()


def log_window(done):
    m = {k: sum(v) / len(v) for k, v in win.items()}
    extra = f" g_adv {m['g_adv']:+.4f} w {m['w']:.4g} gnorm {m['gnorm']:.3f}" if "g_adv" in m else " (discriminator warm-up)"
    log(f"step {done} s/step {statistics.median(times[-len(win['l1']):]):.2f} L1 {m['l1']:.5f} SSIM {m['ssim']:.4f} "
        f"d_loss {m['d_loss']:.4f} D(real) {m['d_real']:+.3f} D(fake) {m['d_fake']:+.3f}{extra}")
    win.clear()


def interrupt(signum, frame):
    raise KeyboardInterrupt


# Ctrl-C, `kill -INT` (even of a background job, which starts with SIGINT ignored) and `kill` (TERM) save and stop.
signal.signal(signal.SIGINT, interrupt); signal.signal(signal.SIGTERM, interrupt)
win, times, step = {}, [], 0
try:
    for step in range(args.steps):
        t0 = time.perf_counter()
        set_train_mode()
        x = batch(step)
        adv_on = step >= args.start_adv
        with torch.no_grad(), autocast():
            mu, _ = ae.encode(x)
        parts = {}
        if adv_on:
            for g_ in opt_g.param_groups: g_["lr"] = args.lr * min(1.0, (step - args.start_adv + 1) / max(1, args.warmup))
            disc.requires_grad_(False)
            with autocast():
                rec = ae.decode(mu)
                rl, rparts = reconstruction_loss(rec, x, 0.5)
                g_adv = -disc(rec).float().mean()
            if args.adaptive:
                gr = torch.autograd.grad(rl, last_w, retain_graph=True)[0].norm()
                ga = torch.autograd.grad(g_adv, last_w, retain_graph=True)[0].norm()
                w = args.adv_weight * float((gr / (ga + 1e-4)).clamp(0.0, 1e4))
            else:
                w = args.adv_weight
            opt_g.zero_grad(set_to_none=True)
            (rl + w * g_adv).backward()
            gnorm = torch.nn.utils.clip_grad_norm_(list(dec_params.values()), 1.0)
            if not torch.isfinite(gnorm): raise RuntimeError(f"non-finite decoder gradient at step {step + 1}")
            opt_g.step()
            with torch.no_grad():
                torch._foreach_lerp_(list(ema.values()), [q.detach() for q in dec_params.values()], 1.0 - 0.999)
            parts.update(g_adv=float(g_adv.detach()), w=w, gnorm=float(gnorm))
            rec = rec.detach()
        else:
            with torch.no_grad(), autocast():
                rec = ae.decode(mu)
                _, rparts = reconstruction_loss(rec, x, 0.5)
        disc.requires_grad_(True)
        with autocast():
            d_real = disc(x).float(); d_fake = disc(rec).float()
            d_loss = torch.relu(1.0 - d_real).mean() + torch.relu(1.0 + d_fake).mean()
        opt_d.zero_grad(set_to_none=True); d_loss.backward(); opt_d.step()
        parts.update(l1=float(rparts["l1"]), ssim=float(rparts["ssim"]), d_loss=float(d_loss.detach()),
                     d_real=float(d_real.detach().mean()), d_fake=float(d_fake.detach().mean()))
        for k, v in parts.items(): win.setdefault(k, []).append(v)
        times.append(time.perf_counter() - t0)
        done = step + 1
        if done % 25 == 0 or done == args.steps:
            log_window(done)
        if done % args.save_every == 0 or done == args.steps:
            save(done)
except KeyboardInterrupt:
    signal.signal(signal.SIGINT, signal.SIG_IGN); signal.signal(signal.SIGTERM, signal.SIG_IGN)  # let the save finish
    if win.get("l1"): log_window(len(times))
    log(f"# interrupted after {len(times)} steps")
    if times and not (out / f"step-{len(times):05d}.pt").exists(): save(len(times))

"""``ldae train --dry-run``: what a recipe will train, and how long it should take on this machine.

Seconds per optimizer step are measured here and now: a few steps of each stage's real module
(forward, backward, AdamW, EMA) on random tensors of the recipe's shapes and batch, on the chosen
device; the median after a warm-up step, multiplied by the stage's steps. Data preparation
(stage B per volume), encoding the latents and the probes' codes are measured the same way.
"""

from __future__ import annotations

import statistics
import time

import torch

from ..nets.autoencoder import build_autoencoder
from ..nets.discriminator import PatchDiscriminator3D, discriminator_step
from ..nets.semantic_encoder import SemanticEncoder
from ..nets.unet import ShiftUNet, UNet
from .autoencoder import AutoencoderLoss
from .config import STAGES, Recipe
from .data import semantic_input
from .ddpm import DDPMLoss
from .decoder import DecoderLoss
from .ema import EMA
from .representation import RepresentationLoss, is_shift_parameter
from .trainer import _autocast, to_channels_last_3d


def _module_and_batch(recipe: Recipe, stage: str, batch: int, device: torch.device, adversarial: bool = False):
    m = recipe.model
    shape = tuple(m.space.shape)
    lat = m.latent_shape
    g = torch.Generator().manual_seed(0)
    t = torch.randint(0, m.num_timesteps, (batch,), generator=g)
    if stage == "autoencoder":
        module = AutoencoderLoss(build_autoencoder(m.autoencoder), recipe.autoencoder.kl_weight, recipe.autoencoder.ssim_weight, recipe.autoencoder.edge_weight)
        if recipe.autoencoder.crop:
            shape = tuple(recipe.autoencoder.crop)
            lat = (lat[0], *(c // m.autoencoder.downsampling for c in shape))
        inputs = {"x": torch.rand((batch, 1, *shape), generator=g), "eps": torch.randn((batch, *lat), generator=g)}
    elif stage == "decoder":
        d = recipe.decoder
        disc = PatchDiscriminator3D(d.discriminator_width).requires_grad_(False).to(device) if adversarial else None
        module = DecoderLoss(build_autoencoder(m.autoencoder), d.ssim_weight, d.edge_weight, disc)
        inputs = {"x": torch.rand((batch, 1, *shape), generator=g)}
        if adversarial:
            inputs["adversarial_weight"] = torch.tensor(max(d.adversarial_weight, 1e-3))
    elif stage == "ddpm":
        module = DDPMLoss(UNet(m.unet), m.num_timesteps)
        inputs = {"z0": torch.randn((batch, *lat), generator=g), "t": t, "noise": torch.randn((batch, *lat), generator=g)}
    elif stage == "representation":
        shift = ShiftUNet(m.unet)
        for name, p in shift.named_parameters():
            p.requires_grad_(is_shift_parameter(name))
        module = RepresentationLoss(SemanticEncoder.from_config(m.encoder), shift, m.num_timesteps, recipe.representation.snr_exponent, m.slicing_plane)
        inputs = {"x": torch.rand((batch, 1, *shape), generator=g), "z0": torch.randn((batch, *lat), generator=g), "t": t,
                  "noise": torch.randn((batch, *lat), generator=g)}
    else:
        raise ValueError(stage)
    return module.to(device), {k: v.to(device) for k, v in inputs.items()}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure_seconds_per_step(recipe: Recipe, stage: str, device: torch.device | str = "cpu", batch_size: int | None = None,
                             steps: int = 2, warmup: int = 1, adversarial: bool = False) -> float:
    """Median wall seconds of one optimizer step of ``stage`` at the recipe's size (per-process batch);
    ``adversarial`` (decoder stage): with the discriminator's term and its own step."""
    device = torch.device(device)
    cfg = recipe.stage(stage)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        module, inputs = _module_and_batch(recipe, stage, batch_size or cfg.batch_size, device, adversarial)
        disc = getattr(module, "discriminator", None)
        disc_opt = torch.optim.AdamW(disc.parameters(), lr=1e-4) if disc is not None else None
        if cfg.channels_last:
            to_channels_last_3d(module)
            inputs = {k: v.contiguous(memory_format=torch.channels_last_3d) if v.dim() == 5 else v for k, v in inputs.items()}
        module.train()
        params = [p for p in module.parameters() if p.requires_grad]
        opt = torch.optim.AdamW(params, lr=cfg.lr)
        ema = EMA(module, cfg.ema_decay)
        times = []
        for _ in range(warmup + steps):
            _sync(device)
            t0 = time.perf_counter()
            with _autocast(cfg, device):
                loss, _ = module(**inputs)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            ema.update(module)
            if disc is not None:  # the discriminator's own step (DecoderObjective.after_step)
                with _autocast(cfg, device):
                    discriminator_step(disc, disc_opt, *module.last_pair)
            _sync(device)
            times.append(time.perf_counter() - t0)
    return statistics.median(times[warmup:])


@torch.inference_mode()
def measure_forward_seconds(recipe: Recipe, what: str, device: torch.device | str = "cpu", repeats: int = 2) -> float:
    """Seconds per volume of the autoencoder's encoder ("latents") or the semantic encoder ("codes")."""
    device = torch.device(device)
    m = recipe.model
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        x = torch.rand((1, 1, *m.space.shape), device=device)
        if what == "latents":
            net = build_autoencoder(m.autoencoder).to(device).eval()
            fn = lambda: net.encode(x)  # noqa: E731
        else:
            net = SemanticEncoder.from_config(m.encoder).to(device).eval()
            fn = lambda: net(semantic_input(x, m.slicing_plane))  # noqa: E731
        times = []
        for _ in range(repeats + 1):
            _sync(device)
            t0 = time.perf_counter()
            fn()
            _sync(device)
            times.append(time.perf_counter() - t0)
    return statistics.median(times[1:])


def parameter_counts(recipe: Recipe) -> dict[str, int]:
    m = recipe.model
    with torch.random.fork_rng(devices=[]):
        shift = ShiftUNet(m.unet)
        counts = {
            "autoencoder": sum(p.numel() for p in build_autoencoder(m.autoencoder).parameters()),
            "unet (ε-branch)": sum(p.numel() for n, p in shift.named_parameters() if not is_shift_parameter(n)),
            "gradient estimator": sum(p.numel() for n, p in shift.named_parameters() if is_shift_parameter(n)),
            "semantic encoder": sum(p.numel() for p in SemanticEncoder.from_config(m.encoder).parameters()),
        }
    return counts


def _hms(seconds: float) -> str:
    s = int(round(seconds))
    h, rem = divmod(s, 3600)
    m, s = divmod(rem, 60)
    return f"{h}h{m:02d}m" if h else (f"{m}m{s:02d}s" if m else f"{s}s")


def plan(recipe: Recipe, data=None, device: torch.device | str = "cpu", world_size: int = 1, measure: bool = True,
         stage_B_seconds: float | None = None, uncached: int | None = None) -> tuple[str, dict]:
    """A readable plan of the recipe and, with ``measure``, the estimated time → (text, numbers)."""
    device = torch.device(device)
    m = recipe.model
    f = m.autoencoder.downsampling
    lines = [f"LDAE training plan: {recipe.name}"]
    lines.append(f"  model space {'×'.join(map(str, m.space.shape))} @ {m.space.spacing_mm[0]:g} mm; latent {'×'.join(map(str, m.latent_shape))} "
                 f"(autoencoder downsampling {f}); semantic code {m.encoder.emb_dim}")
    counts = parameter_counts(recipe)
    lines.append("  parameters: " + ", ".join(f"{k} {v / 1e6:.2f} M" for k, v in counts.items()))
    n_train = n_val = None
    if data is not None:
        lines.append(f"  data: {data.describe()}")
        n_train, n_val = len(data.indices["train"]), len(data.indices["val"])
    lines.append(f"  device {device}, {world_size} process(es), torch threads {torch.get_num_threads()}")
    numbers: dict = {"stages": {}}
    header = f"  {'stage':<16}{'steps':>7}{'batch':>7}{'epochs':>8}{'s/step':>9}{'estimate':>10}"
    lines.append(header)
    total = 0.0
    if measure and data is not None and stage_B_seconds is not None and uncached:
        t = stage_B_seconds * uncached
        total += t
        lines.append(f"  {'stage B (data)':<16}{uncached:>7}{'':>7}{'':>8}{stage_B_seconds:>9.3f}{_hms(t):>10}")
        numbers["stage_B"] = {"volumes": uncached, "seconds_per_volume": stage_B_seconds, "seconds": t}
    for s in STAGES:
        cfg = recipe.stage(s)
        if s == "decoder" and not cfg.enabled:
            continue
        per_rank = max(1, cfg.batch_size // max(1, world_size))
        spe = (n_train // world_size) // per_rank if n_train else None
        steps = cfg.total_steps(spe) if spe else (cfg.steps if cfg.epochs is None else None)
        epochs = f"{steps / spe:.1f}" if (spe and steps) else "?"
        row = {"steps": steps, "batch_size": cfg.batch_size, "epochs": epochs}
        parts = [(s, steps, False)]
        if s == "decoder" and cfg.adversarial and steps:  # steps from adversarial_start on cost a discriminator more
            adv = max(0, steps - cfg.adversarial_start)
            parts = [(s, steps - adv, False), ("  +adversarial", adv, True)]
            row["adversarial_steps"] = adv
        for label, n, adversarial in parts:
            if measure:
                sps = measure_seconds_per_step(recipe, s, device, per_rank, adversarial=adversarial)
                row["adversarial_seconds_per_step" if adversarial else "seconds_per_step"] = sps
                if n is not None:
                    row["seconds"] = row.get("seconds", 0.0) + sps * n
                    total += sps * n
                lines.append(f"  {label:<16}{n if n is not None else '?':>7}{cfg.batch_size:>7}{epochs if not adversarial else '':>8}{sps:>9.3f}{_hms(sps * n) if n is not None else '?':>10}")
            else:
                lines.append(f"  {label:<16}{n if n is not None else '?':>7}{cfg.batch_size:>7}{epochs if not adversarial else '':>8}{'-':>9}{'-':>10}")
        numbers["stages"][s] = row
        if s == "autoencoder" and measure and n_train is not None:
            t_lat = measure_forward_seconds(recipe, "latents", device) * (n_train + n_val)
            total += t_lat
            lines.append(f"  {'latents':<16}{n_train + n_val:>7}{'':>7}{'':>8}{'':>9}{_hms(t_lat):>10}")
            numbers["latents_seconds"] = t_lat
    if measure and n_train is not None:
        t_codes = measure_forward_seconds(recipe, "codes", device) * (n_train + n_val)
        total += t_codes
        lines.append(f"  {'probes':<16}{n_train + n_val:>7}{'':>7}{'':>8}{'':>9}{_hms(t_codes):>10}")
        numbers["probes_seconds"] = t_codes
    if measure:
        lines.append(f"  {'total':<16}{'':>7}{'':>7}{'':>8}{'':>9}{_hms(total):>10}  (measured now; other load on the machine changes it)")
        numbers["total_seconds"] = total
    return "\n".join(lines), numbers

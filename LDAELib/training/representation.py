"""Stage (c): representation learning of the semantic encoder and the gradient estimator.

The ShiftUNet's ε-branch is the EMA UNet of stage (b), frozen (eval mode, no gradients); the
autoencoder is not used here at all (its latents were stored by stage (a)). Per item:
z_t = √ᾱ_t · z0 + √(1−ᾱ_t) · noise, y = E(x) on the axial slice stack,
(ε, g) = ShiftUNet(z_t, t, y), and the loss is

    w_t · mean (ε + c_t · g − noise)²,   c_t = −√α_t (1 − ᾱ_{t−1}) / √(1 − ᾱ_t),
    w_t = snr_t^γ / (1 + snr_t),          snr_t = ᾱ_t / (1 − ᾱ_t),   γ = 0.1

on the full 1000-step DDPM schedule (α_t = 1 − β_t, ᾱ_{−1} = 1). Only E and the gradient-estimator
parts (``label_emb``, ``shift_middle_block``, ``shift_output_blocks``, ``shift_out``) learn; both get
an EMA, and the EMA weights are what the bundle ships.

Optionally (``code_regression_weight`` > 0; not in the paper) a linear head predicts the scan's
mean latent, pooled to a coarse grid, and/or columns of the cohort table (regional volumes), all
standardised, from y and adds ``weight × mean squared error`` to the loss; the head is not shipped. Every step also logs ``code_sd``, the spread of y across the batch (mean over
dimensions of the per-dimension SD): a value near 0 means the codes collapsed to one vector.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from ..errors import LDAEError
from ..nets.semantic_encoder import SemanticEncoder
from ..nets.blocks import ResBlock
from ..nets.unet import ShiftUNet
from .augment import augment_volume
from .autoencoder import Latents
from .config import RepresentationStageConfig
from .data import TrainingData, semantic_input
from .ddpm import LatentBatches, alphas_cumprod_tensor, zero_init_outputs
from .distributed import item_generator
from .trainer import Objective

STAGE_ID = 3
SHIFT_PARTS = ("label_emb", "shift_middle_block", "shift_output_blocks", "shift_out")
"""Top-level ShiftUNet children that form the gradient estimator (everything else is the ε-branch)."""


def is_shift_parameter(name: str) -> bool:
    return name.split(".", 1)[0] in SHIFT_PARTS


def copy_eps_branch_into_shift_blocks(shift: ShiftUNet) -> None:
    """Start the gradient estimator's middle and output blocks as copies of the ε-branch's (same
    shapes), with every semantic modulation (``emb_z_layers``) at zero, so y changes nothing yet."""
    with torch.no_grad():
        for src, dst in ((shift.middle_block, shift.shift_middle_block), (shift.output_blocks, shift.shift_output_blocks)):
            own = dst.state_dict()
            dst.load_state_dict({**own, **{k: v for k, v in src.state_dict().items() if k in own}})
            for m in dst.modules():
                if isinstance(m, ResBlock) and m.shift:
                    nn.init.zeros_(m.emb_z_layers[-1].weight)
                    nn.init.zeros_(m.emb_z_layers[-1].bias)


def shift_coefficients(num_timesteps: int, snr_exponent: float = 0.1) -> tuple[torch.Tensor, torch.Tensor]:
    """(c_t, w_t) for t = 0 … T−1 as float32 tensors, computed in float64 from the linear β schedule."""
    betas = np.linspace(1e-4, 0.02, num_timesteps, dtype=np.float64)
    alphas = 1.0 - betas
    ab = np.cumprod(alphas)
    ab_prev = np.append(1.0, ab[:-1])
    coef = -np.sqrt(alphas) * (1.0 - ab_prev) / np.sqrt(1.0 - ab)
    snr = ab / (1.0 - ab)
    weight = snr**snr_exponent / (1.0 + snr)
    return torch.from_numpy(coef.astype(np.float32)), torch.from_numpy(weight.astype(np.float32))


class CodeRegression(nn.Module):
    """Linear head y → standardised targets (not shipped): the scan's pooled mean latent (``grid``;
    None leaves it out) and/or cohort columns (``columns``: e.g. regional volumes). The loss is the
    mean squared error of each part, summed, so a few columns weigh as much as the whole latent grid."""

    def __init__(self, code_dim: int, grid: tuple[int, int, int] | None, mean: torch.Tensor, std: torch.Tensor,
                 columns: tuple[str, ...] = ()) -> None:
        super().__init__()
        self.grid = None if grid is None else tuple(int(k) for k in grid)
        self.columns = tuple(columns)
        self.n_latent = mean.numel() - len(self.columns)
        self.head = nn.Linear(code_dim, mean.numel())
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)
        self.register_buffer("mean", mean.flatten().float(), persistent=False)
        self.register_buffer("std", std.flatten().float(), persistent=False)

    def raw(self, mu: torch.Tensor | None, values: torch.Tensor | None) -> torch.Tensor:
        """Unstandardised features: pooled mean latents (μ × scale, B×C×D×H×W) then column values (B×k)."""
        parts = []
        if self.grid is not None:
            parts.append(nn.functional.adaptive_avg_pool3d(mu.float(), self.grid).flatten(1))
        if self.columns:
            parts.append(values.float())
        return torch.cat(parts, 1)

    def target(self, mu: torch.Tensor | None, values: torch.Tensor | None = None) -> torch.Tensor:
        """Standardised targets, B × features."""
        return (self.raw(mu, values) - self.mean) / self.std

    def forward(self, y: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        err = (self.head(y.float()) - target).pow(2)
        n = self.n_latent
        return (err[:, :n].mean() if n else 0.0) + (err[:, n:].mean() if n < err.shape[1] else 0.0)

    @classmethod
    def fitted(cls, code_dim: int, grid, latents: Latents, rows: list[int], columns: tuple[str, ...] = (),
               values: torch.Tensor | None = None) -> "CodeRegression":
        """A head whose standardisation uses the mean latents (μ × scale) and column ``values``
        (len(rows) × len(columns)) of ``rows``."""
        if grid is not None:
            shape = tuple(latents.mu.shape[2:])
            if any(int(k) > n for n, k in zip(shape, grid)):
                raise LDAEError(f"code_regression_grid {tuple(grid)} is finer than the latent grid {shape}")
            grid = tuple(int(k) for k in grid)
        probe = cls(code_dim, grid, torch.zeros(1), torch.ones(1), columns)
        feats = probe.raw(latents.scaled_means(rows) if grid is not None else None, values)
        std = feats.std(0)
        if grid is not None:
            # A floor, so a block of near-constant background cannot dominate the standardised loss.
            n = feats.shape[1] - len(columns)
            std[:n] = std[:n].clamp_min(max(1e-6, 0.1 * float(std[:n].median())))
        if columns:
            flat = [c for c, s in zip(columns, std[-len(columns):].tolist()) if not s > 0]
            if flat:
                raise LDAEError(f"code_regression_columns: {', '.join(flat)} do not vary over the training scans; leave them out")
        return cls(code_dim, grid, feats.mean(0), std, columns)


def code_spread(y: torch.Tensor) -> torch.Tensor:
    """Mean over dimensions of the SD of y across the batch (0 for a batch of one)."""
    if y.shape[0] < 2:
        return y.new_zeros(())
    return y.detach().float().std(0).mean()


def coarse_part(delta: torch.Tensor, pool: int) -> torch.Tensor:
    """L(δ): the mean of δ (B×C×D×H×W) over pool³ blocks, spread back to δ's grid by trilinear
    interpolation (pool 1: δ itself)."""
    if pool == 1:
        return delta
    low = nn.functional.avg_pool3d(delta, pool, ceil_mode=True)
    return nn.functional.interpolate(low, size=delta.shape[2:], mode="trilinear", align_corners=False)


class RepresentationLoss(nn.Module):
    """(x, z0, t, noise) → (SNR-weighted ε-loss of ε + c_t·g [+ code regression], parts). Holds E and the ShiftUNet."""

    def __init__(self, encoder: SemanticEncoder, shift_unet: ShiftUNet, num_timesteps: int, snr_exponent: float, plane: str,
                 code_regression: CodeRegression | None = None, code_regression_weight: float = 0.0,
                 coarse_loss_weight: float = 0.0, coarse_loss_pool: int = 4, pair_pool: int = 2) -> None:
        super().__init__()
        self.pair_pool = int(pair_pool)
        self.coarse_loss_weight, self.coarse_loss_pool = float(coarse_loss_weight), int(coarse_loss_pool)
        self.encoder, self.shift_unet, self.plane = encoder, shift_unet, plane
        self.code_regression, self.code_regression_weight = code_regression, float(code_regression_weight)
        coef, weight = shift_coefficients(num_timesteps, snr_exponent)
        self.register_buffer("alphas_cumprod", alphas_cumprod_tensor(num_timesteps), persistent=False)
        self.register_buffer("coef", coef, persistent=False)
        self.register_buffer("weight", weight, persistent=False)

    def forward(self, x: torch.Tensor, z0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor, code_target: torch.Tensor | None = None,
                z0_pair: torch.Tensor | None = None, pair_delta: torch.Tensor | None = None):
        """``z0_pair`` (optional, same shape as z0): the latent z_t is built from (``pair_probability``);
        rows equal to z0 give the plain objective. ``pair_delta`` (optional, with ``z0_pair``): the
        difference whose coarse part the target takes instead of z0_pair − z0 (``contrast_free_targets``:
        the same two scans' intensity-matched latents; zero in unpaired rows)."""
        view = (-1, *([1] * (z0.dim() - 1)))
        ab = self.alphas_cumprod[t].view(view)
        target = noise.float()
        if z0_pair is not None:
            delta = z0_pair.float() - z0.float() if pair_delta is None else pair_delta.float()
            target = target + (ab / (1 - ab)).sqrt() * coarse_part(delta, self.pair_pool)
            z0 = z0_pair
        zt = ab.sqrt() * z0 + (1 - ab).sqrt() * noise
        y = self.encoder(semantic_input(x, self.plane))
        eps, g = self.shift_unet(zt, t, y)
        pred = eps.detach().float() + self.coef[t].view(view) * g.float()
        per_item = (pred - target).pow(2).flatten(1).mean(1)
        loss = (self.weight[t] * per_item).mean()
        base = (eps.detach().float() - target).pow(2).flatten(1).mean(1)
        parts = {"mse": per_item.mean().detach(), "mse_eps_only": base.mean().detach(), "code_sd": code_spread(y)}
        if self.coarse_loss_weight > 0:
            k = self.coarse_loss_pool
            coarse = nn.functional.avg_pool3d(pred - target, k, ceil_mode=True).pow(2).flatten(1).mean(1) * k**3
            base_coarse = nn.functional.avg_pool3d(eps.detach().float() - target, k, ceil_mode=True).pow(2).flatten(1).mean(1) * k**3
            parts["coarse_mse"], parts["coarse_mse_eps_only"] = coarse.mean().detach(), base_coarse.mean().detach()
            loss = loss + self.coarse_loss_weight * (self.weight[t] * coarse).mean()
        if code_target is not None and self.code_regression is not None:
            reg = self.code_regression(y, code_target)
            parts["code_regression"] = reg.detach()
            loss = loss + self.code_regression_weight * reg
        return loss, parts


def pair_candidates(rows: list, items: list[int], pair_with: str) -> dict[int, list[int]]:
    """For each item, the other items z_t may be built from: the same subject's other visits
    (``subject``) or every other item (``any``)."""
    if pair_with == "any":
        return {r: [a for a in items if a != r] for r in items}
    by_subject: dict[str, list[int]] = {}
    for r in items:
        by_subject.setdefault(rows[r].subject, []).append(r)
    return {r: [a for a in by_subject[rows[r].subject] if a != r] for r in items}


class RepresentationObjective(Objective):
    name, stage_id = "representation", STAGE_ID

    def __init__(self, model_config, config: RepresentationStageConfig, data: TrainingData, latents: Latents,
                 unet_state: dict[str, torch.Tensor], device: torch.device, upstream: dict,
                 matched: Latents | None = None) -> None:
        """``matched``: the scans' intensity-matched latents, needed when ``config.contrast_free_targets``
        (the paired items' coarse difference and the code regression's pooled latent come from them)."""
        self.config, self.data, self.device, self._upstream = config, data, torch.device(device), upstream
        if config.contrast_free_targets and matched is None:
            raise LDAEError("contrast_free_targets needs the intensity-matched latents (Session.matched_latents)")
        self.targets = matched if config.contrast_free_targets else latents
        self._columns: dict[int, list[float]] = {}
        if model_config.unet.latent_dim != model_config.encoder.emb_dim:
            raise LDAEError(f"unet_args.latent_dim ({model_config.unet.latent_dim}) must equal the semantic code size enc_args.emb_dim ({model_config.encoder.emb_dim})")
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(config.seed)
            encoder = SemanticEncoder.from_config(model_config.encoder)
            shift = ShiftUNet(model_config.unet)
        eps_keys = {k for k in shift.state_dict() if not is_shift_parameter(k)}
        missing = eps_keys - set(unet_state)
        if missing:
            raise LDAEError(f"the DDPM weights do not fit this ShiftUNet (missing {sorted(missing)[:3]}…); were the stages trained with the same recipe?")
        shift.load_state_dict({k: unet_state[k] for k in eps_keys}, strict=False)
        if config.shift_init == "eps_branch":
            copy_eps_branch_into_shift_blocks(shift)
        else:
            for part in ("shift_middle_block", "shift_output_blocks"):
                zero_init_outputs(getattr(shift, part))
        nn.init.zeros_(shift.shift_out[-1].weight)
        nn.init.zeros_(shift.shift_out[-1].bias)
        for name, p in shift.named_parameters():
            p.requires_grad_(is_shift_parameter(name))
        self.items = list(data.indices["train"])
        head = None
        if config.code_regression_weight > 0:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(config.seed + 1)
                fit_rows = [r for r in self.items if latents.has(r)]
                grid = config.code_regression_grid if config.code_regression_latent else None
                head = CodeRegression.fitted(model_config.encoder.emb_dim, grid, self.targets, fit_rows,
                                             config.code_regression_columns, self._column_values(fit_rows))
        self.module = RepresentationLoss(encoder, shift, model_config.num_timesteps, config.snr_exponent, model_config.slicing_plane,
                                         head, config.code_regression_weight, config.coarse_loss_weight,
                                         config.coarse_loss_pool, config.pair_pool).to(self.device)
        self.val_rows = [r for r in data.indices["val"] if latents.has(r)]
        self.draw = LatentBatches(latents, model_config.num_timesteps, config.latent, config.seed, STAGE_ID, self.device)
        self.partners = pair_candidates(data.rows, [r for r in self.items if latents.has(r)], config.pair_with)

    def set_train_mode(self, module: nn.Module) -> None:
        module.train()
        for name, child in module.shift_unet.named_children():
            if name not in SHIFT_PARTS:
                child.eval()  # the frozen ε-branch: no dropout, as in the authors' ShiftUNet

    def n_items(self) -> int:
        return len(self.items)

    def _rows(self, rows: list[int], step: int) -> dict[str, torch.Tensor]:
        out = {"x": self._code_inputs(rows, step), **self.draw(rows, step)}
        if self.config.pair_probability > 0 and step >= 0:  # fixed (validation) batches keep the plain objective
            pairs = [self._partner(r, step) if int(t) >= self.config.pair_min_t else r for r, t in zip(rows, out["t"])]
            if any(a != r for a, r in zip(pairs, rows)):
                z0_pair = out["z0"].clone()
                for i, (a, r) in enumerate(zip(pairs, rows)):
                    if a != r:
                        z0_pair[i] = self.draw([a], step)["z0"][0]
                out["z0_pair"] = z0_pair
                if self.config.contrast_free_targets:
                    delta = torch.zeros_like(z0_pair)
                    for i, (a, r) in enumerate(zip(pairs, rows)):
                        if a != r:
                            delta[i] = (self.targets.scaled_means([a]) - self.targets.scaled_means([r]))[0].to(delta)
                    out["pair_delta"] = delta
        head = self.module.code_regression
        if head is not None:
            # The target is the posterior mean μ, not the sampled z0: σ is large next to how much μ
            # varies between scans, so a sampled target would be mostly noise.
            mu = self.targets.scaled_means(rows).to(self.device) if head.grid is not None else None
            values = self._column_values(rows)
            out["code_target"] = head.target(mu, None if values is None else values.to(self.device))
        return out

    def _code_inputs(self, rows: list[int], step: int) -> torch.Tensor:
        """The volumes the encoder sees: as stored, or (training steps, ``code_augment``) changed in
        contrast, bias field, noise and resolution, and (``code_shift``) moved by a few voxels. The latent the
        code must explain is not changed."""
        p, k = self.config.code_augment, int(self.config.code_shift)
        if step < 0 or (p <= 0 and k <= 0):
            return self.data.volumes.batch(rows, self.device)
        xs = []
        for r in rows:
            x = torch.from_numpy(self.data.volumes[r]).to(self.device)
            g = item_generator(self.config.seed, STAGE_ID, step, r, 2)
            if p > 0 and float(torch.rand((), generator=g)) < p:
                x = augment_volume(x, g)
            if k > 0:
                x = torch.roll(x, [int(v) for v in torch.randint(-k, k + 1, (3,), generator=g)], dims=(0, 1, 2))
            xs.append(x)
        return torch.stack(xs)[:, None]

    def _column_values(self, rows: list[int]) -> torch.Tensor | None:
        """The cohort table's ``code_regression_columns`` of ``rows`` (len(rows) × k), or None; each
        row's text is parsed once."""
        columns = self.config.code_regression_columns
        if not columns:
            return None
        for r in rows:
            if r not in self._columns:
                self._columns[r] = [self.data.rows[r].number(c) for c in columns]
        return torch.tensor([self._columns[r] for r in rows], dtype=torch.float32)

    def batch(self, items: list[int], step: int) -> dict[str, torch.Tensor]:
        return self._rows([self.items[i] for i in items], step)

    def _partner(self, row: int, step: int) -> int:
        """The scan z_t is built from for this row at this step: the row itself, or with probability
        ``pair_probability`` one of its candidates (a draw of its own, the same on every rank)."""
        candidates = self.partners.get(row, [])
        if not candidates:
            return row
        g = item_generator(self.config.seed, STAGE_ID, step, row, 1)
        if float(torch.rand((), generator=g)) >= self.config.pair_probability:
            return row
        return candidates[int(torch.randint(0, len(candidates), (1,), generator=g))]

    def fixed_batches(self) -> dict:
        return self.fixed_from(self._rows, self.items, self.val_rows)

    def upstream(self) -> dict:
        return self._upstream

"""Stage (a′), optional: the autoencoder's decoder refined on the posterior means μ.

The autoencoder stage trains its decoder on sampled latents μ + σ·ε. With a weak KL term σ is as
large as the spread of μ between scans, so that decoder learns to undo a great deal of noise and
blurs. At inference it only ever sees μ-like latents: the pipeline encodes μ, and a DDIM inversion
and sampling come back to it closely (the demo model's LDAE reconstruction scores SSIM 0.939 where
decode(μ) scores 0.941). This stage freezes the encoder and
trains the decoder (and its post-quantisation convolution) on decode(μ) with the autoencoder
stage's loss (L1 + ``ssim_weight`` × (1 − SSIM)) and augmentation. The encoder, and so μ, the
latent scale, the latent shift and everything the diffusion stages learnt on them, stay valid:
the stage may run before or after the DDPM and the representation stage, and the bundle takes
its decoder when it is complete. (Stable Diffusion's released VAE decoders were refined the same
way, the encoder frozen to keep the latent space.)

With ``adversarial_weight`` > 0 the stage also trains a patch discriminator
(``nets.discriminator``) and adds its hinge generator term to the decoder's loss: L1 and SSIM
reward the mean of what the latent leaves open, which is a blur; the adversarial term rewards
texture a scan could have. The discriminator is the objective's auxiliary model: the trainer calls
:meth:`DecoderObjective.after_step` after every decoder step and checkpoints its weights and
optimizer beside the decoder's.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

from ..errors import LDAEError
from ..nets.autoencoder import build_autoencoder
from ..nets.discriminator import PatchDiscriminator3D, discriminator_step, generator_adversarial_loss
from .augment import augment_volume
from .autoencoder import reconstruction_loss
from .config import DecoderStageConfig
from .data import TrainingData
from .distributed import derived_seed, item_generator
from .trainer import Objective

STAGE_ID = 5
DECODER_PREFIXES = ("post_quant_conv.", "decoder.")
"""The autoencoder's parameters this stage trains (state-dict key prefixes)."""


def is_decoder_parameter(name: str) -> bool:
    return name.startswith(DECODER_PREFIXES)


def _all_reduce_mean(params) -> None:
    """Average gradients over data-parallel processes (nothing to do in one process)."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        n = torch.distributed.get_world_size()
        for p in params:
            torch.distributed.all_reduce(p.grad)
            p.grad.div_(n)


class DecoderLoss(nn.Module):
    """(x[, adversarial_weight]) → (loss, parts): decode(μ(x)) against x, the encoder frozen and run
    without gradients.

    With a ``discriminator`` (held, not registered: the stage's EMA, DDP and checkpoints of this
    module leave it out) and an ``adversarial_weight`` tensor, training-mode forwards add
    weight × (−mean D(decode(μ))) while the weight is above 0 (logged as ``adv_g``). The last
    training batch and its reconstruction (detached) stay in ``last_pair`` for the discriminator's step.
    """

    def __init__(self, autoencoder: nn.Module, ssim_weight: float = 0.0, edge_weight: float = 0.0,
                 discriminator: nn.Module | None = None) -> None:
        super().__init__()
        self.autoencoder = autoencoder
        self.ssim_weight = float(ssim_weight)
        self.edge_weight = float(edge_weight)
        object.__setattr__(self, "discriminator", discriminator)
        self.last_pair: tuple[torch.Tensor, torch.Tensor] | None = None
        for name, p in autoencoder.named_parameters():
            p.requires_grad_(is_decoder_parameter(name))

    def forward(self, x: torch.Tensor, adversarial_weight: torch.Tensor | None = None):
        with torch.no_grad():
            mu, _ = self.autoencoder.encode(x)
        rec = self.autoencoder.decode(mu.detach())
        loss, parts = reconstruction_loss(rec, x, self.ssim_weight, self.edge_weight)
        if self.training:
            self.last_pair = (x.detach(), rec.detach())
            if adversarial_weight is not None and self.discriminator is not None:
                w = float(adversarial_weight)
                if w > 0:
                    g = generator_adversarial_loss(self.discriminator(rec))
                    loss = loss + w * g
                    parts["adv_g"] = g.detach()
                else:
                    parts["adv_g"] = torch.zeros(())
        return loss, parts


class DecoderObjective(Objective):
    name, stage_id = "decoder", STAGE_ID

    def __init__(self, model_config, config: DecoderStageConfig, data: TrainingData, autoencoder_state: dict,
                 device: torch.device, upstream: dict) -> None:
        self.config, self.data, self.device, self._upstream = config, data, torch.device(device), dict(upstream)
        ae = build_autoencoder(model_config.autoencoder)
        ae.load_state_dict(autoencoder_state)
        self.discriminator = self.disc_optimizer = None
        if config.adversarial:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(derived_seed(config.seed, STAGE_ID, 0xD15C))
                self.discriminator = PatchDiscriminator3D(config.discriminator_width).to(self.device)
            self.discriminator.requires_grad_(False)  # only its own step (after_step) takes gradients
            self.disc_optimizer = torch.optim.AdamW(self.discriminator.parameters(), lr=config.discriminator_lr,
                                                    betas=(0.5, 0.9), weight_decay=0.0)
        self.module = DecoderLoss(ae, config.ssim_weight, config.edge_weight, self.discriminator).to(self.device)
        self.items = list(data.indices["train"])

    def n_items(self) -> int:
        return len(self.items)

    def set_train_mode(self, module: nn.Module) -> None:
        module.train()
        inner = getattr(module, "module", module).autoencoder  # DDP wraps the loss module
        for part in (inner.encoder, inner.quant_conv_mu, inner.quant_conv_log_sigma):
            part.eval()

    def _batch_rows(self, rows: list[int], step: int) -> dict[str, torch.Tensor]:
        xs = []
        for r in rows:
            g = item_generator(self.config.seed, STAGE_ID, step, r)
            x = torch.from_numpy(self.data.volumes[r])
            if step >= 0 and self.config.augment > 0 and float(torch.rand((), generator=g)) < self.config.augment:
                x = augment_volume(x.to(self.device), g)
            xs.append(x)
        return {"x": torch.stack([x.to(self.device) for x in xs])[:, None]}

    def batch(self, items: list[int], step: int) -> dict[str, torch.Tensor]:
        b = self._batch_rows([self.items[i] for i in items], step)
        if self.discriminator is not None:
            on = step >= self.config.adversarial_start + self.config.adversarial_warmup
            b["adversarial_weight"] = torch.tensor(self.config.adversarial_weight if on else 0.0)
        return b

    _DISC_PARTS = ("d_loss", "d_real", "d_fake")

    def after_step(self, step: int) -> dict[str, torch.Tensor]:
        """One hinge step of the discriminator on the decoder step's batch (real) and its
        reconstruction (fake), from ``adversarial_start`` on; the logged parts are 0 before."""
        if self.discriminator is None:
            return {}
        pair = getattr(self.module, "last_pair", None)
        if step < self.config.adversarial_start or pair is None:
            return {k: torch.zeros(()) for k in self._DISC_PARTS}
        x, rec = pair
        try:
            loss, real, fake = discriminator_step(self.discriminator, self.disc_optimizer, x, rec, _all_reduce_mean)
        except FloatingPointError:
            raise LDAEError(f"stage decoder: the discriminator's loss is not finite at step {step + 1}; "
                            "lower discriminator_lr (the last checkpoint is kept)") from None
        return {"d_loss": loss, "d_real": real, "d_fake": fake}

    def auxiliary_state(self) -> tuple[dict, dict | None]:
        if self.discriminator is None:
            return {}, None
        return {"discriminator": self.discriminator.state_dict()}, self.disc_optimizer.state_dict()

    def load_auxiliary_state(self, groups: dict, optimizer: dict | None) -> None:
        """The discriminator and its optimizer from a checkpoint; a checkpoint written before the
        adversarial term was switched on has neither, and the discriminator starts fresh."""
        if self.discriminator is None or "discriminator" not in groups:
            return
        self.discriminator.load_state_dict(groups["discriminator"])
        if optimizer is not None:
            self.disc_optimizer.load_state_dict(optimizer)

    def fixed_batches(self) -> dict:
        return self.fixed_from(self._batch_rows, self.items, self.data.indices["val"])

    def upstream(self) -> dict:
        return self._upstream


def decoder_state(ema_state: dict) -> dict:
    """The refined decoder's tensors (autoencoder state-dict keys) from the stage's EMA group."""
    prefix = "autoencoder."
    return {k[len(prefix):]: v for k, v in ema_state.items() if k.startswith(prefix) and is_decoder_parameter(k[len(prefix):])}


def check_same_latents(source: Path, model, meta: dict, ae_state: dict, lat, latents_dir: Path, why: str,
                       scale_rtol: float = 1e-6, shift_atol: float = 1e-6) -> None:
    """Raise unless the bundle ``source`` (loaded as ``model``, its ``ldae_bundle.json`` ``meta``)
    has the encoder of the autoencoder EMA state ``ae_state`` (at the bundle's storage precision)
    and the latent scale and shift of the latents ``lat`` (from ``latents_dir``), within the given
    tolerances; ``why`` says what a mismatch would break."""
    dtype = getattr(torch, meta.get("dtype", "float32"))
    theirs = model.autoencoder.state_dict()
    differ = [k for k, v in ae_state.items() if not is_decoder_parameter(k) and not torch.equal(v.to(dtype), theirs[k].to(dtype))]
    if differ:
        raise LDAEError(f"{source} was not trained on this work folder's autoencoder ({len(differ)} encoder tensors differ, "
                        f"e.g. {differ[0]}); {why}")
    if abs(float(model.config.latent_scale) - float(lat.scale)) > scale_rtol * abs(float(lat.scale)) or (
            (model.latent_shift is None) != (lat.shift is None)
            or (lat.shift is not None and not torch.allclose(model.latent_shift, lat.shift.float(), atol=shift_atol))):
        raise LDAEError(f"{source}'s latent scale or shift differs from {latents_dir}; it was trained on other latents")


def decoder_of_bundle(source: Path, ae_state: dict, lat, latents_dir: Path) -> tuple[dict, dict]:
    """The decoder tensors of the bundle ``source`` and their provenance, after checking that the
    bundle was trained on the autoencoder ``ae_state`` (its EMA state) and the latents ``lat``."""
    from ..weights.bundle import BUNDLE_JSON, MANIFEST, load_bundle

    model = load_bundle(source)
    meta = json.loads((source / BUNDLE_JSON).read_text())
    # The scale and shift are measured again where the latents were encoded: equal to float32
    # rounding on one machine, within 1e-5 (relative) between machines and thread counts.
    check_same_latents(source, model, meta, ae_state, lat, latents_dir, "its decoder would not match the latents here", 1e-5, 1e-3)
    theirs = model.autoencoder.state_dict()
    training = meta.get("source", {}).get("training", {})
    stage = training.get("stages", {}).get("decoder")
    if stage is None:
        raise LDAEError(f"{source} has no refined decoder (its provenance records no decoder stage); nothing to take")
    files = json.loads((source / MANIFEST).read_text()).get("files", {})  # load_bundle checked it
    donor = {"name": meta.get("name"), "stage": stage, "recipe": training.get("recipe", {}).get("decoder"),
             "fingerprint": training.get("fingerprints", {}).get("decoder"),
             "weights_sha256": files.get("autoencoder.safetensors", {}).get("sha256")}
    return {k: v.float() for k, v in theirs.items() if is_decoder_parameter(k)}, donor

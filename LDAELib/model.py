"""The LDAE model as one object: its configuration, its three networks and its named directions.

Nothing here reads files (see ``weights/``) or knows about volumes on disk (see ``pipeline`` and
``space``).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field

import torch
from torch import nn

from .directions.probe import Direction
from .nets.autoencoder import AutoencoderConfig, build_autoencoder, use_polyphase_upsampling
from .nets.semantic_encoder import SemanticEncoder, SemanticEncoderConfig
from .nets.unet import ShiftUNet, UNetConfig
from .space import ModelSpaceConfig

LATENT_SCALE = 0.8730
"""The authors' latent scale factor ("1/std of the first training batch"); stored in no checkpoint."""


@dataclass
class LDAEConfig:
    """Everything needed to build and run a model, round-tripping to JSON.

    Names of the network sections follow the authors' YAML (``vae_args``, ``unet_args``,
    ``enc_args``) so their files and ours read the same way.
    """

    autoencoder: AutoencoderConfig = field(default_factory=AutoencoderConfig)
    unet: UNetConfig = field(default_factory=UNetConfig)
    encoder: SemanticEncoderConfig = field(default_factory=SemanticEncoderConfig)
    space: ModelSpaceConfig = field(default_factory=ModelSpaceConfig)
    latent_scale: float = LATENT_SCALE
    num_timesteps: int = 1000
    slicing_plane: str = "axial"
    latent_shift: bool = False
    x0_clip: float | None = 1.0
    code_guidance: float = 1.0
    """Weight w of the gradient estimator's answer to the code at inference:
    g(ȳ) + w·(g(y) − g(ȳ)), ȳ the model's reference code (``LDAEModel.reference_code``). 1.0 is
    the authors' rule, g(y), and needs no reference; our trained models may ship another weight."""
    code_guidance_mean_free: bool = False
    """With code guidance, g(y) − g(ȳ) first loses its mean over the latent grid, channel by channel
    (``code_guided_shift``): the code can no longer move a latent channel as a whole, which the
    decoder renders as a brightening or darkening of the whole brain, so an edit keeps the scan's
    overall intensity (carried by its inverted noise). Inference only; needs code_guidance ≠ 1."""

    def __post_init__(self) -> None:
        w = float(self.code_guidance)
        if not (w == w and abs(w) != float("inf")) or w < 0:
            raise ValueError(f"code_guidance must be a finite number ≥ 0, got {self.code_guidance!r}")
        self.code_guidance = w
        if not isinstance(self.code_guidance_mean_free, bool):
            raise ValueError(f"code_guidance_mean_free must be true or false, got {self.code_guidance_mean_free!r}")
        if self.code_guidance_mean_free and not self.guided:
            raise ValueError("code_guidance_mean_free needs code guidance (code_guidance ≠ 1): it changes how the "
                             "guided part of the shift is formed")

    @property
    def guided(self) -> bool:
        """Whether inference blends g with the reference code's answer (code_guidance ≠ 1)."""
        return self.code_guidance != 1.0

    def to_dict(self) -> dict:
        d = {
            "vae_args": self.autoencoder.to_dict(),
            "unet_args": self.unet.to_dict(),
            "enc_args": self.encoder.to_dict(),
            "space": self.space.to_dict(),
            "latent_scale": self.latent_scale,
            "num_timesteps": self.num_timesteps,
            "slicing_plane": self.slicing_plane,
        }
        if self.latent_shift:  # written only when set, so the authors' configs read as before
            d["latent_shift"] = True
        if self.x0_clip != 1.0:
            d["x0_clip"] = self.x0_clip
        if self.guided:
            d["code_guidance"] = self.code_guidance
        if self.code_guidance_mean_free:
            d["code_guidance_mean_free"] = True
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "LDAEConfig":
        return cls(
            autoencoder=AutoencoderConfig.from_dict(d.get("vae_args", {})),
            unet=UNetConfig.from_dict(d.get("unet_args", {})),
            encoder=SemanticEncoderConfig.from_dict(d.get("enc_args", {})),
            space=ModelSpaceConfig.from_dict(d.get("space", {})),
            latent_scale=float(d.get("latent_scale", LATENT_SCALE)),
            num_timesteps=int(d.get("num_timesteps", 1000)),
            slicing_plane=d.get("slicing_plane", "axial"),
            latent_shift=bool(d.get("latent_shift", False)),
            x0_clip=None if d.get("x0_clip", 1.0) is None else float(d.get("x0_clip", 1.0)),
            code_guidance=float(d.get("code_guidance", 1.0)),
            code_guidance_mean_free=d.get("code_guidance_mean_free", False),
        )

    @property
    def latent_shape(self) -> tuple[int, int, int, int]:
        f = self.autoencoder.downsampling
        return (self.autoencoder.latent_channels, *(s // f for s in self.space.shape))


class LDAEModel(nn.Module):
    """AutoencoderKL + semantic encoder + ShiftUNet, in eval mode, plus named directions.

    ``identity`` describes where the weights came from (name, format, SHA-256 of the files) and is
    copied into every output's provenance. ``polyphase_decoder`` computes the decoder's
    upsampling convolutions on the low-resolution grid (same weights, ~2× faster there, less
    memory; equal to the direct form up to float rounding, 1.6e-6 × max on the fixture).
    """

    def __init__(
        self,
        config: LDAEConfig,
        directions: dict[str, Direction] | None = None,
        identity: dict | None = None,
        polyphase_decoder: bool = True,
    ) -> None:
        super().__init__()
        self.config = config
        self.autoencoder = build_autoencoder(config.autoencoder)
        if polyphase_decoder:
            use_polyphase_upsampling(self.autoencoder)
        self.semantic_encoder = SemanticEncoder.from_config(config.encoder)
        self.shift_unet = ShiftUNet(config.unet)
        self.directions: dict[str, Direction] = dict(directions or {})
        self.identity: dict = dict(identity or {})
        # Float32 on the CPU whatever the networks' device and dtype (not a buffer, so ``.to()``
        # leaves it exact); moved to the latent's device where it is used.
        self.latent_shift: torch.Tensor | None = torch.zeros(config.latent_shape) if config.latent_shift else None
        # The reference code ȳ of code guidance (latent_dim, float32, CPU), set by whoever loads or
        # trains the weights; None when the config keeps the authors' rule.
        self.reference_code: torch.Tensor | None = torch.zeros(config.unet.latent_dim) if config.guided else None
        self.eval()
        for p in self.parameters():
            p.requires_grad_(False)

    def scale_latent(self, z: torch.Tensor) -> torch.Tensor:
        """Autoencoder latent (B×C×d×h×w, float32) → the diffusion's z0: (z − shift) · scale."""
        scale = torch.tensor(self.config.latent_scale, dtype=torch.float32, device=z.device)
        if self.latent_shift is not None:
            z = z - self.latent_shift.to(z.device, z.dtype)
        return z * scale.to(z.dtype)

    def unscale_latent(self, z0: torch.Tensor) -> torch.Tensor:
        """The diffusion's z0 (B×C×d×h×w) → autoencoder latent, float32: z0 / scale + shift."""
        z = z0.float() / torch.tensor(self.config.latent_scale, dtype=torch.float32, device=z0.device)
        if self.latent_shift is not None:
            z = z + self.latent_shift.to(z.device, torch.float32)
        return z

    @property
    def name(self) -> str:
        return str(self.identity.get("name", "unnamed LDAE model"))

    @property
    def limitations(self) -> dict[str, str]:
        """What the model's maker says it does badly, by operation ("edit", "interpolate", "vary",
        "reconstruct"): the bundle's ``source.limitations`` (``annotate_bundle``). The command line
        prints the note before such an operation, the Slicer panel shows it beside the button, and
        the outputs' provenance repeats it (``model_limitation``). Empty for most models."""
        lim = (self.identity.get("source") or {}).get("limitations")
        if not isinstance(lim, dict):
            return {}
        return {str(k): v.strip() for k, v in lim.items() if isinstance(v, str) and v.strip()}

    def fingerprint(self) -> str:
        """SHA-256 that tells this model's weights and configuration apart from any other's: the
        identity's ``hash`` for a model loaded from files (``weights.identify``: over the weight
        files' own SHA-256), else over every parameter and buffer (computed once; a few seconds at
        the official size)."""
        if self.identity.get("hash"):
            return str(self.identity["hash"])
        cached = getattr(self, "_fingerprint", None)
        if cached is not None:
            return cached
        h = hashlib.sha256(json.dumps(self.config.to_dict(), sort_keys=True, default=str).encode())
        for name, t in [*self.named_parameters(), *self.named_buffers()]:  # compact weights live in buffers
            h.update(name.encode())
            h.update(t.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
        if self.latent_shift is not None:
            h.update(b"latent_shift" + self.latent_shift.float().contiguous().numpy().tobytes())
        if self.reference_code is not None:
            h.update(b"reference_code" + self.reference_code.float().contiguous().numpy().tobytes())
        self._fingerprint = h.hexdigest()
        return self._fingerprint

    def num_parameters(self) -> int:
        seen, n = set(), 0
        for p in self.parameters():
            if id(p) not in seen:
                seen.add(id(p))
                n += p.numel()
        return n


def small_config() -> LDAEConfig:
    """A reduced model on a 3 mm grid (64×80×64) that keeps the official 3×16×20×16 latent.

    Used for the random-weight stand-in and as the starting point of the demo model; the autoencoder
    downsamples by 4 instead of 8, so the latent UNet runs the same code path as the authors'.
    """
    return LDAEConfig(
        autoencoder=AutoencoderConfig(num_channels=(16, 32, 32), norm_num_groups=8, attention_levels=(False, False, False)),
        unet=UNetConfig(base_channel=32, channel_multiplier=(1, 2, 2), latent_dim=64),
        encoder=SemanticEncoderConfig(widths=(8, 16, 32, 64), depths=(1, 1, 3, 1), emb_dim=64),
        space=ModelSpaceConfig(spacing_mm=(3.0, 3.0, 3.0), shape=(64, 80, 64)),
    )

"""Latent denoising UNet and the ShiftUNet gradient estimator, with the authors' key names.

Both take a latent x (B×C×D×H×W, official C=3, 16×20×16) and DDPM timesteps t (B,) int64.
``UNet`` returns ε (B×C×D×H×W). ``ShiftUNet`` also takes the semantic code y (B×latent_dim) and
returns (ε, g): ε from the frozen denoiser branch, g from the gradient-estimator branch.
Only the last two spatial axes are resampled, so H and W must be divisible by 2^(levels−1).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .blocks import AttentionBlock, EmbedSequential, ResBlock, timestep_embedding
from .config import config_from_dict, config_to_dict


@dataclass
class UNetConfig:
    """Hyper-parameters, named as the authors' ``unet_args`` (official values as defaults).

    ``latent_dim`` is the size of y_sem for a ShiftUNet (None for a plain UNet).
    ``norm_num_groups`` is hard-coded to 32 in the authors' code; it is a parameter here.
    """

    input_channel: int = 3
    base_channel: int = 256
    channel_multiplier: tuple[int, ...] = (1, 2, 3)
    num_residual_blocks_of_a_block: int = 2
    attention_resolutions: tuple[int, ...] = (2, 4)
    num_heads: int = 1
    head_channel: int = -1
    dropout: float = 0.1
    latent_dim: int | None = 768
    norm_num_groups: int = 32

    # Keys of the authors' unet_args that need no field here (their values are fixed by the design).
    _IGNORED = ("dims", "learn_sigma", "num_class", "use_new_attention_order")

    @property
    def time_embed_dim(self) -> int:
        return 4 * self.base_channel

    def to_dict(self) -> dict:
        return config_to_dict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "UNetConfig":
        d = dict(d)
        if d.get("use_new_attention_order"):
            raise ValueError("use_new_attention_order=True is not supported (the authors' models use the legacy order)")
        if d.get("learn_sigma"):
            raise ValueError("learn_sigma=True is not supported (the authors' models predict ε only)")
        if d.get("dims", 3) != 3:
            raise ValueError("only 3-D UNets are supported")
        return config_from_dict(cls, d, "UNet", cls._IGNORED)


def infer_unet_config(state_dict: dict[str, torch.Tensor]) -> UNetConfig:
    """Read widths and depths of a UNet/ShiftUNet from its state dict's tensor shapes.

    What shapes cannot tell (heads, GroupNorm groups, dropout) keeps the authors' defaults.
    """
    sd = state_dict
    w0 = sd["input_blocks.0.0.weight"]
    base, in_ch = int(w0.shape[0]), int(w0.shape[1])

    def n_blocks(prefix: str) -> int:
        idx = {int(k[len(prefix):].split(".")[0]) for k in sd if k.startswith(prefix)}
        return max(idx) + 1 if idx else 0

    n_out = n_blocks("output_blocks.")

    def has_up(i: int) -> bool:  # an output block ends with an upsampling ResBlock at sub-index ≥ 1
        return any(k.startswith(f"output_blocks.{i}.") and k.split(".")[2] != "0" and ".in_layers." in k for k in sd)

    ups = [i for i in range(n_out) if has_up(i)]
    per_level = (ups[0] + 1) if ups else n_out
    nrb = per_level - 1
    levels = n_out // per_level
    mults, attn = [], []
    for level in range(levels):
        first_out = (levels - 1 - level) * per_level
        ch = int(sd[f"output_blocks.{first_out}.0.out_layers.3.weight"].shape[0])
        mults.append(ch // base)
        if f"output_blocks.{first_out}.1.qkv.weight" in sd:
            attn.append(2**level)
    latent = sd.get("label_emb.weight")
    return UNetConfig(
        input_channel=in_ch,
        base_channel=base,
        channel_multiplier=tuple(mults),
        num_residual_blocks_of_a_block=nrb,
        attention_resolutions=tuple(attn),
        latent_dim=int(latent.shape[1]) if latent is not None else None,
    )


class UNet(nn.Module):
    """ε-prediction UNet of the latent DDPM."""

    def __init__(self, config: UNetConfig) -> None:
        super().__init__()
        self.config = c = config
        emb = c.time_embed_dim
        g = c.norm_num_groups
        self.time_embed = nn.Sequential(nn.Linear(c.base_channel, emb), nn.SiLU(), nn.Linear(emb, emb))

        def attention(ch: int) -> AttentionBlock:
            return AttentionBlock(ch, c.num_heads, c.head_channel, g)

        self.input_blocks = nn.ModuleList([EmbedSequential(nn.Conv3d(c.input_channel, c.base_channel, 3, padding=1))])
        skip_chans = [c.base_channel]
        ch, ds = c.base_channel, 1
        for level, mult in enumerate(c.channel_multiplier):
            for _ in range(c.num_residual_blocks_of_a_block):
                layers: list[nn.Module] = [ResBlock(ch, emb, mult * c.base_channel, c.dropout, norm_groups=g)]
                ch = mult * c.base_channel
                if ds in c.attention_resolutions:
                    layers.append(attention(ch))
                self.input_blocks.append(EmbedSequential(*layers))
                skip_chans.append(ch)
            if level != len(c.channel_multiplier) - 1:
                self.input_blocks.append(EmbedSequential(ResBlock(ch, emb, ch, c.dropout, resample="down", norm_groups=g)))
                skip_chans.append(ch)
                ds *= 2
        self._skip_chans = list(skip_chans)
        self._bottom = (ch, ds)

        self.middle_block = self._middle(shift=False)
        self.output_blocks = self._outputs(shift=False)
        self.out = nn.Sequential(nn.GroupNorm(g, c.base_channel), nn.SiLU(), nn.Conv3d(c.base_channel, c.input_channel, 3, padding=1))

    def _middle(self, shift: bool) -> EmbedSequential:
        c, (ch, _) = self.config, self._bottom
        emb, g = c.time_embed_dim, c.norm_num_groups
        return EmbedSequential(
            ResBlock(ch, emb, ch, c.dropout, shift=shift, norm_groups=g),
            AttentionBlock(ch, c.num_heads, c.head_channel, g),
            ResBlock(ch, emb, ch, c.dropout, shift=shift, norm_groups=g),
        )

    def _outputs(self, shift: bool) -> nn.ModuleList:
        c, (ch, ds) = self.config, self._bottom
        emb, g = c.time_embed_dim, c.norm_num_groups
        skips = list(self._skip_chans)
        blocks = nn.ModuleList()
        for level, mult in list(enumerate(c.channel_multiplier))[::-1]:
            for i in range(c.num_residual_blocks_of_a_block + 1):
                layers: list[nn.Module] = [
                    ResBlock(ch + skips.pop(), emb, mult * c.base_channel, c.dropout, shift=shift, norm_groups=g)
                ]
                ch = mult * c.base_channel
                if ds in c.attention_resolutions:
                    layers.append(AttentionBlock(ch, c.num_heads, c.head_channel, g))
                if level and i == c.num_residual_blocks_of_a_block:
                    layers.append(ResBlock(ch, emb, ch, c.dropout, resample="up", shift=shift, norm_groups=g))
                    ds //= 2
                blocks.append(EmbedSequential(*layers))
        return blocks

    def _encode(self, x: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]]:
        emb = self.time_embed(timestep_embedding(t, self.config.base_channel).to(x.dtype))
        hs = []
        h = x
        for block in self.input_blocks:
            h = block(h, emb)
            hs.append(h)
        return h, emb, hs

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """x: B×C×D×H×W latent, t: (B,) int64 DDPM timesteps → ε, same shape as x."""
        return self._eps_branch(*self._shared(x, t))

    def _shared(self, x: torch.Tensor, t: torch.Tensor):
        """The encoder both branches read: bottleneck, time embedding, skips in the decoder's order."""
        h, emb, hs = self._encode(x, t)
        return h, emb, hs[::-1]

    def _eps_branch(self, h: torch.Tensor, emb: torch.Tensor, skips: list[torch.Tensor]) -> torch.Tensor:
        h = self.middle_block(h, emb)
        for block, skip in zip(self.output_blocks, skips):
            h = block(torch.cat([h, skip], dim=1), emb)
        return self.out(h)


class ShiftUNet(UNet):
    """UNet ε-branch plus the gradient estimator Gψ conditioned on y_sem."""

    def __init__(self, config: UNetConfig) -> None:
        if config.latent_dim is None:
            raise ValueError("a ShiftUNet needs latent_dim (the size of y_sem)")
        super().__init__(config)
        c = config
        self.label_emb = nn.Linear(c.latent_dim, c.time_embed_dim)
        self.shift_middle_block = self._middle(shift=True)
        self.shift_output_blocks = self._outputs(shift=True)
        self.shift_out = nn.Sequential(
            nn.GroupNorm(c.norm_num_groups, c.base_channel), nn.SiLU(), nn.Conv3d(c.base_channel, c.input_channel, 3, padding=1)
        )

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:  # type: ignore[override]
        """x: B×C×D×H×W latent, t: (B,) int64, y: B×latent_dim → (ε, g), each shaped like x."""
        h, emb, skips = self._shared(x, t)
        return self._eps_branch(h, emb, skips), self._shift_branch(h, emb, skips, y)

    def forward_with_reference(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor, reference: torch.Tensor):
        """(ε, g(y), g(reference)) with the shared encoder and the ε-branch run once: what code
        guidance needs, at about 1.5 calls' cost. ``reference``: latent_dim or B×latent_dim.
        ε and g(y) equal ``forward``'s."""
        h, emb, skips = self._shared(x, t)
        ref = reference.reshape(-1, reference.shape[-1]).expand(x.shape[0], -1)
        return self._eps_branch(h, emb, skips), self._shift_branch(h, emb, skips, y), self._shift_branch(h, emb, skips, ref)

    def _shift_branch(self, h: torch.Tensor, emb: torch.Tensor, skips: list[torch.Tensor], y: torch.Tensor) -> torch.Tensor:
        z = self.label_emb(y.to(h.dtype))
        h = self.shift_middle_block(h, emb, z)
        for block, skip in zip(self.shift_output_blocks, skips):
            h = block(torch.cat([h, skip], dim=1), emb, z)
        return self.shift_out(h)

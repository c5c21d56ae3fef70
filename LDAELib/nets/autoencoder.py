"""The first-stage AutoencoderKL: MONAI's class, which is numerically the authors' one.

x: B×1×128×160×128 in [0,1] ↔ latent B×3×16×20×16 (official widths). The authors' checkpoints use
monai-generative key names; ``convert_old_keys`` renames the six upsampling-conv keys so the state
dict loads strictly (a strict load reports every missing or unexpected tensor, which MONAI's own
``load_old_state_dict`` would silently fill with random values).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from monai.networks.nets import AutoencoderKL

from .config import config_from_dict, config_to_dict


@dataclass
class AutoencoderConfig:
    """Hyper-parameters, named as the authors' ``vae_args`` (official values as defaults)."""

    spatial_dims: int = 3
    in_channels: int = 1
    out_channels: int = 1
    num_channels: tuple[int, ...] = (64, 128, 128, 128)
    latent_channels: int = 3
    num_res_blocks: int = 2
    norm_num_groups: int = 32
    norm_eps: float = 1e-6
    attention_levels: tuple[bool, ...] = (False, False, False, False)
    with_encoder_nonlocal_attn: bool = False
    with_decoder_nonlocal_attn: bool = False

    _IGNORED = ("use_flash_attention", "use_checkpointing", "use_convtranspose")

    @property
    def downsampling(self) -> int:
        """Spatial reduction factor between image and latent."""
        return 2 ** (len(self.num_channels) - 1)

    def to_dict(self) -> dict:
        return config_to_dict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "AutoencoderConfig":
        d = dict(d)
        if "channels" in d and "num_channels" not in d:  # MONAI ≥ 1.4 spelling
            d["num_channels"] = d.pop("channels")
        if d.get("use_convtranspose"):
            raise ValueError("use_convtranspose=True is not supported (the authors' autoencoder upsamples by interpolation)")
        return config_from_dict(cls, d, "autoencoder", cls._IGNORED)


def build_autoencoder(config: AutoencoderConfig) -> AutoencoderKL:
    c = config
    return AutoencoderKL(
        spatial_dims=c.spatial_dims,
        in_channels=c.in_channels,
        out_channels=c.out_channels,
        channels=tuple(c.num_channels),
        latent_channels=c.latent_channels,
        num_res_blocks=c.num_res_blocks,
        norm_num_groups=c.norm_num_groups,
        norm_eps=c.norm_eps,
        attention_levels=tuple(c.attention_levels),
        with_encoder_nonlocal_attn=c.with_encoder_nonlocal_attn,
        with_decoder_nonlocal_attn=c.with_decoder_nonlocal_attn,
    )


def infer_autoencoder_config(state_dict: dict[str, torch.Tensor]) -> AutoencoderConfig:
    """Widths and depths from tensor shapes; GroupNorm groups and eps keep the authors' defaults."""
    sd = state_dict
    if any(".attn." in k or ".to_q." in k for k in sd):
        raise ValueError("autoencoders with attention blocks are not supported by the shape reader; give vae_args in a config")
    first = sd["encoder.blocks.0.conv.weight"]
    in_ch = int(first.shape[1])
    channels: list[int] = [int(first.shape[0])]
    res_per_level: list[int] = [0]
    i = 1
    while True:
        p = f"encoder.blocks.{i}."
        if p + "norm1.weight" in sd:
            out = int(sd[p + "conv2.conv.weight"].shape[0])
            if res_per_level[-1] == 0:
                channels[-1] = out
            res_per_level[-1] += 1
        elif p + "conv.conv.weight" in sd:  # downsampling conv: a new level starts
            channels.append(channels[-1])
            res_per_level.append(0)
        else:
            break
        i += 1
    if len(set(res_per_level)) != 1:
        raise ValueError(f"unexpected autoencoder layout: residual blocks per level {res_per_level}")
    latent = int(sd["quant_conv_mu.conv.weight"].shape[0])
    out_key = max((k for k in sd if k.startswith("decoder.blocks.") and k.endswith(".conv.weight")),
                  key=lambda k: int(k.split(".")[2]))
    return AutoencoderConfig(
        in_channels=in_ch,
        out_channels=int(sd[out_key].shape[0]),
        num_channels=tuple(channels),
        latent_channels=latent,
        num_res_blocks=res_per_level[0],
        attention_levels=(False,) * len(channels),
    )


def convert_old_keys(state_dict: dict[str, torch.Tensor], target_keys: set[str]) -> dict[str, torch.Tensor]:
    """Rename monai-generative keys to MONAI ≥ 1.4 names (``….conv.conv.*`` → ``….postconv.conv.*``
    of the decoder's upsampling blocks). Keys already in ``target_keys`` are kept; nothing is dropped."""
    out = {}
    for k, v in state_dict.items():
        if k not in target_keys and ".conv.conv." in k:
            renamed = k.replace(".conv.conv.", ".postconv.conv.")
            if renamed in target_keys:
                k = renamed
        out[k] = v
    return out


# Each output voxel of "nearest ×2, then 3-tap conv" sees 2 low-resolution neighbours per axis:
# even outputs (phase 0) see offsets (−1, 0) with taps (w0, w1+w2); odd outputs see (0, +1) with (w0+w1, w2).
_PHASE_TAPS = torch.tensor([[[1.0, 0.0, 0.0], [0.0, 1.0, 1.0]], [[1.0, 1.0, 0.0], [0.0, 0.0, 1.0]]])


def polyphase_upsample_conv(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """``conv3d(nearest_upsample_x2(x), weight, bias, padding=1)`` without building the upsampled input.

    The 3³ kernel folds into eight 2³ kernels, one per output phase, applied on the low-resolution
    grid: 8/27 of the multiply-adds, and the 2×-sized C-channel input is never materialised. Equal
    to the direct form up to float rounding (the folded taps are sums of weights).

    x: B×C×D×H×W, weight: O×C×3×3×3 → B×O×2D×2H×2W.
    """
    b, _, d, h, w = x.shape
    o = weight.shape[0]
    m = _PHASE_TAPS.to(weight.device, weight.dtype)
    # kernels[p] for phase p = (a, b, c): O×C×2×2×2, stacked into one conv of 8·O output channels
    k = torch.einsum("xyijk,aui,bvj,cwk->abcxyuvw", weight, m, m, m).reshape(8 * o, *weight.shape[1:2], 2, 2, 2)
    y = torch.nn.functional.conv3d(torch.nn.functional.pad(x, (1, 1, 1, 1, 1, 1)), k)  # B×8O×(D+1)×(H+1)×(W+1)
    out = x.new_empty((b, o, 2 * d, 2 * h, 2 * w))
    for p in range(8):
        pa, pb, pc = (p >> 2) & 1, (p >> 1) & 1, p & 1
        out[:, :, pa::2, pb::2, pc::2] = y[:, p * o : (p + 1) * o, pa : pa + d, pb : pb + h, pc : pc + w]
    if bias is not None:
        out += bias.reshape(1, -1, 1, 1, 1)
    return out


def use_polyphase_upsampling(autoencoder: AutoencoderKL) -> AutoencoderKL:
    """Switch the decoder's nearest-×2 + conv upsampling blocks to ``polyphase_upsample_conv``.

    Weights and state-dict keys are unchanged; only the computation differs (faster, less memory).
    """
    from monai.networks.blocks.upsample import UpSample

    for block in autoencoder.decoder.blocks:
        if isinstance(block, UpSample) and not isinstance(block, _PolyphaseUpSample):
            interp = getattr(block, "upsample_non_trainable", None)
            conv = getattr(getattr(block, "postconv", None), "conv", None)
            if interp is None or conv is None or getattr(interp, "mode", "") != "nearest" or tuple(conv.kernel_size) != (3, 3, 3):
                continue
            block.__class__ = _PolyphaseUpSample
    return autoencoder


def _polyphase_forward(self, x: torch.Tensor) -> torch.Tensor:
    conv = self.postconv.conv
    return polyphase_upsample_conv(x, conv.weight, conv.bias)


def _make_polyphase_class():
    from monai.networks.blocks.upsample import UpSample

    return type("_PolyphaseUpSample", (UpSample,), {"forward": _polyphase_forward, "__doc__": "MONAI UpSample computed polyphase."})


_PolyphaseUpSample = _make_polyphase_class()

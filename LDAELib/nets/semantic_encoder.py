"""Semantic encoder E: a 3-D scan → the semantic code y_sem, with the authors' key names.

A ConvNeXt encodes every slice along axis 2 of a B×1×S×H×W volume (the tutorial's axial slices,
intensities in [0, 1], no ImageNet normalisation); the B×S×C slice features get a sinusoidal
positional encoding, are pooled by a soft attention over slices into one query, and a multi-head
cross-attention of that query over the slices, followed by a LayerNorm, gives y_sem (B×C).

The authors register the backbone twice (``backbone`` and ``slice_distributed.module``), so its
tensors appear under two keys with shared storage: ``backbone.backbone.<convnext key>`` and
``slice_distributed.module.backbone.<convnext key>``. This module does the same, so their state
dicts load with ``strict=True``; :func:`normalise_semantic_encoder_keys` fills in a missing alias.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from .config import config_from_dict, config_to_dict
from .convnext import ConvNeXt

BACKBONE_PREFIX = "backbone.backbone."
BACKBONE_ALIAS_PREFIX = "slice_distributed.module.backbone."


@dataclass
class SemanticEncoderConfig:
    """Hyper-parameters of the semantic encoder (official ConvNeXt-Small values as defaults).

    ``emb_dim`` is the size of y_sem and must equal ``widths[-1]`` (the authors' ``emb_chans``).
    ``seq_len`` is the length of the positional-encoding table, i.e. the most slices a volume may have.
    """

    widths: tuple[int, ...] = (96, 192, 384, 768)
    depths: tuple[int, ...] = (3, 3, 27, 3)
    emb_dim: int = 768
    seq_len: int = 128
    num_heads: int = 8

    def to_dict(self) -> dict:
        return config_to_dict(self)

    @classmethod
    def from_dict(cls, d: Mapping) -> "SemanticEncoderConfig":
        return config_from_dict(cls, d, "semantic encoder")


def normalise_semantic_encoder_keys(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Return a state dict holding the backbone under both of its aliases, ready for a strict load.

    A file may list the backbone tensors under ``backbone.backbone.*``, under
    ``slice_distributed.module.backbone.*`` or under both (the authors' files); the missing alias is
    filled with the same tensors. Backbone keys come first, in the module's order; other keys keep
    their order. Raises ValueError when both aliases are present but hold different values.
    """
    primary = {k[len(BACKBONE_PREFIX):]: v for k, v in state_dict.items() if k.startswith(BACKBONE_PREFIX)}
    alias = {k[len(BACKBONE_ALIAS_PREFIX):]: v for k, v in state_dict.items() if k.startswith(BACKBONE_ALIAS_PREFIX)}
    for name in primary.keys() & alias.keys():
        a, b = primary[name], alias[name]
        if a.shape != b.shape or not torch.equal(a, b):
            raise ValueError(
                f"the semantic encoder file holds two different values for backbone tensor '{name}' "
                f"('{BACKBONE_PREFIX}{name}' and '{BACKBONE_ALIAS_PREFIX}{name}'); it was not saved from one model"
            )
    backbone = dict(primary)
    for name, v in alias.items():
        backbone.setdefault(name, v)
    out = {BACKBONE_PREFIX + name: v for name, v in backbone.items()}
    out.update({BACKBONE_ALIAS_PREFIX + name: v for name, v in backbone.items()})
    for k, v in state_dict.items():
        if not (k.startswith(BACKBONE_PREFIX) or k.startswith(BACKBONE_ALIAS_PREFIX)):
            out[k] = v
    return out


def infer_semantic_encoder_config(state_dict: Mapping[str, torch.Tensor]) -> SemanticEncoderConfig:
    """Read widths, depths, emb_dim and seq_len from a semantic encoder state dict's tensor shapes.

    Either backbone alias is enough. ``num_heads`` cannot be read from shapes and keeps its default (8).
    Raises ValueError when the dict is not a semantic encoder's.
    """
    sd = normalise_semantic_encoder_keys(state_dict)
    required = ("features.0.0.weight", "classifier.0.weight")
    missing = [BACKBONE_PREFIX + k for k in required if BACKBONE_PREFIX + k not in sd]
    for k in ("positional_encoding.pe", "layer_norm_after_attention.weight"):
        if k not in sd:
            missing.append(k)
    if missing:
        raise ValueError(f"not a semantic encoder state dict: missing {missing}")
    stem = sd[BACKBONE_PREFIX + "features.0.0.weight"]
    if stem.ndim != 4 or stem.shape[1] != 1:
        raise ValueError(f"the semantic encoder's stem must take 1 channel; its weight has shape {tuple(stem.shape)}")

    # Stages sit at odd ``features`` indices; their blocks are numbered from 0.
    blocks: dict[int, set[int]] = {}
    widths: dict[int, int] = {}
    for k, v in sd.items():
        if not k.startswith(BACKBONE_PREFIX + "features.") or not k.endswith(".layer_scale"):
            continue
        parts = k[len(BACKBONE_PREFIX):].split(".")  # features.<stage>.<block>.layer_scale
        stage, block = int(parts[1]), int(parts[2])
        blocks.setdefault(stage, set()).add(block)
        widths[stage] = int(v.shape[0])
    stages = sorted(blocks)
    if stages != list(range(1, 2 * len(stages), 2)):
        raise ValueError(f"unexpected ConvNeXt layout: stages at features indices {stages}")
    depths = tuple(len(blocks[s]) for s in stages)
    pe = sd["positional_encoding.pe"]
    return SemanticEncoderConfig(
        widths=tuple(widths[s] for s in stages),
        depths=depths,
        emb_dim=int(sd["layer_norm_after_attention.weight"].shape[0]),
        seq_len=int(pe.shape[1]),
    )


def sinusoidal_positional_encoding(seq_len: int, dim: int) -> torch.Tensor:
    """pe[k, 2i] = sin(k·10000^(−2i/dim)), pe[k, 2i+1] = cos(k·10000^(−2i/dim)); returns 1×seq_len×dim float32."""
    position = torch.arange(seq_len, dtype=torch.float32).unsqueeze(1)
    div_term = torch.exp(torch.arange(0, dim, 2, dtype=torch.float32) * (-math.log(10000.0) / dim))
    pe = torch.zeros(seq_len, dim)
    pe[:, 0::2] = torch.sin(position * div_term)
    pe[:, 1::2] = torch.cos(position * div_term[: dim // 2])
    return pe.unsqueeze(0)


class SliceBackbone(nn.Module):
    """Wrapper that holds the ConvNeXt as ``backbone`` (the authors' extra key level).

    Input N×1×H×W slices; output N×widths[-1] features.
    """

    def __init__(self, widths: Sequence[int], depths: Sequence[int]) -> None:
        super().__init__()
        self.backbone = ConvNeXt(widths, depths, in_channels=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone(x)


class SliceDistributed(nn.Module):
    """Apply a 2-D ``module`` to every slice along axis 2: B×C×S×H×W → B×S×F."""

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.module = module

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, s, h, w = x.shape
        # reshape, not view: the input need not be contiguous (e.g. a permuted volume).
        slices = x.transpose(1, 2).reshape(b * s, c, h, w)
        return self.module(slices).reshape(b, s, -1)


class PositionalEncoding(nn.Module):
    """Add the sinusoidal table ``pe`` (buffer 1×seq_len×dim, saved in the state dict): B×S×dim → B×S×dim."""

    def __init__(self, dim: int, seq_len: int = 128, dropout: float = 0.1) -> None:
        super().__init__()
        self.dropout = nn.Dropout(dropout)
        self.register_buffer("pe", sinusoidal_positional_encoding(seq_len, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(x + self.pe[:, : x.shape[1]])


class SoftAttentionPooling(nn.Module):
    """Score every slice with ``linear`` (dim→1), softmax over slices, weighted mean.

    Input B×S×dim; returns (pooled B×dim, weights B×S).
    """

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.linear = nn.Linear(dim, 1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # Softmax over a contiguous B×S tensor and a bmm, in this order, match the authors' rounding.
        weights = torch.softmax(self.linear(x).squeeze(-1), dim=-1)  # B×S
        return torch.bmm(weights.unsqueeze(1), x).squeeze(1), weights


class SemanticEncoder(nn.Module):
    """The authors' ``AttentionSemanticEncoder`` (inference path).

    Args:
        widths, depths: ConvNeXt stage widths and depths (official ConvNeXt-Small:
            (96, 192, 384, 768), (3, 3, 27, 3)).
        emb_dim: size of y_sem; must equal widths[-1].
        seq_len: most slices a volume may have (length of the positional-encoding table).
        num_heads: heads of the cross-attention (emb_dim must be divisible by it).
        dropout: dropout of the positional encoding and of the attention (training only).

    Input B×1×S×H×W float32 in [0, 1] (S ≤ seq_len; H, W multiples of 32); output y_sem B×emb_dim.
    """

    def __init__(
        self,
        widths: Sequence[int] = (96, 192, 384, 768),
        depths: Sequence[int] = (3, 3, 27, 3),
        emb_dim: int = 768,
        seq_len: int = 128,
        num_heads: int = 8,
        dropout: float = 0.1,
    ) -> None:
        super().__init__()
        widths, depths = tuple(int(w) for w in widths), tuple(int(d) for d in depths)
        if emb_dim != widths[-1]:
            raise ValueError(f"emb_dim ({emb_dim}) must equal the last ConvNeXt width ({widths[-1]})")
        if emb_dim % num_heads:
            raise ValueError(f"emb_dim ({emb_dim}) must be divisible by num_heads ({num_heads})")
        self.config = SemanticEncoderConfig(widths, depths, int(emb_dim), int(seq_len), int(num_heads))

        # Registration order fixes the state-dict order of the authors' files.
        self.backbone = SliceBackbone(widths, depths)
        self.slice_distributed = SliceDistributed(self.backbone)  # same module: shared storage
        self.positional_encoding = PositionalEncoding(emb_dim, seq_len, dropout)
        self.query_projection = nn.Linear(emb_dim, emb_dim)
        self.key_projection = nn.Linear(emb_dim, emb_dim)
        self.value_projection = nn.Linear(emb_dim, emb_dim)
        self.soft_attention = SoftAttentionPooling(emb_dim)
        self.cross_attention = nn.MultiheadAttention(emb_dim, num_heads, dropout=dropout, batch_first=True)
        self.layer_norm_after_attention = nn.LayerNorm(emb_dim)

    @classmethod
    def from_config(cls, config: SemanticEncoderConfig) -> "SemanticEncoder":
        return cls(config.widths, config.depths, config.emb_dim, config.seq_len, config.num_heads)

    def forward_with_intermediates(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Run the encoder and return every named step (the fixture's names).

        Args:
            x: B×1×S×H×W float, intensities in [0, 1].
        Returns:
            ``slice_features`` B×S×C (backbone output per slice), ``slice_features_plus_pe`` B×S×C,
            ``soft_attention_weights`` B×S, ``soft_attention_query`` B×C (pooled, before
            ``query_projection``), ``y_sem`` B×C.
        """
        if x.ndim != 5 or x.shape[1] != 1:
            raise ValueError(f"the semantic encoder takes a B×1×S×H×W volume; got shape {tuple(x.shape)}")
        if x.shape[2] > self.config.seq_len:
            raise ValueError(f"the semantic encoder takes at most {self.config.seq_len} slices; got {x.shape[2]}")
        features = self.slice_distributed(x)
        features_pe = self.positional_encoding(features)
        pooled, weights = self.soft_attention(features_pe)
        q = self.query_projection(pooled).unsqueeze(1)  # B×1×C
        k = self.key_projection(features_pe)
        v = self.value_projection(features_pe)
        # need_weights stays at its default (True), as in the authors' code: that selects the same
        # attention kernel, which reproduces their y_sem bit for bit.
        attended = self.cross_attention(q, k, v)[0]  # B×1×C
        y_sem = self.layer_norm_after_attention(attended).squeeze(1)
        return {
            "slice_features": features,
            "slice_features_plus_pe": features_pe,
            "soft_attention_weights": weights,
            "soft_attention_query": pooled,
            "y_sem": y_sem,
        }

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """B×1×S×H×W float in [0, 1] → y_sem B×emb_dim."""
        return self.forward_with_intermediates(x)["y_sem"]


def slice_stack(x: torch.Tensor, plane: str = "axial") -> torch.Tensor:
    """B×1×A×B×S model-space volumes → the B×1×S×A×B stack of 2-D slices the encoder reads
    (axial: slices along the last axis, NIfTI k, axial in MNI)."""
    if plane == "axial":
        return x.permute(0, 1, 4, 2, 3)
    if plane == "coronal":
        return x.permute(0, 1, 3, 2, 4)
    if plane == "sagittal":
        return x
    from ..errors import LDAEError

    raise LDAEError(f"unknown slicing plane {plane!r}; choose axial, coronal or sagittal")

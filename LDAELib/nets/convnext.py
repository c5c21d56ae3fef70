"""2-D ConvNeXt backbone of the semantic encoder, with torchvision's key names.

The authors use torchvision's ``convnext_small`` with a 1-channel stem (RGB kernels summed) and the
1000-class head replaced by Identity, so one slice (N×1×H×W) maps to a feature vector N×C_last:

    features.0        stem: Conv2d 4×4 stride 4 → LayerNorm2d
    features.1,3,5,7  stages of ``CNBlock``s (depths, e.g. (3, 3, 27, 3))
    features.2,4,6    downsamplers: LayerNorm2d → Conv2d 2×2 stride 2
    avgpool           global average pooling
    classifier        LayerNorm2d → flatten → Identity

Every LayerNorm has eps 1e-6. Stochastic depth only acts in training mode and has no parameters.
H and W should be multiples of 32 (the official slices are 128×160 or 160×128).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

LAYER_NORM_EPS = 1e-6


class LayerNorm2d(nn.LayerNorm):
    """LayerNorm over the channel axis of an N×C×H×W tensor (as torchvision's ``LayerNorm2d``)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.permute(0, 2, 3, 1)
        x = F.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)
        return x.permute(0, 3, 1, 2)


class Permute(nn.Module):
    """Permute the axes of a tensor (kept as a module so ``CNBlock.block`` indices match torchvision)."""

    def __init__(self, dims: Sequence[int]) -> None:
        super().__init__()
        self.dims = tuple(dims)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.permute(self.dims)


def stochastic_depth(x: torch.Tensor, p: float, training: bool) -> torch.Tensor:
    """Drop whole samples' residual branches with probability p ("row" mode); identity in eval."""
    if not training or p == 0.0:
        return x
    keep = 1.0 - p
    mask = torch.empty((x.shape[0],) + (1,) * (x.ndim - 1), dtype=x.dtype, device=x.device).bernoulli_(keep)
    return x * mask / keep


class CNBlock(nn.Module):
    """ConvNeXt block: x + layer_scale · MLP(LN(dwconv7×7(x))), N×C×H×W → N×C×H×W.

    ``block`` indices: 0 depthwise conv, 1 to channels-last, 2 LayerNorm, 3 Linear C→4C, 4 GELU,
    5 Linear 4C→C, 6 back to channels-first.
    """

    def __init__(self, dim: int, layer_scale: float = 1e-6, stochastic_depth_prob: float = 0.0) -> None:
        super().__init__()
        self.block = nn.Sequential(
            nn.Conv2d(dim, dim, kernel_size=7, padding=3, groups=dim, bias=True),
            Permute((0, 2, 3, 1)),
            nn.LayerNorm(dim, eps=LAYER_NORM_EPS),
            nn.Linear(dim, 4 * dim, bias=True),
            nn.GELU(),
            nn.Linear(4 * dim, dim, bias=True),
            Permute((0, 3, 1, 2)),
        )
        self.layer_scale = nn.Parameter(torch.full((dim, 1, 1), float(layer_scale)))
        self.stochastic_depth_prob = float(stochastic_depth_prob)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        result = self.layer_scale * self.block(x)
        result = stochastic_depth(result, self.stochastic_depth_prob, self.training)
        return result + x


class ConvNeXt(nn.Module):
    """ConvNeXt feature extractor without a classification head.

    Args:
        widths: channels per stage, e.g. (96, 192, 384, 768) for ConvNeXt-Small.
        depths: blocks per stage, e.g. (3, 3, 27, 3) for ConvNeXt-Small.
        in_channels: input channels (1 for the authors' grayscale stem).
        stochastic_depth_prob: final drop rate of the linearly increasing stochastic-depth schedule
            (training only; torchvision's ConvNeXt-Small uses 0.4).
        layer_scale: initial value of the per-channel residual scales.

    Input N×in_channels×H×W float; output N×widths[-1].
    """

    def __init__(
        self,
        widths: Sequence[int] = (96, 192, 384, 768),
        depths: Sequence[int] = (3, 3, 27, 3),
        in_channels: int = 1,
        stochastic_depth_prob: float = 0.0,
        layer_scale: float = 1e-6,
    ) -> None:
        super().__init__()
        widths, depths = tuple(int(w) for w in widths), tuple(int(d) for d in depths)
        if len(widths) != len(depths) or not widths:
            raise ValueError(f"ConvNeXt needs one width per stage: got widths {widths}, depths {depths}")
        self.widths, self.depths = widths, depths

        layers: list[nn.Module] = [
            nn.Sequential(
                nn.Conv2d(in_channels, widths[0], kernel_size=4, stride=4, padding=0, bias=True),
                LayerNorm2d(widths[0], eps=LAYER_NORM_EPS),
            )
        ]
        total_blocks, block_id = sum(depths), 0
        for stage, (width, depth) in enumerate(zip(widths, depths)):
            blocks = []
            for _ in range(depth):
                sd_prob = stochastic_depth_prob * block_id / (total_blocks - 1.0) if total_blocks > 1 else 0.0
                blocks.append(CNBlock(width, layer_scale, sd_prob))
                block_id += 1
            layers.append(nn.Sequential(*blocks))
            if stage + 1 < len(widths):
                layers.append(
                    nn.Sequential(
                        LayerNorm2d(width, eps=LAYER_NORM_EPS),
                        nn.Conv2d(width, widths[stage + 1], kernel_size=2, stride=2, bias=True),
                    )
                )
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(LayerNorm2d(widths[-1], eps=LAYER_NORM_EPS), nn.Flatten(1), nn.Identity())

        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """N×in_channels×H×W → N×widths[-1]."""
        x = self.features(x)
        x = self.avgpool(x)
        return self.classifier(x)

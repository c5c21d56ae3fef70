"""A 3-D patch discriminator for the decoder stage's adversarial term (training only; never shipped).

A decoder trained on L1 and SSIM alone predicts the mean of what it cannot infer from the latent,
and the mean of many plausible sulci is a blur. A patch discriminator scores every ~30-voxel
neighbourhood as real scan or decoder output; its hinge loss, added with a small weight to the
decoder's, pushes the decoder towards outputs whose local texture cannot be told from a scan.
This is the PatchGAN of pix2pix as latent-diffusion autoencoders use it (the authors' autoencoder
checkpoint carries its discriminator's weights, SPEC.md), sized for 1×64×80×64 volumes on a CPU.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class PatchDiscriminator3D(nn.Module):
    """B×1×D×H×W → B×1×(D/4−1)×(H/4−1)×(W/4−1) logits, one per ~30-voxel receptive field.

    conv 4³ stride 2 (``width``) → conv 4³ stride 2 (2·width) + GroupNorm → conv 4³ stride 1
    (4·width) + GroupNorm → conv 3³ to one logit; LeakyReLU 0.2 between; weights N(0, 0.02).
    Input sides must be multiples of 4 and at least 8.
    """

    def __init__(self, width: int = 16, in_channels: int = 1) -> None:
        super().__init__()
        if width < 8 or width % 8:
            raise ValueError(f"width must be a positive multiple of 8, got {width}")
        a, b, c = width, 2 * width, 4 * width
        act = lambda: nn.LeakyReLU(0.2, inplace=True)  # noqa: E731
        self.net = nn.Sequential(
            nn.Conv3d(in_channels, a, 4, 2, 1), act(),
            nn.Conv3d(a, b, 4, 2, 1, bias=False), nn.GroupNorm(8, b), act(),
            nn.Conv3d(b, c, 4, 1, 1, bias=False), nn.GroupNorm(8, c), act(),
            nn.Conv3d(c, 1, 3, 1, 1),
        )
        for m in self.modules():
            if isinstance(m, nn.Conv3d):
                nn.init.normal_(m.weight, 0.0, 0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def hinge_discriminator_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    """mean relu(1 − D(real)) + mean relu(1 + D(fake))."""
    return F.relu(1.0 - real_logits.float()).mean() + F.relu(1.0 + fake_logits.float()).mean()


def generator_adversarial_loss(fake_logits: torch.Tensor) -> torch.Tensor:
    """−mean D(fake): what the generator (here, the decoder) minimises."""
    return -fake_logits.float().mean()


def discriminator_step(discriminator: nn.Module, optimizer: torch.optim.Optimizer, real: torch.Tensor,
                       fake: torch.Tensor, reduce_grads=None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One hinge step of ``discriminator`` on ``real`` against ``fake`` (detached). Its parameters take
    gradients only inside the step. ``reduce_grads(params)``, if given, runs between backward and the
    update (the data-parallel all-reduce); a non-finite loss raises FloatingPointError before the update.
    Returns the loss and the mean real and fake logits, detached."""
    discriminator.train()
    discriminator.requires_grad_(True)
    try:
        real_logits, fake_logits = discriminator(real), discriminator(fake.detach())
        loss = hinge_discriminator_loss(real_logits, fake_logits)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if reduce_grads is not None:
            reduce_grads(list(discriminator.parameters()))
        if not torch.isfinite(loss.detach()):
            raise FloatingPointError("the discriminator's loss is not finite")
        optimizer.step()
    finally:
        discriminator.requires_grad_(False)
    return loss.detach(), real_logits.detach().float().mean(), fake_logits.detach().float().mean()

"""Losses of the multi-scale generator: pixel (L1), SSIM, frequency, perceptual, adversarial.

Weights follow the paper's Table 1 where it has them (L1 0.06 per scale,
perceptual 0.083, adversarial 0.04); SSIM and frequency terms are ours.
"""
from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F
from torchmetrics.functional.image import structural_similarity_index_measure

from training.model import VGGFeatures


@dataclasses.dataclass
class LossWeights:
    l1: float = 0.06
    ssim: float = 0.0
    fft: float = 0.0
    perceptual: float = 0.0
    adversarial: float = 0.0


def rgb_to_y(x: torch.Tensor) -> torch.Tensor:
    """BT.601 luma in [0, 1] from RGB in [0, 1] (the paper's Y: 16..235 range / 255)."""
    r, g, b = x[:, 0], x[:, 1], x[:, 2]
    return (16.0 + 65.738 * r + 129.057 * g + 25.064 * b) / 255.0


def psnr(a: torch.Tensor, b: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """Per-image PSNR in dB for tensors in [0, 1] (any shape with batch first)."""
    mse = ((a - b) ** 2).flatten(1).mean(1)
    return 10 * torch.log10(1.0 / (mse + eps))


def ssim_loss(sr: torch.Tensor, hr: torch.Tensor) -> torch.Tensor:
    return 1 - structural_similarity_index_measure(sr.clamp(0, 1), hr, data_range=1.0)


def fft_loss(sr: torch.Tensor, hr: torch.Tensor) -> torch.Tensor:
    """L1 between the 2-D spectra: penalises missing high frequencies that L1 averages away."""
    return (torch.fft.rfft2(sr, norm="ortho") - torch.fft.rfft2(hr, norm="ortho")).abs().mean()


class GeneratorLoss(torch.nn.Module):
    """Sum over the three outputs of the weighted terms; returns (total, parts)."""

    def __init__(self, weights: LossWeights, vgg: VGGFeatures | None = None):
        super().__init__()
        self.w = weights
        if weights.perceptual and vgg is None:
            raise ValueError("a perceptual loss weight needs VGG features")
        self.vgg = vgg

    def forward(
        self, outputs: list[torch.Tensor], targets: list[torch.Tensor], fake_logits: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, dict[str, float]]:
        parts: dict[str, torch.Tensor] = {}
        total = outputs[0].new_zeros(())

        def add(name: str, value: torch.Tensor, weight: float) -> None:
            nonlocal total
            parts[name] = parts.get(name, 0) + value.detach()
            total = total + weight * value

        for sr, hr in zip(outputs, targets):
            add("l1", F.l1_loss(sr, hr), self.w.l1)
            if self.w.ssim:
                add("ssim", ssim_loss(sr, hr), self.w.ssim)
            if self.w.fft:
                add("fft", fft_loss(sr, hr), self.w.fft)
        if self.w.perceptual:
            # authors' code: 10X and 20X, layer i weighted (1 + i/3)/2, raw [0,1] RGB input
            for sr, hr in zip(outputs[:2], targets[:2]):
                for i, (fs, fh) in enumerate(zip(self.vgg(sr), self.vgg(hr))):
                    add("perceptual", F.mse_loss(fs, fh) * (1 + i / 3) / 2, self.w.perceptual)
        if self.w.adversarial:
            if fake_logits is None:
                raise ValueError("adversarial weight set but no discriminator output given")
            add("adversarial", F.binary_cross_entropy_with_logits(fake_logits, torch.ones_like(fake_logits)), self.w.adversarial)
        return total, {k: float(v) for k, v in parts.items()}


def discriminator_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    return F.binary_cross_entropy_with_logits(real_logits, torch.ones_like(real_logits)) + F.binary_cross_entropy_with_logits(
        fake_logits, torch.zeros_like(fake_logits)
    )

"""Losses of the multi-scale generator.

Pixel (L1), SSIM, frequency, perceptual (VGG19) and adversarial terms; for the
realistic-texture model also discriminator feature matching and consistency
with the scan. Weights follow the paper's Table 1 where it has them (L1 0.06
per scale, perceptual 0.083, adversarial 0.04); the other terms are ours.
"""
from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F
from torchmetrics.functional.image import structural_similarity_index_measure

from training.model import BicubicDown2, PatchDiscriminator, VGGFeatures


@dataclasses.dataclass
class LossWeights:
    l1: float = 0.06
    mse: float = 0.0  # mean squared error per scale: what PSNR measures
    ssim: float = 0.0
    fft: float = 0.0
    perceptual: float = 0.0
    adversarial: float = 0.0  # on the 40X output (the paper)
    feature_match: float = 0.0  # L1 between discriminator features of real and generated 40X
    consistency: float = 0.0  # L1 between the 40X output degraded back to 5X and the 5X input
    spectrum: float = 0.0  # L1 between log amplitude spectra of generated and real 40X (phase-free texture term)
    spectrum_symmetric: bool = False  # the real spectrum averaged over the 8 rotations/flips (no preferred direction)
    equivariance: float = 0.0  # L1 between the 40X of a turned input and the turned 40X (texture turns with the tissue)
    distill: float = 0.0  # L1 between the 40X and a teacher's last stage run on this model's 20X (a cheaper copy)
    teacher: str | None = None  # the teacher's checkpoint, for distill
    band_energy: float = 0.0  # |log| of the 40X luma band-energy ratio per image and octave (what evaluate.py reports)


def ssim_loss(sr: torch.Tensor, hr: torch.Tensor) -> torch.Tensor:
    return 1 - structural_similarity_index_measure(sr.clamp(0, 1), hr, data_range=1.0)


def fft_loss(sr: torch.Tensor, hr: torch.Tensor) -> torch.Tensor:
    """L1 between the 2-D spectra: penalises missing high frequencies that L1 averages away."""
    return (torch.fft.rfft2(sr, norm="ortho") - torch.fft.rfft2(hr, norm="ortho")).abs().mean()


def spectrum_loss(sr: torch.Tensor, hr: torch.Tensor) -> torch.Tensor:
    """L1 between log amplitude spectra, phase ignored: asks for the real amount of detail at
    every frequency without asking for the exact pixels (which the 5X scan cannot tell)."""
    a = torch.fft.rfft2(sr.float(), norm="ortho").abs()
    b = torch.fft.rfft2(hr.float(), norm="ortho").abs()
    return F.l1_loss(torch.log1p(255 * a), torch.log1p(255 * b))


def dihedral_amplitude(x: torch.Tensor) -> torch.Tensor:
    """The 2-D amplitude spectrum (``fft2``, ortho) of square images, power averaged over the 8
    rotations and flips: the spectrum of the same texture without its directions."""
    views = [torch.rot90(v, k, dims=(-2, -1)) for v in (x, x.transpose(-2, -1)) for k in range(4)]
    power = torch.stack([torch.fft.fft2(v, norm="ortho").abs() ** 2 for v in views]).mean(0)
    return power.sqrt()


def symmetric_spectrum_loss(sr: torch.Tensor, hr: torch.Tensor) -> torch.Tensor:
    """``spectrum_loss`` against the real image's direction-free spectrum: asks for the real amount
    of detail at every frequency and spread over every direction, so the generator cannot meet it
    with streaks of one orientation (texture that a rotated input does not rotate)."""
    a = torch.fft.fft2(sr.float(), norm="ortho").abs()
    return F.l1_loss(torch.log1p(255 * a), torch.log1p(255 * dihedral_amplitude(hr.float())))


def band_energy_loss(sr: torch.Tensor, hr: torch.Tensor) -> torch.Tensor:
    """Mean over images and the octaves of ``training.metrics.BANDS`` of |log(band power of sr / of hr)|,
    on mean-removed, Hann-windowed BT.601 luma as ``band_power`` measures it. Each octave counts alike and
    each image against its own real 40X, so the amount of texture follows the tissue (a frozen section
    has less fine detail than a paraffin one) instead of one amount for all."""
    from training.metrics import BANDS

    def luma(x: torch.Tensor) -> torch.Tensor:
        y = (65.738 * x[:, 0] + 129.057 * x[:, 1] + 25.064 * x[:, 2]) / 255.0
        return y - y.mean(dim=(-2, -1), keepdim=True)

    h, w = sr.shape[-2:]
    window = torch.outer(torch.hann_window(h, periodic=False, device=sr.device),
                         torch.hann_window(w, periodic=False, device=sr.device))
    radius = torch.hypot(*torch.meshgrid(torch.fft.fftfreq(h, device=sr.device), torch.fft.fftfreq(w, device=sr.device),
                                         indexing="ij"))
    power_sr = torch.fft.fft2(luma(sr.float()) * window).abs() ** 2
    power_hr = torch.fft.fft2(luma(hr.float()) * window).abs() ** 2
    terms = []
    for lo, hi in BANDS:
        mask = ((radius >= lo) & (radius < hi)).to(power_sr.dtype)
        e_sr, e_hr = (power_sr * mask).sum((-2, -1)), (power_hr * mask).sum((-2, -1))
        terms.append((torch.log(e_sr + 1e-6) - torch.log(e_hr + 1e-6)).abs())
    return torch.stack(terms).mean()


_DOWN = BicubicDown2()


def degrade_torch(x: torch.Tensor, halvings: int) -> torch.Tensor:
    """Differentiable twin of ``tileserver.degrade``: antialiased bicubic ×½ (Pillow's
    kernel), ``halvings`` times. Equal to the ingest degradation within ~1/255 in the
    interior (Pillow rounds to 8 bits between its two passes)."""
    down = _DOWN.to(x.device)
    for _ in range(halvings):
        x = down(x)
    return x


def consistency_loss(sr40: torch.Tensor, lr5: torch.Tensor) -> torch.Tensor:
    """How far the 40X output, degraded back to 5X, is from the 5X input (L1)."""
    return F.l1_loss(degrade_torch(sr40, 3), lr5)


def equivariance_loss(model: torch.nn.Module, lr5: torch.Tensor, out40: torch.Tensor) -> torch.Tensor:
    """L1 between the 40X of the input turned by 90, 180 or 270 degrees and the 40X turned alike:
    zero for texture that follows the tissue, large for streaks of one fixed direction."""
    k = int(torch.randint(1, 4, ()))
    turned = model(torch.rot90(lr5, k, dims=(-2, -1)))[-1]
    return F.l1_loss(turned.float(), torch.rot90(out40.float(), k, dims=(-2, -1)))


class GeneratorLoss(torch.nn.Module):
    """Sum over the three outputs of the weighted terms; returns (total, parts).

    Networks the terms need come in here: VGG features (perceptual), the discriminator
    (adversarial, feature matching), a frozen teacher (distill); the equivariance term runs
    the generator itself on a turned input, so ``forward`` takes it as ``model``."""

    def __init__(self, weights: LossWeights, vgg: VGGFeatures | None = None, disc: PatchDiscriminator | None = None,
                 teacher: torch.nn.Module | None = None):
        super().__init__()
        self.w = weights
        if weights.perceptual and vgg is None:
            raise ValueError("a perceptual loss weight needs VGG features")
        if (weights.adversarial or weights.feature_match) and disc is None:
            raise ValueError("adversarial and feature-matching weights need a discriminator")
        if weights.distill and teacher is None:
            raise ValueError("a distillation weight needs a teacher")
        self.vgg = vgg
        self.disc = disc
        self.teacher = teacher

    def forward(
        self, outputs: list[torch.Tensor], targets: list[torch.Tensor], lr5: torch.Tensor | None = None,
        model: torch.nn.Module | None = None,
    ) -> tuple[torch.Tensor, dict[str, float]]:
        parts: dict[str, torch.Tensor] = {}
        total = outputs[0].new_zeros(())

        def add(name: str, value: torch.Tensor, weight: float) -> None:
            nonlocal total
            parts[name] = parts.get(name, 0) + value.detach()
            total = total + weight * value

        for sr, hr in zip(outputs, targets):
            add("l1", F.l1_loss(sr, hr), self.w.l1)
            if self.w.mse:
                add("mse", F.mse_loss(sr, hr), self.w.mse)
            if self.w.ssim:
                add("ssim", ssim_loss(sr, hr), self.w.ssim)
            if self.w.fft:
                add("fft", fft_loss(sr, hr), self.w.fft)
        if self.w.perceptual:
            # authors' code: 10X and 20X, layer i weighted (1 + i/3)/2, raw [0,1] RGB input
            for sr, hr in zip(outputs[:2], targets[:2]):
                for i, (fs, fh) in enumerate(zip(self.vgg(sr), self.vgg(hr))):
                    add("perceptual", F.mse_loss(fs, fh) * (1 + i / 3) / 2, self.w.perceptual)
        if self.w.adversarial or self.w.feature_match:
            fake_logits, fake_feats = self.disc.features(outputs[-1])
            if self.w.adversarial:
                add("adversarial", F.binary_cross_entropy_with_logits(fake_logits, torch.ones_like(fake_logits)),
                    self.w.adversarial)
            if self.w.feature_match:
                with torch.no_grad():
                    _, real_feats = self.disc.features(targets[-1])
                fm = sum(F.l1_loss(f, r) for f, r in zip(fake_feats, real_feats)) / len(fake_feats)
                add("feature_match", fm, self.w.feature_match)
        if self.w.spectrum:
            term = symmetric_spectrum_loss if self.w.spectrum_symmetric else spectrum_loss
            add("spectrum", term(outputs[-1], targets[-1]), self.w.spectrum)
        if self.w.band_energy:
            add("band_energy", band_energy_loss(outputs[-1], targets[-1]), self.w.band_energy)
        if self.w.consistency:
            if lr5 is None:
                raise ValueError("the consistency term needs the 5X input")
            add("consistency", consistency_loss(outputs[-1], lr5), self.w.consistency)
        if self.w.distill:
            with torch.no_grad():  # the teacher's last stage on this model's own input to it
                below = outputs[-2] if len(outputs) > 1 else lr5
                taught = self.teacher.stages[-1](below.float()).float()
            add("distill", F.l1_loss(outputs[-1].float(), taught), self.w.distill)
        if self.w.equivariance:
            if model is None or lr5 is None:
                raise ValueError("the equivariance term needs the generator and the 5X input")
            add("equivariance", equivariance_loss(model, lr5, outputs[-1]), self.w.equivariance)
        return total, {k: float(v) for k, v in parts.items()}


def discriminator_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    return F.binary_cross_entropy_with_logits(real_logits, torch.ones_like(real_logits)) + F.binary_cross_entropy_with_logits(
        fake_logits, torch.zeros_like(fake_logits)
    )

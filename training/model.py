"""The multi-scale super-resolution network of the seed paper (Sun et al., 2021).

Three chained ×2 stages (SRBs) turn a 5X RGB image into 10X, 20X and 40X.
Each stage is a plain RGB→RGB×2 module so that export can write one ONNX graph
per stage and the server can run them one after another on cached blocks.

``GeneratorArgs`` is the whole description of a network: it is stored in every
checkpoint so that export and evaluation rebuild the model from the file alone.
"""
from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn


@dataclasses.dataclass(frozen=True)
class GeneratorArgs:
    """Hyper-parameters of one generator (the same for its three stages).

    Defaults are the paper's (authors' code): F=G=64, T=10 RRDBs of D=3 RDBs of
    C=4 dense layers, ReLU, residual scaling 0.2, uniform ±0.05 init.
    ``bicubic_skip`` is our addition (off in the paper): each stage adds a
    fixed bicubic ×2 upsampling of its input to its output, so the network only
    learns the residual and starts from the bicubic baseline.
    ``features``, ``growth`` and ``blocks`` may be one value for every stage or
    one per stage (5X→10X first): the early stages run on 1/16 and 1/4 of the
    40X pixels, so capacity there is cheap.
    """

    features: int | tuple[int, ...] = 64
    growth: int | tuple[int, ...] = 64
    blocks: int | tuple[int, ...] = 10
    rdbs_per_block: int = 3
    dense_layers: int = 4
    activation: str = "relu"
    beta: float = 0.2
    init: str = "uniform"  # "uniform" (paper: ±0.05) or "kaiming" (PyTorch default)
    bicubic_skip: bool = False
    projection: int = 0  # back-projection steps per stage, at the 5X level (see SRStage)
    stages: int = 3

    PER_STAGE = ("features", "growth", "blocks")

    def __post_init__(self) -> None:
        for name in self.PER_STAGE:
            value = getattr(self, name)
            if isinstance(value, (list, tuple)):
                if len(value) != self.stages:
                    raise ValueError(f"{name} lists {len(value)} values for {self.stages} stages")
                object.__setattr__(self, name, tuple(int(v) for v in value))
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {sorted(ACTIVATIONS)}, not {self.activation!r}")
        if self.init not in ("uniform", "kaiming"):
            raise ValueError(f"init must be 'uniform' or 'kaiming', not {self.init!r}")
        for name in ("features", "growth", "blocks", "rdbs_per_block", "dense_layers", "stages"):
            value = getattr(self, name)
            if (min(value) if isinstance(value, tuple) else value) < 1:
                raise ValueError(f"{name} must be >= 1")
        if isinstance(self.projection, bool) or not isinstance(self.projection, int) or self.projection < 0:
            raise ValueError(f"projection (back-projection steps per stage) must be an integer >= 0, not {self.projection!r}")

    def for_stage(self, k: int) -> "GeneratorArgs":
        """The arguments of stage ``k`` (0 = 5X→10X) with every per-stage value resolved."""
        values = {n: getattr(self, n)[k] for n in self.PER_STAGE if isinstance(getattr(self, n), tuple)}
        return dataclasses.replace(self, **values)


ACTIVATIONS: dict[str, Callable[[], nn.Module]] = {
    "relu": lambda: nn.ReLU(inplace=True),
    "leakyrelu": lambda: nn.LeakyReLU(0.2, inplace=True),
}


def conv3(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 3, stride=stride, padding=1)


class ResidualDenseBlock(nn.Module):
    """C densely connected conv+activation layers, then a 3×3 fusion back to F channels."""

    def __init__(self, a: GeneratorArgs):
        super().__init__()
        self.layers = nn.ModuleList(
            nn.Sequential(conv3(a.features + i * a.growth, a.growth), ACTIVATIONS[a.activation]())
            for i in range(a.dense_layers)
        )
        self.fusion = conv3(a.features + a.dense_layers * a.growth, a.features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            x = torch.cat([x, layer(x)], dim=1)
        return self.fusion(x)


class RRDB(nn.Module):
    """Residual-in-residual dense block: x ← x + β·RDB(x) D times, then in + β·x."""

    def __init__(self, a: GeneratorArgs):
        super().__init__()
        self.rdbs = nn.ModuleList(ResidualDenseBlock(a) for _ in range(a.rdbs_per_block))
        self.beta = a.beta

    def forward(self, inp: torch.Tensor) -> torch.Tensor:
        x = inp
        for rdb in self.rdbs:
            x = x + self.beta * rdb(x)
        return inp + self.beta * x


def cubic_weight(d: float, a: float = -0.5) -> float:
    """Keys' cubic convolution kernel (a=-0.5 is PIL's bicubic)."""
    d = abs(d)
    if d <= 1:
        return (a + 2) * d**3 - (a + 3) * d**2 + 1
    if d < 2:
        return a * d**3 - 5 * a * d**2 + 8 * a * d - 4 * a
    return 0.0


class BicubicUp2(nn.Module):
    """Fixed bicubic ×2 upsampling (half-pixel centres, edge replication) as conv + pixel shuffle.

    Written as a 5×5 convolution to 12 phase channels so it exports to ONNX as
    ordinary Conv/DepthToSpace nodes and needs no Resize operator.
    """

    def __init__(self, channels: int = 3):
        super().__init__()
        taps = torch.zeros(2, 5)  # phase (even, odd) × offsets -2..2
        for phase, centre in ((0, -0.25), (1, 0.25)):
            for k, off in enumerate(range(-2, 3)):
                taps[phase, k] = cubic_weight(off - centre)
            taps[phase] /= taps[phase].sum()
        weight = torch.zeros(channels * 4, channels, 5, 5)
        for c in range(channels):
            for dy in range(2):
                for dx in range(2):
                    weight[c * 4 + dy * 2 + dx, c] = torch.outer(taps[dy], taps[dx])
        self.register_buffer("weight", weight, persistent=False)
        self.shuffle = nn.PixelShuffle(2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.pad(x, (2, 2, 2, 2), mode="replicate")
        return self.shuffle(F.conv2d(x, self.weight))


class BicubicDown2(nn.Module):
    """Fixed antialiased bicubic ×½ (Pillow's kernel: a=-0.5 stretched ×2, 8 taps), the
    differentiable twin of one ``tileserver.degrade.halve``, as a strided depthwise conv
    (exports to ONNX as a plain Conv). Edges are replicated. An odd side gives floor(n/2)
    samples, or with ``ceil`` one more (from the replicated edge); even sides are the same."""

    def __init__(self, channels: int = 3, ceil: bool = False):
        super().__init__()
        self.pad = (3, 4, 3, 4) if ceil else (3, 3, 3, 3)
        taps = torch.tensor([cubic_weight(d / 2) for d in (-3.5, -2.5, -1.5, -0.5, 0.5, 1.5, 2.5, 3.5)])
        taps /= taps.sum()
        self.register_buffer("weight", torch.outer(taps, taps).expand(channels, 1, 8, 8).clone(), persistent=False)
        self.channels = channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.pad(x, self.pad, mode="replicate")
        return F.conv2d(x, self.weight, stride=2, groups=self.channels)


class SRStage(nn.Module):
    """One ×2 super-resolution block (SRB): RGB (N,3,H,W) → RGB (N,3,2H,2W).

    With ``projection``, stage ``index`` (0 = 5X→10X) ends with back-projection at the
    5X level: r = down^index(x) − down^(index+1)(y), y += up^(index+1)(r), with the fixed
    ingest kernel as ``down`` and bicubic ×2 as ``up``. Only what the 5X scan resolved is
    pinned down; detail above its Nyquist frequency is left to the network."""

    def __init__(self, a: GeneratorArgs, index: int = 0):
        super().__init__()
        self.index = index
        self.head = conv3(3, a.features)
        self.body = nn.Sequential(*(RRDB(a) for _ in range(a.blocks)))
        self.body_tail = conv3(a.features, a.features)
        self.upsample = nn.Sequential(conv3(a.features, 3 * 4), nn.PixelShuffle(2))
        self.tail = conv3(3, 3)
        self.skip = BicubicUp2() if a.bicubic_skip or a.projection else None
        self.add_skip = a.bicubic_skip
        # ceil: a block of any size (the edge of a slide) projects; the correction is cut to the output
        self.down = BicubicDown2(ceil=True) if a.projection else None
        self.projection = a.projection

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f0 = self.head(x)
        y = self.tail(self.upsample(self.body_tail(self.body(f0)) + f0))
        if self.skip is None:
            return y
        # the bicubic baseline and the projection stay exact (fp32) under bf16 autocast
        with torch.autocast("cuda" if x.is_cuda else "cpu", dtype=torch.bfloat16, enabled=False):
            x, y = x.float(), y.float()
            if self.add_skip:
                y = y + self.skip(x)
            x5 = self._down(x, self.index) if self.projection else None
            for _ in range(self.projection):
                r = x5 - self._down(y, self.index + 1)
                for _ in range(self.index + 1):
                    r = self.skip(r)
                y = y + r[..., :y.shape[-2], :y.shape[-1]]
            return y

    def _down(self, t: torch.Tensor, times: int) -> torch.Tensor:
        for _ in range(times):
            t = self.down(t)
        return t


class MultiScaleGenerator(nn.Module):
    """Chained stages: forward(5X) returns [10X, 20X, 40X] (unclipped, as in training)."""

    def __init__(self, args: GeneratorArgs | None = None):
        super().__init__()
        self.args = args or GeneratorArgs()
        self.stages = nn.ModuleList(SRStage(self.args.for_stage(k), k) for k in range(self.args.stages))
        initialise(self, self.args)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        outs = []
        for stage in self.stages:
            x = stage(x)
            outs.append(x)
        return outs


def initialise(model: MultiScaleGenerator, a: GeneratorArgs) -> None:
    """Paper init (uniform ±0.05, zero bias) or PyTorch's default; with the bicubic
    skip the last conv of each stage starts near zero so training starts at bicubic."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d) and a.init == "uniform":
            nn.init.uniform_(m.weight, -0.05, 0.05)
            nn.init.zeros_(m.bias)
    if a.bicubic_skip:
        for stage in model.stages:
            with torch.no_grad():
                stage.tail.weight.mul_(0.01)
                stage.tail.bias.zero_()


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def stage_gflop(args: GeneratorArgs, tile: int = 256, halo: int = 16) -> list[float]:
    """GFLOP (2 × multiply-adds of all convolutions) of each stage, 5X→10X first, to make
    one ``tile``² 40X tile, each stage reading its input with ``halo`` px of context."""
    return [_one_stage_gflop(args.for_stage(k), (tile >> (args.stages - k)) + 2 * halo) for k in range(args.stages)]


def chain_gflop(args: GeneratorArgs, tile: int = 256, halo: int = 16) -> float:
    """GFLOP of the whole chain for one ``tile``² 40X tile (see ``stage_gflop``)."""
    return sum(stage_gflop(args, tile, halo))


def _one_stage_gflop(args: GeneratorArgs, side: int) -> float:
    stage = SRStage(args).to("meta")
    macs = 0

    def hook(module: nn.Module, _inp, out: torch.Tensor) -> None:
        nonlocal macs
        if isinstance(module, nn.Conv2d):
            k = module.kernel_size[0] * module.kernel_size[1]
            macs += out.shape[-2] * out.shape[-1] * module.out_channels * module.in_channels * k // module.groups

    handles = [m.register_forward_hook(hook) for m in stage.modules() if isinstance(m, nn.Conv2d)]
    stage(torch.empty(1, 3, side, side, device="meta"))
    for h in handles:
        h.remove()
    skip_macs = side**2 * 12 * 3 * 25 if args.bicubic_skip else 0  # the fixed conv is not an nn.Conv2d
    return 2 * (macs + skip_macs) / 1e9


class PatchDiscriminator(nn.Module):
    """The authors' "srgan-large" discriminator: a per-pixel two-layer head over a
    strided conv trunk, giving a logit map at 1/4 of the input resolution."""

    def __init__(self, in_channels: int = 3, width: int = 64):
        """``width`` 64 is the paper's (64 … 512 channels); smaller widths scale every layer."""
        super().__init__()
        w = lambda c: max(8, c * width // 64)
        layers: list[nn.Module] = [conv3(in_channels, w(64)), nn.LeakyReLU(0.2, inplace=True)]
        cin = w(64)
        for cout, stride in zip(map(w, (64, 128, 128, 256, 256, 512, 512)), (2, 1, 2, 1, 1, 1, 1)):
            # Keras BatchNormalization(momentum=0.8) == PyTorch momentum 0.2
            layers += [conv3(cin, cout, stride), nn.LeakyReLU(0.2, inplace=True), nn.BatchNorm2d(cout, momentum=0.2)]
            cin = cout
        layers += [nn.Conv2d(cin, w(1024), 1), nn.LeakyReLU(0.2, inplace=True), nn.Conv2d(w(1024), 1, 1)]
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits (apply a sigmoid for probabilities; losses use BCE-with-logits)."""
        return self.net(x)

    def features(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """(logits, the activations after each LeakyReLU of the trunk) for feature matching."""
        feats = []
        for layer in self.net[:-3]:
            x = layer(x)
            if isinstance(layer, nn.LeakyReLU):
                feats.append(x)
        return self.net[-3:](x), feats


VGG19_FILE = "vgg19-dcbb9e9d.pth"
# torchvision vgg19().features indices: convs at 0,2 | 5,7 | 10,12,14; relu2_2 = [:9], relu3_3 = [:16]
_VGG_LAYOUT = [(3, 64), (64, 64), "M", (64, 128), (128, 128), "M", (128, 256), (256, 256), (256, 256)]


class VGGWeightsMissing(RuntimeError):
    pass


def default_vgg_path() -> Path:
    torch_home = os.environ.get("TORCH_HOME") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "torch"
    )
    return Path(torch_home) / "hub" / "checkpoints" / VGG19_FILE


class VGGFeatures(nn.Module):
    """VGG19 up to relu3_3, returning (relu2_2, relu3_3), with ImageNet weights.

    Weights come from ``weights_path`` or torchvision's cache; without them this
    raises ``VGGWeightsMissing`` — random weights only with ``random_weights_for_tests``.
    """

    def __init__(self, weights_path: str | os.PathLike | None = None, *, random_weights_for_tests: bool = False):
        super().__init__()
        layers: list[nn.Module] = []
        for item in _VGG_LAYOUT:
            if item == "M":
                layers.append(nn.MaxPool2d(2, 2))
            else:
                layers += [nn.Conv2d(item[0], item[1], 3, padding=1), nn.ReLU(inplace=False)]
        self.features = nn.Sequential(*layers)  # indices match torchvision's vgg19().features[:16]
        if not random_weights_for_tests:
            path = Path(weights_path) if weights_path else default_vgg_path()
            if not path.is_file():
                raise VGGWeightsMissing(
                    f"VGG19 ImageNet weights not found at {path}. The perceptual loss needs them: "
                    f"copy torchvision's {VGG19_FILE} there or pass --vgg-weights PATH "
                    "(they cannot be downloaded on this machine), or turn the perceptual loss off."
                )
            state = torch.load(path, map_location="cpu", weights_only=True)
            wanted = {k: v for k, v in state.items() if k.startswith("features.") and int(k.split(".")[1]) < 16}
            self.load_state_dict(wanted, strict=True)
        for p in self.parameters():
            p.requires_grad_(False)
        self.eval()

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        relu2_2 = self.features[:9](x)
        return relu2_2, self.features[9:](relu2_2)


def describe(args: GeneratorArgs, tile: int = 256, halo: int = 16) -> str:
    params = [count_parameters(SRStage(args.for_stage(k))) for k in range(args.stages)]
    flops = stage_gflop(args, tile, halo)
    return (
        f"{'/'.join(f'{p / 1e6:.3f}' for p in params)} M parameters per stage, {sum(params) / 1e6:.3f} M total; "
        f"{sum(flops):.1f} GFLOP per {tile}x{tile} 40X tile with {halo} px halo per stage "
        f"({' + '.join(f'{f:.1f}' for f in flops)})"
    )


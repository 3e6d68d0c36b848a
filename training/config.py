"""Training configuration: YAML files with dotted command-line overrides (no exec)."""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import yaml

from training.augment import AugmentConfig
from training.losses import LossWeights
from training.model import GeneratorArgs


@dataclasses.dataclass
class DataConfig:
    crop: int = 64  # 5X px; the paper's 64 → 512 at 40X
    batch: int = 2
    jpeg_quality: int | None = None  # JPEG round trip on the 5X input, as a scanner would
    # Named sources below the --data root (see training.data.SourceSpec); empty = --data is one folder
    # split by val_patients / val_count.
    sources: list[dict] = dataclasses.field(default_factory=list)
    augment: AugmentConfig = dataclasses.field(default_factory=AugmentConfig)
    train_only: list[str] = dataclasses.field(default_factory=list)  # source names that train (empty = all)
    val_patients: list[str] = dataclasses.field(default_factory=list)
    val_count: int = 4  # used when val_patients is empty
    val_crop: int | None = None  # 5X px of the validation images' centre; None = whole image
    curriculum: bool = True
    curriculum_step: float = 0.01
    curriculum_every_epochs: int = 5
    curriculum_max: float = 0.15


@dataclasses.dataclass
class OptimConfig:
    lr: float = 4e-4
    betas: tuple[float, float] = (0.9, 0.999)
    decay: float = 0.5
    decay_every_epochs: int = 30
    min_lr: float = 1e-7
    d_lr: float = 2e-4
    d_betas: tuple[float, float] = (0.5, 0.999)


@dataclasses.dataclass
class LossConfig(LossWeights):
    vgg_weights: str | None = None
    disc_width: int = 64  # discriminator width (64 = the paper's; 16-32 trains on a CPU)


@dataclasses.dataclass
class RunConfig:
    epochs: int = 120
    steps_per_epoch: int = 500
    seed: int = 0
    threads: int | None = None  # CPU threads for torch; None = torch's default
    max_minutes: float | None = None  # stop (and save) after this wall time
    select: str = "psnr"  # best.pt: "psnr" (best seen-lab PSNR-Y) or "last" (e.g. the realistic model)
    precision: str = "auto"  # "bf16" (autocast; fast on CPUs with AMX/AVX512-BF16), "fp32", "auto" = bf16 on CUDA only

    def __post_init__(self) -> None:
        if self.select not in ("psnr", "last"):
            raise ValueError(f"select must be psnr or last, not {self.select!r}")
        if self.precision not in ("auto", "bf16", "fp32"):
            raise ValueError(f"precision must be auto, bf16 or fp32, not {self.precision!r}")


@dataclasses.dataclass
class Config:
    name: str = "paper"
    model: GeneratorArgs = dataclasses.field(default_factory=GeneratorArgs)
    data: DataConfig = dataclasses.field(default_factory=DataConfig)
    loss: LossConfig = dataclasses.field(default_factory=LossConfig)
    optim: OptimConfig = dataclasses.field(default_factory=OptimConfig)
    run: RunConfig = dataclasses.field(default_factory=RunConfig)


class ConfigError(ValueError):
    pass


def _build(cls: type, values: dict[str, Any], where: str) -> Any:
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = set(values) - set(fields)
    if unknown:
        raise ConfigError(f"unknown setting(s) {sorted(unknown)} in {where or 'config'}; known: {sorted(fields)}")
    kwargs = {}
    for name, value in values.items():
        default = getattr(cls(), name)
        if dataclasses.is_dataclass(default):
            if not isinstance(value, dict):
                raise ConfigError(f"{where}{name} must be a mapping")
            value = _build(type(default), value, f"{where}{name}.")
        elif isinstance(default, tuple):
            value = tuple(value)
        elif isinstance(default, float) and isinstance(value, (int, str)) and not isinstance(value, bool):
            try:  # YAML reads "1e-3" (no dot) as a string
                value = float(value)
            except ValueError:
                raise ConfigError(f"{where}{name} must be a number, not {value!r}") from None
        kwargs[name] = value
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"{where or 'config'}: {e}") from None


def to_dict(cfg: Config) -> dict[str, Any]:
    def plain(v: Any) -> Any:
        if isinstance(v, tuple):
            return list(v)
        if isinstance(v, dict):
            return {k: plain(x) for k, x in v.items()}
        return v

    return plain(dataclasses.asdict(cfg))


def from_dict(values: dict[str, Any]) -> Config:
    return _build(Config, values, "")


def parse_override(text: str) -> tuple[list[str], Any]:
    """'data.batch=8' → (['data', 'batch'], 8); the value is read as YAML."""
    if "=" not in text:
        raise ConfigError(f"override {text!r} is not KEY=VALUE (e.g. data.batch=8)")
    key, raw = text.split("=", 1)
    return key.strip().split("."), yaml.safe_load(raw)


def merge(base: dict[str, Any], top: dict[str, Any]) -> dict[str, Any]:
    """``top`` over ``base``, mappings merged key by key, everything else replaced."""
    out = dict(base)
    for k, v in top.items():
        out[k] = merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def read_yaml(path: Path, seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    """A config file; ``extends: other.yaml`` (relative to it) is read first and overlaid."""
    path = Path(path).resolve()
    if path in seen:
        raise ConfigError(f"config {path} extends itself")
    try:
        values = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError) as e:
        raise ConfigError(f"cannot read config {path}: {e}") from None
    base = values.pop("extends", None)
    return merge(read_yaml(path.parent / base, (*seen, path)), values) if base else values


def load(path: str | Path | None, overrides: list[str] = ()) -> Config:
    values: dict[str, Any] = read_yaml(Path(path)) if path else {}
    for text in overrides:
        keys, value = parse_override(text)
        node = values
        for k in keys[:-1]:
            node = node.setdefault(k, {})
        node[keys[-1]] = value
    return from_dict(values)

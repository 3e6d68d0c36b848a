"""Training curves as a PNG: the loss, validation PSNR-Y per scale against bicubic,
and the gain over bicubic of each validation lab (held-out labs included)."""
from __future__ import annotations

import csv
from pathlib import Path

from tileserver.files import write_atomically
from training.metrics import SCALE_NAMES


def plot_curves(log_path: Path, png_path: Path, bicubic: list[float]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    with open(log_path) as f:
        rows = list(csv.DictReader(f))
    if not rows:
        return
    steps = [int(r["step"]) for r in rows]
    labs = [k[len("val_gain_"):] for k in rows[0] if k.startswith("val_gain_")]
    fig, axes = plt.subplots(1, 3 if labs else 2, figsize=(16 if labs else 11, 4))
    a, b = axes[0], axes[1]
    a.plot(steps, [float(r["loss"]) for r in rows])
    a.set_xlabel("step")
    a.set_ylabel("training loss (epoch mean)")
    a.set_yscale("log")
    for i, name in enumerate(SCALE_NAMES):
        line, = b.plot(steps, [float(r[f"val_psnr_y_{name}"]) for r in rows], label=f"SR {name}")
        if bicubic:
            b.axhline(bicubic[i], ls="--", color=line.get_color(), label=f"bicubic {name}")
    b.set_xlabel("step")
    b.set_ylabel("validation PSNR-Y (dB), labs seen in training")
    b.legend(fontsize=7)
    if labs:
        c = axes[2]
        for lab in labs:
            c.plot(steps, [float(r[f"val_gain_{lab}"]) for r in rows], label=lab)
        c.axhline(0, color="grey", lw=0.5)
        c.set_xlabel("step")
        c.set_ylabel("gain over bicubic, PSNR-Y dB (mean of scales)")
        c.legend(fontsize=7)
    fig.tight_layout()
    write_atomically(png_path, lambda tmp: fig.savefig(tmp, dpi=90, format="png"))
    plt.close(fig)

"""Training curves as a PNG: the loss, validation PSNR-Y per scale against bicubic,
the gain over bicubic of each validation lab (held-out labs included), and, for runs with a
texture term, the 40X band energy against the real image's and the consistency with the scan."""
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
    texture = any(r.get(k) for r in rows for k in ("spectrum", "band_energy", "adversarial", "feature_match"))
    panels = 2 + bool(labs) + texture
    fig, axes = plt.subplots(1, panels, figsize=(5.4 * panels, 4))
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
    if texture:
        plot_texture(axes[-1], steps, rows)
    fig.tight_layout()
    write_atomically(png_path, lambda tmp: fig.savefig(tmp, dpi=90, format="png"))
    plt.close(fig)


def plot_texture(ax, steps: list[int], rows: list[dict]) -> None:
    """40X band energy / real per band (1 = the real amount of detail) and, on the right axis,
    the 40X output degraded to 5X against the 5X input (dB)."""
    from training.metrics import BANDS

    for i, (lo, hi) in enumerate(BANDS):
        if f"val_40X_band{i}" in rows[0]:
            ax.plot(steps, [float(r[f"val_40X_band{i}"]) for r in rows], label=f"40X [1/{round(1 / lo)}, 1/{round(1 / hi)})")
    ax.axhline(1, color="grey", lw=0.5)
    ax.set_xlabel("step")
    ax.set_ylabel("40X band energy / real")
    ax.legend(fontsize=7, loc="upper left")
    if "val_consistency" in rows[0]:
        twin = ax.twinx()
        twin.plot(steps, [float(r["val_consistency"]) for r in rows], "k--", label="consistency")
        twin.set_ylabel("consistency with the 5X scan (dB, dashed)")

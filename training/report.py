"""Evaluation reports: Markdown tables (per lab, mean over labs, worst lab), CSV rows
and crops PNGs (5X input | bicubic | each model | real) for people to look at."""
from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
from scipy import stats

from tileserver.files import write_atomically
from training.metrics import BANDS, SCALE_NAMES

METRICS = [("psnr_rgb", "PSNR RGB (dB)", "{:.2f}", "{:+.2f}"), ("psnr_y", "PSNR-Y (dB)", "{:.2f}", "{:+.2f}"),
           ("ssim", "SSIM", "{:.4f}", "{:+.4f}")]


def _band_label(lo: float, hi: float) -> str:
    return f"[1/{round(1 / lo)},1/{round(1 / hi)})"


def quality_table(report: dict, key: str, title: str, fmt: str, gfmt: str) -> str:
    head = "| lab | images | model | " + " | ".join(f"{s} bicubic | {s} model | {s} gain" for s in SCALE_NAMES) + " |"
    lines = [f"### {title}", "", head, "|" + "---|" * (3 + 3 * len(SCALE_NAMES))]
    for name, m in report["models"].items():
        rows = [(lab, m["model"][lab]["images"], m["bicubic"][lab], m["model"][lab], m["gain"][lab]) for lab in m["labs"]]
        mo = m["mean_over_labs"]
        rows.append(("**mean over labs**", "", mo["bicubic"], mo["model"], mo["gain"]))
        for lab, n, bic, mod, gain in rows:
            cells = [f"{fmt.format(bic[f'{s}_{key}'])} | {fmt.format(mod[f'{s}_{key}'])} | {gfmt.format(gain[f'{s}_{key}'])}"
                     for s in SCALE_NAMES]
            lines.append(f"| {lab} | {n} | {name} | " + " | ".join(cells) + " |")
        if key == "psnr_rgb":
            worst = ", ".join(f"{s} {w['lab']} {w['gain_psnr_rgb']:+.2f}" for s, w in m["worst_lab"].items())
            lines.append(f"| **worst lab** | | {name} | {worst} |" + " |" * (3 * len(SCALE_NAMES) - 1))
    return "\n".join(lines)


def band_table(report: dict) -> str:
    bands = [_band_label(lo, hi) for lo, hi in BANDS]
    head = "| lab | method | " + " | ".join(f"{s} {b}" for s in ("20X", "40X") for b in bands) + " |"
    lines = ["### Band energy: luma power of the output / of the real image, by band (cycles/px)", "", head,
             "|" + "---|" * (2 + 2 * len(bands))]
    first = next(iter(report["models"].values()))
    for lab in first["labs"] + ["mean over labs"]:
        methods = [("bicubic", first["bicubic"] if lab != "mean over labs" else None, first)] + \
                  [(n, m["model"] if lab != "mean over labs" else None, m) for n, m in report["models"].items()]
        for method, table, m in methods:
            values = table[lab] if table is not None else m["mean_over_labs"]["bicubic" if method == "bicubic" else "model"]
            cells = [f"{values[f'{s}_band{b}']:.2f}" for s in ("20X", "40X") for b in range(len(bands))]
            lines.append(f"| {lab} | {method} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def consistency_table(report: dict) -> str:
    names = list(report["models"])
    first = report["models"][names[0]]
    lines = ["### Consistency with the scan: 40X output degraded to 5X vs the 5X input, PSNR RGB (dB)", "",
             "| lab | bicubic | " + " | ".join(names) + " |", "|" + "---|" * (2 + len(names))]
    for lab in first["labs"]:
        cells = [f"{report['models'][n]['model'][lab]['consistency_psnr']:.2f}" for n in names]
        lines.append(f"| {lab} | {first['bicubic'][lab]['consistency_psnr']:.2f} | " + " | ".join(cells) + " |")
    worst = [min(report["models"][n]["model"][lab]["consistency_psnr"] for lab in first["labs"]) for n in names]
    lines.append("| **worst lab** | | " + " | ".join(f"{w:.2f}" for w in worst) + " |")
    return "\n".join(lines)


def direction_table(report: dict) -> str:
    names = list(report["models"])
    first = report["models"][names[0]]
    lines = ["### Direction of the 40X detail: luma power in [1/8, 1/4) cycles/px, strongest of 8 orientations / mean",
             "", "| lab | real | bicubic | " + " | ".join(names) + " |", "|" + "---|" * (3 + len(names))]
    for lab in first["labs"] + ["mean over labs"]:
        def get(m: dict, kind: str) -> dict:
            return m["mean_over_labs"][kind] if lab == "mean over labs" else m[kind][lab]
        cells = [get(first, "bicubic")["40X_direction_real"], get(first, "bicubic")["40X_direction"],
                 *(get(report["models"][n], "model")["40X_direction"] for n in names)]
        lines.append(f"| {lab} | " + " | ".join(f"{c:.2f}" for c in cells) + " |")
    return "\n".join(lines)


def _interval(per_lab: list[np.ndarray]) -> tuple[float, float | None]:
    """Mean over labs of each lab's mean difference and the half-width of its 95 % t-interval: the labs'
    variances of their means added (Welch-Satterthwaite degrees of freedom); one lab: Student's t."""
    means = [d.mean() for d in per_lab]
    var = [d.var(ddof=1) / len(d) if len(d) > 1 else np.nan for d in per_lab]
    se2 = sum(var) / len(per_lab) ** 2
    if not np.isfinite(se2):
        return float(np.mean(means)), None  # a lab of one image: no interval (None also keeps the JSON strict)
    if se2 == 0:
        return float(np.mean(means)), 0.0  # every image moved by the same amount
    df = sum(var) ** 2 / sum(v * v / (len(d) - 1) for v, d in zip(var, per_lab))
    return float(np.mean(means)), float(stats.t.ppf(0.975, df) * np.sqrt(se2))


def paired_differences(rows_a: list[dict], rows_b: list[dict], key: str = "psnr_rgb") -> dict:
    """Model B minus model A on the same images, per lab and for the mean over labs, per scale: the mean
    difference and the half-width of its 95 % interval over images. Both models see the same 5X input and
    are scored against the same real image, so the difference of their gains over bicubic is this difference
    of their scores, and pairing the images removes what the images have in common."""
    if [(r["lab"], r["image"]) for r in rows_a] != [(r["lab"], r["image"]) for r in rows_b]:
        raise ValueError("paired differences need the same images in the same order")
    labs = sorted({r["lab"] for r in rows_a})
    out: dict[str, dict] = {}
    for s in SCALE_NAMES:
        k = f"{s}_{key}"
        diffs = {lab: np.array([b[k] - a[k] for a, b in zip(rows_a, rows_b) if a["lab"] == lab]) for lab in labs}
        for lab in labs:
            out.setdefault(lab, {"images": len(diffs[lab])})[s] = _interval([diffs[lab]])
        out.setdefault("mean over labs", {"images": len(rows_a)})[s] = _interval(list(diffs.values()))
    return out


def difference_table(report: dict) -> str:
    """Each model after the first against the first, PSNR RGB, per lab and mean over labs."""
    diffs = report["differences"]
    first = next(iter(report["models"]))
    lines = [f"### Paired difference against {first}: PSNR RGB (dB), mean over the same images "
             "and its 95 % interval", "", "| lab | images | model | " + " | ".join(SCALE_NAMES) + " |",
             "|" + "---|" * (3 + len(SCALE_NAMES))]
    for name, table in diffs.items():
        for lab, row in table.items():
            cells = [f"{m:+.2f} ± {h:.2f}" if h is not None else f"{m:+.2f}" for m, h in (row[s] for s in SCALE_NAMES)]
            lines.append(f"| {lab} | {row['images']} | {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def tables(report: dict) -> str:
    """All tables of an evaluation report as Markdown."""
    parts = [quality_table(report, *m) for m in METRICS] + [band_table(report), consistency_table(report),
                                                            direction_table(report)]
    if report.get("differences"):  # two or more models
        parts.append(difference_table(report))
    n = len(report["images"])
    return "\n\n".join(parts) + f"\n\n(whole images, {n} in all; gains are model minus bicubic on the same 5X input)\n"


def write_csv(path: Path, rows: list[dict]) -> None:
    fields = list(dict.fromkeys(k for r in rows for k in r))

    def write(tmp: Path) -> None:
        with open(tmp, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=fields)
            w.writeheader()
            w.writerows(rows)

    write_atomically(path, write)


def save_crops_png(sample: dict, path: Path, crop40: int = 192) -> None:
    """One row per scale (10X, 20X, 40X) of one image: 5X input (nearest-neighbour enlarged) |
    bicubic | each model | real, the same field of view in every row."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = list(sample["models"])
    cols = ["5X input", "bicubic", *models, "real"]
    fig, axes = plt.subplots(len(SCALE_NAMES), len(cols), figsize=(3 * len(cols), 3 * len(SCALE_NAMES)), squeeze=False)
    for r, scale in enumerate(SCALE_NAMES):
        f = 2 ** (r + 1)
        real = sample["real"][scale]
        c = min(crop40 // (8 // f), *real.shape[:2])
        y0, x0 = (real.shape[0] - c) // 2 // f * f, (real.shape[1] - c) // 2 // f * f
        lr = sample["5X"][y0 // f:(y0 + c) // f, x0 // f:(x0 + c) // f]
        panels = [np.kron(lr, np.ones((f, f, 1), dtype=np.uint8)), sample["bicubic"][scale],
                  *(sample["models"][m][scale] for m in models), real]
        for col, (panel, title) in enumerate(zip(panels, cols)):
            ax = axes[r][col]
            ax.imshow(panel if col == 0 else panel[y0:y0 + c, x0:x0 + c], interpolation="nearest")
            ax.set_title(f"{scale}: {title}", fontsize=8)
            ax.axis("off")
    fig.suptitle(sample["image"], fontsize=9)
    fig.tight_layout()
    write_atomically(path, lambda tmp: fig.savefig(tmp, dpi=80, format="png"))
    plt.close(fig)

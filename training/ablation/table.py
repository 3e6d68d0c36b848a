"""The ablation table from the runs' own validation: for each run folder, the last row of its
log.csv, PSNR-Y gain over bicubic (mean of 10X/20X/40X, validation crops) by lab, the mean over
labs and the unseen labs named in the config (``held_out``).

    python training/ablation/table.py runs/ablation/*/
"""
from __future__ import annotations

import argparse
import csv
from pathlib import Path

import yaml

GAIN = "val_gain_"


def last_row(run: Path) -> dict[str, str]:
    with open(run / "log.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows:
        raise SystemExit(f"{run}/log.csv has no rows yet")
    return rows[-1]


def unseen_labs(run: Path) -> set[str]:
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    return {s["lab"] for s in cfg["data"]["sources"] if s.get("held_out")}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", nargs="+", type=Path)
    runs = [r for r in ap.parse_args(argv).runs if (r / "log.csv").exists()]
    if not runs:
        raise SystemExit("no run folder with a log.csv")
    labs = sorted(k[len(GAIN):] for k in last_row(runs[0]) if k.startswith(GAIN))
    unseen = unseen_labs(runs[0])
    print("| run | step | " + " | ".join(f"{lab}{' (unseen)' if lab in unseen else ''}" for lab in labs)
          + " | mean over labs |")
    print("|---|---:|" + "---:|" * (len(labs) + 1))
    for run in runs:
        row = last_row(run)
        gains = [float(row[GAIN + lab]) for lab in labs]
        print(f"| {run.name} | {row['step']} | " + " | ".join(f"{g:+.2f}" for g in gains)
              + f" | {sum(gains) / len(gains):+.2f} |")


if __name__ == "__main__":
    main()

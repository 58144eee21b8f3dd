"""Speed of two checkouts from `bench.py` runs made alternately in one session: per variant and setting, the
median over rounds of each side and their ratio (after / before; below 1: faster after).

    python docs/compare_speed.py --before runs/b1 runs/b2 --after runs/a1 runs/a2 [--out docs/x.md]
"""

from __future__ import annotations

import argparse
import csv
import statistics
from pathlib import Path

KEY = ("variant", "backend", "batch_size", "input_len", "output_len")
FIGURES = ("encoder_s", "decode_step_s", "time_per_sample_s")


def read(runs):
    rows = {}
    for run in runs:
        with open(Path(run) / "speed.csv", newline="") as f:
            for r in csv.DictReader(f):
                k = tuple(r[c] for c in KEY)
                for fig in FIGURES:
                    rows.setdefault(k, {}).setdefault(fig, []).append(float(r[fig]))
    return {k: {fig: statistics.median(v) for fig, v in figs.items()} for k, figs in rows.items()}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--before", nargs="+", required=True)
    p.add_argument("--after", nargs="+", required=True)
    p.add_argument("--out", type=Path)
    a = p.parse_args()
    before, after = read(a.before), read(a.after)
    head = "| variant | backend | batch | in x out | " + " | ".join(f"{f} before / after (ratio)" for f in FIGURES)
    lines = [head + " |", "|" + "---|" * (4 + len(FIGURES))]
    for k in sorted(set(before) & set(after), key=lambda k: (k[1], k[0], int(k[2]))):
        cells = [f"{before[k][f]:.4g} / {after[k][f]:.4g} ({after[k][f] / before[k][f]:.2f}x)" for f in FIGURES]
        lines.append(f"| {k[0]} | {k[1]} | {k[2]} | {k[3]}x{k[4]} | " + " | ".join(cells) + " |")
    text = "\n".join(lines) + "\n"
    print(text)
    if a.out:
        a.out.write_text(text)


if __name__ == "__main__":
    main()

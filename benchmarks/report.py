"""What every benchmark script shares: its output options, one table style, and the CSV + PNG it writes.

Every script takes `--tiny` (a CPU-sized smoke run) and `--out DIR` (default `benchmarks/results/`, ignored by git)
and writes `DIR/<script>.csv` and `DIR/<script>.png`. The plot needs matplotlib (the `bench` extra:
`pip install -e ".[bench]"`); without it the script says so in one line and still writes the CSV. The old output
flags (`--csv FILE`, `--out FILE.csv`) still work, say that they are deprecated, and write FILE and FILE's `.png`.

Tables are GitHub-style pipe tables with aligned columns: readable on a terminal, pasteable into RESULTS.md.
"""
from __future__ import annotations

import argparse
import csv
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

RESULTS = Path(__file__).resolve().parent / "results"
MISSING_MATPLOTLIB = "no plot: matplotlib is missing (pip install -e \".[bench]\"); the CSV is written"


def add_output_args(parser: argparse.ArgumentParser, name: str, tiny_help: str | None = None) -> None:
    """`--tiny`, `--out DIR` and the deprecated `--csv FILE` alias, the same in every script."""
    parser.add_argument("--tiny", action="store_true",
                        help=tiny_help or "CPU-sized smoke run (proves the script works; its figures mean nothing)")
    parser.add_argument("--out", default=str(RESULTS), metavar="DIR",
                        help=f"folder for {name}.csv and {name}.png (default benchmarks/results/)")
    parser.add_argument("--csv", metavar="FILE", help="deprecated: use --out DIR")


def output_paths(args: argparse.Namespace, name: str) -> tuple[Path, Path]:
    """(CSV path, PNG path) from `--out DIR`, or from a deprecated `--csv FILE` / `--out FILE.csv`."""
    if getattr(args, "csv", None):
        print(f"note: --csv is deprecated, use --out DIR (writes DIR/{name}.csv and DIR/{name}.png); "
              f"writing {args.csv} now")
        path = Path(args.csv)
    elif str(args.out).endswith(".csv"):
        print(f"note: --out FILE.csv is deprecated, --out takes a folder (DIR/{name}.csv and DIR/{name}.png); "
              f"writing {args.out} now")
        path = Path(args.out)
    else:
        path = Path(args.out) / f"{name}.csv"
    path.parent.mkdir(parents=True, exist_ok=True)
    return path, path.with_suffix(".png")


def fmt(value) -> str:
    """One number style: integers with thousands separators, floats to 4 significant digits, blanks as '-'."""
    if value is None or value == "":
        return "-"
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, int):
        return f"{value:,}" if abs(value) >= 10_000 else str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "-"
        return f"{value:,.0f}" if abs(value) >= 10_000 else f"{value:.4g}"
    return str(value)


def print_table(rows: Sequence[dict], columns: Sequence[str] | None = None, title: str | None = None,
                headers: dict[str, str] | None = None) -> None:
    """Rows as an aligned pipe table: numbers right-aligned, text left-aligned."""
    if title:
        print(f"\n{title}")
    if not rows:
        print("(no rows)")
        return
    columns = list(columns or rows[0])
    head = [(headers or {}).get(c, c) for c in columns]
    cells = [[fmt(r.get(c)) for c in columns] for r in rows]
    numeric = [all(isinstance(r.get(c), (int, float)) or r.get(c) in (None, "") for r in rows) for c in columns]
    widths = [max(len(h), *(len(row[i]) for row in cells)) for i, h in enumerate(head)]

    def line(values):
        return "| " + " | ".join(v.rjust(w) if num else v.ljust(w)
                                 for v, w, num in zip(values, widths, numeric)) + " |"

    print(line(head))
    print("|" + "|".join(("-" * (w + 1) + ":") if num else ("-" * (w + 2)) for w, num in zip(widths, numeric)) + "|")
    for row in cells:
        print(line(row))


def write_csv(rows: Sequence[dict], path: Path, fields: Sequence[str] | None = None, quiet: bool = False) -> None:
    fields = list(fields or (rows[0] if rows else []))
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    if not quiet:
        print(f"wrote {path}")


def read_csv(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


@dataclass
class Plot:
    """What to draw from the rows: one panel per (y label, columns) pair, a row of panels per value of `split`.

    kind "line": x numeric, one line per series value (and per column, when a panel has several);
    kind "bar": x categorical, grouped bars, one per series value and column."""
    x: str
    panels: list[tuple[str, list[str]]]
    series: tuple[str, ...] = ()
    kind: str = "line"
    title: str = ""
    xlabel: str | None = None
    logx: bool = False
    logy: bool = False
    split: str | None = None
    hline: tuple[float, str] | None = None  # a reference level (a goal, a bound) and its label
    notes: list[str] = field(default_factory=list)


def _number(value) -> float | None:
    try:
        x = float(value)
    except (TypeError, ValueError):
        return None
    return x if math.isfinite(x) else None


def _import_pyplot():
    try:
        import matplotlib
    except ImportError:
        return None
    matplotlib.use("Agg")  # files only, never a window
    import matplotlib.pyplot as plt

    return plt


def _tick(x: float) -> str:
    if x >= 1024 and x % 1024 == 0:
        return f"{x / 1024:g}k"
    return f"{x:g}"


def draw(rows: Sequence[dict], spec: Plot, path: Path) -> bool:
    """Writes the PNG; without matplotlib prints one line and returns False."""
    plt = _import_pyplot()
    if plt is None:
        print(MISSING_MATPLOTLIB)
        return False
    groups = list(dict.fromkeys(r.get(spec.split) for r in rows)) if spec.split else [None]
    fig, axes = plt.subplots(len(groups), len(spec.panels), squeeze=False,
                             figsize=(5.5 * len(spec.panels) + 1.5, 3.8 * len(groups)))
    # ten strong colours, then their light twins: neighbours in a legend never look alike
    colors = list(plt.get_cmap("tab10").colors) + list(plt.get_cmap("tab20").colors[1::2])
    markers = "osD^v<>ph*"
    styles: dict[str, dict] = {}  # one colour and marker per label, the same in every panel

    def style(name: str) -> dict:
        if name not in styles:
            i = len(styles)
            styles[name] = dict(color=colors[i % len(colors)], marker=markers[i % len(markers)])
        return styles[name]

    def key_of(r: dict) -> tuple[str, ...]:
        return tuple(str(r.get(s)) for s in spec.series)

    panel_labels: list[tuple[str, ...]] = []
    for gi, group in enumerate(groups):
        part = [r for r in rows if spec.split is None or r.get(spec.split) == group]
        keys = list(dict.fromkeys(key_of(r) for r in part))
        for pi, (ylabel, columns) in enumerate(spec.panels):
            ax = axes[gi][pi]
            lines = [(key, col) for key in keys for col in columns]

            def label(key, col):
                return " ".join(list(key) + ([col] if len(columns) > 1 or not key else []))

            if spec.kind == "line":
                xs = set()
                for key, col in lines:
                    pts = sorted((x, y) for r in part if key_of(r) == key
                                 for x, y in [(_number(r.get(spec.x)), _number(r.get(col)))]
                                 if x is not None and y is not None)
                    if pts:
                        xs.update(x for x, _ in pts)
                        st = style(label(key, col))
                        ax.plot(*zip(*pts), marker=st["marker"], color=st["color"], label=label(key, col))
                if spec.logx and xs and min(xs) > 0:
                    ax.set_xscale("log", base=2)
                if xs:
                    ax.set_xticks(sorted(xs), [_tick(x) for x in sorted(xs)])
                    ax.minorticks_off()
            else:
                cats = list(dict.fromkeys(str(r.get(spec.x)) for r in part))
                width = 0.8 / max(len(lines), 1)
                for li, (key, col) in enumerate(lines):
                    heights = []
                    for c in cats:
                        r = next((r for r in part if str(r.get(spec.x)) == c and key_of(r) == key), None)
                        heights.append((_number(r.get(col)) if r else None) or 0.0)
                    ax.bar([i + (li - (len(lines) - 1) / 2) * width for i in range(len(cats))], heights, width,
                           color=style(label(key, col))["color"], label=label(key, col))
                ax.set_xticks(range(len(cats)), cats, rotation=30, ha="right", fontsize=8)
            if spec.logy:
                heights = [y for line in ax.get_lines() for y in line.get_ydata()] + [p.get_height()
                                                                                     for p in ax.patches]
                if any(h > 0 for h in heights):  # all-zero data cannot be log-scaled
                    ax.set_yscale("log")
            if spec.hline:
                ax.axhline(spec.hline[0], color="black", linestyle="--", linewidth=1, label=spec.hline[1])
            ax.set_ylabel(ylabel)
            ax.set_xlabel(spec.xlabel or spec.x)
            title = " ".join(t for t in (spec.title if pi == 0 else "",
                                         f"{spec.split} = {group}" if spec.split else "") if t)
            if title:
                ax.set_title(title, fontsize=9, loc="left")
            ax.grid(True, alpha=0.3)
            panel_labels.append(tuple(ax.get_legend_handles_labels()[1]))
    same = len(set(panel_labels)) == 1  # every panel draws the same series: one legend, outside, never over data
    for gi in range(len(groups)):
        for pi in range(len(spec.panels)):
            ax = axes[gi][pi]
            if not ax.get_legend_handles_labels()[0]:
                continue
            if not same:
                ax.legend(fontsize=7)
            elif pi == len(spec.panels) - 1:
                ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1))
    if spec.notes:
        fig.text(0.01, 0.005, "; ".join(spec.notes), fontsize=7, va="bottom")
    fig.tight_layout()
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    print(f"wrote {path}")
    return True


def save(rows: Sequence[dict], paths: tuple[Path, Path], plot: Plot | None,
         fields: Sequence[str] | None = None, plot_rows: Iterable[dict] | None = None) -> None:
    """The CSV first (it never depends on matplotlib), then the plot (of `plot_rows` if given)."""
    csv_path, png_path = paths
    write_csv(rows, csv_path, fields)
    if plot is not None:
        plot_rows = list(rows if plot_rows is None else plot_rows)
        if plot_rows:
            draw(plot_rows, plot, png_path)
        else:
            print("no plot: no rows")

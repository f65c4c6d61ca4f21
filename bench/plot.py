"""Draws bench/results-sweeps.json (`tracedump-bench sweeps`) as one figure,
bench/scaling.svg: one panel per sweep (tensor count, tensor size,
recording threads), each series its medians joined by a line, the spread
of its rounds ([min, max]) as a band.

Usage:
  python bench/plot.py [--json bench/results-sweeps.json] [--out bench/scaling.svg]
"""
from __future__ import annotations

import argparse
import json
import textwrap
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # no display: a file only
import matplotlib.pyplot as plt  # noqa: E402

HERE = Path(__file__).resolve().parent


def human(x):
    """1024 -> '1 KiB', 1000000 -> '1M' style tick labels."""
    for unit, size in (("MiB", 1 << 20), ("KiB", 1 << 10)):
        if x >= size and x % size == 0:
            return f"{x // size:g} {unit}"
    for unit, size in (("M", 1e6), ("k", 1e3)):
        if x >= size:
            return f"{x / size:g}{unit}"
    return f"{x:g}"


def draw(report, out):
    # a fixed hash salt and no date in the metadata: the same data gives the same file
    plt.rcParams["svg.hashsalt"] = "tracedump"
    sweeps = report["sweeps"]
    fig, axes = plt.subplots(1, len(sweeps), figsize=(6 * len(sweeps), 4.8), squeeze=False)
    for ax, sweep in zip(axes[0], sweeps):
        xs_all = set()
        for series in sweep["series"]:
            pts = sorted(series["points"], key=lambda p: p["x"])
            xs = [p["x"] for p in pts]
            xs_all.update(xs)
            line, = ax.plot(xs, [p["median"] for p in pts], marker="o", label=series["label"])
            ax.fill_between(xs, [p["spread"][0] for p in pts], [p["spread"][1] for p in pts],
                            color=line.get_color(), alpha=0.2, linewidth=0)
        if sweep["log_x"]:
            ax.set_xscale("log", base=2 if sweep["name"] != "count" else 10)
        if sweep["log_y"]:
            ax.set_yscale("log")
        else:
            ax.set_ylim(bottom=0)
        ticks = sorted(xs_all)
        ax.set_xticks(ticks)
        ax.set_xticklabels([human(int(x)) if sweep["name"] == "size" else f"{x:g}" if x < 1000 else human(x)
                            for x in ticks], rotation=30 if sweep["name"] == "size" else 0)
        ax.minorticks_off()
        ax.set_title("\n".join(textwrap.wrap(sweep["title"], 60)), fontsize=10)
        ax.set_xlabel(sweep["x_label"])
        ax.set_ylabel(sweep["y_label"])
        ax.grid(True, which="major", alpha=0.3)
        ax.legend(fontsize=8)
    m = report["machine"]
    fig.suptitle(f"tracedump scaling, {report['date']}: {m['nproc']} cores, {m['cpu']}, Linux {m['kernel']}, "
                 f"scratch on {m['scratch_fs']}; scale {report['scale']}, median of {report['rounds']} rounds "
                 "(band: min..max)", fontsize=9)
    fig.tight_layout()
    fig.savefig(out, metadata={"Date": None})
    plt.close(fig)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--json", default=HERE / "results-sweeps.json", type=Path)
    ap.add_argument("--out", default=HERE / "scaling.svg", type=Path)
    args = ap.parse_args()
    draw(json.loads(args.json.read_text()), args.out)
    print(f"plot written to {args.out}")


if __name__ == "__main__":
    main()

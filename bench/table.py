"""The one table of `make bench`: merges the rows of the Rust half
(bench/results-rust.json, `cargo run --release -p tracedump-bench`) and the
Python half (bench/results-python.json, bench/python_bench.py), prints them
under a line naming the machine, and writes bench/results.json.

Usage:
  python bench/table.py                 # merge, print, write bench/results.json
  python bench/table.py --markdown      # print bench/results.json as the README's table
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
GROUPS = ["write", "read", "layout", "dequantize", "checksum"]


def machine_info():
    def field(path, key):
        try:
            for line in Path(path).read_text().splitlines():
                if line.startswith(key):
                    return line.split(":", 1)[1].strip()
        except OSError:
            pass
        return None

    mem_kib = field("/proc/meminfo", "MemTotal")
    return dict(
        cores=os.cpu_count(),
        memory_gib=round(int(mem_kib.split()[0]) / (1 << 20), 1) if mem_kib else None,
        cpu=field("/proc/cpuinfo", "model name") or platform.processor() or "unknown CPU",
        os=f"{platform.system()} {platform.release()}",
    )


def fmt(value, unit):
    if value is None:
        return "-"
    digits = 3 if unit == "µs" or abs(value) < 1 else 2
    return f"{value:.{digits}f} {unit}"


def result(row):
    return "-" if row["ok"] is None else "PASS" if row["ok"] else "MISS"


def ratio(row):
    return "-" if row["ratio"] is None else f"{row['ratio']:.2f}x"


def baseline(row):
    b = row["baseline"]
    return "-" if b is None else f"{b['label']}: {fmt(b['value'], b['unit'])}"


def also(row):
    return "; ".join(f"{o['label']}: {fmt(o['value'], o['unit'])}" for o in row["others"])


def machine_line(report):
    m = report["machine"]
    return (f"{report['date']} | {m['cores']} cores, {m['memory_gib']} GiB RAM, {m['cpu']}, {m['os']} | "
            f"scale {report['scale']}, best of {report['repeat']} interleaved rounds | "
            f"torch {report['versions'].get('torch')} ({report['versions'].get('torch_threads')} threads), "
            f"safetensors {report['versions'].get('safetensors')}, numpy {report['versions'].get('numpy')}")


def summary_line(report):
    s = report["summary"]
    return f"{s['goals']} goals: {s['pass']} PASS, {s['miss']} MISS"


def print_text(report):
    print(f"\ntracedump benchmarks (make bench)  {machine_line(report)}")
    print("ratio: ours against the baseline as a speed (> 1x: ours is faster)\n")
    w = max(len(r["name"]) for r in report["rows"]) + 2
    head = f"{'':<{w}}{'ours':>12}  {'ratio':>8}  {'goal':<32}{'':<6}  baseline"
    for group in GROUPS:
        rows = [r for r in report["rows"] if r["group"] == group]
        if not rows:
            continue
        print(f"{group.upper():<{w}}" + head[w:])
        for r in rows:
            print(f"{r['name']:<{w}}{fmt(r['ours'], r['unit']):>12}  {ratio(r):>8}  "
                  f"{r['goal'] or '-':<32}{result(r):<6}  {baseline(r)}")
            for o in r["others"]:
                print(f"{'':<{w}}{'':>12}  {'':>8}  {'':<32}{'':<6}  also {o['label']}: {fmt(o['value'], o['unit'])}")
        print()
    print(summary_line(report))


def markdown(report):
    out = [f"Latest run: {machine_line(report)}.", "",
           "Ratio: ours against the baseline as a speed (> 1x: ours is faster).", "",
           "| | benchmark | ours | baseline | ratio | goal | result | also measured |",
           "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for group in GROUPS:
        for r in (r for r in report["rows"] if r["group"] == group):
            cells = [group, r["name"], fmt(r["ours"], r["unit"]), baseline(r), ratio(r),
                     r["goal"] or "-", f"**{result(r)}**" if r["ok"] is False else result(r), also(r) or "-"]
            out.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    out += ["", summary_line(report) + "."]
    return "\n".join(out)


def merge(parts):
    rows = [r for p in parts for r in p["rows"]]
    unknown = {r["group"] for r in rows} - set(GROUPS)
    if unknown:
        sys.exit(f"table.py: unknown groups {sorted(unknown)}")
    rows.sort(key=lambda r: GROUPS.index(r["group"]))  # stable: each part's order kept
    goals = [r for r in rows if r["ok"] is not None]
    py = next((p for p in parts if p["part"] == "python"), {})
    return dict(
        date=time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        machine=machine_info(),
        scale=max(p["scale"] for p in parts),
        repeat=min(p["repeat"] for p in parts),
        versions={k: py.get(k) for k in ("python", "torch", "torch_threads", "safetensors", "numpy")},
        parts={p["part"]: p["date"] for p in parts},
        summary=dict(goals=len(goals), **{"pass": sum(r["ok"] for r in goals)},
                     miss=sum(not r["ok"] for r in goals)),
        rows=rows,
    )


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rust", default=HERE / "results-rust.json", type=Path)
    ap.add_argument("--python", default=HERE / "results-python.json", type=Path)
    ap.add_argument("--json", default=HERE / "results.json", type=Path)
    ap.add_argument("--markdown", action="store_true", help="print --json's table as Markdown, merge nothing")
    args = ap.parse_args()
    if args.markdown:
        print(markdown(json.loads(args.json.read_text())))
        return
    parts = []
    for path in (args.rust, args.python):
        if not path.exists():
            sys.exit(f"table.py: {path} is missing; run `make bench`")
        parts.append(json.loads(path.read_text()))
    if len({p["scale"] for p in parts}) != 1:
        print("table.py: warning: the two halves ran at different scales", file=sys.stderr)
    report = merge(parts)
    print_text(report)
    args.json.write_text(json.dumps(report, indent=2) + "\n")
    print(f"written to {args.json}", file=sys.stderr)


if __name__ == "__main__":
    main()

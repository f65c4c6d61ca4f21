"""The one table of `make bench`: merges the rows of every
bench/results-*.json that holds rows (the Rust half, results-rust.json; the
Python half, results-python.json; and any other part written in the same
row schema, bench/README.md "Row schema"), prints them group by group under
a line naming the machine, and writes bench/results.json. Files without
rows (results-sweeps.json: points for bench/plot.py) are skipped.

Usage:
  python bench/table.py --mark-start    # note the CPU counters (make bench's first step)
  python bench/table.py                 # merge, print, write bench/results.json
  python bench/table.py --markdown      # print bench/results.json as the README's table
  python bench/table.py --readme README.md bench/README.md
                                        # put that table between the files' markers
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
# the order of the groups in the table; a group not named here comes after
# these (in name order), before "checksum", which is always last
GROUPS = ["write", "read", "streaming", "engine", "layout", "dequantize", "diagnose"]
LAST = "checksum"
ROW_KEYS = {"part", "group", "name", "unit", "higher_is_better", "ours", "ours_spread", "rounds",
            "baseline", "others", "ratio", "goal", "ok"}


def group_key(group):
    if group in GROUPS:
        return (0, GROUPS.index(group), "")
    return (2, 0, "") if group == LAST else (1, 0, group)


def fs_type(path):
    """The filesystem type of `path`: that of the longest mount point in
    /proc/mounts above it (ext4, xfs, tmpfs); else `stat -f`, which cannot
    tell ext4 from ext2/ext3."""
    path = os.path.realpath(path)
    best = None
    try:
        for line in Path("/proc/mounts").read_text().splitlines():
            fields = line.split()
            if len(fields) < 3:
                continue
            point = fields[1].replace("\\040", " ")
            if os.path.commonpath([path, point]) == point and (best is None or len(point) > len(best[0])):
                best = (point, fields[2])
    except OSError:
        pass
    if best:
        return best[1]
    try:
        return subprocess.run(["stat", "-f", "-c", "%T", str(path)], capture_output=True,
                              text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


# the CPU counters at the start of the run (--mark-start); tests move it
START_STAT = Path(os.environ.get("TRACEDUMP_BENCH_START_STAT", HERE.parent / "target" / "bench-start-stat"))


def cpu_counters():
    """/proc/stat's aggregate `cpu` line: (steal, total) in clock ticks, or
    None where there is none."""
    try:
        fields = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    except (OSError, ValueError, IndexError):
        return None
    # user nice system idle iowait irq softirq steal (guest time is in user)
    return (fields[7], sum(fields[:8])) if len(fields) >= 8 else None


def steal_share():
    """The share of the machine's CPU time a hypervisor gave to others
    (steal) since --mark-start, in percent: a virtual machine's rows are
    only as steady as this is low. None without the start's counters."""
    try:
        start = [int(x) for x in START_STAT.read_text().split()]
    except (OSError, ValueError):
        return None
    now = cpu_counters()
    if now is None or len(start) != 2 or now[1] <= start[1]:
        return None
    return round(100 * (now[0] - start[0]) / (now[1] - start[1]), 1)


def machine_info(scratch):
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
        scratch_fs=fs_type(scratch),
        load_average=[round(x, 2) for x in os.getloadavg()],
        steal_percent=steal_share(),
    )


def result(row):
    return "-" if row["ok"] is None else "PASS" if row["ok"] else "MISS"


def ratio(row):
    return "-" if row["ratio"] is None else f"{row['ratio']:.2f}x"


def digits(value, unit):
    return 3 if unit == "µs" or abs(value) < 1 else 2


def fmt(value, unit):
    if value is None:
        return "-"
    return f"{value:.{digits(value, unit)}f} {unit}"


def spread(values, median, unit):
    """[min, max], to the digits of the median they surround."""
    d = digits(median, unit)
    return f"[{values[0]:.{d}f}, {values[1]:.{d}f}]"


def ours(row):
    return f"{fmt(row['ours'], row['unit'])} {spread(row['ours_spread'], row['ours'], row['unit'])}"


def baseline(row):
    b = row["baseline"]
    if b is None:
        return "-"
    return f"{b['label']}: {fmt(b['value'], b['unit'])} {spread(b['spread'], b['value'], b['unit'])}"


def also(row):
    return "; ".join(f"{o['label']}: {fmt(o['value'], o['unit'])}" for o in row["others"])


def engine_rounds(report):
    """', engine cost N' when the engine rows ran their own number of rounds."""
    n = sorted({r["rounds"] for r in report["rows"] if r.get("part") == "engine" and r.get("rounds")})
    return f", engine cost {'/'.join(map(str, n))}" if n and n != [report["repeat"]] else ""


def machine_line(report):
    m = report["machine"]
    v = report["versions"]
    load = ", ".join(str(x) for x in m.get("load_average") or [])
    steal = m.get("steal_percent")
    steal = "" if steal is None else f", {steal}% of the CPU time stolen by the hypervisor during the run"
    return (f"{report['date']} | {m['cores']} cores, {m['memory_gib']} GiB RAM, {m['cpu']}, {m['os']}, "
            f"scratch on {m['scratch_fs']}, load average {load} at the end{steal} | "
            f"scale {report['scale']}, median of {report['repeat']} rounds (writes and opens "
            f"{2 * report['repeat'] + 1}{engine_rounds(report)}), contenders in a random order each round | "
            f"torch {v.get('torch')} ({v.get('torch_threads')} threads), "
            f"safetensors {v.get('safetensors')}, numpy {v.get('numpy')}")


def summary_line(report):
    s = report["summary"]
    return f"{s['goals']} goals: {s['pass']} PASS, {s['miss']} MISS (verdicts on the medians)"


def groups(report):
    seen = sorted({r["group"] for r in report["rows"]}, key=group_key)
    return [(g, [r for r in report["rows"] if r["group"] == g]) for g in seen]


def print_text(report):
    print(f"\ntracedump benchmarks (make bench)  {machine_line(report)}")
    print("ours and baseline: median [min, max] of the rounds; ratio: ours against the baseline "
          "as a speed, from the medians (> 1x: ours is faster)\n")
    w = max(len(r["name"]) for r in report["rows"]) + 2
    head = f"{'':<{w}}{'ours':>28}  {'ratio':>8}  {'goal':<32}{'':<6}  baseline"
    for group, rows in groups(report):
        print(f"{group.upper():<{w}}" + head[w:])
        for r in rows:
            print(f"{r['name']:<{w}}{ours(r):>28}  {ratio(r):>8}  "
                  f"{r['goal'] or '-':<32}{result(r):<6}  {baseline(r)}")
            for o in r["others"]:
                print(f"{'':<{w}}{'':>28}  {'':>8}  {'':<32}{'':<6}  also {o['label']}: {fmt(o['value'], o['unit'])}")
        print()
    print(summary_line(report))


def markdown(report):
    out = [f"Latest run: {machine_line(report)}.", "",
           "Ours and baseline: median [min, max] of the rounds. Ratio: ours against the baseline as a "
           "speed, from the medians (> 1x: ours is faster); the verdict is on the medians.", "",
           "| | benchmark | ours | baseline | ratio | goal | result | also measured (medians) |",
           "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for group, rows in groups(report):
        for r in rows:
            cells = [group, r["name"], ours(r), baseline(r), ratio(r),
                     r["goal"] or "-", f"**{result(r)}**" if r["ok"] is False else result(r), also(r) or "-"]
            out.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    out += ["", summary_line(report) + "."]
    return "\n".join(out)


def check_rows(path, rows):
    for r in rows:
        missing = ROW_KEYS - set(r)
        if missing:
            sys.exit(f"table.py: a row of {path} ({r.get('name')!r}) lacks {sorted(missing)}")
        b = r["baseline"]
        if b is not None and not {"label", "value", "unit", "spread"} <= set(b):
            sys.exit(f"table.py: the baseline of {r['name']!r} in {path} lacks label/value/unit/spread")


def part_order(path):
    """The Rust half, the Python half, then every other part by name."""
    name = Path(path).stem.removeprefix("results-")
    return (["rust", "python"].index(name) if name in ("rust", "python") else 2, name)


def load_parts(paths):
    """The parts (files with rows) among `paths`, in `part_order`. A file is
    either an object with `rows` (the two halves) or a bare list of rows
    (streaming.py, engine_cost.py)."""
    parts = []
    for path in sorted(paths, key=part_order):
        data = json.loads(Path(path).read_text())
        if isinstance(data, list):
            data = dict(rows=data)
        if "rows" not in data:
            continue
        check_rows(path, data["rows"])
        data.setdefault("part", Path(path).stem.removeprefix("results-"))
        parts.append(data)
    return parts


def merge(parts, scratch=HERE.parent / "target"):
    rows = [r for p in parts for r in p["rows"]]
    # stable: within a group, each part's order is kept, parts in file order
    rows.sort(key=lambda r: group_key(r["group"]))
    goals = [r for r in rows if r["ok"] is not None]
    py = next((p for p in parts if p["part"] == "python"), {})
    return dict(
        date=time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        machine=machine_info(scratch),
        scale=max(p.get("scale", 1.0) for p in parts),
        repeat=min(p.get("repeat", 5) for p in parts),
        versions={k: py.get(k) for k in ("python", "torch", "torch_threads", "safetensors", "numpy")},
        parts={p["part"]: p.get("date") for p in parts},
        summary=dict(goals=len(goals), **{"pass": sum(r["ok"] for r in goals)},
                     miss=sum(not r["ok"] for r in goals)),
        rows=rows,
    )


START, END = "<!-- bench table: table.py --readme -->", "<!-- end of bench table -->"


def put_in_readme(path, table):
    """Replace what lies between the START and END lines of `path`."""
    text = Path(path).read_text()
    if START not in text or END not in text:
        sys.exit(f"table.py: {path} has no {START} ... {END} markers")
    head, rest = text.split(START, 1)
    _, tail = rest.split(END, 1)
    Path(path).write_text(f"{head}{START}\n{table}\n{END}{tail}")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dir", default=HERE, type=Path, help="where the results-*.json files are")
    ap.add_argument("--json", default=HERE / "results.json", type=Path)
    ap.add_argument("--markdown", action="store_true", help="print --json's table as Markdown, merge nothing")
    ap.add_argument("--mark-start", action="store_true",
                    help="note the CPU counters, for the steal share the table reports; nothing else")
    ap.add_argument("--readme", nargs="+", type=Path, metavar="FILE",
                    help="put --json's Markdown table between FILE's markers, merge nothing")
    args = ap.parse_args()
    if args.mark_start:
        counters = cpu_counters()
        START_STAT.parent.mkdir(parents=True, exist_ok=True)
        START_STAT.write_text("" if counters is None else f"{counters[0]} {counters[1]}\n")
        return
    if args.markdown or args.readme:
        table = markdown(json.loads(args.json.read_text()))
        for path in args.readme or []:
            put_in_readme(path, table)
        if args.markdown:
            print(table)
        return
    parts = load_parts(args.dir.glob("results-*.json"))
    names = {p["part"] for p in parts}
    if not {"rust", "python"} <= names:
        sys.exit(f"table.py: {args.dir} lacks results-rust.json or results-python.json; run `make bench`")
    if len({p.get("scale") for p in parts}) != 1:
        print("table.py: warning: the parts ran at different scales", file=sys.stderr)
    report = merge(parts)
    print_text(report)
    args.json.write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n")
    print(f"{len(parts)} parts ({', '.join(sorted(names))}) written to {args.json}", file=sys.stderr)


if __name__ == "__main__":
    main()

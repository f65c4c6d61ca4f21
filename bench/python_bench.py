"""The Python half of `make bench`: the `tracedump` package against what a
Python user would use instead (a plain `f.write()`, `safetensors`,
`torch.save`, `numpy.save`, torch itself), measured in the same run, N
rounds with the contenders in a random order each round, median and spread
kept. Writes its rows, in the schema of the Rust half (bench/src/main.rs
`Row`, bench/README.md "Row schema"), to bench/results-python.json;
`bench/table.py` merges every bench/results-*.json into the one table.

Usage:
  python bench/python_bench.py [--scale F] [--repeat N] [--json PATH] [--quiet]
  python bench/python_bench.py torch-permute FILE   # torch's side of the Rust layout row
  python bench/python_bench.py open-iterate         # Python's side of the count sweep
"""
from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import save_file

import tracedump

MIB = 1 << 20
# the storage of a llama.cpp-style KV cache: [positions, heads, head dim]
KV_STORAGE = (256, 8, 128)
KV_CALLS = 30
# calls in a row per contender and round, the fastest kept: the first call
# after another contender's pays for what that one left behind (torch's
# OpenMP workers spin on the other core for a while after a parallel call,
# which slowed the single-threaded call after it by a third)
KV_BLOCK = 5


def stat(values):
    """(median, min, max, rounds) of some figures."""
    v = sorted(values)
    n = len(v)
    median = v[n // 2] if n % 2 else (v[n // 2 - 1] + v[n // 2]) / 2
    return median, v[0], v[-1], n


class Row:
    """One row of the table (the Rust half's schema). `ours` and the
    baseline are lists of per-round figures in the row's unit."""

    def __init__(self, group, name, unit, ours):
        median, lo, hi, n = stat(ours)
        self.d = dict(part="python", group=group, name=name, unit=unit,
                      higher_is_better=unit in ("GB/s", "x"), ours=median, ours_spread=[lo, hi],
                      rounds=n, baseline=None, others=[], ratio=None, goal=None, ok=None)

    def vs(self, label, values):
        """The baseline's rounds, in the row's unit: sets the ratio from the
        medians (> 1: ours faster)."""
        d = self.d
        median, lo, hi, _ = stat(values)
        d["baseline"] = dict(label=label, value=median, unit=d["unit"], spread=[lo, hi])
        d["ratio"] = d["ours"] / median if d["higher_is_better"] else median / d["ours"]
        return self

    def also(self, label, values, unit):
        """Another figure measured in the same rounds: its median."""
        self.d["others"].append(dict(label=label, value=stat(values)[0], unit=unit))
        return self

    def goal_ratio(self, minimum, text=None):
        self.d["goal"] = text or f">= {minimum:g}x"
        self.d["ok"] = self.d["ratio"] >= minimum
        return self


def interleaved(contenders, rounds):
    """Every round of every contender, in a random order within each round,
    so that neither a drift in machine load nor what one contender leaves
    behind always falls on the same one. Each contender takes the round
    number and returns the seconds it timed itself; returns name -> list."""
    times = {k: [] for k in contenders}
    order = list(contenders)
    for r in range(rounds):
        random.shuffle(order)
        for k in order:
            times[k].append(contenders[k](r))
    return times


def per(times, scale):
    """Every round's seconds times `scale` (a unit, a per-tensor figure)."""
    return [t * scale for t in times]


def rate(times, total_bytes):
    return [total_bytes / t / 1e9 for t in times]


def timed(fn, *args):
    t0 = time.perf_counter()
    out = fn(*args)
    return time.perf_counter() - t0, out


def drop(path):
    """Remove a file a contender wrote and let the kernel settle (`sync`: no
    dirty pages, no pending block frees left of it), so that the next
    contender starts from the same clean page cache. Outside every timing."""
    try:
        os.remove(path)
    except FileNotFoundError:
        pass
    os.sync()


def progress(what):
    print(f"  [python] {what}", file=sys.stderr, flush=True)


# --- writing ------------------------------------------------------------------

def write_contenders(tmp, named):
    """Every way of writing `named` (name -> 1-D f32 torch tensor) to a file."""
    arrays = [t.numpy() for t in named.values()]
    path = {k: tmp / f"w.{k}" for k in ("plain", "tdump", "safetensors", "pt", "npy")}
    dst = np.ones((len(arrays), arrays[0].size), dtype=np.float32)  # faulted in
    background_adds = {"torch": [], "numpy": []}
    last_name, last = list(named)[-1], arrays[-1]

    def check_trace(r):
        if r == 0:
            with tracedump.open(path["tdump"]) as t:
                if len(t) != len(named) or not np.array_equal(t[last_name].numpy(), last):
                    raise SystemExit("python_bench: the trace read back differs")
        drop(path["tdump"])

    def plain(r):
        # after a 64-byte header, as in the Rust half (bench/src/write.rs
        # `write_plain`: page-aligned 4 MiB writes are often far slower here)
        t0 = time.perf_counter()
        with open(path["plain"], "wb") as f:
            f.write(bytes(64))
            for a in arrays:
                f.write(a)
        s = time.perf_counter() - t0
        drop(path["plain"])
        return s

    numpy_items = list(zip(named, arrays))  # the same bytes as numpy arrays

    def sync(r, items=named.items()):
        t0 = time.perf_counter()
        with tracedump.Writer(path["tdump"]) as w:
            for k, v in items:
                w.add(k, v)
        s = time.perf_counter() - t0
        check_trace(r)
        return s

    def sync_numpy(r):
        return sync(r, numpy_items)

    def background(r, kind="torch"):
        """Create..close on the default queue (not preallocated); the add()
        calls alone go to background_adds[kind]."""
        items = named.items() if kind == "torch" else numpy_items
        t0 = time.perf_counter()
        w = tracedump.Writer(path["tdump"], mode="background")
        t1 = time.perf_counter()
        for k, v in items:
            w.add(k, v)
        background_adds[kind].append(time.perf_counter() - t1)
        if w.close()["dropped"]:
            raise SystemExit("python_bench: the background writer dropped tensors")
        s = time.perf_counter() - t0
        check_trace(r)
        return s

    def background_numpy(r):
        return background(r, "numpy")

    def safetensors(r):
        s, _ = timed(save_file, named, path["safetensors"])
        if r == 0:
            with safe_open(path["safetensors"], framework="pt") as f:
                if not torch.equal(f.get_tensor(last_name), named[last_name]):
                    raise SystemExit("python_bench: the safetensors file read back differs")
        drop(path["safetensors"])
        return s

    def torch_save(r):
        s, _ = timed(torch.save, named, path["pt"])
        drop(path["pt"])
        return s

    def numpy_save(r):
        t0 = time.perf_counter()
        with open(path["npy"], "wb") as f:
            for a in arrays:
                np.save(f, a)
        s = time.perf_counter() - t0
        drop(path["npy"])
        return s

    def memcpy(r):
        t0 = time.perf_counter()
        for d, a in zip(dst, arrays):
            np.copyto(d, a)
        return time.perf_counter() - t0

    def fresh_copy(r):
        t0 = time.perf_counter()
        copies = [a.copy() for a in arrays]
        s = time.perf_counter() - t0
        del copies
        return s

    return dict(plain=plain, sync=sync, sync_numpy=sync_numpy, background=background,
                background_numpy=background_numpy,
                safetensors=safetensors, torch_save=torch_save, numpy_save=numpy_save,
                memcpy=memcpy, fresh_copy=fresh_copy), background_adds


NP_SAVE = "numpy.save, one per tensor into one file"


def write_rows(tmp, n_large, n_small, repeat):
    rows = []
    # 1. large: GB/s
    label = f"{n_large} x 4 MiB f32"
    progress(f"write {label}: plain, Writer sync/background, save_file, torch.save, np.save, memcpy x2")
    named = {f"blk.{i % 32}.w-{i}": torch.arange(MIB, dtype=torch.float32) + i for i in range(n_large)}
    total = n_large * 4 * MIB
    contenders, adds = write_contenders(tmp, named)
    del contenders["sync_numpy"], contenders["background_numpy"]  # small tensors only
    t = interleaved(contenders, 2 * repeat + 1)
    gb = {k: rate(v, total) for k, v in t.items()}
    adds = rate(adds["torch"], total)
    name = f"Python Writer.add (sync), {label}"
    rows.append(Row("write", name, "GB/s", gb["sync"])
                .vs("plain f.write() of the same bytes", gb["plain"]).goal_ratio(0.9))
    rows.append(Row("write", name, "GB/s", gb["sync"])
                .vs("safetensors.torch.save_file", gb["safetensors"]).goal_ratio(0.95)
                .also("torch.save", gb["torch_save"], "GB/s")
                .also(NP_SAVE, gb["numpy_save"], "GB/s")
                .also("Writer(mode='background'), create..close", gb["background"], "GB/s"))
    # the engine's cost: the faster (by median) of the two copy forms
    copies = {"np.copyto into a preallocated array": gb["memcpy"],
              "a.copy() of each, all kept": gb["fresh_copy"]}
    (best, best_gb), (other, other_gb) = sorted(copies.items(), key=lambda kv: -stat(kv[1])[0])
    rows.append(Row("write", f"Python Writer.add (background, default queue), {label}: add() calls", "GB/s",
                    adds)
                .vs(f"memcpy: {best} (the faster form)", best_gb)
                .goal_ratio(0.8, ">= 0.8x (time <= 1.25x memcpy)")
                .also(f"memcpy: {other}", other_gb, "GB/s"))
    del named, contenders

    # 2. small: µs per tensor
    label = f"{n_small} x 256 B"
    progress(f"write {label}: plain, Writer sync/background, save_file, torch.save, np.save")
    named = {f"blk.{i % 32}.s-{i}": torch.full((64,), float(i)) for i in range(n_small)}
    contenders, adds = write_contenders(tmp, named)
    del contenders["memcpy"], contenders["fresh_copy"]
    t = interleaved(contenders, 2 * repeat + 1)
    us = {k: per(v, 1e6 / n_small) for k, v in t.items()}
    adds = {k: per(v, 1e6 / n_small) for k, v in adds.items()}
    rows.append(Row("write", f"Python Writer.add (sync), {label}, per tensor", "µs", us["sync"])
                .vs("safetensors.torch.save_file", us["safetensors"]).goal_ratio(5.0, ">= 5x (ours)")
                .also("Writer.add of numpy arrays of the same bytes", us["sync_numpy"], "µs")
                .also("torch.save", us["torch_save"], "µs")
                .also(NP_SAVE, us["numpy_save"], "µs")
                .also("plain f.write()", us["plain"], "µs"))
    rows.append(Row("write", f"Python Writer.add (background), {label}: add() call per tensor", "µs",
                    adds["torch"])
                .vs("safetensors.torch.save_file", us["safetensors"]).goal_ratio(5.0, ">= 5x (ours)")
                .also("add() of numpy arrays of the same bytes", adds["numpy"], "µs")
                .also("create..close", us["background"], "µs"))
    return rows


# --- reading ------------------------------------------------------------------

def small_files(tmp, n):
    """A trace and a safetensors file of the same n tensors of 256 B."""
    named = {f"blk.{i % 32}.attn_q-{i}": torch.full((64,), float(i)) for i in range(n)}
    tpath, spath = tmp / f"open-{n}.tdump", tmp / f"open-{n}.safetensors"
    with tracedump.Writer(tpath) as w:
        for k, v in named.items():
            w.add(k, v)
    save_file(named, spath)
    return named, tpath, spath


def read_rows(tmp, n_open, repeat):
    """Open a file and reach every tensor as torch, from a fresh open: the
    work an open defers to first access is in the figure."""
    rows = []
    for n in n_open:
        rounds = 2 * repeat + 1
        progress(f"open + .torch() of every one of {n} tensors vs safe_open + get_tensor ({rounds} rounds)")
        named, tpath, spath = small_files(tmp, n)
        names = list(named)
        with tracedump.open(tpath) as t, safe_open(spath, framework="pt") as f:
            if len(t) != n or not torch.equal(t[names[-1]].torch(), f.get_tensor(names[-1])):
                raise SystemExit("python_bench: .torch() differs from safetensors")
            copied = t.copied

        def ours(r, get=lambda v: v.torch(), copy=None):
            t0 = time.perf_counter()
            with tracedump.open(tpath, copy=copy) as t:
                for k in names:
                    get(t[k])
            return time.perf_counter() - t0

        def theirs(r):
            t0 = time.perf_counter()
            with safe_open(spath, framework="pt") as f:
                for k in names:
                    f.get_tensor(k)
            return time.perf_counter() - t0

        def open_only(r):
            return timed(lambda: tracedump.open(tpath).close())[0]

        def safe_open_only(r):
            t0 = time.perf_counter()
            with safe_open(spath, framework="pt"):
                pass
            return time.perf_counter() - t0

        t = interleaved(dict(ours=ours, theirs=theirs,
                             numpy=lambda r: ours(r, get=lambda v: v.numpy()),
                             mapped=lambda r: ours(r, copy=False),
                             open_only=open_only, safe_open_only=safe_open_only), rounds)
        ms = {k: per(v, 1e3) for k, v in t.items()}
        rows.append(Row("read", f"Python tracedump.open + trace[name].torch() of every tensor, {n} x 256 B"
                        + (" (default: file read into memory)" if copied else ""), "ms", ms["ours"])
                    .vs("safe_open(framework='pt') + get_tensor of every tensor", ms["theirs"])
                    .goal_ratio(5.0)
                    .also(".numpy() instead of .torch()", ms["numpy"], "ms")
                    .also("tracedump.open(copy=False), mapped", ms["mapped"], "ms")
                    .also("tracedump.open alone", ms["open_only"], "ms")
                    .also("safe_open alone", ms["safe_open_only"], "ms"))
        del named
        os.remove(tpath)
        os.remove(spath)
    return rows


# --- layout -------------------------------------------------------------------

def torch_permute(kv):
    """What a torch user writes: the cache's [heads, positions, dim] as
    contiguous f32, in torch's one pass (permute is a view; `.to` with a
    memory format converts and lays out at once)."""
    return kv.permute(1, 0, 2).to(torch.float32, memory_format=torch.contiguous_format)


def torch_permute_timers(kv):
    """torch's conversion at its default thread count and at one thread: on
    a small tensor, and on a busy machine, its thread pool can cost more
    than it saves, so the baseline is the faster of the two (by median).
    Each round is a block of calls, the fastest kept."""
    threads = torch.get_num_threads()

    def at(n):
        def run(r):
            torch.set_num_threads(n)
            try:
                s = min(timed(torch_permute, kv)[0] for _ in range(KV_BLOCK))
            finally:
                torch.set_num_threads(threads)
            return s
        return run

    timers = {f"torch_{threads}": at(threads)}
    if threads != 1:
        timers["torch_1"] = at(1)
    return timers


def torch_label(k):
    n = k[len("torch_"):]
    return f"torch permute().to(float32, contiguous_format), {n} thread{'s' if n != '1' else ''}"


def kv_values():
    i = np.arange(np.prod(KV_STORAGE))
    return ((i % 2039) / 64.0 - 16.0).astype(np.float16).reshape(KV_STORAGE)


def layout_row(tmp):
    progress("layout: permuted f16 KV view -> contiguous f32, materialize vs torch")
    kv = torch.from_numpy(kv_values())
    path = tmp / "kv.tdump"
    with tracedump.Writer(path) as w:
        w.add("k-0", kv.permute(1, 0, 2))
    trace = tracedump.open(path)
    view = trace["k-0"]
    if view.is_contiguous or view.shape != (8, 256, 128):
        raise SystemExit(f"python_bench: the KV view was recorded as {view.shape}, contiguous={view.is_contiguous}")
    want = torch_permute(kv)
    if not want.is_contiguous() or not (np.array_equal(view.materialize("f32"), want.numpy())
                                        and np.array_equal(view.to_f32(), want.numpy())):
        raise SystemExit("python_bench: materialize('f32') differs from torch")

    def timer(fn):
        def run(r):
            return min(timed(fn)[0] for _ in range(KV_BLOCK))
        return run

    t = interleaved(dict(ours=timer(lambda: view.materialize("f32")),
                         to_f32=timer(view.to_f32),
                         **torch_permute_timers(kv)), KV_CALLS)
    trace.close()
    us = {k: per(v, 1e6) for k, v in t.items()}
    sides = sorted((k for k in us if k.startswith("torch_")), key=lambda k: stat(us[k])[0])
    row = (Row("layout", "Python materialize('f32'), permuted f16 KV view [8,256,128]", "µs", us["ours"])
           .vs(torch_label(sides[0]) + (" (the faster)" if len(sides) > 1 else ""), us[sides[0]])
           .goal_ratio(1.0)
           .also(".to_f32()", us["to_f32"], "µs"))
    for k in sides[1:]:
        row.also(torch_label(k), us[k], "µs")
    return [row]


def torch_permute_main(raw):
    """torch's side of the Rust layout row: for every line on stdin, one
    round of each thread count's timer in a random order, printed as
    label<TAB>µs[<TAB>label<TAB>µs] (the same labels in the same order)."""
    kv = torch.from_numpy(np.fromfile(raw, dtype=np.float16).reshape(KV_STORAGE))
    timers = torch_permute_timers(kv)
    for r, _ in enumerate(sys.stdin):
        t = interleaved(timers, 1)
        print("\t".join(f"{torch_label(k)}\t{t[k][0] * 1e6:.3f}" for k in timers), flush=True)


def open_iterate_main():
    """For the tensor-count sweep (bench/src/sweeps.rs): for every path on
    stdin, the seconds of `tracedump.open` + `.numpy()` of every tensor by
    name, and the tensor count, on one line: seconds<TAB>count."""
    for line in sys.stdin:
        path = line.rstrip("\n")
        t0 = time.perf_counter()
        with tracedump.open(path) as t:
            n = 0
            for name in t:
                t[name].numpy()
                n += 1
        print(f"{time.perf_counter() - t0:.9f}\t{n}", flush=True)


# --- main ---------------------------------------------------------------------

def print_rows(rows):
    for r in rows:
        b = r["baseline"]
        lo, hi = r["ours_spread"]
        print(f"{r['name']:<70} {r['ours']:>10.3f} [{lo:.3f}, {hi:.3f}] {r['unit']:<5} "
              f"{(b['label'] + ' ' + format(b['value'], '.3f')) if b else '-':<50} "
              f"{format(r['ratio'], '.2f') + 'x' if r['ratio'] else '-':>7}  {r['goal'] or '-'}: "
              f"{'-' if r['ok'] is None else 'PASS' if r['ok'] else 'MISS'}")


def main():
    if len(sys.argv) == 3 and sys.argv[1] == "torch-permute":
        return torch_permute_main(sys.argv[2])
    if sys.argv[1:] == ["open-iterate"]:
        return open_iterate_main()
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scale", type=float, default=1.0, help="fraction of every tensor count, in (0, 1]")
    ap.add_argument("--repeat", type=int, default=5, help="rounds per figure, the median is kept (writes and opens: 2N+1)")
    ap.add_argument("--json", default=str(Path(__file__).with_name("results-python.json")))
    ap.add_argument("--quiet", action="store_true", help="no table (make bench prints the merged one)")
    ap.add_argument("--only", default="write,read,layout",
                    help="comma-separated parts to run: write, read, layout (default all); "
                         "dequantize, diagnose and sweeps are accepted and have no Python rows")
    args = ap.parse_args()
    if not 0 < args.scale <= 1 or args.repeat < 1:
        ap.error("--scale must be in (0, 1] and --repeat at least 1")
    only = set(args.only.split(","))
    known = {"write", "read", "layout", "dequantize", "diagnose", "sweeps"}
    if only - known:
        ap.error(f"--only: unknown part(s) {sorted(only - known)}")
    scaled = lambda n: max(1, round(n * args.scale))  # noqa: E731
    root = Path(__file__).resolve().parent.parent / "target"
    root.mkdir(exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix="tdbench-", dir=root))
    try:
        rows = []
        if "write" in only:
            rows += write_rows(tmp, scaled(256), scaled(20_000), args.repeat)
        if "read" in only:
            rows += read_rows(tmp, [scaled(20_000), scaled(100_000)], args.repeat)
        if "layout" in only:
            rows += layout_row(tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    rows = [r.d for r in rows]
    if not args.quiet:
        print_rows(rows)
    Path(args.json).write_text(json.dumps(dict(
        part="python", date=time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
        python=sys.version.split()[0], torch=torch.__version__, numpy=np.__version__,
        safetensors=__import__("safetensors").__version__, torch_threads=torch.get_num_threads(),
        scale=args.scale, repeat=args.repeat, rows=rows), indent=2) + "\n")
    print(f"python rows written to {args.json}", file=sys.stderr)


if __name__ == "__main__":
    main()

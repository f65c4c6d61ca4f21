"""The Python half of `make bench`: the `tracedump` package against what a
Python user would use instead (a plain `f.write()`, `safetensors`,
`torch.save`, `numpy.save`, torch itself), measured in the same run, best
of N rounds with the contenders interleaved. Writes its rows, in the schema
of the Rust half (bench/src/main.rs `Row`), to bench/results-python.json;
`bench/table.py` merges both into the one table. See bench/README.md.

Usage:
  python bench/python_bench.py [--scale F] [--repeat N] [--json PATH] [--quiet]
  python bench/python_bench.py torch-permute FILE CALLS   # for the Rust layout row
"""
from __future__ import annotations

import argparse
import json
import os
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


class Row:
    """One row of the table (the Rust half's schema)."""

    def __init__(self, group, name, unit, ours):
        self.d = dict(part="python", group=group, name=name, unit=unit,
                      higher_is_better=unit == "GB/s", ours=ours, baseline=None,
                      others=[], ratio=None, goal=None, ok=None)

    def vs(self, label, value):
        """The baseline, in the row's unit: sets the ratio (> 1: ours faster)."""
        d = self.d
        d["baseline"] = dict(label=label, value=value, unit=d["unit"])
        d["ratio"] = d["ours"] / value if d["higher_is_better"] else value / d["ours"]
        return self

    def also(self, label, value, unit):
        self.d["others"].append(dict(label=label, value=value, unit=unit))
        return self

    def goal_ratio(self, minimum, text=None):
        self.d["goal"] = text or f">= {minimum:g}x"
        self.d["ok"] = self.d["ratio"] >= minimum
        return self

    def goal_max(self, maximum):
        self.d["goal"] = f"<= {maximum:g} {self.d['unit']}"
        self.d["ok"] = self.d["ours"] <= maximum
        return self


def interleaved(contenders, rounds):
    """Best of `rounds` of every contender, run in turn within each round so
    that a drift in machine load hits them all. Each contender takes the
    round number and returns the seconds it timed itself."""
    best = {k: float("inf") for k in contenders}
    for r in range(rounds):
        for k, fn in contenders.items():
            best[k] = min(best[k], fn(r))
    return best


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

def write_contenders(tmp, named, total_bytes):
    """Every way of writing `named` (name -> 1-D f32 torch tensor) to a file."""
    arrays = [t.numpy() for t in named.values()]
    path = {k: tmp / f"w.{k}" for k in ("plain", "tdump", "safetensors", "pt", "npy")}
    roomy = 2 * total_bytes + 64 * MIB  # the whole run fits: no add() waits
    dst = np.ones((len(arrays), arrays[0].size), dtype=np.float32)  # faulted in
    default_adds = [float("inf")]
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

    def background_adds(r, queue_bytes, preallocate=False, items=named.items()):
        w = tracedump.Writer(path["tdump"], mode="background", queue_bytes=queue_bytes,
                             preallocate=preallocate)
        t0 = time.perf_counter()
        for k, v in items:
            w.add(k, v)
        s = time.perf_counter() - t0
        if w.close()["dropped"]:
            raise SystemExit("python_bench: the background writer dropped tensors")
        check_trace(r)
        return s

    def roomy_numpy_adds(r):
        return background_adds(r, roomy, items=numpy_items)

    def roomy_adds(r):
        return background_adds(r, roomy, preallocate=True)

    def roomy_cold_adds(r):
        return background_adds(r, roomy)

    def default_queue_adds(r):
        default_adds[0] = min(default_adds[0], background_adds(r, 256 << 20))
        return 0.0

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

    return dict(plain=plain, sync=sync, sync_numpy=sync_numpy, roomy_adds=roomy_adds,
                roomy_numpy_adds=roomy_numpy_adds, roomy_cold_adds=roomy_cold_adds,
                default_queue_adds=default_queue_adds,
                safetensors=safetensors, torch_save=torch_save, numpy_save=numpy_save,
                memcpy=memcpy, fresh_copy=fresh_copy), default_adds


NP_SAVE = "numpy.save, one per tensor into one file"


def write_rows(tmp, n_large, n_small, repeat):
    rows = []
    # 1. large: GB/s
    label = f"{n_large} x 4 MiB f32"
    progress(f"write {label}: plain, Writer sync/background x2, save_file, torch.save, np.save, memcpy x2")
    named = {f"blk.{i % 32}.w-{i}": torch.arange(MIB, dtype=torch.float32) + i for i in range(n_large)}
    total = n_large * 4 * MIB
    contenders, default_adds = write_contenders(tmp, named, total)
    del contenders["sync_numpy"], contenders["roomy_numpy_adds"]  # small tensors only
    best = interleaved(contenders, 2 * repeat + 1)
    gb = {k: total / v / 1e9 for k, v in best.items() if v > 0}
    gb["default_queue_adds"] = total / default_adds[0] / 1e9
    name = f"Python Writer.add (sync), {label}"
    rows.append(Row("write", name, "GB/s", gb["sync"])
                .vs("plain f.write() of the same bytes", gb["plain"]).goal_ratio(0.9))
    rows.append(Row("write", name, "GB/s", gb["sync"])
                .vs("safetensors.torch.save_file", gb["safetensors"]).goal_ratio(0.95)
                .also("torch.save", gb["torch_save"], "GB/s")
                .also(NP_SAVE, gb["numpy_save"], "GB/s"))
    rows.append(Row("write", f"Python Writer.add (background, preallocate=True), {label}: add() calls", "GB/s",
                    gb["roomy_adds"])
                .vs("memcpy (np.copyto into a preallocated array)", gb["memcpy"])
                .goal_ratio(0.8, ">= 0.8x (time <= 1.25x memcpy)")
                .also("add() calls without preallocate: queue memory faulted in as it fills",
                      gb["roomy_cold_adds"], "GB/s")
                .also("add() calls with the default 256 MiB queue (waits when full)",
                      gb["default_queue_adds"], "GB/s")
                .also("copies into fresh arrays (a.copy(), all kept)", gb["fresh_copy"], "GB/s"))
    del named, contenders

    # 2. small: µs per tensor
    label = f"{n_small} x 256 B"
    progress(f"write {label}: plain, Writer sync/background, save_file, torch.save, np.save")
    named = {f"blk.{i % 32}.s-{i}": torch.full((64,), float(i)) for i in range(n_small)}
    contenders, _ = write_contenders(tmp, named, n_small * 256)
    del contenders["default_queue_adds"], contenders["memcpy"], contenders["fresh_copy"]
    del contenders["roomy_cold_adds"]  # small payloads are not staged: the same as roomy_adds
    best = interleaved(contenders, 2 * repeat + 1)
    us = {k: v / n_small * 1e6 for k, v in best.items()}
    rows.append(Row("write", f"Python Writer.add (sync), {label}, per tensor", "µs", us["sync"])
                .vs("safetensors.torch.save_file", us["safetensors"]).goal_max(3.0)
                .also("Writer.add of numpy arrays of the same bytes", us["sync_numpy"], "µs")
                .also("torch.save", us["torch_save"], "µs")
                .also(NP_SAVE, us["numpy_save"], "µs")
                .also("plain f.write()", us["plain"], "µs"))
    rows.append(Row("write", f"Python Writer.add (background), {label}: add() call per tensor", "µs",
                    us["roomy_adds"])
                .vs("safetensors.torch.save_file", us["safetensors"]).goal_max(2.0)
                .also("add() of numpy arrays of the same bytes", us["roomy_numpy_adds"], "µs"))
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
    rows = []
    for n in n_open:
        progress(f"open a trace of {n} tensors vs safe_open (best of {2 * repeat + 1})")
        named, tpath, spath = small_files(tmp, n)

        def ours(r, copy=None):
            t0 = time.perf_counter()
            with tracedump.open(tpath, copy=copy) as t:
                pass
            s = time.perf_counter() - t0
            if r == 0:
                with tracedump.open(tpath, copy=copy) as t:
                    if len(t) != n:
                        raise SystemExit("python_bench: wrong tensor count")
            return s

        def theirs(r):
            t0 = time.perf_counter()
            with safe_open(spath, framework="pt") as f:
                pass
            return time.perf_counter() - t0

        best = interleaved(dict(ours=ours, mapped=lambda r: ours(r, copy=False), theirs=theirs),
                           2 * repeat + 1)
        copied = tracedump.open(tpath).copied
        rows.append(Row("read", f"Python tracedump.open, {n} tensors"
                        + (" (default: read into memory)" if copied else ""), "ms", best["ours"] * 1e3)
                    .vs("safetensors.safe_open", best["theirs"] * 1e3).goal_ratio(2.0)
                    .also("tracedump.open(copy=False), mapped", best["mapped"] * 1e3, "ms"))

        if n == n_open[0]:
            progress(f"trace[name].torch() of {n} tensors vs get_tensor")
            names = list(named)
            trace = tracedump.open(tpath)
            f = safe_open(spath, framework="pt")
            if not torch.equal(trace[names[-1]].torch(), f.get_tensor(names[-1])):
                raise SystemExit("python_bench: .torch() differs from safetensors")

            def ours_get(r):
                t0 = time.perf_counter()
                for k in names:
                    trace[k].torch()
                return time.perf_counter() - t0

            def theirs_get(r):
                t0 = time.perf_counter()
                for k in names:
                    f.get_tensor(k)
                return time.perf_counter() - t0

            def ours_numpy(r):
                t0 = time.perf_counter()
                for k in names:
                    trace[k].numpy()
                return time.perf_counter() - t0

            best = interleaved(dict(ours=ours_get, theirs=theirs_get, numpy=ours_numpy), repeat)
            us = {k: v / n * 1e6 for k, v in best.items()}
            rows.append(Row("read", f"Python trace[name].torch(), {n} x 256 B, per tensor", "µs", us["ours"])
                        .vs("safe_open(...).get_tensor", us["theirs"]).goal_ratio(5.0)
                        .also("trace[name].numpy()", us["numpy"], "µs"))
            trace.close()
            del f
        del named
    return rows


def big_row(tmp, big_elems, repeat):
    mb = big_elems * 4 / MIB
    progress(f"one {mb:.0f} MiB tensor -> torch: tracedump, safetensors, torch.load(mmap=True)")
    big = torch.arange(big_elems, dtype=torch.float32)
    tpath, spath, ppath = tmp / "big.tdump", tmp / "big.safetensors", tmp / "big.pt"
    with tracedump.Writer(tpath) as w:
        w.add("big", big)
    save_file({"big": big}, spath)
    torch.save({"big": big}, ppath)
    dst = np.ones(big_elems, dtype=np.float32)
    src = big.numpy()
    last = float(big[-1])

    def check(r, t):
        if r == 0 and (t.shape != big.shape or float(t[-1]) != last):
            raise SystemExit("python_bench: the big tensor read back differs")

    def ours(r):
        t0 = time.perf_counter()
        with tracedump.open(tpath) as trace:
            t = trace["big"].torch()
        s = time.perf_counter() - t0
        check(r, t)
        return s

    def theirs(r):
        t0 = time.perf_counter()
        with safe_open(spath, framework="pt") as f:
            t = f.get_tensor("big")
        s = time.perf_counter() - t0
        check(r, t)
        return s

    def torch_load(r):
        t0 = time.perf_counter()
        t = torch.load(ppath, mmap=True, weights_only=True)["big"]
        s = time.perf_counter() - t0
        check(r, t)
        return s

    def memcpy(r):
        t0 = time.perf_counter()
        np.copyto(dst, src)
        return time.perf_counter() - t0

    best = interleaved(dict(ours=ours, theirs=theirs, torch_load=torch_load), 2 * repeat + 1)
    # apart, after: interleaved, the 256 MiB copy slowed the calls after it
    # by more than they cost (0.06 -> 0.36 ms seen), the baseline's too
    best |= interleaved(dict(memcpy=memcpy), repeat)
    ms = {k: v * 1e3 for k, v in best.items()}
    return [Row("read", f"Python open + trace[name].torch(), one {mb:.0f} MiB f32 tensor", "ms", ms["ours"])
            .vs("safe_open + get_tensor", ms["theirs"])
            .goal_ratio(1.0, "<= safetensors (>= 1x)")
            .also("torch.load(mmap=True)", ms["torch_load"], "ms")
            .also(f"memcpy of the {mb:.0f} MiB (what O(n) costs)", ms["memcpy"], "ms")]


# --- layout -------------------------------------------------------------------

def torch_permute(kv):
    """What a torch user writes: the cache's [heads, positions, dim] as f32."""
    return kv.permute(1, 0, 2).contiguous().float()


def torch_permute_timers(kv):
    """torch's conversion at its default thread count and at one thread: on
    a small tensor, and on a busy machine, its thread pool can cost more
    than it saves, so the baseline is the faster of the two."""
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


def torch_baseline(best_us):
    """(label, value, the other figure or None) of the torch timers' results."""
    (k1, v1), *rest = sorted(((k, v) for k, v in best_us.items() if k.startswith("torch_")), key=lambda kv: kv[1])
    label = lambda k: f"torch permute().contiguous().float(), {k[6:]} thread{'s' if k[6:] != '1' else ''}"  # noqa: E731
    return (label(k1) + (" (the faster)" if rest else ""), v1,
            (label(rest[0][0]), rest[0][1]) if rest else None)


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
    want = torch_permute(kv).numpy()
    if not (np.array_equal(view.materialize("f32"), want) and np.array_equal(view.to_f32(), want)):
        raise SystemExit("python_bench: materialize('f32') differs from torch")

    def timer(fn):
        def run(r):
            return min(timed(fn)[0] for _ in range(KV_BLOCK))
        return run

    best = interleaved(dict(ours=timer(lambda: view.materialize("f32")),
                            to_f32=timer(view.to_f32),
                            **torch_permute_timers(kv)), KV_CALLS)
    trace.close()
    us = {k: v * 1e6 for k, v in best.items()}
    label, value, other = torch_baseline(us)
    row = (Row("layout", "Python materialize('f32'), permuted f16 KV view [8,256,128]", "µs", us["ours"])
           .vs(label, value).goal_ratio(1.0)
           .also(".to_f32()", us["to_f32"], "µs"))
    if other:
        row.also(*other, "µs")
    return [row]


def torch_permute_main(raw, calls):
    """For the Rust layout row: the torch baseline of the f16 storage in
    `raw`, on one line: label<TAB>µs<TAB>other label<TAB>other µs."""
    kv = torch.from_numpy(np.fromfile(raw, dtype=np.float16).reshape(KV_STORAGE))
    best = interleaved(torch_permute_timers(kv), calls)
    label, value, other = torch_baseline({k: v * 1e6 for k, v in best.items()})
    print("\t".join([label, f"{value:.3f}", *(other and [other[0], f"{other[1]:.3f}"] or [])]))


# --- main ---------------------------------------------------------------------

def print_rows(rows):
    for r in rows:
        b = r["baseline"]
        print(f"{r['name']:<70} {r['ours']:>10.3f} {r['unit']:<5} "
              f"{(b['label'] + ' ' + format(b['value'], '.3f')) if b else '-':<50} "
              f"{format(r['ratio'], '.2f') + 'x' if r['ratio'] else '-':>7}  {r['goal'] or '-'}: "
              f"{'-' if r['ok'] is None else 'PASS' if r['ok'] else 'MISS'}")


def main():
    if len(sys.argv) == 4 and sys.argv[1] == "torch-permute":
        return torch_permute_main(sys.argv[2], int(sys.argv[3]))
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scale", type=float, default=1.0, help="fraction of every tensor count, in (0, 1]")
    ap.add_argument("--repeat", type=int, default=5, help="rounds per figure, the best is kept (writes and opens: 2N+1)")
    ap.add_argument("--json", default=str(Path(__file__).with_name("results-python.json")))
    ap.add_argument("--quiet", action="store_true", help="no table (make bench prints the merged one)")
    ap.add_argument("--only", default="write,read,layout",
                    help="comma-separated parts to run: write, read, layout (default all); "
                         "dequantize is accepted and has no Python rows")
    args = ap.parse_args()
    if not 0 < args.scale <= 1 or args.repeat < 1:
        ap.error("--scale must be in (0, 1] and --repeat at least 1")
    only = set(args.only.split(","))
    if only - {"write", "read", "layout", "dequantize"}:
        ap.error(f"--only: unknown part(s) {sorted(only - {'write', 'read', 'layout', 'dequantize'})}")
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
            rows += big_row(tmp, scaled(64 * MIB), args.repeat)
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

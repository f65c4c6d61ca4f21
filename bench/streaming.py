"""The streaming verbs on real-size traces: `tracedump diff`, `report`,
`inspect --stats`, `verify` and `export` on two 2 GiB traces, each verb a
subprocess whose peak anonymous memory (RssAnon: mapped file pages do not
count) is sampled every 10 ms, against two anchors measured in the same
run over the same bytes: a numpy loop computing diff's metrics in float64
over 256K-value chunks (its best of 1 and 2 threads), and a chunked memcpy.

Pair "mixed": 200 f32 tensors of 1-16 MiB plus one of 1 GiB a trace (B is
A plus small noise in a quarter of the tensors, one tensor diverges).
Pair "one": a single 1 GiB f32 tensor a trace. The files go under
target/bench-streaming/ and are removed at the end. Rows go to
bench/results-streaming.json (bench/README.md, "Streaming verbs").

Usage:
  python bench/streaming.py [--scale F] [--rounds N] [--json PATH] [--quiet]
  python bench/streaming.py numpy-anchor A B   # the anchor, as its own process
"""
from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
MIB = 1 << 20
CHUNK = 256 * 1024
ATOL, RTOL = 1e-3, 1e-2


def tracedump_bin() -> Path:
    target = Path(os.environ.get("CARGO_TARGET_DIR", ROOT / "target"))
    return target / "release" / "tracedump"


# ---------------------------------------------------------------- the traces

def make_pair(dirpath: Path, kind: str, scale: float, seed: int = 7):
    """Write traces A and B of one pair with the Python package's writer."""
    import tracedump

    rng = np.random.default_rng(seed)
    big = int((1 << 30) * scale) // 4
    if kind == "mixed":
        # 200 sizes, log-uniform in 1..16 MiB, scaled to 1 GiB in all
        mib = np.exp(rng.uniform(np.log(1), np.log(16), 200))
        mib *= 1024 / mib.sum()
        sizes = [max(1024, int(m * MIB * scale) // 4) for m in mib] + [big]
    else:
        sizes = [big]
    divergent = len(sizes) // 3 if kind == "mixed" else -1
    a_path, b_path = dirpath / f"{kind}.a.tdump", dirpath / f"{kind}.b.tdump"
    with tracedump.Writer(a_path, engine="bench") as wa, tracedump.Writer(b_path, engine="bench") as wb:
        for i, n in enumerate(sizes):
            cols = 1024 if n % 1024 == 0 else 1
            a = rng.standard_normal(n, dtype=np.float32).reshape(-1, cols)
            name = f"blk.{i}.out"
            wa.add(name, a, layer=i)
            if i == divergent:
                b = a.copy()
                b[: max(1, len(b) // 8)] += 1.0
            elif i % 4 == 1:
                b = a + rng.standard_normal(a.shape, dtype=np.float32) * np.float32(1e-6)
            else:
                b = a
            wb.add(name, b, layer=i)
            del a, b
    return a_path, b_path


# ------------------------------------------------------------- the anchors

def numpy_anchor(a_path: str, b_path: str) -> float:
    """diff's metrics over every pair, f64 accumulation, 256K-value chunks,
    over zero-copy views of the mapped traces, written the way a numpy user
    who cares about speed would (preallocated buffers, `out=`, BLAS dots,
    the NaN/Inf bookkeeping only for chunks that have any); the seconds."""
    import tracedump

    ta, tb = tracedump.open(a_path), tracedump.open(b_path)
    A, B, D, T, U = (np.empty(CHUNK) for _ in range(5))
    t0 = time.perf_counter()
    for name in ta.names():
        xa = ta[name].numpy().reshape(-1)
        xb = tb[name].numpy().reshape(-1)
        n = min(len(xa), len(xb))
        best, at = -1.0, 0
        max_rel = sum_abs = sum_sq = dot = na = nb = sa = sb = 0.0
        lo_a = lo_b = np.inf
        hi_a = hi_b = -np.inf
        outside = nan_mm = inf_mm = finite = 0
        for i in range(0, n, CHUNK):
            m = min(CHUNK, n - i)
            a, b, d, t, u = A[:m], B[:m], D[:m], T[:m], U[:m]
            np.copyto(a, xa[i:i + m])
            np.copyto(b, xb[i:i + m])
            np.subtract(a, b, out=d)
            np.abs(d, out=d)
            s = d.sum()
            if not np.isfinite(s):
                # some NaN or infinity: count the mismatches, keep the finite pairs
                nan_mm += int(np.count_nonzero(np.isnan(a) != np.isnan(b)))
                inf_mm += int(np.count_nonzero((np.isinf(a) | np.isinf(b)) & (a != b)
                                               & ~np.isnan(a) & ~np.isnan(b)))
                keep = np.isfinite(a) & np.isfinite(b)
                a, b = a[keep], b[keep]
                d, t, u = np.abs(a - b), np.empty(len(a)), np.empty(len(a))
                s = d.sum()
            if len(d):
                top = d.max()
                if top > best:
                    best, at = top, i + int(d.argmax())
                np.abs(a, out=t)
                np.abs(b, out=u)
                np.maximum(t, u, out=t)
                with np.errstate(invalid="ignore"):
                    np.divide(d, t, out=t)  # 0/0: NaN, which fmax skips
                max_rel = max(max_rel, float(np.fmax.reduce(t)))
                u *= RTOL
                u += ATOL
                outside += int(np.count_nonzero(d > u))
                lo_a, hi_a = min(lo_a, a.min()), max(hi_a, a.max())
                lo_b, hi_b = min(lo_b, b.min()), max(hi_b, b.max())
            sum_abs += s
            sum_sq += d @ d
            dot += a @ b
            na += a @ a
            nb += b @ b
            sa += a.sum()
            sb += b.sum()
            finite += len(d)
        if finite:
            _ = (sum_abs / finite, np.sqrt(sum_sq / finite), dot / np.sqrt(na * nb + 1e-300))
            mean_a, mean_b = sa / finite, sb / finite
            _ = (na / finite - mean_a ** 2, nb / finite - mean_b ** 2, at, max_rel, outside)
    return time.perf_counter() - t0


def memcpy_anchor(paths) -> tuple[float, int]:
    """Copy every tensor's bytes of the traces, 256K values at a time, into
    one preallocated buffer: the seconds and the bytes."""
    import tracedump

    buf = np.empty(CHUNK, dtype=np.float32)
    arrays = []
    for p in paths:
        t = tracedump.open(str(p))
        arrays += [t[name].numpy().reshape(-1) for name in t.names()]
    total = sum(x.nbytes for x in arrays)
    t0 = time.perf_counter()
    for x in arrays:
        for i in range(0, len(x), CHUNK):
            c = x[i:i + CHUNK]
            np.copyto(buf[:len(c)], c)
    return time.perf_counter() - t0, total


# ---------------------------------------------------------- measuring a run

def rss_anon_kib(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("RssAnon:"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def measure(cmd, env=None, ok=(0, 1)) -> tuple[float, float, str]:
    """Run `cmd`; its wall seconds, its peak RssAnon in MiB (sampled every
    10 ms) and its stdout."""
    t0 = time.perf_counter()
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    peak = 0
    out_chunks = []
    import threading

    def drain(stream, into):
        into.append(stream.read())

    errs = []
    th = [threading.Thread(target=drain, args=(p.stdout, out_chunks)),
          threading.Thread(target=drain, args=(p.stderr, errs))]
    for t in th:
        t.start()
    while p.poll() is None:
        kib = rss_anon_kib(p.pid)
        if kib is not None:
            peak = max(peak, kib)
        time.sleep(0.01)
    took = time.perf_counter() - t0
    for t in th:
        t.join()
    if p.returncode not in ok:
        raise RuntimeError(f"{cmd} exited {p.returncode}: {errs[0][-2000:].decode(errors='replace')}")
    return took, peak / 1024, out_chunks[0].decode(errors="replace")


class Row:
    """One row of the shared table (bench/README.md's schema)."""

    def __init__(self, group, name, unit, values, higher_is_better):
        self.d = dict(part="streaming", group=group, name=name, unit=unit,
                      higher_is_better=higher_is_better, ours=statistics.median(values),
                      ours_spread=[min(values), max(values)], rounds=len(values),
                      baseline=None, others=[], ratio=None, goal=None, ok=None)

    def vs(self, label, values, unit=None, ratio=None):
        d = self.d
        med = statistics.median(values)
        d["baseline"] = dict(label=label, value=med, unit=unit or d["unit"],
                             spread=[min(values), max(values)])
        if ratio is None:
            ratio = d["ours"] / med if d["higher_is_better"] else med / d["ours"]
        d["ratio"] = ratio
        return self

    def also(self, label, value, unit):
        self.d["others"].append(dict(label=label, value=value, unit=unit))
        return self

    def goal(self, text, ok):
        self.d["goal"], self.d["ok"] = text, bool(ok)
        return self


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--scale", type=float, default=1.0, help="fraction of the full 2 GiB a trace")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--json", default=str(ROOT / "bench" / "results-streaming.json"))
    ap.add_argument("--keep", action="store_true", help="keep the traces")
    ap.add_argument("--quiet", action="store_true")
    args, rest = ap.parse_known_args()
    if rest[:1] == ["numpy-anchor"]:
        print(numpy_anchor(rest[1], rest[2]))
        return 0
    if rest[:1] == ["memcpy-anchor"]:
        took, total = memcpy_anchor(rest[1:])
        print(took, total)
        return 0
    say = (lambda *a: None) if args.quiet else (lambda *a: print(*a, file=sys.stderr, flush=True))
    exe = tracedump_bin()
    if not exe.exists():
        subprocess.run(["cargo", "build", "--release", "-p", "tracedump-cli"], cwd=ROOT, check=True)
    work = ROOT / "target" / "bench-streaming"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    load = os.getloadavg()
    rows = []
    try:
        for kind in ["mixed", "one"]:
            t0 = time.perf_counter()
            a, b = make_pair(work, kind, args.scale)
            nbytes = a.stat().st_size + b.stat().st_size
            say(f"{kind}: wrote {nbytes / 1e9:.2f} GB in {time.perf_counter() - t0:.1f} s")
            # warm the page cache: every contender reads from memory
            for p in (a, b):
                with open(p, "rb") as f:
                    while f.read(64 * MIB):
                        pass
            py = sys.executable
            me = str(Path(__file__).resolve())
            one = dict(os.environ, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", MKL_NUM_THREADS="1")
            two = dict(os.environ, OMP_NUM_THREADS="2", OPENBLAS_NUM_THREADS="2", MKL_NUM_THREADS="2")
            out = str(work / "out")
            contenders = {
                "diff": lambda: measure([exe, "diff", a, b]),
                "report": lambda: measure([exe, "report", a, b, "-o", out + ".html"]),
                "inspect --stats": lambda: measure([exe, "inspect", a, "--stats"]),
                "verify": lambda: measure([exe, "verify", a]),
                "export npz": lambda: measure([exe, "export", a, "--to", "npz", "-o", out + ".npz"]),
                "export safetensors": lambda: measure(
                    [exe, "export", a, "--to", "safetensors", "-o", out + ".safetensors"]),
                "numpy (1 thread)": lambda: measure([py, me, "numpy-anchor", a, b], env=one),
                "numpy (2 threads)": lambda: measure([py, me, "numpy-anchor", a, b], env=two),
                "memcpy": lambda: measure([py, me, "memcpy-anchor", a, b]),
            }
            times = {k: [] for k in contenders}
            mem = {k: [] for k in contenders}
            for r in range(args.rounds):
                order = list(contenders)
                random.shuffle(order)
                for k in order:
                    took, peak, stdout = contenders[k]()
                    if k.startswith("numpy"):
                        took = float(stdout.split()[0])
                    elif k == "memcpy":
                        took = float(stdout.split()[0])
                    times[k].append(took)
                    mem[k].append(peak)
                    for f in work.glob("out.*"):
                        f.unlink()
                    say(f"{kind} round {r}: {k}: {took:.2f} s, {peak:.0f} MiB anon")
            group = f"streaming verbs ({kind}: 2 x {nbytes / 2 / 2**30:.2f} GiB)"
            gbs = lambda ts: [nbytes / t / 1e9 for t in ts]  # noqa: E731
            diff = gbs(times["diff"])
            npy = {k: gbs(times[k]) for k in ("numpy (1 thread)", "numpy (2 threads)")}
            best_np = max(npy, key=lambda k: statistics.median(npy[k]))
            rows.append(Row(group, "diff throughput vs numpy loop", "GB/s", diff, True)
                        .vs(best_np, npy[best_np])
                        .also("numpy, other thread setting",
                              statistics.median(npy[min(npy, key=lambda k: statistics.median(npy[k]))]),
                              "GB/s")
                        .goal(">= 2x", None).d)
            r = rows[-1]
            r["ok"] = r["ratio"] >= 2
            rows.append(Row(group, "diff throughput vs memcpy", "GB/s", diff, True)
                        .vs("numpy chunked memcpy", gbs(times["memcpy"])).d)
            rows[-1]["goal"], rows[-1]["ok"] = ">= 0.25x (within 4x)", rows[-1]["ratio"] >= 0.25
            for verb in ("report", "inspect --stats"):
                rw = Row(group, f"{verb} time vs diff", "s", times[verb], False).vs("tracedump diff", times["diff"]).d
                # as a speed: > 1 means faster than diff; goal within 1.5x of diff's time
                rw["goal"], rw["ok"] = "<= 1.5x diff's time (ratio >= 0.67)", rw["ratio"] >= 1 / 1.5
                rows.append(rw)
            for verb in ("diff", "report", "inspect --stats", "verify", "export npz", "export safetensors"):
                rw = Row(group, f"{verb}: peak RssAnon", "MiB", mem[verb], False)
                rw.also("time", statistics.median(times[verb]), "s")
                rw.goal("<= 512 MiB", statistics.median(mem[verb]) <= 512)
                rows.append(rw.d)
            for k in ("numpy (1 thread)", "numpy (2 threads)", "memcpy"):
                rows.append(Row(group, f"anchor {k}: peak RssAnon", "MiB", mem[k], False)
                            .also("time", statistics.median(times[k]), "s").d)
            for p in (a, b):
                p.unlink()
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    for r in rows:
        r["others"].append(dict(label="load average (1 min) at start", value=load[0], unit=""))
    Path(args.json).write_text(json.dumps(rows, indent=1))
    if not args.quiet:
        for r in rows:
            base = r["baseline"]
            print(f"{r['group'][:40]:40} {r['name']:38} {r['ours']:9.3f} {r['unit']:4} "
                  f"[{r['ours_spread'][0]:.3f}, {r['ours_spread'][1]:.3f}]"
                  + (f"  vs {base['label']} {base['value']:.3f}: {r['ratio']:.2f}x" if base else "")
                  + (f"  goal {r['goal']}: {'ok' if r['ok'] else 'MISS'}" if r['goal'] else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())

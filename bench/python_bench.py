"""The Python package's figures, each against what users would use instead,
measured in the same run (`make bench` runs it after the Rust table).

Rows:
  * `trace[name].torch()` of one 256 MiB f32 tensor vs safetensors
    `safe_open(...).get_tensor` and `torch.load(..., mmap=True)` (goal: O(1),
    no slower than safetensors);
  * `trace[name].torch()` per tensor over 20,000 small tensors vs
    safetensors' `get_tensor` (goal: >= 5x faster);
  * `Writer.add` of 256 x 4 MiB torch tensors vs `safetensors.torch.save_file`
    and `torch.save` (goal: >= 0.95x safetensors, >= 2x torch.save).

Writes bench/results-python.json. Usage: python bench/python_bench.py [--scale F] [--repeat N]
"""
import argparse
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

import tracedump

MIB = 1 << 20


def best(fn, repeat):
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def drop(path):
    """Remove a file; the page cache keeps what others read (all runs warm)."""
    try:
        os.remove(path)
    except FileNotFoundError:
        pass


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--scale", type=float, default=1.0)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--json", default=str(Path(__file__).with_name("results-python.json")))
    args = ap.parse_args()
    n_large = max(1, round(256 * args.scale))
    n_small = max(1, round(20_000 * args.scale))
    big_elems = max(1, round(64 * MIB * args.scale))  # 256 MiB of f32 at scale 1
    rows = []
    tmp = Path(tempfile.mkdtemp(prefix="tdbench-", dir=Path(__file__).parent.parent / "target"))
    try:
        # 1. one big tensor to torch
        big = torch.arange(big_elems, dtype=torch.float32)
        tpath, spath, ppath = tmp / "big.tdump", tmp / "big.safetensors", tmp / "big.pt"
        with tracedump.Writer(tpath) as w:
            w.add("big", big)
        save_file({"big": big}, spath)
        torch.save({"big": big}, ppath)
        trace = tracedump.open(tpath)

        def ours_big():
            trace["big"].torch()

        def st_big():
            with safe_open(spath, framework="pt") as f:
                f.get_tensor("big")

        def pt_big():
            torch.load(ppath, mmap=True, weights_only=True)["big"]

        o, s, p = best(ours_big, args.repeat * 3), best(st_big, args.repeat * 3), best(pt_big, args.repeat * 3)
        mb = big_elems * 4 / MIB
        rows.append(dict(name=f"{mb:.0f} MiB f32 tensor -> torch, ms", ours=o * 1e3, safetensors=s * 1e3,
                         torch_load_mmap=p * 1e3, goal="<= safetensors", ok=o <= s))
        del trace, big

        # 2. many small tensors to torch
        small = {f"t{i}": torch.full((64,), float(i)) for i in range(n_small)}
        tpath, spath = tmp / "small.tdump", tmp / "small.safetensors"
        with tracedump.Writer(tpath) as w:
            for k, v in small.items():
                w.add(k, v)
        save_file(small, spath)
        names = list(small)

        def ours_small():
            t = tracedump.open(tpath)
            for k in names:
                t[k].torch()

        def st_small():
            with safe_open(spath, framework="pt") as f:
                for k in names:
                    f.get_tensor(k)

        o, s = best(ours_small, args.repeat), best(st_small, args.repeat)
        rows.append(dict(name=f"{n_small} x 256 B -> torch, us per tensor", ours=o / n_small * 1e6,
                         safetensors=s / n_small * 1e6, goal=">= 5x faster", ok=s / o >= 5))

        # 3. writing 256 x 4 MiB
        large = [torch.randn(MIB) for _ in range(n_large)]
        named = {f"w{i}": t for i, t in enumerate(large)}
        out = tmp / "w.tdump"

        def ours_write():
            drop(out)
            with tracedump.Writer(out) as w:
                for k, v in named.items():
                    w.add(k, v)

        def st_write():
            drop(tmp / "w.safetensors")
            save_file(named, tmp / "w.safetensors")

        def pt_write():
            drop(tmp / "w.pt")
            torch.save(named, tmp / "w.pt")

        o, s, p = best(ours_write, args.repeat), best(st_write, args.repeat), best(pt_write, args.repeat)
        gb = n_large * 4 * MIB / 1e9
        rows.append(dict(name=f"Writer.add {n_large} x 4 MiB, GB/s", ours=gb / o, safetensors=gb / s, torch_save=gb / p,
                         goal=">= 0.95x safetensors, >= 2x torch.save", ok=s / o >= 0.95 and p / o >= 2))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    print(f"\n{'python benchmark':<44} {'ours':>10} {'safetensors':>12} {'torch':>10}  goal")
    for r in rows:
        torch_col = r.get("torch_load_mmap", r.get("torch_save"))
        print(f"{r['name']:<44} {r['ours']:>10.3f} {r['safetensors']:>12.3f} "
              f"{'-' if torch_col is None else f'{torch_col:.3f}':>10}  {r['goal']}: {'PASS' if r['ok'] else 'MISS'}")
    Path(args.json).write_text(json.dumps({"date": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
                                           "cpus": os.cpu_count(), "rows": rows}, indent=2) + "\n")
    print(f"\nresults written to {args.json}")


if __name__ == "__main__":
    main()

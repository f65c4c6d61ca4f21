"""``python -m tests.hfpair ARCH OUTDIR [--kv f16] [--decode 3] ...``

Builds the tiny random ARCH model (see tests/hfpair/__init__.py), writes
OUTDIR/llama.tdump (llama.cpp) and OUTDIR/hf.tdump (HF transformers) of the
same token ids, and prints the maximum relative logits difference between the
two engines per step. Run it from the repo root with the venv's python.

Exit status 1 when a step differs by more than --tol; the default is the
arch's f32 tolerance (2e-5; gemma2 1e-3, see ARCHS) with f32 weights, an f32
KV cache and no flash attention, else 5e-3.
"""

import argparse
import json
import sys
import time

from . import ARCHS, pair


def _setting(text: str):
    key, sep, value = text.partition("=")
    if not sep:
        raise argparse.ArgumentTypeError(f"{text!r}: expected KEY=VALUE")
    try:
        return key, json.loads(value)
    except json.JSONDecodeError:
        return key, value


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tests.hfpair", description=__doc__.split("\n\n")[1])
    ap.add_argument("arch", choices=sorted(ARCHS))
    ap.add_argument("outdir")
    ap.add_argument("--kv", choices=["f32", "f16"], default="f32", help="llama.cpp KV-cache type (default f32)")
    ap.add_argument("--decode", type=int, default=3, help="single-token decode steps after the prompt (default 3)")
    ap.add_argument("--prompt", type=int, default=8, help="prompt length in tokens (default 8)")
    ap.add_argument("--seed", type=int, default=0, help="weights and token ids (default 0)")
    ap.add_argument("--outtype", choices=["f32", "f16"], default="f32", help="GGUF weight type (default f32)")
    ap.add_argument("--flash-attn", action="store_true", help="llama.cpp flash attention")
    ap.add_argument("--set", type=_setting, action="append", default=[], metavar="KEY=VALUE",
                    help="override a config argument (JSON value), e.g. --set num_hidden_layers=3")
    ap.add_argument("--bug", metavar="NAME[:LAYER]", help="plant a bug of tests/hfpair/bugs.py in the HF model "
                    "(silu_zero, rope_base, rope_type, attention_axes_swapped, norm_scaled, gqa_repeat, "
                    "kv_wrong_position, mask_off_by_one); the logits then differ, and the exit status is 0")
    ap.add_argument("--tol", type=float, default=None, help="largest relative difference accepted")
    ap.add_argument("--names", metavar="FILE", nargs="?", const="",
                    help="also write the step 0/1 listing of both traces (tests/hfpair/names.py); "
                         "without FILE: target/hfpair-names/NAMES_<arch>.txt")
    args = ap.parse_args(argv)

    t0 = time.perf_counter()
    bug, _, layer = (args.bug or "").partition(":")
    r = pair(args.arch, args.outdir, kv=args.kv, n_decode=args.decode, n_prompt=args.prompt, seed=args.seed,
             outtype=args.outtype, flash_attn=args.flash_attn, bug=bug or None, bug_layer=int(layer or 0),
             **dict(args.set))
    dt = time.perf_counter() - t0
    exact = args.kv == "f32" and args.outtype == "f32" and not args.flash_attn
    tol = args.tol if args.tol is not None else (ARCHS[args.arch].get("tol", 2e-5) if exact else 5e-3)
    print(f"{args.arch}: tokens {r['tokens']} (prompt {r['n_prompt']}), kv {args.kv}, weights {args.outtype}, "
          f"flash_attn {args.flash_attn}, {dt:.1f} s")
    print(f"  {r['llama']}\n  {r['hf']}")
    for step, rel in enumerate(r["rel"]):
        print(f"  step {step}: max relative logits difference {rel:.3e}")
    if args.names is not None:
        from . import names

        print(f"  names: {names.write(args.arch, args.outdir, args.names or None)}")
    ok = max(r["rel"]) <= tol or bug != ""
    print(f"  {'ok' if ok else 'FAILED'}: tolerance {tol:g}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())

"""Listings of the tensors in a trace pair, for writing name mappings.

    python -m tests.hfpair.names ARCH OUTDIR [FILE]

reads ``OUTDIR/llama.tdump`` and ``OUTDIR/hf.tdump`` (written by ``python -m
tests.hfpair ARCH OUTDIR``) and writes ``FILE`` (default
``target/hfpair-names/NAMES_<ARCH>.txt``): for steps 0 (the prompt) and 1 (the first
decode token), every record of layer 0 and every graph-level record (no
layer: inputs, embeddings, final norm, logits), for both engines:

1. a compact table: ``id name step layer shape dtype op`` (``op`` = the ggml
   op for llama.cpp, the module type for HF). Shapes are as tracedump gives
   them: numpy order, outermost first — ggml tensors always have 4 dims
   (``ne`` reversed: ``[ne3, ne2, ne1, ne0]``), HF ones their torch shape;
2. when ``target/debug/tracedump`` exists, the same records as ``tracedump
   inspect --step N`` prints them (strides, storage, views, lineage), other
   layers' blocks removed.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path
from typing import List, Optional, Sequence

from . import ROOT

STEPS = (0, 1)
LAYERS = (None, 0)


def _op(x) -> str:
    e = x.engine_op
    if isinstance(e, dict):
        return str(e.get("op") or "-")
    md = getattr(x, "metadata", None) or {}
    return str(md.get("module_type") or e or "-")


def table(trace_path: os.PathLike, steps: Sequence[int] = STEPS, layers: Sequence[Optional[int]] = LAYERS) -> List[str]:
    """The compact table of ``trace_path`` (see the module docstring), plus a
    line counting the records of other layers left out."""
    import tracedump

    t = tracedump.open(str(trace_path))
    rows, left = [], 0
    for x in t.values():
        if x.step not in steps:
            continue
        if x.layer not in layers:
            left += 1
            continue
        layer = "-" if x.layer is None else x.layer
        rows.append(f"{x.id:<5} {x.name:<52} step={x.step} layer={layer:<2} "
                    f"{str(list(x.shape)):<18} {x.dtype:<4} {_op(x)}")
    rows.append(f"# ({left} records of other layers at steps {list(steps)} not listed)")
    return rows


def inspect_blocks(trace_path: os.PathLike, step: int, layers: Sequence[Optional[int]] = LAYERS,
                   exe: Optional[Path] = None) -> Optional[List[str]]:
    """``tracedump inspect --step STEP FILE`` with the blocks of other layers
    removed; None when the binary is not built."""
    exe = exe or ROOT / "target" / "debug" / "tracedump"
    if not exe.exists():
        return None
    out = subprocess.run([str(exe), "inspect", "--step", str(step), str(trace_path)],
                         capture_output=True, text=True, check=True).stdout.splitlines()
    keep, lines, in_header = True, [], True
    for line in out:
        if line.startswith("#"):
            in_header = False
            m = re.search(r"\sL(\d+)\s", line + " ")
            layer = int(m.group(1)) if m else None
            keep = layer in layers
        if in_header and re.match(r"run\s+(created_unix_ns|pid)\b", line):
            continue  # differ on every run: left out so listings can be diffed
        if in_header or keep:
            lines.append(line)
    return lines


def write(arch: str, outdir: os.PathLike, path: Optional[os.PathLike] = None) -> Path:
    """Write the listing of ``outdir/{llama,hf}.tdump`` to ``path`` (default
    ``target/hfpair-names/NAMES_<arch>.txt``); returns the path."""
    outdir = Path(outdir)
    path = Path(path) if path else ROOT / "target" / "hfpair-names" / f"NAMES_{arch}.txt"
    path.parent.mkdir(parents=True, exist_ok=True)
    pairs = (("llama.cpp (tracedump.ggml.capture)", outdir / "llama.tdump"),
             ("HF transformers (tracedump.capture, inputs=True)", outdir / "hf.tdump"))
    with open(path, "w") as f:
        f.write(f"# {arch}: tensors of layer 0 and graph-level tensors (no layer), steps {list(STEPS)}\n")
        f.write("# written by `python -m tests.hfpair.names`; see tests/hfpair/names.py for the format\n\n")
        for label, trace in pairs:
            f.write(f"## {label}: {trace.name}\n# id    name{' ' * 48} step   layer    shape              dtype op\n")
            f.write("\n".join(table(trace)) + "\n\n")
        for label, trace in pairs:
            for step in STEPS:
                blocks = inspect_blocks(trace, step)
                if blocks is None:
                    continue
                f.write(f"## {label}: tracedump inspect --step {step} {trace.name} (layer 0 and no-layer blocks)\n")
                f.write("\n".join(blocks) + "\n\n")
    return path


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) not in (2, 3):
        print(__doc__.split("\n\n")[1], file=sys.stderr)
        return 2
    print(write(argv[0], argv[1], argv[2] if len(argv) == 3 else None))
    return 0


if __name__ == "__main__":
    sys.exit(main())

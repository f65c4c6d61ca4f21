"""The reference side of tracedump's bit-exactness tests: gguf-py's numpy
(de)quantization, driven by the Rust tests through files.

    python gguf_reference.py dequant TYPE BLOCKS.bin OUT.f32     # raw blocks -> f32 LE
    python gguf_reference.py quant TYPE VALUES.f32 OUT.bin       # f32 LE -> raw blocks
    python gguf_reference.py serve                               # for make bench, below

`serve` reads lines `TYPE BLOCKS.bin` from stdin and answers each with the
seconds of one `quants.dequantize` of the file's blocks, given as gguf-py's
callers hold them: rows of 4096 values ([rows, bytes of a row]), not one
block per row, which would time numpy's per-call overhead instead.

TYPE is a ggml type name as gguf-py spells it (Q4_0, Q4_K, IQ4_NL, MXFP4...).
Exits non-zero with a message when gguf or numpy cannot be imported, so a
test whose reference is missing fails loudly instead of passing.
"""
import sys
import time

try:
    import numpy as np
    from gguf import GGMLQuantizationType, quants
    from gguf.constants import GGML_QUANT_SIZES
except ImportError as e:  # pragma: no cover - the failure is the point
    sys.exit(f"gguf_reference.py: the gguf Python package is missing ({e}); `make test` installs it into .venv")


def qtype(name):
    try:
        return GGMLQuantizationType[name.upper()]
    except KeyError:
        sys.exit(f"gguf_reference.py: gguf-py has no type {name}")


ROW_VALUES = 4096


def serve():
    loaded = {}
    for line in sys.stdin:
        name, path = line.split()
        t = qtype(name)
        if (name, path) not in loaded:
            block_elems, block_bytes = GGML_QUANT_SIZES[t]
            row_bytes = ROW_VALUES // block_elems * block_bytes
            loaded[(name, path)] = np.fromfile(path, dtype=np.uint8).reshape(-1, row_bytes)
        raw = loaded[(name, path)]
        t0 = time.perf_counter()
        quants.dequantize(raw, t)
        print(f"{time.perf_counter() - t0:.9f}", flush=True)


def main(argv):
    if argv[1:] == ["serve"]:
        return serve()
    verb, name = argv[1], argv[2]
    t = qtype(name)
    block_elems, block_bytes = GGML_QUANT_SIZES[t]
    if verb == "dequant":
        raw = np.fromfile(argv[3], dtype=np.uint8)
        out = quants.dequantize(raw.reshape(-1, block_bytes), t)
        np.ascontiguousarray(out, dtype="<f4").tofile(argv[4])
    elif verb == "quant":
        values = np.fromfile(argv[3], dtype="<f4").reshape(-1, block_elems)
        out = quants.quantize(values, t)
        np.ascontiguousarray(out, dtype=np.uint8).tofile(argv[4])
    else:
        sys.exit(f"gguf_reference.py: unknown verb {verb}")


if __name__ == "__main__":
    main(sys.argv)

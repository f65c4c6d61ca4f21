"""The reference side of tracedump's bit-exactness tests: gguf-py's numpy
(de)quantization, driven by the Rust tests through files.

    python gguf_reference.py dequant TYPE BLOCKS.bin OUT.f32     # raw blocks -> f32 LE
    python gguf_reference.py quant TYPE VALUES.f32 OUT.bin       # f32 LE -> raw blocks
    python gguf_reference.py bench TYPE BLOCKS.bin REPEATS       # prints best seconds

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


def main(argv):
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
    elif verb == "bench":
        raw = np.fromfile(argv[3], dtype=np.uint8).reshape(-1, block_bytes)
        repeats = int(argv[4])
        best = float("inf")
        for _ in range(repeats):
            t0 = time.perf_counter()
            quants.dequantize(raw, t)
            best = min(best, time.perf_counter() - t0)
        print(f"{best:.9f}")
    else:
        sys.exit(f"gguf_reference.py: unknown verb {verb}")


if __name__ == "__main__":
    main(sys.argv)

"""Q8_K dequantization, which gguf-py does not provide, written from ggml's
reference C so the Rust decoder has an independent check:

    typedef struct { float d; int8_t qs[256]; int16_t bsums[16]; } block_q8_K;  // 292 bytes
    dequantize_row_q8_K: y[j] = x[i].d * x[i].qs[j]   (f32 product)

    python q8_k_reference.py dequant BLOCKS.bin OUT.f32
"""
import sys

try:
    import numpy as np
except ImportError as e:  # pragma: no cover - the failure is the point
    sys.exit(f"q8_k_reference.py: numpy is missing ({e}); `make test` installs it into .venv")

BLOCK = np.dtype([("d", "<f4"), ("qs", "i1", (256,)), ("bsums", "<i2", (16,))])
assert BLOCK.itemsize == 292


def main(argv):
    if len(argv) != 4 or argv[1] != "dequant":
        sys.exit("usage: q8_k_reference.py dequant BLOCKS.bin OUT.f32")
    blocks = np.fromfile(argv[2], dtype=BLOCK)
    out = blocks["d"].astype(np.float32)[:, None] * blocks["qs"].astype(np.float32)
    np.ascontiguousarray(out, dtype="<f4").tofile(argv[3])


if __name__ == "__main__":
    main(sys.argv)

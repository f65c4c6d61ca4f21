"""Write a GGUF file with gguf-py's GGUFWriter and describe, as JSON, what
gguf-py's GGUFReader reads back from it: the reference for tracedump's own
GGUF parser (tests/tests/gguf_parse.rs).

    python make_gguf.py OUT.gguf OUT.json

The file has metadata of every GGUF value type (arrays of strings, of
integers, of bools, nested arrays), a custom general.alignment of 64, and
tensors in f32, f16, bf16, f64, i32, q8_0, q4_0, mxfp4, q4_k and iq2_xxs
(the last two as raw blocks via raw_dtype; gguf-py cannot quantize them).

The JSON holds the version, alignment and data offset, then every metadata
key in file order with its type chain (GGUFReader's `types`: [9, item type,
...] for arrays) and its value (arrays flattened, as GGUFReader gives them),
and every tensor's name, ne (ggml order), type id, info offset, relative and
absolute data offset, nbytes and data as hex.

Exits non-zero with a message when gguf or numpy cannot be imported.
"""
import json
import sys

try:
    import numpy as np
    from gguf import GGMLQuantizationType as T
    from gguf import GGUFReader, GGUFValueType as V, GGUFWriter, quants
    from gguf.constants import GGML_QUANT_SIZES
except ImportError as e:  # pragma: no cover - the failure is the point
    sys.exit(f"make_gguf.py: the gguf Python package is missing ({e}); `make test` installs it into .venv")


def write(path):
    rng = np.random.default_rng(1234)
    w = GGUFWriter(path, arch="tracedump-test")
    w.add_custom_alignment(64)
    w.add_name("make_gguf.py")
    w.add_uint8("test.u8", 200)
    w.add_int8("test.i8", -100)
    w.add_uint16("test.u16", 65535)
    w.add_int16("test.i16", -32768)
    w.add_uint32("test.u32", 4_000_000_000)
    w.add_int32("test.i32", -2_000_000_000)
    w.add_float32("test.f32", 0.1)
    w.add_uint64("test.u64", 2**64 - 1)
    w.add_int64("test.i64", -(2**63))
    w.add_float64("test.f64", -1.0e300)
    w.add_bool("test.bool_true", True)
    w.add_bool("test.bool_false", False)
    w.add_string("test.string", "héllo, 世界 🚀")
    w.add_array("test.array.strings", ["a", "", "ünï", "<0x0A>", "▁the"])
    w.add_array("test.array.ints", [1, -2, 3, 2**31 - 1])  # int32
    w.add_array("test.array.floats", [0.5, -1.25, 0.1])  # float32
    w.add_array("test.array.bools", [True, False, True])
    w.add_key_value("test.array.u8", [0, 255, 7], V.ARRAY, sub_type=V.UINT8)
    w.add_key_value("test.array.u64", [0, 2**64 - 1], V.ARRAY, sub_type=V.UINT64)
    w.add_key_value("test.array.i64", [-(2**63), 5], V.ARRAY, sub_type=V.INT64)
    w.add_key_value("test.array.f64", [1.0e-300, -2.5], V.ARRAY, sub_type=V.FLOAT64)
    w.add_array("test.array.nested", [[1, 2], [3], [4, 5, 6]])  # arrays of int32

    def floats(*shape):
        return rng.standard_normal(shape).astype(np.float32)

    w.add_tensor("f32.matrix", floats(3, 5))  # 60 bytes: padded to 64
    w.add_tensor("f32.vector", floats(7))  # 28 bytes
    w.add_tensor("f32.4d", floats(2, 1, 3, 2))
    w.add_tensor("f16.3d", floats(2, 3, 4).astype(np.float16))
    w.add_tensor("f64.matrix", rng.standard_normal((2, 2)))
    w.add_tensor("i32.ids", np.arange(5, dtype=np.int32))
    for name, qtype, rows, cols in [
        ("q8_0.w", T.Q8_0, 4, 64),
        ("q4_0.w", T.Q4_0, 2, 96),
        ("bf16.w", T.BF16, 2, 8),
        ("mxfp4.w", T.MXFP4, 1, 64),
    ]:
        w.add_tensor(name, quants.quantize(floats(rows, cols), qtype), raw_dtype=qtype)
    # Raw blocks of types gguf-py cannot quantize: the bytes are arbitrary,
    # only their size matters here.
    for name, qtype, rows, blocks in [("q4_k.w", T.Q4_K, 3, 2), ("iq2_xxs.w", T.IQ2_XXS, 1, 1)]:
        block_bytes = GGML_QUANT_SIZES[qtype][1]
        raw = rng.integers(0, 256, size=(rows, blocks * block_bytes), dtype=np.uint8)
        w.add_tensor(name, raw, raw_dtype=qtype)

    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def plain(x):
    """numpy scalars and lists of them as JSON-able Python values."""
    if isinstance(x, list):
        return [plain(v) for v in x]
    if isinstance(x, np.generic):
        return x.item()
    return x


def describe(path):
    r = GGUFReader(path)
    metadata = []
    for key, field in r.fields.items():
        if key.startswith("GGUF."):  # the header, which GGUFReader lists as fields
            continue
        metadata.append({
            "key": key,
            "offset": int(field.offset),
            "types": [int(t) for t in field.types],
            "value": plain(field.contents()),
        })
    tensors = []
    for t in r.tensors:
        tensors.append({
            "name": t.name,
            "ne": [int(n) for n in t.shape],
            "type": int(t.tensor_type),
            "type_name": t.tensor_type.name,
            "info_offset": int(t.field.offset),
            "offset": int(t.field.parts[5][0]),
            "data_offset": int(t.data_offset),
            "nbytes": int(t.n_bytes),
            "n_elements": int(t.n_elements),
            "data_hex": t.data.tobytes().hex(),
        })
    return {
        "version": int(r.fields["GGUF.version"].parts[0][0]),
        "alignment": int(r.alignment),
        "data_offset": int(r.data_offset),
        "metadata": metadata,
        "tensors": tensors,
    }


def main(argv):
    if len(argv) != 3:
        sys.exit("usage: make_gguf.py OUT.gguf OUT.json")
    write(argv[1])
    with open(argv[2], "w", encoding="utf-8") as f:
        json.dump(describe(argv[1]), f, indent=1, allow_nan=False, ensure_ascii=False)


if __name__ == "__main__":
    main(sys.argv)

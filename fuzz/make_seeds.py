"""Write the seed inputs of the fuzz targets, one folder per target:

    python fuzz/make_seeds.py OUT_DIR TRACEDUMP

OUT_DIR/trace_bytes: the golden traces, traces the CLI writes (the start
of its demo, GGUF and safetensors imports) and torn copies of them; OUT_DIR/gguf_bytes: GGUF
files of gguf-py (tests/python/make_gguf.py, make_trace_gguf.py, and small
ones written here); OUT_DIR/safetensors_import: safetensors files of the
safetensors package, hand-framed ones (every dtype, scalars, empty tensors,
`__metadata__` with `tracedump.tensors`) and the CLI's exports;
OUT_DIR/capi: programs for the C ABI body, spelled in the byte language of
`Input` in tests/src/fuzzing.rs.

The committed corpus (fuzz/corpus/) is these seeds and what the fuzzers
found, minimized with `cargo fuzz cmin`. Run with the workspace's .venv
(gguf, numpy, safetensors).
"""
import json
import os
import struct
import subprocess
import sys

import numpy as np
from gguf import GGMLQuantizationType as Q
from gguf import GGUFWriter, quants
from safetensors.numpy import save_file

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run(*args):
    subprocess.run([str(a) for a in args], check=True, stdout=subprocess.DEVNULL)


def write(path, data):
    with open(path, "wb") as f:
        f.write(data)


def gguf_seeds(out, tmp):
    run(sys.executable, f"{ROOT}/tests/python/make_gguf.py", f"{out}/make_gguf.gguf", f"{tmp}/make_gguf.json")
    run(sys.executable, f"{ROOT}/tests/python/make_trace_gguf.py", f"{out}/trace.gguf", f"{tmp}/trace_ref")
    rng = np.random.default_rng(7)
    w = GGUFWriter(f"{out}/tiny.gguf", arch="fuzz")
    w.add_uint32("fuzz.n", 3)
    w.add_array("fuzz.list", ["a", "bc"])
    w.add_tensor("blk.0.attn_q.weight", rng.standard_normal(4).astype(np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    w = GGUFWriter(f"{out}/quant.gguf", arch="fuzz")
    w.add_custom_alignment(64)
    for name, qt in [("q8", Q.Q8_0), ("q4", Q.Q4_0), ("q5_1", Q.Q5_1)]:
        v = rng.standard_normal((2, 32)).astype(np.float32)
        w.add_tensor(name, quants.quantize(v, qt), raw_dtype=qt)
    w.add_tensor("f16", rng.standard_normal((3, 2)).astype(np.float16))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    # the smallest: a header, one key, no tensors
    write(f"{out}/empty.gguf", b"GGUF" + struct.pack("<IQQ", 3, 0, 1)
          + struct.pack("<Q", 4) + b"name" + struct.pack("<IQ", 8, 1) + b"x")


def framed_safetensors(header, data):
    h = json.dumps(header, separators=(",", ":")).encode()
    h += b" " * (-len(h) % 8)
    return struct.pack("<Q", len(h)) + h + data


def safetensors_seeds(out, tracedump, traces):
    rng = np.random.default_rng(11)
    save_file({"a": rng.standard_normal((2, 3)).astype(np.float32),
               "b": np.arange(4, dtype=np.int64),
               "c": np.array([True, False]),
               "d": rng.standard_normal(5).astype(np.float16)},
              f"{out}/numpy.safetensors", metadata={"engine": "numpy"})
    save_file({"x": np.zeros((0, 4), dtype=np.float64)}, f"{out}/empty.safetensors")
    # every dtype a trace holds, plus one it does not (C64), scalars and
    # the tracedump.tensors key an export writes
    tensors, data = {}, b""
    for i, (dt, size) in enumerate([("F64", 8), ("F32", 4), ("F16", 2), ("BF16", 2), ("I64", 8),
                                    ("I32", 4), ("I16", 2), ("I8", 1), ("U64", 8), ("U32", 4),
                                    ("U16", 2), ("U8", 1), ("BOOL", 1), ("F8_E4M3", 1),
                                    ("F8_E5M2", 1)]):
        shape = [2, 2] if i % 3 else []
        n = 4 if shape else 1
        raw = bytes((j * 37 + i) % 256 for j in range(n * size))
        if dt == "BOOL":
            raw = bytes(b & 1 for b in raw)
        tensors[f"t{i}_{dt.lower()}"] = {"dtype": dt, "shape": shape,
                                         "data_offsets": [len(data), len(data) + len(raw)]}
        data += raw
    described = {name: {"record": 40 - i, "layer": i % 3, "step": 1, "role": "k"}
                 for i, name in enumerate(tensors)}
    header = dict(tensors)
    header["__metadata__"] = {"tracedump.tensors": json.dumps(described), "engine": "hand"}
    write(f"{out}/every_dtype.safetensors", framed_safetensors(header, data))
    write(f"{out}/c64.safetensors", framed_safetensors(
        {"z": {"dtype": "C64", "shape": [1], "data_offsets": [0, 8]}}, bytes(8)))
    for t in traces:
        name = os.path.splitext(os.path.basename(t))[0]
        run(tracedump, "export", "--to", "safetensors", t, f"{out}/{name}.safetensors")


def trace_seeds(out, tracedump, tmp, gguf_dir, st_dir):
    golden = [f"{ROOT}/tests/golden/spec_example.tdump"] + [
        f"{ROOT}/tests/golden/py/{n}.tdump" for n in ("tensors", "attention", "mixed_kv")]
    for g in golden:
        with open(g, "rb") as f:
            write(f"{out}/{os.path.basename(g)}", f.read())
    # the demo's first records (its files are large: small inputs fuzz faster),
    # torn and recovered into a finished trace
    run(tracedump, "demo", f"{tmp}/demo.tdump")
    with open(f"{tmp}/demo.tdump", "rb") as f:
        write(f"{tmp}/demo_head.tdump", f.read()[:24 << 10])
    run(tracedump, "recover", f"{tmp}/demo_head.tdump", f"{out}/demo_head.tdump")
    run(tracedump, "import", f"{gguf_dir}/quant.gguf", f"{out}/from_gguf.tdump")
    run(tracedump, "import", f"{st_dir}/every_dtype.safetensors", f"{out}/from_safetensors.tdump")
    # unfinished: cut inside a record, and just before the footer
    for n in ("spec_example.tdump", "tensors.tdump"):
        with open(f"{out}/{n}", "rb") as f:
            b = f.read()
        write(f"{out}/torn_{n}", b[: len(b) * 2 // 3])
        write(f"{out}/nofooter_{n}", b[:-64])
    return golden


class Program:
    """A C ABI program in the byte language of `Input` (tests/src/fuzzing.rs)."""

    DTYPES = ["f32", "f16", "q4_0", "q4_1", "q5_0", "q5_1", "q8_0", "q8_1", "q2_k", "q3_k",
              "q4_k", "q5_k", "q6_k", "q8_k", "iq4_nl", "iq4_xs", "i8", "i16", "i32", "i64",
              "f64", "bf16", "mxfp4", "bool", "u8", "u16", "u32", "u64", "f8_e4m3", "f8_e5m2"]
    OPS = ["NONE", "VIEW", "PERMUTE", "TRANSPOSE", "RESHAPE", "CONT", "DUP", "CPY", "SET_ROWS",
           "MUL_MAT", "ROPE", "FLASH_ATTN_EXT"]

    def __init__(self, ggml=False, meta=(("engine", "fuzz"),), background=None, regex=None):
        flags = (1 if ggml else 0) | (0xf0 if regex is not None else 0)
        if background is not None:  # (queue bytes, drop when full)
            flags |= 6 | (8 if background[1] else 0)
        self.b = bytearray([flags]) + struct.pack("<H", background[0] if background else 0)
        if regex is not None:
            self.text(regex)
        self.b.append(len(meta))
        for k, _ in meta:
            self.text(k)
        for _, v in meta:
            self.text(v)

    def u8(self, v):
        self.b.append(v)

    def text(self, s):
        s = s.encode()
        self.b.append(len(s))
        self.b += s

    def name(self, s):
        self.b.append(len(s.encode()))  # t: max = t % 16
        self.text(s)

    def num(self, v):
        if 0 <= v <= 127:
            self.b.append(v)
        elif v > 0 and v % 32 == 0 and v // 32 < 64:
            self.b.append(128 + v // 32)
        elif -32 <= v < 0:
            self.b.append(191 - v)
        else:
            self.b.append(0xff)
            self.b += struct.pack("<q", v)

    def dtype(self, name):
        self.b.append(self.DTYPES.index(name))

    def data(self, raw):
        if len(raw) < 0xf0:
            self.b.append(len(raw))
        else:
            self.b += b"\xf0" + struct.pack("<H", len(raw))
        self.b += raw

    def tensor_args(self, name, dtype, shape, strides, order, offset, meta):
        self.name(name)
        self.dtype(dtype)
        self.u8(len(shape))
        for n in shape:
            self.num(n)
        if strides is None:
            self.u8(1)
        else:
            self.u8(0)
            for s in strides:
                self.num(s)
        self.u8(order)
        self.num(offset)
        self.u8(0 if meta else 1)

    def storage(self, name, raw):
        self.u8(0)
        self.name(name)
        self.data(raw)

    def tensor(self, name, dtype, shape, raw, strides=None, order=0, offset=0, meta=False):
        self.u8(1)
        self.tensor_args(name, dtype, shape, strides, order, offset, meta)
        self.data(raw)

    def view(self, name, dtype, shape, strides, storage_index, offset=0, order=0, meta=False):
        self.u8(2)
        self.tensor_args(name, dtype, shape, strides, order, offset, meta)
        self.u8(storage_index)

    def stats(self, name, dtype, shape, raw, order=0):
        self.u8(3)
        self.tensor_args(name, dtype, shape, None, order, 0, False)
        self.data(raw)

    def meta(self, op, ndim=0, order=0):
        self.u8(4)
        self.u8(op)
        self.u8(ndim)
        self.u8(order)

    def flush(self):
        self.u8(7)

    def node(self, name, op, dtype, ne, nb, raw, key, srcs=(), view=None, params=b"", once=0):
        self.u8(2)
        self.name(name)
        self.u8(self.OPS.index(op))
        self.u8(0)
        self.u8({"f32": 0, "f16": 1, "q8_0": 8}[dtype])  # ggml type ids
        for v in ne:
            self.num(v)
        for v in nb:
            self.num(v)
        self.u8(len(params))
        self.b += params
        self.u8(key)
        self.u8(len(srcs))
        for k, _ in srcs:
            self.u8(k)
        for _, n in srcs:
            self.name(n)
        if view is None:
            self.u8(1)
            self.name("")
            self.num(0)
        else:
            self.u8(0)
            self.u8(view[0])
            self.name(view[1])
            self.num(view[2])
        self.u8(once)
        self.data(raw)

    def bytes(self):
        return bytes(self.b)


def capi_seeds(out):
    f32 = b"".join(struct.pack("<f", i * 0.5) for i in range(16))
    p = Program()
    p.storage("cache", f32)
    p.tensor("t", "f32", [2, 2], f32[:16])
    p.view("v", "f32", [2, 4], [32, 4], 0)
    p.meta(3)  # parent: "v" (ids: run metadata 0, cache 1, t 2, v 3)
    p.u8(2)
    p.meta(5, ndim=2)  # permute [1, 0]
    p.u8(1)
    p.u8(0)
    p.view("vt", "f32", [4, 2], [4, 32], 0, meta=True)
    p.stats("s", "f32", [4], f32[:16])
    p.tensor("q", "q8_0", [32], bytes(34))
    p.tensor("g", "f16", [2, 4], bytes(16), order=1)
    p.tensor("strided", "f32", [2, 2], f32, strides=[-8, 4], offset=8)
    p.flush()
    write(f"{out}/writer.bin", p.bytes())

    p = Program(meta=())
    for tag, arg in [(0, 5), (1, 2)]:  # layer, step
        p.meta(tag)
        p.u8(1)
        p.num(arg)
    p.meta(2)
    p.name("k")
    p.meta(8)  # op tag 6 = Convert to f16
    p.u8(6)
    p.u8(1)
    p.meta(9)  # engine op
    p.name("ggml")
    p.u8(2)
    p.u8(4)
    p.b += struct.pack("<i", 1)
    p.meta(11)
    p.name("key")
    p.name("value")
    p.tensor("m", "f16", [4], bytes(8), meta=True)
    p.meta(10, ndim=2)  # ggml layout
    for v in (4, 2, 2, 8):
        p.num(v)
    p.tensor("n", "bf16", [2, 2], bytes(8), meta=True)
    write(f"{out}/meta.bin", p.bytes())

    # background writer with a small queue that drops, and a name filter
    p = Program(background=(100, True), regex="^k")
    for i in range(6):
        p.tensor(f"k{i}", "f32", [4], f32[:16])
        p.tensor(f"q{i}", "f32", [4], f32[:16])
    p.storage("s", f32)
    p.view("k_view", "f32", [2, 2], [8, 4], 0)
    write(f"{out}/background.bin", p.bytes())

    g = Program(ggml=True)
    owner = f32[:32]
    g.node("cache_k_l0", "NONE", "f32", [4, 2, 1, 1], [4, 16, 32, 32], owner, 1)
    g.node("k_view-0", "VIEW", "f32", [4, 1, 1, 1], [4, 16, 16, 16], owner, 2,
           srcs=[(1, "cache_k_l0")], view=(1, "cache_k_l0", 16))
    g.node("k-0", "PERMUTE", "f32", [2, 4, 1, 1], [16, 4, 32, 32], owner, 3,
           srcs=[(1, "cache_k_l0")], view=(1, "cache_k_l0", 0),
           params=struct.pack("<4i", 1, 0, 2, 3))
    g.node("kc-0", "CONT", "f32", [2, 4, 1, 1], [4, 8, 32, 32], owner, 4, srcs=[(3, "k-0")])
    g.u8(0)  # next step: 1
    g.u8(1)
    g.num(1)
    g.node("cache_k_l0", "NONE", "f32", [4, 2, 1, 1], [4, 16, 32, 32], owner, 1, once=1)
    write(f"{out}/ggml.bin", g.bytes())


def main(argv):
    if len(argv) != 3:
        sys.exit(__doc__)
    out, tracedump = argv[1], argv[2]
    tmp = f"{out}/.tmp"
    dirs = {t: f"{out}/{t}" for t in ("trace_bytes", "gguf_bytes", "safetensors_import", "capi")}
    for d in list(dirs.values()) + [tmp]:
        os.makedirs(d, exist_ok=True)
    gguf_seeds(dirs["gguf_bytes"], tmp)
    safetensors_seeds(dirs["safetensors_import"], tracedump, [])
    golden = trace_seeds(dirs["trace_bytes"], tracedump, tmp, dirs["gguf_bytes"],
                         dirs["safetensors_import"])
    safetensors_seeds(dirs["safetensors_import"], tracedump, golden[1:])
    capi_seeds(dirs["capi"])
    subprocess.run(["rm", "-rf", tmp], check=True)


if __name__ == "__main__":
    main(sys.argv)

"""Quantized tensors (a GGUF written by gguf-py): f32 values equal gguf-py's
dequantization; raw() gives the stored blocks without a copy."""

import json
import subprocess

import numpy as np
import pytest

import tracedump


def test_gguf_values_match_gguf_py(gguf_trace):
    path, ref = gguf_trace
    index = json.loads((ref / "index.json").read_text())
    t = tracedump.open(path)
    assert t.is_gguf and len(t) == len(index)
    assert t.metadata["trace.engine"] == "my-engine"
    seen = set()
    for i, e in enumerate(index):
        x = t[e["name"]]
        want = np.fromfile(ref / f"{i}.f32", dtype="<f4").reshape(e["shape"])
        assert x.shape == tuple(e["shape"])
        assert x.ggml["ne"] == list(reversed(e["shape"]))
        seen.add(x.dtype)
        got = x.numpy()
        if x.is_quantized:
            assert got.dtype == np.float32 and got.flags.writeable  # a copy
            assert np.array_equal(x.materialize(), want)
            assert np.array_equal(x.to_f32(), want)
        assert np.array_equal(got.astype(np.float32), want), e["name"]
        assert (x.layer, x.step) == (int(e["name"][-1]), int(e["name"].split("step")[1][0]))
    assert {"q8_0", "q4_0", "f16", "f32"} <= seen


def test_raw_blocks_are_the_file_bytes(gguf_trace):
    path, _ = gguf_trace
    t = tracedump.open(path)
    q = t.filter(regex="^K_quant")[0]
    assert q.dtype == "q8_0"
    raw = q.raw()
    assert raw.dtype == np.uint8 and not raw.flags.writeable
    assert raw.nbytes == q.numel // 32 * 34
    off = q.metadata["gguf_offset"]
    data = path.read_bytes()
    # gguf_offset is relative to the data section; find the blocks in the file
    start = data.find(raw.tobytes())
    assert start >= 0 and (start - off) % 32 == 0
    # f32 values: q8_0 = f16 scale * int8
    d = raw.reshape(-1, 34)
    scale = d[:, :2].copy().view(np.float16).astype(np.float32)
    qs = d[:, 2:].copy().view(np.int8).astype(np.float32)
    assert np.array_equal((scale * qs).reshape(q.shape), q.numpy())


def test_quantized_torch_is_f32(gguf_trace):
    torch = pytest.importorskip("torch")
    t = tracedump.open(gguf_trace[0])
    q = t.filter(regex="^V_quant")[0]
    y = q.torch()
    assert y.dtype == torch.float32 and torch.equal(y, torch.from_numpy(q.numpy()))
    k = t.filter(regex="^K\\.")[0]
    assert k.torch().dtype == torch.float16  # scalar types stay zero-copy


def test_quantized_in_a_tdump_written_by_the_rust_cli(gguf_trace, cli, tmp_path):
    # `tracedump import` records the GGUF's blocks in a .tdump (Rust writer)
    path, ref = gguf_trace
    out = tmp_path / "imported.tdump"
    subprocess.run([str(cli), "import", str(path), str(out)], check=True, capture_output=True)
    index = json.loads((ref / "index.json").read_text())
    t = tracedump.open(out)
    assert not t.is_gguf and t.verify().ok
    for i, e in enumerate(index):
        x = t[e["name"]]
        want = np.fromfile(ref / f"{i}.f32", dtype="<f4").reshape(e["shape"])
        assert np.array_equal(x.numpy().astype(np.float32), want), e["name"]
        if x.is_quantized:
            assert np.array_equal(x.raw(), tracedump.open(path)[e["name"]].raw())


def test_python_written_q8_0_and_derived_mixed_kv_cache(tmp_path):
    gguf = pytest.importorskip("gguf")
    from gguf import GGMLQuantizationType, quants

    rng = np.random.default_rng(3)
    cold = rng.standard_normal((1, 6, 2, 32)).astype(np.float32)  # [b, pos, head, dim]
    hot = rng.standard_normal((1, 2, 2, 32)).astype(np.float16)
    p = tmp_path / "kv.tdump"
    with tracedump.Writer(p) as w:
        iq = w.add_quantized("K_quant", cold, "q8_0", role="k_quant")
        ih = w.add("K_hot", hot, role="k_hot")
        w.add_derived(
            "K", [1, 2, 8, 32], ["K_quant", ih],
            [{"op": "concat", "axis": 1}, {"op": "permute", "axes": [0, 2, 1, 3]}],
            layer=0,
        )
    t = tracedump.open(p)
    assert t.verify().ok
    q = t["K_quant"]
    assert q.dtype == "q8_0" and q.is_quantized and q.id == iq
    # the blocks are gguf-py's, and so are the values
    blocks = quants.quantize(cold.reshape(-1, 32), GGMLQuantizationType.Q8_0)
    assert np.array_equal(q.raw(), blocks.reshape(-1))
    deq = quants.dequantize(blocks, GGMLQuantizationType.Q8_0).reshape(cold.shape)
    assert np.array_equal(q.numpy(), deq)
    k = t["K"]
    assert k.is_derived and k.storage is None and [x["name"] for x in k.parents] == ["K_quant", "K_hot"]
    want = np.concatenate([deq, hot.astype(np.float32)], axis=1).transpose(0, 2, 1, 3)
    got = k.numpy()
    assert got.dtype == np.float32 and np.array_equal(got, want)
    with pytest.raises(tracedump.TraceUnsupportedError, match="derived"):
        k.raw()
    torch = pytest.importorskip("torch")
    assert torch.equal(k.torch(), torch.from_numpy(want))

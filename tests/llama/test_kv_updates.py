"""tracedump.ggml.capture on a real llama.cpp (llama-cpp-python) records the
KV cache once and then, each decode step, only the bytes the step wrote
(STORAGE_UPDATE records, format 1.2, trace-format/SPEC.md §5.7): the bytes a
decode step costs stay flat as the context grows, and the cache views read
at every step exactly what a capture that records the whole cache again
(TRACEDUMP_GGML_FULL_STORAGES, format 1.1's way) reads."""

import os
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import tracedump

ROOT = Path(__file__).resolve().parents[2]
PROMPT = [1, 5, 9, 20, 33, 47, 60, 71]
DECODE_STEPS = 10


def step_bytes(path):
    """Bytes of the file each step's records take: every record (storages
    and updates included) counts for the step of the next tensor, its
    padding included."""
    data = Path(path).read_bytes()
    t = tracedump.open(path)
    step_of = {x.id: x.step for x in t.values()}
    out, pending, at, rid = {}, 0, 64, 0
    while at + 32 <= len(data) and data[at:at + 4] == b"TREC":
        kind, _, _, body = struct.unpack_from("<HHQQ", data, at + 4)
        if kind == 4:  # the footer
            break
        end = at + 32 + body
        nxt = (end + 63) // 64 * 64
        pending += nxt - at
        if kind == 3:
            s = step_of[rid]
            out[s] = out.get(s, 0) + pending
            pending = 0
        at, rid = nxt, rid + 1
    return out


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    path = tmp_path_factory.mktemp("kv_updates") / "tiny.gguf"
    subprocess.run([sys.executable, str(ROOT / "tests/llama/make_model.py"), str(path)], check=True, capture_output=True)
    return path


def run(model, path, n_ctx, full):
    import llama_cpp

    llm = llama_cpp.Llama(str(model), n_ctx=n_ctx, type_k=0, type_v=0, verbose=False, n_threads=2)
    old = os.environ.pop("TRACEDUMP_GGML_FULL_STORAGES", None)
    if full:
        os.environ["TRACEDUMP_GGML_FULL_STORAGES"] = "1"
    try:
        with tracedump.ggml.capture(llm, path) as cap:
            cap.decode([PROMPT], logits="last")
            for i in range(DECODE_STEPS):
                cap.decode([[80 + i]], logits="last")
    finally:
        os.environ.pop("TRACEDUMP_GGML_FULL_STORAGES", None)
        if old is not None:
            os.environ["TRACEDUMP_GGML_FULL_STORAGES"] = old
    return step_bytes(path)


@pytest.fixture(scope="module")
def runs(model, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("kv_runs")
    out = {}
    for n_ctx in (512, 2048):
        for full in (False, True):
            path = tmp / f"ctx{n_ctx}{'_full' if full else ''}.tdump"
            out[n_ctx, full] = (path, run(model, path, n_ctx, full))
    return out


def test_decode_steps_cost_the_tokens_not_the_context(runs):
    decode = range(1, DECODE_STEPS + 1)
    per_step = {k: [b[s] for s in decode] for k, (_, b) in runs.items()}
    for k, v in per_step.items():
        print(k, "bytes per decode step:", v)
    small, big = per_step[512, False], per_step[2048, False]
    # flat along the run, and the same at 4x the context
    assert max(big) <= 1.1 * min(big), big
    assert max(small) <= 1.1 * min(small), small
    assert np.median(big) <= 1.05 * np.median(small), (small, big)
    # recording the whole cache again costs the context: the caches of 2
    # layers (K and V, f32, 2 KV heads of 32) are 4 x 256 bytes a cell;
    # an update holds the step's K row and V column (1 KiB a layer and its
    # ranges), so at most a few KiB of the difference are not the cache
    full_small, full_big = per_step[512, True], per_step[2048, True]
    cache = 4 * 256
    assert 0 < cache * 512 - (np.median(full_small) - np.median(small)) < 8192, (full_small, small)
    assert (np.median(full_big) - np.median(big)) - (np.median(full_small) - np.median(small)) == cache * (2048 - 512)


def test_cache_views_read_what_a_full_record_reads(runs):
    for n_ctx in (512, 2048):
        upd = tracedump.open(runs[n_ctx, False][0])
        full = tracedump.open(runs[n_ctx, True][0])
        assert upd.version == (1, 2)
        rep = upd.verify()
        assert rep.ok, rep.faults
        views = [x for x in upd.values() if x.name.startswith(("cache_k_l", "cache_v_l"))]
        others = [x for x in full.values() if x.name.startswith(("cache_k_l", "cache_v_l"))]
        assert len(views) == len(others) >= 4 * (DECODE_STEPS + 1)
        assert {x.step for x in views} == set(range(DECODE_STEPS + 1))
        for a, b in zip(views, others):
            assert (a.name, a.step, a.shape, a.byte_strides) == (b.name, b.step, b.shape, b.byte_strides)
            x, y = a.numpy(), b.numpy()
            assert x.tobytes() == y.tobytes(), (a.name, a.step)
            np.testing.assert_array_equal(a.torch().numpy(), y)
            np.testing.assert_array_equal(np.from_dlpack(a), y)
            assert a.raw().tobytes() == b.raw().tobytes(), (a.name, a.step)
            np.testing.assert_array_equal(a.materialize(), b.materialize())
        # the last step's K of layer 1 holds every token's row: not zeros
        last = [x for x in views if x.name.startswith("cache_k_l1") and x.step == DECODE_STEPS][-1]
        assert np.count_nonzero(last.numpy()) > 0

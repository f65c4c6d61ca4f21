"""tracedump.ggml.capture on a real llama.cpp (llama-cpp-python): several
sequences in one batch through Capture.decode, the record count, and the
graph-level tensors (embd, norm, result_output) recorded without a layer."""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import tracedump

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def llm(tmp_path_factory):
    import llama_cpp

    model = tmp_path_factory.mktemp("ggml_capture") / "tiny.gguf"
    subprocess.run([sys.executable, str(ROOT / "tests/llama/make_model.py"), str(model)], check=True, capture_output=True)
    return llama_cpp.Llama(str(model), n_ctx=256, logits_all=True, type_k=0, type_v=0, verbose=False, n_threads=2)


def test_two_sequences_in_one_batch_match_one_at_a_time(llm, tmp_path):
    with tracedump.ggml.capture(llm, tmp_path / "two.tdump", n_seq=2) as cap:
        prompt = cap.decode({0: [1, 2, 3], 1: [4, 5]})
        step = cap.decode([[6], [7]])
        assert cap.step == 2
    assert {k: v.shape[0] for k, v in prompt.items()} == {0: 3, 1: 2}
    t = tracedump.open(tmp_path / "two.tdump")
    assert cap.records == len(t)
    assert {x.step for x in t.values()} == {0, 1}
    # the prompt step holds both sequences' 5 tokens (llama.cpp may split
    # one batch of several sequences into ubatches: a graph each)
    assert sum(x.shape[-2] for x in t.filter("^embd$", step=0)) == 5

    with tracedump.ggml.capture(llm, tmp_path / "one.tdump") as one:
        alone = one.decode({0: [4, 5]})[0]
        alone_next = one.decode([[7]])[0]
    # sequence 1 in the shared batch saw only its own tokens
    np.testing.assert_allclose(prompt[1], alone, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(step[1], alone_next, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="n_seq=1"):
        with tracedump.ggml.capture(llm, tmp_path / "bad.tdump") as c:
            c.decode({1: [1]})


def test_graph_level_tensors_have_no_layer(llm, tmp_path):
    with tracedump.ggml.capture(llm, tmp_path / "run.tdump") as cap:
        last = cap.decode([[1, 2, 3, 4]], logits="last")[0]
    assert last.shape == (1, llm.n_vocab())
    t = tracedump.open(tmp_path / "run.tdump")
    layers = {x.name: x.layer for x in t.values() if x.name in ("embd", "norm", "result_norm", "result_output", "l_out-1", "kqv_out-0")}
    assert layers == {"embd": None, "norm": None, "result_norm": None, "result_output": None, "l_out-1": 1, "kqv_out-0": 0}
    # the last layer keeps only the output rows: llama.cpp's made-up
    # GET_ROWS nodes there, the one of the layer before's output included,
    # belong to the last layer (a layer filter keeps them with it)
    rows = [x for x in t.values() if x.engine_op["op"] == "GET_ROWS" and x.name.startswith("node_")]
    assert {p["name"] for x in rows for p in x.parents} >= {"l_out-0", "out_ids"}, rows
    assert {x.layer for x in rows} == {1}
    logits = t["result_output"].numpy()
    np.testing.assert_allclose(logits.reshape(-1, llm.n_vocab())[-1], last[0], rtol=1e-6)


# --------------------------------------------------------------------------
# capture()'s options: stats_only, layers, steps, background


def _run(llm, path, **kw):
    """A 6-token prompt and two decode steps under capture(**kw)."""
    with tracedump.ggml.capture(llm, path, **kw) as cap:
        llm.eval([1, 5, 9, 13, 17, 21])
        llm.eval([25])
        llm.eval([29])
    t = tracedump.open(path)
    assert cap.records == len(t)
    assert t.verify().ok, t.verify().faults
    return t


def _keyed(t):
    """{(name, step, occurrence): tensor}: records repeat names within a step."""
    seen, out = {}, {}
    for x in t.values():
        k = (x.name, x.step)
        out[k + (seen.get(k, 0),)] = x
        seen[k] = seen.get(k, 0) + 1
    return out


@pytest.fixture(scope="module")
def full(llm, tmp_path_factory):
    return _run(llm, tmp_path_factory.mktemp("full") / "full.tdump")


# the graph inputs llama.cpp's layers read (and the f16 mask copy flash
# attention reads, where it makes one)
INPUTS = {"attn_inp_kq_mask", "attn_inp_kq_mask (copy)", "inp_pos", "attn_inp_k_idxs", "attn_inp_v_idxs", "out_ids"}


def test_stats_only_records_the_stats_of_a_full_capture(llm, full, tmp_path):
    s = _run(llm, tmp_path / "stats.tdump", stats_only=True)
    ks, kf = _keyed(s), _keyed(full)
    assert set(ks) == set(kf) and len(ks) > 100
    for key, x in ks.items():
        assert x.is_stats_only, key
        f = kf[key]
        assert (x.dtype, x.shape, x.layer, x.engine_op["op"]) == (f.dtype, f.shape, f.layer, f.engine_op["op"]), key
        v = np.asarray(f.numpy(), dtype=np.float64).ravel()
        fin = v[np.isfinite(v)]
        st = x.stats
        assert st["count"] == v.size and st["nan_count"] == np.isnan(v).sum(), key
        assert st["inf_count"] == np.isinf(v).sum(), key
        if fin.size:
            assert (st["min"], st["max"], st["abs_max"]) == (fin.min(), fin.max(), np.abs(fin).max()), key
            np.testing.assert_allclose(
                [st["mean"], st["std"], st["l2_norm"]],
                [fin.mean(), fin.std(), np.sqrt((fin * fin).sum())],
                rtol=1e-9, atol=1e-12, err_msg=str(key),
            )
    # the mask's -inf entries counted, the positions seen as integers
    mask = [x for k, x in ks.items() if k[0] == "attn_inp_kq_mask" and k[1] == 0][0]
    assert mask.stats["inf_count"] > 0 and mask.stats["max"] == 0.0
    pos = [x for k, x in ks.items() if k[0] == "inp_pos" and k[1] == 1][0]
    assert (pos.stats["count"], pos.stats["min"]) == (1, 6.0)


def test_a_layer_filter_keeps_that_layer_and_the_inputs_it_reads(llm, full, tmp_path):
    t = _run(llm, tmp_path / "layer1.tdump", layers=[1])
    assert {x.layer for x in t.values()} == {1, None}
    outside = {x.name for x in t.values() if x.layer is None}
    assert {"attn_inp_kq_mask", "inp_pos"} <= outside <= INPUTS, outside
    # every layer-1 tensor of the full capture, and nothing else of a layer
    def names(tr, layer):
        return sorted((x.name, x.step) for x in tr.values() if x.layer == layer)

    assert names(t, 1) == names(full, 1)
    for step in (0, 1, 2):
        r = tracedump.reference.attention(t, 1, step)
        assert r.mask is not None and r.sources["mask"]["name"].startswith("attn_inp_kq_mask")
        assert r.metrics["naive"]["max_rel"] <= 1e-3, r.metrics
        # the same as the full capture's comparison
        rf = tracedump.reference.attention(full, 1, step)
        np.testing.assert_array_equal(r.naive, rf.naive)


def test_a_name_filter_keeps_the_inputs_its_tensors_read(llm, tmp_path):
    t = _run(llm, tmp_path / "re.tdump", include=r"^(Qcur|kq_soft_max|ffn_out)-0$")
    outside = {x.name for x in t.values() if x.layer is None}
    # Qcur-0 is a ROPE of inp_pos; the softmax (without flash attention) reads the mask
    assert "inp_pos" in outside and outside <= INPUTS, outside
    assert {x.name for x in t.values() if x.layer is not None} <= {"Qcur-0", "kq_soft_max-0", "ffn_out-0"}
    rope = [x for x in t.find("Qcur-0") if x.engine_op["op"] == "ROPE" and x.step == 1][0]
    by_id = {x.id: x for x in t.values()}
    pos = [by_id[p["id"]] for p in rope.parents if p["name"] == "inp_pos"]
    assert len(pos) == 1 and pos[0].numpy().ravel().tolist() == [6]


def test_a_step_filter(llm, full, tmp_path):
    t = _run(llm, tmp_path / "step1.tdump", steps=[1])
    assert {x.step for x in t.values()} == {1}
    assert sorted(x.name for x in t.values()) == sorted(x.name for x in full.values() if x.step == 1)
    both = _run(llm, tmp_path / "l0s2.tdump", steps=[2], layers=[0])
    assert {(x.step, x.layer) for x in both.values()} == {(2, 0), (2, None)}


def test_background_mode_writes_what_sync_mode_writes(llm, full, tmp_path):
    for kw in (dict(background=True), dict(background=True, queue_bytes=1 << 16)):
        b = _run(llm, tmp_path / "bg.tdump", **kw)
        kb, kf = _keyed(b), _keyed(full)
        assert list(kb) == list(kf)
        for key, x in kb.items():
            f = kf[key]
            assert (x.dtype, x.shape, x.byte_strides, x.layer) == (f.dtype, f.shape, f.byte_strides, f.layer), key
            assert [p["name"] for p in x.parents] == [p["name"] for p in f.parents], key
            np.testing.assert_array_equal(x.numpy(), f.numpy(), err_msg=str(key))


def test_capture_options_are_checked(llm, tmp_path):
    with pytest.raises(TypeError, match="layers must be an iterable of ints"):
        tracedump.ggml.capture(llm, tmp_path / "x.tdump", layers=1)
    with pytest.raises(TypeError, match="steps"):
        tracedump.ggml.capture(llm, tmp_path / "x.tdump", steps=["0"])
    with pytest.raises(ValueError, match="queue_bytes"):
        tracedump.ggml.capture(llm, tmp_path / "x.tdump", background=True, queue_bytes=0)
    with pytest.raises(TypeError):
        tracedump.ggml.capture(llm, tmp_path / "x.tdump", "regex")  # keyword-only

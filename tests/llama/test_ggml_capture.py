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
    logits = t["result_output"].numpy()
    np.testing.assert_allclose(logits.reshape(-1, llm.n_vocab())[-1], last[0], rtol=1e-6)

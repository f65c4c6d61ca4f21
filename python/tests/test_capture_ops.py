"""tracedump.capture(..., ops=True): op-level records inside module forwards."""

import re

import pytest

torch = pytest.importorskip("torch")
tracedump = pytest.importorskip("tracedump")

from tracedump.capture import capture, op_name  # noqa: E402

nn = torch.nn
F = torch.nn.functional
N_EMBD, N_HEAD, N_VOCAB = 16, 2, 32
HD = N_EMBD // N_HEAD
OP_NAME = re.compile(r"^(?:(.+)/)?([A-Za-z_0-9]+)/(\d+)(\.\d+)*$")


class Attention(nn.Module):
    def __init__(self):
        super().__init__()
        self.q_proj = nn.Linear(N_EMBD, N_EMBD, bias=False)
        self.k_proj = nn.Linear(N_EMBD, N_EMBD, bias=False)
        self.v_proj = nn.Linear(N_EMBD, N_EMBD, bias=False)
        self.o_proj = nn.Linear(N_EMBD, N_EMBD, bias=False)

    def forward(self, x):
        b, t, _ = x.shape
        q = self.q_proj(x).view(b, t, N_HEAD, HD).transpose(1, 2)
        k = self.k_proj(x).view(b, t, N_HEAD, HD).transpose(1, 2)
        v = self.v_proj(x).view(b, t, N_HEAD, HD).transpose(1, 2)
        scores = torch.matmul(q, k.transpose(2, 3)) * HD**-0.5
        w = F.softmax(scores, dim=-1, dtype=torch.float32).to(q.dtype)  # .to: a no-op
        out = (w @ v).transpose(1, 2).contiguous()  # a real copy of a strided view
        return self.o_proj(out.reshape(b, t, N_EMBD).contiguous())  # .contiguous: a no-op


class Mlp(nn.Module):
    def __init__(self):
        super().__init__()
        self.gate = nn.Linear(N_EMBD, 2 * N_EMBD, bias=False)
        self.up = nn.Linear(N_EMBD, 2 * N_EMBD, bias=False)
        self.down = nn.Linear(2 * N_EMBD, N_EMBD, bias=False)

    def forward(self, x):
        return self.down(F.silu(self.gate(x)) * self.up(x))


class Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.norm = nn.LayerNorm(N_EMBD)
        self.attn = Attention()
        self.mlp = Mlp()

    def forward(self, x):
        x = x + self.attn(self.norm(x))
        return x + self.mlp(x)


class Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(N_VOCAB, N_EMBD)
        self.layers = nn.ModuleList([Block(), Block()])
        self.lm_head = nn.Linear(N_EMBD, N_VOCAB, bias=False)

    def forward(self, ids):
        x = self.embed(ids)
        for layer in self.layers:
            x = layer(x)
        return self.lm_head(x) * 2.0  # an op of the root itself


@pytest.fixture
def model():
    torch.manual_seed(0)
    return Tiny().eval()


IDS = [torch.tensor([[1, 5, 7, 2]]), torch.tensor([[3, 9, 4, 4]])]


def hook_counts(model):
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


def mode_depth():
    return torch._C._len_torch_function_stack()


def test_op_names():
    assert op_name(torch.Tensor.__mul__)[0] == "mul"
    assert op_name(torch.Tensor.__rmul__)[0] == "mul"
    assert op_name(torch.Tensor.mul)[0] == "mul"
    assert op_name(torch.add)[0] == "add"
    assert op_name(torch.Tensor.add)[0] == "add"
    assert op_name(torch.Tensor.__iadd__)[0] == "add_"
    assert op_name(torch.Tensor.__rsub__)[0] == "sub"
    assert op_name(torch.Tensor.__truediv__)[0] == "div"
    assert op_name(torch.Tensor.__matmul__)[0] == "matmul"
    assert op_name(torch.Tensor.__neg__)[0] == "neg"
    assert op_name(torch.Tensor.__getitem__)[0] == "getitem"
    assert op_name(F.linear)[0] == "linear"
    assert op_name(F.softmax)[0] == "softmax"
    assert op_name(F.silu)[0] == "silu"
    assert op_name(F.scaled_dot_product_attention)[0] == "scaled_dot_product_attention"
    assert op_name(torch.cat)[0] == "cat"
    assert op_name(torch.Tensor.transpose)[0] == "transpose"
    assert op_name(torch.Tensor.__mul__)[1] == "torch.Tensor.__mul__"


def test_default_is_unchanged(model, tmp_path):
    with capture(model, tmp_path / "plain.tdump"):
        for ids in IDS:
            model(ids)
    with capture(model, tmp_path / "ops.tdump", ops=True):
        for ids in IDS:
            model(ids)
    plain = tracedump.open(str(tmp_path / "plain.tdump"))
    ops = tracedump.open(str(tmp_path / "ops.tdump"))
    assert not any("/" in n for n in plain.names())
    # the module records are all there, in the same order, with the same values
    module_records = [t for t in ops.values() if "/" not in t.name]
    assert [t.name for t in module_records] == [t.name for t in plain.values()]
    assert [(t.layer, t.step) for t in module_records] == [(t.layer, t.step) for t in plain.values()]
    for a, b in zip(module_records, plain.values()):
        assert torch.equal(a.torch(), b.torch()), a.name
    assert len(ops) > len(plain)
    assert hook_counts(model) == 0


def test_tiny_names_steps_layers_values(model, tmp_path):
    depth = mode_depth()
    seen = {}
    hooks = [
        model.layers[1].attn.register_forward_hook(lambda m, a, o: seen.setdefault("attn_in", []).append(a[0])),
        model.layers[1].mlp.register_forward_hook(lambda m, a, o: seen.setdefault("mlp_in", []).append(a[0])),
    ]
    with torch.no_grad():
        ref = [model(ids) for ids in IDS]
        with capture(model, tmp_path / "t.tdump", ops=True) as cap:
            assert mode_depth() == depth  # on only during forward
            outs = [model(ids) for ids in IDS]
            assert mode_depth() == depth
            torch.ones(3) * 2  # outside a forward: not recorded
    for h in hooks:
        h.remove()
    for a, b in zip(outs, ref):
        assert torch.equal(a, b)
    trace = tracedump.open(str(tmp_path / "t.tdump"))
    assert len(trace) == cap.records
    assert trace.verify().ok
    names = trace.names()
    for name in [
        "embed/embedding/0",
        "layers.0.norm/layer_norm/0",
        "layers.0.attn.q_proj/linear/0",
        "layers.0.attn/view/0",
        "layers.0.attn/transpose/0",
        "layers.0.attn/transpose/3",  # k.transpose(2, 3)
        "layers.0.attn/matmul/0",  # the scores
        "layers.0.attn/mul/0",  # scaled
        "layers.0.attn/softmax/0",
        "layers.0.attn/matmul/1",  # w @ v
        "layers.0.attn/contiguous/0",
        "layers.0.attn/reshape/0",
        "layers.1.mlp.gate/linear/0",
        "layers.1.mlp/silu/0",
        "layers.1.mlp/mul/0",  # the SwiGLU product
        "layers.1/add/0",
        "layers.1/add/1",
        "lm_head/linear/0",
        "mul/0",  # the root's own op
        # the module records are still there
        "layers.0.attn",
        "layers.0.attn.q_proj",
        "output",
    ]:
        assert name in names, name
    # no-ops (.to to the same dtype, .contiguous of a contiguous tensor) are not records
    assert "layers.0.attn/to/0" not in names
    assert "layers.0.attn/contiguous/1" not in names
    assert "ones/0" not in names and "mul/1" not in names
    # metadata queries and int results are not records
    assert not any(re.search(r"/(size|dim|shape|is_contiguous|__get__|embedding_input)/", n) for n in names)

    # layers and steps; k restarts with each call: every name appears once per step
    counts = {}
    for t in trace.values():
        m = OP_NAME.match(t.name)
        if not m:
            continue
        path = m.group(1) or ""
        lm = re.match(r"layers\.(\d+)(\.|$)", path)
        assert t.layer == (int(lm.group(1)) if lm else None), t.name
        assert t.step in (0, 1)
        assert t.metadata["op"] == m.group(2)
        assert t.metadata["module"] == path
        counts[t.name] = counts.get(t.name, 0) + 1
        assert t.step == counts[t.name] - 1, t.name
    assert set(counts.values()) == {2}
    assert {t.name for t in trace.filter(step=1)} == {t.name for t in trace.filter(step=0)}

    # values: the real intermediate values
    for step in (0, 1):
        x = seen["mlp_in"][step]
        mlp = model.layers[1].mlp
        swiglu = F.silu(mlp.gate(x)) * mlp.up(x)
        assert torch.equal(trace[f"layers.1.mlp/mul/0#{step}"].torch(), swiglu)
        # the product is what down's input is (one storage, recorded once)
        t = trace[f"layers.1.mlp/mul/0#{step}"]
        assert trace[f"layers.1.mlp.down.input.0#{step}"].storage == t.storage
        h = seen["attn_in"][step]
        attn = model.layers[1].attn
        q = attn.q_proj(h).view(1, 4, N_HEAD, HD).transpose(1, 2)
        k = attn.k_proj(h).view(1, 4, N_HEAD, HD).transpose(1, 2)
        scores = torch.matmul(q, k.transpose(2, 3))
        assert torch.equal(trace[f"layers.1.attn/matmul/0#{step}"].torch(), scores)
        w = F.softmax(scores * HD**-0.5, dim=-1)
        assert torch.equal(trace[f"layers.1.attn/softmax/0#{step}"].torch(), w)
    assert torch.equal(trace["mul/0#1"].torch(), outs[1])
    assert torch.equal(trace["output#1"].torch(), outs[1])

    # lineage: the parents are the records of the call's tensor arguments
    t = trace["layers.1.mlp/mul/0"]
    assert [p["name"] for p in t.parents] == ["layers.1.mlp/silu/0", "layers.1.mlp.up"]
    assert t.engine_op is None or "mul" in str(t.engine_op)
    assert [p["name"] for p in trace["layers.1.mlp/silu/0"].parents] == ["layers.1.mlp.gate"]
    assert [p["name"] for p in trace["layers.0.attn/softmax/0"].parents] == ["layers.0.attn/mul/0"]
    assert trace["layers.0.attn/matmul/0"].parents[0]["name"] == "layers.0.attn/transpose/0"


def test_views_keep_their_strides(model, tmp_path):
    with capture(model, tmp_path / "v.tdump", ops=True, include=r"^layers\.0\.attn/"):
        model(IDS[0])
    trace = tracedump.open(str(tmp_path / "v.tdump"))
    q = trace["layers.0.attn/transpose/0"]  # [b, t, h, d] -> [b, h, t, d], no copy
    assert tuple(q.shape) == (1, N_HEAD, 4, HD)
    assert tuple(q.strides) == (4 * N_EMBD, HD, N_EMBD, 1)
    assert not q.is_contiguous
    # a view of the bytes recorded for view/0, not a copy of them
    assert q.storage == trace["layers.0.attn/view/0"].storage is not None
    got = q.torch()
    assert got.stride() == (4 * N_EMBD, HD, N_EMBD, 1)
    assert torch.equal(got, trace["layers.0.attn/view/0"].torch().transpose(1, 2))


def test_grad_mode_and_backward(model, tmp_path):
    model.train()
    with capture(model, tmp_path / "g.tdump", ops=True) as cap:
        loss = model(IDS[0]).pow(2).mean()
    loss.backward()  # the graph is intact, and backward runs outside the mode
    assert model.lm_head.weight.grad is not None
    assert cap.records > 0
    t = tracedump.open(str(tmp_path / "g.tdump"))["layers.0.attn/softmax/0"]
    assert not t.torch().requires_grad


def test_stats_only_and_filters(model, tmp_path):
    with capture(model, tmp_path / "s.tdump", ops=True, stats_only=True, layers=[1], steps=[1], inputs=False):
        for ids in IDS:
            model(ids)
    trace = tracedump.open(str(tmp_path / "s.tdump"))
    assert all(t.is_stats_only for t in trace.values())
    assert {t.step for t in trace.values()} == {1}
    assert {t.layer for t in trace.values()} == {1, None}
    t = trace["layers.1.mlp/mul/0"]
    assert t.metadata["inputs"] == "layers.1.mlp/silu/0,layers.1.mlp.up"


def test_removed_on_exceptions(model, tmp_path):
    depth = mode_depth()

    # an exception in the with-block, after the forward
    with pytest.raises(RuntimeError, match="boom"):
        with capture(model, tmp_path / "boom.tdump", ops=True) as cap:
            model(IDS[0])
            raise RuntimeError("boom")
    assert hook_counts(model) == 0 and mode_depth() == depth
    assert len(tracedump.open(str(tmp_path / "boom.tdump"))) == cap.records > 0

    # an exception inside a forward: the mode is off again at once, and the
    # next forward is recorded normally
    class Bad(nn.Module):
        def __init__(self):
            super().__init__()
            self.inner = nn.Linear(4, 4)
            self.fail = True

        def forward(self, x):
            y = self.inner(x) * 3
            if self.fail:
                raise ValueError("inside forward")
            return y + 1

    class Outer(nn.Module):
        def __init__(self):
            super().__init__()
            self.bad = Bad()

        def forward(self, x):
            return self.bad(x * 2)

    m = Outer()
    with capture(m, tmp_path / "bad.tdump", ops=True) as cap:
        with pytest.raises(ValueError):
            m(torch.ones(1, 4))
        assert mode_depth() == depth and not cap._frames
        m.bad.fail = False
        out = m(torch.ones(1, 4))
        assert mode_depth() == depth
    assert hook_counts(m) == 0 and mode_depth() == depth
    trace = tracedump.open(str(tmp_path / "bad.tdump"))
    assert [t.step for t in trace.filter(regex=r"^bad/mul/0$")] == [0, 1]
    assert [t.step for t in trace.filter(regex=r"^mul/0$")] == [0, 1]
    assert torch.equal(trace["bad/add/0"].torch(), out)
    assert "bad/add/0#1" not in trace


def _corrupting_contiguous(original):
    """``Tensor.contiguous`` as a broken backend would run it: the copy of a
    non-contiguous tensor comes back wrong. It takes part in torch's
    ``__torch_function__`` protocol as torch's own Python-level Tensor methods
    do, so that a TorchFunctionMode sees it as one op, as it sees the real one."""
    from torch.overrides import handle_torch_function, has_torch_function_unary

    def contiguous(self, *args, **kwargs):
        if has_torch_function_unary(self):
            return handle_torch_function(contiguous, (self,), self, *args, **kwargs)
        out = original(self, *args, **kwargs)
        if not self.is_contiguous():
            out = out.flip(-1)  # elements in the wrong places
        return out

    contiguous.__qualname__ = "Tensor.contiguous"
    return contiguous


def test_first_divergent_op_finds_a_broken_kernel(model, tmp_path, monkeypatch):
    """The CPU-vs-backend use: run the model twice, once with a kernel that
    corrupts non-contiguous inputs; the first op that differs is that kernel's."""
    good, again, bad = (tmp_path / f"{n}.tdump" for n in ("good", "again", "bad"))
    with torch.no_grad():
        with capture(model, good, ops=True):
            ref = model(IDS[0])
        with capture(model, again, ops=True):
            model(IDS[0])
        monkeypatch.setattr(torch.Tensor, "contiguous", _corrupting_contiguous(torch.Tensor.contiguous))
        with capture(model, bad, ops=True):
            out = model(IDS[0])
        monkeypatch.undo()
    assert not torch.equal(out, ref)

    same = tracedump.compare(again, good)
    assert same.agrees and not same.only_in_a and not same.only_in_b  # stable names, same values

    r = tracedump.compare(bad, good)
    assert not r.agrees
    assert not r.only_in_a and not r.only_in_b
    first = r.first_divergence
    assert first["key"] == "layers.0.attn/contiguous/0"
    # everything recorded before it agrees (the attention's probabilities, w @ v included)
    before = r.pairs[: r.first_divergence_index]
    assert before and all(p["verdict"] == "agree" for p in before)
    assert any(p["key"] == "layers.0.attn/matmul/1" for p in before)
    # the module records alone would have shown it first at o_proj's input
    plain = [p["key"] for p in r.pairs if "/" not in p["key"] and p["verdict"] != "agree"]
    assert plain[0] == "layers.0.attn.o_proj.input.0"


def test_other_modes_compose(model, tmp_path):
    """A TorchFunctionMode of the user's still sees every call, and the
    capture's mode is gone afterwards."""
    from torch.overrides import BaseTorchFunctionMode

    class Counting(BaseTorchFunctionMode):
        calls = 0

        def __torch_function__(self, func, types, args=(), kwargs=None):
            Counting.calls += 1
            return super().__torch_function__(func, types, args, kwargs)

    depth = mode_depth()
    with torch.no_grad():
        ref = model(IDS[0])
        with Counting():
            with capture(model, tmp_path / "c.tdump", ops=True) as cap:
                out = model(IDS[0])
    assert Counting.calls > 0 and cap.records > 0 and torch.equal(out, ref)
    assert mode_depth() == depth



HF_CONFIG = dict(
    hidden_size=64,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    intermediate_size=128,
    vocab_size=256,
    max_position_embeddings=64,
)


@pytest.fixture(scope="module")
def llama():
    import transformers
    torch.manual_seed(0)
    config = transformers.LlamaConfig(**HF_CONFIG, attn_implementation="eager")
    return transformers.LlamaForCausalLM(config).eval()


def test_hf_llama(llama, tmp_path):
    from transformers.models.llama import modeling_llama as ml

    ids = torch.tensor([[1, 17, 42, 99, 3, 250]])
    seen = {}

    def grab(module, args, kwargs, out):
        seen.setdefault(id(module), []).append((args, kwargs))

    layer = llama.model.layers[1]
    hooks = [
        layer.self_attn.register_forward_hook(grab, with_kwargs=True),
        layer.mlp.register_forward_hook(grab, with_kwargs=True),
    ]
    with torch.no_grad():
        ref = llama(ids, use_cache=False).logits
        with capture(llama, tmp_path / "llama.tdump", ops=True) as cap:
            got = llama(ids, use_cache=False).logits
    for h in hooks:
        h.remove()
    assert torch.equal(got, ref)  # bit-identical logits
    assert cap.step == 1
    trace = tracedump.open(str(tmp_path / "llama.tdump"))
    assert trace.verify().ok

    p = "model.layers.1"
    q_rot, k_rot = trace[f"{p}.self_attn/add/0"], trace[f"{p}.self_attn/add/1"]
    scores = trace[f"{p}.self_attn/matmul/0"]
    probs = trace[f"{p}.self_attn/softmax/0"]
    swiglu = trace[f"{p}.mlp/mul/0"]
    for t in (q_rot, k_rot, scores, probs, swiglu):
        assert t.layer == 1 and t.step == 0, t.name
    n_kv, hd = HF_CONFIG["num_key_value_heads"], HF_CONFIG["hidden_size"] // HF_CONFIG["num_attention_heads"]
    assert tuple(q_rot.shape) == (1, HF_CONFIG["num_attention_heads"], 6, hd)
    assert tuple(k_rot.shape) == (1, n_kv, 6, hd)
    assert tuple(scores.shape) == tuple(probs.shape) == (1, HF_CONFIG["num_attention_heads"], 6, 6)

    # post-RoPE Q and K: transformers' own apply_rotary_pos_emb on the layer's inputs
    args, kwargs = seen[id(layer.self_attn)][-1]
    attn = layer.self_attn
    h = kwargs.get("hidden_states", args[0] if args else None)
    cos, sin = kwargs["position_embeddings"]
    shape = (*h.shape[:-1], -1, attn.head_dim)
    with torch.no_grad():
        q = attn.q_proj(h).view(shape).transpose(1, 2)
        k = attn.k_proj(h).view(shape).transpose(1, 2)
        v_ref = attn.v_proj(h).view(shape).transpose(1, 2)
        q_ref, k_ref = ml.apply_rotary_pos_emb(q, k, cos, sin)
        assert torch.equal(q_rot.torch(), q_ref)
        assert torch.equal(k_rot.torch(), k_ref)
        s_ref = torch.matmul(q_ref, ml.repeat_kv(k_ref, attn.num_key_value_groups).transpose(2, 3))
        assert torch.equal(scores.torch(), s_ref)
    # the softmax is what the eager attention returns as its weights
    assert torch.equal(probs.torch(), trace[f"{p}.self_attn.output.1"].torch())
    # the SwiGLU product: act(gate(x)) * up(x), down_proj's input
    args, kwargs = seen[id(layer.mlp)][-1]
    x = args[0]
    with torch.no_grad():
        mlp = layer.mlp
        assert torch.equal(swiglu.torch(), mlp.act_fn(mlp.gate_proj(x)) * mlp.up_proj(x))
    assert torch.equal(swiglu.torch(), trace[f"{p}.mlp.down_proj.input.0"].torch())
    assert [x["name"] for x in swiglu.parents] == [f"{p}.mlp.act_fn", f"{p}.mlp.up_proj"]
    # the attention output: P @ V, [b, t, h, d], then before o_proj [b, t, h * d]
    # (reshape/0 and /1 are repeat_kv's, for K and V: this model has GQA)
    pv = trace[f"{p}.self_attn/matmul/1"].torch()
    assert torch.equal(pv, probs.torch() @ ml.repeat_kv(v_ref, attn.num_key_value_groups))
    assert torch.equal(trace[f"{p}.self_attn/contiguous/0"].torch(), pv.transpose(1, 2))
    before_o = trace[f"{p}.self_attn/reshape/2"]
    assert tuple(before_o.shape) == (1, 6, HF_CONFIG["hidden_size"])
    assert torch.equal(before_o.torch(), trace[f"{p}.self_attn.o_proj.input.0"].torch())
    assert [x["name"] for x in trace[f"{p}.self_attn.o_proj/linear/0"].parents] == [before_o.name]
    # the residual adds of the layer
    assert torch.equal(trace[f"{p}/add/1"].torch(), trace[p].torch())

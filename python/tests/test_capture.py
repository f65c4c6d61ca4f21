"""tracedump.capture on a tiny 2-layer torch model, on the CPU."""

import re

import numpy as np
import pytest

torch = pytest.importorskip("torch")
tracedump = pytest.importorskip("tracedump")

from tracedump.capture import capture, layer_of  # noqa: E402

nn = torch.nn
N_EMBD, N_HEAD, N_VOCAB = 16, 2, 32


class Attention(nn.Module):
    def __init__(self):
        super().__init__()
        self.q_proj = nn.Linear(N_EMBD, N_EMBD, bias=False)
        self.k_proj = nn.Linear(N_EMBD, N_EMBD, bias=False)
        self.v_proj = nn.Linear(N_EMBD, N_EMBD, bias=False)
        self.o_proj = nn.Linear(N_EMBD, N_EMBD, bias=False)

    def forward(self, x, *, scale=None):
        b, t, _ = x.shape
        hd = N_EMBD // N_HEAD
        # [b, t, h, d] -> [b, h, t, d]: non-contiguous views
        q = self.q_proj(x).view(b, t, N_HEAD, hd).transpose(1, 2)
        k = self.k_proj(x).view(b, t, N_HEAD, hd).transpose(1, 2)
        v = self.v_proj(x).view(b, t, N_HEAD, hd).transpose(1, 2)
        w = torch.softmax((q @ k.transpose(-1, -2)) * (scale or hd**-0.5), dim=-1)
        out = (w @ v).transpose(1, 2).reshape(b, t, N_EMBD)
        return self.o_proj(out), w  # a tuple: output.0, output.1


class Mlp(nn.Module):
    def __init__(self):
        super().__init__()
        self.up = nn.Linear(N_EMBD, 2 * N_EMBD)
        self.act = nn.GELU()
        self.down = nn.Linear(2 * N_EMBD, N_EMBD)

    def forward(self, x):
        return self.down(self.act(self.up(x)))


class Transposer(nn.Module):
    """Returns a strided view: [b, t, c] -> [b, c, t] without a copy."""

    def forward(self, x):
        return x.transpose(1, 2)


class Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.norm = nn.LayerNorm(N_EMBD)
        self.self_attn = Attention()
        self.mlp = Mlp()
        self.tr = Transposer()

    def forward(self, x):
        a, _ = self.self_attn(self.norm(x), scale=0.5)  # a keyword argument: input.scale is not a tensor
        x = x + a
        self.tr(x)
        return x + self.mlp(x)


class Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(N_VOCAB, N_EMBD)
        self.layers = nn.ModuleList([Block(), Block()])
        self.norm = nn.LayerNorm(N_EMBD)
        self.lm_head = nn.Linear(N_EMBD, N_VOCAB, bias=False)

    def forward(self, ids):
        x = self.embed(ids)
        for layer in self.layers:
            x = layer(x)
        return self.lm_head(self.norm(x))


@pytest.fixture
def model():
    torch.manual_seed(0)
    return Tiny().eval()


IDS = [torch.tensor([[1, 5, 7, 2]]), torch.tensor([[3, 9, 4, 4]])]


def hook_everything(model):
    """The reference: what plain forward hooks see, per module path and step."""
    seen = []
    handles = []
    for path, m in model.named_modules():

        def hook(mod, args, out, path=path):
            seen.append((path, out))

        handles.append(m.register_forward_hook(hook))
    return seen, handles


def hook_counts(model):
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


def test_layer_of():
    assert layer_of("model.layers.3.self_attn.o_proj") == 3
    assert layer_of("transformer.h.11.mlp") == 11
    assert layer_of("blocks.0") == 0
    assert layer_of("encoder.layer.7.attention") == 7
    assert layer_of("model.layers.2.mlp.experts.5") == 2
    assert layer_of("model.embed_tokens") is None
    assert layer_of("model.layers_extra.3") is None
    assert layer_of("shallow.h2.4") is None


def test_names_layers_steps_and_values(model, tmp_path):
    path = tmp_path / "run.tdump"
    seen, handles = hook_everything(model)
    before = hook_counts(model)
    with capture(model, path, model_name="tiny") as cap:
        assert hook_counts(model) > before
        outs = [model(ids) for ids in IDS]
        assert cap.step == 2
    for h in handles:
        h.remove()
    assert hook_counts(model) == 0
    assert cap.path == str(path)

    trace = tracedump.open(str(path))
    assert len(trace) == cap.records > 0
    assert trace.metadata["engine"] == "torch"
    assert trace.metadata["model_name"] == "tiny"
    names = set(trace.names())
    for name in [
        "embed",
        "embed.input.0",
        "layers.0.norm",
        "layers.0.self_attn.q_proj",
        "layers.0.self_attn.q_proj.input.0",
        "layers.0.self_attn.input.0",
        "layers.0.self_attn.output.0",
        "layers.0.self_attn.output.1",
        "layers.1.mlp.act",
        "layers.1.tr",
        "layers",  # never called itself: no records
        "output",
        "input.0",
    ]:
        if name == "layers":
            assert name not in names
        else:
            assert name in names, name
    # a non-tensor keyword argument is skipped
    assert not any(n.endswith("input.scale") for n in names)

    # layers and steps
    for t in trace.values():
        m = re.match(r"layers\.(\d+)(\.|$)", t.name)
        assert t.layer == (int(m.group(1)) if m else None), t.name
        assert t.step in (0, 1), t.name
    for step in (0, 1):
        assert len(trace.filter(step=step)) == cap.records // 2
    assert {t.name for t in trace.filter(layer=1)} == {n for n in names if re.match(r"layers\.1(\.|$)", n)}

    # values: the k-th occurrence of a module's output is what its hook saw at step k
    count = {}
    for mod_path, out in seen:
        k = count.get(mod_path, 0)
        count[mod_path] = k + 1
        if isinstance(out, tuple):
            pairs = [(f"{mod_path}.output.{i}", o) for i, o in enumerate(out)]
        else:
            pairs = [(mod_path or "output", out)]
        for name, ref in pairs:
            t = trace[f"{name}#{k}"]
            assert t.step == k
            got = t.torch()
            assert got.dtype == ref.dtype
            assert tuple(got.shape) == tuple(ref.shape)
            assert torch.equal(got, ref.detach()), name
    assert torch.equal(trace["output#1"].torch(), outs[1].detach())
    assert torch.equal(trace["input.0#1"].torch(), IDS[1])


def test_real_strides_are_kept(model, tmp_path):
    path = tmp_path / "strides.tdump"
    seen = {}
    h = model.layers[0].tr.register_forward_hook(lambda m, a, o: seen.setdefault("tr", o))
    with capture(model, path, include=r"^layers\.0\.tr$"):
        model(IDS[0])
    h.remove()
    ref = seen["tr"]
    assert not ref.is_contiguous()
    t = tracedump.open(str(path))["layers.0.tr"]
    assert tuple(t.shape) == tuple(ref.shape)
    assert tuple(t.strides) == tuple(ref.stride())
    assert tuple(t.byte_strides) == tuple(s * ref.element_size() for s in ref.stride())
    assert not t.is_contiguous
    got = t.torch()
    assert got.stride() == ref.stride()
    assert torch.equal(got, ref)


def test_filters(model, tmp_path):
    p1 = tmp_path / "inc.tdump"
    with capture(model, p1, include=r"self_attn", exclude=r"\.input\.") as cap:
        model(IDS[0])
    names = set(tracedump.open(str(p1)).names())
    assert names and all("self_attn" in n and ".input." not in n for n in names)
    assert "layers.1.self_attn.o_proj" in names
    assert cap.records == len(tracedump.open(str(p1)))

    p2 = tmp_path / "list.tdump"
    with capture(model, p2, include=[r"q_proj$", r"^output$"], inputs=False):
        model(IDS[0])
    assert set(tracedump.open(str(p2)).names()) == {
        "layers.0.self_attn.q_proj",
        "layers.1.self_attn.q_proj",
        "output",
    }

    p3 = tmp_path / "in.tdump"
    with capture(model, p3, outputs=False):
        model(IDS[0])
    names = set(tracedump.open(str(p3)).names())
    assert names and all(".input." in n or n.startswith("input.") for n in names)


def test_layer_and_step_filters_and_background(model, tmp_path):
    p = tmp_path / "ls.tdump"
    with capture(model, p, layers=[1], steps=[1], mode="background", preallocate=True, queue_bytes=4 << 20, inputs=False) as cap:
        model(IDS[0])
        model(IDS[1])
    t = tracedump.open(str(p))
    assert cap.records == len(t) > 0
    layers = {x.layer for x in t.values()}
    steps = {x.step for x in t.values()}
    # layer 0 is filtered out; modules outside the layers (head, norm) stay
    assert layers == {1, None} and steps == {1}
    assert "layers.1.self_attn.o_proj" in t.names() and "output" in t.names()


def test_stats_only(model, tmp_path):
    path = tmp_path / "stats.tdump"
    seen = {}
    h = model.layers[0].mlp.register_forward_hook(lambda m, a, o: seen.setdefault("mlp", o.detach().clone()))
    with capture(model, path, stats_only=True, include=r"^layers\.0\.mlp") as cap:
        model(IDS[0])
    h.remove()
    assert cap.records > 0
    trace = tracedump.open(str(path))
    assert all(t.is_stats_only for t in trace.values())
    t = trace["layers.0.mlp"]
    assert t.layer == 0 and t.step == 0
    assert tuple(t.shape) == (1, 4, N_EMBD)
    with pytest.raises(tracedump.TraceError):
        t.numpy()
    ref = seen["mlp"].double()
    s = t.stats
    assert s["count"] == ref.numel()
    assert s["max"] == float(ref.max()) and s["min"] == float(ref.min())
    assert s["mean"] == pytest.approx(float(ref.mean()), rel=1e-9, abs=1e-12)


def test_hooks_removed_on_exception(model, tmp_path):
    path = tmp_path / "boom.tdump"
    with pytest.raises(RuntimeError, match="boom"):
        with capture(model, path) as cap:
            model(IDS[0])
            raise RuntimeError("boom")
    assert hook_counts(model) == 0
    # the trace was closed: it opens with its footer and holds step 0
    trace = tracedump.open(str(path))
    assert len(trace) == cap.records > 0

    # an exception inside forward unwinds the step counter too
    class Bad(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(4, 4)

        def forward(self, x):
            self.lin(x)  # recorded before the failure
            raise ValueError("inside forward")

    bad = Bad()
    with capture(bad, tmp_path / "bad.tdump") as cap:
        for _ in range(2):
            with pytest.raises(ValueError):
                bad(torch.ones(1, 4))
        assert cap.step == 2
    assert hook_counts(bad) == 0
    trace = tracedump.open(str(tmp_path / "bad.tdump"))
    assert [t.step for t in trace.filter(regex=r"^lin$")] == [0, 1]


def test_no_autograd_and_training_unaffected(model, tmp_path):
    model.train()
    with capture(model, tmp_path / "grad.tdump") as cap:
        loss = model(IDS[0]).float().pow(2).mean()
        loss.backward()  # hooks must not break the graph
    assert model.lm_head.weight.grad is not None
    assert cap.records > 0
    t = tracedump.open(str(tmp_path / "grad.tdump"))["output"]
    assert not t.torch().requires_grad


def test_low_precision_model(model, tmp_path):
    m = model.to(torch.bfloat16)
    with capture(m, tmp_path / "bf16.tdump", include=r"^layers\.0\.self_attn\.q_proj$", inputs=False):
        m(IDS[0])
    t = tracedump.open(str(tmp_path / "bf16.tdump"))["layers.0.self_attn.q_proj"]
    assert t.dtype == "bf16"
    got = t.torch()
    assert got.dtype == torch.bfloat16
    ref = m.layers[0].self_attn.q_proj(m.layers[0].norm(m.embed(IDS[0])))
    assert torch.equal(got, ref.detach())


def test_roles_and_repr(model, tmp_path):
    with capture(model, tmp_path / "roles.tdump", roles={r"q_proj$": "q_proj_out"}, inputs=False) as cap:
        model(IDS[0])
    assert "records" in repr(cap)
    trace = tracedump.open(str(tmp_path / "roles.tdump"))
    got = {t.name for t in trace.filter(role="q_proj_out")}
    assert got == {"layers.0.self_attn.q_proj", "layers.1.self_attn.q_proj"}


def test_numpy_values_match(model, tmp_path):
    with capture(model, tmp_path / "np.tdump", include=r"^output$") as cap:
        out = model(IDS[0])
    assert cap.records == 1
    a = tracedump.open(str(tmp_path / "np.tdump"))["output"].numpy()
    np.testing.assert_array_equal(a, out.detach().numpy())


def test_capture_feeds_reference_attention(model, tmp_path):
    """Roles given at capture time let tracedump.reference find Q/K/V in a torch run."""
    from tracedump import reference

    roles = {
        r"self_attn\.q_proj$": "q",
        r"self_attn\.k_proj$": "k",
        r"self_attn\.v_proj$": "v",
        r"self_attn\.o_proj\.input\.0$": "kqv_out",
    }
    with capture(model, tmp_path / "attn.tdump", roles=roles):
        for ids in IDS:
            model(ids)
    trace = tracedump.open(str(tmp_path / "attn.tdump"))
    with pytest.raises(LookupError, match="steps"):
        reference.attention(trace, 0)
    # [b, t, h*d] projections: the head count is needed to split them
    with pytest.raises(reference.LayoutError, match="n_heads"):
        reference.attention(trace, 0, step=1)
    r = reference.attention(trace, 0, step=1, n_heads=N_HEAD, causal=False, scale=0.5)
    assert r.sources["q"]["layout"] == "bs(hd)"
    assert r.dims["n_heads"] == N_HEAD and r.dims["head_dim"] == N_EMBD // N_HEAD
    assert r.metrics["sdpa"]["max_rel"] < 1e-5
    assert r.metrics["naive"]["max_rel"] < 1e-5


def test_dict_outputs_and_keyword_inputs(tmp_path):
    class Head(nn.Module):
        def forward(self, x, *, bias=None, extra=None):
            return {"logits": x + bias, "aux": (x * 2, None), "n": 3}

    class Wrapper(nn.Module):
        def __init__(self):
            super().__init__()
            self.head = Head()

        def forward(self, x):
            return self.head(x, bias=torch.ones(3), extra=[x, "text"])["logits"]

    m = Wrapper()
    x = torch.arange(6.0).reshape(2, 3)
    with capture(m, tmp_path / "dict.tdump") as cap:
        m(x)
    trace = tracedump.open(str(tmp_path / "dict.tdump"))
    assert set(trace.names()) == {
        "input.0",
        "output",
        "head.input.0",
        "head.input.bias",
        "head.input.extra.0",
        "head.output.logits",
        "head.output.aux.0",
    }
    assert cap.records == 7
    assert torch.equal(trace["head.output.aux.0"].torch(), x * 2)
    assert torch.equal(trace["head.input.bias"].torch(), torch.ones(3))

"""Blame and diagnosis on runs recorded with tracedump.capture: a torch
model run twice, once with a bug planted in one module of layer 1. The
blamed op must be that module (not the logits its error reaches) and the
diagnosis must name the bug."""

import pytest

torch = pytest.importorskip("torch")
tracedump = pytest.importorskip("tracedump")

from tracedump.capture import capture  # noqa: E402

nn = torch.nn
F = torch.nn.functional
N_EMBD, N_HEAD, N_VOCAB = 32, 4, 64
HD = N_EMBD // N_HEAD


class Act(nn.Module):
    def __init__(self, bug=None):
        super().__init__()
        self.bug = bug

    def forward(self, x):
        y = F.silu(x)
        return torch.zeros_like(y) if self.bug == "zeros" else y


class Heads(nn.Module):
    """Splits [B, T, C] into heads and merges them back (a no-op when right)."""

    def __init__(self, bug=None):
        super().__init__()
        self.bug = bug

    def forward(self, x):
        b, t, c = x.shape
        h = x.view(b, t, N_HEAD, HD)
        if self.bug == "layout":  # a reshape where a permute was needed
            return h.transpose(2, 3).reshape(b, t, c)
        return h.reshape(b, t, c)


class Block(nn.Module):
    def __init__(self, bug=None):
        super().__init__()
        self.norm = nn.LayerNorm(N_EMBD)
        self.proj = nn.Linear(N_EMBD, N_EMBD, bias=False)
        self.heads = Heads(bug)
        self.up = nn.Linear(N_EMBD, 2 * N_EMBD, bias=False)
        self.act = Act(bug)
        self.down = nn.Linear(2 * N_EMBD, N_EMBD, bias=False)

    def forward(self, x):
        x = x + self.heads(self.proj(self.norm(x)))
        return x + self.down(self.act(self.up(x)))


class Tiny(nn.Module):
    def __init__(self, bug=None):
        super().__init__()
        self.embed = nn.Embedding(N_VOCAB, N_EMBD)
        self.layers = nn.ModuleList([Block(bug if i == 1 else None) for i in range(3)])
        self.lm_head = nn.Linear(N_EMBD, N_VOCAB, bias=False)

    def forward(self, ids):
        x = self.embed(ids)
        for layer in self.layers:
            x = layer(x)
        return self.lm_head(x)


def run(tmp_path, name, bug, seed):
    torch.manual_seed(seed)
    model = Tiny(bug).eval()
    path = tmp_path / f"{name}.tdump"
    with torch.no_grad(), capture(model, path):
        model(torch.tensor([[1, 5, 7, 2, 9, 3]]))
    return str(path)


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize(
    "bug, module, kind",
    [("zeros", "layers.1.act", "zeros"), ("layout", "layers.1.heads", "layout")],
)
def test_blame_names_the_planted_module_and_its_bug(tmp_path, seed, bug, module, kind):
    a = run(tmp_path, "a", bug, seed)
    b = run(tmp_path, "b", None, seed)
    r = tracedump.compare(a, b)
    assert not r.agrees
    blamed = r.blamed
    assert [x["key"].split("/")[0].removesuffix(".output") for x in blamed][:1] == [module], blamed
    assert all(x["by_graph"] for x in blamed)
    assert blamed[0]["diagnosed"] and blamed[0]["same_op_as"] is None
    top = blamed[0]["diagnosis"][0]
    assert top["kind"] == kind, top
    assert isinstance(top["evidence"], str) and 0 < top["strength"] <= 1
    # its inputs agree; the logits, downstream, are not blamed
    pairs = r.pairs
    assert all(not pairs[i]["divergent"] for i in blamed[0]["inputs"])
    assert not any("lm_head" in x["key"] for x in blamed)
    # a diagnosis on request, by key or by index, says the same
    assert r.diagnosis(blamed[0]["key"])[0]["kind"] == kind
    assert r.diagnosis(blamed[0]["index"])[0]["kind"] == kind


def test_a_clean_pair_blames_nothing(tmp_path):
    a = run(tmp_path, "a", None, 3)
    b = run(tmp_path, "b", None, 3)
    r = tracedump.compare(a, b)
    assert r.agrees and r.blamed == []
    assert r.diagnosis(0) == []
    with pytest.raises(KeyError):
        r.diagnosis("no such pair")
    with pytest.raises(IndexError):
        r.diagnosis(10**6)

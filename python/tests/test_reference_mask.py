"""reference.attention refuses to run without a mask the graph used: a
ggml attention op whose mask source was not recorded (a capture filter
left it out) would otherwise be compared unmasked, a false divergence."""

import numpy as np
import pytest

pytest.importorskip("torch")
import tracedump  # noqa: E402


def test_a_mask_the_graph_used_but_the_trace_lacks_is_refused(tmp_path):
    path = tmp_path / "fa.tdump"
    rng = np.random.default_rng(0)
    q, k, v = (rng.standard_normal((1, 4, 6, 16), dtype=np.float32) for _ in range(3))
    with tracedump.Writer(str(path)) as w:
        ids = [w.add(n, x, layer=0, step=0) for n, x in (("Qcur-0", q), ("k-0", k), ("v-0", v))]
        w.add(
            "node_9",
            rng.standard_normal((1, 6, 4, 16), dtype=np.float32),
            layer=0,
            step=0,
            lineage={"parents": ids, "engine_op": {"engine": "ggml", "op": "FLASH_ATTN_EXT"}},
            **{"ggml.srcs": "Qcur-0,k-0,v-0,attn_inp_kq_mask"},
        )
    t = tracedump.open(str(path))
    with pytest.raises(LookupError, match=r"used the mask `attn_inp_kq_mask`.*mask=False"):
        tracedump.reference.attention(t, 0, 0)

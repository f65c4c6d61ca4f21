"""Reads back what capi_test.c wrote and checks every value (run by `make test-c`)."""

import sys

import numpy as np

import tracedump

path = sys.argv[1]
t = tracedump.open(path)
rep = t.verify()
assert rep.ok, rep.faults
assert rep.lineages_replayed >= 3, rep.lineages_replayed
assert t.metadata["engine"] == "capi_test" and t.metadata["model"] == "tiny"

a = t["a"]
np.testing.assert_array_equal(a.numpy(), np.array([[1, 2, 3], [4, 5, 6]], np.float32))
assert (a.layer, a.step, a.role) == (3, 1, "q")
assert a.metadata == {"note": "hello", "n": -7, "x": 0.5}

at = t["a_t"]
assert at.byte_strides == (4, 12) and at.storage == a.id
np.testing.assert_array_equal(at.numpy(), a.numpy().T)
assert [p["id"] for p in at.parents] == [a.id] and at.lineage == [{"op": "transpose", "a": 0, "b": 1}]

cache = (np.arange(24, dtype=np.uint16) + 0x3C00).view(np.float16)
k = t["k-0"]
assert k.shape == (1, 2, 3, 4) and k.byte_strides == (48, 8, 16, 2)
assert k.ggml == {"ne": [4, 3, 2, 1], "nb": [2, 16, 8, 48]}
assert k.engine_op["op"] == "VIEW"
want = np.lib.stride_tricks.as_strided(cache, (1, 2, 3, 4), (48, 8, 16, 2))
np.testing.assert_array_equal(k.numpy(), want)
kp = t["k-0.permuted"]
assert kp.lineage == [{"op": "permute", "axes": [0, 2, 1, 3]}]
np.testing.assert_array_equal(kp.numpy(), want.transpose(0, 2, 1, 3))

s = t["a.sub.f16"]
np.testing.assert_array_equal(s.numpy(), np.array([2, 3, 5, 6], np.float16))
assert [o["op"] for o in s.lineage] == ["view", "cont", "reshape", "convert"]
assert s.ggml == {"ne": [3, 2], "nb": [4, 12]}

st = t["stats"].stats
assert st["count"] == 1000 and st["min"] == 0 and st["max"] == 999 and abs(st["mean"] - 499.5) < 1e-9

assert "skipped" not in t and "short" not in t
sc = t["a.scaled"]
assert [p["id"] for p in sc.parents] == [a.id]
assert sc.metadata["tracedump.op"] == {"relation": "computed", "name": "scale", "params": {"scale": 2.0, "mode": 0}}
for k in range(4):
    for i in (0, 99):
        np.testing.assert_array_equal(t[f"thread{k}.{i}"].numpy(), k * 1000 + i * 16 + np.arange(16, dtype=np.float32))
assert len(t.filter(regex=r"^thread")) == 400

g = tracedump.open(path + ".ggml.tdump")
assert g.verify().ok, g.verify().faults
owner, view, perm = g["kq-0"], g["kq-0 (view)"], g["node_7"]
x = np.arange(24, dtype=np.float32).reshape(1, 2, 3, 4)
np.testing.assert_array_equal(owner.numpy(), x)
# ne=[4,2,2,1] nb=[4,16,48,96] at byte 16: rows 1..2 of each head
np.testing.assert_array_equal(view.numpy(), x[:, :, 1:3, :])
assert view.storage == owner.id and view.storage_offset == 16
assert view.lineage[0]["op"] == "view" and view.lineage[0]["offset"] == 16
assert perm.lineage == [{"op": "permute", "axes": [0, 2, 1, 3]}] and perm.layer == 0
assert [p["id"] for p in perm.parents] == [view.id]
assert perm.metadata["ggml.view_src"] == "kq-0" and perm.metadata["ggml.srcs"] == "kq-0 (view)"
np.testing.assert_array_equal(perm.numpy(), view.numpy().transpose(0, 2, 1, 3))

# options: layer 1 of step 0, statistics only, background; the graph input
# its tensor reads recorded whatever the filter
o = tracedump.open(path + ".ggml-opts.tdump")
assert o.verify().ok, o.verify().faults
assert [x.name for x in o.values()] == ["mask", "kq-1", "node_9"]
assert all(x.is_stats_only and x.step == 0 for x in o.values())
assert [x.layer for x in o.values()] == [None, 1, 1]
st = o["kq-1"].stats
assert (st["count"], st["min"], st["max"], st["mean"]) == (24, 0.0, 23.0, 11.5)
assert abs(st["std"] - np.arange(24).std()) < 1e-12 and st["bytes_crc32c"] is not None
ms = o["mask"].stats
assert (ms["count"], ms["inf_count"], ms["max"]) == (4, 1, 0.0)
assert [p["id"] for p in o["kq-1"].parents] == [o["mask"].id]
assert [p["id"] for p in o["node_9"].parents] == [o["kq-1"].id]

# the in-memory writer and recorder's bytes, as capi_test.c wrote them out
m = tracedump.open(path + ".memory.tdump")
assert m.verify().ok, m.verify().faults
assert m.metadata["engine"] == "capi_test" and len(m) == 2
np.testing.assert_array_equal(m["m"].numpy(), np.array([[1, 2, 3], [4, 5, 6]], np.float32))
# found through td_regions: a view of m's own bytes, none of its own
row = m["m.row1"]
assert row.storage == m["m"].id and row.storage_offset == 12
np.testing.assert_array_equal(row.numpy(), np.array([4, 5, 6], np.float32))
mg = tracedump.open(path + ".ggml-memory.tdump")
assert mg.verify().ok, mg.verify().faults
assert mg["kq-0"].step == 3
np.testing.assert_array_equal(mg["kq-0"].numpy(), x)
print("check_capi: ok")

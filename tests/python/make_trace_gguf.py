"""A GGUF file as a trace tool writes one: per decode step and layer, the
attention inputs Q, K, V (f32/f16) and the quantized cache parts K_quant
(q8_0) and V_quant (q4_0), with run metadata. Also writes, for every tensor,
its values as gguf-py dequantizes them, for tests/tests/gguf_trace.rs.

    python make_trace_gguf.py OUT.gguf REF_DIR

REF_DIR/<index>.f32 holds tensor <index>'s values (row-major, numpy's shape
order = reversed ggml ne), REF_DIR/index.json the names, shapes and types.
"""
import json
import os
import sys

import numpy as np
from gguf import GGMLQuantizationType, GGUFWriter, quants

out, ref = sys.argv[1], sys.argv[2]
os.makedirs(ref, exist_ok=True)
rng = np.random.default_rng(5)
w = GGUFWriter(out, arch="tracedump-test")
w.add_string("trace.engine", "my-engine")
w.add_uint32("trace.n_steps", 2)
w.add_array("trace.layers", [0, 1])

n_head, head_dim, n_kv = 4, 32, 64
index = []


def add(name, values, qtype):
    """values: numpy f32 array in numpy order (outermost first)."""
    if qtype == GGMLQuantizationType.F32:
        data = values.astype(np.float32)
        back = data
    elif qtype == GGMLQuantizationType.F16:
        data = values.astype(np.float16)
        back = data.astype(np.float32)
    else:
        data = quants.quantize(values.astype(np.float32), qtype)
        back = quants.dequantize(data, qtype)
    if qtype in (GGMLQuantizationType.F32, GGMLQuantizationType.F16):
        w.add_tensor(name, data)
    else:
        w.add_tensor(name, data, raw_shape=data.shape, raw_dtype=qtype)
    i = len(index)
    np.ascontiguousarray(back, dtype="<f4").tofile(os.path.join(ref, f"{i}.f32"))
    index.append({"name": name, "shape": list(values.shape), "type": int(qtype)})


for step in range(2):
    for layer in range(2):
        p = f"step{step}.layer{layer}"
        add(f"Q.{p}", rng.standard_normal((n_head, 1, head_dim)), GGMLQuantizationType.F32)
        add(f"K.{p}", rng.standard_normal((n_head, 1, head_dim)), GGMLQuantizationType.F16)
        add(f"V.{p}", rng.standard_normal((n_head, 1, head_dim)), GGMLQuantizationType.F16)
        add(f"K_quant.{p}", rng.standard_normal((n_kv, n_head, head_dim)), GGMLQuantizationType.Q8_0)
        add(f"V_quant.{p}", rng.standard_normal((n_kv, n_head, head_dim)), GGMLQuantizationType.Q4_0)

w.write_header_to_file()
w.write_kv_data_to_file()
w.write_tensors_to_file()
w.close()
with open(os.path.join(ref, "index.json"), "w") as f:
    json.dump(index, f)

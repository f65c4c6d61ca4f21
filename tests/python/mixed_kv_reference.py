"""Independent reference for the mixed KV cache test (tests/tests/mixed_kv.rs).

    python mixed_kv_reference.py QTYPE COLD.bin HOT_F16.bin N_COLD N_HOT N_HEAD HEAD_DIM PERMUTE OUT.f32

COLD.bin holds the quantized cold part as the engine stores it: positions
outermost, then heads, then head_dim (ggml ne=[head_dim, n_head, n_cold]);
HOT_F16.bin the f16 hot window in the same order. The logical tensor is
the cold part (dequantized by gguf-py) followed by the hot part along the
sequence axis; PERMUTE=1 turns [seq, head, dim] into [head, seq, dim] as
llama.cpp permutes K (ggml_permute(k, 0, 2, 1, 3)). Writes f32 LE.
"""
import sys

import numpy as np
from gguf import GGMLQuantizationType, quants

qtype, cold_path, hot_path = sys.argv[1], sys.argv[2], sys.argv[3]
n_cold, n_hot, n_head, head_dim, permute = (int(x) for x in sys.argv[4:9])
out_path = sys.argv[9]

t = GGMLQuantizationType[qtype.upper()]
raw = np.fromfile(cold_path, dtype=np.uint8)
cold = quants.dequantize(raw.reshape(n_cold, -1), t).reshape(n_cold, n_head, head_dim)
hot = np.fromfile(hot_path, dtype="<f2").astype(np.float32).reshape(n_hot, n_head, head_dim)
full = np.concatenate([cold, hot], axis=0)
if permute:
    full = full.transpose(1, 0, 2)
np.ascontiguousarray(full, dtype="<f4").tofile(out_path)

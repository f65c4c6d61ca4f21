//! The built-in example trace: one attention block's K cache as llama.cpp holds it.

use std::path::Path;

use anyhow::Result;
use trace_format::stats::compute_stats;
use trace_writer::{DType, Layout, Metadata, Op, TensorMeta, Writer};

const N_CTX: u64 = 32; // cache slots
const N_KV: u64 = 8; // slots in use
const N_HEAD: u64 = 4;
const HEAD_DIM: u64 = 16;

fn value(i: u64) -> f32 {
    ((i as f32) * 0.37).sin() * 0.5
}

/// Write the demo trace; returns the number of records.
pub fn write_demo(path: &Path) -> Result<u64> {
    let run = Metadata::new()
        .with("engine", "tracedump-demo")
        .with("model", "one attention block (n_head_kv=4, head_dim=16, n_ctx=32)")
        .with("engine_version", env!("CARGO_PKG_VERSION"));
    let w = Writer::create(path, run)?;
    let embd = N_HEAD * HEAD_DIM;

    // The K cache buffer: ggml ne=[n_embd_k_gqa=64, kv_size=32], f32, one storage.
    let cache: Vec<f32> = (0..N_CTX * embd).map(value).collect();
    let storage = w.add_storage("cache_k_l0", bytemuck::cast_slice(&cache))?;
    let full = Layout::contiguous(DType::F32, &[N_CTX, embd], 0)?;
    let cache_meta = TensorMeta::new().layer(0).role("k_cache").ggml_layout(&[embd as i64, N_CTX as i64, 1, 1], &[4, 256, 8192, 8192]);
    let cache_id = w.add_view("cache_k_l0", DType::F32, storage, &full, cache_meta)?.expect("no filter");

    // llama.cpp: ggml_view_3d(k, head_dim, n_head_kv, n_kv, nb1=64, nb2=256, 0) → ne=[16,4,8,1]
    let view = full.view(0, &[1, N_KV, N_HEAD, HEAD_DIM], &[2048, 256, 64, 4])?;
    // then ggml_permute(k, 0, 2, 1, 3) → ne=[16,8,4,1], nb=[4,256,64,2048]
    let axes = trace_format::layout::ggml::permute_axes(&[0, 2, 1, 3]).expect("valid permutation");
    let k = view.permute(&axes)?;
    let op_params: Vec<u8> = [0i32, 2, 1, 3].iter().flat_map(|v| v.to_le_bytes()).collect();
    let k_meta = TensorMeta::new()
        .layer(0)
        .step(0)
        .role("k")
        .parent(cache_id)
        .op(Op::View { offset: 0, shape: view.shape.clone(), byte_strides: view.byte_strides.clone() })
        .op(Op::Permute { axes: axes.clone() })
        .engine_op("ggml", "PERMUTE", &op_params)
        .ggml_layout(&[16, 8, 4, 1], &[4, 256, 64, 2048]);
    let k_id = w.add_view("k-0", DType::F32, storage, &k, k_meta)?.expect("no filter");

    // flash attention takes K as f16: CPY f32 → f16, contiguous
    let k_values: Vec<f32> = {
        let mut v = Vec::new();
        for h in 0..N_HEAD {
            for t in 0..N_KV {
                for d in 0..HEAD_DIM {
                    v.push(cache[(t * embd + h * HEAD_DIM + d) as usize]);
                }
            }
        }
        v
    };
    let k16: Vec<u16> = k_values.iter().map(|&x| half::f16::from_f32(x).to_bits()).collect();
    let cpy_meta = TensorMeta::new()
        .layer(0)
        .step(0)
        .role("k")
        .parent(k_id)
        .op(Op::Convert { dtype: DType::F16 })
        .engine_op("ggml", "CPY", &[])
        .ggml_layout(&[16, 8, 4, 1], &[2, 32, 256, 1024]);
    w.add_tensor("k-0 (copy)", DType::F16, &[1, N_HEAD, N_KV, HEAD_DIM], bytemuck::cast_slice(&k16), cpy_meta)?;

    // Q for the same step, contiguous f32 [1, n_head, n_tokens=8, head_dim]
    let q: Vec<f32> = (0..N_HEAD * N_KV * HEAD_DIM).map(|i| value(i + 1000)).collect();
    let q_meta = TensorMeta::new().layer(0).step(0).role("q").ggml_layout(&[16, 8, 4, 1], &[4, 64, 512, 2048]);
    let q_id = w.add_tensor("Qcur-0", DType::F32, &[1, N_HEAD, N_KV, HEAD_DIM], bytemuck::cast_slice(&q), q_meta)?.expect("no filter");

    // softmax(Q·Kᵀ / sqrt(d)) recorded as statistics only
    let scale = 1.0 / (HEAD_DIM as f32).sqrt();
    let mut kq = Vec::with_capacity((N_HEAD * N_KV * N_KV) as usize);
    for h in 0..N_HEAD {
        for i in 0..N_KV {
            let row: Vec<f32> = (0..N_KV)
                .map(|j| {
                    (0..HEAD_DIM)
                        .map(|d| q[((h * N_KV + i) * HEAD_DIM + d) as usize] * k_values[((h * N_KV + j) * HEAD_DIM + d) as usize])
                        .sum::<f32>()
                        * scale
                })
                .collect();
            let m = row.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
            let e: Vec<f32> = row.iter().map(|x| (x - m).exp()).collect();
            let s: f32 = e.iter().sum();
            kq.extend(e.iter().map(|x| x / s));
        }
    }
    let stats = compute_stats(DType::F32, bytemuck::cast_slice(&kq)).expect("f32 stats");
    let kq_meta = TensorMeta::new().layer(0).step(0).role("kq").parent(q_id).parent(k_id).engine_op("ggml", "SOFT_MAX", &[]);
    w.add_stats("kq_soft_max-0", DType::F32, &[1, N_HEAD, N_KV, N_KV], stats, kq_meta)?;

    Ok(w.finish()?.records)
}

//! The built-in example: a tiny 4-layer llama-style model run twice.
//!
//! Run A (`OUT`) is "the custom backend": it keeps each layer's K cache as
//! one f32 storage and records K as llama.cpp does (`view → permute(0,2,1,3)
//! → cpy f16`), stores Q in f16, records the attention softmax as statistics
//! only, and has a planted bug: layer 2's FFN RMSNorm uses eps = 1e-1
//! instead of 1e-5. Run B (`<stem>.reference.tdump`) is the f32 reference
//! with every tensor contiguous. `tracedump diff A B` finds `ffn_norm-2`.

use std::path::{Path, PathBuf};

use crate::ToolsError;
use trace_format::stats::compute_stats;
use trace_writer::{DType, Layout, Metadata, Op, TensorMeta, Writer};

type Result<T, E = ToolsError> = std::result::Result<T, E>;

const N_LAYER: usize = 4;
const N_EMBD: usize = 64;
const N_HEAD: usize = 4;
const HEAD_DIM: usize = N_EMBD / N_HEAD;
const N_FF: usize = 128;
const N_VOCAB: usize = 256;
const N_TOK: usize = 8;
const N_CTX: usize = 32;
const TOKENS: [usize; N_TOK] = [1, 15043, 29892, 920, 526, 366, 29973, 13];
const BUGGY_LAYER: usize = 2;

/// Deterministic weights in [-1, 1) / sqrt(fan_in).
fn weights(seed: u64, n: usize, fan_in: usize) -> Vec<f32> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let scale = 1.0 / (fan_in as f32).sqrt();
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            ((s >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0) * scale
        })
        .collect()
}

/// y[t][o] = Σ_i x[t][i] · w[o][i]  (x: [N_TOK, n_in], w: [n_out, n_in])
fn matmul(x: &[f32], w: &[f32], n_in: usize, n_out: usize) -> Vec<f32> {
    let mut y = vec![0.0; N_TOK * n_out];
    for t in 0..N_TOK {
        for o in 0..n_out {
            y[t * n_out + o] = (0..n_in).map(|i| x[t * n_in + i] * w[o * n_in + i]).sum();
        }
    }
    y
}

fn rms_norm(x: &[f32], eps: f32) -> Vec<f32> {
    x.chunks(N_EMBD)
        .flat_map(|row| {
            let ms = row.iter().map(|v| v * v).sum::<f32>() / N_EMBD as f32;
            let k = 1.0 / (ms + eps).sqrt();
            row.iter().map(move |v| v * k).collect::<Vec<_>>()
        })
        .collect()
}

fn silu(x: f32) -> f32 {
    x / (1.0 + (-x).exp())
}

/// Which run to write.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Run {
    /// The backend under test: real layouts, f16 copies, the planted bug.
    Test,
    /// The f32 reference, every tensor contiguous.
    Reference,
}

/// Where the reference run goes for a demo written to `out`.
pub fn reference_path(out: &Path) -> PathBuf {
    let stem = out.file_stem().and_then(|s| s.to_str()).unwrap_or("demo");
    out.with_file_name(format!("{stem}.reference.tdump"))
}

/// Write both runs; returns the paths and record counts.
pub fn write_demo(out: &Path) -> Result<Vec<(PathBuf, u64)>> {
    let reference = reference_path(out);
    Ok(vec![
        (out.to_path_buf(), write_run(out, Run::Test)?),
        (reference.clone(), write_run(&reference, Run::Reference)?),
    ])
}

fn ggml_2d(ne0: usize, ne1: usize, elem: u64) -> TensorMeta {
    let nb1 = ne0 as u64 * elem;
    TensorMeta::new().ggml_layout(
        &[ne0 as i64, ne1 as i64, 1, 1],
        &[elem, nb1, nb1 * ne1 as u64, nb1 * ne1 as u64],
    )
}

/// The eps of an RMSNorm: the backend under test has its planted bug here.
fn norm_eps(run: Run, layer: Option<usize>, role: &str) -> f64 {
    if run == Run::Test && layer == Some(BUGGY_LAYER) && role == "ffn_norm" {
        1e-1
    } else {
        1e-5
    }
}

fn write_run(path: &Path, run: Run) -> Result<u64> {
    let engine = match run {
        Run::Test => "tracedump-demo (custom backend, planted bug in layer 2)",
        Run::Reference => "tracedump-demo (f32 reference)",
    };
    let meta = Metadata::new()
        .with("engine", engine)
        .with(
            "model",
            "tiny-llama: 4 layers, n_embd 64, 4 heads of 16, n_ff 128, vocab 256",
        )
        .with("n_tokens", N_TOK as u64)
        .with("engine_version", env!("CARGO_PKG_VERSION"));
    let w = Writer::create(path, meta)?;
    let f32s = |v: &[f32]| -> Vec<u8> { bytemuck::cast_slice(v).to_vec() };
    // each activation records the tensors it was computed from, so that
    // `diff` can blame the op that made a divergence (trace_tools::blame)
    let act = |name: &str,
               layer: Option<usize>,
               role: &str,
               v: &[f32],
               cols: usize,
               parents: &[Option<u64>]|
     -> Result<Option<u64>> {
        let inputs: Vec<u64> = parents.iter().flatten().copied().collect();
        let op = match role {
            "embedding" => "get_rows",
            "attn_norm" | "ffn_norm" | "result_norm" => "rms_norm",
            "ffn_inp" | "l_out" => "add",
            "ffn_silu" => "silu",
            _ => "mul_mat",
        };
        let mut m = ggml_2d(cols, N_TOK, 4)
            .role(role)
            .step(0)
            .computed_from(op, &inputs);
        if op == "rms_norm" {
            m = m.op_param("eps", norm_eps(run, layer, role));
        }
        if let Some(l) = layer {
            m = m.layer(l as i64);
        }
        Ok(w.add_tensor(name, DType::F32, &[N_TOK as u64, cols as u64], &f32s(v), m)?)
    };

    let emb = weights(1, N_VOCAB * N_EMBD, 1);
    let mut x: Vec<f32> = TOKENS
        .iter()
        .flat_map(|&t| emb[(t % N_VOCAB) * N_EMBD..][..N_EMBD].to_vec())
        .collect();
    let mut x_id = act("inp_embd", None, "embedding", &x, N_EMBD, &[])?;

    for l in 0..N_LAYER {
        let seed = 100 * (l as u64 + 1);
        let (wq, wk, wv, wo) = (
            weights(seed + 1, N_EMBD * N_EMBD, N_EMBD),
            weights(seed + 2, N_EMBD * N_EMBD, N_EMBD),
            weights(seed + 3, N_EMBD * N_EMBD, N_EMBD),
            weights(seed + 4, N_EMBD * N_EMBD, N_EMBD),
        );
        let (wg, wu, wd) = (
            weights(seed + 5, N_FF * N_EMBD, N_EMBD),
            weights(seed + 6, N_FF * N_EMBD, N_EMBD),
            weights(seed + 7, N_EMBD * N_FF, N_FF),
        );

        let h = rms_norm(&x, 1e-5);
        let h_id = act(
            &format!("attn_norm-{l}"),
            Some(l),
            "attn_norm",
            &h,
            N_EMBD,
            &[x_id],
        )?;
        let (q, k, v) = (
            matmul(&h, &wq, N_EMBD, N_EMBD),
            matmul(&h, &wk, N_EMBD, N_EMBD),
            matmul(&h, &wv, N_EMBD, N_EMBD),
        );
        let q_id = if run == Run::Test {
            // the backend keeps Q in f16
            let q16: Vec<u16> = q
                .iter()
                .map(|&v| half::f16::from_f32(v).to_bits())
                .collect();
            let mut m = ggml_2d(N_EMBD, N_TOK, 2).layer(l as i64).step(0).role("q");
            m.lineage.parents.extend(h_id);
            w.add_tensor(
                &format!("Qcur-{l}"),
                DType::F16,
                &[N_TOK as u64, N_EMBD as u64],
                bytemuck::cast_slice(&q16),
                m,
            )?
        } else {
            act(&format!("Qcur-{l}"), Some(l), "q", &q, N_EMBD, &[h_id])?
        };
        let v_id = act(&format!("Vcur-{l}"), Some(l), "v", &v, N_EMBD, &[h_id])?;

        // K per head, [n_head, n_tok, head_dim], the layout attention reads
        let k_heads: Vec<f32> = (0..N_HEAD)
            .flat_map(|hd| (0..N_TOK).flat_map(move |t| (0..HEAD_DIM).map(move |d| (hd, t, d))))
            .map(|(hd, t, d)| k[t * N_EMBD + hd * HEAD_DIM + d])
            .collect();
        let k_shape = [1, N_HEAD as u64, N_TOK as u64, HEAD_DIM as u64];
        let k_id = match run {
            Run::Test => Some(record_k_cache(&w, l, &k)?),
            Run::Reference => {
                let mut m = TensorMeta::new().layer(l as i64).step(0).role("k");
                m.lineage.parents.extend(h_id);
                w.add_tensor(&format!("k-{l}"), DType::F32, &k_shape, &f32s(&k_heads), m)?
            }
        };

        // causal attention
        let scale = 1.0 / (HEAD_DIM as f32).sqrt();
        let mut kq = Vec::with_capacity(N_HEAD * N_TOK * N_TOK);
        let mut kqv = vec![0.0f32; N_TOK * N_EMBD];
        for hd in 0..N_HEAD {
            for i in 0..N_TOK {
                let s: Vec<f32> = (0..N_TOK)
                    .map(|j| {
                        if j > i {
                            f32::NEG_INFINITY
                        } else {
                            (0..HEAD_DIM)
                                .map(|d| {
                                    q[i * N_EMBD + hd * HEAD_DIM + d]
                                        * k[j * N_EMBD + hd * HEAD_DIM + d]
                                })
                                .sum::<f32>()
                                * scale
                        }
                    })
                    .collect();
                let mx = s.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
                let e: Vec<f32> = s.iter().map(|x| (x - mx).exp()).collect();
                let sum: f32 = e.iter().sum();
                for (j, ej) in e.iter().enumerate() {
                    let p = ej / sum;
                    kq.push(p);
                    for d in 0..HEAD_DIM {
                        kqv[i * N_EMBD + hd * HEAD_DIM + d] +=
                            p * v[j * N_EMBD + hd * HEAD_DIM + d];
                    }
                }
            }
        }
        let kq_shape = [1, N_HEAD as u64, N_TOK as u64, N_TOK as u64];
        let kq_bytes = f32s(&kq);
        let mut kq_meta = TensorMeta::new()
            .layer(l as i64)
            .step(0)
            .role("kq")
            .engine_op("ggml", "SOFT_MAX", &[]);
        kq_meta.lineage.parents.extend(q_id.into_iter().chain(k_id));
        let kq_id = match run {
            Run::Test => {
                let stats = compute_stats(DType::F32, &kq_bytes).expect("f32 stats");
                w.add_stats(
                    &format!("kq_soft_max-{l}"),
                    DType::F32,
                    &kq_shape,
                    stats,
                    kq_meta,
                )?
            }
            Run::Reference => w.add_tensor(
                &format!("kq_soft_max-{l}"),
                DType::F32,
                &kq_shape,
                &kq_bytes,
                kq_meta,
            )?,
        };
        let kqv_id = act(
            &format!("kqv_out-{l}"),
            Some(l),
            "kqv_out",
            &kqv,
            N_EMBD,
            &[kq_id, v_id],
        )?;
        let attn_out = matmul(&kqv, &wo, N_EMBD, N_EMBD);
        let attn_out_id = act(
            &format!("attn_out-{l}"),
            Some(l),
            "attn_out",
            &attn_out,
            N_EMBD,
            &[kqv_id],
        )?;
        let ffn_inp: Vec<f32> = attn_out.iter().zip(&x).map(|(a, b)| a + b).collect();
        let ffn_inp_id = act(
            &format!("ffn_inp-{l}"),
            Some(l),
            "ffn_inp",
            &ffn_inp,
            N_EMBD,
            &[attn_out_id, x_id],
        )?;
        let hn = rms_norm(&ffn_inp, norm_eps(run, Some(l), "ffn_norm") as f32);
        let hn_id = act(
            &format!("ffn_norm-{l}"),
            Some(l),
            "ffn_norm",
            &hn,
            N_EMBD,
            &[ffn_inp_id],
        )?;
        let gate = matmul(&hn, &wg, N_EMBD, N_FF);
        let up = matmul(&hn, &wu, N_EMBD, N_FF);
        let gate_id = act(
            &format!("ffn_gate-{l}"),
            Some(l),
            "ffn_gate",
            &gate,
            N_FF,
            &[hn_id],
        )?;
        let up_id = act(
            &format!("ffn_up-{l}"),
            Some(l),
            "ffn_up",
            &up,
            N_FF,
            &[hn_id],
        )?;
        let act_v: Vec<f32> = gate.iter().map(|&g| silu(g)).collect();
        let silu_id = act(
            &format!("ffn_silu-{l}"),
            Some(l),
            "ffn_silu",
            &act_v,
            N_FF,
            &[gate_id],
        )?;
        let par: Vec<f32> = act_v.iter().zip(&up).map(|(a, b)| a * b).collect();
        let down = matmul(&par, &wd, N_FF, N_EMBD);
        let down_id = act(
            &format!("ffn_out-{l}"),
            Some(l),
            "ffn_out",
            &down,
            N_EMBD,
            &[silu_id, up_id],
        )?;
        x = down.iter().zip(&ffn_inp).map(|(a, b)| a + b).collect();
        x_id = act(
            &format!("l_out-{l}"),
            Some(l),
            "l_out",
            &x,
            N_EMBD,
            &[down_id, ffn_inp_id],
        )?;
    }
    let norm = rms_norm(&x, 1e-5);
    let norm_id = act("result_norm", None, "result_norm", &norm, N_EMBD, &[x_id])?;
    let logits = matmul(
        &norm,
        &weights(9, N_VOCAB * N_EMBD, N_EMBD),
        N_EMBD,
        N_VOCAB,
    );
    act(
        "result_output",
        None,
        "logits",
        &logits,
        N_VOCAB,
        &[norm_id],
    )?;
    Ok(w.finish()?.records)
}

/// The backend's K cache for layer `l`, as llama.cpp holds and reads it:
/// one f32 storage `cache_k_l{l}` (ggml ne=[n_embd, n_ctx]), a view of its
/// first tokens permuted to [1, n_head, n_tok, head_dim], and the f16 copy
/// flash attention takes. Returns the id of the permuted view `k-{l}`.
fn record_k_cache(w: &Writer, l: usize, k: &[f32]) -> Result<u64> {
    let mut cache = vec![0.0f32; N_CTX * N_EMBD];
    cache[..k.len()].copy_from_slice(k);
    let storage = w.add_storage(&format!("cache_k_l{l}"), bytemuck::cast_slice(&cache))?;
    let full = Layout::contiguous(DType::F32, &[N_CTX as u64, N_EMBD as u64], 0)?;
    let cache_meta = ggml_2d(N_EMBD, N_CTX, 4).layer(l as i64).role("k_cache");
    let cache_id = w
        .add_view(
            &format!("cache_k_l{l}"),
            DType::F32,
            storage,
            &full,
            cache_meta,
        )?
        .expect("no filter");

    // ggml_view_3d(k, head_dim, n_head, n_kv, nb1=64, nb2=256, 0) → ne=[16,4,8,1]
    let view = full.view(
        0,
        &[1, N_TOK as u64, N_HEAD as u64, HEAD_DIM as u64],
        &[
            (N_TOK * N_EMBD * 4) as i64,
            (N_EMBD * 4) as i64,
            (HEAD_DIM * 4) as i64,
            4,
        ],
    )?;
    // ggml_permute(k, 0, 2, 1, 3) → ne=[16,8,4,1], nb=[4,256,64,2048]
    let axes = trace_format::layout::ggml::permute_axes(&[0, 2, 1, 3]).expect("a permutation");
    let permuted = view.permute(&axes)?;
    let op_params: Vec<u8> = [0i32, 2, 1, 3]
        .iter()
        .flat_map(|v| v.to_le_bytes())
        .collect();
    let (ne, nb) =
        trace_format::layout::ggml::from_canonical(&permuted, 4).expect("positive strides");
    let k_meta = TensorMeta::new()
        .layer(l as i64)
        .step(0)
        .role("k")
        .parent(cache_id)
        .op(Op::View {
            offset: 0,
            shape: view.shape().to_vec(),
            byte_strides: view.byte_strides().to_vec(),
        })
        .op(Op::Permute { axes })
        .engine_op("ggml", "PERMUTE", &op_params)
        .ggml_layout(&ne, &nb);
    let k_id = w
        .add_view(&format!("k-{l}"), DType::F32, storage, &permuted, k_meta)?
        .expect("no filter");

    // flash attention takes K as f16: CPY f32 → f16, contiguous
    let k16: Vec<u16> = (0..N_HEAD)
        .flat_map(|hd| (0..N_TOK).flat_map(move |t| (0..HEAD_DIM).map(move |d| (hd, t, d))))
        .map(|(hd, t, d)| half::f16::from_f32(k[t * N_EMBD + hd * HEAD_DIM + d]).to_bits())
        .collect();
    let copy = Layout::contiguous(DType::F16, permuted.shape(), 0)?;
    let (ne, nb) = trace_format::layout::ggml::from_canonical(&copy, 4).expect("positive strides");
    let cpy_meta = TensorMeta::new()
        .layer(l as i64)
        .step(0)
        .role("k")
        .parent(k_id)
        .op(Op::Convert { dtype: DType::F16 })
        .engine_op("ggml", "CPY", &[])
        .ggml_layout(&ne, &nb);
    w.add_tensor(
        &format!("k-{l} (copy)"),
        DType::F16,
        permuted.shape(),
        bytemuck::cast_slice(&k16),
        cpy_meta,
    )?;
    Ok(k_id)
}

//! Dequantization throughput per ggml type, ours (one thread) against
//! gguf-py's numpy dequantization of the same blocks, in the same run.

#![forbid(unsafe_code)]

use std::path::Path;
use std::time::{Duration, Instant};

use trace_writer::DType;

use crate::{python_figure, Res, Row};

/// The types gguf-py decodes, and where each block keeps its scales, so the
/// random blocks get ordinary (normal, finite) scales: `(offset, kind)`
/// with kind 0 = f16, 1 = e8m0 byte.
const TYPES: &[(DType, &[(usize, u8)])] = &[
    (DType::Q4_0, &[(0, 0)]),
    (DType::Q4_1, &[(0, 0), (2, 0)]),
    (DType::Q5_0, &[(0, 0)]),
    (DType::Q5_1, &[(0, 0), (2, 0)]),
    (DType::Q8_0, &[(0, 0)]),
    (DType::Q2_K, &[(80, 0), (82, 0)]),
    (DType::Q3_K, &[(108, 0)]),
    (DType::Q4_K, &[(0, 0), (2, 0)]),
    (DType::Q5_K, &[(0, 0), (2, 0)]),
    (DType::Q6_K, &[(208, 0)]),
    (DType::IQ4_NL, &[(0, 0)]),
    (DType::IQ4_XS, &[(0, 0)]),
    (DType::MXFP4, &[(0, 1)]),
];

fn blocks(dtype: DType, scales: &[(usize, u8)], values: usize) -> Vec<u8> {
    let n = values / dtype.block_elems() as usize;
    let bb = dtype.block_bytes() as usize;
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut out: Vec<u8> = (0..n * bb)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect();
    for (i, b) in out.chunks_exact_mut(bb).enumerate() {
        for &(at, kind) in scales {
            if kind == 0 {
                // f16 in [2^-10, 2^-3): normal, finite
                let h = 0x1400u16 + ((i as u16).wrapping_mul(37) & 0x1fff);
                b[at..at + 2].copy_from_slice(&h.to_le_bytes());
            } else {
                b[at] = 120 + (i % 8) as u8;
            }
        }
    }
    out
}

/// One row per type: GB/s of f32 output, ours and gguf-py's.
pub fn rows(dir: &Path, values: usize, repeat: usize) -> Res<Vec<Row>> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/python/gguf_reference.py");
    let mut rows = Vec::new();
    for &(dtype, scales) in TYPES {
        let raw = blocks(dtype, scales, values);
        let mut out = vec![0f32; values];
        let mut ours = f64::INFINITY;
        for _ in 0..repeat.max(3) {
            let t = Instant::now();
            trace_quant::dequantize(dtype, &raw, &mut out)?;
            ours = ours.min(t.elapsed().as_secs_f64());
            std::hint::black_box(&out);
        }
        let file = dir.join(format!("{}.bin", dtype.name()));
        std::fs::write(&file, &raw)?;
        let theirs = python_figure(
            &script,
            &[
                "bench",
                &dtype.name().to_uppercase(),
                &file.to_string_lossy(),
                &repeat.to_string(),
            ],
        )?;
        let gb = |s: f64| (values * 4) as f64 / s / 1e9;
        let row = Row::rate(
            "dequantize",
            format!("dequantize {dtype} -> f32 (1 thread)"),
            values * 4,
            Duration::from_secs_f64(ours),
        )
        .vs("gguf-py (numpy)", gb(theirs));
        // every type carries the goal (>= 20x gguf-py; and ours: >= 1 GB/s)
        let mut row = row.goal_ratio(20.0, Some(">= 20x, and >= 1 GB/s (ours)"));
        row.ok = row.ok.map(|ok| ok && row.ours >= 1.0);
        rows.push(row);
    }
    Ok(rows)
}

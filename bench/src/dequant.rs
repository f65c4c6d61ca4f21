//! Dequantization throughput per ggml type, ours (one thread) against
//! gguf-py's numpy dequantization of the same blocks, in the same run.

#![forbid(unsafe_code)]

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use trace_writer::DType;

use crate::{gbps, interleaved, python, Res, Row, Stat};

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

/// One row per type: GB/s of f32 output, ours and gguf-py's, each round
/// one call of each in a random order (gguf-py in one `serve` process of
/// `tests/python/gguf_reference.py` for the whole part).
pub fn rows(dir: &Path, values: usize, repeat: usize) -> Res<Vec<Row>> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/python/gguf_reference.py");
    let mut child = Command::new(python())
        .arg(&script)
        .arg("serve")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot run {} ({e})", python().display()))?;
    let mut out = BufReader::new(child.stdout.take().ok_or("no stdout")?);
    let mut rows = Vec::new();
    let rounds = repeat.max(3);
    for &(dtype, scales) in TYPES {
        let raw = blocks(dtype, scales, values);
        let file = dir.join(format!("{}.bin", dtype.name()));
        std::fs::write(&file, &raw)?;
        let request = format!("{} {}\n", dtype.name().to_uppercase(), file.display());
        let mut out_f32 = vec![0f32; values];
        let mut ours = |_: usize| -> Res<Duration> {
            let t = Instant::now();
            trace_quant::dequantize(dtype, &raw, &mut out_f32)?;
            let took = t.elapsed();
            std::hint::black_box(&out_f32);
            Ok(took)
        };
        let mut theirs = |_: usize| -> Res<Duration> {
            let stdin = child.stdin.as_mut().ok_or("no stdin")?;
            stdin.write_all(request.as_bytes())?;
            stdin.flush()?;
            let mut line = String::new();
            if out.read_line(&mut line)? == 0 {
                return Err(format!("{} serve exited early", script.display()).into());
            }
            Ok(Duration::from_secs_f64(line.trim().parse()?))
        };
        let [ours, theirs] = interleaved(rounds, &mut [&mut ours, &mut theirs])?;
        std::fs::remove_file(&file)?;
        let bytes = values * 4;
        let row = Row::rate(
            "dequantize",
            format!("dequantize {dtype} -> f32 (1 thread)"),
            bytes,
            &ours,
        )
        .vs(
            "gguf-py quants.dequantize, rows of 4096 values (numpy)",
            Stat::of(&theirs, |d| gbps(bytes, d)),
        );
        // every type carries the goal (>= 20x gguf-py; and ours: >= 1 GB/s)
        let mut row = row.goal_ratio(20.0, Some(">= 20x, and >= 1 GB/s (ours)"));
        row.ok = row.ok.map(|ok| ok && row.ours >= 1.0);
        rows.push(row);
    }
    drop(child.stdin.take());
    let status = child.wait()?;
    if !status.success() {
        return Err(format!("{} serve failed: {status}", script.display()).into());
    }
    Ok(rows)
}

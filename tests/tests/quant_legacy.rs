//! trace-quant's 32-value block types against gguf-py (`gguf.quants`), bit for
//! bit: random blocks with special scales dequantized by both sides, and
//! random, degenerate and tie-breaking values quantized to Q8_0 and Q4_0 by
//! both sides.

#![forbid(unsafe_code)]

use std::path::Path;

use trace_format::DType;
use tracedump_tests::{run_python, Rng};

/// Blocks per type and test.
const BLOCKS: usize = 4096;

/// f16 scale (and min) bit patterns written over some blocks: zero, negative
/// zero, smallest and largest subnormal, -1, largest finite, its negation,
/// and the non-finite ones.
const F16_SPECIALS: [u16; 10] = [
    0x0000, 0x8000, 0x0001, 0x03ff, 0xbc00, 0x7bff, 0xfbff, 0x7c00, 0xfc00, 0x7e00,
];

/// MXFP4 exponent bytes written over some blocks: both subnormal scales, the
/// first normal one, 2^-1, and the two largest.
const E8M0_SPECIALS: [u8; 6] = [0, 1, 2, 127, 254, 255];

fn write(path: &Path, bytes: &[u8]) {
    std::fs::write(path, bytes).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
}

fn f32s(bytes: &[u8]) -> Vec<f32> {
    bytes
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

/// gguf-py's dequantization of `blocks` as the type gguf-py calls `name`.
fn gguf_dequant(name: &str, blocks: &[u8]) -> Vec<f32> {
    let dir = tempfile::tempdir().unwrap();
    let (inp, outp) = (dir.path().join("in.bin"), dir.path().join("out.f32"));
    write(&inp, blocks);
    run_python("gguf_reference.py", &[&"dequant", &name, &inp, &outp]);
    f32s(&std::fs::read(&outp).unwrap())
}

/// gguf-py's quantization of `values` to the type gguf-py calls `name`.
fn gguf_quant(name: &str, values: &[f32]) -> Vec<u8> {
    let dir = tempfile::tempdir().unwrap();
    let (inp, outp) = (dir.path().join("in.f32"), dir.path().join("out.bin"));
    let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
    write(&inp, &bytes);
    run_python("gguf_reference.py", &[&"quant", &name, &inp, &outp]);
    std::fs::read(&outp).unwrap()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Equal bits, or both NaN.
fn same(a: f32, b: f32) -> bool {
    a.to_bits() == b.to_bits() || (a.is_nan() && b.is_nan())
}

/// Panics at the first value whose bits differ, naming block and element.
fn assert_same_f32(what: &str, dtype: DType, blocks: &[u8], ours: &[f32], theirs: &[f32]) {
    assert_eq!(ours.len(), theirs.len(), "{what}: value counts differ");
    let bb = dtype.block_bytes() as usize;
    let be = dtype.block_elems() as usize;
    if let Some(i) = (0..ours.len()).find(|&i| !same(ours[i], theirs[i])) {
        let (blk, el) = (i / be, i % be);
        panic!(
            "{what}: block {blk} element {el}: ours {} ({:#010x}), gguf-py {} ({:#010x}); block bytes {}",
            ours[i],
            ours[i].to_bits(),
            theirs[i],
            theirs[i].to_bits(),
            hex(&blocks[blk * bb..(blk + 1) * bb])
        );
    }
}

/// `BLOCKS` random blocks of `dtype`; every fourth has its scale (at byte 0)
/// and, when `min_at` is given, its min replaced by special values, cycling
/// through all pairs.
fn random_blocks(dtype: DType, seed: u64, min_at: Option<usize>) -> Vec<u8> {
    let bb = dtype.block_bytes() as usize;
    let mut rng = Rng::new(seed);
    let mut blocks = rng.bytes(BLOCKS * bb);
    for (i, b) in blocks.chunks_exact_mut(bb).enumerate() {
        if i % 4 != 0 {
            continue;
        }
        let k = i / 4;
        if dtype == DType::MXFP4 {
            b[0] = E8M0_SPECIALS[k % E8M0_SPECIALS.len()];
            continue;
        }
        let n = F16_SPECIALS.len();
        b[..2].copy_from_slice(&F16_SPECIALS[k % n].to_le_bytes());
        if let Some(m) = min_at {
            b[m..m + 2].copy_from_slice(&F16_SPECIALS[(k / n) % n].to_le_bytes());
        }
    }
    blocks
}

fn check_dequant(dtype: DType, gguf_name: &str, seed: u64, min_at: Option<usize>) {
    let blocks = random_blocks(dtype, seed, min_at);
    let ours = trace_quant::dequantize_to_vec(dtype, &blocks).unwrap();
    let theirs = gguf_dequant(gguf_name, &blocks);
    assert_eq!(ours.len(), BLOCKS * 32);
    assert_same_f32(gguf_name, dtype, &blocks, &ours, &theirs);
}

#[test]
fn q4_0_dequant_matches_gguf_py() {
    check_dequant(DType::Q4_0, "Q4_0", 40, None);
}

#[test]
fn q4_1_dequant_matches_gguf_py() {
    check_dequant(DType::Q4_1, "Q4_1", 41, Some(2));
}

#[test]
fn q5_0_dequant_matches_gguf_py() {
    check_dequant(DType::Q5_0, "Q5_0", 50, None);
}

#[test]
fn q5_1_dequant_matches_gguf_py() {
    check_dequant(DType::Q5_1, "Q5_1", 51, Some(2));
}

#[test]
fn q8_0_dequant_matches_gguf_py() {
    check_dequant(DType::Q8_0, "Q8_0", 80, None);
}

#[test]
fn iq4_nl_dequant_matches_gguf_py() {
    check_dequant(DType::IQ4_NL, "IQ4_NL", 20, None);
}

#[test]
fn mxfp4_dequant_matches_gguf_py() {
    check_dequant(DType::MXFP4, "MXFP4", 39, None);
}

/// gguf-py does not decode Q8_1; ggml's `block_q8_1` is `{f16 d, f16 s,
/// int8 qs[32]}` with value `d * q`, which is Q8_0's `{f16 d, int8 qs[32]}`
/// with `s` dropped. So gguf-py's Q8_0 of the same `d` and `qs` is the reference.
#[test]
fn q8_1_dequant_matches_gguf_py_q8_0_of_the_same_quants() {
    let blocks = random_blocks(DType::Q8_1, 81, None);
    let as_q8_0: Vec<u8> = blocks
        .chunks_exact(36)
        .flat_map(|b| b[..2].iter().chain(&b[4..]).copied())
        .collect();
    let ours = trace_quant::dequantize_to_vec(DType::Q8_1, &blocks).unwrap();
    let theirs = gguf_dequant("Q8_0", &as_q8_0);
    assert_same_f32("Q8_1 (as Q8_0)", DType::Q8_1, &blocks, &ours, &theirs);
}

/// `2^e` as f64 times `v`, rounded once to f32 (reaches f32 subnormals).
fn scaled(v: f32, e: i32) -> f32 {
    (f64::from(v) * 2f64.powi(e)) as f32
}

/// How the blocks of the quantization tests are made, one kind per block in turn.
const VALUE_KINDS: usize = 16;

/// One block of 32 values of kind `kind`.
fn value_block(rng: &mut Rng, kind: usize) -> [f32; 32] {
    let mut x = [0.0f32; 32];
    let below = |rng: &mut Rng, n: u64| (rng.next_u64() % n) as usize;
    match kind {
        // Uniform at a random scale around 1.
        0 | 1 => {
            let e = below(rng, 49) as i32 - 24;
            x.iter_mut()
                .for_each(|v| *v = scaled(rng.f32_in(-1.0, 1.0), e));
        }
        // f16-subnormal and f16-underflowing scales.
        2 => {
            let e = below(rng, 24) as i32 - 34;
            x.iter_mut()
                .for_each(|v| *v = scaled(rng.f32_in(-1.0, 1.0), e));
        }
        // f32 subnormals: 1/d overflows to infinity.
        3 => {
            let e = below(rng, 40) as i32 - 150;
            x.iter_mut()
                .for_each(|v| *v = scaled(rng.f32_in(-1.0, 1.0), e));
        }
        // Huge: d overflows f16, values near f32::MAX.
        4 => {
            let e = below(rng, 28) as i32 + 100;
            x.iter_mut()
                .for_each(|v| *v = scaled(rng.f32_in(-1.0, 1.0), e));
        }
        // All zeros, all negative zeros, mixed signs of zero.
        5 => {}
        6 => x = [-0.0; 32],
        7 => x
            .iter_mut()
            .for_each(|v| *v = if rng.next_u64() & 1 == 1 { -0.0 } else { 0.0 }),
        // A single large value, either sign, among small ones.
        8 => {
            x.iter_mut().for_each(|v| *v = rng.f32_in(-1e-3, 1e-3));
            let big = rng.f32_in(1.0, 1e4);
            x[below(rng, 32)] = if rng.next_u64() & 1 == 1 { -big } else { big };
        }
        // A negative maximum, sometimes tied with a positive one (the first wins).
        9 => {
            x.iter_mut().for_each(|v| *v = rng.f32_in(-1.0, 1.0));
            let m = rng.f32_in(1.0, 8.0);
            x[below(rng, 32)] = -m;
            if rng.next_u64() & 1 == 1 {
                x[below(rng, 32)] = m;
            }
        }
        // Q8_0 ties: max 127 s makes d = s and id = 1/s exact, so x * id = k + 0.5.
        10 => {
            let s = scaled(1.0, below(rng, 21) as i32 - 10);
            x.iter_mut()
                .for_each(|v| *v = (below(rng, 254) as f32 - 127.0 + 0.5) * s);
            x[below(rng, 32)] = if rng.next_u64() & 1 == 1 {
                -127.0 * s
            } else {
                127.0 * s
            };
        }
        // Q4_0 ties: max -8 s makes d = s, id = 1/s, so x * id + 8.5 lands on integers and halves.
        11 => {
            let s = scaled(1.0, below(rng, 21) as i32 - 10);
            x.iter_mut()
                .for_each(|v| *v = (below(rng, 32) as f32 / 2.0 - 8.0) * s);
            x[below(rng, 32)] = if rng.next_u64() & 1 == 1 {
                -8.0 * s
            } else {
                8.0 * s
            };
        }
        // Small integers: many ties for the maximum.
        12 => x.iter_mut().for_each(|v| *v = below(rng, 41) as f32 - 20.0),
        // Any finite f32 bit pattern.
        13 => x.iter_mut().for_each(|v| {
            *v = loop {
                let f = f32::from_bits(rng.next_u64() as u32);
                if f.is_finite() {
                    break f;
                }
            }
        }),
        // Non-finite values: an infinity or a (quiet) NaN somewhere in a normal block.
        14 => {
            x.iter_mut().for_each(|v| *v = rng.f32_in(-1.0, 1.0));
            let special = [f32::INFINITY, f32::NEG_INFINITY, f32::NAN, -f32::NAN][below(rng, 4)];
            x[below(rng, 32)] = special;
        }
        // Values right at the float32 rounding edges of 0.5.
        _ => {
            let s = scaled(1.0, below(rng, 11) as i32 - 5);
            x.iter_mut().for_each(|v| {
                let k = below(rng, 16) as f32 + 0.5;
                let f = k * s;
                *v = match below(rng, 3) {
                    0 => f,
                    1 => f32::from_bits(f.to_bits() + 1),
                    _ => f32::from_bits(f.to_bits() - 1),
                } * if rng.next_u64() & 1 == 1 { -1.0 } else { 1.0 };
            });
        }
    }
    x
}

fn check_quant(dtype: DType, gguf_name: &str, seed: u64) {
    let mut rng = Rng::new(seed);
    let values: Vec<f32> = (0..BLOCKS)
        .flat_map(|i| value_block(&mut rng, i % VALUE_KINDS))
        .collect();
    let ours = trace_quant::quantize_to_vec(dtype, &values).unwrap();
    let theirs = gguf_quant(gguf_name, &values);
    let bb = dtype.block_bytes() as usize;
    assert_eq!(ours.len(), BLOCKS * bb);
    assert_eq!(ours.len(), theirs.len(), "{gguf_name}: byte counts differ");
    if let Some(i) = (0..ours.len()).find(|&i| ours[i] != theirs[i]) {
        let blk = i / bb;
        panic!(
            "{gguf_name} quantize: block {blk} (kind {}) byte {}: ours {:#04x}, gguf-py {:#04x}\n ours    {}\n gguf-py {}\n values {:?}",
            blk % VALUE_KINDS,
            i % bb,
            ours[i],
            theirs[i],
            hex(&ours[blk * bb..(blk + 1) * bb]),
            hex(&theirs[blk * bb..(blk + 1) * bb]),
            &values[blk * 32..(blk + 1) * 32]
        );
    }
    // And what we encoded decodes as gguf-py decodes it.
    let back = trace_quant::dequantize_to_vec(dtype, &ours).unwrap();
    assert_same_f32(
        gguf_name,
        dtype,
        &ours,
        &back,
        &gguf_dequant(gguf_name, &theirs),
    );
}

#[test]
fn q8_0_quantize_matches_gguf_py() {
    check_quant(DType::Q8_0, "Q8_0", 8);
}

#[test]
fn q4_0_quantize_matches_gguf_py() {
    check_quant(DType::Q4_0, "Q4_0", 4);
}

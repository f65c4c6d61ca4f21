//! The 256-value super-block decoders (Q2_K…Q6_K, IQ4_XS) against gguf-py's
//! `gguf.quants.dequantize`, bit for bit, on seeded random super-blocks whose
//! f16 `d`/`dmin` fields are in part overwritten with zeros, subnormals,
//! negatives and the largest finite values. Q8_K, which gguf-py lacks, is
//! checked against `q8_k_reference.py`, numpy written from ggml's C.

#![forbid(unsafe_code)]

use std::path::Path;

use trace_format::DType;
use tracedump_tests::{run_python, Rng};

/// Super-blocks per type.
const BLOCKS: usize = 1024;

/// f16 bit patterns written into the scale fields: +0, -0, the smallest and
/// largest subnormals, -1, the largest finite value and its negative.
const SPECIAL_F16: [u16; 7] = [0x0000, 0x8000, 0x0001, 0x03ff, 0xbc00, 0x7bff, 0xfbff];

/// Random super-blocks of `dtype`; in every other block the f16 at each of
/// `f16_fields` (byte offsets) is replaced by a special value, cycling so
/// that every pair of specials for `d` and `dmin` occurs.
fn random_blocks(dtype: DType, f16_fields: &[usize], seed: u64) -> Vec<u8> {
    let bb = dtype.block_bytes() as usize;
    let mut rng = Rng::new(seed);
    let mut raw = rng.bytes(BLOCKS * bb);
    let n = SPECIAL_F16.len();
    for (i, block) in raw.chunks_exact_mut(bb).enumerate() {
        if i % 2 == 1 {
            continue; // fully random, d and dmin included (NaN and inf too)
        }
        let k = i / 2;
        for (f, &off) in f16_fields.iter().enumerate() {
            // field f cycles with period n^(f+1): all combinations appear.
            let special = SPECIAL_F16[(k / n.pow(f as u32)) % n];
            block[off..off + 2].copy_from_slice(&special.to_le_bytes());
        }
    }
    raw
}

fn read_f32s(path: &Path) -> Vec<f32> {
    let bytes = std::fs::read(path).expect("reference output");
    bytes
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

/// Bitwise equality, except that any NaN matches any NaN.
fn same(a: f32, b: f32) -> bool {
    a.to_bits() == b.to_bits() || (a.is_nan() && b.is_nan())
}

/// Decode `raw` with trace-quant and with the reference script; panic on
/// the first element whose bits differ.
fn compare(dtype: DType, raw: &[u8], script: &str, args_before: &[&str]) {
    let dir = tempfile::tempdir().expect("tempdir");
    let input = dir.path().join("in.bin");
    let output = dir.path().join("out.f32");
    std::fs::write(&input, raw).expect("write blocks");
    let mut args: Vec<&dyn AsRef<std::ffi::OsStr>> = args_before
        .iter()
        .map(|a| a as &dyn AsRef<std::ffi::OsStr>)
        .collect();
    args.push(&input);
    args.push(&output);
    run_python(script, &args);
    let want = read_f32s(&output);

    let got = trace_quant::dequantize_to_vec(dtype, raw).expect("dequantize");
    let be = dtype.block_elems() as usize;
    assert_eq!(got.len(), raw.len() / dtype.block_bytes() as usize * be);
    assert_eq!(got.len(), want.len(), "{dtype}: value counts differ");
    if let Some(i) = got.iter().zip(&want).position(|(&g, &w)| !same(g, w)) {
        panic!(
            "{dtype}: block {} element {}: trace-quant {:e} ({:#010x}) vs reference {:e} ({:#010x})",
            i / be,
            i % be,
            got[i],
            got[i].to_bits(),
            want[i],
            want[i].to_bits()
        );
    }
    // The check must have had something to compare.
    assert!(
        got.iter().any(|v| v.is_finite() && *v != 0.0),
        "{dtype}: all values trivial"
    );
}

fn check_against_gguf(dtype: DType, gguf_name: &str, f16_fields: &[usize], seed: u64) {
    let raw = random_blocks(dtype, f16_fields, seed);
    compare(dtype, &raw, "gguf_reference.py", &["dequant", gguf_name]);
}

#[test]
fn q2_k_matches_gguf_py() {
    check_against_gguf(DType::Q2_K, "Q2_K", &[80, 82], 0x0210);
}

#[test]
fn q3_k_matches_gguf_py() {
    check_against_gguf(DType::Q3_K, "Q3_K", &[108], 0x0311);
}

#[test]
fn q4_k_matches_gguf_py() {
    check_against_gguf(DType::Q4_K, "Q4_K", &[0, 2], 0x0412);
}

#[test]
fn q5_k_matches_gguf_py() {
    check_against_gguf(DType::Q5_K, "Q5_K", &[0, 2], 0x0513);
}

#[test]
fn q6_k_matches_gguf_py() {
    check_against_gguf(DType::Q6_K, "Q6_K", &[208], 0x0614);
}

#[test]
fn iq4_xs_matches_gguf_py() {
    check_against_gguf(DType::IQ4_XS, "IQ4_XS", &[0], 0x2317);
}

/// Q8_K's scale is an f32: random bits, plus zeros, a subnormal, negatives,
/// the largest finite value and a NaN in some blocks.
#[test]
fn q8_k_matches_c_definition() {
    let bb = DType::Q8_K.block_bytes() as usize;
    assert_eq!(bb, 292);
    let mut rng = Rng::new(0x0815);
    let mut raw = rng.bytes(BLOCKS * bb);
    let specials = [
        0.0f32,
        -0.0,
        f32::from_bits(1),
        -1.5,
        f32::MAX,
        -f32::MAX,
        f32::NAN,
        1e-3,
    ];
    for (i, block) in raw.chunks_exact_mut(bb).enumerate() {
        if i % 2 == 0 {
            block[..4].copy_from_slice(&specials[(i / 2) % specials.len()].to_le_bytes());
        }
    }
    compare(DType::Q8_K, &raw, "q8_k_reference.py", &["dequant"]);
}

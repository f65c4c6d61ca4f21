//! Export to numpy's `.npz`: one `.npy` per tensor in a zip archive.

use super::*;

/// numpy's type string for a dtype, and whether the values must be converted
/// to f32 first (numpy has no bf16 or fp8).
fn npy_descr(d: DType) -> Option<(&'static str, bool)> {
    Some(match d {
        DType::F64 => ("<f8", false),
        DType::F32 => ("<f4", false),
        DType::F16 => ("<f2", false),
        DType::I64 => ("<i8", false),
        DType::I32 => ("<i4", false),
        DType::I16 => ("<i2", false),
        DType::I8 => ("|i1", false),
        DType::U64 => ("<u8", false),
        DType::U32 => ("<u4", false),
        DType::U16 => ("<u2", false),
        DType::U8 => ("|u1", false),
        DType::Bool => ("|b1", false),
        DType::BF16 | DType::F8_E4M3 | DType::F8_E5M2 => ("<f4", true),
        d if d.is_block() && trace_quant::can_dequantize(d) => ("<f4", true),
        _ => return None,
    })
}

/// The header of a `.npy` v1.0 file whose data starts at a multiple of 64 bytes.
pub(super) fn npy_header(descr: &str, shape: &[u64]) -> Result<Vec<u8>> {
    let dims: Vec<String> = shape.iter().map(u64::to_string).collect();
    let shape = match dims.len() {
        1 => format!("({},)", dims[0]),
        _ => format!("({})", dims.join(", ")),
    };
    let dict = format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': {shape}, }}");
    // magic (6) + version (2) + header length (2) + dict + spaces + '\n'
    let total = (10 + dict.len() + 1).next_multiple_of(64);
    let header_len = u16::try_from(total - 10).context_with(|| "npy header too long")?;
    let mut h = Vec::with_capacity(total);
    h.extend_from_slice(b"\x93NUMPY\x01\x00");
    h.extend_from_slice(&header_len.to_le_bytes());
    h.extend_from_slice(dict.as_bytes());
    h.resize(total - 1, b' ');
    h.push(b'\n');
    Ok(h)
}

pub(super) fn write_npz(
    trace: &Trace,
    plan: &Plan<'_>,
    path: &Path,
    converted: &mut Vec<(String, String)>,
) -> Result<()> {
    use zip::write::SimpleFileOptions;
    use zip::CompressionMethod;

    let file = File::create(path).context_with(|| format!("cannot create {}", path.display()))?;
    let mut zip = zip::ZipWriter::new(BufWriter::with_capacity(1 << 20, file));
    // 64-byte aligned entries: with the 64-byte npy header, the array data
    // is aligned in the archive (numpy can memory-map a stored npz member).
    let options = SimpleFileOptions::default()
        .compression_method(CompressionMethod::Stored)
        .with_alignment(64);
    let ctx = |name: &str| format!("writing {}: tensor `{name}`", path.display());
    for p in &plan.tensors {
        let info = p.view.info();
        let (descr, to_f32) = npy_descr(info.dtype)
            .ok_or_else(|| invalid!("{} has no numpy dtype", info.dtype))
            .context_with(|| ctx(&p.name))?;
        if to_f32 {
            let how = if info.dtype.is_block() {
                "dequantized"
            } else {
                "exact"
            };
            converted.push((
                p.name.clone(),
                format!("{} → f32 ({how}; numpy has no {})", info.dtype, info.dtype),
            ));
        }
        // the values are written a chunk at a time (memory stays bounded)
        let stored = if to_f32 { DType::F32 } else { info.dtype };
        let len = stored
            .bytes_for(info.layout.numel())
            .ok_or_else(|| invalid!("too large"))
            .context_with(|| ctx(&p.name))?;
        let header = npy_header(descr, info.layout.shape()).context_with(|| ctx(&p.name))?;
        let size = header.len() as u64 + len;
        zip.start_file(
            format!("{}.npy", p.name),
            options.large_file(size >= u64::from(u32::MAX)),
        )
        .context_with(|| ctx(&p.name))?;
        zip.write_all(&header).context_with(|| ctx(&p.name))?;
        let wrote = crate::stream::write_values(trace, p.view.clone(), to_f32, &mut zip)
            .context_with(|| ctx(&p.name))?;
        if wrote != len {
            bail!("{}: {wrote} bytes written, {len} expected", ctx(&p.name));
        }
    }
    let out = zip
        .finish()
        .context_with(|| format!("writing {}", path.display()))?;
    let file = out
        .into_inner()
        .map_err(|e| e.into_error())
        .context_with(|| format!("writing {}", path.display()))?;
    file.sync_all()
        .context_with(|| format!("writing {}", path.display()))?;
    Ok(())
}

//! Values: any stored layout decoded (block types dequantized, then viewed in
//! elements), and derived tensors rebuilt by replaying their lineage on
//! values (SPEC.md §5.4, value replay).

use ndarray::{concatenate, ArrayD, ArrayViewD, Axis, IxDyn};
use trace_format::{DType, Layout, Op};

use crate::error::ReaderError;
use crate::trace::{TensorInfo, Trace};

/// How deep a chain of derived tensors may go (each rebuilt from the last).
pub const MAX_DERIVATION_DEPTH: usize = 64;

/// The most values one materialization may produce: 2^26 plus 8 per byte of
/// the file. A view with zero strides (an `expand`) can name far more
/// elements than its storage holds; materializing such a view beyond this
/// bound is refused with an error rather than exhausting memory. The
/// zero-copy `array()` view has no such limit.
pub fn value_limit(file_len: u64) -> u64 {
    (1u64 << 26).saturating_add(file_len.saturating_mul(8))
}

/// Call `f(offset)` for every element of a checked layout, row-major; the
/// offsets are `storage_offset + Σ i·stride`, in whatever unit the layout's
/// strides are (bytes, or elements for a block type's element layout).
pub(crate) fn walk(layout: &Layout, mut f: impl FnMut(usize)) {
    let shape = &layout.shape;
    let strides = &layout.byte_strides;
    if shape.contains(&0) {
        return;
    }
    let nd = shape.len();
    if nd == 0 {
        f(layout.storage_offset as usize);
        return;
    }
    let (inner_n, inner_s) = (shape[nd - 1], strides[nd - 1] as isize);
    let mut idx = vec![0u64; nd - 1];
    let mut base = layout.storage_offset as isize;
    loop {
        let mut o = base;
        for _ in 0..inner_n {
            f(o as usize);
            o += inner_s;
        }
        let mut d = nd - 1;
        loop {
            if d == 0 {
                return;
            }
            d -= 1;
            idx[d] += 1;
            base += strides[d] as isize;
            if idx[d] < shape[d] {
                break;
            }
            base -= strides[d] as isize * shape[d] as isize;
            idx[d] = 0;
        }
    }
}

/// A vector with room for `n` values, or an error instead of an abort.
fn reserve<T>(n: u64, limit: u64) -> Result<Vec<T>, String> {
    if n > limit {
        return Err(format!(
            "materializing {n} values is refused (limit {limit} for this file: use the zero-copy view instead)"
        ));
    }
    let mut v = Vec::new();
    v.try_reserve_exact(n as usize).map_err(|_| {
        format!(
            "cannot allocate {} bytes for {n} values",
            n.saturating_mul(std::mem::size_of::<T>() as u64)
        )
    })?;
    Ok(v)
}

/// The values of a block-type view of `storage` (layout already checked
/// against it): the whole blocks it spans dequantized (SPEC.md §6), and the
/// view's element layout within them.
fn dequantized_span(
    dtype: DType,
    layout: &Layout,
    storage: &[u8],
) -> Result<(Vec<f32>, Layout), String> {
    let el = layout.element_layout(dtype).map_err(|e| e.to_string())?;
    // the whole blocks the view spans (SPEC.md §6), checked against the storage
    let (start, end) = layout
        .byte_span(dtype)
        .map_err(|e| e.to_string())?
        .unwrap_or((0, 0));
    let bytes = usize::try_from(start)
        .ok()
        .zip(usize::try_from(end).ok())
        .and_then(|(a, b)| storage.get(a..b))
        .ok_or_else(|| {
            format!(
                "bytes {start}..{end} lie outside the storage of {} bytes",
                storage.len()
            )
        })?;
    let (be, bb) = (dtype.block_elems(), dtype.block_bytes());
    let first = start as u64 / bb;
    // bounded by the storage's size, so no value limit applies
    let values = bytes.len() as u64 / bb * be;
    let mut deq = reserve::<f32>(values, u64::MAX)?;
    deq.resize(values as usize, 0.0);
    trace_quant::dequantize(dtype, bytes, &mut deq).map_err(|e| e.to_string())?;
    let shifted = Layout {
        shape: el.shape,
        byte_strides: el.strides,
        storage_offset: el.offset - first * be,
    };
    Ok((deq, shifted))
}

/// The values of a view of `storage` (layout already checked against it),
/// row-major, converted by `conv`. Block types are dequantized (only the
/// blocks the view spans) and then indexed in elements (SPEC.md §6).
pub(crate) fn gather<T>(
    dtype: DType,
    layout: &Layout,
    storage: &[u8],
    limit: u64,
    conv: impl Fn(f64) -> T,
) -> Result<Vec<T>, String> {
    let numel = layout.numel();
    let mut out = reserve::<T>(numel, limit)?;
    if numel == 0 {
        return Ok(out);
    }
    if dtype.is_block() {
        let (deq, shifted) = dequantized_span(dtype, layout, storage)?;
        walk(&shifted, |i| out.push(conv(f64::from(deq[i]))));
        return Ok(out);
    }
    let mut failed = false;
    walk(layout, |o| match dtype.decode_f64(&storage[o..]) {
        Some(v) => out.push(conv(v)),
        None => failed = true,
    });
    if failed {
        return Err(format!("cannot decode {dtype} values"));
    }
    Ok(out)
}

/// [`gather`] into f32 without the detour through f64: f32, f16 and bf16
/// views are converted a contiguous innermost run at a time (f16/bf16 with
/// the CPU's vector conversion where it has one, e.g. x86 F16C), block
/// types dequantize straight into the result when the view is all of the
/// blocks it spans. Every value is the same as `gather(.., |v| v as f32)`:
/// f16, bf16 and f32 convert to f32 exactly.
pub(crate) fn gather_f32(
    dtype: DType,
    layout: &Layout,
    storage: &[u8],
    limit: u64,
) -> Result<Vec<f32>, String> {
    let numel = layout.numel();
    if numel == 0 || !matches!(dtype, DType::F32 | DType::F16 | DType::BF16) && !dtype.is_block() {
        return gather(dtype, layout, storage, limit, |v| v as f32);
    }
    let mut out = reserve::<f32>(numel, limit)?;
    if dtype.is_block() {
        let (deq, shifted) = dequantized_span(dtype, layout, storage)?;
        // a row-major view of exactly the blocks it spans: those values
        if layout.is_contiguous(dtype) && shifted.storage_offset == 0 && deq.len() as u64 == numel {
            return Ok(deq);
        }
        walk(&shifted, |i| out.push(deq[i]));
        return Ok(out);
    }
    let size = dtype.element_bytes().unwrap_or(1);
    let nd = layout.ndim();
    if nd == 0 || layout.byte_strides[nd - 1] != size as i64 {
        let mut failed = false;
        walk(layout, |o| match dtype.decode_f32(&storage[o..]) {
            Some(v) => out.push(v),
            None => failed = true,
        });
        if failed {
            return Err(format!("cannot decode {dtype} values"));
        }
        return Ok(out);
    }
    // one contiguous run per innermost row
    let run = layout.shape[nd - 1] as usize * size;
    let rows = Layout {
        shape: layout.shape[..nd - 1].to_vec(),
        byte_strides: layout.byte_strides[..nd - 1].to_vec(),
        storage_offset: layout.storage_offset,
    };
    let mut outside = None;
    walk(&rows, |o| match storage.get(o..o.saturating_add(run)) {
        Some(bytes) => convert_run_f32(dtype, bytes, &mut out),
        None => outside = Some(o),
    });
    if let Some(o) = outside {
        return Err(format!(
            "a row of {run} bytes at {o} lies outside the storage of {} bytes",
            storage.len()
        ));
    }
    Ok(out)
}

/// Append the f32 values of the contiguous little-endian f32, f16 or bf16
/// elements in `bytes`: whole runs at a time when they can be read in
/// place, else one by one ([`DType::decode_f32`]).
fn convert_run_f32(dtype: DType, bytes: &[u8], out: &mut Vec<f32>) {
    // the casts read native-endian values: on a big-endian host, or for a
    // run at an odd address, every value is decoded on its own
    let little = cfg!(target_endian = "little");
    let halves = || {
        bytemuck::try_cast_slice::<u8, u16>(bytes)
            .ok()
            .filter(|_| little)
    };
    match dtype {
        DType::F32 => {
            if let Some(values) = bytemuck::try_cast_slice::<u8, f32>(bytes)
                .ok()
                .filter(|_| little)
            {
                out.extend_from_slice(values);
                return;
            }
        }
        DType::F16 => {
            if let Some(h) = halves() {
                crate::halves::extend_f16_as_f32(out, h);
                return;
            }
        }
        _ => {
            if let Some(h) = halves() {
                out.extend(h.iter().map(|&b| f32::from_bits(u32::from(b) << 16)));
                return;
            }
        }
    }
    let size = dtype.element_bytes().unwrap_or(1);
    out.extend(bytes.chunks_exact(size).filter_map(|c| dtype.decode_f32(c)));
}

/// Round every value to the nearest value of the float dtype `dtype`
/// (round to nearest even); other dtypes are an error.
fn round_all(array: &mut ArrayD<f64>, dtype: DType) -> Result<(), String> {
    let round: fn(f64) -> f64 = match dtype {
        DType::F64 => return Ok(()),
        DType::F32 => |v| f64::from(v as f32),
        DType::F16 => |v| half::f16::from_f64(v).to_f64(),
        DType::BF16 => |v| half::bf16::from_f64(v).to_f64(),
        other => return Err(format!("converting values to {other} is not supported")),
    };
    array.mapv_inplace(round);
    Ok(())
}

/// What a value replay holds between steps.
enum State<'t> {
    /// A view of a parent's storage.
    Strided {
        dtype: DType,
        layout: Layout,
        storage: &'t [u8],
    },
    /// Materialized values (dtype open after a concat of different dtypes).
    Values {
        dtype: Option<DType>,
        array: ArrayD<f64>,
    },
}

struct Replay<'t, 'c> {
    trace: &'t Trace,
    tensor: &'t TensorInfo,
    limit: u64,
    cache: &'c std::cell::RefCell<Cache>,
}

/// Derived values already rebuilt during one rebuild, by record id: a
/// derived tensor used twice (`concat(x, x)`, or a diamond of lineages) is
/// rebuilt once, so the work stays linear in the number of records.
#[derive(Default)]
pub(crate) struct Cache {
    arrays: std::collections::HashMap<u64, ArrayD<f64>>,
    values: u64,
}

impl<'t> Replay<'t, '_> {
    fn err(&self, reason: String) -> ReaderError {
        ReaderError::Tensor {
            path: self.trace.path().to_path_buf(),
            tensor: self.tensor.name.clone(),
            record: self.tensor.id,
            offset: self.tensor.record_offset,
            reason: format!("rebuilding it from its lineage: {reason}"),
        }
    }

    fn parent(&self, id: u64, depth: usize) -> Result<State<'t>, ReaderError> {
        if id >= self.tensor.id {
            return Err(self.err(format!("parent record {id} does not come before it")));
        }
        let p = self.trace.tensor(id)?;
        if p.derived {
            let cached = self.cache.borrow().arrays.get(&id).cloned();
            let array = match cached {
                Some(a) => a,
                None => {
                    let a = derive_cached(self.trace, p, depth + 1, self.cache)?;
                    let mut c = self.cache.borrow_mut();
                    if c.values.saturating_add(a.len() as u64) <= self.limit {
                        c.values += a.len() as u64;
                        c.arrays.insert(id, a.clone());
                    }
                    a
                }
            };
            Ok(State::Values {
                dtype: Some(p.dtype),
                array,
            })
        } else if p.storage.is_some() {
            let view = self.trace.view(id)?;
            Ok(State::Strided {
                dtype: p.dtype,
                layout: p.layout.clone(),
                storage: view.storage_bytes(),
            })
        } else {
            Err(self.err(format!(
                "parent `{}` (record {id}) was recorded as statistics only",
                p.name
            )))
        }
    }

    fn values(&self, state: State<'t>) -> Result<(Option<DType>, ArrayD<f64>), ReaderError> {
        match state {
            State::Values { dtype, array } => Ok((dtype, array)),
            State::Strided {
                dtype,
                layout,
                storage,
            } => {
                let v =
                    gather(dtype, &layout, storage, self.limit, |x| x).map_err(|e| self.err(e))?;
                let shape: Vec<usize> = layout.shape.iter().map(|&n| n as usize).collect();
                let array = ArrayD::from_shape_vec(IxDyn(&shape), v)
                    .map_err(|e| self.err(e.to_string()))?;
                Ok((Some(dtype), array))
            }
        }
    }

    fn step(&self, state: State<'t>, op: &Op) -> Result<State<'t>, ReaderError> {
        let layout_err = |e: trace_format::LayoutError| self.err(e.to_string());
        if let State::Strided {
            dtype,
            layout,
            storage,
        } = &state
        {
            let next = match op {
                Op::View {
                    offset,
                    shape,
                    byte_strides,
                } => Some(
                    layout
                        .view(*offset, shape, byte_strides)
                        .map_err(layout_err)?,
                ),
                Op::Permute { axes } => Some(layout.permute(axes).map_err(layout_err)?),
                Op::Transpose { a, b } => Some(layout.transpose(*a, *b).map_err(layout_err)?),
                Op::Reshape { shape } => Some(layout.reshape(*dtype, shape).map_err(layout_err)?),
                _ => None,
            };
            if let Some(layout) = next {
                layout
                    .check_within(*dtype, storage.len() as u64)
                    .map_err(layout_err)?;
                return Ok(State::Strided {
                    dtype: *dtype,
                    layout,
                    storage,
                });
            }
        }
        let (dtype, array) = self.values(state)?;
        let array = match op {
            Op::Permute { axes } => {
                trace_format::layout::check_axes(axes, array.ndim()).map_err(layout_err)?;
                array.permuted_axes(axes.iter().map(|&a| a as usize).collect::<Vec<_>>())
            }
            Op::Transpose { a, b } => {
                let (a, b) = (*a as usize, *b as usize);
                if a >= array.ndim() || b >= array.ndim() {
                    return Err(self.err(format!(
                        "transpose({a}, {b}) of a {}-dimensional tensor",
                        array.ndim()
                    )));
                }
                let mut array = array;
                array.swap_axes(a, b);
                array
            }
            Op::Reshape { shape } => {
                let shape: Vec<usize> = shape.iter().map(|&n| n as usize).collect();
                let n: Option<usize> = shape.iter().try_fold(1usize, |a, &b| a.checked_mul(b));
                if n != Some(array.len()) {
                    return Err(self.err(format!(
                        "reshape of {:?} to {shape:?}: the element counts differ",
                        array.shape()
                    )));
                }
                let flat: Vec<f64> = array.iter().copied().collect();
                ArrayD::from_shape_vec(IxDyn(&shape), flat).map_err(|e| self.err(e.to_string()))?
            }
            Op::View {
                offset,
                shape,
                byte_strides,
            } => {
                let dtype = dtype
                    .ok_or_else(|| self.err("a byte view of values whose dtype is open".into()))?;
                let size = dtype
                    .element_bytes()
                    .ok_or_else(|| self.err(format!("a byte view of {dtype} values")))?
                    as i64;
                let layout = Layout::new(shape.clone(), byte_strides.clone(), *offset)
                    .map_err(layout_err)?;
                layout
                    .check_within(dtype, array.len() as u64 * size as u64)
                    .map_err(layout_err)?;
                if *offset as i64 % size != 0 || byte_strides.iter().any(|s| s % size != 0) {
                    return Err(self.err(format!(
                        "view offset or strides are not whole {size}-byte elements"
                    )));
                }
                let elements = Layout {
                    shape: shape.clone(),
                    byte_strides: byte_strides.iter().map(|s| s / size).collect(),
                    storage_offset: *offset / size as u64,
                };
                let flat: Vec<f64> = array.iter().copied().collect();
                let mut out =
                    reserve::<f64>(layout.numel(), self.limit).map_err(|e| self.err(e))?;
                walk(&elements, |i| out.push(flat[i]));
                let shape: Vec<usize> = shape.iter().map(|&n| n as usize).collect();
                let array = ArrayD::from_shape_vec(IxDyn(&shape), out)
                    .map_err(|e| self.err(e.to_string()))?;
                return Ok(State::Values {
                    dtype: Some(dtype),
                    array,
                });
            }
            Op::Cont => array,
            Op::Convert { dtype: to } | Op::Dequantize { dtype: to } => {
                let mut array = array;
                if dtype != Some(*to) && !to.is_block() {
                    round_all(&mut array, *to).map_err(|e| self.err(e))?;
                } else if to.is_block() {
                    return Err(self.err(format!("{op:?} to a block type: use Quantize")));
                }
                return Ok(State::Values {
                    dtype: Some(*to),
                    array,
                });
            }
            Op::Quantize { dtype: to } => {
                let be = to.block_elems() as usize;
                if !to.is_block() || array.shape().last().is_none_or(|&n| n % be != 0) {
                    return Err(self.err(format!("quantizing values of shape {:?} to {to}: the innermost extent must be whole blocks", array.shape())));
                }
                let values: Vec<f32> = array.iter().map(|&v| v as f32).collect();
                let blocks = trace_quant::quantize_to_vec(*to, &values)
                    .map_err(|e| self.err(e.to_string()))?;
                let back = trace_quant::dequantize_to_vec(*to, &blocks)
                    .map_err(|e| self.err(e.to_string()))?;
                let array = ArrayD::from_shape_vec(
                    array.raw_dim(),
                    back.into_iter().map(f64::from).collect(),
                )
                .map_err(|e| self.err(e.to_string()))?;
                return Ok(State::Values {
                    dtype: Some(*to),
                    array,
                });
            }
            Op::Concat { .. } => return Err(self.err("Concat must be the first step".into())),
        };
        Ok(State::Values { dtype, array })
    }
}

/// Rebuild the values of a derived tensor (data kind 3), row-major in the
/// recorded shape, rounded to the recorded dtype.
pub(crate) fn derive(
    trace: &Trace,
    tensor: &TensorInfo,
    depth: usize,
) -> Result<ArrayD<f64>, ReaderError> {
    derive_cached(
        trace,
        tensor,
        depth,
        &std::cell::RefCell::new(Cache::default()),
    )
}

fn derive_cached(
    trace: &Trace,
    tensor: &TensorInfo,
    depth: usize,
    cache: &std::cell::RefCell<Cache>,
) -> Result<ArrayD<f64>, ReaderError> {
    let r = Replay {
        trace,
        tensor,
        limit: value_limit(trace.file_len()),
        cache,
    };
    if depth > MAX_DERIVATION_DEPTH {
        return Err(r.err(format!(
            "derived from derived tensors more than {MAX_DERIVATION_DEPTH} deep"
        )));
    }
    // Every derived value has its recorded shape (checked at the end of each
    // rebuild), so sizes are known before any work is done.
    if tensor.layout.numel() > r.limit {
        return Err(r.err(format!(
            "{} values exceed the limit of {} for this file",
            tensor.layout.numel(),
            r.limit
        )));
    }
    if let Some(Op::Concat { .. }) = tensor.lineage.ops.first() {
        let mut total = 0u64;
        for &p in &tensor.lineage.parents {
            if let Ok(pt) = trace.tensor(p) {
                total = total.saturating_add(pt.layout.numel());
            }
        }
        if total > r.limit {
            return Err(r.err(format!(
                "its parts hold {total} values, more than the limit of {} for this file",
                r.limit
            )));
        }
    }
    let lineage = &tensor.lineage;
    let mut ops = lineage.ops.iter();
    let mut state = match lineage.ops.first() {
        Some(Op::Concat { axis }) => {
            ops.next();
            let axis = *axis as usize;
            let mut parts = Vec::with_capacity(lineage.parents.len());
            let mut dtype = None;
            let mut mixed = false;
            // their sizes were checked against the limit above
            for (i, &p) in lineage.parents.iter().enumerate() {
                let (dt, a) = r.values(r.parent(p, depth)?)?;
                if i > 0 && dt != dtype {
                    mixed = true;
                }
                dtype = dt;
                parts.push(a);
            }
            if parts.is_empty() || parts.iter().any(|a| axis >= a.ndim()) {
                return Err(r.err(format!(
                    "concat along axis {axis} of {} parts of too few dimensions",
                    parts.len()
                )));
            }
            let views: Vec<ArrayViewD<'_, f64>> = parts.iter().map(|a| a.view()).collect();
            let array = concatenate(Axis(axis), &views).map_err(|e| {
                r.err(format!(
                    "concat along axis {axis} of shapes {:?}: {e}",
                    parts.iter().map(|a| a.shape().to_vec()).collect::<Vec<_>>()
                ))
            })?;
            State::Values {
                dtype: if mixed { None } else { dtype },
                array,
            }
        }
        Some(op) => {
            let first = *lineage.parents.first().ok_or_else(|| {
                r.err(format!(
                    "the lineage step `{op:?}` has no parent to apply to"
                ))
            })?;
            r.parent(first, depth)?
        }
        None => return Err(r.err("no lineage steps".into())),
    };
    for op in ops {
        state = r.step(state, op)?;
    }
    let (dtype, array) = r.values(state)?;
    let want: Vec<usize> = tensor.layout.shape.iter().map(|&n| n as usize).collect();
    if array.shape() != want.as_slice() {
        return Err(r.err(format!(
            "the steps give shape {:?}, the tensor says {want:?}",
            array.shape()
        )));
    }
    let mut array = array.as_standard_layout().into_owned();
    if dtype != Some(tensor.dtype) && !tensor.dtype.is_block() {
        round_all(&mut array, tensor.dtype).map_err(|e| r.err(e))?;
    }
    Ok(array)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `gather_f32` gives exactly `gather(.., |v| v as f32)`, bit for bit,
    /// over contiguous, permuted, reversed, strided, unaligned and scalar
    /// layouts of f32/f16/bf16 and over block-type views.
    #[test]
    fn gather_f32_matches_the_f64_path() {
        let storage: Vec<u8> = (0..16384u32)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
            .collect();
        let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        for dtype in [DType::F32, DType::F16, DType::BF16] {
            let size = dtype.element_bytes().unwrap() as i64;
            let base = Layout::contiguous(dtype, &[4, 8, 16], 0).unwrap();
            let layouts = [
                base.clone(),
                base.permute(&[1, 0, 2]).unwrap(),
                base.permute(&[2, 1, 0]).unwrap(),
                // innermost reversed
                Layout::new(vec![4, 16], vec![16 * size, -size], 15 * size as u64).unwrap(),
                // every other element, and a zero stride (an expand)
                Layout::new(vec![3, 0], vec![size, size], 0).unwrap(),
                Layout::new(vec![5, 7], vec![0, 2 * size], 8).unwrap(),
                // an odd start: the vector path's cast fails, bytes are read one by one
                Layout::new(vec![6, 9], vec![9 * size, size], 1).unwrap(),
                Layout::new(vec![], vec![], 6).unwrap(),
                // rows longer than one conversion chunk
                Layout::contiguous(dtype, &[2, 1500], 2).unwrap(),
            ];
            for layout in &layouts {
                let slow = gather(dtype, layout, &storage, u64::MAX, |v| v as f32).unwrap();
                let fast = gather_f32(dtype, layout, &storage, u64::MAX).unwrap();
                assert_eq!(bits(&slow), bits(&fast), "{dtype} {layout:?}");
            }
        }
        let values: Vec<f32> = (0..1024).map(|i| (i as f32 * 0.37).sin() * 9.0).collect();
        for dtype in [DType::Q8_0, DType::Q4_0] {
            let blocks = trace_quant::quantize_to_vec(dtype, &values).unwrap();
            let whole = Layout::contiguous(dtype, &[4, 256], 0).unwrap();
            let rows = whole.byte_strides[0];
            let layouts = [
                whole.clone(),
                // heads outermost: [2, 4, 128] of a [4, 2, 128] cache
                Layout::contiguous(dtype, &[4, 2, 128], 0)
                    .unwrap()
                    .permute(&[1, 0, 2])
                    .unwrap(),
                // the second and third rows only
                Layout::new(vec![2, 256], whole.byte_strides.clone(), rows as u64).unwrap(),
            ];
            for layout in &layouts {
                let slow = gather(dtype, layout, &blocks, u64::MAX, |v| v as f32).unwrap();
                let fast = gather_f32(dtype, layout, &blocks, u64::MAX).unwrap();
                assert_eq!(bits(&slow), bits(&fast), "{dtype} {layout:?}");
            }
        }
        // the limit holds on the fast path too
        let layout = Layout::contiguous(DType::F16, &[64], 0).unwrap();
        assert!(gather_f32(DType::F16, &layout, &storage, 10)
            .unwrap_err()
            .contains("refused"));
    }
}

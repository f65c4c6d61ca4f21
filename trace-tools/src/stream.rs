//! A tensor's logical values a chunk at a time, in bounded memory.
//!
//! A [`Source`] reads any range of a tensor's row-major values without
//! materializing the tensor: contiguous f32 straight from the mapped file,
//! f16/bf16 converted a chunk at a time, strided views (permuted, with
//! negative or zero strides) walked from the chunk's first element, block
//! types dequantized a few blocks at a time. A pairing's transforms
//! (`transpose`, `rope_rows`, `reshape`, `crop`, `last_rows`) are views too:
//! they become strides over the source ([`transform`]), so they
//! stream the same way. What cannot be streamed (a derived tensor, a reshape
//! no strides express) is materialized only up to [`MATERIALIZE_LIMIT`]
//! values, never beyond.

#![forbid(unsafe_code)]

use half::slice::HalfFloatSliceExt;
use trace_format::{DType, Layout};
use trace_reader::{StorageBytes, TensorView, Trace};

use crate::mapping::{self, Transform};
use crate::ToolsError;

/// Values per chunk: 64K (512 KiB as f64, a core's L2).
pub const CHUNK: usize = 1 << 16;

/// Chunks one task walks in order before its accumulator is merged with
/// the others (a fixed partition, so results do not depend on the number
/// of threads).
pub const GROUP: usize = 16;

/// The most values materialized (as f64) for a tensor that cannot be
/// streamed: 4M values, 32 MiB.
pub const MATERIALIZE_LIMIT: u64 = 1 << 22;

/// One axis of a view as sub-dimensions `(extent, stride)`, outermost
/// first: a `rope_rows` axis is two (halves, then pairs).
type Axis = Vec<(u64, i64)>;

/// Where the values come from.
#[derive(Debug)]
enum Kind<'a> {
    /// A scalar dtype; strides and offset in bytes of `storage`.
    Dense {
        dtype: DType,
        storage: StorageBytes<'a>,
    },
    /// A block type; strides and offset in elements of `storage`'s blocks.
    Blocks {
        dtype: DType,
        storage: StorageBytes<'a>,
    },
    /// Materialized values; strides and offset in elements.
    Owned(Vec<f64>),
}

/// A tensor's values, readable a range at a time (see the module docs).
#[derive(Debug)]
pub struct Source<'a> {
    kind: Kind<'a>,
    axes: Vec<Axis>,
    offset: i64,
    /// The flattened view (row-major over `axes`).
    layout: Layout,
    /// Element size in the strides' unit when the view is row-major dense.
    contiguous: bool,
}

/// A chunk of values as read: f32 where the source is f32, f16, bf16 or a
/// block type, f64 otherwise.
#[derive(Debug)]
pub enum Vals<'b> {
    /// Single precision (borrowed from the file when contiguous f32).
    F32(&'b [f32]),
    /// Double precision.
    F64(&'b [f64]),
}

/// Scratch space for reading chunks (reused from chunk to chunk).
#[derive(Debug, Default)]
pub struct Buf {
    f32: Vec<f32>,
    f64: Vec<f64>,
    blocks: Vec<f32>,
}

fn row_major(shape: &[u64], unit: i64) -> Vec<i64> {
    let mut s = vec![unit; shape.len()];
    for d in (0..shape.len().saturating_sub(1)).rev() {
        s[d] = s[d + 1].saturating_mul(shape[d + 1].max(1) as i64);
    }
    s
}

impl<'a> Source<'a> {
    /// The values of `view`, as stored. Stats-only tensors have none;
    /// derived tensors are rebuilt (and so materialized) only up to
    /// [`MATERIALIZE_LIMIT`] values.
    pub fn of(trace: &Trace, view: TensorView<'a>) -> Result<Source<'a>, ToolsError> {
        let info = view.info();
        let numel = info.layout.numel();
        let refuse = |why: String| ToolsError::Invalid(format!("tensor `{}`: {why}", info.name));
        let limit = trace_reader::values::value_limit(trace.file_len());
        if numel > limit {
            return Err(refuse(format!(
                "reading {numel} values is refused (limit {limit} for this file, SPEC.md §9)"
            )));
        }
        if info.derived || info.is_stats_only() {
            if numel > MATERIALIZE_LIMIT {
                return Err(refuse(format!(
                    "it is derived from its parents and has {numel} values: rebuilding more than {MATERIALIZE_LIMIT} at once is refused, to keep memory bounded"
                )));
            }
            let v = view.to_f64()?;
            return Source::owned(v, info.layout.shape()).map_err(refuse);
        }
        view.spend_broadcast()?;
        let storage = view.storage();
        let dtype = info.dtype;
        let (kind, shape, strides, offset) = if dtype.is_block() {
            let el = info
                .layout
                .element_layout(dtype)
                .map_err(|e| refuse(e.to_string()))?;
            (
                Kind::Blocks { dtype, storage },
                el.shape,
                el.strides,
                el.offset as i64,
            )
        } else {
            let l = &info.layout;
            (
                Kind::Dense { dtype, storage },
                l.shape().to_vec(),
                l.byte_strides().to_vec(),
                l.storage_offset() as i64,
            )
        };
        let axes = shape
            .iter()
            .zip(&strides)
            .map(|(&n, &s)| vec![(n, s)])
            .collect();
        Source::build(kind, axes, offset).map_err(refuse)
    }

    /// Materialized values, row-major of `shape` (as many as `v` holds).
    pub fn owned(v: Vec<f64>, shape: &[u64]) -> Result<Source<'a>, String> {
        let strides = row_major(shape, 1);
        let axes = shape
            .iter()
            .zip(&strides)
            .map(|(&n, &s)| vec![(n, s)])
            .collect();
        Source::build(Kind::Owned(v), axes, 0)
    }

    fn build(kind: Kind<'a>, axes: Vec<Axis>, offset: i64) -> Result<Source<'a>, String> {
        let layout = Layout::new(vec![], vec![], 0).map_err(|e| e.to_string())?;
        let mut s = Source {
            kind,
            axes,
            offset,
            layout,
            contiguous: false,
        };
        s.relayout()?;
        Ok(s)
    }

    fn unit(&self) -> i64 {
        match &self.kind {
            Kind::Dense { dtype, .. } => dtype.element_bytes().unwrap_or(1) as i64,
            _ => 1,
        }
    }

    fn relayout(&mut self) -> Result<(), String> {
        let (shape, strides): (Vec<u64>, Vec<i64>) =
            self.axes.iter().flat_map(|a| a.iter().copied()).unzip();
        let offset = u64::try_from(self.offset).map_err(|_| "negative offset".to_string())?;
        let unit = self.unit();
        let dense = row_major(&shape, unit);
        self.contiguous = shape.contains(&0)
            || shape
                .iter()
                .zip(strides.iter().zip(&dense))
                .all(|(&n, (&s, &d))| n <= 1 || s == d);
        self.layout = Layout::new(shape, strides, offset).map_err(|e| e.to_string())?;
        Ok(())
    }

    /// How many values.
    pub fn numel(&self) -> u64 {
        self.layout.numel()
    }

    /// Whether the source is a materialized copy (not streamed).
    pub fn is_owned(&self) -> bool {
        matches!(self.kind, Kind::Owned(_))
    }

    /// The dtype of the stored values (f64 for materialized ones).
    pub fn dtype(&self) -> DType {
        match &self.kind {
            Kind::Dense { dtype, .. } | Kind::Blocks { dtype, .. } => *dtype,
            Kind::Owned(_) => DType::F64,
        }
    }

    /// Read `n` values from the `start`-th on (row-major).
    pub fn read<'b>(&'b self, start: u64, n: usize, buf: &'b mut Buf) -> Result<Vals<'b>, String> {
        let undecodable = |dtype: DType| format!("cannot decode {dtype} values near value {start}");
        match &self.kind {
            Kind::Dense { dtype, storage } => {
                let dtype = *dtype;
                let size = dtype.element_bytes().unwrap_or(1);
                if self.contiguous {
                    let at = self.layout.storage_offset() as usize + start as usize * size;
                    let bytes = storage
                        .get(at..at + n * size)
                        .ok_or_else(|| undecodable(dtype))?;
                    match dtype {
                        DType::F32 => {
                            if let Ok(s) = bytemuck::try_cast_slice::<u8, f32>(bytes) {
                                return Ok(Vals::F32(s));
                            }
                            buf.f32.clear();
                            buf.f32.extend(
                                bytes
                                    .chunks_exact(4)
                                    .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])),
                            );
                            return Ok(Vals::F32(&buf.f32));
                        }
                        DType::F16 | DType::BF16 => {
                            buf.f32.clear();
                            buf.f32.resize(n, 0.0);
                            match (dtype, bytemuck::try_cast_slice::<u8, u16>(bytes)) {
                                (DType::F16, Ok(h)) => bytemuck::cast_slice::<u16, half::f16>(h)
                                    .convert_to_f32_slice(&mut buf.f32),
                                (DType::BF16, Ok(h)) => bytemuck::cast_slice::<u16, half::bf16>(h)
                                    .convert_to_f32_slice(&mut buf.f32),
                                _ => {
                                    for (o, c) in buf.f32.iter_mut().zip(bytes.chunks_exact(2)) {
                                        *o = dtype.decode_f32(c).unwrap_or(f32::NAN);
                                    }
                                }
                            }
                            return Ok(Vals::F32(&buf.f32));
                        }
                        _ => {
                            buf.f64.clear();
                            for c in bytes.chunks_exact(size) {
                                buf.f64
                                    .push(dtype.decode_f64(c).ok_or_else(|| undecodable(dtype))?);
                            }
                            return Ok(Vals::F64(&buf.f64));
                        }
                    }
                }
                let mut failed = false;
                if matches!(dtype, DType::F32 | DType::F16 | DType::BF16) {
                    buf.f32.clear();
                    self.layout.for_each_offset_from(start, n as u64, |o| {
                        match storage.get(o..).and_then(|b| dtype.decode_f32(b)) {
                            Some(v) => buf.f32.push(v),
                            None => failed = true,
                        }
                    });
                    if failed {
                        return Err(undecodable(dtype));
                    }
                    return Ok(Vals::F32(&buf.f32));
                }
                buf.f64.clear();
                self.layout.for_each_offset_from(start, n as u64, |o| {
                    match storage.get(o..).and_then(|b| dtype.decode_f64(b)) {
                        Some(v) => buf.f64.push(v),
                        None => failed = true,
                    }
                });
                if failed {
                    return Err(undecodable(dtype));
                }
                Ok(Vals::F64(&buf.f64))
            }
            Kind::Blocks { dtype, storage } => {
                let dtype = *dtype;
                let (be, bb) = (dtype.block_elems() as usize, dtype.block_bytes() as usize);
                let deq = |first: usize, count: usize, out: &mut Vec<f32>| {
                    let bytes = storage
                        .get(first * bb..(first + count) * bb)
                        .ok_or_else(|| {
                            format!("{dtype} blocks {first}.. lie outside the storage")
                        })?;
                    out.clear();
                    out.resize(count * be, 0.0);
                    trace_quant::dequantize(dtype, bytes, out).map_err(|e| e.to_string())
                };
                if self.contiguous {
                    let e0 = self.layout.storage_offset() as usize + start as usize;
                    let (b0, b1) = (e0 / be, (e0 + n).div_ceil(be));
                    deq(b0, b1 - b0, &mut buf.blocks)?;
                    let from = e0 - b0 * be;
                    return Ok(Vals::F32(&buf.blocks[from..from + n]));
                }
                buf.f32.clear();
                let mut cached = usize::MAX;
                let mut err = None;
                self.layout.for_each_offset_from(start, n as u64, |e| {
                    if err.is_some() {
                        return;
                    }
                    let b = e / be;
                    if b != cached {
                        if let Err(x) = deq(b, 1, &mut buf.blocks) {
                            err = Some(x);
                            return;
                        }
                        cached = b;
                    }
                    buf.f32.push(buf.blocks[e - b * be]);
                });
                match err {
                    Some(e) => Err(e),
                    None => Ok(Vals::F32(&buf.f32)),
                }
            }
            Kind::Owned(v) => {
                if self.contiguous {
                    let at = self.layout.storage_offset() as usize + start as usize;
                    return v
                        .get(at..at + n)
                        .map(Vals::F64)
                        .ok_or_else(|| "a range outside the values".to_string());
                }
                buf.f64.clear();
                self.layout
                    .for_each_offset_from(start, n as u64, |o| buf.f64.push(v[o]));
                Ok(Vals::F64(&buf.f64))
            }
        }
    }

    fn single(&mut self, ax: usize) -> Option<(u64, i64)> {
        let a = &mut self.axes[ax];
        a.retain(|&(n, _)| n != 1);
        merge_subdims(a);
        match a.as_slice() {
            [] => Some((1, 0)),
            [x] => Some(*x),
            _ => None,
        }
    }
}

/// Merge neighbouring sub-dimensions that walk as one.
fn merge_subdims(a: &mut Axis) {
    let mut i = 0;
    while i + 1 < a.len() {
        let ((n0, s0), (n1, s1)) = (a[i], a[i + 1]);
        if s0 == s1.saturating_mul(n1 as i64) {
            a[i] = (n0 * n1, s1);
            a.remove(i + 1);
        } else {
            i += 1;
        }
    }
}

/// Apply the pairing's `transforms` to A's and B's sources as views, as
/// [`mapping::apply`] does to their values (shapes `sa` and `sb`, already
/// checked by [`mapping::transformed_shapes`]). `false` when some
/// transform has no strided form: the sources are then left half-changed,
/// and the caller materializes the values instead, within bounds.
pub fn transform(
    transforms: &[Transform],
    a: &mut Source<'_>,
    sa: &[u64],
    b: &mut Source<'_>,
    sb: &[u64],
) -> bool {
    strided(transforms, a, sa, b, sb).is_some()
}

fn strided(
    transforms: &[Transform],
    a: &mut Source<'_>,
    sa: &[u64],
    b: &mut Source<'_>,
    sb: &[u64],
) -> Option<()> {
    let (mut sa, mut sb) = (sa.to_vec(), sb.to_vec());
    for t in transforms {
        match *t {
            Transform::RopeRows => {
                let d = *sa.last().unwrap_or(&0);
                if d >= 2 {
                    let last = a.axes.len() - 1;
                    let (n, s) = a.single(last)?;
                    if n != d {
                        return None;
                    }
                    a.axes[last] = vec![(2, s), (d / 2, s.checked_mul(2)?)];
                }
            }
            Transform::Transpose(i, j) => {
                let i = mapping::axis(i, sa.len()).unwrap_or(0);
                let j = mapping::axis(j, sa.len()).unwrap_or(0);
                a.axes.swap(i, j);
                sa.swap(i, j);
            }
            Transform::Reshape => {
                let mut flat: Axis = a
                    .axes
                    .iter()
                    .flatten()
                    .copied()
                    .filter(|&(n, _)| n != 1)
                    .collect();
                merge_subdims(&mut flat);
                if flat.iter().any(|&(n, _)| n == 0) {
                    a.axes = sb.iter().map(|&n| vec![(n, 0)]).collect();
                } else {
                    let mut flat = flat.into_iter().collect::<std::collections::VecDeque<_>>();
                    let mut axes = Vec::with_capacity(sb.len());
                    for &want in &sb {
                        let mut ax = Vec::new();
                        let mut left = want;
                        while left > 1 {
                            let (n, s) = flat.pop_front()?;
                            if n <= left {
                                if left % n != 0 {
                                    return None;
                                }
                                ax.push((n, s));
                                left /= n;
                            } else {
                                if n % left != 0 {
                                    return None;
                                }
                                let inner = n / left;
                                ax.push((left, s.checked_mul(inner as i64)?));
                                flat.push_front((inner, s));
                                left = 1;
                            }
                        }
                        if ax.is_empty() {
                            ax.push((want.min(1), 0));
                        }
                        axes.push(ax);
                    }
                    if !flat.is_empty() {
                        return None;
                    }
                    a.axes = axes;
                }
                sa = sb.clone();
            }
            Transform::LastRows => {
                if sa.len() >= 2 && sb.len() >= 2 {
                    let rb = sb.len() - 2;
                    let (keep, have) = (sa[sa.len() - 2], sb[rb]);
                    if keep < have {
                        let (_, s) = b.single(rb)?;
                        b.offset = b.offset.checked_add(s.checked_mul((have - keep) as i64)?)?;
                        b.axes[rb] = vec![(keep, s)];
                        sb[rb] = keep;
                    }
                }
            }
            Transform::Crop(i) => {
                let ia = mapping::axis(i, sa.len()).unwrap_or(0);
                let ib = mapping::axis(i, sb.len()).unwrap_or(0);
                let (have, keep) = (sa[ia], sb[ib]);
                if keep < have {
                    let ax = &mut a.axes[ia];
                    ax.retain(|&(n, _)| n != 1);
                    let inner: u64 = ax.iter().skip(1).map(|&(n, _)| n).product();
                    match ax.first_mut() {
                        Some(first) if inner > 0 && keep % inner == 0 => first.0 = keep / inner,
                        None => {}
                        _ => return None,
                    }
                    if keep == 0 {
                        *ax = vec![(0, 0)];
                    }
                    sa[ia] = keep;
                }
            }
        }
    }
    a.relayout().ok()?;
    b.relayout().ok()?;
    Some(())
}

/// Walk `numel` values chunk by chunk (`chunk` values each, [`CHUNK`]), a
/// group of `group` chunks ([`GROUP`]) per task, the tasks spread over the
/// rayon pool: `f` folds one chunk into a group's accumulator (with scratch
/// space from `scratch`, dropped when the group is done), `merge` joins the
/// groups' accumulators in order (so the result is the same on any number
/// of threads). At most [`WAVE`] groups' accumulators are held at once.
pub fn fold_chunks<A, S, F, M>(
    numel: u64,
    (chunk, group): (usize, usize),
    init: impl Fn() -> A + Sync,
    scratch: impl Fn() -> S + Sync,
    f: F,
    merge: M,
) -> Result<A, String>
where
    A: Send,
    F: Fn(&mut A, &mut S, u64, usize) -> Result<(), String> + Sync,
    M: Fn(&mut A, A),
{
    use rayon::prelude::*;
    let (chunk, group) = (chunk.max(1), group.max(1));
    let per_group = (chunk * group) as u64;
    let groups = numel.div_ceil(per_group);
    let run = |g: u64| -> Result<A, String> {
        let (mut acc, mut s) = (init(), scratch());
        let end = ((g + 1) * per_group).min(numel);
        let mut at = g * per_group;
        while at < end {
            let n = (end - at).min(chunk as u64) as usize;
            f(&mut acc, &mut s, at, n)?;
            at += n as u64;
        }
        Ok(acc)
    };
    if groups <= 1 {
        return run(0);
    }
    let mut total = init();
    let mut first = 0;
    while first < groups {
        let last = (first + WAVE as u64).min(groups);
        let parts: Vec<Result<A, String>> = (first..last).into_par_iter().map(run).collect();
        for p in parts {
            merge(&mut total, p?);
        }
        first = last;
    }
    Ok(total)
}

/// Groups walked in parallel before their accumulators are merged (and
/// dropped): what bounds the memory of accumulators that hold tables.
pub const WAVE: usize = 64;

/// Scratch for one task: a buffer per side and one for conversions.
#[derive(Default)]
struct Scratch {
    a: Buf,
    b: Buf,
    wide: Vec<f64>,
}

/// The metrics of `a` against the reference `b`, value by value in
/// row-major order (as many values as the shorter has), chunk by chunk.
pub fn compare(
    a: &Source<'_>,
    b: &Source<'_>,
    tol: &crate::metrics::Tolerance,
    ulp: Option<DType>,
) -> Result<crate::metrics::MetricAcc, String> {
    compare_in(a, b, tol, ulp, (CHUNK, GROUP))
}

/// [`compare`] with the chunk and group sizes chosen (tests try small ones).
pub fn compare_in(
    a: &Source<'_>,
    b: &Source<'_>,
    tol: &crate::metrics::Tolerance,
    ulp: Option<DType>,
    sizes: (usize, usize),
) -> Result<crate::metrics::MetricAcc, String> {
    use crate::metrics::MetricAcc;
    let numel = a.numel().min(b.numel());
    let acc = fold_chunks(
        numel,
        sizes,
        MetricAcc::default,
        Scratch::default,
        |acc, s, start, n| {
            let va = a.read(start, n, &mut s.a)?;
            let vb = b.read(start, n, &mut s.b)?;
            let wide = &mut s.wide;
            let mut widen = |v: &[f32]| {
                wide.clear();
                wide.extend(v.iter().map(|&x| f64::from(x)));
            };
            match (va, vb) {
                (Vals::F32(x), Vals::F32(y)) => acc.add_chunk_f32(start, x, y, tol, ulp),
                (Vals::F64(x), Vals::F64(y)) => acc.add_chunk(start, x, y, tol, ulp),
                (Vals::F32(x), Vals::F64(y)) => {
                    widen(x);
                    acc.add_chunk(start, wide, y, tol, ulp)
                }
                (Vals::F64(x), Vals::F32(y)) => {
                    widen(y);
                    acc.add_chunk(start, x, wide, tol, ulp)
                }
            }
            Ok(())
        },
        |total, acc| total.merge(acc),
    )?;
    Ok(acc)
}

/// The moments of every value of `src`, chunk by chunk.
pub fn moments(src: &Source<'_>) -> Result<crate::metrics::MomentAcc, String> {
    moments_in(src, (CHUNK, GROUP))
}

/// [`moments`] with the chunk and group sizes chosen.
pub fn moments_in(
    src: &Source<'_>,
    sizes: (usize, usize),
) -> Result<crate::metrics::MomentAcc, String> {
    use crate::metrics::MomentAcc;
    let acc = fold_chunks(
        src.numel(),
        sizes,
        MomentAcc::default,
        Buf::default,
        |acc, buf, start, n| {
            let m = match src.read(start, n, buf)? {
                Vals::F32(v) => MomentAcc::of_chunk(v),
                Vals::F64(v) => MomentAcc::of_chunk(v),
            };
            acc.merge(&m);
            Ok(())
        },
        |total, acc| total.merge(&acc),
    )?;
    Ok(acc)
}

/// Write the values of `view` row-major to `out`, little-endian, a chunk at
/// a time (memory stays bounded): as f32 (`as_f32`: f16, bf16, fp8 and
/// block types converted), or in the tensor's own dtype (contiguous bytes
/// as they are, a strided view gathered a chunk at a time). Returns the
/// bytes written.
pub fn write_values(
    trace: &Trace,
    view: TensorView<'_>,
    as_f32: bool,
    out: &mut dyn std::io::Write,
) -> Result<u64, ToolsError> {
    let info = view.info();
    let name = &info.name;
    let io = |e: std::io::Error| ToolsError::Invalid(format!("tensor `{name}`: {e}"));
    let mut bytes = Vec::new();
    if as_f32 {
        let src = Source::of(trace, view)?;
        let mut buf = Buf::default();
        let mut start = 0u64;
        while start < src.numel() {
            let n = (src.numel() - start).min(CHUNK as u64) as usize;
            bytes.clear();
            match src
                .read(start, n, &mut buf)
                .map_err(|e| ToolsError::Invalid(format!("tensor `{name}`: {e}")))?
            {
                Vals::F32(v) => bytes.extend(v.iter().flat_map(|x| x.to_le_bytes())),
                Vals::F64(v) => bytes.extend(v.iter().flat_map(|&x| (x as f32).to_le_bytes())),
            }
            out.write_all(&bytes).map_err(io)?;
            start += n as u64;
        }
        return Ok(src.numel() * 4);
    }
    if let Some(b) = view.contiguous_bytes() {
        out.write_all(b).map_err(io)?;
        return Ok(b.len() as u64);
    }
    let size = info.dtype.element_bytes();
    if info.derived || size.is_none() {
        // rebuilt values (or an error naming the tensor), within bounds
        if info.layout.numel() > MATERIALIZE_LIMIT {
            return Err(ToolsError::Invalid(format!(
                "tensor `{name}`: {} values to rebuild is more than {MATERIALIZE_LIMIT} at once (the bound on memory)",
                info.layout.numel()
            )));
        }
        let b = view.materialize()?;
        out.write_all(&b).map_err(io)?;
        return Ok(b.len() as u64);
    }
    let size = size.unwrap_or(1);
    view.spend_broadcast()?;
    let storage = view.storage_bytes();
    let (layout, numel) = (&info.layout, info.layout.numel());
    let mut start = 0u64;
    while start < numel {
        let n = (numel - start).min(CHUNK as u64);
        bytes.clear();
        let mut outside = false;
        layout.for_each_offset_from(start, n, |o| match storage.get(o..o + size) {
            Some(b) => bytes.extend_from_slice(b),
            None => outside = true,
        });
        if outside {
            return Err(ToolsError::Invalid(format!(
                "tensor `{name}`: a value near {start} lies outside its storage"
            )));
        }
        out.write_all(&bytes).map_err(io)?;
        start += n;
    }
    Ok(numel * size as u64)
}

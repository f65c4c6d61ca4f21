//! Derived tensors (data kind 3) rebuilt from their parents by replaying
//! their lineage on values (SPEC.md §5.4, value replay), once per
//! [`Trace`] ([`DerivedCache`]).

#![forbid(unsafe_code)]

use std::sync::Arc;

use ndarray::{concatenate, ArrayD, ArrayViewD, Axis, IxDyn};
use trace_format::{DType, Layout, Op};

use crate::error::ReaderError;
use crate::trace::{TensorInfo, Trace};
use crate::values::{gather, reserve, value_limit, walk, MAX_DERIVATION_DEPTH};

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
        storage: crate::updates::StorageBytes<'t>,
    },
    /// Materialized values (dtype open after a concat of different dtypes).
    Values {
        dtype: Option<DType>,
        array: ArrayD<f64>,
    },
}

struct Replay<'t> {
    trace: &'t Trace,
    tensor: &'t TensorInfo,
    limit: u64,
    /// The longest chain of derived tensors among the parents so far.
    chain: std::cell::Cell<usize>,
}

/// Derived values already rebuilt, by record id, for the life of a
/// [`Trace`]: a derived tensor used twice (`concat(x, x)`, a diamond of
/// lineages, a chain of 64 each rebuilt from the one before, or `verify`
/// then `to_f32` of the same tensor) is rebuilt once, so the work stays
/// linear in the number of records. At most the file's value limit of
/// values is kept (SPEC.md §9): past it, the rebuilds used longest ago go
/// first (a chain read in order needs the one just before).
#[derive(Debug, Default)]
pub(crate) struct DerivedCache {
    /// The values, the length of the longest chain of derived tensors they
    /// were rebuilt through (1: from stored parents only), and when they
    /// were last used.
    arrays: std::collections::HashMap<u64, (Arc<ArrayD<f64>>, usize, u64)>,
    values: u64,
    clock: u64,
}

impl DerivedCache {
    fn get(&mut self, id: u64) -> Option<(Arc<ArrayD<f64>>, usize)> {
        self.clock += 1;
        let now = self.clock;
        self.arrays.get_mut(&id).map(|(a, chain, used)| {
            *used = now;
            (a.clone(), *chain)
        })
    }

    fn put(&mut self, id: u64, array: Arc<ArrayD<f64>>, chain: usize, limit: u64) {
        let n = array.len() as u64;
        if n > limit || self.arrays.contains_key(&id) {
            return;
        }
        while self.values + n > limit {
            let Some((&oldest, _)) = self.arrays.iter().min_by_key(|(_, (_, _, used))| *used)
            else {
                break;
            };
            if let Some((a, _, _)) = self.arrays.remove(&oldest) {
                self.values -= a.len() as u64;
            }
        }
        self.clock += 1;
        self.values += n;
        self.arrays.insert(id, (array, chain, self.clock));
    }
}

impl<'t> Replay<'t> {
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
            let (array, chain) = derive_chain(self.trace, p, depth + 1)?;
            self.chain.set(self.chain.get().max(chain));
            Ok(State::Values {
                dtype: Some(p.dtype),
                // the replay's ops consume their input: one copy, not a rebuild
                array: Arc::unwrap_or_clone(array),
            })
        } else if p.storage.is_some() {
            Ok(State::Strided {
                dtype: p.dtype,
                layout: p.layout.clone(),
                storage: self.trace.storage_bytes(p)?,
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
                    gather(dtype, &layout, &storage, self.limit, |x| x).map_err(|e| self.err(e))?;
                let shape: Vec<usize> = layout.shape().iter().map(|&n| n as usize).collect();
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
                    storage: storage.clone(),
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
                let elements = Layout::new(
                    shape.clone(),
                    byte_strides.iter().map(|s| s / size).collect(),
                    *offset / size as u64,
                )
                .map_err(layout_err)?;
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
/// recorded shape, rounded to the recorded dtype; once per [`Trace`]
/// ([`DerivedCache`]).
pub(crate) fn derive(
    trace: &Trace,
    tensor: &TensorInfo,
    depth: usize,
) -> Result<Arc<ArrayD<f64>>, ReaderError> {
    derive_chain(trace, tensor, depth).map(|(array, _)| array)
}

/// [`derive`], with the length of the longest chain of derived tensors the
/// values come through: a cached rebuild counts the chain it stands for, so
/// the depth limit does not depend on what was read before.
fn derive_chain(
    trace: &Trace,
    tensor: &TensorInfo,
    depth: usize,
) -> Result<(Arc<ArrayD<f64>>, usize), ReaderError> {
    let lock = || trace.derived.lock().unwrap_or_else(|e| e.into_inner());
    let cached = lock().get(tensor.id);
    if let Some((array, chain)) = cached {
        if depth + chain > MAX_DERIVATION_DEPTH + 1 {
            return Err(too_deep(trace, tensor));
        }
        return Ok((array, chain));
    }
    // rebuilt without the lock held: a rebuild asks for its parents
    let (array, chain) = rebuild(trace, tensor, depth)?;
    let array = Arc::new(array);
    lock().put(
        tensor.id,
        array.clone(),
        chain,
        value_limit(trace.file_len()),
    );
    Ok((array, chain))
}

fn too_deep(trace: &Trace, tensor: &TensorInfo) -> ReaderError {
    Replay {
        trace,
        tensor,
        limit: 0,
        chain: Default::default(),
    }
    .err(format!(
        "derived from derived tensors more than {MAX_DERIVATION_DEPTH} deep"
    ))
}

fn rebuild(
    trace: &Trace,
    tensor: &TensorInfo,
    depth: usize,
) -> Result<(ArrayD<f64>, usize), ReaderError> {
    let r = Replay {
        trace,
        tensor,
        limit: value_limit(trace.file_len()),
        chain: Default::default(),
    };
    if depth > MAX_DERIVATION_DEPTH {
        return Err(too_deep(trace, tensor));
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
    let want: Vec<usize> = tensor.layout.shape().iter().map(|&n| n as usize).collect();
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
    Ok((array, r.chain.get() + 1))
}

//! Replaying a lineage on layouts (SPEC.md §5.4).

use crate::codec::{Lineage, Op};
use crate::error::LayoutError;
use crate::layout::{numel, Layout};
use crate::DType;

/// What a parent looks like to a replay.
#[derive(Clone, Debug)]
pub struct ParentLayout {
    /// Its dtype.
    pub dtype: DType,
    /// Its layout.
    pub layout: Layout,
    /// Record id of its storage (`None` for stats-only tensors).
    pub storage: Option<u64>,
}

/// The result of replaying a lineage: what the tensor must look like.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Replayed {
    /// The dtype it must have; `None` when the steps leave it open (a
    /// concat of parts of different dtypes, e.g. f16 hot + q8_0 cold, joins
    /// their values: the recorded tensor or a later step says the type).
    pub dtype: Option<DType>,
    /// The shape it must have.
    pub shape: Vec<u64>,
    /// Its byte strides, when the steps determine them.
    pub byte_strides: Option<Vec<i64>>,
    /// Its storage and byte offset, when every step was a view.
    pub storage: Option<(Option<u64>, u64)>,
}

/// Replay `lineage` from its parents. `Ok(None)` when there is nothing to
/// replay (no steps: the parents are only inputs).
pub fn replay(
    lineage: &Lineage,
    parents: &[ParentLayout],
) -> Result<Option<Replayed>, LayoutError> {
    let Some(first) = lineage.ops.first() else {
        return Ok(None);
    };
    let mut ops = lineage.ops.iter();
    let mut state = if let Op::Concat { axis } = first {
        ops.next();
        concat(*axis, parents)?
    } else {
        let Some(p) = parents.first() else {
            return Err(LayoutError::NoParent {
                op: format!("{first:?}"),
            });
        };
        Replayed {
            dtype: Some(p.dtype),
            shape: p.layout.shape().to_vec(),
            byte_strides: Some(p.layout.byte_strides().to_vec()),
            storage: Some((p.storage, p.layout.storage_offset())),
        }
    };
    for op in ops {
        state = step(state, op)?;
    }
    Ok(Some(state))
}

fn concat(axis: u32, parents: &[ParentLayout]) -> Result<Replayed, LayoutError> {
    let bad = |reason: String| LayoutError::BadConcat { axis, reason };
    let first = parents.first().ok_or_else(|| bad("no parts".into()))?;
    let a = axis as usize;
    if a >= first.layout.ndim() {
        return Err(bad(format!(
            "parts have {} dimensions",
            first.layout.ndim()
        )));
    }
    let mut shape = first.layout.shape().to_vec();
    for p in &parents[1..] {
        if p.layout.ndim() != shape.len() {
            return Err(bad("parts differ in rank".into()));
        }
        for d in 0..shape.len() {
            if d != a && p.layout.shape()[d] != shape[d] {
                return Err(bad(format!(
                    "part shape {:?} does not match {:?} off the axis",
                    p.layout.shape(),
                    shape
                )));
            }
        }
        shape[a] = shape[a]
            .checked_add(p.layout.shape()[a])
            .ok_or_else(|| bad("length overflows".into()))?;
    }
    // Parts of one dtype join into that dtype, contiguous; parts of several
    // dtypes leave the dtype (and so the strides) to the recorded tensor.
    let dtype = parents
        .iter()
        .all(|p| p.dtype == first.dtype)
        .then_some(first.dtype);
    let byte_strides = dtype
        .map(|d| Layout::contiguous(d, &shape, 0))
        .transpose()?
        .map(|l| l.byte_strides().to_vec());
    Ok(Replayed {
        dtype,
        shape,
        byte_strides,
        storage: None,
    })
}

fn step(s: Replayed, op: &Op) -> Result<Replayed, LayoutError> {
    let known = |s: &Replayed| -> Option<Layout> {
        Layout::new(
            s.shape.clone(),
            s.byte_strides.clone()?,
            s.storage.map(|x| x.1).unwrap_or(0),
        )
        .ok()
    };
    Ok(match op {
        Op::View {
            offset,
            shape,
            byte_strides,
        } => {
            let base = s.storage.map(|x| x.1).unwrap_or(0);
            let l = Layout::default()
                .at_offset(base)
                .view(*offset, shape, byte_strides)?;
            Replayed {
                dtype: s.dtype,
                shape: l.shape().to_vec(),
                byte_strides: Some(l.byte_strides().to_vec()),
                storage: s.storage.map(|(id, _)| (id, l.storage_offset())),
            }
        }
        Op::Permute { axes } => permute(s, axes)?,
        Op::Transpose { a, b } => {
            let mut axes: Vec<u32> = (0..s.shape.len() as u32).collect();
            if *a as usize >= axes.len() || *b as usize >= axes.len() {
                return Err(LayoutError::BadAxes {
                    axes: vec![*a, *b],
                    ndim: axes.len(),
                });
            }
            axes.swap(*a as usize, *b as usize);
            permute(s, &axes)?
        }
        Op::Reshape { shape } => match (known(&s), s.dtype) {
            (Some(l), Some(dtype)) => {
                let r = l.reshape(dtype, shape)?;
                Replayed {
                    byte_strides: Some(r.byte_strides().to_vec()),
                    shape: r.shape().to_vec(),
                    ..s
                }
            }
            _ => {
                if numel(shape) != numel(&s.shape) {
                    return Err(LayoutError::BadReshape {
                        from: s.shape,
                        to: shape.clone(),
                        reason: "the element counts differ",
                    });
                }
                Replayed {
                    shape: shape.clone(),
                    byte_strides: None,
                    ..s
                }
            }
        },
        Op::Cont => {
            let strides = s
                .dtype
                .map(|d| Layout::contiguous(d, &s.shape, 0))
                .transpose()?
                .map(|l| l.byte_strides().to_vec());
            Replayed {
                byte_strides: strides,
                storage: None,
                ..s
            }
        }
        Op::Convert { dtype } | Op::Quantize { dtype } | Op::Dequantize { dtype } => Replayed {
            dtype: Some(*dtype),
            byte_strides: None,
            storage: None,
            ..s
        },
        Op::Concat { axis } => {
            return Err(LayoutError::BadConcat {
                axis: *axis,
                reason: "concat must be the first step".into(),
            })
        }
    })
}

fn permute(s: Replayed, axes: &[u32]) -> Result<Replayed, LayoutError> {
    let probe = Layout::new(
        s.shape.clone(),
        s.byte_strides
            .clone()
            .unwrap_or_else(|| vec![0; s.shape.len()]),
        0,
    )?
    .permute(axes)?;
    Ok(Replayed {
        shape: probe.shape().to_vec(),
        byte_strides: s
            .byte_strides
            .as_ref()
            .map(|_| probe.byte_strides().to_vec()),
        ..s
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steps_without_a_parent_say_so() {
        let lineage = Lineage {
            parents: vec![],
            ops: vec![Op::Convert { dtype: DType::F16 }],
            ..Default::default()
        };
        let e = replay(&lineage, &[]).unwrap_err();
        assert!(matches!(e, LayoutError::NoParent { .. }), "{e}");
        assert!(
            e.to_string().contains("Convert") && e.to_string().contains("no parent"),
            "{e}"
        );
    }

    #[test]
    fn kv_cache_chain_replays() {
        // cache_k_l0: f32 [n_ctx=256, n_head=8, head_dim=128] in storage 1
        let cache = Layout::contiguous(DType::F32, &[256, 8, 128], 0).unwrap();
        let parent = ParentLayout {
            dtype: DType::F32,
            layout: cache,
            storage: Some(1),
        };
        let lineage = Lineage {
            parents: vec![2],
            ops: vec![
                Op::View {
                    offset: 0,
                    shape: vec![1, 32, 8, 128],
                    byte_strides: vec![1048576, 4096, 512, 4],
                },
                Op::Permute {
                    axes: vec![0, 2, 1, 3],
                },
            ],
            engine_op: None,
        };
        let r = replay(&lineage, std::slice::from_ref(&parent))
            .unwrap()
            .unwrap();
        assert_eq!(r.shape, vec![1, 8, 32, 128]);
        assert_eq!(r.byte_strides, Some(vec![1048576, 512, 4096, 4]));
        assert_eq!(r.storage, Some((Some(1), 0)));
        let mut l2 = lineage.clone();
        l2.ops.push(Op::Convert { dtype: DType::F16 });
        let r = replay(&l2, &[parent]).unwrap().unwrap();
        assert_eq!(
            (r.dtype, r.byte_strides, r.storage),
            (Some(DType::F16), None, None)
        );
    }

    #[test]
    fn concat_of_parts() {
        let hot = ParentLayout {
            dtype: DType::F16,
            layout: Layout::contiguous(DType::F16, &[56, 2, 32], 0).unwrap(),
            storage: Some(1),
        };
        let cold = ParentLayout {
            dtype: DType::Q8_0,
            layout: Layout::contiguous(DType::Q8_0, &[200, 2, 32], 0).unwrap(),
            storage: Some(2),
        };
        let l = Lineage {
            parents: vec![1, 2],
            ops: vec![
                Op::Concat { axis: 0 },
                Op::Permute {
                    axes: vec![1, 0, 2],
                },
            ],
            engine_op: None,
        };
        let r = replay(&l, &[cold, hot]).unwrap().unwrap();
        assert_eq!(r.shape, vec![2, 256, 32]);
        assert_eq!((r.dtype, r.byte_strides), (None, None));
    }
}

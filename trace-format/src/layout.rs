//! The canonical layout: shape outermost-first, signed byte strides, and a
//! byte offset into a storage.
//!
//! ```
//! use trace_format::{DType, Layout};
//! // ggml ne=[128,256,8,1] f32, contiguous, then permute(0,2,1,3)
//! let cache = Layout::contiguous(DType::F32, &[1, 8, 256, 128], 0).unwrap();
//! let k = cache.permute(&[0, 2, 1, 3]).unwrap();
//! assert_eq!(k.shape(), [1, 256, 8, 128]);
//! assert_eq!(k.byte_strides(), [1048576, 512, 131072, 4]);
//! assert!(!k.is_contiguous(DType::F32));
//! ```

use crate::error::LayoutError;
use crate::DType;

/// The most dimensions a tensor may have.
pub const MAX_DIMS: usize = 64;

/// Where a tensor's elements lie in its storage.
///
/// Element `(i_0, …, i_{n-1})` of a scalar-typed tensor starts at byte
/// `storage_offset + Σ i_d · byte_strides[d]`. Block types map through
/// [`Layout::element_layout`]. A layout says nothing about whether the
/// bytes exist: check it with [`Layout::check_within`] before touching them.
///
/// The fields are private: every layout went through [`Layout::new`]'s
/// checks (rank, dimension count, element count), or was derived from one
/// that did by a method that keeps them.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Default)]
pub struct Layout {
    /// Extent of each dimension, outermost first.
    shape: Vec<u64>,
    /// Signed distance in bytes between neighbours along each dimension.
    byte_strides: Vec<i64>,
    /// Byte offset of element `(0, …, 0)` in the storage.
    storage_offset: u64,
}

/// A layout in units of elements: what a block-typed layout means once its
/// storage is dequantized, and what a scalar layout is when strides divide.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ElementLayout {
    /// Extent of each dimension, outermost first.
    pub shape: Vec<u64>,
    /// Signed distance in elements between neighbours along each dimension.
    pub strides: Vec<i64>,
    /// Element index of `(0, …, 0)` in the storage's element sequence.
    pub offset: u64,
}

/// The number of elements of `shape`, or `None` on overflow.
pub fn numel(shape: &[u64]) -> Option<u64> {
    shape.iter().try_fold(1u64, |acc, &n| acc.checked_mul(n))
}

/// Row-major strides (in units of `unit`) for `shape`, or `None` on overflow.
pub fn row_major_strides(shape: &[u64], unit: i64) -> Option<Vec<i64>> {
    let mut strides = vec![0i64; shape.len()];
    let mut acc: i64 = unit;
    for d in (0..shape.len()).rev() {
        strides[d] = acc;
        acc = acc.checked_mul(i64::try_from(shape[d].max(1)).ok()?)?;
    }
    Some(strides)
}

impl Layout {
    /// Extent of each dimension, outermost first.
    pub fn shape(&self) -> &[u64] {
        &self.shape
    }

    /// Signed distance in bytes between neighbours along each dimension.
    pub fn byte_strides(&self) -> &[i64] {
        &self.byte_strides
    }

    /// Byte offset of element `(0, …, 0)` in the storage.
    pub fn storage_offset(&self) -> u64 {
        self.storage_offset
    }

    /// Every dimension but the innermost: where each innermost row starts
    /// (walking it visits the first element of every row). A layout of
    /// zero dimensions stays as it is.
    pub fn outer(&self) -> Layout {
        let keep = self.shape.len().saturating_sub(1);
        Layout {
            shape: self.shape[..keep].to_vec(),
            byte_strides: self.byte_strides[..keep].to_vec(),
            storage_offset: self.storage_offset,
        }
    }

    /// The same view at another storage offset (where a record's data
    /// field puts it).
    pub fn at_offset(mut self, storage_offset: u64) -> Layout {
        self.storage_offset = storage_offset;
        self
    }

    /// A layout from its parts, checking rank, dimension count and that the
    /// element count fits in 64 bits.
    pub fn new(
        shape: Vec<u64>,
        byte_strides: Vec<i64>,
        storage_offset: u64,
    ) -> Result<Self, LayoutError> {
        if shape.len() != byte_strides.len() {
            return Err(LayoutError::RankMismatch {
                shape: shape.len(),
                strides: byte_strides.len(),
            });
        }
        if shape.len() > MAX_DIMS {
            return Err(LayoutError::TooManyDims {
                ndim: shape.len(),
                max: MAX_DIMS,
            });
        }
        if numel(&shape).is_none() {
            return Err(LayoutError::Overflow { shape });
        }
        Ok(Layout {
            shape,
            byte_strides,
            storage_offset,
        })
    }

    /// The row-major contiguous layout of `shape` for `dtype` at `storage_offset`.
    ///
    /// For block types the innermost dimension must hold whole blocks when
    /// the tensor has more than one row, and its byte stride is the block size
    /// (ggml's `nb[0]`).
    pub fn contiguous(
        dtype: DType,
        shape: &[u64],
        storage_offset: u64,
    ) -> Result<Self, LayoutError> {
        let overflow = || LayoutError::Overflow {
            shape: shape.to_vec(),
        };
        if shape.len() > MAX_DIMS {
            return Err(LayoutError::TooManyDims {
                ndim: shape.len(),
                max: MAX_DIMS,
            });
        }
        numel(shape).ok_or_else(overflow)?;
        let strides = if dtype.is_block() {
            let (be, bb) = (dtype.block_elems(), dtype.block_bytes());
            let mut strides = vec![0i64; shape.len()];
            if let Some(last) = shape.len().checked_sub(1) {
                strides[last] = bb as i64;
                let rows_of_blocks = shape[..last].iter().any(|&n| n > 1);
                if rows_of_blocks && shape[last] % be != 0 {
                    return Err(LayoutError::PartialBlock {
                        dtype,
                        block_elems: be,
                        numel: shape[last],
                    });
                }
                let row_bytes = (shape[last].max(1) / be)
                    .max(1)
                    .checked_mul(bb)
                    .ok_or_else(overflow)?;
                let mut acc = i64::try_from(row_bytes).map_err(|_| overflow())?;
                for d in (0..last).rev() {
                    strides[d] = acc;
                    acc = acc
                        .checked_mul(i64::try_from(shape[d].max(1)).map_err(|_| overflow())?)
                        .ok_or_else(overflow)?;
                }
            }
            strides
        } else {
            let eb = dtype.block_bytes() as i64;
            row_major_strides(shape, eb).ok_or_else(overflow)?
        };
        Ok(Layout {
            shape: shape.to_vec(),
            byte_strides: strides,
            storage_offset,
        })
    }

    /// Number of dimensions.
    pub fn ndim(&self) -> usize {
        self.shape.len()
    }

    /// Number of elements (checked at construction; saturates otherwise).
    pub fn numel(&self) -> u64 {
        numel(&self.shape).unwrap_or(u64::MAX)
    }

    /// The layout in units of elements.
    ///
    /// Scalar dtypes: every byte stride of a dimension longer than 1, and
    /// the offset, must be a multiple of the element size (a size-1
    /// dimension's stride is ignored and reported as 0 when it does not divide).
    ///
    /// Block dtypes (the mapping SPEC.md §6 defines): the innermost dimension is packed — its
    /// byte stride must be the block size (ggml's `nb[0]`) and its element
    /// stride is 1; every other stride `s` maps to `s · block_elems /
    /// block_bytes` elements and the offset likewise, each of which must be
    /// whole. A q8_0 K-cache view `ne=[16,2,256,1]`, `nb=[34,17,34,8704]`
    /// (head_dim 16) maps to element strides `[8192,32,16,1]` in canonical
    /// order (`[1,16,32,8192]` fastest first).
    pub fn element_layout(&self, dtype: DType) -> Result<ElementLayout, LayoutError> {
        let (be, bb) = (dtype.block_elems() as i128, dtype.block_bytes() as i128);
        let map = |bytes: i128, what: &str| -> Result<i64, LayoutError> {
            let scaled = bytes * be;
            if scaled % bb != 0 {
                return Err(LayoutError::BlockMapping {
                    dtype,
                    reason: format!("{what} of {bytes} bytes is not a whole number of elements ({bb} bytes hold {be} values)"),
                });
            }
            i64::try_from(scaled / bb).map_err(|_| LayoutError::Overflow {
                shape: self.shape.clone(),
            })
        };
        let last = self.ndim().checked_sub(1);
        let mut strides = Vec::with_capacity(self.ndim());
        for (d, (&n, &s)) in self.shape.iter().zip(&self.byte_strides).enumerate() {
            let es = if dtype.is_block() && Some(d) == last {
                if n > 1 && s as i128 != bb {
                    return Err(LayoutError::BlockMapping {
                        dtype,
                        reason: format!(
                            "the innermost dimension must be packed (byte stride {bb}, ggml's nb[0]); it has byte stride {s}"
                        ),
                    });
                }
                1
            } else {
                match map(s as i128, "a byte stride") {
                    Ok(es) => es,
                    Err(_) if n <= 1 => 0,
                    Err(e) => return Err(e),
                }
            };
            strides.push(es);
        }
        let offset = map(self.storage_offset as i128, "the storage offset")? as u64;
        Ok(ElementLayout {
            shape: self.shape.clone(),
            strides,
            offset,
        })
    }

    /// Element strides, where every byte stride divides (see [`Layout::element_layout`]).
    pub fn element_strides(&self, dtype: DType) -> Option<Vec<i64>> {
        self.element_layout(dtype).ok().map(|l| l.strides)
    }

    /// Whether the elements are row-major and dense, ignoring the stride of
    /// every size-1 dimension (ggml leaves meaningless `nb` there).
    pub fn is_contiguous(&self, dtype: DType) -> bool {
        if self.shape.contains(&0) {
            return true;
        }
        if dtype.is_block() {
            let Ok(el) = self.element_layout(dtype) else {
                return false;
            };
            let mut expect: i64 = 1;
            for d in (0..self.ndim()).rev() {
                if self.shape[d] != 1 && el.strides[d] != expect {
                    return false;
                }
                expect = expect.saturating_mul(self.shape[d] as i64);
            }
            true
        } else {
            let mut expect: i64 = dtype.block_bytes() as i64;
            for d in (0..self.ndim()).rev() {
                if self.shape[d] != 1 && self.byte_strides[d] != expect {
                    return false;
                }
                expect = expect.saturating_mul(self.shape[d] as i64);
            }
            true
        }
    }

    /// The byte range `[start, end)` of the storage that the view touches,
    /// or `None` for a tensor with no elements. `start` may be negative and
    /// `end` past any storage: check with [`Layout::check_within`].
    pub fn byte_span(&self, dtype: DType) -> Result<Option<(i128, i128)>, LayoutError> {
        if self.shape.contains(&0) {
            return Ok(None);
        }
        let overflow = || LayoutError::Overflow {
            shape: self.shape.clone(),
        };
        if dtype.is_block() {
            let el = self.element_layout(dtype)?;
            let (lo, hi) =
                extent(&el.shape, &el.strides, el.offset as i128).ok_or_else(overflow)?;
            let (be, bb) = (dtype.block_elems() as i128, dtype.block_bytes() as i128);
            let start = lo.div_euclid(be).checked_mul(bb).ok_or_else(overflow)?;
            let end = (hi.div_euclid(be) + 1)
                .checked_mul(bb)
                .ok_or_else(overflow)?;
            Ok(Some((start, end)))
        } else {
            let (lo, hi) = extent(&self.shape, &self.byte_strides, self.storage_offset as i128)
                .ok_or_else(overflow)?;
            Ok(Some((lo, hi + dtype.block_bytes() as i128)))
        }
    }

    /// Check that every byte the view touches lies in a storage of
    /// `storage_len` bytes.
    pub fn check_within(&self, dtype: DType, storage_len: u64) -> Result<(), LayoutError> {
        if let Some((start, end)) = self.byte_span(dtype)? {
            if start < 0 || end > storage_len as i128 {
                return Err(LayoutError::OutOfBounds {
                    start,
                    end,
                    storage_len,
                });
            }
        }
        Ok(())
    }

    /// `view(offset, shape, byte_strides)`: a new view of the same storage,
    /// `offset` bytes after this one's start.
    pub fn view(
        &self,
        offset: u64,
        shape: &[u64],
        byte_strides: &[i64],
    ) -> Result<Layout, LayoutError> {
        let storage_offset =
            self.storage_offset
                .checked_add(offset)
                .ok_or_else(|| LayoutError::Overflow {
                    shape: shape.to_vec(),
                })?;
        Layout::new(shape.to_vec(), byte_strides.to_vec(), storage_offset)
    }

    /// `permute(axes)`, numpy's meaning: dimension `i` of the result is
    /// dimension `axes[i]` of this layout.
    pub fn permute(&self, axes: &[u32]) -> Result<Layout, LayoutError> {
        check_axes(axes, self.ndim())?;
        Ok(Layout {
            shape: axes.iter().map(|&a| self.shape[a as usize]).collect(),
            byte_strides: axes
                .iter()
                .map(|&a| self.byte_strides[a as usize])
                .collect(),
            storage_offset: self.storage_offset,
        })
    }

    /// `transpose(a, b)`: swap two dimensions.
    pub fn transpose(&self, a: u32, b: u32) -> Result<Layout, LayoutError> {
        let mut axes: Vec<u32> = (0..self.ndim() as u32).collect();
        if a as usize >= axes.len() || b as usize >= axes.len() {
            return Err(LayoutError::BadAxes {
                axes: vec![a, b],
                ndim: self.ndim(),
            });
        }
        axes.swap(a as usize, b as usize);
        self.permute(&axes)
    }

    /// `reshape(shape)` of a contiguous layout (as ggml and `torch.view` of a
    /// contiguous tensor): same start, row-major strides for the new shape.
    pub fn reshape(&self, dtype: DType, shape: &[u64]) -> Result<Layout, LayoutError> {
        let bad = |reason| LayoutError::BadReshape {
            from: self.shape.clone(),
            to: shape.to_vec(),
            reason,
        };
        if numel(shape) != Some(self.numel()) {
            return Err(bad("the element counts differ"));
        }
        if !self.is_contiguous(dtype) {
            return Err(bad("the source is not contiguous"));
        }
        Layout::contiguous(dtype, shape, self.storage_offset)
    }
}

/// Lowest and highest offset reached by `offset + Σ i_d · strides[d]` over a
/// non-empty shape; `None` on overflow.
fn extent(shape: &[u64], strides: &[i64], offset: i128) -> Option<(i128, i128)> {
    let (mut lo, mut hi) = (offset, offset);
    for (&n, &s) in shape.iter().zip(strides) {
        let reach = (n as i128 - 1).checked_mul(s as i128)?;
        if reach < 0 {
            lo = lo.checked_add(reach)?;
        } else {
            hi = hi.checked_add(reach)?;
        }
    }
    Some((lo, hi))
}

/// Check that `axes` is a permutation of `0..ndim`.
pub fn check_axes(axes: &[u32], ndim: usize) -> Result<(), LayoutError> {
    let mut seen = vec![false; ndim];
    let ok = axes.len() == ndim
        && axes.iter().all(|&a| {
            let a = a as usize;
            a < ndim && !std::mem::replace(&mut seen[a], true)
        });
    if ok {
        Ok(())
    } else {
        Err(LayoutError::BadAxes {
            axes: axes.to_vec(),
            ndim,
        })
    }
}

/// Conversions between the canonical layout and ggml's `ne`/`nb` (fastest
/// dimension first, always 4 entries in ggml; any count here).
pub mod ggml {
    use super::Layout;
    use crate::error::LayoutError;

    /// The canonical layout of a ggml tensor: `shape = reverse(ne)`,
    /// `byte_strides = reverse(nb)`. `offset` is the byte offset in the
    /// storage (ggml's `view_offs` for a view of `view_src`).
    pub fn to_canonical(ne: &[i64], nb: &[u64], offset: u64) -> Result<Layout, LayoutError> {
        let shape = ne
            .iter()
            .rev()
            .map(|&n| u64::try_from(n).map_err(|_| LayoutError::Overflow { shape: vec![] }))
            .collect::<Result<Vec<_>, _>>()?;
        let strides = nb
            .iter()
            .rev()
            .map(|&b| {
                i64::try_from(b).map_err(|_| LayoutError::Overflow {
                    shape: shape.clone(),
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        Layout::new(shape, strides, offset)
    }

    /// ggml's `ne`/`nb` of a canonical layout padded to `ndim` entries
    /// (ggml uses 4); `None` if a stride is negative (ggml cannot say it).
    pub fn from_canonical(layout: &Layout, ndim: usize) -> Option<(Vec<i64>, Vec<u64>)> {
        let mut ne: Vec<i64> = layout.shape().iter().rev().map(|&n| n as i64).collect();
        let mut nb: Vec<u64> = layout
            .byte_strides
            .iter()
            .rev()
            .map(|&s| u64::try_from(s).ok())
            .collect::<Option<_>>()?;
        while ne.len() < ndim {
            let next = nb.last().copied().unwrap_or(0) * (*ne.last().unwrap_or(&1)).max(1) as u64;
            ne.push(1);
            nb.push(next);
        }
        Some((ne, nb))
    }

    /// Canonical `permute` axes for ggml's `ggml_permute(a, p0, p1, p2, p3)`
    /// (source dimension `i` goes to position `p_i`, fastest first).
    ///
    /// ```
    /// // llama.cpp permutes K with ggml_permute(k, 0, 2, 1, 3);
    /// // ggml_permute(a, 1, 2, 0, 3) turns ne=[a,b,c,d] into [c,a,b,d], canonically [d,c,b,a] into [d,b,a,c]
    /// assert_eq!(trace_format::layout::ggml::permute_axes(&[0, 2, 1, 3]), Some(vec![0, 2, 1, 3]));
    /// assert_eq!(trace_format::layout::ggml::permute_axes(&[1, 2, 0, 3]), Some(vec![0, 2, 3, 1]));
    /// ```
    pub fn permute_axes(p: &[u32]) -> Option<Vec<u32>> {
        let n = p.len() as u32;
        let mut axes = vec![u32::MAX; p.len()];
        for (i, &pi) in p.iter().enumerate() {
            let slot = (n - 1).checked_sub(pi)? as usize;
            if axes[slot] != u32::MAX {
                return None;
            }
            axes[slot] = n - 1 - i as u32;
        }
        Some(axes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn q8_0_half_block_heads_map_to_elements() {
        // llama.cpp q8_0 K cache, head_dim 16: ne=[16,2,256,1], nb=[34,17,34,8704]
        let l = ggml::to_canonical(&[16, 2, 256, 1], &[34, 17, 34, 8704], 0).unwrap();
        assert_eq!(l.shape, vec![1, 256, 2, 16]);
        let el = l.element_layout(DType::Q8_0).unwrap();
        assert_eq!(el.strides, vec![8192, 32, 16, 1]);
        assert!(l.is_contiguous(DType::Q8_0));
        l.check_within(DType::Q8_0, 8704).unwrap();
        assert!(l.check_within(DType::Q8_0, 8703).is_err());
        // the second head alone starts half-way into a block
        let head1 = l.view(17, &[1, 256, 1, 16], &[8704, 34, 17, 34]).unwrap();
        assert_eq!(head1.element_layout(DType::Q8_0).unwrap().offset, 16);
        // a 3-byte offset is not a whole number of elements
        let bad = l.view(3, &[1, 256, 1, 16], &[8704, 34, 17, 34]).unwrap();
        assert!(matches!(
            bad.element_layout(DType::Q8_0),
            Err(LayoutError::BlockMapping { .. })
        ));
    }

    #[test]
    fn size_one_strides_are_ignored_for_contiguity() {
        let l = Layout::new(vec![1, 4, 1, 8], vec![999, 32, -5, 4], 0).unwrap();
        assert!(l.is_contiguous(DType::F32));
        let l = Layout::new(vec![4, 8], vec![4, 16], 0).unwrap();
        assert!(!l.is_contiguous(DType::F32));
    }

    #[test]
    fn negative_and_zero_strides_span() {
        // reversed rows of a 3x4 f32 matrix
        let l = Layout::new(vec![3, 4], vec![-16, 4], 32).unwrap();
        assert_eq!(l.byte_span(DType::F32).unwrap(), Some((0, 48)));
        l.check_within(DType::F32, 48).unwrap();
        let l = Layout::new(vec![3, 4], vec![-16, 4], 16).unwrap();
        assert!(matches!(
            l.check_within(DType::F32, 48),
            Err(LayoutError::OutOfBounds { start: -16, .. })
        ));
        let bcast = Layout::new(vec![1000, 4], vec![0, 4], 0).unwrap();
        assert_eq!(bcast.byte_span(DType::F32).unwrap(), Some((0, 16)));
    }

    #[test]
    fn overflow_is_an_error() {
        assert!(matches!(
            Layout::new(vec![u64::MAX, 2], vec![1, 1], 0),
            Err(LayoutError::Overflow { .. })
        ));
        let l = Layout::new(vec![1 << 40, 1 << 20], vec![i64::MAX, i64::MAX], u64::MAX).unwrap();
        assert!(l.check_within(DType::F32, 100).is_err());
    }

    #[test]
    fn reshape_needs_contiguous() {
        let l = Layout::contiguous(DType::F16, &[2, 3, 4], 8).unwrap();
        let r = l.reshape(DType::F16, &[6, 4]).unwrap();
        assert_eq!(r.byte_strides, vec![8, 2]);
        assert_eq!(r.storage_offset, 8);
        let t = l.transpose(1, 2).unwrap();
        assert!(t.reshape(DType::F16, &[24]).is_err());
        assert!(l.reshape(DType::F16, &[5]).is_err());
    }

    #[test]
    fn ggml_round_trip() {
        let l = ggml::to_canonical(&[128, 256, 8, 1], &[4, 512, 131072, 1048576], 0).unwrap();
        let (ne, nb) = ggml::from_canonical(&l, 4).unwrap();
        assert_eq!(ne, vec![128, 256, 8, 1]);
        assert_eq!(nb, vec![4, 512, 131072, 1048576]);
    }
}

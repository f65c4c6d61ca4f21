//! Walking a strided layout: the offset of every element, row-major (as
//! candle keeps `strided_index.rs` beside its `layout.rs`).

use crate::layout::Layout;

impl Layout {
    /// Call `f(offset)` for every element, row-major: the offsets are
    /// `storage_offset + Σ i·stride`, in the unit of the strides (bytes, or
    /// elements for a block type's element layout). The layout must have
    /// been checked against its storage ([`Layout::new`] and the bounds
    /// rule): offsets are not checked again.
    ///
    /// ```
    /// use trace_format::{DType, Layout};
    /// let t = Layout::contiguous(DType::F32, &[2, 3], 0).unwrap().transpose(0, 1).unwrap();
    /// let mut offsets = Vec::new();
    /// t.for_each_offset(|o| offsets.push(o));
    /// assert_eq!(offsets, [0, 12, 4, 16, 8, 20]);
    /// ```
    pub fn for_each_offset(&self, f: impl FnMut(usize)) {
        self.for_each_offset_from(0, self.numel(), f);
    }

    /// Call `f(offset)` for the `count` elements of a checked layout from the
    /// `first` on (row-major), the offsets as [`Layout::for_each_offset`] gives them ([`Layout::for_each_offset`] is
    /// all of them; the rows of a view, its outer dimensions, go a range at a
    /// time).
    pub fn for_each_offset_from(&self, first: u64, count: u64, mut f: impl FnMut(usize)) {
        let (shape, strides) = (self.shape(), self.byte_strides());
        if count == 0 || shape.contains(&0) {
            return;
        }
        let nd = shape.len();
        let mut idx = vec![0u64; nd];
        let mut base = self.storage_offset() as isize;
        let mut rest = first;
        for d in (0..nd).rev() {
            idx[d] = rest % shape[d];
            rest /= shape[d];
            base += idx[d] as isize * strides[d] as isize;
        }
        if nd == 0 {
            f(base as usize);
            return;
        }
        let (inner_n, inner_s) = (shape[nd - 1], strides[nd - 1] as isize);
        let mut left = count;
        loop {
            // the rest of this line of the innermost dimension
            let n = (inner_n - idx[nd - 1]).min(left);
            let mut o = base;
            for _ in 0..n {
                f(o as usize);
                o += inner_s;
            }
            left -= n;
            if left == 0 {
                return;
            }
            // the start of the next line
            base -= idx[nd - 1] as isize * inner_s;
            idx[nd - 1] = 0;
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
}

#[cfg(test)]
mod tests {
    use crate::{DType, Layout};

    /// Every offset against Σ i·stride, for permuted, negative and offset views.
    #[test]
    fn offsets_are_the_strided_sum() {
        let base = Layout::contiguous(DType::F32, &[3, 4, 5], 0).unwrap();
        let mut views = vec![base.clone(), base.permute(&[2, 0, 1]).unwrap()];
        views.push(Layout::new(vec![3, 4], vec![-80, 4], 160).unwrap());
        for v in views {
            let mut got = Vec::new();
            v.for_each_offset(|o| got.push(o));
            let mut want = Vec::new();
            let n: u64 = v.shape().iter().product();
            for flat in 0..n {
                let (mut rest, mut o) = (flat, v.storage_offset() as i64);
                for d in (0..v.shape().len()).rev() {
                    o += (rest % v.shape()[d]) as i64 * v.byte_strides()[d];
                    rest /= v.shape()[d];
                }
                want.push(o as usize);
            }
            assert_eq!(got, want, "{v:?}");
            // from the middle, a range at a time
            for first in [0, 1, 7, n - 1] {
                let mut part = Vec::new();
                v.for_each_offset_from(first, 5, |o| part.push(o));
                let end = (first + 5).min(n) as usize;
                assert_eq!(part, want[first as usize..end]);
            }
        }
    }
}

//! Strided layouts of a contiguous value seen through a chain of movement ops (Reshape,
//! Permute, Slice): what fuse.rs needs to let a matmul read such a chain's result in place.
//! Each axis is a list of atoms (size, stride), outermost first: an axis made by merging
//! axes that are not contiguous with each other (attention's B and H) keeps one atom each.

use crate::kernels::matmul::Strided;

/// A view of a row-major buffer: element index = offset + sum over axes and atoms of
/// (that atom's digit of the axis index) * stride.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Layout {
    pub offset: usize,
    pub axes: Vec<Vec<(usize, usize)>>,
}

/// Drop size-1 atoms and merge neighbours (s1, st1), (s2, st2) with st1 = s2 * st2.
fn simplify(atoms: &[(usize, usize)]) -> Vec<(usize, usize)> {
    let mut out: Vec<(usize, usize)> = Vec::new();
    for &(s, st) in atoms.iter().filter(|a| a.0 != 1) {
        match out.last_mut() {
            Some(last) if last.1 == s * st => *last = (last.0 * s, st),
            _ => out.push((s, st)),
        }
    }
    out
}

impl Layout {
    /// A row-major value of `shape`.
    pub fn contiguous(shape: &[usize]) -> Self {
        let mut stride = 1;
        let mut axes = vec![vec![]; shape.len()];
        for (i, &s) in shape.iter().enumerate().rev() {
            axes[i] = simplify(&[(s, stride)]);
            stride *= s;
        }
        Layout { offset: 0, axes }
    }

    /// Output axis i is input axis perm`[i]`.
    pub fn permute(&self, perm: &[usize]) -> Option<Self> {
        let axes = perm
            .iter()
            .map(|&p| self.axes.get(p).cloned())
            .collect::<Option<Vec<_>>>()?;
        Some(Layout {
            offset: self.offset,
            axes,
        })
    }

    /// Indices start..start + len of `axis`, where they form atoms (None otherwise).
    pub fn slice(&self, axis: usize, start: usize, len: usize) -> Option<Self> {
        let (off, atoms) = slice_atoms(self.axes.get(axis)?, start, len)?;
        let mut axes = self.axes.clone();
        axes[axis] = simplify(&atoms);
        Some(Layout {
            offset: self.offset + off,
            axes,
        })
    }

    /// The same elements as `shape`, where each new axis is made of whole (or evenly split)
    /// atoms (None otherwise).
    pub fn reshape(&self, shape: &[usize]) -> Option<Self> {
        let flat: Vec<(usize, usize)> = self.axes.iter().flatten().copied().collect();
        let mut atoms = simplify(&flat)
            .into_iter()
            .collect::<std::collections::VecDeque<_>>();
        let mut axes = Vec::with_capacity(shape.len());
        for &want in shape {
            let (mut n, mut axis) = (want, vec![]);
            while n > 1 {
                let (s, st) = atoms.pop_front()?;
                if n.is_multiple_of(s) {
                    axis.push((s, st));
                    n /= s;
                } else if s.is_multiple_of(n) {
                    // The atom's outer part ends this axis; its inner part starts the next.
                    axis.push((n, st * (s / n)));
                    atoms.push_front((s / n, st));
                    n = 1;
                } else {
                    return None;
                }
            }
            axes.push(simplify(&axis));
        }
        atoms.is_empty().then_some(Layout {
            offset: self.offset,
            axes,
        })
    }

    /// A rank-3 layout `[batch, rows, cols]` as a matmul operand's strides: rows and cols one
    /// atom each, the batch at most two (a two-level batch).
    pub fn strided(&self) -> Option<Strided> {
        let [z, r, c] = &self.axes[..] else {
            return None;
        };
        let one = |a: &[(usize, usize)]| match a {
            [] => Some(0),
            [(_, st)] => Some(*st),
            _ => None,
        };
        let (row, col) = (one(r)?, one(c)?);
        let (split, outer, inner) = match z[..] {
            [] => (1, 0, 0),
            [(_, st)] => (1, st, 0),
            [(_, st0), (s1, st1)] => (s1, st0, st1),
            _ => return None,
        };
        Some(Strided {
            offset: self.offset,
            split,
            outer,
            inner,
            row,
            col,
        })
    }
}

/// Indices start..start + len of an axis of `atoms`: the offset it adds and its atoms.
fn slice_atoms(
    atoms: &[(usize, usize)],
    start: usize,
    len: usize,
) -> Option<(usize, Vec<(usize, usize)>)> {
    let Some((&(_, st0), rest)) = atoms.split_first() else {
        return (start == 0 && len == 1).then_some((0, vec![]));
    };
    let inner: usize = rest.iter().map(|a| a.0).product();
    if start.is_multiple_of(inner) && len.is_multiple_of(inner) {
        let mut out = vec![(len / inner, st0)];
        out.extend_from_slice(rest);
        return Some(((start / inner) * st0, out));
    }
    // Within one index of the outer atom: slice the inner ones.
    if start / inner == (start + len - 1) / inner {
        let (off, out) = slice_atoms(rest, start % inner, len)?;
        return Some(((start / inner) * st0 + off, out));
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Attention's q, k, v: qkv `[B*T, 3D]` -> `[B, T, 3, H, hd]` -> `[3, B, H, T, hd]` ->
    /// `[3*B*H, T, hd]` -> slice j: a two-level batch (b, h).
    #[test]
    fn attention_heads_are_a_two_level_batch() {
        let (b, t, h, hd) = (2, 5, 3, 4);
        let d = h * hd;
        for j in 0..3 {
            let l = Layout::contiguous(&[b * t, 3 * d])
                .reshape(&[b, t, 3, h, hd])
                .and_then(|l| l.permute(&[2, 0, 3, 1, 4]))
                .and_then(|l| l.reshape(&[3 * b * h, t, hd]))
                .and_then(|l| l.slice(0, j * b * h, b * h))
                .and_then(|l| l.reshape(&[b * h, t, hd]))
                .unwrap();
            let s = l.strided().unwrap();
            let want = Strided {
                offset: j * d,
                split: h,
                outer: t * 3 * d,
                inner: hd,
                row: 3 * d,
                col: 1,
            };
            assert_eq!(s, want);
        }
    }

    #[test]
    fn merging_strided_axes_fails_where_no_atoms_fit() {
        let l = Layout::contiguous(&[4, 6]).permute(&[1, 0]).unwrap();
        // [6, 4] transposed, flattened to 24 then cut as [8, 3]: 3 does not divide 4.
        assert!(l.reshape(&[8, 3]).is_none());
        assert!(l.reshape(&[24]).unwrap().strided().is_none());
        // A slice across an outer index of a two-atom axis.
        let m = l.reshape(&[24, 1]).unwrap();
        assert!(m.slice(0, 2, 4).is_none());
        assert_eq!(m.slice(0, 4, 8).unwrap().offset, 1);
    }
}

//! Strided copies: shaders/copy.wgsl, its wrapper [`copy_strided`], the layout helpers on
//! it (permute, slice, pad_into, concat, expand) and their references.
//!
//! x and y must be different buffers: WebGPU forbids binding one buffer read-only and
//! read-write in the same dispatch, even at different offsets.

use std::sync::Arc;

use bytemuck::{Pod, Zeroable};

use super::elementwise::MAX_RANK;
use super::{dispatch, grid_1d, Dispatch, KernelCall, Shader};
use crate::gpu::{Access, Gpu};
use crate::tensor::Tensor;
use crate::{Error, Result};

/// y[y_offset + sum_d k_d * y_strides`[d]`] (+)= x[x_offset + sum_d k_d * x_strides`[d]`] for
/// every k in the box `shape`. Offsets and strides in elements, relative to each tensor's
/// own start. Any rank works if it merges down to [`MAX_RANK`] dimensions.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CopySpec {
    pub shape: Vec<usize>,
    pub x_offset: usize,
    pub x_strides: Vec<usize>,
    pub y_offset: usize,
    pub y_strides: Vec<usize>,
    /// y += x instead of y = x.
    pub accumulate: bool,
}

/// Row-major element strides of `shape`.
pub fn contiguous_strides(shape: &[usize]) -> Vec<usize> {
    let mut s = vec![1; shape.len()];
    for d in (0..shape.len().saturating_sub(1)).rev() {
        s[d] = s[d + 1] * shape[d + 1];
    }
    s
}

impl CopySpec {
    /// A plain copy of a contiguous box: x and y both row-major with the box's shape.
    pub fn contiguous(shape: &[usize]) -> CopySpec {
        CopySpec {
            shape: shape.to_vec(),
            x_offset: 0,
            x_strides: contiguous_strides(shape),
            y_offset: 0,
            y_strides: contiguous_strides(shape),
            accumulate: false,
        }
    }

    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }

    /// The same copy with size-1 dimensions dropped and neighbours merged where both x
    /// and y step across them evenly: (dims, x strides, y strides), at least one dimension.
    pub fn merged(&self) -> (Vec<usize>, Vec<usize>, Vec<usize>) {
        let (mut dims, mut xs, mut ys) = (vec![], vec![], vec![]);
        for d in 0..self.shape.len() {
            let n = self.shape[d];
            if n == 1 {
                continue;
            }
            let last = dims.len().wrapping_sub(1);
            if !dims.is_empty()
                && xs[last] == self.x_strides[d] * n
                && ys[last] == self.y_strides[d] * n
            {
                dims[last] *= n;
                xs[last] = self.x_strides[d];
                ys[last] = self.y_strides[d];
            } else {
                dims.push(n);
                xs.push(self.x_strides[d]);
                ys.push(self.y_strides[d]);
            }
        }
        if dims.is_empty() {
            (vec![1], vec![0], vec![0])
        } else {
            (dims, xs, ys)
        }
    }
}

/// Params of copy.wgsl (128 bytes).
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct Params {
    n: u32,
    rank: u32,
    flags: u32,
    _pad0: u32,
    x_offset: u32,
    y_offset: u32,
    _pad1: [u32; 2],
    dims: [u32; MAX_RANK],
    xs: [u32; MAX_RANK],
    ys: [u32; MAX_RANK],
}

/// The largest index `offset + sum (n_d - 1) * s_d` reaches (None for an empty box).
fn last_index(shape: &[usize], offset: usize, strides: &[usize]) -> Option<usize> {
    if shape.contains(&0) {
        return None;
    }
    Some(
        offset
            + shape
                .iter()
                .zip(strides)
                .map(|(n, s)| (n - 1) * s)
                .sum::<usize>(),
    )
}

/// Whether no two points of the box map to one element: sorted by stride, each stride
/// passes the furthest reach of the smaller ones (a sufficient condition).
fn injective(dims: &[usize], strides: &[usize]) -> bool {
    let mut by_stride: Vec<(usize, usize)> =
        strides.iter().copied().zip(dims.iter().copied()).collect();
    by_stride.sort();
    let mut reach = 0;
    for (s, n) in by_stride {
        if n > 1 {
            if s <= reach {
                return false;
            }
            reach += (n - 1) * s;
        }
    }
    true
}

/// The strided copy of `spec` from x into y (see [`CopySpec`]).
pub fn copy_strided(gpu: &Gpu, spec: &CopySpec, x: &Tensor, y: &Tensor) -> Result<Dispatch> {
    let op = "copy_strided";
    let rank = spec.shape.len();
    if spec.x_strides.len() != rank || spec.y_strides.len() != rank {
        return Err(Error::shape(
            op,
            format!(
                "box {:?} has {rank} dimensions but x strides {:?} and y strides {:?}",
                spec.shape, spec.x_strides, spec.y_strides
            ),
        ));
    }
    for (name, t, offset, strides) in [
        ("x", x, spec.x_offset, &spec.x_strides),
        ("y", y, spec.y_offset, &spec.y_strides),
    ] {
        if let Some(last) = last_index(&spec.shape, offset, strides) {
            if last >= t.numel() {
                return Err(Error::shape(
                    op,
                    format!(
                        "box {:?} at {name} offset {offset} with strides {strides:?} reaches element {last}, but {name} {:?} has {}",
                        spec.shape,
                        t.shape,
                        t.numel()
                    ),
                ));
            }
        }
    }
    let (dims, xs, ys) = spec.merged();
    if !injective(&dims, &ys) {
        return Err(Error::shape(
            op,
            format!(
                "box {:?} with y strides {:?} writes some y elements more than once. Hint: reduce with a sum kernel instead",
                spec.shape, spec.y_strides
            ),
        ));
    }
    if dims.len() > MAX_RANK {
        return Err(Error::shape(
            op,
            format!(
                "box {:?} merges to {} dimensions; the kernel indexes at most {MAX_RANK}",
                spec.shape,
                dims.len()
            ),
        ));
    }
    if Arc::ptr_eq(&x.buffer, &y.buffer) {
        return Err(Error::shape(
            op,
            format!(
                "x {:?} and y {:?} are views of one buffer; WebGPU forbids binding one buffer read-only and read-write in one dispatch. Hint: copy through a separate buffer",
                x.shape, y.shape
            ),
        ));
    }
    let flat = dims.len() == 1 && xs[0] == 1 && ys[0] == 1;
    let mut p = Params {
        n: spec.numel() as u32,
        rank: dims.len() as u32,
        flags: spec.accumulate as u32,
        x_offset: spec.x_offset as u32,
        y_offset: spec.y_offset as u32,
        ..Params::zeroed()
    };
    for d in 0..dims.len() {
        (p.dims[d], p.xs[d], p.ys[d]) = (dims[d] as u32, xs[d] as u32, ys[d] as u32);
    }
    dispatch(
        gpu,
        &KernelCall {
            shader: Shader::Copy,
            entry: op,
            params: bytemuck::bytes_of(&p),
            bindings: &[(x, Access::Read), (y, Access::ReadWrite)],
            workgroups: grid_1d(gpu, op, spec.numel())?,
            constants: &[("FLAT", flat as u8 as f64)],
        },
    )
}

/// y = x with its axes reordered: y.shape`[d]` = x.shape[perm`[d]`] (torch.permute).
pub fn permute(gpu: &Gpu, x: &Tensor, perm: &[usize], y: &Tensor) -> Result<Dispatch> {
    let spec = permute_spec(&x.shape, perm, &y.shape)?;
    copy_strided(gpu, &spec, x, y)
}

pub fn permute_spec(x_shape: &[usize], perm: &[usize], y_shape: &[usize]) -> Result<CopySpec> {
    let rank = x_shape.len();
    let mut seen = vec![false; rank];
    let valid = perm.len() == rank
        && perm
            .iter()
            .all(|&a| a < rank && !std::mem::replace(&mut seen[a], true));
    if !valid {
        return Err(Error::shape(
            "permute",
            format!("{perm:?} is not a permutation of the {rank} axes of x {x_shape:?}"),
        ));
    }
    let want: Vec<usize> = perm.iter().map(|&a| x_shape[a]).collect();
    if y_shape != want {
        return Err(Error::shape(
            "permute",
            format!("x {x_shape:?} permuted by {perm:?} is {want:?}, but y is {y_shape:?}"),
        ));
    }
    let cx = contiguous_strides(x_shape);
    Ok(CopySpec {
        x_strides: perm.iter().map(|&a| cx[a]).collect(),
        ..CopySpec::contiguous(y_shape)
    })
}

/// y = x`[.., start..start + len, ..]` along `axis` (y has x's shape with len there).
pub fn slice(
    gpu: &Gpu,
    x: &Tensor,
    axis: usize,
    start: usize,
    len: usize,
    y: &Tensor,
) -> Result<Dispatch> {
    let op = "slice";
    if axis >= x.shape.len() || start + len > x.shape[axis] {
        return Err(Error::shape(
            op,
            format!(
                "axis {axis}, elements {start}..{} of x {:?}",
                start + len,
                x.shape
            ),
        ));
    }
    let mut want = x.shape.clone();
    want[axis] = len;
    super::expect_shape(op, "y", y, &want)?;
    let cx = contiguous_strides(&x.shape);
    let spec = CopySpec {
        x_offset: start * cx[axis],
        x_strides: cx,
        ..CopySpec::contiguous(&want)
    };
    copy_strided(gpu, &spec, x, y)
}

/// Copy (or with `accumulate`, add) x into the sub-box of y that starts at `at` (one
/// index per axis; same rank). The rest of y is left as it is: zero it first for a pad,
/// or use this as the backward of [`slice`](fn@slice).
pub fn pad_into(
    gpu: &Gpu,
    x: &Tensor,
    y: &Tensor,
    at: &[usize],
    accumulate: bool,
) -> Result<Dispatch> {
    let fits = at.len() == x.shape.len()
        && y.shape.len() == x.shape.len()
        && (0..at.len()).all(|d| at[d] + x.shape[d] <= y.shape[d]);
    if !fits {
        return Err(Error::shape(
            "pad_into",
            format!(
                "x {:?} placed at {at:?} does not fit in y {:?}",
                x.shape, y.shape
            ),
        ));
    }
    let cy = contiguous_strides(&y.shape);
    let spec = CopySpec {
        y_offset: at.iter().zip(&cy).map(|(a, s)| a * s).sum(),
        y_strides: cy,
        accumulate,
        ..CopySpec::contiguous(&x.shape)
    };
    copy_strided(gpu, &spec, x, y)
}

/// y = the inputs joined along `axis` (torch.cat): one copy per input.
pub fn concat(gpu: &Gpu, xs: &[&Tensor], axis: usize, y: &Tensor) -> Result<Vec<Dispatch>> {
    let op = "concat";
    let first = xs
        .first()
        .ok_or_else(|| Error::shape(op, "no inputs to join"))?;
    let rank = first.shape.len();
    let mut want = first.shape.clone();
    if axis >= rank {
        return Err(Error::shape(
            op,
            format!("axis {axis} of {:?}", first.shape),
        ));
    }
    want[axis] = 0;
    for x in xs {
        let same_rest =
            x.shape.len() == rank && (0..rank).all(|d| d == axis || x.shape[d] == first.shape[d]);
        if !same_rest {
            let shapes: Vec<String> = xs.iter().map(|t| format!("{:?}", t.shape)).collect();
            return Err(Error::shape(
                op,
                format!("inputs {} differ outside axis {axis}", shapes.join(", ")),
            ));
        }
        want[axis] += x.shape[axis];
    }
    super::expect_shape(op, "y", y, &want)?;
    let mut at = vec![0; rank];
    let mut out = vec![];
    for x in xs {
        out.push(pad_into(gpu, x, y, &at, false)?);
        at[axis] += x.shape[axis];
    }
    Ok(out)
}

/// y = x broadcast to y's shape (NumPy rule; size-1 axes of x read with stride 0).
pub fn expand(gpu: &Gpu, x: &Tensor, y: &Tensor) -> Result<Dispatch> {
    let spec = super::elementwise::BroadcastSpec::new("expand", &[&x.shape, &y.shape])?;
    if spec.out != y.shape {
        return Err(Error::shape(
            "expand",
            format!("x {:?} does not expand to y {:?}", x.shape, y.shape),
        ));
    }
    let spec = CopySpec {
        shape: spec.dims,
        x_offset: 0,
        x_strides: spec.strides[0].clone(),
        y_offset: 0,
        y_strides: spec.strides[1].clone(),
        accumulate: false,
    };
    copy_strided(gpu, &spec, x, y)
}

/// The reference of [`copy_strided`] on host slices.
pub fn copy_strided_ref(spec: &CopySpec, x: &[f64], y: &mut [f64]) {
    let rank = spec.shape.len();
    for i in 0..spec.numel() {
        let (mut rem, mut ix, mut iy) = (i, spec.x_offset, spec.y_offset);
        for d in (0..rank).rev() {
            let k = rem % spec.shape[d];
            rem /= spec.shape[d];
            ix += k * spec.x_strides[d];
            iy += k * spec.y_strides[d];
        }
        if spec.accumulate {
            y[iy] += x[ix];
        } else {
            y[iy] = x[ix];
        }
    }
}

/// torch.permute on a row-major host array (y`[c]` = x`[c permuted back]`).
pub fn permute_ref(x: &[f64], x_shape: &[usize], perm: &[usize]) -> Vec<f64> {
    let rank = x_shape.len();
    let y_shape: Vec<usize> = perm.iter().map(|&a| x_shape[a]).collect();
    (0..x.len())
        .map(|i| {
            let mut rem = i;
            let mut xc = vec![0; rank];
            for d in (0..rank).rev() {
                xc[perm[d]] = rem % y_shape[d];
                rem /= y_shape[d];
            }
            x[xc.iter().zip(x_shape).fold(0, |acc, (k, n)| acc * n + k)]
        })
        .collect()
}

/// Rows of `shape` split at `axis`: (outer, elements per outer row from that axis on).
fn rows(shape: &[usize], axis: usize) -> (usize, usize) {
    (
        shape[..axis].iter().product(),
        shape[axis..].iter().product(),
    )
}

/// x`[.., start..start + len, ..]` along `axis`.
pub fn slice_ref(x: &[f64], x_shape: &[usize], axis: usize, start: usize, len: usize) -> Vec<f64> {
    let (outer, row) = rows(x_shape, axis);
    let inner = row / x_shape[axis].max(1);
    (0..outer)
        .flat_map(|o| {
            x[o * row + start * inner..o * row + (start + len) * inner]
                .iter()
                .copied()
        })
        .collect()
}

/// torch.cat along `axis` of row-major host arrays.
pub fn concat_ref(xs: &[(&[f64], &[usize])], axis: usize) -> Vec<f64> {
    let (outer, _) = rows(xs[0].1, axis);
    let mut y = vec![];
    for o in 0..outer {
        for (x, shape) in xs {
            let (_, row) = rows(shape, axis);
            y.extend_from_slice(&x[o * row..(o + 1) * row]);
        }
    }
    y
}

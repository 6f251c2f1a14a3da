//! Reductions over one axis: shaders/reduce_axis.wgsl, its wrapper and reference.
//!
//! x is viewed as `[outer, r, inner]` and reduced over r into y `[outer, inner]` (any axis of
//! a row-major tensor: outer = product of the axes before it, inner = after it). Long or
//! poorly parallel reductions run as several dispatches over partials, each invocation
//! summing at most [`MAX_CHUNK`] elements in a fixed order: results are bit-identical from
//! run to run and depend only on the shapes.

use bytemuck::{Pod, Zeroable};

use super::{dispatch, grid_1d, Dispatch, KernelCall, Shader, LOOP_BUDGET};
use crate::gpu::{Access, Gpu};
use crate::tensor::Tensor;
use crate::{Error, Result};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ReduceOp {
    Sum,
    /// The sum divided by r (one division, in the last pass).
    Mean,
    /// NaN if any element is NaN (pool.wgsl's rule).
    Max,
    Min,
}

impl ReduceOp {
    pub const ALL: [ReduceOp; 4] = [ReduceOp::Sum, ReduceOp::Mean, ReduceOp::Max, ReduceOp::Min];

    /// The OP override of reduce_axis.wgsl.
    fn code(self) -> u32 {
        match self {
            ReduceOp::Sum | ReduceOp::Mean => 0,
            ReduceOp::Max => 1,
            ReduceOp::Min => 2,
        }
    }
}

/// Most elements one invocation reduces (llvmpipe's loop budget, see [`LOOP_BUDGET`]).
pub const MAX_CHUNK: usize = LOOP_BUDGET;
/// Fewest elements one invocation reduces when the reduction is split for parallelism.
const MIN_CHUNK: usize = 256;
/// Invocations a split aims for: below this many outputs, long reductions are chunked.
const TARGET_INVOCATIONS: usize = 16_384;

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct Params {
    outer: u32,
    r: u32,
    inner: u32,
    chunk: u32,
    chunks: u32,
    divisor: f32,
    _pad: [u32; 2],
}

/// The passes reducing [outer, r, inner]: (r, chunk) of each, the last with r <= chunk.
pub fn reduce_passes(outer: usize, r: usize, inner: usize) -> Vec<(usize, usize)> {
    let outputs = outer * inner;
    let mut passes = vec![];
    let mut r = r;
    loop {
        let chunk = if r <= MIN_CHUNK || (outputs >= TARGET_INVOCATIONS && r <= MAX_CHUNK) {
            r
        } else {
            let want_chunks = TARGET_INVOCATIONS.div_ceil(outputs);
            r.div_ceil(want_chunks).clamp(MIN_CHUNK, MAX_CHUNK)
        };
        passes.push((r, chunk));
        if chunk >= r {
            return passes;
        }
        r = r.div_ceil(chunk);
    }
}

/// y`[o, i]` = op over k < r of x`[o, k, i]`, x viewed as `[outer, r, inner]` and y as
/// `[outer, inner]` (shapes must have those element counts). Several dispatches when r is
/// long; their partial buffers are allocated here and owned by the dispatches.
pub fn reduce(
    gpu: &Gpu,
    op: ReduceOp,
    x: &Tensor,
    (outer, r, inner): (usize, usize, usize),
    y: &Tensor,
) -> Result<Vec<Dispatch>> {
    let name = "reduce_axis";
    if x.numel() != outer * r * inner || outer * r * inner == 0 {
        return Err(Error::shape(
            name,
            format!(
                "{op:?}: x {:?} ({} elements) is not [outer {outer}, r {r}, inner {inner}] (nothing may be empty)",
                x.shape,
                x.numel()
            ),
        ));
    }
    if y.numel() != outer * inner {
        return Err(Error::shape(
            name,
            format!(
                "{op:?}: y {:?} ({} elements) is not [outer {outer}, inner {inner}]",
                y.shape,
                y.numel()
            ),
        ));
    }
    if std::sync::Arc::ptr_eq(&x.buffer, &y.buffer) {
        return Err(Error::shape(
            name,
            "x and y are views of one buffer; WebGPU forbids binding one buffer read-only and read-write in one dispatch",
        ));
    }
    let passes = reduce_passes(outer, r, inner);
    let mut out = vec![];
    let mut src = x.clone();
    for (k, &(r_k, chunk)) in passes.iter().enumerate() {
        let chunks = r_k.div_ceil(chunk);
        let last = k + 1 == passes.len();
        let dst = if last {
            y.clone()
        } else {
            Tensor::zeros(gpu, "reduce partials", &[outer, chunks, inner])?
        };
        let params = Params {
            outer: outer as u32,
            r: r_k as u32,
            inner: inner as u32,
            chunk: chunk as u32,
            chunks: chunks as u32,
            divisor: if last && op == ReduceOp::Mean {
                r as f32
            } else {
                1.0
            },
            _pad: [0; 2],
        };
        out.push(dispatch(
            gpu,
            &KernelCall {
                shader: Shader::ReduceAxis,
                entry: name,
                params: bytemuck::bytes_of(&params),
                bindings: &[(&src, Access::Read), (&dst, Access::ReadWrite)],
                workgroups: grid_1d(gpu, name, outer * chunks * inner)?,
                constants: &[("OP", op.code() as f64)],
            },
        )?);
        src = dst;
    }
    Ok(out)
}

/// The reference: f64, NaN-propagating max and min.
pub fn reduce_ref(op: ReduceOp, x: &[f64], (outer, r, inner): (usize, usize, usize)) -> Vec<f64> {
    let mut y = Vec::with_capacity(outer * inner);
    for o in 0..outer {
        for i in 0..inner {
            let vals = (0..r).map(|k| x[(o * r + k) * inner + i]);
            let v = match op {
                ReduceOp::Sum => vals.sum(),
                ReduceOp::Mean => vals.sum::<f64>() / r as f64,
                ReduceOp::Max => vals.fold(f64::NEG_INFINITY, |a, v| {
                    if a.is_nan() || v.is_nan() {
                        f64::NAN
                    } else {
                        a.max(v)
                    }
                }),
                ReduceOp::Min => vals.fold(f64::INFINITY, |a, v| {
                    if a.is_nan() || v.is_nan() {
                        f64::NAN
                    } else {
                        a.min(v)
                    }
                }),
            };
            y.push(v);
        }
    }
    y
}

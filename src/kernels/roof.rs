//! The adapter's roof for `shadergrad bench`: shaders/roof.wgsl (peak FMA throughput, copy
//! bandwidth), its wrappers and its references. N: invocations (peak_fma) or vec4 elements
//! (copy_bandwidth).

use bytemuck::{Pod, Zeroable};

use super::{dispatch, grid_1d, Dispatch, KernelCall, Shader, LOOP_BUDGET};
use crate::gpu::{Access, Gpu};
use crate::tensor::Tensor;
use crate::{Error, Result};

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct Params {
    n: u32,
    iters: u32,
    m: f32,
    c: f32,
}

/// The chains' multiplier and addend: they converge towards c / (1 - m) = 1, so no value
/// overflows or denormalises however long the chain.
pub const FMA_M: f32 = 0.999;
pub const FMA_C: f32 = 0.001;

/// Flops of one [`peak_fma`] dispatch: 8 vec4 FMAs (64 flops) a round.
pub fn peak_fma_flops(n: usize, iters: usize) -> f64 {
    64.0 * n as f64 * iters as f64
}

/// y `[N, 4]` <- the sum of 8 vec4 FMA chains of `iters` rounds per invocation.
pub fn peak_fma(gpu: &Gpu, iters: usize, y: &Tensor) -> Result<Dispatch> {
    let op = "peak_fma";
    let n = vec4s(op, "y", y)?;
    if iters == 0 || iters > LOOP_BUDGET {
        let msg = format!("{iters} rounds, expected 1..={LOOP_BUDGET} (LOOP_BUDGET)");
        return Err(Error::shape(op, msg));
    }
    let p = Params {
        n: n as u32,
        iters: iters as u32,
        m: FMA_M,
        c: FMA_C,
    };
    call(gpu, op, &p, gpu.dummy(), y, n)
}

/// y `[N, 4]` <- x `[N, 4]`.
pub fn copy_bandwidth(gpu: &Gpu, x: &Tensor, y: &Tensor) -> Result<Dispatch> {
    let op = "copy_bandwidth";
    let n = vec4s(op, "x", x)?;
    if y.numel() != x.numel() {
        let msg = format!("y has shape {:?}, x {:?}", y.shape, x.shape);
        return Err(Error::shape(op, msg));
    }
    let p = Params {
        n: n as u32,
        iters: 0,
        m: 0.0,
        c: 0.0,
    };
    call(gpu, op, &p, x, y, n)
}

/// Number of vec4s in `t`, which must hold a positive multiple of 4 elements.
fn vec4s(op: &str, name: &str, t: &Tensor) -> Result<usize> {
    let n = t.numel();
    if n == 0 || !n.is_multiple_of(4) || n / 4 > u32::MAX as usize {
        let msg = format!(
            "{name} has shape {:?}: expected a positive multiple of 4 elements (vec4s)",
            t.shape
        );
        return Err(Error::shape(op, msg));
    }
    Ok(n / 4)
}

fn call(
    gpu: &Gpu,
    entry: &'static str,
    p: &Params,
    x: &Tensor,
    y: &Tensor,
    n: usize,
) -> Result<Dispatch> {
    dispatch(
        gpu,
        &KernelCall {
            shader: Shader::Roof,
            entry,
            params: bytemuck::bytes_of(p),
            bindings: &[(x, Access::Read), (y, Access::ReadWrite)],
            workgroups: grid_1d(gpu, entry, n)?,
            constants: &[],
        },
    )
}

/// CPU reference of [`peak_fma`] for invocation `i`: the closed form of its 8 chains, summed.
pub fn peak_fma_ref(i: usize, iters: usize) -> [f64; 4] {
    let (m, c) = (FMA_M as f64, FMA_C as f64);
    let mn = m.powi(iters as i32);
    let mut out = [0.0; 4];
    for (lane, v) in out.iter_mut().enumerate() {
        for j in 0..8 {
            let x0 = (i % 16) as f64 + j as f64 + 0.25 * lane as f64;
            *v += mn * x0 + c * (1.0 - mn) / (1.0 - m);
        }
    }
    out
}

//! Max and average pooling, NCHW, valid: shaders/pool.wgsl, its wrappers and references.
//! B = batch, C = channels, H x W = input, PK = window, S = stride, OH x OW = output.

use bytemuck::{Pod, Zeroable};

use super::{dispatch, expect_shape, grid_1d, Dispatch, KernelCall, Shader};
use crate::gpu::{Access, Gpu};
use crate::tensor::Tensor;
use crate::{Error, Result};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PoolSpec {
    pub batch: usize,
    pub channels: usize,
    pub h: usize,
    pub w: usize,
    pub pool: usize,
    pub stride: usize,
}

impl PoolSpec {
    pub fn out_hw(&self) -> (usize, usize) {
        (
            (self.h - self.pool) / self.stride + 1,
            (self.w - self.pool) / self.stride + 1,
        )
    }

    pub fn x_shape(&self) -> [usize; 4] {
        [self.batch, self.channels, self.h, self.w]
    }

    pub fn y_shape(&self) -> [usize; 4] {
        let (oh, ow) = self.out_hw();
        [self.batch, self.channels, oh, ow]
    }

    fn validate(&self, op: &str) -> Result<()> {
        if self.pool == 0 || self.stride == 0 || self.pool > self.h || self.pool > self.w {
            return Err(Error::shape(
                op,
                format!(
                    "window {} stride {} on a {}x{} input",
                    self.pool, self.stride, self.h, self.w
                ),
            ));
        }
        if self.batch == 0 || self.channels == 0 {
            return Err(Error::shape(op, format!("empty input {self:?}")));
        }
        let window_loops = self.pool * self.pool;
        let (oh, ow) = self.out_hw();
        let windows_per_pixel = self.pool.div_ceil(self.stride).pow(2).min(oh * ow);
        if window_loops.max(windows_per_pixel) > crate::kernels::LOOP_BUDGET {
            return Err(Error::Limit {
                op: op.to_string(),
                what: "loop iterations per invocation (window)".into(),
                requested: window_loops.max(windows_per_pixel) as u64,
                limit: crate::kernels::LOOP_BUDGET as u64,
                hint: "use a smaller pooling window".into(),
            });
        }
        Ok(())
    }
}

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct Params {
    batch: u32,
    channels: u32,
    h: u32,
    w: u32,
    out_h: u32,
    out_w: u32,
    pool: u32,
    stride: u32,
    flags: u32,
    _pad: [u32; 3],
}

fn params(s: &PoolSpec, relu: bool) -> Params {
    let (oh, ow) = s.out_hw();
    Params {
        batch: s.batch as u32,
        channels: s.channels as u32,
        h: s.h as u32,
        w: s.w as u32,
        out_h: oh as u32,
        out_w: ow as u32,
        pool: s.pool as u32,
        stride: s.stride as u32,
        flags: relu as u32,
        _pad: [0; 3],
    }
}

/// `invocations` is the grid size: dst's elements, or the windows for the cells kernel.
fn pool_call(
    gpu: &Gpu,
    entry: &'static str,
    s: &PoolSpec,
    bind: [&Tensor; 3],
    pooled: Option<&Tensor>,
    invocations: usize,
) -> Result<Dispatch> {
    dispatch(
        gpu,
        &KernelCall {
            shader: Shader::Pool,
            entry,
            params: bytemuck::bytes_of(&params(s, pooled.is_some())),
            bindings: &[
                (bind[0], Access::Read),
                (bind[1], Access::ReadWrite),
                (bind[2], Access::ReadWrite),
                (pooled.unwrap_or(gpu.dummy()), Access::Read),
            ],
            workgroups: grid_1d(gpu, entry, invocations)?,
            constants: &[],
        },
    )
}

/// y, argmax `[B,C,OH,OW]` = max_pool2d(x `[B,C,H,W]`).
pub fn max_pool2d_forward(
    gpu: &Gpu,
    s: &PoolSpec,
    x: &Tensor,
    argmax: &Tensor,
    y: &Tensor,
) -> Result<Dispatch> {
    let op = "max_pool2d_forward";
    s.validate(op)?;
    expect_shape(op, "x", x, &s.x_shape())?;
    expect_shape(op, "argmax", argmax, &s.y_shape())?;
    expect_shape(op, "y", y, &s.y_shape())?;
    pool_call(gpu, op, s, [x, argmax, y], None, y.numel())
}

/// dx `[B,C,H,W]` from dy `[B,C,OH,OW]` through the forward's argmax.
pub fn max_pool2d_backward(
    gpu: &Gpu,
    s: &PoolSpec,
    dy: &Tensor,
    argmax: &Tensor,
    dx: &Tensor,
) -> Result<Dispatch> {
    let op = "max_pool2d_backward";
    s.validate(op)?;
    expect_shape(op, "dy", dy, &s.y_shape())?;
    expect_shape(op, "argmax", argmax, &s.y_shape())?;
    expect_shape(op, "dx", dx, &s.x_shape())?;
    backward(gpu, s, dy, argmax, None, dx)
}

/// [`max_pool2d_backward`] fused with the backward of a ReLU applied before the pool:
/// dx is kept only where the pooled output `y` `[B,C,OH,OW]` is positive.
pub fn max_pool2d_relu_backward(
    gpu: &Gpu,
    s: &PoolSpec,
    dy: &Tensor,
    argmax: &Tensor,
    y: &Tensor,
    dx: &Tensor,
) -> Result<Dispatch> {
    let op = "max_pool2d_relu_backward";
    s.validate(op)?;
    expect_shape(op, "dy", dy, &s.y_shape())?;
    expect_shape(op, "argmax", argmax, &s.y_shape())?;
    expect_shape(op, "y", y, &s.y_shape())?;
    expect_shape(op, "dx", dx, &s.x_shape())?;
    backward(gpu, s, dy, argmax, Some(y), dx)
}

/// Non-overlapping windows take the cells kernel (one invocation per window); overlapping
/// ones the gather kernel (one per input element).
fn backward(
    gpu: &Gpu,
    s: &PoolSpec,
    dy: &Tensor,
    argmax: &Tensor,
    y: Option<&Tensor>,
    dx: &Tensor,
) -> Result<Dispatch> {
    if s.stride >= s.pool {
        let cell = s
            .stride
            .max(s.h - (s.out_hw().0 - 1) * s.stride)
            .max(s.w - (s.out_hw().1 - 1) * s.stride);
        if cell * cell <= crate::kernels::LOOP_BUDGET {
            return pool_call(
                gpu,
                "max_pool2d_backward_cells",
                s,
                [dy, argmax, dx],
                y,
                dy.numel(),
            );
        }
    }
    pool_call(
        gpu,
        "max_pool2d_backward",
        s,
        [dy, argmax, dx],
        y,
        dx.numel(),
    )
}

/// y `[B,C,OH,OW]` = avg_pool2d(x `[B,C,H,W]`): the mean of each PK x PK window.
pub fn avg_pool2d_forward(gpu: &Gpu, s: &PoolSpec, x: &Tensor, y: &Tensor) -> Result<Dispatch> {
    let op = "avg_pool2d_forward";
    s.validate(op)?;
    expect_shape(op, "x", x, &s.x_shape())?;
    expect_shape(op, "y", y, &s.y_shape())?;
    avg_call(gpu, op, s, x, y)
}

/// dx `[B,C,H,W]` = the sum of dy / PK^2 over the windows holding each input element.
pub fn avg_pool2d_backward(gpu: &Gpu, s: &PoolSpec, dy: &Tensor, dx: &Tensor) -> Result<Dispatch> {
    let op = "avg_pool2d_backward";
    s.validate(op)?;
    expect_shape(op, "dy", dy, &s.y_shape())?;
    expect_shape(op, "dx", dx, &s.x_shape())?;
    avg_call(gpu, op, s, dy, dx)
}

/// The average kernels use bindings 1 (src) and 3 (dst) only; binding 2 (argmax) gets the
/// unused dummy buffer, which they never touch.
fn avg_call(
    gpu: &Gpu,
    entry: &'static str,
    s: &PoolSpec,
    src: &Tensor,
    dst: &Tensor,
) -> Result<Dispatch> {
    dispatch(
        gpu,
        &KernelCall {
            shader: Shader::Pool,
            entry,
            params: bytemuck::bytes_of(&params(s, false)),
            bindings: &[
                (src, Access::Read),
                (gpu.dummy(), Access::ReadWrite),
                (dst, Access::ReadWrite),
            ],
            workgroups: grid_1d(gpu, entry, dst.numel())?,
            constants: &[],
        },
    )
}

/// Reference of [`avg_pool2d_forward`].
pub fn avg_pool2d_forward_ref(s: &PoolSpec, x: &[f64]) -> Vec<f64> {
    let (oh, ow) = s.out_hw();
    let mut y = Vec::with_capacity(s.batch * s.channels * oh * ow);
    for plane in 0..s.batch * s.channels {
        let base = plane * s.h * s.w;
        for oy in 0..oh {
            for ox in 0..ow {
                let mut acc = 0.0;
                for ky in 0..s.pool {
                    for kx in 0..s.pool {
                        acc += x[base + (oy * s.stride + ky) * s.w + ox * s.stride + kx];
                    }
                }
                y.push(acc / (s.pool * s.pool) as f64);
            }
        }
    }
    y
}

/// Reference of [`avg_pool2d_backward`] (a scatter, in f64).
pub fn avg_pool2d_backward_ref(s: &PoolSpec, dy: &[f64]) -> Vec<f64> {
    let (oh, ow) = s.out_hw();
    let mut dx = vec![0.0; s.x_shape().iter().product()];
    let k = 1.0 / (s.pool * s.pool) as f64;
    for (o, &g) in dy.iter().enumerate() {
        let (plane, oy, ox) = (o / (oh * ow), o / ow % oh, o % ow);
        for ky in 0..s.pool {
            for kx in 0..s.pool {
                dx[plane * s.h * s.w + (oy * s.stride + ky) * s.w + ox * s.stride + kx] += g * k;
            }
        }
    }
    dx
}

/// Reference forward: (y, argmax) with argmax = iy * W + ix of the first maximum; a NaN in
/// the window wins (as torch.max_pool2d): y is the first NaN and argmax its position.
pub fn max_pool2d_forward_ref(s: &PoolSpec, x: &[f64]) -> (Vec<f64>, Vec<u32>) {
    let (oh, ow) = s.out_hw();
    let planes = s.batch * s.channels;
    let mut y = Vec::with_capacity(planes * oh * ow);
    let mut arg = Vec::with_capacity(planes * oh * ow);
    for plane in 0..planes {
        let base = plane * s.h * s.w;
        for oy in 0..oh {
            for ox in 0..ow {
                let mut best_at = oy * s.stride * s.w + ox * s.stride;
                for ky in 0..s.pool {
                    for kx in 0..s.pool {
                        let at = (oy * s.stride + ky) * s.w + ox * s.stride + kx;
                        let (v, best) = (x[base + at], x[base + best_at]);
                        if !best.is_nan() && (v.is_nan() || v > best) {
                            best_at = at;
                        }
                    }
                }
                y.push(x[base + best_at]);
                arg.push(best_at as u32);
            }
        }
    }
    (y, arg)
}

/// Reference of [`max_pool2d_relu_backward`]: dy zeroed where y <= 0, then routed.
pub fn max_pool2d_relu_backward_ref(
    s: &PoolSpec,
    dy: &[f64],
    argmax: &[u32],
    y: &[f64],
) -> Vec<f64> {
    let masked: Vec<f64> = dy
        .iter()
        .zip(y)
        .map(|(&g, &v)| if v > 0.0 { g } else { 0.0 })
        .collect();
    max_pool2d_backward_ref(s, &masked, argmax)
}

/// Reference backward: dx`[argmax]` += dy.
pub fn max_pool2d_backward_ref(s: &PoolSpec, dy: &[f64], argmax: &[u32]) -> Vec<f64> {
    let (oh, ow) = s.out_hw();
    let mut dx = vec![0.0; s.x_shape().iter().product()];
    for (o, (&g, &at)) in dy.iter().zip(argmax).enumerate() {
        let plane = o / (oh * ow);
        dx[plane * s.h * s.w + at as usize] += g;
    }
    dx
}

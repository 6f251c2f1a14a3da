//! The conv2d passes as implicit GEMMs on matmul_subgroup.wgsl's register block (64
//! accumulators: 32 x 2, 16 x 4 or 8 x 8 rows x columns an invocation), reading their
//! operands through 64 KiB uniform windows (entry points conv2d_window and
//! conv2d_window_weight): [`super::Conv2dKernel::Window`], for CPU adapters (the window
//! family), where a uniform load costs a tenth of a storage load. One dispatch per run of
//! images whose tensors fit one window each; the weight must fit one window too.
//!
//! - forward: M = CO rows (the weight window), N = images x OH x OW columns gathered from
//!   the x window (implicit im2col), K = CI x KH x KW;
//! - input gradient (stride 1): the same kernel as a conv of dy with the weight transposed
//!   and flipped (read so in place) and padding KH-1-PH, KW-1-PW: M = CI, K = CO x KH x KW;
//! - weight gradient: M = CO (dy window), N = CI x KH x KW + 1 (the x window's taps, and a
//!   column of ones whose sums are dbias), K = the run's positions, cut into slices along
//!   output rows (grid z) so that a dispatch has enough workgroups; each slice writes one
//!   partial row `[CO*CI*KH*KW + CO]`, summed afterwards as the other kernels' partials.
//!
//! The references are conv2d.rs's.

use super::{Conv2dSpec, Pass};
use crate::gpu::{Access, Gpu};
use crate::kernels::matmul::BlockParams;
use crate::kernels::{dispatch, Dispatch, Family, KernelCall, Shader, LOOP_BUDGET};
use crate::tensor::{Tensor, WINDOW_BYTES};
use crate::{Error, Result};

// Flag bits of matmul_subgroup.wgsl.
const BIAS: u32 = 4;
const RELU: u32 = 8;
const FLIP: u32 = 64;
const BIAS_ROW: u32 = 128;
const DBIAS_COLUMN: u32 = 256;

/// The block of a GEMM of M rows and N columns: ROWS (of 8, 16, 32 the one that pads M
/// least, the larger on a tie: 48 rows run as 3 x 16, measured 2.5x faster than 2 x 32 on
/// lavapipe) by COLS = 64 / ROWS columns an invocation, and WG invocations a workgroup: the
/// largest of 64, 32, 16, 8 that makes at least [`MIN_WORKGROUPS`] workgroups and whose last
/// workgroup of columns wastes at most an eighth of N; else the largest that wastes so
/// little; else the one that wastes least.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Block {
    rows: usize,
    wg: usize,
}

impl Block {
    fn new(m: usize, n: usize) -> Block {
        let rows = [32, 16, 8]
            .into_iter()
            .min_by_key(|&r| m.div_ceil(r) * r)
            .unwrap_or(32);
        let cols = |wg: usize| 64 / rows * wg;
        let waste = |wg: usize| n.div_ceil(cols(wg)) * cols(wg) - n;
        let groups = |wg: usize| n.div_ceil(cols(wg)) * m.div_ceil(rows);
        let sizes = [64, 32, 16, 8];
        // Enough workgroups to share among the cores (a dispatch ends with its slowest),
        // then little waste, then wide workgroups.
        let wg = (sizes.into_iter())
            .find(|&wg| groups(wg) >= MIN_WORKGROUPS && waste(wg) * 8 <= n)
            .or_else(|| sizes.into_iter().find(|&wg| waste(wg) * 8 <= n))
            .unwrap_or_else(|| sizes.into_iter().min_by_key(|&wg| waste(wg)).unwrap_or(64));
        Block { rows, wg }
    }

    /// Workgroups over M x N, and `z` along z.
    fn grid(&self, m: usize, n: usize, z: usize) -> [u32; 3] {
        let cols = 64 / self.rows * self.wg;
        [
            n.div_ceil(cols) as u32,
            m.div_ceil(self.rows) as u32,
            z as u32,
        ]
    }

    fn constants(&self) -> [(&'static str, f64); 2] {
        [("WG", self.wg as f64), ("ROWS", self.rows as f64)]
    }
}

/// Workgroups a dispatch aims at (2 cores, some slack for uneven ones): the weight
/// gradient's slices, and the narrower workgroups of the other passes.
const MIN_WORKGROUPS: usize = 8;

/// How a pass of `s` cuts into window dispatches.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Plan {
    /// Images per dispatch.
    images: usize,
    /// Output-row slices per dispatch (weight gradient; 1 otherwise).
    slices: usize,
}

/// Floats a window holds when its start may be misaligned by up to the adapter's uniform
/// offset alignment.
fn window_floats(gpu: &Gpu) -> usize {
    (WINDOW_BYTES - gpu.limits.min_uniform_buffer_offset_alignment as u64) as usize / 4
}

/// The plan of `pass`, or None where the window kernel cannot run it here: not the window
/// family, a stride other than 1 for the input gradient, or an image or the weight that does
/// not fit a window.
fn plan(gpu: &Gpu, s: &Conv2dSpec, pass: Pass) -> Option<Plan> {
    if gpu.family() != Family::Window || !gpu.windows() || s.validate().is_err() {
        return None;
    }
    let (oh, ow) = s.out_hw();
    let (x_img, y_img) = (s.c_in * s.h * s.w, s.c_out * oh * ow);
    let cap = window_floats(gpu);
    let weight = s.c_out * s.c_in * s.kh * s.kw;
    let per_image = match pass {
        Pass::Forward => x_img,
        Pass::BackwardInput => y_img,
        Pass::BackwardWeight => x_img.max(y_img),
    };
    let images = (cap / per_image).min(s.batch);
    let (ph, pw) = s.pad();
    let input_ok = pass != Pass::BackwardInput || (s.stride == 1 && ph < s.kh && pw < s.kw);
    if images == 0 || weight > cap || !input_ok {
        return None;
    }
    let max_wg = gpu.limits.max_compute_workgroups_per_dimension as usize;
    let slices = match pass {
        Pass::BackwardWeight => {
            let n = s.c_in * s.kh * s.kw + 1;
            let [x, y, _] = Block::new(s.c_out, n).grid(s.c_out, n, 1);
            let rows = images * oh;
            let by_budget = (rows * (ow + 1)).div_ceil(LOOP_BUDGET);
            let wanted = MIN_WORKGROUPS.div_ceil((x * y) as usize);
            wanted.max(by_budget).min(rows)
        }
        _ => 1,
    };
    let loops = match pass {
        Pass::Forward => s.c_in * s.kh * (s.kw + 1),
        Pass::BackwardInput => s.c_out * s.kh * (s.kw + 1),
        Pass::BackwardWeight => (images * oh).div_ceil(slices) * (ow + 1),
    };
    let (m, n) = match pass {
        Pass::Forward => (s.c_out, images * oh * ow),
        Pass::BackwardInput => (s.c_in, images * s.h * s.w),
        Pass::BackwardWeight => (s.c_out, s.c_in * s.kh * s.kw + 1),
    };
    let [gx, gy, _] = Block::new(m, n).grid(m, n, 1);
    let fits = loops <= LOOP_BUDGET
        && gx.max(gy) as usize <= max_wg
        && slices <= max_wg
        && s.batch * x_img.max(y_img) < u32::MAX as usize;
    fits.then_some(Plan { images, slices })
}

/// Whether [`Conv2dKernel::Window`] can run `pass` of `s` on `gpu`.
pub(super) fn window_fits(gpu: &Gpu, s: &Conv2dSpec, pass: Pass) -> bool {
    plan(gpu, s, pass).is_some()
}

/// Partial-sum rows the window weight gradient writes (dispatches x slices), or None where
/// it cannot run.
pub(super) fn window_weight_rows(gpu: &Gpu, s: &Conv2dSpec) -> Option<usize> {
    plan(gpu, s, Pass::BackwardWeight).map(|p| s.batch.div_ceil(p.images) * p.slices)
}

fn unfit(op: &str, s: &Conv2dSpec) -> Error {
    Error::usage(
        op,
        format!("the window conv kernel cannot run {s:?} here (window family only; an image and the weight must each fit a 64 KiB window; stride 1 for the input gradient); use Direct"),
    )
}

/// The window of elements `first..first + len` of `t`, or a usage error naming `what`.
fn window(
    gpu: &Gpu,
    op: &str,
    what: &str,
    t: &Tensor,
    first: usize,
    len: usize,
) -> Result<(Tensor, u32)> {
    let align = gpu.limits.min_uniform_buffer_offset_alignment as u64;
    t.window(first, len, align).ok_or_else(|| {
        Error::usage(
            op,
            format!(
                "{what} elements {first}..{} do not fit a uniform window (a tensor without slack?)",
                first + len
            ),
        )
    })
}

/// One conv2d_window / conv2d_window_weight dispatch over `z` slices of p's M x N.
#[allow(clippy::too_many_arguments)]
fn conv_call(
    gpu: &Gpu,
    entry: &'static str,
    p: &BlockParams,
    a_win: &Tensor,
    b_win: &Tensor,
    bias: Option<&Tensor>,
    c: &Tensor,
    z: usize,
) -> Result<Dispatch> {
    let (m, n) = (p.m as usize, p.n as usize);
    let block = Block::new(m, n);
    dispatch(
        gpu,
        &KernelCall {
            shader: Shader::MatmulSubgroup,
            entry,
            params: bytemuck::bytes_of(p),
            bindings: &[
                (gpu.dummy(), Access::Read),
                (gpu.dummy(), Access::Read),
                (bias.unwrap_or(gpu.dummy()), Access::Read),
                (c, Access::ReadWrite),
                (a_win, Access::Window),
                (b_win, Access::Window),
            ],
            workgroups: block.grid(m, n, z),
            constants: &block.constants(),
        },
    )
}

/// The geometry fields shared by the passes: a conv summing `c_in` channels of an
/// `h` x `w` plane into an `out_h` x `out_w` one.
fn geometry(
    s: &Conv2dSpec,
    c_in: usize,
    [h, w]: [usize; 2],
    [out_h, out_w]: [usize; 2],
    [ph, pw]: [usize; 2],
) -> BlockParams {
    BlockParams {
        c_in: c_in as u32,
        h: h as u32,
        w: w as u32,
        kh: s.kh as u32,
        kw: s.kw as u32,
        pad_h: ph as u32,
        pad_w: pw as u32,
        out_h: out_h as u32,
        out_w: out_w as u32,
        stride: s.stride as u32,
        ..Default::default()
    }
}

/// y = act(conv2d(x, w) + bias) on the window kernel (see [`super::conv2d_forward_with`]).
#[allow(clippy::too_many_arguments)]
pub(super) fn forward(
    gpu: &Gpu,
    s: &Conv2dSpec,
    x: &Tensor,
    weight: &Tensor,
    bias: Option<&Tensor>,
    relu: bool,
    y: &Tensor,
) -> Result<Vec<Dispatch>> {
    let op = "conv2d_forward";
    let plan = plan(gpu, s, Pass::Forward).ok_or_else(|| unfit(op, s))?;
    let (oh, ow) = s.out_hw();
    let (ph, pw) = s.pad();
    let taps = s.kh * s.kw;
    let (image, out_image) = (s.c_in * s.h * s.w, s.c_out * oh * ow);
    let (w_win, w_base) = window(gpu, op, "weight", weight, 0, weight.numel())?;
    let flags = if bias.is_some() { BIAS | BIAS_ROW } else { 0 } | if relu { RELU } else { 0 };
    let mut out = Vec::new();
    for b0 in (0..s.batch).step_by(plan.images) {
        let n = plan.images.min(s.batch - b0);
        let (x_win, x_base) = window(gpu, op, "x", x, b0 * image, n * image)?;
        let p = BlockParams {
            m: s.c_out as u32,
            n: (n * oh * ow) as u32,
            k: (s.c_in * taps) as u32,
            flags,
            a_base: w_base,
            a_m: (s.c_in * taps) as u32,
            a_ci: taps as u32,
            b_base: x_base,
            b_batch: image as u32,
            c_base: (b0 * out_image) as u32,
            c_m: (oh * ow) as u32,
            c_batch: out_image as u32,
            ..geometry(s, s.c_in, [s.h, s.w], [oh, ow], [ph, pw])
        };
        out.push(conv_call(
            gpu,
            "conv2d_window",
            &p,
            &w_win,
            &x_win,
            bias,
            y,
            1,
        )?);
    }
    Ok(out)
}

/// dx = conv2d_backward_input(dy, w) on the window kernel: a conv of dy with the weight
/// transposed and flipped (stride 1).
pub(super) fn backward_input(
    gpu: &Gpu,
    s: &Conv2dSpec,
    dy: &Tensor,
    weight: &Tensor,
    dx: &Tensor,
) -> Result<Vec<Dispatch>> {
    let op = "conv2d_backward_input";
    let plan = plan(gpu, s, Pass::BackwardInput).ok_or_else(|| unfit(op, s))?;
    let (oh, ow) = s.out_hw();
    let (ph, pw) = s.pad();
    let taps = s.kh * s.kw;
    let (dy_image, dx_image) = (s.c_out * oh * ow, s.c_in * s.h * s.w);
    let (w_win, w_base) = window(gpu, op, "weight", weight, 0, weight.numel())?;
    let mut out = Vec::new();
    for b0 in (0..s.batch).step_by(plan.images) {
        let n = plan.images.min(s.batch - b0);
        let (dy_win, dy_base) = window(gpu, op, "dy", dy, b0 * dy_image, n * dy_image)?;
        let pad = [s.kh - 1 - ph, s.kw - 1 - pw];
        let p = BlockParams {
            m: s.c_in as u32,
            n: (n * s.h * s.w) as u32,
            k: (s.c_out * taps) as u32,
            flags: FLIP,
            a_base: w_base,
            a_m: taps as u32,
            a_ci: (s.c_in * taps) as u32,
            b_base: dy_base,
            b_batch: dy_image as u32,
            c_base: (b0 * dx_image) as u32,
            c_m: (s.h * s.w) as u32,
            c_batch: dx_image as u32,
            ..geometry(s, s.c_out, [oh, ow], [s.h, s.w], pad)
        };
        out.push(conv_call(
            gpu,
            "conv2d_window",
            &p,
            &w_win,
            &dy_win,
            None,
            dx,
            1,
        )?);
    }
    Ok(out)
}

/// Partial dweight and dbias sums on the window kernel: part [`window_weight_rows`] x
/// `[CO*CI*KH*KW + CO]`.
pub(super) fn backward_weight(
    gpu: &Gpu,
    s: &Conv2dSpec,
    dy: &Tensor,
    x: &Tensor,
    part: &Tensor,
) -> Result<Vec<Dispatch>> {
    let op = "conv2d_backward_weight";
    let plan = plan(gpu, s, Pass::BackwardWeight).ok_or_else(|| unfit(op, s))?;
    let (oh, ow) = s.out_hw();
    let (ph, pw) = s.pad();
    let taps = s.c_in * s.kh * s.kw;
    let (dy_image, x_image) = (s.c_out * oh * ow, s.c_in * s.h * s.w);
    let mut out = Vec::new();
    for (d, b0) in (0..s.batch).step_by(plan.images).enumerate() {
        let n = plan.images.min(s.batch - b0);
        let (dy_win, dy_base) = window(gpu, op, "dy", dy, b0 * dy_image, n * dy_image)?;
        let (x_win, x_base) = window(gpu, op, "x", x, b0 * x_image, n * x_image)?;
        let k_rows = (n * oh).div_ceil(plan.slices);
        let p = BlockParams {
            m: s.c_out as u32,
            n: (taps + 1) as u32,
            k: (n * oh) as u32,
            flags: DBIAS_COLUMN,
            a_base: dy_base,
            a_m: (oh * ow) as u32,
            a_batch: dy_image as u32,
            b_base: x_base,
            b_batch: x_image as u32,
            c_base: (d * plan.slices * s.part_row()) as u32,
            c_m: taps as u32,
            c_batch: s.part_row() as u32,
            k_rows: k_rows as u32,
            bias_at: (s.c_out * taps) as u32,
            ..geometry(s, s.c_in, [s.h, s.w], [oh, ow], [ph, pw])
        };
        let entry = "conv2d_window_weight";
        out.push(conv_call(
            gpu,
            entry,
            &p,
            &dy_win,
            &x_win,
            None,
            part,
            plan.slices,
        )?);
    }
    Ok(out)
}

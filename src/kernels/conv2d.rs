//! 2-D convolution, NCHW, any stride: shaders/conv2d.wgsl (direct), the implicit-GEMM
//! kernels on matmul_tiled.wgsl's tiles, their wrappers and references.
//! B = batch, CI/CO = input/output channels, H x W = input, KH x KW = kernel,
//! OH x OW = output. dbias is [`super::reduce::sum_outer_inner`] over dy.

use bytemuck::{Pod, Zeroable};

mod window_gemm;
mod windowed;
pub use windowed::*;

use super::matmul::{tiled, Mode, TileConfig, TiledParams, BIAS_ROW, TRANSPOSE_A, TRANSPOSE_B};
use super::{dispatch, expect_shape, grid_1d, Dispatch, Family, KernelCall, Shader, LOOP_BUDGET};
use crate::gpu::{Access, Gpu};
use crate::tensor::Tensor;
use crate::{Error, Result};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Padding {
    /// No padding: OH = H - KH + 1.
    Valid,
    /// Zero padding so that OH = H (top/left get (K - 1) / 2, as Keras and TensorFlow).
    Same,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Conv2dSpec {
    pub batch: usize,
    pub c_in: usize,
    pub h: usize,
    pub w: usize,
    pub c_out: usize,
    pub kh: usize,
    pub kw: usize,
    pub padding: Padding,
    /// Step between output positions, both axes (1 = dense).
    pub stride: usize,
}

impl Conv2dSpec {
    /// Top and left zero padding: none for valid; for same, half of what makes
    /// OH = ceil(H / stride) (the smaller half on top, as TensorFlow).
    pub fn pad(&self) -> (usize, usize) {
        let (oh, ow) = self.out_hw();
        let s = self.stride.max(1);
        match self.padding {
            Padding::Valid => (0, 0),
            Padding::Same => (
                ((oh - 1) * s + self.kh).saturating_sub(self.h) / 2,
                ((ow - 1) * s + self.kw).saturating_sub(self.w) / 2,
            ),
        }
    }

    pub fn out_hw(&self) -> (usize, usize) {
        let s = self.stride.max(1);
        match self.padding {
            Padding::Valid => (
                self.h.saturating_sub(self.kh) / s + 1,
                self.w.saturating_sub(self.kw) / s + 1,
            ),
            Padding::Same => (self.h.div_ceil(s), self.w.div_ceil(s)),
        }
    }

    pub fn x_shape(&self) -> [usize; 4] {
        [self.batch, self.c_in, self.h, self.w]
    }

    pub fn w_shape(&self) -> [usize; 4] {
        [self.c_out, self.c_in, self.kh, self.kw]
    }

    pub fn y_shape(&self) -> [usize; 4] {
        let (oh, ow) = self.out_hw();
        [self.batch, self.c_out, oh, ow]
    }

    /// Multiply-adds of the forward pass, times two.
    pub fn flops(&self) -> f64 {
        let [b, co, oh, ow] = self.y_shape();
        2.0 * (b * co * oh * ow * self.c_in * self.kh * self.kw) as f64
    }

    /// Batch images per partial sum of dweight/dbias: at most 1/16 of the batch (to fill a
    /// GPU) and at most [`LOOP_BUDGET`] loop iterations per invocation.
    pub fn weight_chunk(&self) -> usize {
        let (oh, ow) = self.out_hw();
        let per_image = oh * (ow + 1);
        self.batch.div_ceil(16).min(LOOP_BUDGET / per_image).max(1)
    }

    /// Elements of one chunk's partial sums: dweight (CO*CI*KH*KW) then dbias (CO).
    pub fn part_row(&self) -> usize {
        self.c_out * self.c_in * self.kh * self.kw + self.c_out
    }

    pub fn weight_chunks(&self) -> usize {
        self.batch.div_ceil(self.weight_chunk())
    }

    fn validate(&self) -> Result<()> {
        let dims = [
            self.batch,
            self.c_in,
            self.h,
            self.w,
            self.c_out,
            self.kh,
            self.kw,
            self.stride,
        ];
        if dims.contains(&0) {
            return Err(Error::shape(
                "conv2d",
                format!("zero dimension in {self:?}"),
            ));
        }
        let (oh, ow) = (self.h, self.w);
        if oh * (ow + 1) > LOOP_BUDGET {
            return Err(Error::Limit {
                op: "conv2d".into(),
                what: "output pixels per image (loop iterations per invocation)".into(),
                requested: (oh * (ow + 1)) as u64,
                limit: LOOP_BUDGET as u64,
                hint: "use smaller images".into(),
            });
        }
        if self.padding == Padding::Valid && (self.kh > self.h || self.kw > self.w) {
            return Err(Error::shape(
                "conv2d",
                format!(
                    "kernel {}x{} larger than input {}x{} with valid padding",
                    self.kh, self.kw, self.h, self.w
                ),
            ));
        }
        Ok(())
    }
}

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct Params {
    batch: u32,
    c_in: u32,
    h: u32,
    w: u32,
    c_out: u32,
    kh: u32,
    kw: u32,
    pad_h: u32,
    pad_w: u32,
    out_h: u32,
    out_w: u32,
    flags: u32,
    chunk: u32,
    chunks: u32,
    batch0: u32,
    x_base: u32,
    w_base: u32,
    bias_base: u32,
    pool: u32,
    stride: u32,
    pool_h: u32,
    pool_w: u32,
    g_base: u32,
    y_base: u32,
    at_base: u32,
    slices: u32,
    part_row0: u32,
    conv_stride: u32,
}

fn params(s: &Conv2dSpec, flags: u32) -> Params {
    let (ph, pw) = s.pad();
    let (oh, ow) = s.out_hw();
    Params {
        batch: s.batch as u32,
        c_in: s.c_in as u32,
        h: s.h as u32,
        w: s.w as u32,
        c_out: s.c_out as u32,
        kh: s.kh as u32,
        kw: s.kw as u32,
        pad_h: ph as u32,
        pad_w: pw as u32,
        out_h: oh as u32,
        out_w: ow as u32,
        flags,
        chunk: s.weight_chunk() as u32,
        chunks: s.weight_chunks() as u32,
        batch0: 0,
        x_base: 0,
        w_base: 0,
        bias_base: 0,
        pool: 0,
        stride: 0,
        pool_h: 0,
        pool_w: 0,
        g_base: 0,
        y_base: 0,
        at_base: 0,
        slices: 0,
        part_row0: 0,
        conv_stride: s.stride as u32,
    }
}

fn conv_call(
    gpu: &Gpu,
    entry: &'static str,
    p: &Params,
    ins: [&Tensor; 3],
    out: &Tensor,
) -> Result<Dispatch> {
    let workgroups = grid_1d(gpu, entry, out.numel())?;
    conv_dispatch(gpu, Shader::Conv2d, entry, p, ins, out, workgroups)
}

/// Every conv2d kernel binds three inputs and one output (see the shaders' headers); the
/// subgroup forward also three uniform windows (dummies unless WINDOW).
fn conv_dispatch(
    gpu: &Gpu,
    shader: Shader,
    entry: &'static str,
    p: &Params,
    ins: [&Tensor; 3],
    out: &Tensor,
    workgroups: [u32; 3],
) -> Result<Dispatch> {
    let mut bindings = vec![
        (ins[0], Access::Read),
        (ins[1], Access::Read),
        (ins[2], Access::Read),
        (out, Access::ReadWrite),
    ];
    if entry == FORWARD_SUBGROUP {
        bindings.extend([(gpu.dummy_window(), Access::Window); 3]);
    }
    dispatch(
        gpu,
        &KernelCall {
            shader,
            entry,
            params: bytemuck::bytes_of(p),
            bindings: &bindings,
            workgroups,
            constants: &[],
        },
    )
}

const FORWARD_SUBGROUP: &str = "conv2d_forward_subgroup";

/// Which conv2d kernel runs (forward, backward_input or backward_weight).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Conv2dKernel {
    /// conv2d.wgsl: one invocation per output element; any shape and stride.
    Direct,
    /// conv2d_subgroup.wgsl (forward and backward_weight; backward_input has none): eight
    /// channels per invocation sharing x through subgroup broadcasts; stride 1 only.
    Subgroup,
    /// Implicit GEMM on matmul_tiled.wgsl's tiles (the gpu family's kernel for layers with
    /// at least [`IMPLICIT_GEMM_MIN_C_IN`] input channels): forward M = CO, N = OH*OW,
    /// K = CI*KH*KW per image; backward_input M = CI, N = H*W, K = CO*KH*KW; backward_weight
    /// M = CO, N = CI*KH*KW + 1 (dbias), K = the chunk's images x OH*OW.
    ImplicitGemm(TileConfig),
    /// matmul_subgroup.wgsl's conv2d_window entry points: implicit GEMMs on the matmuls'
    /// 32 x 2 block reading uniform windows (window family; see window_gemm.rs), one
    /// dispatch per run of images that fits a window; stride 1 for the input gradient.
    Window,
}

/// Input channels from which the implicit-GEMM kernels are offered: below, K is shorter
/// than a tile's step and the direct kernels win (a first layer of one channel).
pub const IMPLICIT_GEMM_MIN_C_IN: usize = 8;

/// Which pass a candidate list is for.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Pass {
    Forward,
    BackwardInput,
    BackwardWeight,
}

fn candidates(gpu: &Gpu, s: &Conv2dSpec, pass: Pass) -> Vec<Conv2dKernel> {
    let subgroup = pass != Pass::BackwardInput && s.stride == 1 && gpu.subgroups();
    let gemm: Vec<Conv2dKernel> = if s.c_in >= IMPLICIT_GEMM_MIN_C_IN {
        [
            TileConfig::new(64, 64, 16, 4, 4),
            TileConfig::new(32, 32, 16, 4, 4),
        ]
        .into_iter()
        .filter(|t| implicit_gemm_fits(gpu, s, pass, t))
        .map(Conv2dKernel::ImplicitGemm)
        .collect()
    } else {
        vec![]
    };
    let mut out = vec![];
    match gpu.family() {
        Family::Gpu => {
            out.extend(gemm);
            if subgroup {
                out.push(Conv2dKernel::Subgroup);
            }
            out.push(Conv2dKernel::Direct);
        }
        Family::Window | Family::Subgroup => {
            if window_gemm::window_fits(gpu, s, pass) {
                out.push(Conv2dKernel::Window);
            }
            if subgroup {
                out.push(Conv2dKernel::Subgroup);
            }
            out.push(Conv2dKernel::Direct);
            out.extend(gemm.into_iter().take(1));
        }
        Family::Portable => out.push(Conv2dKernel::Direct),
    }
    out
}

fn implicit_gemm_fits(gpu: &Gpu, s: &Conv2dSpec, pass: Pass, t: &TileConfig) -> bool {
    let (oh, ow) = s.out_hw();
    t.check(gpu, "conv2d").is_ok()
        && (pass != Pass::BackwardWeight || s.weight_chunk() * oh * ow <= t.max_k_chunk(gpu))
        && s.batch <= gpu.limits.max_compute_workgroups_per_dimension as usize
}

/// Every forward kernel that can run `s` on `gpu` under [`Gpu::family`], the default first
/// (the lowering times them and keeps the fastest).
pub fn conv2d_forward_candidates(gpu: &Gpu, s: &Conv2dSpec) -> Vec<Conv2dKernel> {
    candidates(gpu, s, Pass::Forward)
}

/// As [`conv2d_forward_candidates`], for [`conv2d_backward_input`].
pub fn conv2d_backward_input_candidates(gpu: &Gpu, s: &Conv2dSpec) -> Vec<Conv2dKernel> {
    candidates(gpu, s, Pass::BackwardInput)
}

/// As [`conv2d_forward_candidates`], for [`conv2d_backward_weight`].
pub fn conv2d_backward_weight_candidates(gpu: &Gpu, s: &Conv2dSpec) -> Vec<Conv2dKernel> {
    candidates(gpu, s, Pass::BackwardWeight)
}

/// A candidate list's default for the one-dispatch wrappers: its first kernel other than
/// Window (several dispatches; the lowering measures it), else the direct one.
fn first_or_direct(candidates: Vec<Conv2dKernel>) -> Conv2dKernel {
    candidates
        .into_iter()
        .find(|k| *k != Conv2dKernel::Window)
        .unwrap_or(Conv2dKernel::Direct)
}

/// Partial-sum rows `kernel`'s weight gradient writes: [`Conv2dSpec::weight_chunks`], or
/// the window kernel's dispatches x slices.
pub fn conv2d_backward_weight_rows(gpu: &Gpu, kernel: Conv2dKernel, s: &Conv2dSpec) -> usize {
    match kernel {
        Conv2dKernel::Window => window_gemm::window_weight_rows(gpu, s).unwrap_or(0),
        _ => s.weight_chunks(),
    }
}

/// The implicit-GEMM params: the conv geometry on the tiled GEMM's shapes.
fn gemm_params(s: &Conv2dSpec, [m, n, k]: [usize; 3], flags: u32, batch: usize) -> TiledParams {
    let (ph, pw) = s.pad();
    let (oh, ow) = s.out_hw();
    TiledParams {
        m: m as u32,
        n: n as u32,
        k: k as u32,
        flags,
        batch: batch as u32,
        splits: 1,
        k_chunk: k as u32,
        // opA(m, k) = w[m*K + k] (forward; the other modes address A themselves), and
        // C[b] [M, N] contiguous.
        a_m: k as u32,
        a_k: 1,
        c_m: n as u32,
        c_batch: (m * n) as u32,
        c_in: s.c_in as u32,
        h: s.h as u32,
        w: s.w as u32,
        c_out: s.c_out as u32,
        kh: s.kh as u32,
        kw: s.kw as u32,
        pad_h: ph as u32,
        pad_w: pw as u32,
        out_h: oh as u32,
        out_w: ow as u32,
        stride: s.stride as u32,
        ..Default::default()
    }
}

fn one(op: &str, mut d: Vec<Dispatch>) -> Result<Dispatch> {
    match d.len() {
        1 => Ok(d.remove(0)),
        n => Err(Error::gpu(op, format!("expected one dispatch, built {n}"))),
    }
}

/// y = act(conv2d(x, w) + bias): x `[B,CI,H,W]`, w `[CO,CI,KH,KW]`, bias `[CO]`, y `[B,CO,OH,OW]`,
/// with the default of [`conv2d_forward_candidates`].
pub fn conv2d_forward(
    gpu: &Gpu,
    s: &Conv2dSpec,
    x: &Tensor,
    weight: &Tensor,
    bias: Option<&Tensor>,
    relu: bool,
    y: &Tensor,
) -> Result<Dispatch> {
    let kernel = first_or_direct(conv2d_forward_candidates(gpu, s));
    one(
        "conv2d_forward",
        conv2d_forward_with(gpu, kernel, s, x, weight, bias, relu, y)?,
    )
}

/// [`conv2d_forward`] with the kernel chosen by the caller (Subgroup needs
/// [`Gpu::subgroups`] and stride 1; where its grid is too wide it runs Direct): one
/// dispatch, or one per window for Window.
#[allow(clippy::too_many_arguments)]
pub fn conv2d_forward_with(
    gpu: &Gpu,
    kernel: Conv2dKernel,
    s: &Conv2dSpec,
    x: &Tensor,
    weight: &Tensor,
    bias: Option<&Tensor>,
    relu: bool,
    y: &Tensor,
) -> Result<Vec<Dispatch>> {
    let op = "conv2d_forward";
    s.validate()?;
    expect_shape(op, "x", x, &s.x_shape())?;
    expect_shape(op, "weight", weight, &s.w_shape())?;
    expect_shape(op, "y", y, &s.y_shape())?;
    if let Some(b) = bias {
        expect_shape(op, "bias", b, &[s.c_out])?;
    }
    match kernel {
        Conv2dKernel::Window => window_gemm::forward(gpu, s, x, weight, bias, relu, y),
        _ => Ok(vec![forward_one(gpu, kernel, s, x, weight, bias, relu, y)?]),
    }
}

#[allow(clippy::too_many_arguments)]
fn forward_one(
    gpu: &Gpu,
    kernel: Conv2dKernel,
    s: &Conv2dSpec,
    x: &Tensor,
    weight: &Tensor,
    bias: Option<&Tensor>,
    relu: bool,
    y: &Tensor,
) -> Result<Dispatch> {
    let op = "conv2d_forward";
    let flags = bias.is_some() as u32 | (relu as u32) << 1;
    let (oh, ow) = s.out_hw();
    if let Conv2dKernel::ImplicitGemm(t) = kernel {
        let gflags = if bias.is_some() { BIAS_ROW } else { 0 } | if relu { 8 } else { 0 };
        let taps = s.c_in * s.kh * s.kw;
        let p = gemm_params(s, [s.c_out, oh * ow, taps], gflags, s.batch);
        let d = tiled(gpu, op, t, Mode::ConvForward, p, weight, x, bias, y)?;
        return one(op, d);
    }
    let subgroup = check_subgroup(gpu, op, kernel, s)?;
    let bias = bias.unwrap_or(gpu.dummy());
    let p = params(s, flags);
    // Seed shapes on lavapipe: 300 ms per batch of 128 with one invocation per output,
    // 46 ms with eight channels per invocation.
    let groups = (s.batch * oh * ow).div_ceil(64);
    let sg = FORWARD_SUBGROUP;
    match subgroup_call(
        gpu,
        subgroup,
        sg,
        &p,
        [x, weight, bias],
        y,
        [groups, s.c_out],
    )? {
        Some(d) => Ok(d),
        None => conv_call(gpu, op, &p, [x, weight, bias], y),
    }
}

/// Whether `kernel` is Subgroup, refusing it for a stride other than 1.
fn check_subgroup(gpu: &Gpu, op: &str, kernel: Conv2dKernel, s: &Conv2dSpec) -> Result<bool> {
    let subgroup = kernel == Conv2dKernel::Subgroup;
    if subgroup && (s.stride != 1 || !gpu.subgroups()) {
        return Err(Error::usage(
            op,
            format!(
                "the subgroup kernel needs stride 1 (got {}) and subgroups of at least 8; use Direct",
                s.stride
            ),
        ));
    }
    Ok(subgroup)
}

/// The subgroup kernel `entry` over `groups` x ceil(CO / 8) workgroups, or None when the
/// caller asked for the portable kernel, the grid is too wide or the device cannot bind the
/// forward's uniform windows (the caller falls back).
fn subgroup_call(
    gpu: &Gpu,
    subgroup: bool,
    entry: &'static str,
    p: &Params,
    ins: [&Tensor; 3],
    out: &Tensor,
    [groups, c_out]: [usize; 2],
) -> Result<Option<Dispatch>> {
    let l = &gpu.limits;
    // The subgroup forward also declares its (unused without WINDOW) 64 KiB uniform windows.
    let windows_bindable = entry != FORWARD_SUBGROUP
        || (l.max_uniform_buffer_binding_size >= crate::tensor::WINDOW_BYTES
            && l.max_uniform_buffers_per_shader_stage >= 4);
    if !subgroup || !windows_bindable || groups > l.max_compute_workgroups_per_dimension as usize {
        return Ok(None);
    }
    if !gpu.subgroups() {
        return Err(Error::usage(
            entry,
            "the subgroup kernels need subgroups of at least 8",
        ));
    }
    let workgroups = [groups as u32, c_out.div_ceil(8) as u32, 1];
    conv_dispatch(gpu, Shader::Conv2dSubgroup, entry, p, ins, out, workgroups).map(Some)
}

/// dx = conv2d_backward_input(dy, w): dy `[B,CO,OH,OW]` -> dx `[B,CI,H,W]`, with the default
/// of [`conv2d_backward_input_candidates`].
pub fn conv2d_backward_input(
    gpu: &Gpu,
    s: &Conv2dSpec,
    dy: &Tensor,
    weight: &Tensor,
    dx: &Tensor,
) -> Result<Dispatch> {
    let kernel = first_or_direct(conv2d_backward_input_candidates(gpu, s));
    one(
        "conv2d_backward_input",
        conv2d_backward_input_with(gpu, kernel, s, dy, weight, dx)?,
    )
}

/// [`conv2d_backward_input`] with the kernel chosen by the caller (Direct, ImplicitGemm or
/// Window).
pub fn conv2d_backward_input_with(
    gpu: &Gpu,
    kernel: Conv2dKernel,
    s: &Conv2dSpec,
    dy: &Tensor,
    weight: &Tensor,
    dx: &Tensor,
) -> Result<Vec<Dispatch>> {
    let op = "conv2d_backward_input";
    s.validate()?;
    expect_shape(op, "dy", dy, &s.y_shape())?;
    expect_shape(op, "weight", weight, &s.w_shape())?;
    expect_shape(op, "dx", dx, &s.x_shape())?;
    match kernel {
        Conv2dKernel::Window => window_gemm::backward_input(gpu, s, dy, weight, dx),
        _ => Ok(vec![input_one(gpu, kernel, s, dy, weight, dx)?]),
    }
}

fn input_one(
    gpu: &Gpu,
    kernel: Conv2dKernel,
    s: &Conv2dSpec,
    dy: &Tensor,
    weight: &Tensor,
    dx: &Tensor,
) -> Result<Dispatch> {
    let op = "conv2d_backward_input";
    match kernel {
        Conv2dKernel::ImplicitGemm(t) => {
            let k = s.c_out * s.kh * s.kw;
            // A (w gathered) is read m-fast: ci runs along a row of w.
            let p = gemm_params(s, [s.c_in, s.h * s.w, k], TRANSPOSE_A, s.batch);
            let d = tiled(gpu, op, t, Mode::ConvBackwardInput, p, weight, dy, None, dx)?;
            one(op, d)
        }
        Conv2dKernel::Subgroup | Conv2dKernel::Window => Err(Error::usage(
            op,
            "there is no subgroup kernel for the input gradient; use Direct, ImplicitGemm or Window",
        )),
        Conv2dKernel::Direct => conv_call(gpu, op, &params(s, 0), [dy, weight, weight], dx),
    }
}

/// Partial dweight and dbias sums per batch chunk: dy `[B,CO,OH,OW]`, x `[B,CI,H,W]` ->
/// part `[CHUNKS, CO*CI*KH*KW + CO]`; sum the chunks with `reduce::sum_outer_inner`.
/// Uses the default of [`conv2d_backward_weight_candidates`].
pub fn conv2d_backward_weight(
    gpu: &Gpu,
    s: &Conv2dSpec,
    dy: &Tensor,
    x: &Tensor,
    part: &Tensor,
) -> Result<Dispatch> {
    let kernel = first_or_direct(conv2d_backward_weight_candidates(gpu, s));
    one(
        "conv2d_backward_weight",
        conv2d_backward_weight_with(gpu, kernel, s, dy, x, part)?,
    )
}

/// [`conv2d_backward_weight`] with the kernel chosen by the caller; part is
/// [[`conv2d_backward_weight_rows`], CO*CI*KH*KW + CO].
pub fn conv2d_backward_weight_with(
    gpu: &Gpu,
    kernel: Conv2dKernel,
    s: &Conv2dSpec,
    dy: &Tensor,
    x: &Tensor,
    part: &Tensor,
) -> Result<Vec<Dispatch>> {
    let op = "conv2d_backward_weight";
    s.validate()?;
    expect_shape(op, "dy", dy, &s.y_shape())?;
    expect_shape(op, "x", x, &s.x_shape())?;
    let rows = conv2d_backward_weight_rows(gpu, kernel, s);
    expect_shape(op, "part", part, &[rows, s.part_row()])?;
    match kernel {
        Conv2dKernel::Window => window_gemm::backward_weight(gpu, s, dy, x, part),
        _ => Ok(vec![weight_one(gpu, kernel, s, dy, x, part)?]),
    }
}

fn weight_one(
    gpu: &Gpu,
    kernel: Conv2dKernel,
    s: &Conv2dSpec,
    dy: &Tensor,
    x: &Tensor,
    part: &Tensor,
) -> Result<Dispatch> {
    let op = "conv2d_backward_weight";
    let (oh, ow) = s.out_hw();
    if let Conv2dKernel::ImplicitGemm(t) = kernel {
        let taps = s.c_in * s.kh * s.kw;
        // A (dy) is k-fast; B (x gathered) is read k-fast too (along an output row).
        let mut p = gemm_params(s, [s.c_out, taps + 1, s.batch * oh * ow], TRANSPOSE_B, 1);
        p.splits = s.weight_chunks() as u32;
        p.k_chunk = (s.weight_chunk() * oh * ow) as u32;
        p.c_part = s.part_row() as u32;
        let d = tiled(gpu, op, t, Mode::ConvBackwardWeight, p, dy, x, None, part)?;
        return one(op, d);
    }
    let subgroup = check_subgroup(gpu, op, kernel, s)?;
    let p = params(s, 0);
    // Seed shapes on lavapipe: 226 ms per batch of 128 with one weight per invocation,
    // 25 ms with 9 taps x 8 channels per subgroup.
    let groups = s.weight_chunks() * s.c_in * (s.kh * s.kw).div_ceil(9);
    let sg = "conv2d_backward_weight_subgroup";
    match subgroup_call(
        gpu,
        subgroup,
        sg,
        &p,
        [x, dy, gpu.dummy()],
        part,
        [groups, s.c_out],
    )? {
        Some(d) => Ok(d),
        None => conv_call(gpu, op, &p, [dy, x, x], part),
    }
}

// ---- CPU references (f64) ----------------------------------------------------------------

/// Visit every (b, co, ci, oy, ox, ky, kx, x index) tap of the convolution that lands
/// inside the image: the one loop nest all three references share.
fn for_each_tap(s: &Conv2dSpec, mut f: impl FnMut(usize, usize, usize, usize, usize)) {
    let (ph, pw) = s.pad();
    let (oh, ow) = s.out_hw();
    for b in 0..s.batch {
        for co in 0..s.c_out {
            for ci in 0..s.c_in {
                for oy in 0..oh {
                    for ox in 0..ow {
                        for ky in 0..s.kh {
                            let iy = (oy * s.stride + ky).wrapping_sub(ph);
                            if iy >= s.h {
                                continue;
                            }
                            for kx in 0..s.kw {
                                let ix = (ox * s.stride + kx).wrapping_sub(pw);
                                if ix >= s.w {
                                    continue;
                                }
                                let yi = ((b * s.c_out + co) * oh + oy) * ow + ox;
                                let wi = ((co * s.c_in + ci) * s.kh + ky) * s.kw + kx;
                                let xi = ((b * s.c_in + ci) * s.h + iy) * s.w + ix;
                                f(yi, wi, xi, co, b);
                            }
                        }
                    }
                }
            }
        }
    }
}

pub fn conv2d_forward_ref(
    s: &Conv2dSpec,
    x: &[f64],
    weight: &[f64],
    bias: Option<&[f64]>,
    relu: bool,
) -> Vec<f64> {
    let [b, co, oh, ow] = s.y_shape();
    let mut y = vec![0.0; b * co * oh * ow];
    for_each_tap(s, |yi, wi, xi, _, _| y[yi] += x[xi] * weight[wi]);
    for (i, v) in y.iter_mut().enumerate() {
        if let Some(bias) = bias {
            *v += bias[(i / (oh * ow)) % co];
        }
        if relu {
            *v = v.max(0.0);
        }
    }
    y
}

pub fn conv2d_backward_input_ref(s: &Conv2dSpec, dy: &[f64], weight: &[f64]) -> Vec<f64> {
    let mut dx = vec![0.0; s.x_shape().iter().product()];
    for_each_tap(s, |yi, wi, xi, _, _| dx[xi] += dy[yi] * weight[wi]);
    dx
}

/// The full dweight `[CO,CI,KH,KW]` (the sum of the GPU's partial chunks).
pub fn conv2d_backward_weight_ref(s: &Conv2dSpec, dy: &[f64], x: &[f64]) -> Vec<f64> {
    let mut dw = vec![0.0; s.w_shape().iter().product()];
    for_each_tap(s, |yi, wi, xi, _, _| dw[wi] += dy[yi] * x[xi]);
    dw
}

/// dbias `[CO]` = sum over b, oy, ox of dy.
pub fn conv2d_backward_bias_ref(s: &Conv2dSpec, dy: &[f64]) -> Vec<f64> {
    let (oh, ow) = s.out_hw();
    let mut db = vec![0.0; s.c_out];
    for (i, v) in dy.iter().enumerate() {
        db[(i / (oh * ow)) % s.c_out] += v;
    }
    db
}

//! `C = op(A) · op(B) (+ bias) (ReLU)`: shaders/matmul.wgsl, its wrapper and its reference.
//! M, N, K: rows of C, columns of C, the contracted dimension.

use bytemuck::{Pod, Zeroable};

use super::{dispatch, Dispatch, KernelCall, Shader, LOOP_BUDGET};
use crate::gpu::{Access, Gpu};
use crate::tensor::{Tensor, WINDOW_BYTES};
use crate::{Error, Result};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MatmulSpec {
    pub m: usize,
    pub n: usize,
    pub k: usize,
    /// A is stored [K, M] rather than [M, K].
    pub transpose_a: bool,
    /// B is stored [N, K] rather than [K, N].
    pub transpose_b: bool,
    pub bias: bool,
    pub relu: bool,
}

impl MatmulSpec {
    pub fn new(m: usize, n: usize, k: usize) -> Self {
        MatmulSpec {
            m,
            n,
            k,
            transpose_a: false,
            transpose_b: false,
            bias: false,
            relu: false,
        }
    }

    pub fn a_shape(&self) -> [usize; 2] {
        if self.transpose_a {
            [self.k, self.m]
        } else {
            [self.m, self.k]
        }
    }

    pub fn b_shape(&self) -> [usize; 2] {
        if self.transpose_b {
            [self.n, self.k]
        } else {
            [self.k, self.n]
        }
    }

    pub fn flops(&self) -> f64 {
        2.0 * self.m as f64 * self.n as f64 * self.k as f64
    }
}

/// Register-tile shape of matmul.wgsl (pipeline-overridable constants WG, TM, TN).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Tiles {
    pub wg: u32,
    pub tm: u32,
    pub tn: u32,
}

impl Tiles {
    pub const MAX_TM: u32 = 8;
    pub const MAX_TN: u32 = 4;
}

/// Which matmul kernel runs, and its shape.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MatmulKernel {
    /// matmul.wgsl: a TM x TN register tile per invocation, portable.
    RegisterTile(Tiles),
    /// matmul_subgroup.wgsl: a 32 x 2 block per invocation, the 32 rows' A values shared
    /// by subgroup broadcasts; WG invocations.
    Subgroup { wg: u32 },
    /// The same block reading A and B through 64 KiB uniform-buffer windows, one dispatch
    /// per block of C and chunk of K (see [`windows`]); Subgroup where the operands' layouts
    /// do not cut into windows.
    Window { wg: u32 },
}

impl MatmulKernel {
    /// The kernel measured fastest on this kind of adapter (see benches/kernels.rs): on
    /// lavapipe the subgroup kernel runs the seed CNN's Dense shapes at ~4 GFLOP/s against
    /// ~0.6-0.9 for the register tiles, because every buffer load there is expensive.
    /// On CPU adapters uniform-buffer loads are ~10x cheaper than storage loads, so the
    /// window kernel runs the Dense shapes at ~11 GFLOP/s; GPUs keep storage buffers.
    pub fn for_gpu(gpu: &Gpu) -> MatmulKernel {
        if gpu.windows() {
            MatmulKernel::Window { wg: 64 }
        } else if gpu.subgroups() {
            MatmulKernel::Subgroup { wg: 64 }
        } else {
            MatmulKernel::RegisterTile(Tiles {
                wg: 64,
                tm: 4,
                tn: 4,
            })
        }
    }
}

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct Params {
    m: u32,
    n: u32,
    k: u32,
    flags: u32,
}

/// Params of matmul_subgroup.wgsl: one block of C, operands addressed by strides.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
struct BlockParams {
    m: u32,
    n: u32,
    k: u32,
    flags: u32,
    a_base: u32,
    a_m: u32,
    a_k: u32,
    b_base: u32,
    b_k: u32,
    b_n: u32,
    c_base: u32,
    c_m: u32,
    bias_base: u32,
    pad: [u32; 3],
}

const BIAS: u32 = 4;
const RELU: u32 = 8;
const ACCUMULATE: u32 = 32;

/// One dispatch of the window kernel: rows m0.., columns n0.., the K range k0.., and
/// where its two windows start in A and B (first element, element count).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WindowBlock {
    pub m0: usize,
    pub m: usize,
    pub n0: usize,
    pub n: usize,
    pub k0: usize,
    pub k: usize,
    pub a_window: (usize, usize),
    pub b_window: (usize, usize),
}

/// Cut `spec` into blocks whose A and B each fit one uniform window, or None when the
/// layouts make the blocks too thin to pay (fewer than 32 rows, 64 columns or 32 steps of
/// K where the whole dimension is larger). A stored [M, K] is cut by rows (every window
/// holds whole rows), A stored [K, M] by K; B stored [K, N] by K, B stored [N, K] by
/// columns. `slack` elements of each window are kept free for a start that is not aligned
/// (the adapter's uniform offset alignment in bytes / 4, or 0 when every window start is
/// known to be aligned).
pub fn windows(spec: &MatmulSpec, slack: usize) -> Option<Vec<WindowBlock>> {
    let cap = (WINDOW_BYTES as usize / 4).saturating_sub(slack);
    let (m, n, k) = (spec.m, spec.n, spec.k);
    let fit = |row: usize| cap.checked_div(row).unwrap_or(0);
    let (mc, ka) = if spec.transpose_a {
        (m, fit(m))
    } else {
        (fit(k), k)
    };
    let (nc, kb) = if spec.transpose_b {
        (fit(k), k)
    } else {
        (n, fit(n))
    };
    let (mc, nc, kc) = (mc.min(m), nc.min(n), ka.min(kb).min(k));
    if mc < m.min(32) || nc < n.min(64) || kc < k.min(32) {
        return None;
    }
    let mut blocks = Vec::new();
    for m0 in (0..m).step_by(mc) {
        for n0 in (0..n).step_by(nc) {
            for k0 in (0..k).step_by(kc) {
                let (bm, bn, bk) = (mc.min(m - m0), nc.min(n - n0), kc.min(k - k0));
                let a_window = if spec.transpose_a {
                    (k0 * m, bk * m)
                } else {
                    (m0 * k, bm * k)
                };
                let b_window = if spec.transpose_b {
                    (n0 * k, bn * k)
                } else {
                    (k0 * n, bk * n)
                };
                blocks.push(WindowBlock {
                    m0,
                    m: bm,
                    n0,
                    n: bn,
                    k0,
                    k: bk,
                    a_window,
                    b_window,
                });
            }
        }
    }
    Some(blocks)
}

fn check(
    spec: &MatmulSpec,
    a: &Tensor,
    b: &Tensor,
    bias: Option<&Tensor>,
    c: &Tensor,
) -> Result<()> {
    let op = "matmul";
    if spec.m == 0 || spec.n == 0 || spec.k == 0 {
        return Err(Error::shape(op, format!("empty product {spec:?}")));
    }
    let want = |name: &str, t: &Tensor, shape: &[usize]| -> Result<()> {
        if t.numel() != shape.iter().product::<usize>() {
            return Err(Error::shape(
                op,
                format!(
                    "{name} has shape {:?}, expected {:?} for {spec:?}",
                    t.shape, shape
                ),
            ));
        }
        Ok(())
    };
    want("A", a, &spec.a_shape())?;
    want("B", b, &spec.b_shape())?;
    want("C", c, &[spec.m, spec.n])?;
    match (spec.bias, bias) {
        (true, Some(t)) => want("bias", t, &[spec.n]),
        (false, None) => Ok(()),
        _ => Err(Error::shape(op, "bias tensor given iff spec.bias")),
    }
}

/// Build the dispatches of `c = op(a) · op(b) (+ bias) (relu)` with the adapter's kernel
/// (one, or one per window block).
pub fn matmul(
    gpu: &Gpu,
    spec: &MatmulSpec,
    a: &Tensor,
    b: &Tensor,
    bias: Option<&Tensor>,
    c: &Tensor,
) -> Result<Vec<Dispatch>> {
    matmul_with(gpu, spec, MatmulKernel::for_gpu(gpu), a, b, bias, c)
}

/// Window slack for this adapter's uniform offset alignment (see [`windows`]).
fn slack(gpu: &Gpu) -> usize {
    gpu.limits.min_uniform_buffer_offset_alignment as usize / 4
}

/// Whether `spec` would run through uniform windows on this adapter.
pub fn runs_windowed(gpu: &Gpu, spec: &MatmulSpec) -> bool {
    matches!(MatmulKernel::for_gpu(gpu), MatmulKernel::Window { .. })
        && windows(spec, slack(gpu)).is_some()
}

/// The blocks for these operands: full 64 KiB windows when every window starts aligned
/// (rows of 128 floats in 256-byte-aligned tensors: exactly 128 rows a window), else with
/// slack for the misalignment.
fn windows_for(gpu: &Gpu, spec: &MatmulSpec, a: &Tensor, b: &Tensor) -> Option<Vec<WindowBlock>> {
    let align = gpu.limits.min_uniform_buffer_offset_alignment as u64;
    let aligned = |t: &Tensor, first: usize| (t.offset + first as u64 * 4).is_multiple_of(align);
    if let Some(blocks) = windows(spec, 0) {
        if blocks
            .iter()
            .all(|blk| aligned(a, blk.a_window.0) && aligned(b, blk.b_window.0))
        {
            return Some(blocks);
        }
    }
    windows(spec, slack(gpu))
}

pub fn matmul_with(
    gpu: &Gpu,
    spec: &MatmulSpec,
    kernel: MatmulKernel,
    a: &Tensor,
    b: &Tensor,
    bias: Option<&Tensor>,
    c: &Tensor,
) -> Result<Vec<Dispatch>> {
    check(spec, a, b, bias, c)?;
    if let MatmulKernel::Window { wg } = kernel {
        return match windows_for(gpu, spec, a, b) {
            Some(blocks) => matmul_windows(gpu, spec, wg, &blocks, a, b, bias, c),
            None => matmul_with(gpu, spec, MatmulKernel::Subgroup { wg }, a, b, bias, c),
        };
    }
    if let MatmulKernel::RegisterTile(t) = kernel {
        if t.tm == 0 || t.tn == 0 || t.tm > Tiles::MAX_TM || t.tn > Tiles::MAX_TN {
            return Err(Error::usage(
                "tiles",
                format!("{t:?}: TM must be 1..=8, TN 1..=4"),
            ));
        }
    }
    if let MatmulKernel::Subgroup { wg } | MatmulKernel::Window { wg } = kernel {
        if !gpu.subgroups() || wg % 8 != 0 {
            return Err(Error::usage(
                "matmul kernel",
                "the subgroup matmul needs subgroups of at least 8 and WG a multiple of 8",
            ));
        }
    }
    if spec.k > LOOP_BUDGET {
        return Err(Error::Limit {
            op: "matmul".into(),
            what: "contracted dimension K (loop iterations per invocation)".into(),
            requested: spec.k as u64,
            limit: LOOP_BUDGET as u64,
            hint: "use a narrower layer".into(),
        });
    }
    let flags = spec.transpose_a as u32
        | (spec.transpose_b as u32) << 1
        | (spec.bias as u32) << 2
        | (spec.relu as u32) << 3;
    let params = Params {
        m: spec.m as u32,
        n: spec.n as u32,
        k: spec.k as u32,
        flags,
    };
    if let MatmulKernel::Subgroup { wg } = kernel {
        let (a_m, a_k) = if spec.transpose_a {
            (1, spec.m)
        } else {
            (spec.k, 1)
        };
        let (b_k, b_n) = if spec.transpose_b {
            (1, spec.k)
        } else {
            (spec.n, 1)
        };
        let params = BlockParams {
            m: spec.m as u32,
            n: spec.n as u32,
            k: spec.k as u32,
            flags: flags & (BIAS | RELU),
            a_m: a_m as u32,
            a_k: a_k as u32,
            b_k: b_k as u32,
            b_n: b_n as u32,
            c_m: spec.n as u32,
            ..Default::default()
        };
        let bias = bias.unwrap_or(gpu.dummy());
        return Ok(vec![dispatch(
            gpu,
            &KernelCall {
                shader: Shader::MatmulSubgroup,
                entry: "matmul_subgroup",
                params: bytemuck::bytes_of(&params),
                bindings: &[
                    (a, Access::Read),
                    (b, Access::Read),
                    (bias, Access::Read),
                    (c, Access::ReadWrite),
                ],
                workgroups: subgroup_grid(spec.m, spec.n, wg),
                constants: &[("WG", wg as f64)],
            },
        )?]);
    }
    let (shader, entry, workgroups, constants) = match kernel {
        MatmulKernel::RegisterTile(t) => (
            Shader::Matmul,
            "matmul",
            [
                spec.n.div_ceil((t.wg * t.tn) as usize) as u32,
                spec.m.div_ceil(t.tm as usize) as u32,
                1,
            ],
            vec![
                ("WG", t.wg as f64),
                ("TM", t.tm as f64),
                ("TN", t.tn as f64),
            ],
        ),
        MatmulKernel::Subgroup { .. } | MatmulKernel::Window { .. } => unreachable!(),
    };
    // Any buffer stands in for an absent bias; the kernel does not read it.
    let bias = bias.unwrap_or(gpu.dummy());
    Ok(vec![dispatch(
        gpu,
        &KernelCall {
            shader,
            entry,
            params: bytemuck::bytes_of(&params),
            bindings: &[
                (a, Access::Read),
                (b, Access::Read),
                (bias, Access::Read),
                (c, Access::ReadWrite),
            ],
            workgroups,
            constants: &constants,
        },
    )?])
}

/// Workgroups of matmul_subgroup.wgsl for an M x N block: 32 rows by 2 * WG columns each.
fn subgroup_grid(m: usize, n: usize, wg: u32) -> [u32; 3] {
    [n.div_ceil(2 * wg as usize) as u32, m.div_ceil(32) as u32, 1]
}

/// One matmul_window dispatch per block; K chunks after the first add to C, the bias goes
/// on with the first chunk and the ReLU with the last.
#[allow(clippy::too_many_arguments)]
fn matmul_windows(
    gpu: &Gpu,
    spec: &MatmulSpec,
    wg: u32,
    blocks: &[WindowBlock],
    a: &Tensor,
    b: &Tensor,
    bias: Option<&Tensor>,
    c: &Tensor,
) -> Result<Vec<Dispatch>> {
    let align = gpu.limits.min_uniform_buffer_offset_alignment as u64;
    let (n, k) = (spec.n, spec.k);
    let bias_t = bias.unwrap_or(gpu.dummy());
    let mut out = Vec::with_capacity(blocks.len());
    for blk in blocks {
        let no_window = |what: &str| {
            Error::usage(
                "matmul window",
                format!("{what} of {blk:?} does not fit a uniform window (buffer without slack?)"),
            )
        };
        let (a_win, a0) = a
            .window(blk.a_window.0, blk.a_window.1, align)
            .ok_or_else(|| no_window("A"))?;
        let (b_win, b0) = b
            .window(blk.b_window.0, blk.b_window.1, align)
            .ok_or_else(|| no_window("B"))?;
        // Element (i, kk) of the block's opA, (kk, j) of its opB, inside the windows.
        let (a_base, a_m, a_k) = if spec.transpose_a {
            (a0 as usize + blk.m0, 1, spec.m)
        } else {
            (a0 as usize + blk.k0, k, 1)
        };
        let (b_base, b_k, b_n) = if spec.transpose_b {
            (b0 as usize + blk.k0, 1, k)
        } else {
            (b0 as usize + blk.n0, n, 1)
        };
        let first = blk.k0 == 0;
        let last = blk.k0 + blk.k == k;
        let flags = if first { 0 } else { ACCUMULATE }
            | if first && spec.bias { BIAS } else { 0 }
            | if last && spec.relu { RELU } else { 0 };
        let params = BlockParams {
            m: blk.m as u32,
            n: blk.n as u32,
            k: blk.k as u32,
            flags,
            a_base: a_base as u32,
            a_m: a_m as u32,
            a_k: a_k as u32,
            b_base: b_base as u32,
            b_k: b_k as u32,
            b_n: b_n as u32,
            c_base: (blk.m0 * n + blk.n0) as u32,
            c_m: n as u32,
            bias_base: blk.n0 as u32,
            pad: [0; 3],
        };
        out.push(dispatch(
            gpu,
            &KernelCall {
                shader: Shader::MatmulSubgroup,
                entry: "matmul_window",
                params: bytemuck::bytes_of(&params),
                bindings: &[
                    (gpu.dummy(), Access::Read),
                    (gpu.dummy(), Access::Read),
                    (bias_t, Access::Read),
                    (c, Access::ReadWrite),
                    (&a_win, Access::Window),
                    (&b_win, Access::Window),
                ],
                workgroups: subgroup_grid(blk.m, blk.n, wg),
                constants: &[("WG", wg as f64)],
            },
        )?);
    }
    Ok(out)
}

/// CPU reference of [`matmul`], accumulating in f64.
pub fn matmul_ref(spec: &MatmulSpec, a: &[f64], b: &[f64], bias: Option<&[f64]>) -> Vec<f64> {
    let (m, n, k) = (spec.m, spec.n, spec.k);
    let op_a = |i: usize, kk: usize| {
        if spec.transpose_a {
            a[kk * m + i]
        } else {
            a[i * k + kk]
        }
    };
    let op_b = |kk: usize, j: usize| {
        if spec.transpose_b {
            b[j * k + kk]
        } else {
            b[kk * n + j]
        }
    };
    let mut c = vec![0.0; m * n];
    for i in 0..m {
        for j in 0..n {
            let mut acc = 0.0;
            for kk in 0..k {
                acc += op_a(i, kk) * op_b(kk, j);
            }
            if let Some(bias) = bias {
                acc += bias[j];
            }
            if spec.relu {
                acc = acc.max(0.0);
            }
            c[i * n + j] = acc;
        }
    }
    c
}

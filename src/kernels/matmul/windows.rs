//! The window matmul (matmul_subgroup.wgsl's matmul_window) for CPU adapters, where a
//! uniform load costs a tenth of a storage load: a product cut into blocks whose A and B
//! each fit one 64 KiB uniform window, one dispatch per block.

use super::{subgroup_grid, BlockParams, MatmulKernel, MatmulSpec, ACCUMULATE, BIAS, RELU};
use crate::gpu::{Access, Gpu};
use crate::kernels::{dispatch, Dispatch, KernelCall, Shader};
use crate::tensor::{Tensor, WINDOW_BYTES};
use crate::{Error, Result};

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
/// layouts make the blocks too thin to pay (fewer than 32 rows, 64 columns or 64 steps of
/// K where the whole dimension is larger: on lavapipe a 512^3 product in blocks of 32 rows
/// and 32 steps ran at 1.9 GFLOP/s, below the storage-buffer kernel's ~3.5, because every
/// K block after the first reads and writes its block of C). A stored `[M, K]` is cut by rows (every window
/// holds whole rows), A stored `[K, M]` by K; B stored `[K, N]` by K, B stored `[N, K]` by
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
    if mc < m.min(32) || nc < n.min(64) || kc < k.min(64) {
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
pub(super) fn windows_for(
    gpu: &Gpu,
    spec: &MatmulSpec,
    a: &Tensor,
    b: &Tensor,
) -> Option<Vec<WindowBlock>> {
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

/// One matmul_window dispatch per block; K chunks after the first add to C, the bias goes
/// on with the first chunk and the ReLU with the last.
#[allow(clippy::too_many_arguments)]
pub(super) fn matmul_windows(
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
            ..Default::default()
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

//! Row softmax (optionally causal-masked or log-softmax), its backward, and token
//! cross-entropy: shaders/softmax.wgsl, its wrappers and references.
//! R = rows, C = columns (the last axis); for cross-entropy N = tokens, V = classes.

use bytemuck::{Pod, Zeroable};

use super::{dispatch, grid_1d, Dispatch, KernelCall, Shader, LOOP_BUDGET, WG_1D};
use crate::gpu::{Access, Gpu};
use crate::tensor::Tensor;
use crate::{Error, Result};

/// Softmax over the last axis of a tensor viewed `[rows, cols]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SoftmaxSpec {
    pub rows: usize,
    pub cols: usize,
    /// Causal mask of period T: row r is query position t = r % T and only columns
    /// j <= t take part; the others get probability 0. For attention scores
    /// `[B, H, T, T]` viewed `[B*H*T, T]`. Not with `log`.
    pub causal: Option<usize>,
    /// Log-softmax instead of softmax.
    pub log: bool,
    /// Lanes per row (a power of two up to 256), or 0 to let [`row_lanes`] choose.
    pub lanes: usize,
}

impl SoftmaxSpec {
    pub fn new(rows: usize, cols: usize) -> Self {
        SoftmaxSpec {
            rows,
            cols,
            causal: None,
            log: false,
            lanes: 0,
        }
    }
}

/// Token cross-entropy over logits `[N, V]` with u32 targets `[N]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CrossEntropySpec {
    pub rows: usize,
    pub classes: usize,
    /// Lanes per row (a power of two up to 256), or 0 to let [`row_lanes`] choose.
    pub lanes: usize,
}

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct Params {
    rows: u32,
    cols: u32,
    causal: u32,
    scale: f32,
}

/// Lanes per row for a row kernel with `passes` passes over C = `cols`: one lane per row on
/// CPU adapters (barriers there cost more than the lost parallelism inside a row) unless
/// the loop budget needs more; on other adapters about one lane per 8 columns, 32 to 256
/// (a heuristic, not tuned on a GPU yet).
pub fn row_lanes(gpu: &Gpu, cols: usize, passes: usize) -> usize {
    let mut lanes = if gpu.is_cpu() {
        1
    } else {
        (cols / 8).next_power_of_two().clamp(32, 256)
    };
    while lanes < 256 && !fits_budget(cols, passes, lanes) {
        lanes *= 2;
    }
    lanes
}

fn fits_budget(cols: usize, passes: usize, lanes: usize) -> bool {
    passes * cols.div_ceil(lanes) + 2 * lanes.trailing_zeros() as usize + 2 <= LOOP_BUDGET
}

/// Override constants WG and RW of a row kernel.
pub(crate) type RowConstants = [(&'static str, f64); 2];

/// Grid and override constants of a row kernel: `lanes` (0 = [`row_lanes`]) lanes per
/// row, workgroups of max(64, lanes) invocations, folded onto y. Shared by the row
/// kernels of softmax.wgsl and layernorm.wgsl.
pub(crate) fn row_launch(
    gpu: &Gpu,
    op: &str,
    rows: usize,
    cols: usize,
    passes: usize,
    lanes: usize,
) -> Result<([u32; 3], RowConstants)> {
    let lanes = if lanes == 0 {
        row_lanes(gpu, cols, passes)
    } else {
        lanes
    };
    if !lanes.is_power_of_two() || lanes > 256 {
        return Err(Error::shape(
            op,
            format!("{lanes} lanes per row; use a power of two up to 256 (or 0: automatic)"),
        ));
    }
    if !fits_budget(cols, passes, lanes) {
        return Err(Error::Limit {
            op: op.to_string(),
            what: format!("loop iterations per invocation ({cols} columns, {lanes} lanes)"),
            requested: (passes * cols.div_ceil(lanes)) as u64,
            limit: LOOP_BUDGET as u64,
            hint: "use more lanes per row (up to 256) or shorter rows".into(),
        });
    }
    let wg = lanes.max(64);
    let groups = rows.div_ceil(wg / lanes);
    // grid_1d sizes a grid of WG_1D-wide groups: ask it for `groups` of them.
    let grid = grid_1d(gpu, op, groups * WG_1D)?;
    Ok((grid, [("WG", wg as f64), ("RW", lanes as f64)]))
}

/// `t` holds R x C elements with C its last axis.
fn expect_rows(op: &str, name: &str, t: &Tensor, rows: usize, cols: usize) -> Result<()> {
    if t.numel() != rows * cols || t.shape.last() != Some(&cols) {
        return Err(Error::shape(
            op,
            format!("{name} has shape {:?}, expected [{rows}, {cols}] or any shape of {rows} rows with last axis {cols}", t.shape),
        ));
    }
    Ok(())
}

fn validate(op: &str, s: &SoftmaxSpec) -> Result<()> {
    if s.rows == 0 || s.cols == 0 {
        return Err(Error::shape(
            op,
            format!("empty [{}, {}] input", s.rows, s.cols),
        ));
    }
    match s.causal {
        Some(t) if t == 0 || !s.rows.is_multiple_of(t) => Err(Error::shape(
            op,
            format!(
                "causal period T = {t} must divide the {} rows (rows are (.., t))",
                s.rows
            ),
        )),
        Some(_) if s.log => Err(Error::shape(
            op,
            "a causal mask with log-softmax is not supported (masked entries would be -inf); mask before, or use softmax",
        )),
        _ => Ok(()),
    }
}

fn row_call(
    gpu: &Gpu,
    entry: &'static str,
    params: Params,
    lanes: usize,
    passes: usize,
    log: bool,
    bindings: &[(&Tensor, Access)],
) -> Result<Dispatch> {
    let (grid, [wg, rw]) = row_launch(
        gpu,
        entry,
        params.rows as usize,
        params.cols as usize,
        passes,
        lanes,
    )?;
    let log = ("LOG", log as u32 as f64);
    dispatch(
        gpu,
        &KernelCall {
            shader: Shader::Softmax,
            entry,
            params: bytemuck::bytes_of(&params),
            bindings,
            workgroups: grid,
            constants: &[wg, rw, log],
        },
    )
}

fn softmax_params(s: &SoftmaxSpec) -> Params {
    Params {
        rows: s.rows as u32,
        cols: s.cols as u32,
        causal: s.causal.unwrap_or(0) as u32,
        scale: 1.0,
    }
}

/// y = softmax(x) (or log-softmax) over the last axis of x viewed `[rows, cols]`.
pub fn softmax_rows(gpu: &Gpu, s: &SoftmaxSpec, x: &Tensor, y: &Tensor) -> Result<Dispatch> {
    let op = "softmax_rows_forward";
    validate(op, s)?;
    expect_rows(op, "x", x, s.rows, s.cols)?;
    expect_rows(op, "y", y, s.rows, s.cols)?;
    let d = gpu.dummy();
    let bindings = [
        (x, Access::Read),
        (d, Access::Read),
        (d, Access::Read),
        (y, Access::ReadWrite),
    ];
    row_call(gpu, op, softmax_params(s), s.lanes, 3, s.log, &bindings)
}

/// dx from the forward's output y and dy: dx = y * (dy - sum(dy * y)) per row
/// (log-softmax: dx = dy - exp(y) * sum(dy)).
pub fn softmax_rows_backward(
    gpu: &Gpu,
    s: &SoftmaxSpec,
    y: &Tensor,
    dy: &Tensor,
    dx: &Tensor,
) -> Result<Dispatch> {
    let op = "softmax_rows_backward";
    validate(op, s)?;
    expect_rows(op, "y", y, s.rows, s.cols)?;
    expect_rows(op, "dy", dy, s.rows, s.cols)?;
    expect_rows(op, "dx", dx, s.rows, s.cols)?;
    let bindings = [
        (y, Access::Read),
        (dy, Access::Read),
        (gpu.dummy(), Access::Read),
        (dx, Access::ReadWrite),
    ];
    row_call(gpu, op, softmax_params(s), s.lanes, 2, s.log, &bindings)
}

fn xent_check(op: &str, s: &CrossEntropySpec, logits: &Tensor, target: &Tensor) -> Result<()> {
    if s.rows == 0 || s.classes == 0 {
        return Err(Error::shape(
            op,
            format!("empty [{}, {}] logits", s.rows, s.classes),
        ));
    }
    expect_rows(op, "logits", logits, s.rows, s.classes)?;
    if target.numel() != s.rows {
        return Err(Error::shape(
            op,
            format!(
                "target has shape {:?}, expected [{}] (one class index per row of logits)",
                target.shape, s.rows
            ),
        ));
    }
    Ok(())
}

fn xent_params(s: &CrossEntropySpec) -> Params {
    Params {
        rows: s.rows as u32,
        cols: s.classes as u32,
        causal: 0,
        scale: 1.0 / s.rows as f32,
    }
}

/// Per-row loss `[N]` = logsumexp(logits`[n]`) - logits[n, target`[n]`] and that log-sum-exp
/// `lse` `[N]` (kept for the backward). A target >= V gives loss 0 and no gradient.
pub fn token_cross_entropy(
    gpu: &Gpu,
    s: &CrossEntropySpec,
    logits: &Tensor,
    target: &Tensor,
    loss: &Tensor,
    lse: &Tensor,
) -> Result<Dispatch> {
    let op = "token_xent_forward";
    xent_check(op, s, logits, target)?;
    for (name, t) in [("loss", loss), ("lse", lse)] {
        if t.numel() != s.rows {
            return Err(Error::shape(
                op,
                format!("{name} has shape {:?}, expected [{}]", t.shape, s.rows),
            ));
        }
    }
    let bindings = [
        (logits, Access::Read),
        (gpu.dummy(), Access::Read),
        (target, Access::Read),
        (loss, Access::ReadWrite),
        (lse, Access::ReadWrite),
    ];
    row_call(gpu, op, xent_params(s), s.lanes, 2, false, &bindings)
}

/// dlogits `[N, V]` = (softmax(logits) - onehot(target)) * g`[0]` / N: the gradient of
/// g * mean_n loss`[n]`, with g `[1]` the incoming gradient (read on the GPU).
pub fn token_cross_entropy_backward(
    gpu: &Gpu,
    s: &CrossEntropySpec,
    logits: &Tensor,
    target: &Tensor,
    lse: &Tensor,
    g: &Tensor,
    dlogits: &Tensor,
) -> Result<Dispatch> {
    let op = "token_xent_backward";
    xent_check(op, s, logits, target)?;
    expect_rows(op, "dlogits", dlogits, s.rows, s.classes)?;
    if lse.numel() != s.rows || g.numel() != 1 {
        return Err(Error::shape(
            op,
            format!(
                "lse has shape {:?} and g {:?}, expected [{}] and [1]",
                lse.shape, g.shape, s.rows
            ),
        ));
    }
    let bindings = [
        (logits, Access::Read),
        (g, Access::Read),
        (target, Access::Read),
        (dlogits, Access::ReadWrite),
        (lse, Access::ReadWrite),
    ];
    row_call(gpu, op, xent_params(s), s.lanes, 1, false, &bindings)
}

// ---- CPU references (f64) ----------------------------------------------------------------

/// Reference of [`softmax_rows`].
pub fn softmax_rows_ref(s: &SoftmaxSpec, x: &[f64]) -> Vec<f64> {
    let mut y = Vec::with_capacity(x.len());
    for (r, row) in x.chunks(s.cols).enumerate() {
        let len = s.causal.map_or(s.cols, |t| s.cols.min(r % t + 1));
        let m = row[..len].iter().cloned().fold(f64::NEG_INFINITY, f64::max);
        let sum: f64 = row[..len].iter().map(|v| (v - m).exp()).sum();
        y.extend(row.iter().enumerate().map(|(j, v)| match (s.log, j < len) {
            (true, _) => v - m - sum.ln(),
            (false, true) => (v - m).exp() / sum,
            (false, false) => 0.0,
        }));
    }
    y
}

/// Reference of [`softmax_rows_backward`].
pub fn softmax_rows_backward_ref(s: &SoftmaxSpec, y: &[f64], dy: &[f64]) -> Vec<f64> {
    let mut dx = Vec::with_capacity(y.len());
    for (yr, gr) in y.chunks(s.cols).zip(dy.chunks(s.cols)) {
        if s.log {
            let d: f64 = gr.iter().sum();
            dx.extend(yr.iter().zip(gr).map(|(y, g)| g - y.exp() * d));
        } else {
            let d: f64 = yr.iter().zip(gr).map(|(y, g)| y * g).sum();
            dx.extend(yr.iter().zip(gr).map(|(y, g)| y * (g - d)));
        }
    }
    dx
}

/// Reference of [`token_cross_entropy`]: (loss `[N]`, lse `[N]`).
pub fn token_cross_entropy_ref(
    classes: usize,
    logits: &[f64],
    target: &[u32],
) -> (Vec<f64>, Vec<f64>) {
    logits
        .chunks(classes)
        .zip(target)
        .map(|(row, &t)| {
            let m = row.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            let lse = m + row.iter().map(|v| (v - m).exp()).sum::<f64>().ln();
            let loss = if (t as usize) < classes {
                lse - row[t as usize]
            } else {
                0.0
            };
            (loss, lse)
        })
        .unzip()
}

/// Reference of [`token_cross_entropy_backward`] with incoming gradient `g`.
pub fn token_cross_entropy_backward_ref(
    classes: usize,
    logits: &[f64],
    target: &[u32],
    g: f64,
) -> Vec<f64> {
    let (_, lse) = token_cross_entropy_ref(classes, logits, target);
    let scale = g / target.len() as f64;
    let mut dz = Vec::with_capacity(logits.len());
    for (r, row) in logits.chunks(classes).enumerate() {
        let t = target[r] as usize;
        dz.extend(row.iter().enumerate().map(|(j, v)| {
            if t >= classes {
                0.0
            } else {
                ((v - lse[r]).exp() - (j == t) as u32 as f64) * scale
            }
        }));
    }
    dz
}

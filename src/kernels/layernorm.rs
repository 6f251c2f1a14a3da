//! Layer normalisation over the last axis: shaders/layernorm.wgsl, its wrappers and
//! references. R = rows, C = columns (normalised axis), RB = [`ROWS_PER_BLOCK`].

use bytemuck::{Pod, Zeroable};

use super::softmax::row_launch;
use super::{dispatch, grid_1d, Dispatch, KernelCall, Shader, LOOP_BUDGET, WG_1D};
use crate::gpu::{Access, Gpu};
use crate::tensor::Tensor;
use crate::{Error, Result};

/// Rows summed by one invocation of the dgamma/dbeta partial sums.
pub const ROWS_PER_BLOCK: usize = 64;

/// Layer norm over the last axis of a tensor viewed `[rows, cols]`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LayerNormSpec {
    pub rows: usize,
    pub cols: usize,
    pub eps: f32,
    /// Lanes per row of the row kernels (a power of two up to 256), or 0: automatic
    /// ([`super::softmax::row_lanes`]).
    pub lanes: usize,
}

impl LayerNormSpec {
    /// eps = 1e-5, PyTorch's default.
    pub fn new(rows: usize, cols: usize) -> Self {
        LayerNormSpec {
            rows,
            cols,
            eps: 1e-5,
            lanes: 0,
        }
    }

    /// Row blocks of the dgamma/dbeta partial sums.
    pub fn blocks(&self) -> usize {
        self.rows.div_ceil(ROWS_PER_BLOCK)
    }

    /// Elements of one half of the partial-sum scratch, padded so that the second half
    /// starts 256-byte aligned.
    fn partial_half(&self) -> usize {
        (self.blocks() * self.cols).next_multiple_of(64)
    }

    /// Elements of the f32 scratch [`layer_norm_backward_params`] needs when
    /// [`Self::blocks`] > 1 (0 otherwise).
    pub fn partial_len(&self) -> usize {
        if self.blocks() > 1 {
            2 * self.partial_half()
        } else {
            0
        }
    }

    fn validate(&self, op: &str) -> Result<()> {
        if self.rows == 0 || self.cols == 0 {
            return Err(Error::shape(
                op,
                format!("empty [{}, {}] input", self.rows, self.cols),
            ));
        }
        if !(self.eps >= 0.0 && self.eps.is_finite()) {
            return Err(Error::shape(
                op,
                format!("eps {} must be finite and >= 0", self.eps),
            ));
        }
        if self.blocks() > LOOP_BUDGET {
            return Err(Error::Limit {
                op: op.into(),
                what: "row blocks summed by one invocation".into(),
                requested: self.blocks() as u64,
                limit: LOOP_BUDGET as u64,
                hint: "use fewer rows".into(),
            });
        }
        Ok(())
    }
}

/// The forward's per-row statistics, mean `[R]` and rstd `[R]` = 1 / sqrt(var + eps).
pub struct LayerNormStats<'a> {
    pub mean: &'a Tensor,
    pub rstd: &'a Tensor,
}

/// Outputs of [`layer_norm_backward_params`]: dgamma `[C]`, dbeta `[C]`, and `partial`, an f32
/// scratch of [`LayerNormSpec::partial_len`] elements (None when that is 0).
pub struct LayerNormParamGrads<'a> {
    pub dgamma: &'a Tensor,
    pub dbeta: &'a Tensor,
    pub partial: Option<&'a Tensor>,
}

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct Params {
    rows: u32,
    cols: u32,
    eps: f32,
    rows_per_block: u32,
    blocks: u32,
    _pad: [u32; 3],
}

fn params(s: &LayerNormSpec) -> Params {
    Params {
        rows: s.rows as u32,
        cols: s.cols as u32,
        eps: s.eps,
        rows_per_block: ROWS_PER_BLOCK as u32,
        blocks: s.blocks() as u32,
        _pad: [0; 3],
    }
}

fn expect_len(op: &str, name: &str, t: &Tensor, n: usize, what: &str) -> Result<()> {
    if t.numel() != n {
        return Err(Error::shape(
            op,
            format!(
                "{name} has shape {:?}, expected {n} elements ({what})",
                t.shape
            ),
        ));
    }
    Ok(())
}

/// `[R, C]` operands: R x C elements with C the last axis.
fn expect_rows(op: &str, name: &str, t: &Tensor, s: &LayerNormSpec) -> Result<()> {
    if t.numel() != s.rows * s.cols || t.shape.last() != Some(&s.cols) {
        return Err(Error::shape(
            op,
            format!(
                "{name} has shape {:?}, expected [{}, {}] (or any shape of that many rows with last axis {})",
                t.shape, s.rows, s.cols, s.cols
            ),
        ));
    }
    Ok(())
}

fn expect_stats(op: &str, s: &LayerNormSpec, st: &LayerNormStats<'_>) -> Result<()> {
    expect_len(op, "mean", st.mean, s.rows, "one per row")?;
    expect_len(op, "rstd", st.rstd, s.rows, "one per row")
}

fn row_call(
    gpu: &Gpu,
    entry: &'static str,
    s: &LayerNormSpec,
    passes: usize,
    bindings: &[(&Tensor, Access)],
) -> Result<Dispatch> {
    let (grid, constants) = row_launch(gpu, entry, s.rows, s.cols, passes, s.lanes)?;
    dispatch(
        gpu,
        &KernelCall {
            shader: Shader::LayerNorm,
            entry,
            params: bytemuck::bytes_of(&params(s)),
            bindings,
            workgroups: grid,
            constants: &constants,
        },
    )
}

/// y `[R, C]` = layer_norm(x) * gamma + beta, and the per-row mean and rstd.
pub fn layer_norm(
    gpu: &Gpu,
    s: &LayerNormSpec,
    x: &Tensor,
    gamma: &Tensor,
    beta: &Tensor,
    y: &Tensor,
    stats: &LayerNormStats<'_>,
) -> Result<Dispatch> {
    let op = "layer_norm_forward";
    s.validate(op)?;
    expect_rows(op, "x", x, s)?;
    expect_rows(op, "y", y, s)?;
    expect_len(op, "gamma", gamma, s.cols, "one per column")?;
    expect_len(op, "beta", beta, s.cols, "one per column")?;
    expect_stats(op, s, stats)?;
    let bindings = [
        (x, Access::Read),
        (gamma, Access::Read),
        (beta, Access::Read),
        (y, Access::ReadWrite),
        (stats.mean, Access::ReadWrite),
        (stats.rstd, Access::ReadWrite),
    ];
    row_call(gpu, op, s, 3, &bindings)
}

/// dx `[R, C]` from dy and the forward's x, gamma, mean and rstd.
pub fn layer_norm_backward_input(
    gpu: &Gpu,
    s: &LayerNormSpec,
    x: &Tensor,
    gamma: &Tensor,
    stats: &LayerNormStats<'_>,
    dy: &Tensor,
    dx: &Tensor,
) -> Result<Dispatch> {
    let op = "layer_norm_backward_input";
    s.validate(op)?;
    expect_rows(op, "x", x, s)?;
    expect_rows(op, "dy", dy, s)?;
    expect_rows(op, "dx", dx, s)?;
    expect_len(op, "gamma", gamma, s.cols, "one per column")?;
    expect_stats(op, s, stats)?;
    let bindings = [
        (x, Access::Read),
        (gamma, Access::Read),
        (dy, Access::Read),
        (dx, Access::ReadWrite),
        (stats.mean, Access::ReadWrite),
        (stats.rstd, Access::ReadWrite),
    ];
    row_call(gpu, op, s, 2, &bindings)
}

/// dgamma `[C]` = sum_r dy * xhat and dbeta `[C]` = sum_r dy, without atomics: partial sums
/// over blocks of [`ROWS_PER_BLOCK`] rows, then (when there are several blocks) a sum of
/// the blocks in order. One or two dispatches.
pub fn layer_norm_backward_params(
    gpu: &Gpu,
    s: &LayerNormSpec,
    x: &Tensor,
    stats: &LayerNormStats<'_>,
    dy: &Tensor,
    grads: &LayerNormParamGrads<'_>,
) -> Result<Vec<Dispatch>> {
    let op = "layer_norm_backward_params";
    s.validate(op)?;
    expect_rows(op, "x", x, s)?;
    expect_rows(op, "dy", dy, s)?;
    expect_stats(op, s, stats)?;
    expect_len(op, "dgamma", grads.dgamma, s.cols, "one per column")?;
    expect_len(op, "dbeta", grads.dbeta, s.cols, "one per column")?;
    let (pg, pb) = if s.blocks() == 1 {
        (grads.dgamma.clone(), grads.dbeta.clone())
    } else {
        let Some(partial) = grads.partial else {
            return Err(Error::shape(
                op,
                format!(
                    "{} rows make {} blocks: pass a partial scratch of {} elements (LayerNormSpec::partial_len)",
                    s.rows,
                    s.blocks(),
                    s.partial_len()
                ),
            ));
        };
        expect_len(op, "partial", partial, s.partial_len(), "partial_len()")?;
        let half = s.partial_half();
        let shape = [s.blocks(), s.cols];
        (partial.view(0, &shape), partial.view(half, &shape))
    };
    let wg = [("WG", WG_1D as f64)];
    let mut out = vec![dispatch(
        gpu,
        &KernelCall {
            shader: Shader::LayerNorm,
            entry: op,
            params: bytemuck::bytes_of(&params(s)),
            bindings: &[
                (x, Access::Read),
                (gpu.dummy(), Access::Read),
                (dy, Access::Read),
                (&pg, Access::ReadWrite),
                (stats.mean, Access::ReadWrite),
                (stats.rstd, Access::ReadWrite),
                (&pb, Access::ReadWrite),
            ],
            workgroups: grid_1d(gpu, op, s.blocks() * s.cols)?,
            constants: &wg,
        },
    )?];
    if s.blocks() > 1 {
        let entry = "layer_norm_sum_blocks";
        out.push(dispatch(
            gpu,
            &KernelCall {
                shader: Shader::LayerNorm,
                entry,
                params: bytemuck::bytes_of(&params(s)),
                bindings: &[
                    (&pg, Access::Read),
                    (gpu.dummy(), Access::Read),
                    (&pb, Access::Read),
                    (grads.dgamma, Access::ReadWrite),
                    (grads.dbeta, Access::ReadWrite),
                ],
                workgroups: grid_1d(gpu, entry, s.cols)?,
                constants: &wg,
            },
        )?);
    }
    Ok(out)
}

// ---- CPU references (f64) ----------------------------------------------------------------

/// Reference forward: (y `[R, C]`, mean `[R]`, rstd `[R]`).
pub fn layer_norm_ref(
    s: &LayerNormSpec,
    x: &[f64],
    gamma: &[f64],
    beta: &[f64],
) -> (Vec<f64>, Vec<f64>, Vec<f64>) {
    let n = s.cols as f64;
    let (mut y, mut mean, mut rstd) = (Vec::new(), Vec::new(), Vec::new());
    for row in x.chunks(s.cols) {
        let mu = row.iter().sum::<f64>() / n;
        let var = row.iter().map(|v| (v - mu).powi(2)).sum::<f64>() / n;
        let r = 1.0 / (var + s.eps as f64).sqrt();
        y.extend(
            row.iter()
                .enumerate()
                .map(|(j, v)| (v - mu) * r * gamma[j] + beta[j]),
        );
        mean.push(mu);
        rstd.push(r);
    }
    (y, mean, rstd)
}

/// Reference backward: (dx `[R, C]`, dgamma `[C]`, dbeta `[C]`).
pub fn layer_norm_backward_ref(
    s: &LayerNormSpec,
    x: &[f64],
    gamma: &[f64],
    dy: &[f64],
) -> (Vec<f64>, Vec<f64>, Vec<f64>) {
    let (_, mean, rstd) = layer_norm_ref(s, x, gamma, &vec![0.0; s.cols]);
    let n = s.cols as f64;
    let mut dx = Vec::with_capacity(x.len());
    let (mut dgamma, mut dbeta) = (vec![0.0; s.cols], vec![0.0; s.cols]);
    for (r, (row, g)) in x.chunks(s.cols).zip(dy.chunks(s.cols)).enumerate() {
        let xhat: Vec<f64> = row.iter().map(|v| (v - mean[r]) * rstd[r]).collect();
        let gg: Vec<f64> = g.iter().zip(gamma).map(|(d, w)| d * w).collect();
        let mg = gg.iter().sum::<f64>() / n;
        let mgx = gg.iter().zip(&xhat).map(|(a, b)| a * b).sum::<f64>() / n;
        for j in 0..s.cols {
            dx.push(rstd[r] * (gg[j] - mg - xhat[j] * mgx));
            dgamma[j] += g[j] * xhat[j];
            dbeta[j] += g[j];
        }
    }
    (dx, dgamma, dbeta)
}

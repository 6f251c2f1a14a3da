//! Reductions that stay on the GPU: shaders/reduce.wgsl, its wrappers and references.

use bytemuck::{Pod, Zeroable};

use super::{dispatch, expect_shape, grid_1d, Dispatch, KernelCall, Shader, LOOP_BUDGET};
use crate::gpu::{Access, Gpu};
use crate::tensor::Tensor;
use crate::{Error, Result};

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct Params {
    r: u32,
    j: u32,
    i: u32,
    mode: u32,
    j0: u32,
    count: u32,
    _pad: [u32; 2],
}

/// Running totals kept on the GPU by [`accumulate_metrics`]: `[loss sum, correct, count,
/// non-finite flag]`.
pub const METRICS_LEN: usize = 4;

/// How [`accumulate_metrics`] decides a prediction is right.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Accuracy {
    /// argmax of the probabilities (C > 1) or p > 0.5 (C = 1) equals the label.
    Classification,
    /// No accuracy (regression).
    None,
}

/// out`[j]` = sum over r < R, i < I of x[(r * J + j) * I + i], x viewed as `[R, J, I]`.
pub fn sum_outer_inner(
    gpu: &Gpu,
    x: &Tensor,
    dims: (usize, usize, usize),
    out: &Tensor,
) -> Result<Dispatch> {
    sum_outer_inner_range(gpu, x, dims, 0, out)
}

/// Like [`sum_outer_inner`] for columns j0 .. j0 + out.numel() of the middle axis only.
pub fn sum_outer_inner_range(
    gpu: &Gpu,
    x: &Tensor,
    (r, j, i): (usize, usize, usize),
    j0: usize,
    out: &Tensor,
) -> Result<Dispatch> {
    let op = "sum_outer_inner";
    if x.numel() != r * j * i || r * j * i == 0 {
        return Err(Error::shape(
            op,
            format!("input {:?} is not [{r}, {j}, {i}]", x.shape),
        ));
    }
    let count = out.numel();
    if j0 + count > j || count == 0 {
        return Err(Error::shape(
            op,
            format!("columns {j0}..{} of {j}", j0 + count),
        ));
    }
    if r * (i + 1) > LOOP_BUDGET {
        return Err(Error::Limit {
            op: op.into(),
            what: "elements summed per output (loop iterations per invocation)".into(),
            requested: (r * (i + 1)) as u64,
            limit: LOOP_BUDGET as u64,
            hint: "sum partial chunks first".into(),
        });
    }
    let params = Params {
        r: r as u32,
        j: j as u32,
        i: i as u32,
        mode: 0,
        j0: j0 as u32,
        count: count as u32,
        _pad: [0; 2],
    };
    dispatch(
        gpu,
        &KernelCall {
            shader: Shader::Reduce,
            entry: op,
            params: bytemuck::bytes_of(&params),
            bindings: &[
                (x, Access::Read),
                (x, Access::Read),
                (x, Access::Read),
                (out, Access::ReadWrite),
            ],
            workgroups: grid_1d(gpu, op, count)?,
            constants: &[],
        },
    )
}

/// metrics += (sum of loss `[B]`, correct predictions of prob `[B,C]` against label `[B]`, B).
pub fn accumulate_metrics(
    gpu: &Gpu,
    loss: &Tensor,
    prob: &Tensor,
    label: &Tensor,
    accuracy: Accuracy,
    metrics: &Tensor,
) -> Result<Vec<Dispatch>> {
    let op = "accumulate_metrics";
    let (batch, classes) = metrics_shapes(loss, prob, label, accuracy, metrics)?;
    let params = Params {
        r: batch as u32,
        j: classes as u32,
        i: 1,
        mode: if accuracy == Accuracy::None { 2 } else { 0 },
        j0: 0,
        count: 1,
        _pad: [0; 2],
    };
    let call = |entry: &'static str, params: &Params, bindings: &[(&Tensor, Access)], wg| {
        dispatch(
            gpu,
            &KernelCall {
                shader: Shader::Reduce,
                entry,
                params: bytemuck::bytes_of(params),
                bindings,
                workgroups: wg,
                constants: &[],
            },
        )
    };
    if batch * (classes + 1) <= LOOP_BUDGET {
        let b = [
            (loss, Access::Read),
            (prob, Access::Read),
            (label, Access::Read),
            (metrics, Access::ReadWrite),
        ];
        return Ok(vec![call(op, &params, &b, [1, 1, 1])?]);
    }
    // Chunks of rows, each within the budget, then their totals in order.
    let rows = LOOP_BUDGET / (classes + 1);
    let chunks = batch.div_ceil(rows);
    let part = Tensor::zeros(gpu, "metrics partials", &[4 * chunks])?;
    let p = Params {
        i: rows as u32,
        count: chunks as u32,
        ..params
    };
    let b = [
        (loss, Access::Read),
        (prob, Access::Read),
        (label, Access::Read),
        (&part, Access::ReadWrite),
    ];
    let first = call(
        "metrics_partial",
        &p,
        &b,
        grid_1d(gpu, "metrics_partial", chunks)?,
    )?;
    let b = [
        (&part, Access::Read),
        (prob, Access::Read),
        (label, Access::Read),
        (metrics, Access::ReadWrite),
    ];
    Ok(vec![first, call("metrics_combine", &p, &b, [1, 1, 1])?])
}

/// accumulate_metrics' (batch, classes): prob `[B, C]`, loss `[B]`, metrics `[METRICS_LEN]`, label
/// `[B]` for classification; one row's loop (C + 1 iterations) within LOOP_BUDGET.
fn metrics_shapes(
    loss: &Tensor,
    prob: &Tensor,
    label: &Tensor,
    accuracy: Accuracy,
    metrics: &Tensor,
) -> Result<(usize, usize)> {
    let op = "accumulate_metrics";
    let [batch, classes] = match prob.shape[..] {
        [b, c] => [b, c],
        _ => {
            return Err(Error::shape(
                op,
                format!("prob has shape {:?}, expected [B, C]", prob.shape),
            ))
        }
    };
    expect_shape(op, "loss", loss, &[batch])?;
    expect_shape(op, "metrics", metrics, &[METRICS_LEN])?;
    if accuracy == Accuracy::Classification {
        expect_shape(op, "label", label, &[batch])?;
    }
    if classes + 1 > LOOP_BUDGET {
        return Err(Error::Limit {
            op: op.into(),
            what: "classes (loop iterations per row of the metrics)".into(),
            requested: (classes + 1) as u64,
            limit: LOOP_BUDGET as u64,
            hint: "use fewer classes".into(),
        });
    }
    Ok((batch, classes))
}

pub fn sum_outer_inner_ref(x: &[f64], (r, j, i): (usize, usize, usize)) -> Vec<f64> {
    let mut out = vec![0.0; j];
    for rr in 0..r {
        for (jj, o) in out.iter_mut().enumerate() {
            *o += x[(rr * j + jj) * i..(rr * j + jj + 1) * i]
                .iter()
                .sum::<f64>();
        }
    }
    out
}

/// (loss sum, correct count) of one batch.
pub fn accumulate_metrics_ref(
    loss: &[f64],
    prob: &[f64],
    label: &[u32],
    classes: usize,
) -> (f64, usize) {
    let mut correct = 0;
    for (b, row) in prob.chunks(classes).enumerate() {
        let pred = if classes == 1 {
            (row[0] > 0.5) as usize
        } else {
            let mut best = 0;
            for c in 1..classes {
                if row[c] > row[best] {
                    best = c;
                }
            }
            best
        };
        correct += (pred == label[b] as usize) as usize;
    }
    (loss.iter().sum(), correct)
}

//! Embedding lookup and its scatter-add gradient: shaders/embedding.wgsl, its wrappers and
//! references. N = indices, V = vocabulary (table rows), D = embedding width.
//!
//! Out-of-range indices (>= V) read a zero row and add to no row of dtable.

use bytemuck::{Pod, Zeroable};

use super::{dispatch, grid_1d, Dispatch, KernelCall, Shader, LOOP_BUDGET};
use crate::gpu::{Access, Gpu};
use crate::tensor::Tensor;
use crate::{Error, Result};

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct Params {
    n: u32,
    vocab: u32,
    dim: u32,
    _pad: u32,
}

/// u32 elements of the scratch [`embedding_backward`] sorts the indices into.
pub fn embedding_scratch_len(vocab: usize, n: usize) -> usize {
    2 * vocab + n
}

/// (V, D) of the table and N of the indices, checked: y or dy holds N x D with D last.
fn shapes(op: &str, table: &Tensor, idx: &Tensor, rows: &Tensor) -> Result<(usize, usize, usize)> {
    let (v, d) = match table.shape[..] {
        [v, d] if v > 0 && d > 0 => (v, d),
        _ => {
            return Err(Error::shape(
                op,
                format!("table has shape {:?}, expected [V, D]", table.shape),
            ))
        }
    };
    let n = idx.numel();
    if n == 0 || rows.numel() != n * d || rows.shape.last() != Some(&d) {
        return Err(Error::shape(
            op,
            format!(
                "idx has shape {:?} and the rows {:?}; expected idx's shape + [{d}] (D of the [{v}, {d}] table)",
                idx.shape, rows.shape
            ),
        ));
    }
    if (v as u64) * (d as u64) > u32::MAX as u64 || (n as u64) * (d as u64) > u32::MAX as u64 {
        return Err(Error::shape(op, "more than 2^32 elements"));
    }
    Ok((v, d, n))
}

fn params(v: usize, d: usize, n: usize) -> Params {
    Params {
        n: n as u32,
        vocab: v as u32,
        dim: d as u32,
        _pad: 0,
    }
}

/// y `[.., D]` = table `[V, D]` rows at idx `[..]` (u32); an index >= V gives a zero row.
pub fn embedding(gpu: &Gpu, table: &Tensor, idx: &Tensor, y: &Tensor) -> Result<Dispatch> {
    let op = "embedding_forward";
    let (v, d, n) = shapes(op, table, idx, y)?;
    dispatch(
        gpu,
        &KernelCall {
            shader: Shader::Embedding,
            entry: op,
            params: bytemuck::bytes_of(&params(v, d, n)),
            bindings: &[
                (table, Access::Read),
                (idx, Access::Read),
                (y, Access::ReadWrite),
            ],
            workgroups: grid_1d(gpu, op, n * d)?,
            constants: &[],
        },
    )
}

/// dtable `[V, D]` = sum over n with idx`[n]` == v of dy`[n]` (overwritten, not accumulated),
/// in increasing n, without atomics: a counting sort of idx into `scratch` (u32,
/// [`embedding_scratch_len`] elements), then one invocation per (v, d). Two dispatches.
pub fn embedding_backward(
    gpu: &Gpu,
    idx: &Tensor,
    dy: &Tensor,
    scratch: &Tensor,
    dtable: &Tensor,
) -> Result<Vec<Dispatch>> {
    let op = "embedding_backward";
    let (v, d, n) = shapes(op, dtable, idx, dy)?;
    if scratch.numel() != embedding_scratch_len(v, n) {
        return Err(Error::shape(
            op,
            format!(
                "scratch has shape {:?}, expected [{}] (embedding_scratch_len({v}, {n}))",
                scratch.shape,
                embedding_scratch_len(v, n)
            ),
        ));
    }
    if 2 * n > LOOP_BUDGET {
        return Err(Error::Limit {
            op: op.into(),
            what: "indices scanned by one invocation of the sort (2 passes)".into(),
            requested: 2 * n as u64,
            limit: LOOP_BUDGET as u64,
            hint: "split the indices into several embedding ops (a smaller batch or context)"
                .into(),
        });
    }
    let p = params(v, d, n);
    let bindings = [
        (dy, Access::Read),
        (idx, Access::Read),
        (dtable, Access::ReadWrite),
        (scratch, Access::ReadWrite),
    ];
    let call = |entry: &'static str, invocations: usize| -> Result<Dispatch> {
        dispatch(
            gpu,
            &KernelCall {
                shader: Shader::Embedding,
                entry,
                params: bytemuck::bytes_of(&p),
                bindings: &bindings,
                workgroups: grid_1d(gpu, entry, invocations)?,
                constants: &[],
            },
        )
    };
    Ok(vec![call("embedding_sort", v)?, call(op, v * d)?])
}

// ---- CPU references (f64) ----------------------------------------------------------------

/// Reference of [`embedding`].
pub fn embedding_ref(table: &[f64], dim: usize, idx: &[u32]) -> Vec<f64> {
    let vocab = table.len() / dim;
    idx.iter()
        .flat_map(|&v| {
            let v = v as usize;
            (0..dim).map(move |d| if v < vocab { table[v * dim + d] } else { 0.0 })
        })
        .collect()
}

/// Reference of [`embedding_backward`]: dtable `[V, D]`.
pub fn embedding_backward_ref(vocab: usize, dim: usize, idx: &[u32], dy: &[f64]) -> Vec<f64> {
    let mut dtable = vec![0.0; vocab * dim];
    for (n, &v) in idx.iter().enumerate() {
        if (v as usize) < vocab {
            for d in 0..dim {
                dtable[v as usize * dim + d] += dy[n * dim + d];
            }
        }
    }
    dtable
}

//! Batch gather from the GPU-resident dataset: shaders/gather.wgsl, its wrappers and
//! references. B = batch, P = pixels per image, WPI = ceil(P / 4) packed words per image;
//! for f32 row datasets D = features and T = targets per row.

use bytemuck::{Pod, Zeroable};

use super::{dispatch, expect_shape, grid_1d, Dispatch, KernelCall, Shader};
use crate::gpu::{Access, Gpu};
use crate::tensor::Tensor;
use crate::{Error, Result};

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
pub struct Params {
    pub batch: u32,
    pub pixels: u32,
    pub words_per_image: u32,
    /// Position of the batch's first index in `order`; rewritten before each step.
    pub start: u32,
    /// Target values per row (f32 row datasets); 0 for images.
    pub targets: u32,
    pub _pad: [u32; 3],
}

/// Byte offset of `start` in the uniform, for the executor's per-step write.
pub const START_OFFSET: u64 = 12;

/// x `[B, P]` = pixels of images order`[start..start+B]` / 255; label `[B]` their labels.
/// `pixels` holds N images of WPI words, `labels` N bytes packed four per word.
pub fn gather_batch(
    gpu: &Gpu,
    pixels: &Tensor,
    labels: &Tensor,
    order: &Tensor,
    start: usize,
    x: &Tensor,
    label: &Tensor,
) -> Result<Dispatch> {
    let op = "gather_batch";
    let [batch, p] = match x.shape[..] {
        [b, p] if b > 0 && p > 0 => [b, p],
        _ => {
            return Err(Error::shape(
                op,
                format!("x has shape {:?}, expected [B, P]", x.shape),
            ))
        }
    };
    expect_shape(op, "label", label, &[batch])?;
    let params = Params {
        batch: batch as u32,
        pixels: p as u32,
        words_per_image: p.div_ceil(4) as u32,
        start: start as u32,
        targets: 0,
        _pad: [0; 3],
    };
    gather_call(
        gpu,
        op,
        &params,
        [pixels, labels, order],
        [x, label],
        order,
        batch * p,
    )
}

/// Check that the batch lies inside `order`, then build the dispatch of `entry` over
/// `invocations`: bindings 1-3 read (data, labels or targets, order), 4-5 written.
fn gather_call(
    gpu: &Gpu,
    entry: &'static str,
    params: &Params,
    ins: [&Tensor; 3],
    outs: [&Tensor; 2],
    order: &Tensor,
    invocations: usize,
) -> Result<Dispatch> {
    let (start, batch) = (params.start as usize, params.batch as usize);
    if batch == 0 || start + batch > order.numel() {
        return Err(Error::shape(
            entry,
            format!(
                "batch {start}..{} past the {} indices",
                start + batch,
                order.numel()
            ),
        ));
    }
    dispatch(
        gpu,
        &KernelCall {
            shader: Shader::Gather,
            entry,
            params: bytemuck::bytes_of(params),
            bindings: &[
                (ins[0], Access::Read),
                (ins[1], Access::Read),
                (ins[2], Access::Read),
                (outs[0], Access::ReadWrite),
                (outs[1], Access::ReadWrite),
            ],
            workgroups: grid_1d(gpu, entry, invocations)?,
            constants: &[],
        },
    )
}

/// x `[B, D]` = features of rows order`[start..start+B]`; target `[B, T]` their targets.
/// `features` is `[N, D]` f32 and `targets` `[N, T]` f32; both are copied bit for bit.
pub fn gather_rows_f32(
    gpu: &Gpu,
    features: &Tensor,
    targets: &Tensor,
    order: &Tensor,
    start: usize,
    x: &Tensor,
    target: &Tensor,
) -> Result<Dispatch> {
    let op = "gather_rows_f32";
    let [n, d] = match features.shape[..] {
        [n, d] if n > 0 && d > 0 => [n, d],
        _ => {
            return Err(Error::shape(
                op,
                format!("features have shape {:?}, expected [N, D]", features.shape),
            ))
        }
    };
    let t = match targets.shape[..] {
        [tn, t] if tn == n && t > 0 => t,
        _ => {
            return Err(Error::shape(
                op,
                format!(
                    "targets have shape {:?}, expected [{n}, T] (one row per feature row)",
                    targets.shape
                ),
            ))
        }
    };
    let batch = x.shape.first().copied().unwrap_or(0);
    expect_shape(op, "x", x, &[batch, d])?;
    expect_shape(op, "target", target, &[batch, t])?;
    let params = Params {
        batch: batch as u32,
        pixels: d as u32,
        words_per_image: d as u32,
        start: start as u32,
        targets: t as u32,
        _pad: [0; 3],
    };
    let inputs = [features, targets, order];
    gather_call(
        gpu,
        op,
        &params,
        inputs,
        [x, target],
        order,
        batch * d.max(t),
    )
}

/// Reference: (x `[B, P]`, label `[B]`) from unpacked u8 images `[N, P]` and labels `[N]`.
pub fn gather_batch_ref(
    images: &[u8],
    labels: &[u8],
    p: usize,
    order: &[u32],
) -> (Vec<f64>, Vec<u32>) {
    let mut x = Vec::with_capacity(order.len() * p);
    for &s in order {
        x.extend(
            images[s as usize * p..(s as usize + 1) * p]
                .iter()
                .map(|&v| v as f64 / 255.0),
        );
    }
    (
        x,
        order.iter().map(|&s| labels[s as usize] as u32).collect(),
    )
}

/// Reference: (x `[B, D]`, target `[B, T]`) from features `[N, D]` and targets `[N, T]`.
pub fn gather_rows_f32_ref(
    features: &[f32],
    targets: &[f32],
    d: usize,
    t: usize,
    order: &[u32],
) -> (Vec<f64>, Vec<f64>) {
    let rows = |data: &[f32], w: usize| -> Vec<f64> {
        order
            .iter()
            .flat_map(|&s| &data[s as usize * w..(s as usize + 1) * w])
            .map(|&v| v as f64)
            .collect()
    };
    (rows(features, d), rows(targets, t))
}

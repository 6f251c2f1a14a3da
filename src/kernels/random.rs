//! Counter-based random numbers (Philox-4x32-10): shaders/random.wgsl, its wrappers and
//! bit-exact CPU references. Element i takes word i % 4 of
//! philox4x32_10((i / 4, 0, counter_lo, counter_hi), (seed_lo, seed_hi)).

use bytemuck::{Pod, Zeroable};

use super::{dispatch, grid_1d, Dispatch, KernelCall, Shader};
use crate::gpu::{Access, Gpu};
use crate::tensor::Tensor;
use crate::{Error, Result};

/// Which stream (seed) and which draw of it (counter, e.g. the step number).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RandomSpec {
    pub seed: u64,
    pub counter: u64,
}

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct Params {
    n: u32,
    threshold: u32,
    scale: f32,
    _pad: u32,
    seed: [u32; 2],
    counter: [u32; 2],
}

/// Byte offset of the seed (u64, little-endian: lo then hi word) in the uniform.
pub const SEED_OFFSET: u64 = 16;
/// Byte offset of the counter (u64, little-endian) in the uniform, for the executor's
/// per-step write (see [`write_counter`]).
pub const COUNTER_OFFSET: u64 = 24;

fn split(v: u64) -> [u32; 2] {
    [v as u32, (v >> 32) as u32]
}

/// (threshold, scale) of a dropout with drop probability p.
fn dropout_constants(p: f32) -> (u32, f32) {
    (
        (p as f64 * (1u64 << 24) as f64).round() as u32,
        1.0 / (1.0 - p),
    )
}

fn call(
    gpu: &Gpu,
    entry: &'static str,
    spec: &RandomSpec,
    (threshold, scale): (u32, f32),
    out: &Tensor,
) -> Result<Dispatch> {
    let n = out.numel();
    if n == 0 || n > u32::MAX as usize - 4 {
        return Err(Error::shape(
            entry,
            format!("output of shape {:?}: 1 to 2^32 - 5 elements", out.shape),
        ));
    }
    let params = Params {
        n: n as u32,
        threshold,
        scale,
        _pad: 0,
        seed: split(spec.seed),
        counter: split(spec.counter),
    };
    dispatch(
        gpu,
        &KernelCall {
            shader: Shader::Random,
            entry,
            params: bytemuck::bytes_of(&params),
            bindings: &[(out, Access::ReadWrite)],
            workgroups: grid_1d(gpu, entry, n.div_ceil(4))?,
            constants: &[],
        },
    )
}

/// y (any shape) = uniform floats in [0, 1) with 24 random bits each.
pub fn random_uniform(gpu: &Gpu, spec: &RandomSpec, y: &Tensor) -> Result<Dispatch> {
    call(gpu, "random_uniform", spec, (0, 1.0), y)
}

/// mask (any shape) = 0 with probability p, else 1 / (1 - p); x * mask is inverted
/// dropout, and the backward is dy * mask.
pub fn dropout_mask(gpu: &Gpu, spec: &RandomSpec, p: f32, mask: &Tensor) -> Result<Dispatch> {
    if !(0.0..1.0).contains(&p) {
        return Err(Error::usage(
            "dropout p",
            format!("{p} must lie in [0, 1) (the probability of dropping an element)"),
        ));
    }
    call(gpu, "dropout_mask", spec, dropout_constants(p), mask)
}

/// Rewrite the counter of a [`random_uniform`] or [`dropout_mask`] dispatch (takes effect
/// at the next submit).
pub fn write_counter(gpu: &Gpu, d: &Dispatch, counter: u64) {
    gpu.queue
        .write_buffer(&d.params, COUNTER_OFFSET, &counter.to_le_bytes());
}

// ---- CPU references (bit-exact) ----------------------------------------------------------

/// One Philox-4x32-10 block.
pub fn philox4x32_10(ctr: [u32; 4], key: [u32; 2]) -> [u32; 4] {
    let mulhilo = |a: u32, b: u32| {
        let p = a as u64 * b as u64;
        ((p >> 32) as u32, p as u32)
    };
    let (mut c, mut k) = (ctr, key);
    for _ in 0..10 {
        let (hi0, lo0) = mulhilo(0xD251_1F53, c[0]);
        let (hi1, lo1) = mulhilo(0xCD9E_8D57, c[2]);
        c = [hi1 ^ c[1] ^ k[0], lo1, hi0 ^ c[3] ^ k[1], lo0];
        k = [
            k[0].wrapping_add(0x9E37_79B9),
            k[1].wrapping_add(0xBB67_AE85),
        ];
    }
    c
}

fn words(spec: &RandomSpec, n: usize) -> impl Iterator<Item = u32> + '_ {
    let [clo, chi] = split(spec.counter);
    (0..n.div_ceil(4))
        .flat_map(move |b| philox4x32_10([b as u32, 0, clo, chi], split(spec.seed)))
        .take(n)
}

/// Reference of [`random_uniform`], bit for bit.
pub fn random_uniform_ref(spec: &RandomSpec, n: usize) -> Vec<f32> {
    words(spec, n)
        .map(|w| (w >> 8) as f32 * (1.0 / 16_777_216.0))
        .collect()
}

/// Reference of [`dropout_mask`], bit for bit.
pub fn dropout_mask_ref(spec: &RandomSpec, p: f32, n: usize) -> Vec<f32> {
    let (threshold, scale) = dropout_constants(p);
    words(spec, n)
        .map(|w| if (w >> 8) >= threshold { scale } else { 0.0 })
        .collect()
}

//! Drawing a language model's next token on the GPU: shaders/sample.wgsl, its wrapper and
//! reference. T = context, V = vocabulary, N = tokens to draw.

use bytemuck::{Pod, Zeroable};

use super::random::{random_uniform_ref, RandomSpec};
use super::{dispatch, Dispatch, KernelCall, Shader, LOOP_BUDGET};
use crate::gpu::{Access, Gpu};
use crate::tensor::Tensor;
use crate::{Error, Result};

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct Params {
    vocab: u32,
    context: u32,
    temperature: f32,
    _pad: u32,
}

/// The buffers a draw reads and writes.
pub struct SampleTensors<'a> {
    /// `[T, V]` f32: the model's logits for the context.
    pub logits: &'a Tensor,
    /// `[N]` f32 in [0, 1): one per token to draw ([`sample_uniforms`]).
    pub uniforms: &'a Tensor,
    /// `[T]` u32: the model's input, appended to (or slid) after each draw.
    pub context: &'a Tensor,
    /// `[2]` u32: (tokens of the context in use, tokens drawn so far).
    pub state: &'a Tensor,
    /// `[N]` u32: the drawn tokens.
    pub out: &'a Tensor,
}

/// The uniforms of a generation with `seed`: Philox-4x32-10 stream `seed`, counter 0.
pub fn sample_uniforms(seed: u64, n: usize) -> Vec<f32> {
    random_uniform_ref(&RandomSpec { seed, counter: 0 }, n)
}

/// One draw (see sample.wgsl): the next token from the last used row of `logits`, at
/// `temperature` (0 = argmax), appended to the context. Replay it once per token.
pub fn sample_next(gpu: &Gpu, temperature: f32, t: &SampleTensors<'_>) -> Result<Dispatch> {
    let op = "sample_next";
    let (ctx, vocab) = match t.logits.shape[..] {
        [ctx, v] if ctx > 0 && v > 0 => (ctx, v),
        _ => {
            return Err(Error::shape(
                op,
                format!("logits {:?}, expected [T, V]", t.logits.shape),
            ))
        }
    };
    let n = t.out.numel();
    if t.context.numel() != ctx || t.state.numel() != 2 || t.uniforms.numel() != n || n == 0 {
        return Err(Error::shape(
            op,
            format!(
                "context {:?}, state {:?}, uniforms {:?}, out {:?} for logits [{ctx}, {vocab}]; expected [T], [2], [N], [N]",
                t.context.shape, t.state.shape, t.uniforms.shape, t.out.shape
            ),
        ));
    }
    if 3 * vocab + ctx > LOOP_BUDGET || !(temperature >= 0.0 && temperature.is_finite()) {
        return Err(Error::usage(
            op,
            format!("vocabulary {vocab}, context {ctx}, temperature {temperature}: expected 3 V + T <= {LOOP_BUDGET} and a finite temperature >= 0"),
        ));
    }
    let params = Params {
        vocab: vocab as u32,
        context: ctx as u32,
        temperature,
        _pad: 0,
    };
    dispatch(
        gpu,
        &KernelCall {
            shader: Shader::Sample,
            entry: op,
            params: bytemuck::bytes_of(&params),
            bindings: &[
                (t.logits, Access::Read),
                (t.uniforms, Access::Read),
                (t.context, Access::ReadWrite),
                (t.state, Access::ReadWrite),
                (t.out, Access::ReadWrite),
            ],
            workgroups: [1, 1, 1],
            constants: &[],
        },
    )
}

// ---- CPU reference (f64) -----------------------------------------------------------------

/// The categorical distribution a draw at `temperature` samples from one row of logits
/// (temperature 0: all mass on the first maximum).
pub fn sample_probs_ref(row: &[f64], temperature: f64) -> Vec<f64> {
    let (best, m) = row
        .iter()
        .enumerate()
        .fold((0, f64::NEG_INFINITY), |(bi, bm), (i, &z)| {
            if z > bm {
                (i, z)
            } else {
                (bi, bm)
            }
        });
    if temperature <= 0.0 {
        return (0..row.len()).map(|j| f64::from(j == best)).collect();
    }
    let e: Vec<f64> = row.iter().map(|z| ((z - m) / temperature).exp()).collect();
    let s: f64 = e.iter().sum();
    e.iter().map(|v| v / s).collect()
}

/// Reference of a whole generation: the tokens drawn and the final context, given a
/// function from the context in use to the last position's logits.
pub fn sample_run_ref(
    context: &[u32],
    len: usize,
    uniforms: &[f32],
    temperature: f64,
    mut last_logits: impl FnMut(&[u32]) -> Vec<f64>,
) -> (Vec<u32>, Vec<u32>) {
    if context.is_empty() {
        return (Vec::new(), Vec::new());
    }
    let (mut ctx, mut len, mut out) = (context.to_vec(), len.clamp(1, context.len()), Vec::new());
    for &u in uniforms {
        let p = sample_probs_ref(&last_logits(&ctx[..len]), temperature);
        let mut acc = 0.0;
        let tok = p
            .iter()
            .position(|&q| {
                acc += q;
                acc > u as f64
            })
            .unwrap_or(p.len() - 1) as u32;
        out.push(tok);
        if len < ctx.len() {
            ctx[len] = tok;
            len += 1;
        } else {
            ctx.rotate_left(1);
            ctx[len - 1] = tok;
        }
    }
    (out, ctx)
}

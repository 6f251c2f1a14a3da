//! Sampling text from a trained language model, on the GPU: the model's forward pass for
//! one context window, then sample.wgsl's draw, which appends the token to the context;
//! replayed once per token in a few submits, with only the drawn tokens read back at the end.
//! The same checkpoint, prompt, temperature and seed give the same text on one adapter.

use crate::gpu::Gpu;
use crate::graph::ir::{Graph, Id, Op};
use crate::graph::session::Session;
use crate::kernels::sample::{sample_next, sample_uniforms, SampleTensors};
use crate::nn::{model_input, Model};
use crate::tensor::Tensor;
use crate::{Error, Result};

use super::checkpoint::LmCheckpoint;

/// Draws recorded per submit (bounds a command buffer's size).
const DRAWS_PER_SUBMIT: usize = 32;

#[derive(Clone, Debug, PartialEq)]
pub struct GenerateOptions {
    pub prompt: String,
    pub tokens: usize,
    /// 0 = always the most likely token.
    pub temperature: f32,
    pub seed: u64,
}

/// Token ids of `text` in `vocab`; an unknown character is an error naming it.
pub fn encode(vocab: &[char], text: &str, what: &str) -> Result<Vec<u32>> {
    text.chars()
        .map(|c| {
            vocab
                .iter()
                .position(|&v| v == c)
                .map(|i| i as u32)
                .ok_or_else(|| {
                    Error::usage(
                        what,
                        format!(
                            "character {c:?} is not in the model's vocabulary of {} characters",
                            vocab.len()
                        ),
                    )
                })
        })
        .collect()
}

/// Characters of token ids (ids outside the vocabulary become U+FFFD).
pub fn decode(vocab: &[char], ids: &[u32]) -> String {
    ids.iter()
        .map(|&i| vocab.get(i as usize).copied().unwrap_or('\u{FFFD}'))
        .collect()
}

/// The model's evaluation graph for one window of T tokens, compiled, with the checkpoint's
/// parameters written: the session, its input x `[1, T]` and its logits `[T, V]`.
fn forward_session<'g>(gpu: &'g Gpu, ck: &LmCheckpoint) -> Result<(Session<'g>, Id, Id)> {
    let mut g = Graph::new();
    g.training = false;
    let x = model_input(&mut g, &ck.config, 1); // [1, T]
    let logits = ck.config.forward(&mut g, x)?; // [T, V]
    g.mark_output(logits);
    let s = Session::new(gpu, &g, true)?;
    for id in g.ids() {
        if let Op::Param(i) = g.node(id).op {
            s.write(id, &ck.params[i])?;
        }
    }
    Ok((s, x, logits))
}

/// Next-token logits `[L, V]` (row-major) at each of the last L = min(len, T) characters of
/// `text`: row i scores the character after position i of that window.
pub fn logits(gpu: &Gpu, ck: &LmCheckpoint, text: &str) -> Result<Vec<f32>> {
    let (ctx, v) = (ck.config.context().unwrap_or(1), ck.config.vocab());
    let tokens = encode(&ck.vocab, text, "text")?;
    if tokens.is_empty() {
        return Err(Error::usage(
            "text",
            "empty; expected at least one character",
        ));
    }
    let keep = &tokens[tokens.len().saturating_sub(ctx)..];
    let mut context = keep.to_vec();
    context.resize(ctx, 0); // positions past L do not reach rows < L (causal models)
    let (s, x, out) = forward_session(gpu, ck)?;
    s.write_u32(x, &context)?;
    s.run()?;
    let mut all = s.read(out)?;
    all.truncate(keep.len() * v);
    Ok(all)
}

/// `o.tokens` characters sampled after `o.prompt` (the prompt not included).
pub fn generate(gpu: &Gpu, ck: &LmCheckpoint, o: &GenerateOptions) -> Result<String> {
    let ctx = ck.config.context().unwrap_or(1);
    let prompt = encode(&ck.vocab, &o.prompt, "--prompt")?;
    if prompt.is_empty() || o.tokens == 0 {
        return Err(Error::usage(
            "generate",
            format!(
                "prompt of {} characters and --tokens {}: expected at least one of each",
                prompt.len(),
                o.tokens
            ),
        ));
    }
    let (s, x, logits) = forward_session(gpu, ck)?;
    let keep = &prompt[prompt.len().saturating_sub(ctx)..]; // the last T characters
    let mut context = keep.to_vec();
    context.resize(ctx, 0);
    s.write_u32(x, &context)?;
    let n = o.tokens;
    let uniforms = Tensor::from_f32(gpu, "sample uniforms", &[n], &sample_uniforms(o.seed, n))?;
    let state = Tensor::from_u32(gpu, "sample state", &[2], &[keep.len() as u32, 0])?;
    let out = Tensor::from_u32(gpu, "sampled tokens", &[n], &vec![0; n])?;
    let draw = sample_next(
        gpu,
        o.temperature,
        &SampleTensors {
            logits: &s.tensor(logits)?.view(0, &[ctx, ck.config.vocab()]),
            uniforms: &uniforms,
            context: &s.tensor(x)?.view(0, &[ctx]),
            state: &state,
            out: &out,
        },
    )?;
    let mut left = n;
    while left > 0 {
        let k = left.min(DRAWS_PER_SUBMIT);
        let mut encoder = gpu.device.create_command_encoder(&Default::default());
        {
            let mut pass = encoder.begin_compute_pass(&Default::default());
            for _ in 0..k {
                s.dispatches().iter().for_each(|d| d.record(&mut pass));
                draw.record(&mut pass);
            }
        }
        gpu.queue.submit([encoder.finish()]);
        left -= k;
    }
    Ok(decode(&ck.vocab, &out.to_u32(gpu)?))
}

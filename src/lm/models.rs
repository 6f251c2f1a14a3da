//! The language models: a decoder-only transformer (`gpt`, nanoGPT's layout and names) and
//! an Elman RNN unrolled over the context (`char-rnn`, `torch.nn.RNN`'s names). Both map
//! token ids x `[B, T]` (u32) to next-token logits `[B * T, V]`; parameters are registered
//! with PyTorch's names and layouts so a checkpoint loads into the equivalent module.
//!
//! B = batch, T = context, V = vocabulary, D = model width, H = heads, E = embedding width.

use serde_json::{json, Value};

use crate::graph::ir::{Graph, Id};
use crate::kernels::loss::Loss;
use crate::model::Init;
use crate::nn::{register, Model};
use crate::{Error, Result};

/// nanoGPT's `GPTConfig`, without dropout.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GptConfig {
    pub vocab: usize,
    pub context: usize,
    pub d_model: usize,
    pub heads: usize,
    pub layers: usize,
}

/// An Elman RNN (h_t = tanh(W_ih e_t + b_ih + W_hh h_{t-1} + b_hh)) over embeddings.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CharRnnConfig {
    pub vocab: usize,
    pub context: usize,
    pub embed: usize,
    pub hidden: usize,
}

/// A language model's architecture and size.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LmConfig {
    Gpt(GptConfig),
    CharRnn(CharRnnConfig),
}

impl LmConfig {
    pub fn kind(&self) -> &'static str {
        match self {
            LmConfig::Gpt(_) => "gpt",
            LmConfig::CharRnn(_) => "char-rnn",
        }
    }

    pub fn vocab(&self) -> usize {
        match self {
            LmConfig::Gpt(c) => c.vocab,
            LmConfig::CharRnn(c) => c.vocab,
        }
    }

    /// Its description in a checkpoint's metadata.
    pub fn to_json(&self) -> Value {
        match self {
            LmConfig::Gpt(c) => json!({"kind": "gpt", "vocab": c.vocab, "context": c.context,
                "d_model": c.d_model, "heads": c.heads, "layers": c.layers}),
            LmConfig::CharRnn(c) => json!({"kind": "char-rnn", "vocab": c.vocab,
                "context": c.context, "embed": c.embed, "hidden": c.hidden}),
        }
    }

    /// Parse [`LmConfig::to_json`]'s output; `what` names the source in errors.
    pub fn from_json(what: &str, v: &Value) -> Result<LmConfig> {
        let field = |name: &str| -> Result<usize> {
            v.get(name)
                .and_then(Value::as_u64)
                .filter(|&n| n > 0 && n < 1 << 20)
                .map(|n| n as usize)
                .ok_or_else(|| {
                    Error::usage(
                        what,
                        format!("{name}: missing or invalid; expected a positive integer"),
                    )
                })
        };
        let cfg = match v.get("kind").and_then(Value::as_str) {
            Some("gpt") => LmConfig::Gpt(GptConfig {
                vocab: field("vocab")?,
                context: field("context")?,
                d_model: field("d_model")?,
                heads: field("heads")?,
                layers: field("layers")?,
            }),
            Some("char-rnn") => LmConfig::CharRnn(CharRnnConfig {
                vocab: field("vocab")?,
                context: field("context")?,
                embed: field("embed")?,
                hidden: field("hidden")?,
            }),
            other => {
                return Err(Error::usage(
                    what,
                    format!("kind: {other:?}; expected \"gpt\" or \"char-rnn\""),
                ))
            }
        };
        cfg.validate(what)?;
        Ok(cfg)
    }

    /// Sizes that build: heads divide the width, everything positive.
    pub fn validate(&self, what: &str) -> Result<()> {
        let ok = match self {
            LmConfig::Gpt(c) => {
                c.vocab > 1
                    && c.context > 0
                    && c.layers > 0
                    && c.heads > 0
                    && c.d_model % c.heads == 0
            }
            LmConfig::CharRnn(c) => c.vocab > 1 && c.context > 0 && c.embed > 0 && c.hidden > 0,
        };
        if !ok {
            return Err(Error::usage(
                what,
                format!("{self:?}: sizes do not fit; expected a vocabulary of 2 or more, positive sizes, and heads dividing d_model"),
            ));
        }
        Ok(())
    }
}

/// A linear map with PyTorch's `nn.Linear` layout: weight `[OUT, IN]`, bias `[OUT]`.
struct Linear {
    weight: Id,
    bias: Option<Id>,
}

impl Linear {
    fn new(g: &mut Graph, name: &str, n_in: usize, n_out: usize, std: f32, bias: bool) -> Self {
        let w = register(
            g,
            format!("{name}.weight"),
            vec![n_out, n_in],
            Init::Normal { std },
            0,
        );
        let b = bias.then(|| register(g, format!("{name}.bias"), vec![n_out], Init::Zeros, 0));
        Linear { weight: w, bias: b }
    }

    /// x `[N, IN]` -> `[N, OUT]`.
    fn forward(&self, g: &mut Graph, x: Id) -> Result<Id> {
        let y = g.matmul(x, self.weight, false, true)?;
        match self.bias {
            Some(b) => g.add(y, b),
            None => Ok(y),
        }
    }
}

/// `nn.LayerNorm(D)`: weight (gamma) ones, bias (beta) zeros, eps 1e-5.
fn layer_norm(g: &mut Graph, name: &str, x: Id, d: usize) -> Result<Id> {
    let gamma = register(g, format!("{name}.weight"), vec![d], Init::Ones, 0);
    let beta = register(g, format!("{name}.bias"), vec![d], Init::Zeros, 0);
    g.layer_norm(x, gamma, beta, 1e-5)
}

impl GptConfig {
    /// Causal self-attention of nanoGPT's `CausalSelfAttention`: x `[B*T, D]` -> `[B*T, D]`.
    fn attention(&self, g: &mut Graph, name: &str, x: Id, batch: usize) -> Result<Id> {
        let (t, d, h) = (self.context, self.d_model, self.heads);
        let hd = d / h;
        let proj_std = 0.02 / (2.0 * self.layers as f32).sqrt();
        let qkv = Linear::new(g, &format!("{name}.c_attn"), d, 3 * d, 0.02, true).forward(g, x)?;
        let qkv = g.reshape(qkv, &[batch, t, 3, h, hd])?;
        let qkv = g.permute(qkv, &[2, 0, 3, 1, 4])?; // [3, B, H, T, hd]
        let qkv = g.reshape(qkv, &[3 * batch * h, t, hd])?;
        let bh = batch * h;
        let q = g.slice(qkv, 0, 0, bh)?; // [B*H, T, hd]
        let k = g.slice(qkv, 0, bh, bh)?;
        let v = g.slice(qkv, 0, 2 * bh, bh)?;
        let att = g.matmul(q, k, false, true)?; // [B*H, T, T]
        let att = g.scale(att, 1.0 / (hd as f32).sqrt())?;
        let att = g.softmax(att, Some(t))?;
        let y = g.matmul(att, v, false, false)?; // [B*H, T, hd]
        let y = g.reshape(y, &[batch, h, t, hd])?;
        let y = g.permute(y, &[0, 2, 1, 3])?; // [B, T, H, hd]
        let y = g.reshape(y, &[batch * t, d])?;
        Linear::new(g, &format!("{name}.c_proj"), d, d, proj_std, true).forward(g, y)
    }

    /// nanoGPT's `MLP`: Linear(D, 4D) -> GELU (tanh form) -> Linear(4D, D).
    fn mlp(&self, g: &mut Graph, name: &str, x: Id) -> Result<Id> {
        let d = self.d_model;
        let proj_std = 0.02 / (2.0 * self.layers as f32).sqrt();
        let hdn = Linear::new(g, &format!("{name}.c_fc"), d, 4 * d, 0.02, true).forward(g, x)?;
        let hdn = g.gelu(hdn)?;
        Linear::new(g, &format!("{name}.c_proj"), 4 * d, d, proj_std, true).forward(g, hdn)
    }

    /// One pre-norm block: x + attn(ln_1(x)), then + mlp(ln_2(x)).
    fn block(&self, g: &mut Graph, i: usize, x: Id, batch: usize) -> Result<Id> {
        let (p, d) = (format!("transformer.h.{i}"), self.d_model);
        let a = layer_norm(g, &format!("{p}.ln_1"), x, d)?;
        let a = self.attention(g, &format!("{p}.attn"), a, batch)?;
        let x = g.add(x, a)?;
        let m = layer_norm(g, &format!("{p}.ln_2"), x, d)?;
        let m = self.mlp(g, &format!("{p}.mlp"), m)?;
        g.add(x, m)
    }

    fn forward(&self, g: &mut Graph, x: Id) -> Result<Id> {
        let (batch, t, d) = (g.shape(x)[0], self.context, self.d_model);
        let wte = register(
            g,
            "transformer.wte.weight".into(),
            vec![self.vocab, d],
            Init::Normal { std: 0.02 },
            0,
        );
        let wpe = register(
            g,
            "transformer.wpe.weight".into(),
            vec![t, d],
            Init::Normal { std: 0.02 },
            0,
        );
        let tok = g.embedding(wte, x)?; // [B, T, D]
        let h = g.add(tok, wpe)?; // + [T, D], broadcast over B
        let mut h = g.reshape(h, &[batch * t, d])?;
        for i in 0..self.layers {
            h = self.block(g, i, h, batch)?;
        }
        let h = layer_norm(g, "transformer.ln_f", h, d)?;
        Linear::new(g, "lm_head", d, self.vocab, 0.02, false).forward(g, h) // [B*T, V]
    }
}

impl CharRnnConfig {
    fn forward(&self, g: &mut Graph, x: Id) -> Result<Id> {
        let (batch, t, e, hd) = (g.shape(x)[0], self.context, self.embed, self.hidden);
        let glorot = |fan_in, fan_out| Init::GlorotUniform { fan_in, fan_out };
        let emb = register(
            g,
            "embed.weight".into(),
            vec![self.vocab, e],
            Init::Normal { std: 1.0 },
            0,
        );
        let w_ih = register(g, "rnn.weight_ih_l0".into(), vec![hd, e], glorot(e, hd), 0);
        let w_hh = register(
            g,
            "rnn.weight_hh_l0".into(),
            vec![hd, hd],
            glorot(hd, hd),
            0,
        );
        let b_ih = register(g, "rnn.bias_ih_l0".into(), vec![hd], Init::Zeros, 0);
        let b_hh = register(g, "rnn.bias_hh_l0".into(), vec![hd], Init::Zeros, 0);
        let xe = g.embedding(emb, x)?; // [B, T, E]
        let xe = g.reshape(xe, &[batch * t, e])?;
        let xw = g.matmul(xe, w_ih, false, true)?; // [B*T, H]: every input step at once
        let xw = g.add(xw, b_ih)?;
        let xw = g.add(xw, b_hh)?;
        let xw = g.reshape(xw, &[batch, t, hd])?;
        let mut h: Option<Id> = None; // h_0 = 0
        let mut hs = Vec::with_capacity(t);
        for step in 0..t {
            let xt = g.slice(xw, 1, step, 1)?; // [B, 1, H]
            let mut pre = g.reshape(xt, &[batch, hd])?;
            if let Some(prev) = h {
                let r = g.matmul(prev, w_hh, false, true)?; // [B, H]
                pre = g.add(pre, r)?;
            }
            let ht = g.tanh(pre)?;
            hs.push(g.reshape(ht, &[batch, 1, hd])?);
            h = Some(ht);
        }
        let hs = g.concat(&hs, 1)?; // [B, T, H]
        let hs = g.reshape(hs, &[batch * t, hd])?;
        let fc = Linear::new(g, "fc", hd, self.vocab, (1.0 / hd as f32).sqrt(), true);
        fc.forward(g, hs) // [B*T, V]
    }
}

impl Model for LmConfig {
    /// Unused by language models (see [`Model::context`]); the context as a 1x1xT image.
    fn input(&self) -> [usize; 3] {
        [1, 1, self.context().unwrap_or(1)]
    }

    fn loss(&self) -> Loss {
        Loss::SoftmaxCrossEntropy
    }

    fn context(&self) -> Option<usize> {
        Some(match self {
            LmConfig::Gpt(c) => c.context,
            LmConfig::CharRnn(c) => c.context,
        })
    }

    /// x `[B, T]` token ids -> logits `[B * T, V]`.
    fn forward(&self, g: &mut Graph, x: Id) -> Result<Id> {
        match self {
            LmConfig::Gpt(c) => c.forward(g, x),
            LmConfig::CharRnn(c) => c.forward(g, x),
        }
    }
}

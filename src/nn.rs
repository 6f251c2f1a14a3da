//! Layers over the graph API, and the `Model` trait the executor trains. A layer registers
//! its parameters (PyTorch's names and layouts, Keras's initialisation) when it is built
//! and adds its ops when called on a value.

use crate::graph::ir::{Graph, Id};
use crate::kernels::conv2d::Padding;
use crate::kernels::loss::Loss;
use crate::model::{Init, ParamSpec, Sequential};
use crate::rng::Rng;
use crate::Result;

/// Anything the executor can train: a forward pass from an image batch to outputs.
pub trait Model {
    /// Per-sample input shape `[C, H, W]`.
    fn input(&self) -> [usize; 3];
    /// The loss its outputs feed (softmax cross-entropy, sigmoid BCE or MSE).
    fn loss(&self) -> Loss;
    /// Build the forward pass: x `[B, C, H, W]` -> outputs `[B, classes]` (the values the
    /// loss's activation is applied to), registering parameters in a fixed order.
    fn forward(&self, g: &mut Graph, x: Id) -> Result<Id>;
    /// The Keras `Sequential` behind it, if any (checkpoints, summaries, the CLI).
    fn as_sequential(&self) -> Option<&Sequential> {
        None
    }
    /// Language models: the context length T. Their input is then u32 token ids `[B, T]`
    /// (not an image) and their outputs are logits `[B * T, V]`, one row per position.
    fn context(&self) -> Option<usize> {
        None
    }
    /// Outputs per sample (classes, regression targets, or a language model's vocabulary).
    fn outputs(&self) -> Result<usize> {
        let mut g = Graph::new();
        let x = model_input(&mut g, self, 1);
        let z = self.forward(&mut g, x)?;
        Ok(g.shape(z).get(1).copied().unwrap_or(0))
    }
}

/// The input leaf `x` of `model` for a batch of `batch`: images f32 `[B, C, H, W]`, or for
/// a language model token ids u32 `[B, T]`.
pub fn model_input<M: Model + ?Sized>(g: &mut Graph, model: &M, batch: usize) -> Id {
    match model.context() {
        Some(t) => g.input("x", &[batch, t], crate::graph::DType::U32),
        None => {
            let [c, h, w] = model.input();
            g.input("x", &[batch, c, h, w], crate::graph::DType::F32)
        }
    }
}

/// The parameters `model` registers, in order.
pub fn params(model: &dyn Model) -> Result<Vec<ParamSpec>> {
    let mut g = Graph::new();
    let x = model_input(&mut g, model, 1);
    model.forward(&mut g, x)?;
    Ok(g.params)
}

/// Initial values of `specs`, Keras-style (Glorot-uniform kernels, zero biases), drawn in
/// order from one stream seeded with `seed`.
pub fn init_params(specs: &[ParamSpec], seed: u64) -> Vec<Vec<f32>> {
    let mut rng = Rng::new(seed);
    specs
        .iter()
        .map(|p| match p.init {
            Init::GlorotUniform { fan_in, fan_out } => {
                let limit = (6.0 / (fan_in + fan_out) as f64).sqrt() as f32;
                rng.uniform_vec(p.numel(), -limit, limit)
            }
            Init::Normal { std } => (0..p.numel()).map(|_| rng.normal(std)).collect(),
            Init::Zeros => vec![0.0; p.numel()],
            Init::Ones => vec![1.0; p.numel()],
        })
        .collect()
}

pub(crate) fn register(
    g: &mut Graph,
    name: String,
    shape: Vec<usize>,
    init: Init,
    layer: usize,
) -> Id {
    g.param(ParamSpec {
        name,
        shape,
        init,
        layer,
        trainable: true,
    })
}

/// y = x Wᵀ + b: x `[B, IN]`, W `[OUT, IN]`, b `[OUT]`.
pub struct Dense {
    pub weight: Id,
    pub bias: Id,
}

impl Dense {
    /// Parameters `{name}.weight` and `{name}.bias`; `layer` is the index reported in
    /// summaries.
    pub fn new(g: &mut Graph, name: &str, n_in: usize, n_out: usize, layer: usize) -> Self {
        let init = Init::GlorotUniform {
            fan_in: n_in,
            fan_out: n_out,
        };
        Dense {
            weight: register(g, format!("{name}.weight"), vec![n_out, n_in], init, layer),
            bias: register(g, format!("{name}.bias"), vec![n_out], Init::Zeros, layer),
        }
    }

    pub fn forward(&self, g: &mut Graph, x: Id) -> Result<Id> {
        let y = g.matmul(x, self.weight, false, true)?; // [B, OUT]
        g.add(y, self.bias)
    }
}

/// y = conv2d(x, W) + b: x `[B, CI, H, W]`, W `[CO, CI, K, K]`, b `[CO]`.
pub struct Conv2d {
    pub weight: Id,
    pub bias: Id,
    pub stride: usize,
    pub padding: Padding,
}

impl Conv2d {
    pub fn new(
        g: &mut Graph,
        name: &str,
        c_in: usize,
        c_out: usize,
        k: usize,
        layer: usize,
    ) -> Self {
        let init = Init::GlorotUniform {
            fan_in: c_in * k * k,
            fan_out: c_out * k * k,
        };
        Conv2d {
            weight: register(
                g,
                format!("{name}.weight"),
                vec![c_out, c_in, k, k],
                init,
                layer,
            ),
            bias: register(g, format!("{name}.bias"), vec![c_out], Init::Zeros, layer),
            stride: 1,
            padding: Padding::Valid,
        }
    }

    pub fn padding(mut self, padding: Padding) -> Self {
        self.padding = padding;
        self
    }

    pub fn stride(mut self, stride: usize) -> Self {
        self.stride = stride;
        self
    }

    pub fn forward(&self, g: &mut Graph, x: Id) -> Result<Id> {
        let y = g.conv2d(x, self.weight, self.stride, self.padding)?; // [B, CO, OH, OW]
        let co = g.shape(self.bias)[0];
        let b = g.reshape(self.bias, &[co, 1, 1])?;
        g.add(y, b)
    }
}

fn state(g: &mut Graph, name: String, shape: Vec<usize>, init: Init, layer: usize) -> Id {
    g.param(ParamSpec {
        name,
        shape,
        init,
        layer,
        trainable: false,
    })
}

/// Batch normalisation over the channel axis 1 of `[B, C, H, W]` (BatchNorm2d) or `[B, C]`
/// (BatchNorm1d), with PyTorch's names, defaults and semantics: training graphs normalise
/// with the batch's statistics (biased variance) and update the running ones (unbiased
/// variance, momentum 0.1) on the GPU; evaluation graphs use the running statistics.
pub struct BatchNorm {
    pub weight: Id,
    pub bias: Id,
    pub running_mean: Id,
    pub running_var: Id,
    pub num_batches_tracked: Id,
    pub eps: f32,
    pub momentum: f32,
}

impl BatchNorm {
    pub fn new(g: &mut Graph, name: &str, channels: usize, layer: usize) -> Self {
        let c = vec![channels];
        BatchNorm {
            weight: register(g, format!("{name}.weight"), c.clone(), Init::Ones, layer),
            bias: register(g, format!("{name}.bias"), c.clone(), Init::Zeros, layer),
            running_mean: state(
                g,
                format!("{name}.running_mean"),
                c.clone(),
                Init::Zeros,
                layer,
            ),
            running_var: state(g, format!("{name}.running_var"), c, Init::Ones, layer),
            num_batches_tracked: state(
                g,
                format!("{name}.num_batches_tracked"),
                vec![],
                Init::Zeros,
                layer,
            ),
            eps: 1e-5,
            momentum: 0.1,
        }
    }

    /// One fused op (batchnorm.wgsl): the batch's statistics and the running update in
    /// training graphs, the running statistics in evaluation graphs.
    pub fn forward(&self, g: &mut Graph, x: Id) -> Result<Id> {
        let s = g.shape(x).to_vec();
        let c = g.shape(self.weight)[0];
        if !matches!(s.len(), 2 | 4) || s[1] != c {
            return Err(crate::Error::shape(
                "batch_norm",
                format!("x {s:?} with {c} channels; hint: x is [B, C, H, W] or [B, C]"),
            ));
        }
        if !g.training {
            let stats = [self.weight, self.bias, self.running_mean, self.running_var];
            return g.batch_norm_eval(x, stats, self.eps);
        }
        let y = g.batch_norm_train(x, self.weight, self.bias, self.eps)?;
        let (mean, var) = (g.aux(y, 0), g.aux(y, 1)); // [C], var biased
        self.update_running(g, mean, var, s.iter().product::<usize>() / c)?;
        Ok(y)
    }

    /// running = (1 - momentum) running + momentum batch (the variance unbiased, over `n`
    /// values per channel); num_batches_tracked += 1.
    fn update_running(&self, g: &mut Graph, mean: Id, var: Id, n: usize) -> Result<()> {
        let mo = self.momentum;
        let unbias = n as f32 / (n.max(2) - 1) as f32;
        let lerp = |g: &mut Graph, old: Id, new: Id, k: f32| -> Result<Id> {
            let a = g.scale(old, 1.0 - mo)?;
            let b = g.scale(new, mo * k)?;
            g.add(a, b)
        };
        let rm = lerp(g, self.running_mean, mean, 1.0)?;
        let rv = lerp(g, self.running_var, var, unbias)?;
        let one = g.constant(1.0, &[]);
        let nb = g.add(self.num_batches_tracked, one)?;
        g.assign(self.running_mean, rm)?;
        g.assign(self.running_var, rv)?;
        g.assign(self.num_batches_tracked, nb)?;
        Ok(())
    }
}

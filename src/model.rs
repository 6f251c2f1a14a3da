//! A Keras-like `Sequential` model: layers, shape inference, parameters and summary.
//! Shapes here are per sample (no batch axis): `[C, H, W]` for images, `[N]` for vectors.

use crate::graph::ir::{Graph, Id};
use crate::kernels::conv2d::Padding;
use crate::kernels::loss::Loss;
use crate::nn::{self, Model};
use crate::{Error, Result};

/// What follows a layer's affine part. The last layer's activation picks the loss:
/// softmax -> categorical cross-entropy, sigmoid on one unit -> binary cross-entropy,
/// linear -> mean squared error.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Activation {
    Linear,
    Relu,
    Sigmoid,
    Softmax,
    Tanh,
    /// GELU, tanh approximation (PyTorch's `approximate='tanh'`).
    Gelu,
    /// Slope 0.01 below zero (PyTorch's default).
    LeakyRelu,
}

#[derive(Clone, Debug, PartialEq)]
pub enum Layer {
    Conv2d {
        filters: usize,
        kernel: usize,
        /// 1 unless set (`Layer::Conv2d { stride: 2, .. }`).
        stride: usize,
        padding: Padding,
        activation: Activation,
    },
    /// Batch normalisation over the channels of an image or the units of a vector.
    BatchNorm,
    /// Inverted dropout with this probability, in training only.
    Dropout {
        rate: f32,
    },
    AvgPool2d {
        pool: usize,
        stride: usize,
    },
    /// The mean over H and W: `[C, H, W]` -> `[C]`.
    GlobalAvgPool2d,
    MaxPool2d {
        pool: usize,
        stride: usize,
    },
    Flatten,
    Dense {
        units: usize,
        activation: Activation,
    },
    /// A standalone activation layer (ReLU, Sigmoid, Softmax).
    Activation(Activation),
}

impl Layer {
    pub fn kind(&self) -> &'static str {
        match self {
            Layer::Conv2d { .. } => "Conv2D",
            Layer::MaxPool2d { .. } => "MaxPooling2D",
            Layer::Flatten => "Flatten",
            Layer::Dense { .. } => "Dense",
            Layer::Activation(Activation::Relu) => "ReLU",
            Layer::Activation(Activation::Sigmoid) => "Sigmoid",
            Layer::Activation(Activation::Softmax) => "Softmax",
            Layer::Activation(Activation::Linear) => "Linear",
            Layer::Activation(Activation::Tanh) => "Tanh",
            Layer::Activation(Activation::Gelu) => "GELU",
            Layer::Activation(Activation::LeakyRelu) => "LeakyReLU",
            Layer::BatchNorm => "BatchNormalization",
            Layer::Dropout { .. } => "Dropout",
            Layer::AvgPool2d { .. } => "AveragePooling2D",
            Layer::GlobalAvgPool2d => "GlobalAveragePooling2D",
        }
    }

    fn activation(&self) -> Activation {
        match self {
            Layer::Conv2d { activation, .. } | Layer::Dense { activation, .. } => *activation,
            Layer::Activation(a) => *a,
            _ => Activation::Linear,
        }
    }
}

/// How a parameter tensor is initialised (as Keras: Glorot-uniform kernels, zero biases).
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Init {
    GlorotUniform {
        fan_in: usize,
        fan_out: usize,
    },
    /// Normal(0, std): GPT-2's initialisation (std 0.02) for embeddings and projections.
    Normal {
        std: f32,
    },
    Zeros,
    Ones,
}

/// One parameter tensor, named and laid out as PyTorch names and lays it out
/// (`conv.weight` `[CO, CI, KH, KW]`, `fc1.weight` `[OUT, IN]`, `fc1.bias` `[OUT]`).
#[derive(Clone, Debug, PartialEq)]
pub struct ParamSpec {
    pub name: String,
    pub shape: Vec<usize>,
    pub init: Init,
    /// Index of the layer it belongs to.
    pub layer: usize,
    /// Trained by the optimizer; false for state the forward pass updates itself
    /// (BatchNorm's running statistics).
    pub trainable: bool,
}

impl ParamSpec {
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct Sequential {
    /// Per-sample input shape, `[C, H, W]`.
    pub input: [usize; 3],
    pub layers: Vec<Layer>,
}

impl Sequential {
    pub fn new(input: [usize; 3]) -> Self {
        Sequential {
            input,
            layers: Vec::new(),
        }
    }

    /// A model over vectors of `features` values (regression, tabular data): the input is
    /// `[1, 1, features]` followed by a Flatten, which is a free reshape.
    pub fn vector(features: usize) -> Self {
        Sequential::new([1, 1, features]).flatten()
    }

    pub fn conv2d(mut self, filters: usize, kernel: usize, activation: Activation) -> Self {
        self.layers.push(Layer::Conv2d {
            filters,
            kernel,
            stride: 1,
            padding: Padding::Valid,
            activation,
        });
        self
    }

    pub fn max_pool2d(mut self, pool: usize) -> Self {
        self.layers.push(Layer::MaxPool2d { pool, stride: pool });
        self
    }

    pub fn flatten(mut self) -> Self {
        self.layers.push(Layer::Flatten);
        self
    }

    pub fn dense(mut self, units: usize, activation: Activation) -> Self {
        self.layers.push(Layer::Dense { units, activation });
        self
    }

    /// Append any layer (Keras's `model.add`); not `std::ops::Add`.
    #[allow(clippy::should_implement_trait)]
    pub fn add(mut self, layer: Layer) -> Self {
        self.layers.push(layer);
        self
    }

    /// The Keras MNIST CNN: Conv2D(32, 3x3, relu) -> MaxPool(2) -> Flatten ->
    /// Dense(128, relu) -> Dense(10, softmax). 693,962 parameters.
    pub fn mnist_cnn() -> Self {
        Sequential::new([1, 28, 28])
            .conv2d(32, 3, Activation::Relu)
            .max_pool2d(2)
            .flatten()
            .dense(128, Activation::Relu)
            .dense(10, Activation::Softmax)
    }

    /// LeNet-5 for 28x28 digits, with ReLU and max pooling: Conv2D(6, 5x5, same) -> MaxPool(2)
    /// -> Conv2D(16, 5x5) -> MaxPool(2) -> Flatten -> Dense(120) -> Dense(84) -> Dense(10,
    /// softmax). 61,706 parameters.
    pub fn lenet5() -> Self {
        let same = |filters| Layer::Conv2d {
            filters,
            kernel: 5,
            stride: 1,
            padding: Padding::Same,
            activation: Activation::Relu,
        };
        Sequential::new([1, 28, 28])
            .add(same(6))
            .max_pool2d(2)
            .conv2d(16, 5, Activation::Relu)
            .max_pool2d(2)
            .flatten()
            .dense(120, Activation::Relu)
            .dense(84, Activation::Relu)
            .dense(10, Activation::Softmax)
    }

    /// A small VGG-style network sized for CPU adapters (an epoch on lavapipe under twice the
    /// seed CNN's, README): [Conv2D(8, 3x3, same) -> BatchNorm -> ReLU] -> MaxPool(2), then
    /// [Conv2D(3x3, valid) -> BatchNorm -> ReLU] with 16, 16, 32 and 48 channels (14x14 down
    /// to 6x6), global average pooling, Dropout(0.1) and Dense(10, softmax): 22,810
    /// trainable parameters, ~2.5 MFLOP a forward pass.
    pub fn vgg_small() -> Self {
        let block = |m: Sequential, filters, padding| {
            m.add(Layer::Conv2d {
                filters,
                kernel: 3,
                stride: 1,
                padding,
                activation: Activation::Linear,
            })
            .add(Layer::BatchNorm)
            .add(Layer::Activation(Activation::Relu))
        };
        let mut m = block(Sequential::new([1, 28, 28]), 8, Padding::Same).max_pool2d(2);
        for filters in [16, 16, 32, 48] {
            m = block(m, filters, Padding::Valid);
        }
        m.add(Layer::GlobalAvgPool2d)
            .add(Layer::Dropout { rate: 0.1 })
            .dense(10, Activation::Softmax)
    }

    /// Flatten -> Dense(128, relu) -> Dense(10, softmax).
    pub fn mnist_mlp() -> Self {
        Sequential::new([1, 28, 28])
            .flatten()
            .dense(128, Activation::Relu)
            .dense(10, Activation::Softmax)
    }

    /// Softmax regression P(y = i | x) = softmax(W x + b): Flatten -> Dense(10, softmax).
    pub fn mnist_softmax() -> Self {
        Sequential::new([1, 28, 28])
            .flatten()
            .dense(10, Activation::Softmax)
    }

    /// This model for other data: images of shape `input` `[C, H, W]` in `classes` classes
    /// (a named model's input and the width of its last Dense layer follow the data; the
    /// layers in between infer their shapes as usual).
    pub fn for_data(mut self, input: [usize; 3], classes: usize) -> Result<Self> {
        self.input = input;
        match self.layers.last_mut() {
            Some(Layer::Dense { units, .. }) => *units = classes,
            _ => return Err(Error::shape(
                "Sequential",
                "the model does not end with Dense, so its output cannot follow the class count",
            )),
        }
        self.shapes()?;
        Ok(self)
    }

    /// The activation of the output, which picks the loss.
    pub fn output_activation(&self) -> Activation {
        self.layers
            .last()
            .map(Layer::activation)
            .unwrap_or(Activation::Linear)
    }

    /// Output shape of every layer, checking each layer accepts its input.
    pub fn shapes(&self) -> Result<Vec<Vec<usize>>> {
        if self.input.contains(&0) {
            return Err(Error::shape(
                "Sequential",
                format!("input shape {:?} has a zero", self.input),
            ));
        }
        if self.layers.is_empty() {
            return Err(Error::shape("Sequential", "model has no layers"));
        }
        let mut shape = self.input.to_vec();
        let mut out = Vec::new();
        let last = self.layers.len() - 1;
        for (i, layer) in self.layers.iter().enumerate() {
            let op = format!("layer {i} ({})", layer.kind());
            shape = layer_shape(&op, layer, &shape)?;
            let act = layer.activation();
            if act == Activation::Softmax && (i != last || shape.len() != 1) {
                return Err(Error::shape(&op, "softmax is supported only on the last layer, over a vector (it is fused with the cross-entropy loss)"));
            }
            out.push(shape.clone());
        }
        self.check_outputs(&out[last])?;
        Ok(out)
    }

    /// The last layer's output: a vector that the output activation's loss accepts.
    fn check_outputs(&self, outputs: &[usize]) -> Result<()> {
        if outputs.len() != 1 {
            return Err(Error::shape(
                "Sequential",
                format!(
                    "output must be a vector, got {outputs:?}; hint: end with Flatten and Dense"
                ),
            ));
        }
        if self.output_activation() == Activation::Sigmoid && outputs[0] != 1 {
            return Err(Error::shape(
                "Sequential",
                "a sigmoid output (binary cross-entropy) must have exactly 1 unit",
            ));
        }
        if self.output_activation() == Activation::Relu {
            return Err(Error::shape(
                "Sequential",
                "a ReLU output has no loss; end with softmax, sigmoid or linear",
            ));
        }
        Ok(())
    }

    /// Per-sample size of the output.
    pub fn outputs(&self) -> Result<usize> {
        Ok(self.shapes()?.last().map(|s| s[0]).unwrap_or(0))
    }

    /// Every parameter tensor, in layer order, weight before bias (the order the forward
    /// pass registers them in).
    pub fn params(&self) -> Result<Vec<ParamSpec>> {
        crate::nn::params(self)
    }

    pub fn param_count(&self) -> Result<usize> {
        Ok(self.params()?.iter().map(ParamSpec::numel).sum())
    }

    /// A table like Keras's `model.summary()`.
    pub fn summary(&self) -> Result<String> {
        let shapes = self.shapes()?;
        let params = self.params()?;
        let mut s = String::new();
        let rule = "-".repeat(64);
        s += &format!(
            "{:<28}{:<24}{:>12}\n{rule}\n",
            "Layer (type)", "Output Shape", "Param #"
        );
        for (i, layer) in self.layers.iter().enumerate() {
            let n: usize = params
                .iter()
                .filter(|p| p.layer == i)
                .map(ParamSpec::numel)
                .sum();
            let shape: Vec<String> = std::iter::once("None".to_string())
                .chain(shapes[i].iter().map(|d| d.to_string()))
                .collect();
            let label = format!("{} ({})", layer.kind().to_lowercase(), layer.kind());
            s += &format!(
                "{:<28}{:<24}{:>12}\n",
                label,
                format!("({})", shape.join(", ")),
                n
            );
        }
        let total: usize = params.iter().map(ParamSpec::numel).sum();
        let trainable: usize = params
            .iter()
            .filter(|p| p.trainable)
            .map(ParamSpec::numel)
            .sum();
        s += &format!("{rule}\nTotal params: {total}\nTrainable params: {trainable}\n");
        if trainable != total {
            s += &format!("Non-trainable params: {}\n", total - trainable);
        }
        Ok(s)
    }

    /// Initial parameter values, Keras-style, from `seed`.
    pub fn init_params(&self, seed: u64) -> Result<Vec<Vec<f32>>> {
        Ok(crate::nn::init_params(&self.params()?, seed))
    }
}

fn activate(g: &mut Graph, x: Id, a: Activation) -> Result<Id> {
    match a {
        Activation::Relu => g.relu(x),
        Activation::Sigmoid => g.sigmoid(x),
        Activation::Tanh => g.tanh(x),
        Activation::Gelu => g.gelu(x),
        Activation::LeakyRelu => g.unary(crate::graph::UnaryOp::LeakyRelu(0.01), x),
        Activation::Linear | Activation::Softmax => Ok(x),
    }
}

impl Model for Sequential {
    fn input(&self) -> [usize; 3] {
        self.input
    }

    fn loss(&self) -> Loss {
        crate::graph::loss_of(self.output_activation())
    }

    fn as_sequential(&self) -> Option<&Sequential> {
        Some(self)
    }

    /// The layers in order; the last layer's activation is left to the loss (softmax and
    /// sigmoid are fused with it). Parameters are named as PyTorch would: `conv` (or
    /// `conv1`, `conv2`, ... when there are several), `fc1`, `fc2`, ...
    fn forward(&self, g: &mut Graph, x: Id) -> Result<Id> {
        self.shapes()?;
        let mut names = LayerNames::new(&self.layers);
        let last = self.layers.len() - 1;
        let mut h = x;
        for (i, layer) in self.layers.iter().enumerate() {
            let act = |a: Activation| if i == last { Activation::Linear } else { a };
            h = match layer {
                Layer::Conv2d {
                    filters,
                    kernel,
                    stride,
                    padding,
                    activation,
                } => {
                    let c_in = g.shape(h)[1];
                    let name = names.next("conv");
                    let l = nn::Conv2d::new(g, &name, c_in, *filters, *kernel, i)
                        .padding(*padding)
                        .stride(*stride);
                    let y = l.forward(g, h)?; // [B, CO, OH, OW]
                    activate(g, y, act(*activation))?
                }
                Layer::Dense { units, activation } => {
                    let n_in = g.shape(h)[1];
                    let name = names.next("fc");
                    let y = nn::Dense::new(g, &name, n_in, *units, i).forward(g, h)?;
                    activate(g, y, act(*activation))?
                }
                Layer::BatchNorm => {
                    let c = g.shape(h)[1];
                    let name = names.next("bn");
                    nn::BatchNorm::new(g, &name, c, i).forward(g, h)?
                }
                Layer::MaxPool2d { pool, stride } => g.max_pool2d(h, *pool, *stride)?,
                Layer::AvgPool2d { pool, stride } => g.avg_pool2d(h, *pool, *stride)?,
                Layer::GlobalAvgPool2d => g.global_avg_pool(h)?, // [B, C]
                Layer::Dropout { rate } => g.dropout(h, *rate)?,
                Layer::Flatten => g.flatten(h)?, // [B, C*H*W]
                Layer::Activation(a) => activate(g, h, act(*a))?,
            };
        }
        Ok(h)
    }
}

/// PyTorch-style parameter prefixes: `conv`, `bn` alone when a model has one such layer,
/// else numbered from 1 (`conv1`, `conv2`); dense layers are always numbered (`fc1`).
struct LayerNames {
    total: std::collections::HashMap<&'static str, usize>,
    seen: std::collections::HashMap<&'static str, usize>,
}

impl LayerNames {
    fn new(layers: &[Layer]) -> Self {
        let mut total = std::collections::HashMap::new();
        for l in layers {
            let prefix = match l {
                Layer::Conv2d { .. } => "conv",
                Layer::BatchNorm => "bn",
                _ => continue,
            };
            *total.entry(prefix).or_insert(0) += 1;
        }
        LayerNames {
            total,
            seen: Default::default(),
        }
    }

    fn next(&mut self, prefix: &'static str) -> String {
        let n = self.seen.entry(prefix).or_insert(0);
        *n += 1;
        match (prefix, self.total.get(prefix)) {
            ("conv" | "bn", Some(1)) => prefix.to_string(),
            _ => format!("{prefix}{n}"),
        }
    }
}

/// The output shape of `layer` (named `op` in errors) on an input of `shape`.
fn layer_shape(op: &str, layer: &Layer, shape: &[usize]) -> Result<Vec<usize>> {
    let need_image = || -> Result<[usize; 3]> {
        match shape[..] {
            [c, h, w] => Ok([c, h, w]),
            _ => Err(Error::shape(
                op,
                format!("expects an image [C, H, W], got {shape:?}; hint: put it before Flatten"),
            )),
        }
    };
    let window = |pool: usize, stride: usize| -> Result<Vec<usize>> {
        let [c, h, w] = need_image()?;
        if pool == 0 || stride == 0 || pool > h || pool > w {
            return Err(Error::shape(
                op,
                format!("window {pool} stride {stride} on input {h}x{w}"),
            ));
        }
        Ok(vec![c, (h - pool) / stride + 1, (w - pool) / stride + 1])
    };
    Ok(match layer {
        Layer::Conv2d {
            filters,
            kernel,
            stride,
            padding,
            ..
        } => {
            let [_, h, w] = need_image()?;
            if *filters == 0 || *kernel == 0 || *stride == 0 {
                return Err(Error::shape(
                    op,
                    "filters, kernel size and stride must be positive",
                ));
            }
            let out = |n| crate::graph::ops_nn::conv_out(n, *kernel, *stride, *padding);
            match (out(h), out(w)) {
                (Some(oh), Some(ow)) => vec![*filters, oh, ow],
                _ => {
                    return Err(Error::shape(
                        op,
                        format!("kernel {kernel} larger than input {h}x{w}"),
                    ))
                }
            }
        }
        Layer::MaxPool2d { pool, stride } | Layer::AvgPool2d { pool, stride } => {
            window(*pool, *stride)?
        }
        Layer::GlobalAvgPool2d => vec![need_image()?[0]],
        Layer::Flatten => vec![shape.iter().product()],
        Layer::Dense { units, .. } => {
            if shape.len() != 1 {
                return Err(Error::shape(
                    op,
                    format!("expects a vector, got {shape:?}; hint: add Flatten before Dense"),
                ));
            }
            if *units == 0 {
                return Err(Error::shape(op, "units must be positive"));
            }
            vec![*units]
        }
        Layer::Dropout { rate } if !(0.0..1.0).contains(rate) => {
            return Err(Error::shape(op, format!("rate {rate} is outside [0, 1)")))
        }
        Layer::Activation(_) | Layer::BatchNorm | Layer::Dropout { .. } => shape.to_vec(),
    })
}

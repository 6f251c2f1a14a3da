//! Elementwise activations: shaders/activation.wgsl, its wrappers and references.

use bytemuck::{Pod, Zeroable};

use super::{dispatch, grid_1d, Dispatch, KernelCall, Shader};
use crate::gpu::{Access, Gpu};
use crate::tensor::Tensor;
use crate::{Error, Result};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Activation {
    Relu,
    Sigmoid,
}

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct Params {
    n: u32,
    _pad: [u32; 3],
}

fn call(
    gpu: &Gpu,
    entry: &'static str,
    in1: &Tensor,
    in2: &Tensor,
    out: &Tensor,
) -> Result<Dispatch> {
    for (name, t) in [("input", in1), ("second input", in2)] {
        if t.numel() != out.numel() {
            return Err(Error::shape(
                entry,
                format!("{name} has shape {:?}, output {:?}", t.shape, out.shape),
            ));
        }
    }
    let params = Params {
        n: out.numel() as u32,
        _pad: [0; 3],
    };
    dispatch(
        gpu,
        &KernelCall {
            shader: Shader::Activation,
            entry,
            params: bytemuck::bytes_of(&params),
            bindings: &[
                (in1, Access::Read),
                (in2, Access::Read),
                (out, Access::ReadWrite),
            ],
            workgroups: grid_1d(gpu, entry, out.numel())?,
            constants: &[],
        },
    )
}

/// y = act(x), elementwise; x and y have the same number of elements.
pub fn activation_forward(gpu: &Gpu, act: Activation, x: &Tensor, y: &Tensor) -> Result<Dispatch> {
    let entry = match act {
        Activation::Relu => "relu_forward",
        Activation::Sigmoid => "sigmoid_forward",
    };
    call(gpu, entry, x, x, y)
}

/// dx = dy * act'(x), written in terms of the forward output y.
pub fn activation_backward(
    gpu: &Gpu,
    act: Activation,
    dy: &Tensor,
    y: &Tensor,
    dx: &Tensor,
) -> Result<Dispatch> {
    let entry = match act {
        Activation::Relu => "relu_backward",
        Activation::Sigmoid => "sigmoid_backward",
    };
    call(gpu, entry, dy, y, dx)
}

pub fn activation_forward_ref(act: Activation, x: &[f64]) -> Vec<f64> {
    x.iter()
        .map(|&v| match act {
            Activation::Relu => v.max(0.0),
            Activation::Sigmoid => 1.0 / (1.0 + (-v).exp()),
        })
        .collect()
}

pub fn activation_backward_ref(act: Activation, dy: &[f64], y: &[f64]) -> Vec<f64> {
    dy.iter()
        .zip(y)
        .map(|(&g, &y)| match act {
            Activation::Relu => {
                if y > 0.0 {
                    g
                } else {
                    0.0
                }
            }
            Activation::Sigmoid => g * y * (1.0 - y),
        })
        .collect()
}

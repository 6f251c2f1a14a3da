//! Optimizer updates over one flat parameter buffer: shaders/optim.wgsl, its wrappers and
//! references. N = number of parameters.

use bytemuck::{Pod, Zeroable};

use super::{dispatch, grid_1d, Dispatch, KernelCall, Shader};
use crate::gpu::{Access, Gpu};
use crate::tensor::Tensor;
use crate::{Error, Result};

/// Optimizer hyper-parameters (Keras defaults through [`Optimizer::adam`]).
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Optimizer {
    Adam {
        lr: f32,
        beta1: f32,
        beta2: f32,
        epsilon: f32,
    },
    Sgd {
        lr: f32,
        momentum: f32,
    },
}

impl Optimizer {
    pub fn adam(lr: f32) -> Self {
        Optimizer::Adam {
            lr,
            beta1: 0.9,
            beta2: 0.999,
            epsilon: 1e-7,
        }
    }

    pub fn sgd(lr: f32, momentum: f32) -> Self {
        Optimizer::Sgd { lr, momentum }
    }
}

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
pub struct Params {
    n: u32,
    lr: f32,
    beta1: f32,
    beta2: f32,
    epsilon: f32,
    _pad: [u32; 3],
}

/// The uniform for update number `t` (1-based): Adam folds its bias correction into the
/// step size alpha = lr * sqrt(1 - beta2^t) / (1 - beta1^t), as Keras does.
pub fn step_params(opt: &Optimizer, n: usize, t: u64) -> Params {
    match *opt {
        Optimizer::Adam {
            lr,
            beta1,
            beta2,
            epsilon,
        } => {
            let t = t as f64;
            let alpha =
                lr as f64 * (1.0 - (beta2 as f64).powf(t)).sqrt() / (1.0 - (beta1 as f64).powf(t));
            Params {
                n: n as u32,
                lr: alpha as f32,
                beta1,
                beta2,
                epsilon,
                _pad: [0; 3],
            }
        }
        Optimizer::Sgd { lr, momentum } => Params {
            n: n as u32,
            lr,
            beta1: momentum,
            beta2: 0.0,
            epsilon: 0.0,
            _pad: [0; 3],
        },
    }
}

/// The update of `param` by `grad` with optimizer state `m`, `v` (all [N]). The uniform is
/// that of step 1; rewrite `Dispatch::params` with [`step_params`] before each step.
pub fn optimizer_step(
    gpu: &Gpu,
    opt: &Optimizer,
    grad: &Tensor,
    param: &Tensor,
    m: &Tensor,
    v: &Tensor,
) -> Result<Dispatch> {
    let n = param.numel();
    for (name, t) in [("grad", grad), ("m", m), ("v", v)] {
        if t.numel() != n {
            return Err(Error::shape(
                "optimizer",
                format!("{name} has {} elements, param {n}", t.numel()),
            ));
        }
    }
    let entry = match opt {
        Optimizer::Adam { .. } => "adam",
        Optimizer::Sgd { .. } => "sgd",
    };
    dispatch(
        gpu,
        &KernelCall {
            shader: Shader::Optim,
            entry,
            params: bytemuck::bytes_of(&step_params(opt, n, 1)),
            bindings: &[
                (grad, Access::Read),
                (param, Access::ReadWrite),
                (m, Access::ReadWrite),
                (v, Access::ReadWrite),
            ],
            workgroups: grid_1d(gpu, entry, n)?,
            constants: &[],
        },
    )
}

/// Reference update number `t` (1-based), in place.
pub fn optimizer_step_ref(
    opt: &Optimizer,
    t: u64,
    grad: &[f64],
    param: &mut [f64],
    m: &mut [f64],
    v: &mut [f64],
) {
    for i in 0..param.len() {
        let g = grad[i];
        match *opt {
            Optimizer::Adam {
                lr,
                beta1,
                beta2,
                epsilon,
            } => {
                let (b1, b2) = (beta1 as f64, beta2 as f64);
                let alpha =
                    lr as f64 * (1.0 - b2.powf(t as f64)).sqrt() / (1.0 - b1.powf(t as f64));
                m[i] += (g - m[i]) * (1.0 - b1);
                v[i] += (g * g - v[i]) * (1.0 - b2);
                param[i] -= alpha * m[i] / (v[i].sqrt() + epsilon as f64);
            }
            Optimizer::Sgd { lr, momentum } => {
                m[i] = momentum as f64 * m[i] - lr as f64 * g;
                param[i] += m[i];
            }
        }
    }
}

//! Optimizer updates over one flat parameter buffer, and the global gradient norm that
//! clipping reads: shaders/optim.wgsl, its wrappers and references. N = number of
//! parameters (flat, padding included).

use bytemuck::{Pod, Zeroable};
use serde_json::{json, Value};

use super::{dispatch, grid_1d, Dispatch, KernelCall, Shader, LOOP_BUDGET};
use crate::gpu::{Access, Gpu};
use crate::schedule::Schedule;
use crate::tensor::Tensor;
use crate::{Error, Result};

/// The update rule and its own hyper-parameters.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Rule {
    Adam {
        beta1: f32,
        beta2: f32,
        epsilon: f32,
    },
    /// Keras momentum (velocity = -lr * PyTorch's momentum buffer); `nesterov` as
    /// PyTorch's `SGD(nesterov=True)`.
    Sgd { momentum: f32, nesterov: bool },
}

/// Optimizer settings: the rule, the base rate and its schedule, decoupled weight decay
/// (AdamW: `p -= lr * weight_decay * p` before the update) and clipping of the gradient by
/// its global norm (as `torch.nn.utils.clip_grad_norm_`). Keras defaults through
/// [`Optimizer::adam`].
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Optimizer {
    pub rule: Rule,
    pub lr: f32,
    pub schedule: Schedule,
    /// 0 for none.
    pub weight_decay: f32,
    pub clip_norm: Option<f32>,
}

impl Optimizer {
    fn with_rule(rule: Rule, lr: f32) -> Self {
        Optimizer {
            rule,
            lr,
            schedule: Schedule::CONSTANT,
            weight_decay: 0.0,
            clip_norm: None,
        }
    }

    pub fn adam(lr: f32) -> Self {
        Self::with_rule(
            Rule::Adam {
                beta1: 0.9,
                beta2: 0.999,
                epsilon: 1e-7,
            },
            lr,
        )
    }

    /// Adam with decoupled weight decay (PyTorch's AdamW; its default decay is 0.01).
    pub fn adamw(lr: f32, weight_decay: f32) -> Self {
        Optimizer {
            weight_decay,
            ..Self::adam(lr)
        }
    }

    pub fn sgd(lr: f32, momentum: f32) -> Self {
        Self::with_rule(
            Rule::Sgd {
                momentum,
                nesterov: false,
            },
            lr,
        )
    }

    pub fn nesterov(lr: f32, momentum: f32) -> Self {
        Self::with_rule(
            Rule::Sgd {
                momentum,
                nesterov: true,
            },
            lr,
        )
    }

    pub fn with_schedule(self, schedule: Schedule) -> Self {
        Optimizer { schedule, ..self }
    }

    pub fn with_clip_norm(self, clip_norm: Option<f32>) -> Self {
        Optimizer { clip_norm, ..self }
    }

    /// `adam`, `adamw` (Adam with weight decay) or `sgd`.
    pub fn name(&self) -> &'static str {
        match self.rule {
            Rule::Adam { .. } if self.weight_decay != 0.0 => "adamw",
            Rule::Adam { .. } => "adam",
            Rule::Sgd { .. } => "sgd",
        }
    }

    /// The scheduled rate of update `t` (1-based).
    pub fn lr_at(&self, t: u64) -> f64 {
        self.schedule.lr(self.lr as f64, t.saturating_sub(1))
    }

    /// As a checkpoint's `optimizer` metadata holds it.
    pub fn to_json(&self) -> Value {
        let mut v = match self.rule {
            Rule::Adam {
                beta1,
                beta2,
                epsilon,
            } => json!({
                "name": self.name(), "lr": short(self.lr), "beta1": short(beta1),
                "beta2": short(beta2), "epsilon": short(epsilon)
            }),
            Rule::Sgd { momentum, nesterov } => json!({
                "name": "sgd", "lr": short(self.lr), "momentum": short(momentum),
                "nesterov": nesterov
            }),
        };
        v["weight_decay"] = short(self.weight_decay);
        v["clip_norm"] = self.clip_norm.map_or(Value::Null, short);
        v["schedule"] = self.schedule.to_json();
        v
    }

    /// The inverse of [`Optimizer::to_json`]. Fields added after the first format
    /// (`weight_decay`, `nesterov`, `clip_norm`, `schedule`) default to none, so older
    /// checkpoints load as they were written.
    pub fn from_json(v: &Value) -> Option<Optimizer> {
        let f = |k: &str| v.get(k).and_then(Value::as_f64).map(|x| x as f32);
        let absent = |k: &str| v.get(k).is_none_or(Value::is_null);
        let rule = match v.get("name")?.as_str()? {
            "adam" | "adamw" => Rule::Adam {
                beta1: f("beta1")?,
                beta2: f("beta2")?,
                epsilon: f("epsilon")?,
            },
            "sgd" => Rule::Sgd {
                momentum: f("momentum")?,
                nesterov: match v.get("nesterov") {
                    None | Some(Value::Null) => false,
                    Some(b) => b.as_bool()?,
                },
            },
            _ => return None,
        };
        Some(Optimizer {
            rule,
            lr: f("lr")?,
            weight_decay: if absent("weight_decay") {
                0.0
            } else {
                f("weight_decay")?
            },
            clip_norm: if absent("clip_norm") {
                None
            } else {
                Some(f("clip_norm")?)
            },
            schedule: if absent("schedule") {
                Schedule::CONSTANT
            } else {
                Schedule::from_json(&v["schedule"])?
            },
        })
    }
}

/// f32 as the shortest decimal that reads back as the same f32 (0.001, not 0.0010000000474).
fn short(x: f32) -> Value {
    x.to_string()
        .parse::<f64>()
        .map(Value::from)
        .unwrap_or(Value::from(x as f64))
}

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
pub struct Params {
    n: u32,
    lr: f32,
    beta1: f32,
    beta2: f32,
    epsilon: f32,
    decay: f32,
    clip: f32,
    per_thread: u32,
}

/// Elements each invocation of the first norm pass sums.
const PER_THREAD: u32 = 16;
const WG: usize = 256;

/// The uniform for update number `t` (1-based): the scheduled rate, and Adam's bias
/// correction folded into the step size alpha = lr * sqrt(1 - beta2^t) / (1 - beta1^t),
/// as Keras does; the decay factor 1 - lr * weight_decay.
pub fn step_params(opt: &Optimizer, n: usize, t: u64) -> Params {
    let lr = opt.lr_at(t);
    let (rate, beta1, beta2, epsilon) = match opt.rule {
        Rule::Adam {
            beta1,
            beta2,
            epsilon,
        } => {
            let tf = t as f64;
            let alpha =
                lr * (1.0 - (beta2 as f64).powf(tf)).sqrt() / (1.0 - (beta1 as f64).powf(tf));
            (alpha as f32, beta1, beta2, epsilon)
        }
        Rule::Sgd { momentum, .. } => (lr as f32, momentum, 0.0, 0.0),
    };
    Params {
        n: n as u32,
        lr: rate,
        beta1,
        beta2,
        epsilon,
        decay: (1.0 - lr * opt.weight_decay as f64) as f32,
        clip: opt.clip_norm.unwrap_or(0.0),
        per_thread: PER_THREAD,
    }
}

/// Workgroups of the first norm pass over `n` gradients (the partial sums it writes).
pub fn norm_groups(n: usize) -> usize {
    n.div_ceil(WG * PER_THREAD as usize).max(1)
}

/// The buffer the norm passes write: `[0]` the sum of squares, then one partial sum per
/// workgroup of the first pass.
pub fn norm_buffer(gpu: &Gpu, n: usize) -> Result<Tensor> {
    Tensor::zeros(gpu, "gradient norm", &[1 + norm_groups(n)])
}

fn check_state(op: &str, grad: &Tensor, param: &Tensor, m: &Tensor, v: &Tensor) -> Result<()> {
    let n = param.numel();
    for (name, t) in [("grad", grad), ("m", m), ("v", v)] {
        if t.numel() != n {
            return Err(Error::shape(
                op,
                format!(
                    "{name} has {} elements, param {n}; all four must be the same flat size",
                    t.numel()
                ),
            ));
        }
    }
    Ok(())
}

/// The update of `param` by `grad` with optimizer state `m`, `v` (all `[N]`); with
/// `opt.clip_norm`, `norm` ([`norm_buffer`]) must hold the sum of squares of `grad`
/// ([`grad_sumsq`] writes it). The uniform is that of step 1; rewrite `Dispatch::params`
/// with [`step_params`] before each step.
pub fn optimizer_update(
    gpu: &Gpu,
    opt: &Optimizer,
    grad: &Tensor,
    param: &Tensor,
    m: &Tensor,
    v: &Tensor,
    norm: &Tensor,
) -> Result<Dispatch> {
    check_state("optimizer", grad, param, m, v)?;
    let n = param.numel();
    let (entry, nesterov) = match opt.rule {
        Rule::Adam { .. } => ("adam", false),
        Rule::Sgd { nesterov, .. } => ("sgd", nesterov),
    };
    let flag = |b: bool| if b { 1.0 } else { 0.0 };
    let mut constants = vec![
        ("DECAY", flag(opt.weight_decay != 0.0)),
        ("CLIP", flag(opt.clip_norm.is_some())),
    ];
    if entry == "sgd" {
        constants.push(("NESTEROV", flag(nesterov)));
    }
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
                (norm, Access::ReadWrite),
            ],
            workgroups: grid_1d(gpu, entry, n)?,
            constants: &constants,
        },
    )
}

/// The two passes that leave sum(grad^2) in `norm[0]` (fixed order, no atomics). They
/// bind the same buffers as the update (param, m, v untouched).
pub fn grad_sumsq(
    gpu: &Gpu,
    grad: &Tensor,
    param: &Tensor,
    m: &Tensor,
    v: &Tensor,
    norm: &Tensor,
) -> Result<[Dispatch; 2]> {
    check_state("gradient norm", grad, param, m, v)?;
    let n = grad.numel();
    let groups = norm_groups(n);
    if norm.numel() < 1 + groups {
        return Err(Error::shape(
            "gradient norm",
            format!(
                "norm buffer has {} elements, {n} gradients need {}; use norm_buffer",
                norm.numel(),
                1 + groups
            ),
        ));
    }
    if groups.div_ceil(WG) > LOOP_BUDGET {
        return Err(Error::Limit {
            op: "gradient norm".into(),
            what: "loop iterations of the final norm pass".into(),
            requested: groups.div_ceil(WG) as u64,
            limit: LOOP_BUDGET as u64,
            hint: "a model this large needs a third pass".into(),
        });
    }
    let params = Params {
        n: n as u32,
        per_thread: PER_THREAD,
        ..Params::zeroed()
    };
    let bindings = [
        (grad, Access::Read),
        (param, Access::ReadWrite),
        (m, Access::ReadWrite),
        (v, Access::ReadWrite),
        (norm, Access::ReadWrite),
    ];
    let call = |entry, workgroups| KernelCall {
        shader: Shader::Optim,
        entry,
        params: bytemuck::bytes_of(&params),
        bindings: &bindings,
        workgroups,
        constants: &[],
    };
    Ok([
        dispatch(gpu, &call("grad_sumsq_partial", [groups as u32, 1, 1]))?,
        dispatch(gpu, &call("grad_sumsq_final", [1, 1, 1]))?,
    ])
}

/// Everything a training step runs after the backward pass: the norm passes when clipping,
/// then the update (always last).
pub fn optimizer_dispatches(
    gpu: &Gpu,
    opt: &Optimizer,
    grad: &Tensor,
    param: &Tensor,
    m: &Tensor,
    v: &Tensor,
) -> Result<Vec<Dispatch>> {
    let norm = norm_buffer(gpu, grad.numel())?;
    let mut d = Vec::new();
    if opt.clip_norm.is_some() {
        d.extend(grad_sumsq(gpu, grad, param, m, v, &norm)?);
    }
    d.push(optimizer_update(gpu, opt, grad, param, m, v, &norm)?);
    Ok(d)
}

/// [`optimizer_update`] without clipping (a norm buffer of its own).
pub fn optimizer_step(
    gpu: &Gpu,
    opt: &Optimizer,
    grad: &Tensor,
    param: &Tensor,
    m: &Tensor,
    v: &Tensor,
) -> Result<Dispatch> {
    if opt.clip_norm.is_some() {
        return Err(Error::usage(
            "optimizer_step",
            "clipping needs the norm passes: use optimizer_dispatches",
        ));
    }
    let norm = norm_buffer(gpu, 1)?;
    optimizer_update(gpu, opt, grad, param, m, v, &norm)
}

/// Reference sum of squares, in f64.
pub fn grad_sumsq_ref(grad: &[f64]) -> f64 {
    grad.iter().map(|g| g * g).sum()
}

/// Reference update number `t` (1-based), in place, with the schedule, weight decay and
/// clipping of `opt` (the norm from `grad` itself).
pub fn optimizer_step_ref(
    opt: &Optimizer,
    t: u64,
    grad: &[f64],
    param: &mut [f64],
    m: &mut [f64],
    v: &mut [f64],
) {
    let lr = opt.lr_at(t);
    let scale = opt.clip_norm.map_or(1.0, |c| {
        (c as f64 / (grad_sumsq_ref(grad).sqrt() + 1e-6)).min(1.0)
    });
    let decay = 1.0 - lr * opt.weight_decay as f64;
    for i in 0..param.len() {
        let g = grad[i] * scale;
        param[i] *= decay;
        match opt.rule {
            Rule::Adam {
                beta1,
                beta2,
                epsilon,
            } => {
                let (b1, b2) = (beta1 as f64, beta2 as f64);
                let alpha = lr * (1.0 - b2.powf(t as f64)).sqrt() / (1.0 - b1.powf(t as f64));
                m[i] += (g - m[i]) * (1.0 - b1);
                v[i] += (g * g - v[i]) * (1.0 - b2);
                param[i] -= alpha * m[i] / (v[i].sqrt() + epsilon as f64);
            }
            Rule::Sgd { momentum, nesterov } => {
                let mu = momentum as f64;
                m[i] = mu * m[i] - lr * g;
                param[i] += if nesterov { mu * m[i] - lr * g } else { m[i] };
            }
        }
    }
}

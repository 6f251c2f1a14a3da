//! The functional graph API, part 2: the layer-level ops (matmul, conv, pools, dropout,
//! state assignment, the fused losses), each shape-checked like part 1 (ops.rs).
//!
//! Shapes: B = batch, C = channels, H, W = height, width, M, N, K = matmul dims.

use super::ir::*;
use super::ops::shape_err;
use crate::kernels::conv2d::Padding;
use crate::kernels::loss::Loss;
use crate::{Error, Result};

/// Output size of a convolution or pool along one axis.
pub fn conv_out(size: usize, k: usize, stride: usize, padding: Padding) -> Option<usize> {
    match padding {
        Padding::Same => Some(size.div_ceil(stride)),
        Padding::Valid => size.checked_sub(k).map(|d| d / stride + 1),
    }
}

/// The output shape of a pool over `x` `[B, C, H, W]` (valid windows).
fn pool_out(op: &str, s: &[usize], pool: usize, stride: usize) -> Result<Vec<usize>> {
    let [b, c, h, w] = <[usize; 4]>::try_from(s)
        .map_err(|_| shape_err(op, format!("x {s:?} is not [B, C, H, W]")))?;
    if pool == 0 || stride == 0 || pool > h || pool > w {
        return Err(shape_err(
            op,
            format!("window {pool} stride {stride} on input {h}x{w}"),
        ));
    }
    Ok(vec![b, c, (h - pool) / stride + 1, (w - pool) / stride + 1])
}

/// The matmul's `[batch, M, N, K]` from its operand shapes, or an error naming both.
pub fn matmul_dims(a: &[usize], b: &[usize], t: MatMulAttrs) -> Result<[usize; 4]> {
    let err = || {
        shape_err(
            "matmul",
            format!("A {a:?} (transposed: {}) and B {b:?} (transposed: {}) do not multiply; hint: A is [M, K] or [batch, M, K], B [K, N] or [batch, K, N]", t.ta, t.tb),
        )
    };
    let (batch, a2) = match a.len() {
        2 => (1, [a[0], a[1]]),
        3 => (a[0], [a[1], a[2]]),
        _ => return Err(err()),
    };
    let b2 = match b.len() {
        2 => [b[0], b[1]],
        3 if b[0] == batch => [b[1], b[2]],
        _ => return Err(err()),
    };
    let (m, k) = if t.ta { (a2[1], a2[0]) } else { (a2[0], a2[1]) };
    let (k2, n) = if t.tb { (b2[1], b2[0]) } else { (b2[0], b2[1]) };
    if k != k2 || m * n * k == 0 {
        return Err(err());
    }
    Ok([batch, m, n, k])
}

impl Graph {
    /// op(a) · op(b): `[M, K]` x `[K, N]` -> `[M, N]`, or batched over a leading axis (b may be
    /// shared by the batch when it has rank 2).
    pub fn matmul(&mut self, a: Id, b: Id, ta: bool, tb: bool) -> Result<Id> {
        let t = MatMulAttrs {
            ta,
            tb,
            ..Default::default()
        };
        let [batch, m, n, _] = matmul_dims(self.shape(a), self.shape(b), t)?;
        let out = if self.shape(a).len() == 3 {
            vec![batch, m, n]
        } else {
            vec![m, n]
        };
        Ok(self.push(Op::MatMul(t), vec![a, b], out, DType::F32))
    }

    /// x `[B, CI, H, W]` conv w `[CO, CI, KH, KW]` -> `[B, CO, OH, OW]` (no bias: add one).
    pub fn conv2d(&mut self, x: Id, w: Id, stride: usize, padding: Padding) -> Result<Id> {
        let (xs, ws) = (self.shape(x).to_vec(), self.shape(w).to_vec());
        let err = |why: &str| {
            shape_err(
                "conv2d",
                format!("x {xs:?} and weight {ws:?}: {why}; hint: x is [B, C_in, H, W], weight [C_out, C_in, KH, KW]"),
            )
        };
        let [b, ci, h, wd] =
            <[usize; 4]>::try_from(xs.as_slice()).map_err(|_| err("rank is not 4"))?;
        let [co, ci2, kh, kw] =
            <[usize; 4]>::try_from(ws.as_slice()).map_err(|_| err("rank is not 4"))?;
        if ci != ci2 || stride == 0 {
            return Err(err("input channels differ or stride is 0"));
        }
        let (Some(oh), Some(ow)) = (
            conv_out(h, kh, stride, padding),
            conv_out(wd, kw, stride, padding),
        ) else {
            return Err(err("kernel larger than the input"));
        };
        let attrs = ConvAttrs {
            stride,
            padding,
            bias: false,
            relu: false,
        };
        Ok(self.push(
            Op::Conv2d(attrs),
            vec![x, w],
            vec![b, co, oh, ow],
            DType::F32,
        ))
    }

    /// Max pool over `pool` x `pool` windows every `stride`: `[B, C, H, W]` -> `[B, C, OH, OW]`.
    pub fn max_pool2d(&mut self, x: Id, pool: usize, stride: usize) -> Result<Id> {
        let s = self.shape(x).to_vec();
        let [b, c, h, w] = <[usize; 4]>::try_from(s.as_slice())
            .map_err(|_| shape_err("max_pool2d", format!("x {s:?} is not [B, C, H, W]")))?;
        if pool == 0 || stride == 0 || pool > h || pool > w {
            return Err(shape_err(
                "max_pool2d",
                format!("window {pool} stride {stride} on input {h}x{w}"),
            ));
        }
        let out = vec![b, c, (h - pool) / stride + 1, (w - pool) / stride + 1];
        let aux = vec![(out.clone(), DType::U32)];
        let attrs = PoolAttrs { pool, stride };
        Ok(self.push_with_aux(Op::MaxPool2d(attrs), vec![x], out, DType::F32, aux))
    }

    /// Mean over `pool` x `pool` windows every `stride`: `[B, C, H, W]` -> `[B, C, OH, OW]`.
    pub fn avg_pool2d(&mut self, x: Id, pool: usize, stride: usize) -> Result<Id> {
        let out = pool_out("avg_pool2d", self.shape(x), pool, stride)?;
        let attrs = PoolAttrs { pool, stride };
        Ok(self.push(Op::AvgPool2d(attrs), vec![x], out, DType::F32))
    }

    /// Mean over H and W: `[B, C, H, W]` -> `[B, C]`.
    pub fn global_avg_pool(&mut self, x: Id) -> Result<Id> {
        if self.shape(x).len() != 4 {
            let s = self.shape(x).to_vec();
            return Err(shape_err(
                "global_avg_pool",
                format!("x {s:?} is not [B, C, H, W]"),
            ));
        }
        self.mean(x, &[2, 3])
    }

    /// Write `value` into the state leaf `state` (a non-trainable parameter) as the step's
    /// last use of it; kept live as an output.
    pub fn assign(&mut self, state: Id, value: Id) -> Result<Id> {
        let ok = matches!(self.node(state).op, Op::Param(i) if !self.params[i].trainable);
        if !ok || self.shape(state) != self.shape(value) {
            return Err(shape_err(
                "assign",
                format!("state {:?} ({:?}) and value {:?}: expected a non-trainable parameter of the value's shape", self.shape(state), self.node(state).op, self.shape(value)),
            ));
        }
        let shape = self.shape(value).to_vec();
        let id = self.push(Op::Assign, vec![state, value], shape, DType::F32);
        self.mark_output(id);
        Ok(id)
    }

    /// Inverted dropout with probability `p` in training graphs, the identity otherwise.
    /// Each dropout of a graph draws its own mask (keyed by its position), afresh each step.
    pub fn dropout(&mut self, x: Id, p: f32) -> Result<Id> {
        if !(0.0..1.0).contains(&p) {
            return Err(Error::usage(
                "dropout",
                format!("p = {p} must lie in [0, 1)"),
            ));
        }
        if !self.training || p == 0.0 {
            return Ok(x);
        }
        let salt = self
            .nodes
            .iter()
            .filter(|n| matches!(n.op, Op::Dropout { .. }))
            .count() as u32;
        let shape = self.shape(x).to_vec();
        let aux = vec![(shape.clone(), DType::F32)];
        Ok(self.push_with_aux(Op::Dropout { p, salt }, vec![x], shape, DType::F32, aux))
    }

    /// Batch normalisation of x `[B, C, ...]` over every axis but 1, with gamma and beta `[C]`
    /// (PyTorch's `BatchNorm1d/2d` in training mode): the batch's statistics, which
    /// `aux(y, 0)` (mean) and `aux(y, 1)` (biased variance) give.
    pub fn batch_norm_train(&mut self, x: Id, gamma: Id, beta: Id, eps: f32) -> Result<Id> {
        let c = self.batch_norm_channels(x, &[gamma, beta], eps)?;
        let stats = vec![(vec![c], DType::F32), (vec![c], DType::F32)];
        let op = Op::BatchNorm {
            eps,
            relu: false,
            training: true,
        };
        let shape = self.shape(x).to_vec();
        Ok(self.push_with_aux(op, vec![x, gamma, beta], shape, DType::F32, stats))
    }

    /// Batch normalisation with given statistics mean and var `[C]` (evaluation mode).
    pub fn batch_norm_eval(
        &mut self,
        x: Id,
        [gamma, beta, mean, var]: [Id; 4],
        eps: f32,
    ) -> Result<Id> {
        self.batch_norm_channels(x, &[gamma, beta, mean, var], eps)?;
        let op = Op::BatchNorm {
            eps,
            relu: false,
            training: false,
        };
        let shape = self.shape(x).to_vec();
        Ok(self.push(op, vec![x, gamma, beta, mean, var], shape, DType::F32))
    }

    /// C of x `[B, C, ...]`, checking that every per-channel operand is `[C]` and eps is sane.
    fn batch_norm_channels(&self, x: Id, per_channel: &[Id], eps: f32) -> Result<usize> {
        let s = self.shape(x).to_vec();
        let c = s.get(1).copied().unwrap_or(0);
        let ok = s.len() >= 2
            && numel(&s) > 0
            && per_channel.iter().all(|&p| self.shape(p) == [c])
            && eps >= 0.0
            && eps.is_finite();
        if !ok {
            let ps: Vec<Vec<usize>> = per_channel
                .iter()
                .map(|&p| self.shape(p).to_vec())
                .collect();
            return Err(shape_err(
                "batch_norm",
                format!("x {s:?}, per-channel operands {ps:?}, eps {eps}; hint: x is [B, C] or [B, C, H, W] and gamma, beta, mean, var are [C]"),
            ));
        }
        Ok(c)
    }

    /// Per-sample loss `[B]` of outputs z `[B, C]` against labels (u32 `[B]`) or targets
    /// (f32 `[B, C]`); `aux(loss, 0)` holds the probabilities (or predictions) `[B, C]`.
    pub fn loss(&mut self, kind: Loss, z: Id, target: Id) -> Result<Id> {
        let zs = self.shape(z).to_vec();
        let ts = self.shape(target).to_vec();
        let ok = match kind {
            Loss::MeanSquaredError => zs.len() == 2 && ts == zs,
            Loss::SoftmaxCrossEntropy => zs.len() == 2 && ts == [zs[0]],
            Loss::SigmoidBinaryCrossEntropy => zs.len() == 2 && zs[1] == 1 && ts == [zs[0]],
        };
        if !ok {
            return Err(shape_err(
                &format!("{kind:?}"),
                format!("outputs {zs:?} and targets {ts:?}; hint: outputs are [B, C], class labels [B], regression targets [B, C]"),
            ));
        }
        let aux = vec![(zs.clone(), DType::F32)];
        Ok(self.push_with_aux(
            Op::Loss(kind),
            vec![z, target],
            vec![zs[0]],
            DType::F32,
            aux,
        ))
    }
}

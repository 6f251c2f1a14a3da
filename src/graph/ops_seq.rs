//! The functional graph API, part 3: the sequence-model ops (embedding lookup, row
//! softmax with an optional causal mask, layer norm), shape-checked like parts 1 and 2.
//!
//! Shapes: N = tokens, V = vocabulary, D = width, T = context, C = the last axis.

use super::ir::*;
use super::ops::shape_err;
use crate::Result;

impl Graph {
    /// table `[V, D]` at idx (u32, any shape) -> `[idx.., D]`.
    pub fn embedding(&mut self, table: Id, idx: Id) -> Result<Id> {
        let (ts, is) = (self.shape(table).to_vec(), self.shape(idx).to_vec());
        let ok = ts.len() == 2
            && numel(&ts) > 0
            && self.node(idx).dtype == DType::U32
            && self.node(table).dtype == DType::F32
            && numel(&is) > 0;
        if !ok {
            return Err(shape_err(
                "embedding",
                format!("table {ts:?} and indices {is:?}; hint: the table is f32 [V, D] and the indices u32 of any non-empty shape"),
            ));
        }
        let mut shape = is;
        shape.push(ts[1]);
        Ok(self.push(Op::Embedding, vec![table, idx], shape, DType::F32))
    }

    /// Softmax over the last axis. `causal` = Some(T) views x as `[.., T, C]` and masks
    /// columns j > t of query row t (attention scores `[B, H, T, T]`).
    pub fn softmax(&mut self, x: Id, causal: Option<usize>) -> Result<Id> {
        let s = self.shape(x).to_vec();
        let t = causal.unwrap_or(0);
        let rows_ok = match causal {
            Some(t) => s.len() >= 2 && s[s.len() - 2] == t && t > 0,
            None => !s.is_empty(),
        };
        if !rows_ok || numel(&s) == 0 || self.node(x).dtype != DType::F32 {
            return Err(shape_err(
                "softmax",
                format!("x {s:?} with causal period {t}; hint: x is f32 [.., C], and with a causal mask [.., T, C] (T = its period)"),
            ));
        }
        Ok(self.push(Op::Softmax { causal: t }, vec![x], s, DType::F32))
    }

    /// Layer norm over the last axis: (x - mean) / sqrt(var + eps) * gamma + beta, with
    /// gamma and beta `[C]` (PyTorch's `nn.LayerNorm(C)`).
    pub fn layer_norm(&mut self, x: Id, gamma: Id, beta: Id, eps: f32) -> Result<Id> {
        let s = self.shape(x).to_vec();
        let c = s.last().copied().unwrap_or(0);
        let (gs, bs) = (self.shape(gamma).to_vec(), self.shape(beta).to_vec());
        if c == 0 || gs != [c] || bs != [c] || !(eps >= 0.0 && eps.is_finite()) {
            return Err(shape_err(
                "layer_norm",
                format!("x {s:?}, gamma {gs:?}, beta {bs:?}, eps {eps}; hint: gamma and beta are [C], C the last axis of x"),
            ));
        }
        let rows = numel(&s) / c;
        let stats = vec![(vec![rows], DType::F32), (vec![rows], DType::F32)];
        Ok(self.push_with_aux(
            Op::LayerNorm { eps },
            vec![x, gamma, beta],
            s,
            DType::F32,
            stats,
        ))
    }
}

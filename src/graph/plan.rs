//! The memory plan: which buffer holds each value of a step.
//!
//! Values are the nodes' outputs and aux outputs; aliases (reshape, aux) share their
//! source's buffer. Leaves and pinned values (parameters, their gradients) live in buffers
//! the caller owns; inputs and outputs get buffers of their own. Every other value is
//! transient: it lives from the node that writes it to the last node that reads it (in the
//! graph's order, which is the schedule), and values whose lifetimes do not overlap share a
//! slot, greedily by size, largest first (ratchet; arXiv 2001.03288). Each slot is its own
//! `wgpu::Buffer`: WebGPU forbids binding one buffer both read-only and read-write in a
//! dispatch, even at different offsets. `SHADERGRAD_NO_REUSE=1` gives every value its own
//! slot, for A/B checks.

use super::ir::*;

/// Environment switch: no slot sharing.
pub const NO_REUSE_ENV: &str = "SHADERGRAD_NO_REUSE";

/// Where a value lives.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Home {
    /// Owned by the caller (parameters, pinned gradients) or never stored (constants).
    External,
    /// A buffer of its own, kept past the step (inputs, outputs).
    Own,
    /// Transient slot `s`.
    Slot(usize),
}

#[derive(Clone, Debug)]
pub struct MemoryPlan {
    /// Home of each (node, tensor) with storage: tensor 0 = the value, k + 1 = aux k.
    pub homes: Vec<Vec<Home>>,
    /// Bytes of each slot.
    pub slot_bytes: Vec<u64>,
    /// Bytes of the transient values if each had its own buffer.
    pub naive_bytes: u64,
}

impl MemoryPlan {
    pub fn planned_bytes(&self) -> u64 {
        self.slot_bytes.iter().sum()
    }
}

struct Value {
    node: usize,
    tensor: usize,
    bytes: u64,
    first: usize,
    last: usize,
}

fn tensor_bytes(n: &Node, t: usize) -> u64 {
    let shape = if t == 0 { &n.shape } else { &n.aux[t - 1].0 };
    numel(shape) as u64 * 4
}

/// Plan `g` (already sorted and fused). `pinned(id, tensor)` says which values the caller
/// owns.
pub fn plan(g: &Graph, pinned: &dyn Fn(Id, usize) -> bool, reuse: bool) -> MemoryPlan {
    let n = g.len();
    let mut homes: Vec<Vec<Home>> = g
        .nodes
        .iter()
        .map(|node| vec![Home::External; 1 + node.aux.len()])
        .collect();
    // Last reader of each storage node (aliases resolved).
    let mut last = vec![0; n];
    for (i, node) in g.nodes.iter().enumerate() {
        last[i] = last[i].max(i);
        for &x in &node.inputs {
            let (s, _) = g.storage_of(x);
            last[s.index()] = last[s.index()].max(i);
        }
    }
    let mut values = Vec::new();
    for (i, node) in g.nodes.iter().enumerate() {
        let id = Id(i as u32);
        if node.op.is_alias() || matches!(node.op, Op::Param(_) | Op::Const(_) | Op::Assign) {
            continue;
        }
        let own =
            matches!(node.op, Op::Input(_)) || g.outputs.iter().any(|&o| g.storage_of(o).0 == id);
        for t in 0..homes[i].len() {
            if pinned(id, t) {
                continue;
            }
            if own {
                homes[i][t] = Home::Own;
                continue;
            }
            values.push(Value {
                node: i,
                tensor: t,
                bytes: tensor_bytes(node, t),
                first: i,
                last: last[i],
            });
        }
    }
    let naive_bytes = values.iter().map(|v| v.bytes).sum();
    // Greedy by size: largest first, into the first slot free over its whole lifetime.
    values.sort_by(|a, b| b.bytes.cmp(&a.bytes).then(a.node.cmp(&b.node)));
    let mut slot_bytes: Vec<u64> = Vec::new();
    let mut slot_spans: Vec<Vec<(usize, usize)>> = Vec::new();
    for v in &values {
        let free =
            |spans: &Vec<(usize, usize)>| spans.iter().all(|&(f, l)| v.last < f || l < v.first);
        let s = match (0..slot_bytes.len()).find(|&s| reuse && free(&slot_spans[s])) {
            Some(s) => s,
            None => {
                slot_bytes.push(v.bytes);
                slot_spans.push(Vec::new());
                slot_bytes.len() - 1
            }
        };
        slot_spans[s].push((v.first, v.last));
        homes[v.node][v.tensor] = Home::Slot(s);
    }
    MemoryPlan {
        homes,
        slot_bytes,
        naive_bytes,
    }
}

/// Whether slot reuse is on (`SHADERGRAD_NO_REUSE` unset or 0).
pub fn reuse_from_env() -> bool {
    std::env::var(NO_REUSE_ENV).map_or(true, |v| v.is_empty() || v == "0")
}

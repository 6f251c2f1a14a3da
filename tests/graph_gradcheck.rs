//! Finite-difference checks of every op's vector-Jacobian rule, with the op placed
//! mid-graph: loss = sum(op(params) * coef) for a random coef, so the op's incoming
//! gradient is coef, not ones, and a rule that ignores its incoming gradient fails.
//! Gradients come from the graph's autodiff run on the GPU; the reference is central
//! differences of the same compiled loss. Fused variants (dense + bias + ReLU, conv +
//! ReLU + pool, attention's matmul views) are checked the same way through the fusion
//! passes.

mod common;

use shadergrad::graph::autodiff::grad;
use shadergrad::graph::fuse::{fuse, FuseOptions};
use shadergrad::graph::session::Session;
use shadergrad::graph::{BinaryOp, DType, Graph, Id, Op, ReduceOp, UnaryOp};
use shadergrad::kernels::conv2d::Padding;
use shadergrad::kernels::loss::Loss;
use shadergrad::model::{Init, ParamSpec};
use shadergrad::rng::Rng;

const EPS: f32 = 4e-3;

/// Build `op` over parameters of `shapes`, check every gradient element.
fn check(name: &str, shapes: &[&[usize]], fused: bool, op: impl Fn(&mut Graph, &[Id]) -> Id) {
    check_with(name, shapes, fused, None, op)
}

/// Trainable parameters `p0`, `p1`, ... of the given shapes (zeros until a check writes them).
fn params(g: &mut Graph, shapes: &[&[usize]]) -> Vec<Id> {
    (shapes.iter().enumerate())
        .map(|(i, s)| {
            g.param(ParamSpec {
                name: format!("p{i}"),
                shape: s.to_vec(),
                init: Init::Zeros,
                layer: 0,
                trainable: true,
            })
        })
        .collect()
}
/// [`check`] with a u32 input `labels` (values below `classes`) for the losses.
fn check_with(
    name: &str,
    shapes: &[&[usize]],
    fused: bool,
    labels: Option<(usize, usize)>,
    op: impl Fn(&mut Graph, &[Id]) -> Id,
) {
    let Some(gpu) = common::gpu() else { return };
    let mut g = Graph::new();
    let params = params(&mut g, shapes);
    let label = labels.map(|(n, _)| g.input("label", &[n], DType::U32));
    let y = op(&mut g, &params);
    let ys = g.shape(y).to_vec();
    let coef = g.input("coef", &ys, DType::F32);
    let prod = g.mul(y, coef).unwrap();
    let axes: Vec<usize> = (0..ys.len()).collect();
    let loss = g.sum(prod, &axes).unwrap();
    let grads = grad(&mut g, loss, &params).unwrap();
    g.mark_output(loss);
    for &gr in &grads {
        g.mark_output(gr);
    }
    let s = Session::new(gpu, &g, fused).unwrap_or_else(|e| panic!("{name}: {e}"));
    let mut rng = Rng::new(7);
    let values: Vec<Vec<f32>> = shapes
        .iter()
        .map(|s| rng.uniform_vec(s.iter().product(), -1.0, 1.0))
        .collect();
    for (p, v) in params.iter().zip(&values) {
        s.write(*p, v).unwrap();
    }
    s.write(coef, &rng.uniform_vec(ys.iter().product(), -1.0, 1.0))
        .unwrap();
    if let (Some(l), Some((n, classes))) = (label, labels) {
        let l_values: Vec<u32> = (0..n).map(|i| ((i * 7 + 3) % classes) as u32).collect();
        s.write_u32(l, &l_values).unwrap();
    }
    s.run().unwrap();
    let analytic: Vec<Vec<f32>> = grads.iter().map(|&gr| s.read(gr).unwrap()).collect();
    for (pi, p) in params.iter().enumerate() {
        let mut fd = Vec::new();
        for e in 0..values[pi].len() {
            let at = |delta: f32| {
                let mut v = values[pi].clone();
                v[e] += delta;
                s.write(*p, &v).unwrap();
                s.run().unwrap();
                s.read(loss).unwrap()[0] as f64
            };
            let (plus, minus) = (at(EPS), at(-EPS));
            fd.push((plus - minus) / (2.0 * EPS as f64));
        }
        s.write(*p, &values[pi]).unwrap();
        common::assert_close(&format!("{name}: d p{pi}"), &analytic[pi], &fd, 3e-2, 3e-3);
    }
}

#[test]
fn matmul_every_layout() {
    for (ta, tb) in [(false, false), (false, true), (true, false), (true, true)] {
        let a: &[usize] = if ta { &[5, 3] } else { &[3, 5] };
        let b: &[usize] = if tb { &[4, 5] } else { &[5, 4] };
        check(
            &format!("matmul ta={ta} tb={tb}"),
            &[a, b],
            false,
            |g, p| g.matmul(p[0], p[1], ta, tb).unwrap(),
        );
    }
}

#[test]
fn batched_matmul() {
    // Per-product B, and B shared by the batch (its gradient sums over the batch).
    check("batched", &[&[3, 2, 5], &[3, 5, 4]], false, |g, p| {
        g.matmul(p[0], p[1], false, false).unwrap()
    });
    check(
        "batched, shared B^T",
        &[&[3, 2, 5], &[4, 5]],
        false,
        |g, p| g.matmul(p[0], p[1], false, true).unwrap(),
    );
    check("batched, A^T", &[&[2, 5, 3], &[2, 5, 4]], false, |g, p| {
        g.matmul(p[0], p[1], true, false).unwrap()
    });
}

/// Attention's heads (B, T, H, hd = 2, 3, 2, 2) split from qkv [B*T, 3D] = p[0], through
/// two batched matmuls, merged back and through a dense layer p[1] [D, 3].
fn attention_heads(g: &mut Graph, p: &[Id]) -> Id {
    let (b, t, h, hd) = (2, 3, 2, 2);
    let d = h * hd;
    let qkv = g.reshape(p[0], &[b, t, 3, h, hd]).unwrap();
    let qkv = g.permute(qkv, &[2, 0, 3, 1, 4]).unwrap();
    let qkv = g.reshape(qkv, &[3 * b * h, t, hd]).unwrap();
    let [q, k, v] = [0, 1, 2].map(|j| g.slice(qkv, 0, j * b * h, b * h).unwrap());
    let att = g.matmul(q, k, false, true).unwrap(); // [B*H, T, T]
    let y = g.matmul(att, v, false, false).unwrap(); // [B*H, T, hd]
    let y = g.reshape(y, &[b, h, t, hd]).unwrap();
    let y = g.permute(y, &[0, 2, 1, 3]).unwrap();
    let y = g.reshape(y, &[b * t, d]).unwrap();
    g.matmul(y, p[1], false, false).unwrap()
}

/// Attention's head split and merge mid-graph, fused: q, k, v read in place from qkv
/// through two-level batched strides, att · v written in place into [B*T, D], and dq, dk,
/// dv written into dqkv by one MatMulGroup (no pads, sum or permutes).
#[test]
fn attention_heads_fused_into_matmul_views() {
    let shapes: [&[usize]; 2] = [&[6, 12], &[4, 3]];
    // The rewrites happen: every movement op and pad is gone from the fused graph.
    let mut g = Graph::new();
    let params = params(&mut g, &shapes);
    let y = attention_heads(&mut g, &params);
    let loss = g.sum(y, &[0, 1]).unwrap();
    let grads = grad(&mut g, loss, &params).unwrap();
    g.mark_output(loss);
    grads.iter().for_each(|&d| g.mark_output(d));
    let opts = FuseOptions {
        matmul_views: true,
        ..Default::default()
    };
    fuse(&mut g, opts);
    let live = g.live_from(&g.outputs);
    let ops: Vec<&Op> = (g.nodes.iter().zip(&live))
        .filter(|(_, &l)| l)
        .map(|(n, _)| &n.op)
        .collect();
    let copies = ops
        .iter()
        .filter(|op| matches!(op, Op::Permute(_) | Op::Slice { .. } | Op::Pad { .. }));
    assert_eq!(copies.count(), 0, "movement ops left: {ops:?}");
    assert!(ops
        .iter()
        .any(|op| matches!(op, Op::MatMulGroup(ts) if ts.len() == 3)));
    check(
        "attention heads, matmul views",
        &shapes,
        true,
        attention_heads,
    );
}

#[test]
fn dense_bias_relu_fused() {
    // x W^T + b, ReLU: fused into one matmul (bias, relu) and its backward.
    check(
        "dense+bias+relu",
        &[&[3, 6], &[4, 6], &[4]],
        true,
        |g, p| {
            let y = g.matmul(p[0], p[1], false, true).unwrap();
            let y = g.add(y, p[2]).unwrap();
            g.relu(y).unwrap()
        },
    );
}

#[test]
fn conv2d_valid_and_same() {
    for padding in [Padding::Valid, Padding::Same] {
        check(
            &format!("conv2d {padding:?}"),
            &[&[2, 2, 5, 4], &[3, 2, 3, 3]],
            false,
            |g, p| g.conv2d(p[0], p[1], 1, padding).unwrap(),
        );
    }
}

#[test]
fn conv2d_strided() {
    for padding in [Padding::Valid, Padding::Same] {
        check(
            &format!("conv2d stride 2 {padding:?}"),
            &[&[2, 3, 7, 6], &[2, 3, 3, 3]],
            false,
            |g, p| g.conv2d(p[0], p[1], 2, padding).unwrap(),
        );
    }
}

#[test]
fn conv_bias_relu_pool_fused() {
    check(
        "conv+bias+relu+pool",
        &[&[2, 1, 6, 6], &[3, 1, 3, 3], &[3]],
        true,
        |g, p| {
            let y = g.conv2d(p[0], p[1], 1, Padding::Valid).unwrap();
            let b = g.reshape(p[2], &[3, 1, 1]).unwrap();
            let y = g.add(y, b).unwrap();
            let y = g.relu(y).unwrap();
            g.max_pool2d(y, 2, 2).unwrap()
        },
    );
}

#[test]
fn max_pool2d_disjoint_and_overlapping() {
    for (pool, stride) in [(2, 2), (3, 2)] {
        check(
            &format!("max_pool2d {pool}/{stride}"),
            &[&[2, 2, 5, 5]],
            false,
            |g, p| g.max_pool2d(p[0], pool, stride).unwrap(),
        );
    }
}

#[test]
fn avg_pools_and_dropout() {
    for (pool, stride) in [(2, 2), (3, 2)] {
        check(
            &format!("avg_pool2d {pool}/{stride}"),
            &[&[2, 2, 5, 5]],
            false,
            |g, p| g.avg_pool2d(p[0], pool, stride).unwrap(),
        );
    }
    check("global_avg_pool", &[&[2, 3, 4, 5]], false, |g, p| {
        g.global_avg_pool(p[0]).unwrap()
    });
    // The mask is drawn once per step (counter 0 in a session): a fixed function of x.
    check("dropout 0.5", &[&[4, 16]], false, |g, p| {
        g.dropout(p[0], 0.5).unwrap()
    });
}

#[test]
fn unary_ops() {
    let ops = [
        UnaryOp::Relu,
        UnaryOp::Sigmoid,
        UnaryOp::Tanh,
        UnaryOp::Gelu,
        UnaryOp::Exp,
        UnaryOp::Neg,
        UnaryOp::Square,
        UnaryOp::LeakyRelu(0.1),
    ];
    for op in ops {
        check(&format!("{op:?}"), &[&[3, 7]], false, |g, p| {
            g.unary(op, p[0]).unwrap()
        });
    }
    // Positive domains: x^2 + 0.5 feeds log, sqrt, rsqrt, recip.
    for op in [UnaryOp::Log, UnaryOp::Sqrt, UnaryOp::Rsqrt, UnaryOp::Recip] {
        check(&format!("{op:?}"), &[&[2, 5]], false, |g, p| {
            let sq = g.unary(UnaryOp::Square, p[0]).unwrap();
            let h = g.constant(0.5, &[]);
            let pos = g.add(sq, h).unwrap();
            g.unary(op, pos).unwrap()
        });
    }
}

#[test]
fn binary_ops_with_broadcasting() {
    for op in [BinaryOp::Add, BinaryOp::Sub, BinaryOp::Mul] {
        check(
            &format!("{op:?} [3,1,5]x[4,1]"),
            &[&[3, 1, 5], &[4, 1]],
            false,
            |g, p| g.binary(op, p[0], p[1]).unwrap(),
        );
    }
    // max away from its kink: b shifted far above, then far below, a.
    for shift in [2.0, -2.0] {
        check(
            &format!("Max shift {shift}"),
            &[&[3, 1, 5], &[4, 1]],
            false,
            |g, p| {
                let c = g.constant(shift, &[]);
                let b = g.add(p[1], c).unwrap();
                g.binary(BinaryOp::Max, p[0], b).unwrap()
            },
        );
    }
    check("div", &[&[2, 3], &[3]], false, |g, p| {
        let sq = g.unary(UnaryOp::Square, p[1]).unwrap();
        let one = g.constant(1.0, &[]);
        let pos = g.add(sq, one).unwrap();
        g.div(p[0], pos).unwrap()
    });
    check("scalar ops", &[&[2, 3]], false, |g, p| {
        let y = g.scale(p[0], 3.0).unwrap();
        let c = g.constant(0.25, &[]);
        let y = g.sub(c, y).unwrap();
        g.mul(y, p[0]).unwrap()
    });
}

#[test]
fn reductions_and_expand() {
    check("sum [1]", &[&[2, 3, 4]], false, |g, p| {
        g.sum(p[0], &[1]).unwrap()
    });
    check("sum [0, 2]", &[&[2, 3, 4]], false, |g, p| {
        g.sum(p[0], &[0, 2]).unwrap()
    });
    check("max [2]", &[&[2, 3, 4]], false, |g, p| {
        g.reduce(ReduceOp::Max, p[0], &[2]).unwrap()
    });
    check("max [0, 2]", &[&[2, 3, 4]], false, |g, p| {
        g.reduce(ReduceOp::Max, p[0], &[0, 2]).unwrap()
    });
    check("mean [0]", &[&[5, 3]], false, |g, p| {
        g.mean(p[0], &[0]).unwrap()
    });
    check("expand", &[&[3, 1]], false, |g, p| {
        g.expand(p[0], &[2, 3, 4]).unwrap()
    });
}

#[test]
fn movement_ops() {
    check("reshape", &[&[2, 6]], false, |g, p| {
        g.reshape(p[0], &[3, 4]).unwrap()
    });
    check("transpose", &[&[3, 5]], false, |g, p| {
        g.transpose(p[0]).unwrap()
    });
    check("permute", &[&[2, 3, 4]], false, |g, p| {
        g.permute(p[0], &[2, 0, 1]).unwrap()
    });
    check("slice", &[&[3, 5]], false, |g, p| {
        g.slice(p[0], 1, 1, 3).unwrap()
    });
    check("pad", &[&[3, 2]], false, |g, p| {
        g.pad(p[0], 0, 1, 5).unwrap()
    });
    check("concat", &[&[2, 3], &[2, 2]], false, |g, p| {
        g.concat(&[p[0], p[1]], 1).unwrap()
    });
    check("where", &[&[2, 4], &[2, 4]], false, |g, p| {
        let zero = g.constant(0.0, &[]);
        let mask = g.binary(BinaryOp::CmpGt, p[0], zero).unwrap();
        g.where_(mask, p[0], p[1]).unwrap()
    });
}

#[test]
fn losses_mid_graph() {
    check_with(
        "softmax cross-entropy",
        &[&[4, 5]],
        false,
        Some((4, 5)),
        |g, p| {
            let l = g.find_input("label").unwrap();
            g.loss(Loss::SoftmaxCrossEntropy, p[0], l).unwrap()
        },
    );
    check_with("sigmoid bce", &[&[4, 1]], false, Some((4, 2)), |g, p| {
        let l = g.find_input("label").unwrap();
        g.loss(Loss::SigmoidBinaryCrossEntropy, p[0], l).unwrap()
    });
    check("mse", &[&[3, 2]], false, |g, p| {
        let target = g.constant(0.3, &[3, 2]);
        g.loss(Loss::MeanSquaredError, p[0], target).unwrap()
    });
}

#[test]
fn batch_norm_training_mode() {
    use shadergrad::nn::BatchNorm;
    check("batch_norm 2d", &[&[4, 3, 2, 2]], false, |g, p| {
        BatchNorm::new(g, "bn", 3, 0).forward(g, p[0]).unwrap()
    });
    check("batch_norm 1d", &[&[5, 3]], false, |g, p| {
        BatchNorm::new(g, "bn", 3, 0).forward(g, p[0]).unwrap()
    });
    // gamma and beta checked too; then with the ReLU after it fused into the forward and
    // its mask into the backward (batchnorm.wgsl's RELU). Shapes whose values keep the
    // ReLU's kink away from the finite differences' steps ([5, 3] has an output within
    // one step of zero, fused or not).
    for (shape, relu, fused) in [
        (&[4, 3, 2, 2][..], false, false),
        (&[4, 3, 2, 2], true, true),
        (&[7, 3], true, true),
    ] {
        check(
            &format!("batch_norm {shape:?} (gamma, beta), relu {relu} fused {fused}"),
            &[shape, &[3], &[3]],
            fused,
            |g, p| {
                let y = g.batch_norm_train(p[0], p[1], p[2], 1e-5).unwrap();
                match relu {
                    true => g.relu(y).unwrap(),
                    false => y,
                }
            },
        );
    }
    // Batch norm, ReLU and a max pool fused (BatchNormPool): odd planes (the last row and
    // column belong to no window) and windows of 2 and 3. ([3, 2, 5, 5] has two values of
    // a window within a step of each other, fused or not.)
    for (shape, pool) in [(&[2, 2, 5, 5][..], 2), (&[2, 2, 6, 7], 3)] {
        check(
            &format!("batch_norm+relu+max_pool {shape:?} pool {pool} (fused)"),
            &[shape, &[2], &[2]],
            true,
            |g, p| {
                let y = g.batch_norm_train(p[0], p[1], p[2], 1e-5).unwrap();
                let y = g.relu(y).unwrap();
                g.max_pool2d(y, pool, pool).unwrap()
            },
        );
    }
}

#[test]
fn embedding_gathers_and_scatters() {
    // 9 indices into 5 of a 7-row table: rows repeat (their gradients sum) and rows 5, 6
    // are never read (zero gradient). A width-3 scale after it puts the op mid-graph.
    check_with(
        "embedding",
        &[&[7, 3], &[3]],
        false,
        Some((9, 5)),
        |g, p| {
            let idx = g.find_input("label").unwrap();
            let e = g.embedding(p[0], idx).unwrap(); // [9, 3]
            g.mul(e, p[1]).unwrap()
        },
    );
}

#[test]
fn softmax_plain_and_causal() {
    check("softmax rows", &[&[3, 5]], false, |g, p| {
        g.softmax(p[0], None).unwrap()
    });
    // Attention scores [B*H, T, T] with T = 4: masked entries get no gradient.
    check("softmax causal", &[&[2, 4, 4]], false, |g, p| {
        g.softmax(p[0], Some(4)).unwrap()
    });
}

#[test]
fn layer_norm_input_and_params() {
    check("layer norm", &[&[6, 5], &[5], &[5]], false, |g, p| {
        g.layer_norm(p[0], p[1], p[2], 1e-5).unwrap()
    });
    // Over 70 rows: dgamma and dbeta sum two blocks of partials.
    check(
        "layer norm, 2 blocks",
        &[&[70, 3], &[3], &[3]],
        false,
        |g, p| g.layer_norm(p[0], p[1], p[2], 1e-5).unwrap(),
    );
}

/// The fusions the checks above rely on: Relu(BatchNorm) becomes BatchNorm{relu}, the
/// ReLU's backward the batch norm backward's mask; with a max pool after it (pool =
/// stride), BatchNormPool and BatchNormPoolBackward, and no pool or ReLU op is left.
#[test]
fn batch_norm_relu_fuses() {
    use shadergrad::graph::fuse::{fuse, FuseOptions};
    use shadergrad::graph::Op;
    for pool in [false, true] {
        let mut g = Graph::new();
        let p: Vec<Id> = [&[4usize, 3, 4, 4][..], &[3], &[3]]
            .iter()
            .enumerate()
            .map(|(i, s)| {
                g.param(ParamSpec {
                    name: format!("p{i}"),
                    shape: s.to_vec(),
                    init: Init::Zeros,
                    layer: 0,
                    trainable: true,
                })
            })
            .collect();
        let y = g.batch_norm_train(p[0], p[1], p[2], 1e-5).unwrap();
        let mean = g.aux(y, 0);
        g.mark_output(mean);
        let mut r = g.relu(y).unwrap();
        if pool {
            r = g.max_pool2d(r, 2, 2).unwrap();
        }
        let axes: Vec<usize> = (0..4).collect();
        let loss = g.sum(r, &axes).unwrap();
        let grads = grad(&mut g, loss, &p).unwrap();
        g.mark_output(loss);
        for &gr in &grads {
            g.mark_output(gr);
        }
        fuse(&mut g, FuseOptions::default());
        let live = g.live_from(&g.outputs.clone());
        let ops: Vec<&Op> = g
            .ids()
            .filter(|i| live[i.index()])
            .map(|i| &g.node(i).op)
            .collect();
        let has = |f: &dyn Fn(&Op) -> bool| ops.iter().any(|op| f(op));
        if pool {
            assert!(
                has(&|op| matches!(op, Op::BatchNormPool { pool: 2, .. })),
                "{ops:?}"
            );
            assert!(
                has(&|op| matches!(op, Op::BatchNormPoolBackward { .. })),
                "{ops:?}"
            );
            let fused = g
                .ids()
                .find(|&i| matches!(g.node(i).op, Op::BatchNormPool { .. }));
            let mean_at = g.node(g.outputs[0]);
            assert_eq!(mean_at.op, Op::Aux(1), "the mean moves to aux 1");
            assert_eq!(Some(mean_at.inputs[0]), fused);
            assert!(!has(&|op| matches!(
                op,
                Op::MaxPool2d(_) | Op::MaxPool2dBackward { .. }
            )));
        } else {
            assert!(
                has(&|op| matches!(op, Op::BatchNorm { relu: true, .. })),
                "{ops:?}"
            );
            assert!(
                has(&|op| matches!(op, Op::BatchNormBackward { relu: true, .. })),
                "{ops:?}"
            );
        }
        assert!(!has(&|op| matches!(
            op,
            Op::Unary(UnaryOp::Relu) | Op::UnaryBackward(_)
        )));
    }
}

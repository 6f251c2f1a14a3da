//! Language models: the token sampler against its reference, and (below) the GPT and
//! char-RNN graphs trained, checkpointed and sampled on the GPU.

mod common;

use shadergrad::kernels::sample::{sample_next, sample_run_ref, sample_uniforms, SampleTensors};
use shadergrad::kernels::{run, run_all};
use shadergrad::rng::Rng;
use shadergrad::tensor::Tensor;

/// `draws` tokens from fixed logits [T, V] (row len - 1 is read), starting from a context
/// of `len` tokens: the GPU's tokens and final context equal the reference's.
fn check_sampler(t: usize, v: usize, len: usize, draws: usize, temperature: f32) {
    let Some(gpu) = common::gpu() else { return };
    let what = format!("sample T={t} V={v} len={len} N={draws} temp={temperature}");
    let mut rng = Rng::new(t as u64 * 31 + v as u64);
    let logits = rng.uniform_vec(t * v, -3.0, 3.0);
    let context: Vec<u32> = (0..t as u32).map(|i| (i * 5 + 1) % v as u32).collect();
    let uniforms = sample_uniforms(99, draws);
    let lt = Tensor::from_f32(gpu, "logits", &[t, v], &logits).unwrap();
    let ut = Tensor::from_f32(gpu, "uniforms", &[draws], &uniforms).unwrap();
    let ct = Tensor::from_u32(gpu, "context", &[t], &context).unwrap();
    let st = Tensor::from_u32(gpu, "state", &[2], &[len as u32, 0]).unwrap();
    let ot = Tensor::from_u32(gpu, "out", &[draws], &vec![0; draws]).unwrap();
    let tensors = SampleTensors {
        logits: &lt,
        uniforms: &ut,
        context: &ct,
        state: &st,
        out: &ot,
    };
    let d = sample_next(gpu, temperature, &tensors).unwrap();
    run(gpu, &vec![&d; draws]).unwrap();
    let (want_out, want_ctx) =
        sample_run_ref(&context, len, &uniforms, temperature as f64, |used| {
            let r = used.len() - 1;
            logits[r * v..(r + 1) * v]
                .iter()
                .map(|&z| z as f64)
                .collect()
        });
    assert_eq!(ot.to_u32(gpu).unwrap(), want_out, "{what}: tokens");
    assert_eq!(ct.to_u32(gpu).unwrap(), want_ctx, "{what}: context");
    let state = st.to_u32(gpu).unwrap();
    let used = (len.clamp(1, t) + draws).min(t) as u32;
    assert_eq!(state, [used, draws as u32], "{what}: state");
}

#[test]
fn sampler_matches_reference() {
    check_sampler(5, 7, 2, 12, 1.0); // fills the context, then slides
    check_sampler(5, 7, 2, 12, 0.0); // argmax
    check_sampler(1, 13, 1, 9, 0.7); // T = 1: slides every draw
    check_sampler(3, 1, 3, 4, 1.0); // V = 1: always token 0
    check_sampler(17, 65, 1, 40, 1.3);
    let _ = run_all; // (used by the training tests below)
}

use shadergrad::graph::autodiff::grad;
use shadergrad::graph::fuse::{fuse, FuseOptions};
use shadergrad::graph::session::Session;
use shadergrad::graph::{DType, Graph, Id, Op};
use shadergrad::kernels::loss::Loss;
use shadergrad::lm::{CharRnnConfig, GptConfig, LmConfig};
use shadergrad::nn::{model_input, Model};

/// A model's mean token loss over `batch` windows and its parameters' gradients, outputs.
struct LossGraph {
    g: Graph,
    x: Id,
    label: Id,
    loss: Id,
    params: Vec<Id>,
    grads: Vec<Id>,
}

fn loss_graph(cfg: &LmConfig, batch: usize) -> LossGraph {
    let t = cfg.context().unwrap();
    let mut g = Graph::new();
    let x = model_input(&mut g, cfg, batch);
    let logits = cfg.forward(&mut g, x).unwrap();
    let label = g.input("label", &[batch * t], DType::U32);
    let per_token = g.loss(Loss::SoftmaxCrossEntropy, logits, label).unwrap();
    let loss = g.mean(per_token, &[0]).unwrap();
    let params: Vec<_> = g
        .ids()
        .filter(|&i| matches!(g.node(i).op, Op::Param(_)))
        .collect();
    let grads = grad(&mut g, loss, &params).unwrap();
    g.mark_output(loss);
    grads.iter().for_each(|&d| g.mark_output(d));
    LossGraph {
        g,
        x,
        label,
        loss,
        params,
        grads,
    }
}

/// The whole model's gradients (autodiff on the GPU) against central differences of its
/// compiled mean token loss, on a few elements of every parameter tensor: proves the
/// composition (heads split by permute and slice, batched matmuls, residuals) is wired
/// right, beyond each op's own check in graph_gradcheck.rs.
fn check_model_gradients(cfg: LmConfig, batch: usize) {
    let Some(gpu) = common::gpu() else { return };
    let t = cfg.context().unwrap();
    let m = loss_graph(&cfg, batch);
    let (g, x, label, loss, params, grads) = (&m.g, m.x, m.label, m.loss, &m.params, &m.grads);
    let s = Session::new(gpu, g, true).unwrap();
    let mut rng = Rng::new(3);
    let values: Vec<Vec<f32>> = params
        .iter()
        .map(|&p| rng.uniform_vec(g.shape(p).iter().product(), -0.5, 0.5))
        .collect();
    for (&p, v) in params.iter().zip(&values) {
        s.write(p, v).unwrap();
    }
    let v = cfg.vocab() as u32;
    let tokens: Vec<u32> = (0..batch * t).map(|i| (i as u32 * 7 + 3) % v).collect();
    let targets: Vec<u32> = (0..batch * t).map(|i| (i as u32 * 5 + 1) % v).collect();
    s.write_u32(x, &tokens).unwrap();
    s.write_u32(label, &targets).unwrap();
    s.run().unwrap();
    let eps = 1e-2f32;
    for (pi, &p) in params.iter().enumerate() {
        let analytic = s.read(grads[pi]).unwrap();
        let n = values[pi].len();
        let picks: Vec<usize> = (0..3).map(|k| (k * 7919 + pi * 31) % n).collect();
        let mut fd = Vec::new();
        for &e in &picks {
            let at = |delta: f32| {
                let mut w = values[pi].clone();
                w[e] += delta;
                s.write(p, &w).unwrap();
                s.run().unwrap();
                s.read(loss).unwrap()[0] as f64
            };
            fd.push((at(eps) - at(-eps)) / (2.0 * eps as f64));
        }
        s.write(p, &values[pi]).unwrap();
        let got: Vec<f32> = picks.iter().map(|&e| analytic[e]).collect();
        let name = &g.params[pi].name;
        common::assert_close(&format!("{} d{name}", cfg.kind()), &got, &fd, 5e-2, 2e-3);
    }
}

#[test]
fn gpt_gradients_match_finite_differences() {
    let cfg = GptConfig {
        vocab: 11,
        context: 5,
        d_model: 8,
        heads: 2,
        layers: 2,
    };
    check_model_gradients(LmConfig::Gpt(cfg), 3);
}

#[test]
fn char_rnn_gradients_match_finite_differences() {
    let cfg = CharRnnConfig {
        vocab: 7,
        context: 4,
        embed: 3,
        hidden: 6,
    };
    check_model_gradients(LmConfig::CharRnn(cfg), 2);
}

use shadergrad::data::text::TextCorpus;
use shadergrad::kernels::optim::Optimizer;
use shadergrad::lm::checkpoint::{load, save};
/// Folding attention's head split (reshape, permute, slice) into the batched matmuls'
/// strides reads the same numbers in the same order: a tiny GPT's loss and every gradient
/// over a few SGD steps are bit-identical with the matmul views on and off.
#[test]
fn gpt_matmul_views_are_bit_identical() {
    let Some(gpu) = common::gpu() else { return };
    let on = FuseOptions::for_gpu(gpu);
    if !on.matmul_views {
        eprintln!(
            "gpt_matmul_views_are_bit_identical: NOT TESTED here: {} runs no matmul views \
             (SHADERGRAD_NO_MATMUL_VIEWS is set)",
            gpu.describe()
        );
        return;
    }
    let off = FuseOptions {
        matmul_views: false,
        ..on
    };
    let cfg = LmConfig::Gpt(GptConfig {
        vocab: 11,
        context: 6,
        d_model: 12,
        heads: 3,
        layers: 2,
    });
    let batch = 2;
    let m = loss_graph(&cfg, batch);
    // The views are taken: every attention matmul (2 forward, 4 backward per layer) reads
    // at least one operand in place.
    let mut fused = m.g.clone();
    fuse(&mut fused, on);
    let live = fused.live_from(&fused.outputs);
    // Every product: a matmul's, or one of a group's.
    let matmuls: Vec<_> = (fused.nodes.iter().zip(&live))
        .flat_map(|(n, &l)| match &n.op {
            Op::MatMul(t) if l => vec![*t],
            Op::MatMulGroup(ts) if l => ts.clone(),
            _ => vec![],
        })
        .collect();
    let reads = matmuls
        .iter()
        .filter(|t| t.a_view.is_some() || t.b_view.is_some());
    assert_eq!(reads.count(), 6 * 2, "attention matmuls reading a view");
    // Products writing in place: att · v merging the heads back, and dq, dk, dv, per layer.
    let writes = matmuls.iter().filter(|t| t.c_view.is_some());
    assert_eq!(writes.count(), 4 * 2, "products writing a view");
    // dq, dk and dv written into dqkv in place (no pads, sum or permute), one per layer.
    let groups = (fused.nodes.iter().zip(&live))
        .filter(|(n, &l)| l && matches!(&n.op, Op::MatMulGroup(ts) if ts.len() == 3));
    assert_eq!(groups.count(), 2, "matmul groups");
    let sessions = [on, off].map(|o| Session::with_fusion(gpu, &m.g, Some(o)).unwrap());
    let t = cfg.context().unwrap();
    let v = cfg.vocab() as u32;
    let tokens: Vec<u32> = (0..batch * t).map(|i| (i as u32 * 7 + 3) % v).collect();
    let targets: Vec<u32> = (0..batch * t).map(|i| (i as u32 * 5 + 1) % v).collect();
    let mut rng = Rng::new(9);
    let mut values: Vec<Vec<f32>> = (m.params.iter())
        .map(|&p| rng.uniform_vec(m.g.shape(p).iter().product(), -0.5, 0.5))
        .collect();
    for step in 0..3 {
        let mut got = vec![];
        for s in &sessions {
            for (&p, w) in m.params.iter().zip(&values) {
                s.write(p, w).unwrap();
            }
            s.write_u32(m.x, &tokens).unwrap();
            s.write_u32(m.label, &targets).unwrap();
            s.run().unwrap();
            let grads: Vec<Vec<f32>> = m.grads.iter().map(|&d| s.read(d).unwrap()).collect();
            got.push((s.read(m.loss).unwrap(), grads));
        }
        let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        assert_eq!(bits(&got[0].0), bits(&got[1].0), "step {step}: loss");
        for (i, (a, b)) in got[0].1.iter().zip(&got[1].1).enumerate() {
            let name = &m.g.params[i].name;
            assert_eq!(bits(a), bits(b), "step {step}: d{name}");
        }
        for (w, d) in values.iter_mut().zip(&got[0].1) {
            w.iter_mut().zip(d).for_each(|(w, d)| *w -= 0.5 * d);
        }
    }
}

use shadergrad::lm::generate::{generate, GenerateOptions};
use shadergrad::lm::train::{LmData, LmRun, LmTrainConfig};

/// A periodic text a small model learns almost perfectly within a few dozen steps.
fn periodic_corpus() -> TextCorpus {
    let text = "the quick brown fox jumps over the lazy dog. ".repeat(120);
    TextCorpus::from_text(std::path::Path::new("periodic.txt"), &text, 0.1).unwrap()
}

fn train_cfg(steps: u64, save: Option<std::path::PathBuf>) -> LmTrainConfig {
    LmTrainConfig {
        steps,
        batch: 8,
        eval_every: 10,
        eval_batches: 2,
        seed: 5,
        optimizer: Optimizer::adam(3e-3),
        text: "periodic".into(),
        save,
    }
}

/// Train `cfg` (from `resume` when given); the run's rows and final parameters.
fn train(
    gpu: &shadergrad::gpu::Gpu,
    model: LmConfig,
    cfg: &LmTrainConfig,
    resume: Option<&shadergrad::lm::checkpoint::LmCheckpoint>,
) -> (Vec<serde_json::Value>, Vec<Vec<f32>>) {
    let corpus = periodic_corpus();
    let data = LmData {
        vocab: &corpus.vocab,
        train: &corpus.train,
        val: &corpus.val,
    };
    let mut run = LmRun::new(gpu, model, &data, cfg, resume).unwrap();
    run.run(cfg, &mut |_| {}).unwrap();
    (run.history.clone(), run.trainer.read_params().unwrap())
}

fn tiny_gpt(vocab: usize) -> LmConfig {
    LmConfig::Gpt(GptConfig {
        vocab,
        context: 16,
        d_model: 32,
        heads: 2,
        layers: 2,
    })
}

fn tiny_rnn(vocab: usize) -> LmConfig {
    LmConfig::CharRnn(CharRnnConfig {
        vocab,
        context: 16,
        embed: 8,
        hidden: 48,
    })
}

/// Both models learn the periodic text far below its unigram entropy; a run cut in two
/// by a checkpoint ends bit-identical to the run in one go; generation is deterministic for
/// a seed and, greedy, continues the text as it goes.
fn learns_resumes_and_generates(make: fn(usize) -> LmConfig, steps: u64) {
    let Some(gpu) = common::gpu() else { return };
    let corpus = periodic_corpus();
    let model = make(corpus.vocab.len());
    let (rows, whole) = train(gpu, model, &train_cfg(steps, None), None);
    let last = rows.last().unwrap();
    let unigram = corpus.unigram_bpc();
    let val_bpc = last["val_bpc"].as_f64().unwrap();
    assert!(
        val_bpc < 0.25 * unigram,
        "{}: val {val_bpc} bpc vs unigram {unigram}: {rows:?}",
        model.kind()
    );
    assert_eq!(last["step"], steps);

    let dir = std::env::temp_dir().join(format!(
        "shadergrad-lm-{}-{}",
        model.kind(),
        std::process::id()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("half.safetensors");
    train(gpu, model, &train_cfg(steps / 2, Some(path.clone())), None);
    let half = load(&path).unwrap();
    assert_eq!(half.steps, steps / 2);
    let (rows2, resumed) = train(gpu, model, &train_cfg(steps, None), Some(&half));
    assert_eq!(
        resumed,
        whole,
        "{}: resumed parameters differ from one run's",
        model.kind()
    );
    assert_eq!(rows2.last().unwrap()["val_loss"], last["val_loss"]);

    // Round trip of the checkpoint itself.
    let mut ck = half.clone();
    ck.params = whole.clone();
    save(&path, &ck).unwrap();
    let back = load(&path).unwrap();
    assert_eq!(back.params, whole);
    assert_eq!(
        (back.vocab.clone(), back.config),
        (corpus.vocab.clone(), model)
    );

    let opts = |prompt: &str, temperature: f32, seed: u64| GenerateOptions {
        prompt: prompt.into(),
        tokens: 40,
        temperature,
        seed,
    };
    let a = generate(gpu, &back, &opts("the quick", 1.0, 7)).unwrap();
    let b = generate(gpu, &back, &opts("the quick", 1.0, 7)).unwrap();
    assert_eq!(a, b, "same seed, same text");
    assert_eq!(a.chars().count(), 40);
    let greedy = generate(gpu, &back, &opts("the quick", 0.0, 1)).unwrap();
    assert!(
        greedy.starts_with(" brown fox jumps"),
        "{}: greedy continuation {greedy:?}",
        model.kind()
    );
    let bad = generate(gpu, &back, &opts("THE", 1.0, 7))
        .unwrap_err()
        .to_string();
    assert!(bad.contains("'T'") && bad.contains("vocabulary"), "{bad}");
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn gpt_learns_resumes_and_generates() {
    learns_resumes_and_generates(tiny_gpt, 100);
}

#[test]
fn char_rnn_learns_resumes_and_generates() {
    learns_resumes_and_generates(tiny_rnn, 60);
}

/// A language-model training step is one submit and reads nothing back: the windows are
/// drawn on the GPU and the loss is summed there until an evaluation reads it.
#[test]
fn lm_training_step_is_one_submit_without_readback() {
    let Some(_shared) = common::gpu() else { return };
    // The counters belong to one Gpu, which other tests of this binary use concurrently:
    // count on a device of this test's own.
    let own = shadergrad::gpu::Gpu::new().unwrap();
    let corpus = periodic_corpus();
    let data = LmData {
        vocab: &corpus.vocab,
        train: &corpus.train,
        val: &corpus.val,
    };
    let cfg = train_cfg(10, None);
    let mut run = LmRun::new(&own, tiny_gpt(corpus.vocab.len()), &data, &cfg, None).unwrap();
    let src = run.train_src;
    run.trainer.step(src, 0, 8, true).unwrap(); // the first step builds the plan
    let (submits, readbacks) = (own.submits(), own.readbacks());
    for _ in 0..5 {
        run.trainer.step(src, 0, 8, true).unwrap();
    }
    assert_eq!(own.submits(), submits + 5, "one submit per training step");
    assert_eq!(
        own.readbacks(),
        readbacks,
        "training steps read GPU data back"
    );
    let m = run.trainer.read_metrics().unwrap();
    assert_eq!(
        own.readbacks(),
        readbacks + 1,
        "read_metrics is one readback"
    );
    assert_eq!(m.count, 6 * 8 * 16, "every token of six steps counted");
}

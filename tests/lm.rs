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

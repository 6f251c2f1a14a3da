//! The GPU batch sampler (random.wgsl's text_windows) against its CPU reference, bit for
//! bit, on awkward shapes, on both splits of the shipped corpus, and across per-step
//! counter rewrites of one recorded dispatch.

mod common;

use common::gpu;
use shadergrad::data::text::{default_text_path, TextCorpus, TextSplit};
use shadergrad::kernels::random::{
    text_windows, text_windows_ref, write_counter, RandomSpec, TextWindows,
};
use shadergrad::kernels::run;
use shadergrad::tensor::Tensor;

/// Runs text_windows once and compares x and y with the reference.
fn check(w: TextWindows, spec: RandomSpec, tokens: &[u32], tok: &Tensor) {
    let gpu = gpu().unwrap();
    let n = w.batch * w.seq_len;
    let x = Tensor::zeros(gpu, "x", &[n]).unwrap();
    let y = Tensor::zeros(gpu, "y", &[w.batch, w.seq_len]).unwrap();
    run(gpu, &[&text_windows(gpu, &spec, &w, tok, &x, &y).unwrap()]).unwrap();
    let (xr, yr) = text_windows_ref(&spec, &w, tokens);
    assert_eq!(x.to_u32(gpu).unwrap(), xr, "x {w:?} {spec:?}");
    assert_eq!(y.to_u32(gpu).unwrap(), yr, "y {w:?} {spec:?}");
}

#[test]
fn text_windows_match_the_reference_on_awkward_shapes() {
    let Some(gpu) = gpu() else { return };
    // Tokens whose value is a hash of the position, so a wrong index shows.
    let tokens: Vec<u32> = (0..10_007u32)
        .map(|i| i.wrapping_mul(2_654_435_761))
        .collect();
    let tok = Tensor::from_u32(gpu, "tokens", &[tokens.len()], &tokens).unwrap();
    // (offset, len, batch, seq_len): B = 1, primes, T = 1, len - T = 1 and 2 (one or two
    // possible starts), a split ending at the buffer's end, more than 256 rows.
    for (offset, len, batch, seq_len) in [
        (0, 10_007, 1, 1),
        (0, 10_007, 1, 127),
        (3, 2, 5, 1),
        (101, 9, 7, 8),
        (997, 13, 3, 11),
        (9_000, 1_007, 13, 61),
        (0, 9_000, 67, 129),
        (0, 10_007, 301, 17),
    ] {
        for (seed, counter) in [(0, 0), (42, 7), (u64::MAX, u64::MAX)] {
            let w = TextWindows {
                offset,
                len,
                batch,
                seq_len,
            };
            check(w, RandomSpec { seed, counter }, &tokens, &tok);
        }
    }
}

#[test]
fn text_windows_draw_each_split_of_the_corpus_and_follow_the_counter() {
    let Some(gpu) = gpu() else { return };
    let c = TextCorpus::load(&default_text_path()).unwrap();
    let tokens = c.tokens();
    let tok = c.upload(gpu).unwrap();
    let (batch, seq_len) = (12, 64);
    for split in [TextSplit::Train, TextSplit::Val] {
        let w = c.windows(split, batch, seq_len).unwrap();
        let x = Tensor::zeros(gpu, "x", &[batch, seq_len]).unwrap();
        let y = Tensor::zeros(gpu, "y", &[batch, seq_len]).unwrap();
        let spec = RandomSpec {
            seed: 5,
            counter: 0,
        };
        let d = text_windows(gpu, &spec, &w, &tok, &x, &y).unwrap();
        let mut previous = Vec::new();
        for step in [0u64, 1, 2, 1 << 33] {
            // One recorded dispatch, the counter rewritten per step.
            write_counter(gpu, &d, step);
            run(gpu, &[&d]).unwrap();
            let spec = RandomSpec {
                seed: 5,
                counter: step,
            };
            let (xr, yr) = text_windows_ref(&spec, &w, &tokens);
            let got = x.to_u32(gpu).unwrap();
            assert_eq!(got, xr, "{split:?} step {step}");
            assert_eq!(y.to_u32(gpu).unwrap(), yr, "{split:?} step {step}");
            assert_ne!(
                got, previous,
                "{split:?} step {step}: same batch as the last step"
            );
            // Every row lies in its split: decodes to a substring of it.
            let text = c.decode(c.split(split));
            for row in got.chunks(seq_len) {
                assert!(
                    text.contains(&c.decode(row)),
                    "{split:?}: a row outside the split"
                );
            }
            previous = got;
        }
    }
}

#[test]
fn text_windows_refuse_what_does_not_fit() {
    let Some(gpu) = gpu() else { return };
    let tok = Tensor::from_u32(gpu, "tokens", &[100], &[0; 100]).unwrap();
    let x = Tensor::zeros(gpu, "x", &[4 * 8]).unwrap();
    let spec = RandomSpec {
        seed: 0,
        counter: 0,
    };
    let w = |offset, len, batch, seq_len| TextWindows {
        offset,
        len,
        batch,
        seq_len,
    };
    for (bad, part) in [
        (w(0, 8, 4, 8), "needs seq_len + 1 = 9"),
        (w(90, 20, 4, 8), "passes the token buffer"),
        (w(0, 100, 0, 8), "at least 1"),
        (w(0, 100, 4, 0), "at least 1"),
        (w(0, 100, 5, 8), "expected batch * seq_len"),
    ] {
        let msg = text_windows(gpu, &spec, &bad, &tok, &x, &x)
            .err()
            .unwrap_or_else(|| panic!("{bad:?} accepted"))
            .to_string();
        assert!(
            msg.contains("text_windows") && msg.contains(part),
            "{msg:?} lacks {part:?}"
        );
    }
}

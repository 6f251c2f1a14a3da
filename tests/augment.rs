//! GPU augmentation (random.wgsl's augment_images): the kernel against its bit-exact
//! reference on awkward shapes and across per-step counter rewrites; training with it
//! reruns bit for bit, resumes from a checkpoint bit for bit, and never touches
//! evaluation batches.

mod common;

use common::mnist;

use serde_json::Value;
use shadergrad::checkpoint::{load_bytes, Checkpoint};
use shadergrad::executor::Trainer;
use shadergrad::fit::{split_sources, train_epoch, FitConfig};
use shadergrad::kernels::optim::Optimizer;
use shadergrad::kernels::random::{
    augment_draws, augment_images, augment_images_ref, write_counter, Augment, RandomSpec,
};
use shadergrad::kernels::run;
use shadergrad::model::Sequential;
use shadergrad::tensor::Tensor;

/// Runs augment_images once on x (values that name their position) and compares with the
/// reference, bit for bit.
fn check(aug: Augment, chw: [usize; 3], batch: usize, spec: RandomSpec) {
    let gpu = common::gpu().unwrap();
    let n = batch * chw.iter().product::<usize>();
    let x: Vec<f32> = (0..n).map(|i| 1.0 + i as f32).collect();
    let xt = Tensor::from_f32(gpu, "x", &[batch, chw[0], chw[1], chw[2]], &x).unwrap();
    let out = Tensor::zeros(gpu, "out", &xt.shape).unwrap();
    run(
        gpu,
        &[&augment_images(gpu, &spec, &aug, chw, &xt, &out).unwrap()],
    )
    .unwrap();
    let got: Vec<u32> = out
        .to_f32(gpu)
        .unwrap()
        .iter()
        .map(|v| v.to_bits())
        .collect();
    let want: Vec<u32> = augment_images_ref(&spec, &aug, chw, &x)
        .iter()
        .map(|v| v.to_bits())
        .collect();
    assert_eq!(got, want, "{aug:?} {chw:?} batch {batch} {spec:?}");
}

#[test]
fn augment_images_matches_the_reference_on_awkward_shapes() {
    let Some(_) = common::gpu() else { return };
    // (shift, flip, [C, H, W], batch): one image, primes, a 1-pixel-wide image (flip
    // only), the largest shift an image allows, RGB, more than 256 images.
    let cases = [
        (0, true, [1, 1, 1], 1),
        (1, false, [1, 2, 2], 1),
        (2, true, [1, 28, 28], 13),
        (3, true, [3, 5, 7], 7),
        (4, false, [2, 5, 11], 3),
        (6, true, [1, 7, 13], 5),
        (0, true, [1, 1, 17], 9),
        (2, true, [3, 32, 32], 2),
        (1, true, [1, 3, 3], 301),
    ];
    for (shift, flip, chw, batch) in cases {
        for (seed, counter) in [(0, 0), (42, 7), (u64::MAX, u64::MAX)] {
            check(
                Augment { shift, flip },
                chw,
                batch,
                RandomSpec { seed, counter },
            );
        }
    }
}

/// The draws cover [-S, S] for both axes and flip about half the images, and one recorded
/// dispatch draws afresh when its counter is rewritten.
#[test]
fn augment_draws_cover_the_range_and_follow_the_counter() {
    let Some(gpu) = common::gpu() else { return };
    let aug = Augment {
        shift: 2,
        flip: true,
    };
    let spec = |counter| RandomSpec { seed: 9, counter };
    let draws = augment_draws(&spec(1), &aug, 2000);
    for d in -2..=2 {
        let dy = draws.iter().filter(|t| t.0 == d).count();
        let dx = draws.iter().filter(|t| t.1 == d).count();
        assert!(
            (300..500).contains(&dy) && (300..500).contains(&dx),
            "{d}: {dy} {dx}"
        );
    }
    let flips = draws.iter().filter(|t| t.2).count();
    assert!((900..1100).contains(&flips), "{flips} flips of 2000");
    assert!(!augment_draws(
        &spec(1),
        &Augment {
            shift: 2,
            flip: false
        },
        50
    )
    .iter()
    .any(|t| t.2));

    let chw = [1, 6, 5];
    let x: Vec<f32> = (0..4 * 30).map(|i| i as f32 * 0.5).collect();
    let xt = Tensor::from_f32(gpu, "x", &[4, 1, 6, 5], &x).unwrap();
    let out = Tensor::zeros(gpu, "out", &xt.shape).unwrap();
    let d = augment_images(gpu, &spec(0), &aug, chw, &xt, &out).unwrap();
    let mut seen = Vec::new();
    for counter in [3u64, 4, 1 << 40] {
        write_counter(gpu, &d, counter);
        run(gpu, &[&d]).unwrap();
        let got = out.to_f32(gpu).unwrap();
        assert_eq!(got, augment_images_ref(&spec(counter), &aug, chw, &x));
        assert!(
            !seen.contains(&got),
            "counter {counter} drew a batch seen before"
        );
        seen.push(got);
    }
}

#[test]
fn augment_images_refuses_what_it_cannot_do() {
    let Some(gpu) = common::gpu() else { return };
    let x = Tensor::zeros(gpu, "x", &[2, 1, 4, 6]).unwrap();
    let spec = RandomSpec {
        seed: 1,
        counter: 0,
    };
    let shift = |s| Augment {
        shift: s,
        flip: false,
    };
    let err = augment_images(gpu, &spec, &shift(4), [1, 4, 6], &x, &x)
        .err()
        .unwrap()
        .to_string();
    assert!(
        err.contains("augment_images") && err.contains("1x4x6"),
        "{err}"
    );
    let short = Tensor::zeros(gpu, "out", &[2, 1, 4, 5]).unwrap();
    let err = augment_images(gpu, &spec, &shift(1), [1, 4, 6], &x, &short)
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("whole [1, 4, 6] images"), "{err}");
}

// ---------------------------------------------------------------- training

const PIXELS: usize = 28 * 28;

fn cfg() -> FitConfig {
    FitConfig {
        epochs: 2,
        batch_size: 40,
        validation_split: 0.2,
        seed: 5,
        verbose: false,
        ..FitConfig::default()
    }
}

const AUG: Augment = Augment {
    shift: 2,
    flip: true,
};

/// Epochs `epochs` of softmax regression on the first 500 training images
/// (10 steps an epoch), from `start` when given; the checkpoint after them.
fn train(
    augment: Augment,
    start: Option<&Checkpoint>,
    epochs: std::ops::RangeInclusive<usize>,
) -> Checkpoint {
    let gpu = common::gpu().unwrap();
    let n = 500;
    let model = Sequential::mnist_softmax();
    let mut t = Trainer::new(gpu, model, Optimizer::adam(1e-2), 5).unwrap();
    t.set_augment(augment).unwrap();
    if let Some(ck) = start {
        ck.restore(&mut t).unwrap();
    }
    let train = &mnist().train;
    let ds = t
        .add_dataset(&train.images[..n * PIXELS], &train.labels[..n])
        .unwrap();
    let split = split_sources(&mut t, ds, n, 0.2).unwrap();
    let mut logs = start.map(|c| c.history.clone()).unwrap_or_default();
    for e in epochs {
        logs.push(train_epoch(&mut t, &split, &cfg(), e, &|| false).unwrap());
    }
    // Evaluation batches are never augmented: switching it off changes no val metric.
    let (val, on) = (split.val.unwrap(), t.augment());
    let with = t.evaluate(val, 40).unwrap();
    t.set_augment(Augment::default()).unwrap();
    assert_eq!(
        with,
        t.evaluate(val, 40).unwrap(),
        "validation saw augmentation"
    );
    t.set_augment(on).unwrap();
    Checkpoint::capture(&t, "softmax", &cfg(), logs.len(), &logs, Value::Null).unwrap()
}

fn bits(ck: &Checkpoint) -> Vec<u32> {
    ck.params.iter().flatten().map(|v| v.to_bits()).collect()
}

#[test]
fn augmented_training_reruns_and_resumes_bit_exact() {
    let Some(_) = common::gpu() else { return };
    let full = train(AUG, None, 1..=2);
    assert_eq!(bits(&full), bits(&train(AUG, None, 1..=2)), "rerun");
    assert_ne!(
        bits(&full),
        bits(&train(Augment::default(), None, 1..=2)),
        "augmentation changed nothing"
    );
    // Through the checkpoint's bytes: the augmentation comes back from its metadata.
    let first = train(AUG, None, 1..=1);
    let path = std::path::Path::new("augment.safetensors");
    let loaded = load_bytes(path, &first.to_bytes().unwrap(), None).unwrap();
    assert_eq!(loaded.augment, AUG);
    let resumed = train(Augment::default(), Some(&loaded), 2..=2);
    assert_eq!(
        resumed.augment, AUG,
        "restore sets the checkpoint's augmentation"
    );
    assert_eq!(bits(&full), bits(&resumed), "resume");
}

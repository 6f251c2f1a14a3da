//! Training-level checks of the optimizer features on the GPU: a schedule changes the
//! update without rebuilding the plan, clipping bounds each step, and early stopping keeps
//! and restores the best epoch's state to the bit.

mod common;

use common::mnist;

use shadergrad::executor::Trainer;
use shadergrad::fit::{split_sources, train_epoch, EarlyStopping, EpochLog, FitConfig};
use shadergrad::kernels::optim::Optimizer;
use shadergrad::model::Sequential;
use shadergrad::schedule::{Decay, Schedule};

const PIXELS: usize = 28 * 28;

fn cfg() -> FitConfig {
    FitConfig {
        epochs: 4,
        batch_size: 50,
        validation_split: 0.2,
        seed: 3,
        verbose: false,
        ..FitConfig::default()
    }
}

/// A trainer over the first 1,000 training images (16 steps an epoch).
fn trainer(
    gpu: &'static shadergrad::gpu::Gpu,
    opt: Optimizer,
) -> (Trainer<'static>, shadergrad::fit::Split) {
    let n = 1000;
    let train = &mnist().train;
    let mut t = Trainer::new(gpu, Sequential::mnist_mlp(), opt, 3).unwrap();
    let ds = t
        .add_dataset(&train.images[..n * PIXELS], &train.labels[..n])
        .unwrap();
    let split = split_sources(&mut t, ds, n, 0.2).unwrap();
    (t, split)
}

fn bits(v: &[Vec<f32>]) -> Vec<u32> {
    v.iter().flatten().map(|x| x.to_bits()).collect()
}

/// A rate scheduled to zero stops training: after the cosine's horizon nothing moves, and
/// the plan compiled at the first step is the one that keeps running.
#[test]
fn cosine_to_zero_freezes_the_parameters() {
    let Some(gpu) = common::gpu() else { return };
    let sched = Schedule {
        decay: Decay::Cosine {
            horizon: 16,
            min_lr: 0.0,
        },
        warmup: 4,
    };
    let (mut t, split) = trainer(gpu, Optimizer::sgd(0.1, 0.0).with_schedule(sched));
    let before = t.read_params().unwrap();
    train_epoch(&mut t, &split, &cfg(), 1, &|| false).unwrap();
    let after_one = t.read_params().unwrap();
    assert_ne!(bits(&before), bits(&after_one), "the first epoch trains");
    train_epoch(&mut t, &split, &cfg(), 2, &|| false).unwrap();
    assert_eq!(
        bits(&t.read_params().unwrap()),
        bits(&after_one),
        "lr 0 after the horizon (plain SGD: no momentum to carry on)"
    );
}

/// Clipping to a tiny norm bounds every SGD step: |delta p| <= lr * C per step overall.
#[test]
fn clipping_bounds_the_update() {
    let Some(gpu) = common::gpu() else { return };
    let (lr, c) = (0.5f32, 1e-3f32);
    let (mut t, split) = trainer(gpu, Optimizer::sgd(lr, 0.0).with_clip_norm(Some(c)));
    let before = t.read_params().unwrap();
    train_epoch(&mut t, &split, &cfg(), 1, &|| false).unwrap();
    let after = t.read_params().unwrap();
    let moved: f64 = before
        .iter()
        .flatten()
        .zip(after.iter().flatten())
        .map(|(a, b)| ((b - a) as f64).powi(2))
        .sum::<f64>()
        .sqrt();
    let steps = 16.0;
    assert!(moved > 0.0);
    assert!(
        moved <= steps * (lr * c) as f64 * 1.001,
        "moved {moved}, bound {}",
        steps * (lr * c) as f64
    );
    // Unclipped, the same epoch moves far more.
    let (mut free, split) = trainer(gpu, Optimizer::sgd(lr, 0.0));
    train_epoch(&mut free, &split, &cfg(), 1, &|| false).unwrap();
    let moved_free: f64 = before
        .iter()
        .flatten()
        .zip(free.read_params().unwrap().iter().flatten())
        .map(|(a, b)| ((b - a) as f64).powi(2))
        .sum::<f64>()
        .sqrt();
    assert!(moved_free > 10.0 * moved, "{moved_free} vs {moved}");
}

/// val_loss 0.5, 0.4, 0.45, 0.46 with patience 2: stop after epoch 4; restore puts back
/// epoch 2's parameters, optimizer state and step count, to the bit.
#[test]
fn early_stopping_restores_the_best_epoch() {
    let Some(gpu) = common::gpu() else { return };
    let (mut t, split) = trainer(gpu, Optimizer::adamw(1e-3, 0.01));
    let mut early = EarlyStopping::new(Some(2), true);
    let mut best = None;
    let mut stopped_at = None;
    for (epoch, val) in [(1, 0.5), (2, 0.4), (3, 0.45), (4, 0.46), (5, 0.3)] {
        let log = train_epoch(&mut t, &split, &cfg(), epoch, &|| false).unwrap();
        let log = EpochLog {
            val_loss: Some(val),
            ..log
        };
        if epoch == 2 {
            let (m, v) = t.read_optimizer_state().unwrap();
            best = Some((t.read_params().unwrap(), m, v, t.steps));
        }
        if early.update(&t, &log).unwrap() {
            stopped_at = Some(epoch);
            break;
        }
    }
    assert_eq!(stopped_at, Some(4));
    assert_eq!(early.best(), Some((2, 0.4)));
    assert_eq!(early.restore(&mut t).unwrap(), Some(2));
    let (p, m, v, steps) = best.unwrap();
    assert_eq!(bits(&t.read_params().unwrap()), bits(&p));
    let (rm, rv) = t.read_optimizer_state().unwrap();
    assert_eq!((bits(&rm), bits(&rv)), (bits(&m), bits(&v)));
    assert_eq!(t.steps, steps);

    // A resumed run replays the history: the best loss and the epochs without improvement.
    let mut replayed = EarlyStopping::new(Some(2), false);
    let log = |epoch, val| EpochLog {
        epoch,
        loss: 0.0,
        accuracy: 0.0,
        val_loss: Some(val),
        val_accuracy: None,
        seconds: 0.0,
        images_per_second: 0.0,
    };
    replayed.replay(&[log(1, 0.5), log(2, 0.4), log(3, 0.45)]);
    assert_eq!(replayed.best(), Some((2, 0.4)));
    assert!(
        replayed.update(&t, &log(4, 0.41)).unwrap(),
        "second epoch without improvement"
    );
}

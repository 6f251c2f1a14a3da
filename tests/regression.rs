//! The seed's other models end to end through `Trainer`: linear regression on an f32 row
//! dataset (gather_rows_f32 -> Dense -> mean squared error), logistic regression on a
//! two-class MNIST subset (sigmoid -> binary cross-entropy), and the errors for a dataset
//! kind that does not fit the model's loss.

mod common;

use common::assert_close;
use shadergrad::data::{default_data_dir, load_mnist};
use shadergrad::executor::Trainer;
use shadergrad::fit::{split_sources, train_epoch, FitConfig};
use shadergrad::kernels::optim::Optimizer;
use shadergrad::model::{Activation, Sequential};
use shadergrad::rng::Rng;

const W: [[f32; 3]; 2] = [[2.0, -3.0, 0.5], [-1.0, 0.25, 4.0]];
const B: [f32; 2] = [1.5, -0.7];

/// n rows of x ~ U(-1, 1)^3 and y = W x + b + noise * U(-1, 1).
fn synthetic(n: usize, noise: f32, seed: u64) -> (Vec<f32>, Vec<f32>) {
    let mut rng = Rng::new(seed);
    let x = rng.uniform_vec(n * 3, -1.0, 1.0);
    let mut y = Vec::with_capacity(n * 2);
    for r in x.chunks(3) {
        for (w, b) in W.iter().zip(B) {
            let clean: f32 = w.iter().zip(r).map(|(w, x)| w * x).sum::<f32>() + b;
            y.push(clean + noise * rng.uniform(-1.0, 1.0));
        }
    }
    (x, y)
}

fn quiet(epochs: usize, batch_size: usize) -> FitConfig {
    FitConfig {
        epochs,
        batch_size,
        validation_split: 0.0,
        verbose: false,
        ..Default::default()
    }
}

#[test]
fn linear_regression_recovers_w_and_b() {
    let Some(gpu) = common::gpu() else { return };
    let n = 2048;
    let (x, y) = synthetic(n, 0.05, 3);
    let model = Sequential::vector(3).dense(2, Activation::Linear);
    let mut t = Trainer::new(gpu, model, Optimizer::sgd(0.1, 0.0), 1).unwrap();
    let ds = t.add_dataset_f32(&x, &y).unwrap();
    let cfg = quiet(15, 32);
    let split = split_sources(&mut t, ds, n, 0.0).unwrap();
    for epoch in 1..=cfg.epochs {
        let log = train_epoch(&mut t, &split, &cfg, epoch, &|| false).unwrap();
        assert_eq!(log.accuracy, 0.0, "regression reports no accuracy");
    }
    let p = t.read_params().unwrap();
    let want_w: Vec<f64> = W.iter().flatten().map(|&v| v as f64).collect();
    let want_b: Vec<f64> = B.iter().map(|&v| v as f64).collect();
    assert_close("recovered W", &p[0], &want_w, 0.0, 1e-2);
    assert_close("recovered b", &p[1], &want_b, 0.0, 1e-2);

    // The evaluated loss is the mean over rows of the mean squared error over outputs,
    // computed here on the host from the trained parameters.
    let m = t.evaluate(split.train, 500).unwrap();
    let mut sum = 0.0;
    for (r, tgt) in x.chunks(3).zip(y.chunks(2)) {
        for o in 0..2 {
            let z: f64 = (0..3)
                .map(|k| p[0][o * 3 + k] as f64 * r[k] as f64)
                .sum::<f64>()
                + p[1][o] as f64;
            sum += (z - tgt[o] as f64).powi(2) / 2.0;
        }
    }
    assert_eq!(m.count, n);
    assert_close(
        "evaluated MSE",
        &[m.loss as f32],
        &[sum / n as f64],
        1e-4,
        1e-7,
    );
    // Noise U(-0.05, 0.05) has variance 0.05^2 / 3: the fit is as good as the noise allows.
    assert!(
        m.loss < 1.2 * 0.05f64.powi(2) / 3.0,
        "MSE {} above the noise",
        m.loss
    );

    // The last batch's predictions and targets are readable after a step.
    let plan = t.outputs(split.train, 500, false).unwrap();
    let target = plan
        .target
        .as_ref()
        .expect("a row dataset's plan has targets");
    assert_eq!(target.shape, vec![500, 2]);
    assert_eq!(plan.prob.shape, vec![500, 2]);
}

#[test]
fn logistic_regression_separates_zeros_from_ones() {
    let Some(gpu) = common::gpu() else { return };
    let mnist = load_mnist(&default_data_dir()).expect("vendored MNIST in data/mnist");
    // The first 2,000 zeros and ones of the training set; labels stay 0 and 1.
    let (mut images, mut labels) = (Vec::new(), Vec::new());
    let train = &mnist.train;
    for i in (0..train.len())
        .filter(|&i| train.labels[i] <= 1)
        .take(2000)
    {
        images.extend_from_slice(train.image(i));
        labels.push(train.labels[i]);
    }
    let model = Sequential::new([1, 28, 28])
        .flatten()
        .dense(1, Activation::Sigmoid);
    let mut t = Trainer::new(gpu, model, Optimizer::sgd(0.1, 0.0), 5).unwrap();
    let ds = t.add_dataset(&images, &labels).unwrap();
    let cfg = quiet(1, 64);
    let split = split_sources(&mut t, ds, labels.len(), 0.2).unwrap();
    let log = train_epoch(&mut t, &split, &cfg, 1, &|| false).unwrap();
    let val = log.val_accuracy.unwrap();
    assert!(val > 0.98, "validation accuracy {val} after one epoch");
    assert!(log.val_loss.unwrap() < 0.1, "{log:?}");
}

#[test]
fn dataset_kind_must_fit_the_loss() {
    let Some(gpu) = common::gpu() else { return };
    let step = |model: Sequential, rows: bool| -> String {
        let mut t = Trainer::new(gpu, model, Optimizer::sgd(0.1, 0.0), 1).unwrap();
        let ds = if rows {
            t.add_dataset_f32(&[0.5; 8], &[1.0; 4]).unwrap()
        } else {
            t.add_dataset(&[7; 8], &[0; 4]).unwrap()
        };
        let src = t.add_source(ds, &[0, 1, 2, 3]).unwrap();
        t.step(src, 0, 4, true).unwrap_err().to_string()
    };
    // Regression targets need a linear output, and a linear output needs f32 targets.
    let err = step(Sequential::vector(2).dense(1, Activation::Sigmoid), true);
    assert!(err.contains("linear output"), "{err}");
    let err = step(Sequential::vector(2).dense(1, Activation::Linear), false);
    assert!(err.contains("add_dataset_f32"), "{err}");
    // Rows must match the model's input and output sizes.
    let model = Sequential::vector(3).dense(2, Activation::Linear);
    let mut t = Trainer::new(gpu, model, Optimizer::sgd(0.1, 0.0), 1).unwrap();
    let err = t
        .add_dataset_f32(&[0.0; 7], &[0.0; 4])
        .unwrap_err()
        .to_string();
    assert!(err.contains("no whole number of 3-value rows"), "{err}");
    let err = t
        .add_dataset_f32(&[0.0; 6], &[0.0; 3])
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("3 target values for 2 rows of 2 targets"),
        "{err}"
    );
}

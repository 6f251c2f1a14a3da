//! A model `Sequential` cannot express: a residual network on MNIST, written with the
//! functional graph API and `nn` layers. The block's input is added back to its output (a
//! skip connection); autodiff sums the two gradients that reach it.
//!
//!   x [B,1,28,28] -conv 3x3 (16, same), relu, maxpool 2-> h [B,16,14,14]
//!   h -conv 3x3 (16, same), relu, conv 3x3 (16, same)-> r;  relu(h + r) -maxpool 2->
//!   [B,16,7,7] -flatten-> [B,784] -dense(10)-> softmax cross-entropy
//!
//!     cargo run --release --example residual_mnist            # 3 epochs
//!     cargo run --release --example residual_mnist -- 1       # any number of epochs
use shadergrad::data::{default_data_dir, load_mnist};
use shadergrad::executor::Trainer;
use shadergrad::fit::{fit_and_test, FitConfig};
use shadergrad::gpu::Gpu;
use shadergrad::graph::{Graph, Id};
use shadergrad::kernels::conv2d::Padding;
use shadergrad::kernels::loss::Loss;
use shadergrad::kernels::optim::Optimizer;
use shadergrad::nn::{Conv2d, Dense, Model};

struct ResidualNet;

impl Model for ResidualNet {
    fn input(&self) -> [usize; 3] {
        [1, 28, 28]
    }

    fn loss(&self) -> Loss {
        Loss::SoftmaxCrossEntropy
    }

    fn forward(&self, g: &mut Graph, x: Id) -> shadergrad::Result<Id> {
        let stem = Conv2d::new(g, "stem", 1, 16, 3, 0).padding(Padding::Same);
        let h = stem.forward(g, x)?;
        let h = g.relu(h)?;
        let h = g.max_pool2d(h, 2, 2)?; // [B, 16, 14, 14]
        let c1 = Conv2d::new(g, "block.conv1", 16, 16, 3, 1).padding(Padding::Same);
        let c2 = Conv2d::new(g, "block.conv2", 16, 16, 3, 2).padding(Padding::Same);
        let r = c1.forward(g, h)?;
        let r = g.relu(r)?;
        let r = c2.forward(g, r)?;
        let h = g.add(h, r)?; // the skip connection
        let h = g.relu(h)?;
        let h = g.max_pool2d(h, 2, 2)?; // [B, 16, 7, 7]
        let h = g.flatten(h)?; // [B, 784]
        Dense::new(g, "fc", 784, 10, 3).forward(g, h)
    }
}

fn main() -> shadergrad::Result<()> {
    let epochs = match std::env::args().nth(1) {
        Some(arg) => arg
            .parse()
            .map_err(|_| shadergrad::Error::usage("epochs", format!("{arg:?} is no number")))?,
        None => 3,
    };
    let mnist = load_mnist(&default_data_dir())?;
    let gpu = Gpu::new()?;
    println!("adapter: {}", gpu.describe());
    let mut trainer = Trainer::new(&gpu, ResidualNet, Optimizer::adam(1e-3), 42)?;
    let cfg = FitConfig {
        epochs,
        batch_size: 128,
        validation_split: 0.2,
        ..FitConfig::default()
    };
    let (m, seconds) = fit_and_test(&mut trainer, &mnist, &cfg)?;
    println!(
        "test: loss {:.4} - accuracy {:.4} on {} images; {seconds:.0} s training",
        m.loss, m.accuracy, m.count
    );
    Ok(())
}

//! predict: PNG decoding (every colour type, bit depth, polarity), MNIST-style
//! preprocessing, clear errors for unreadable images, and on the GPU a quickly trained MLP
//! reading MNIST test digits that the test renders to PNG (plain, inverted, rescaled,
//! padded, RGB, RGBA, transparent, 16-bit), plus the `predict` command itself.

mod common;

use common::mnist;

use std::path::{Path, PathBuf};

use shadergrad::checkpoint::{self, Checkpoint};
use shadergrad::executor::Trainer;
use shadergrad::fit::{split_sources, train_epoch, FitConfig};
use shadergrad::kernels::optim::Optimizer;
use shadergrad::model::Sequential;
use shadergrad::predict::{self, argmax, GreyImage};
use shadergrad::Error;

use png::{BitDepth, ColorType};

fn temp_dir(name: &str) -> PathBuf {
    let dir =
        std::env::temp_dir().join(format!("shadergrad-predict-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// An image ready to encode: size, colour type, bit depth, bytes.
struct Png(usize, usize, ColorType, BitDepth, Vec<u8>);

fn encode(p: &Png) -> Vec<u8> {
    let mut out = Vec::new();
    let mut enc = png::Encoder::new(&mut out, p.0 as u32, p.1 as u32);
    enc.set_color(p.2);
    enc.set_depth(p.3);
    enc.write_header().unwrap().write_image_data(&p.4).unwrap();
    out
}

/// The 28x28 digit scaled to `tw` x `th` (bilinear), values 0..=1.
fn resize(digit: &[u8], tw: usize, th: usize) -> Vec<f32> {
    let at = |x: isize, y: isize| {
        if (0..28).contains(&x) && (0..28).contains(&y) {
            digit[y as usize * 28 + x as usize] as f32 / 255.0
        } else {
            0.0
        }
    };
    let (sx, sy) = (28.0 / tw as f32, 28.0 / th as f32);
    let mut out = Vec::with_capacity(tw * th);
    for y in 0..th {
        for x in 0..tw {
            let (fx, fy) = ((x as f32 + 0.5) * sx - 0.5, (y as f32 + 0.5) * sy - 0.5);
            let (x0, y0) = (fx.floor(), fy.floor());
            let (ax, ay) = (fx - x0, fy - y0);
            let (x0, y0) = (x0 as isize, y0 as isize);
            out.push(
                (at(x0, y0) * (1.0 - ax) + at(x0 + 1, y0) * ax) * (1.0 - ay)
                    + (at(x0, y0 + 1) * (1.0 - ax) + at(x0 + 1, y0 + 1) * ax) * ay,
            );
        }
    }
    out
}

/// Ink `v` (0..=1) of `ink` colour on `paper`, per channel.
fn mix(paper: [u8; 3], ink: [u8; 3], v: f32) -> [u8; 3] {
    std::array::from_fn(|c| (paper[c] as f32 * (1.0 - v) + ink[c] as f32 * v).round() as u8)
}

/// The ways the tests render a digit.
const VARIANTS: [&str; 8] = [
    "grey 28x28",
    "inverted 28x28",
    "grey 56x56",
    "small 19x19",
    "16-bit grey",
    "blue ink on cream RGB 100x80, padded",
    "white on dark RGBA 84x84",
    "black on transparent",
];

/// Digit `d` rendered the way `VARIANTS[variant]` says.
fn render(variant: usize, d: &[u8]) -> Png {
    let bytes = |v: Vec<f32>| v.iter().map(|v| (v * 255.0).round() as u8).collect();
    match variant {
        0 => Png(28, 28, ColorType::Grayscale, BitDepth::Eight, d.to_vec()),
        1 => Png(
            28,
            28,
            ColorType::Grayscale,
            BitDepth::Eight,
            d.iter().map(|p| 255 - p).collect(),
        ),
        2 => Png(
            56,
            56,
            ColorType::Grayscale,
            BitDepth::Eight,
            bytes(resize(d, 56, 56)),
        ),
        3 => Png(
            19,
            19,
            ColorType::Grayscale,
            BitDepth::Eight,
            bytes(resize(d, 19, 19)),
        ),
        4 => Png(
            28,
            28,
            ColorType::Grayscale,
            BitDepth::Sixteen,
            d.iter()
                .flat_map(|&p| (p as u16 * 257).to_be_bytes())
                .collect(),
        ),
        5 => {
            let digit = resize(d, 70, 70);
            let mut px = Vec::new();
            for y in 0..80isize {
                for x in 0..100isize {
                    let (dx, dy) = (x - 22, y - 6);
                    let inside = (0..70).contains(&dx) && (0..70).contains(&dy);
                    let v = if inside {
                        digit[dy as usize * 70 + dx as usize]
                    } else {
                        0.0
                    };
                    px.extend(mix([250, 244, 228], [20, 30, 110], v));
                }
            }
            Png(100, 80, ColorType::Rgb, BitDepth::Eight, px)
        }
        6 => {
            let px = resize(d, 84, 84)
                .iter()
                .flat_map(|&v| {
                    let [r, g, b] = mix([30, 34, 40], [255, 255, 255], v);
                    [r, g, b, 255]
                })
                .collect();
            Png(84, 84, ColorType::Rgba, BitDepth::Eight, px)
        }
        _ => Png(
            28,
            28,
            ColorType::GrayscaleAlpha,
            BitDepth::Eight,
            d.iter().flat_map(|&p| [0, p]).collect(),
        ),
    }
}

// ---------------------------------------------------------------- no GPU

#[test]
fn colour_types_and_depths_decode_to_the_same_grey() {
    let d = mnist().test.image(0);
    let p = Path::new("x.png");
    let grey = predict::decode_png(p, &encode(&render(0, d))).unwrap();
    assert_eq!((grey.width, grey.height), (28, 28));
    assert_eq!(grey.pixels, d.iter().map(|&v| v as f32).collect::<Vec<_>>());
    let rgb = Png(
        28,
        28,
        ColorType::Rgb,
        BitDepth::Eight,
        d.iter().flat_map(|&v| [v, v, v]).collect(),
    );
    let rgba = Png(
        28,
        28,
        ColorType::Rgba,
        BitDepth::Eight,
        d.iter().flat_map(|&v| [v, v, v, 255]).collect(),
    );
    for img in [rgb, rgba, render(4, d)] {
        let g = predict::decode_png(p, &encode(&img)).unwrap();
        let diff = g
            .pixels
            .iter()
            .zip(&grey.pixels)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0, f32::max);
        assert!(diff <= 0.5, "{:?} {:?}: off by {diff}", img.2, img.3);
    }
    // Transparent ground composited over white: the inverse of the digit.
    let t = predict::decode_png(p, &encode(&render(7, d))).unwrap();
    assert!(t
        .pixels
        .iter()
        .zip(d)
        .all(|(&g, &v)| (g - (255 - v) as f32).abs() <= 0.5));
}

#[test]
fn preprocessing_keeps_mnist_digits_and_undoes_inversion_and_scale() {
    let test = &mnist().test;
    let p = Path::new("x.png");
    let grey = |w: usize, h: usize, px: Vec<f32>| GreyImage {
        width: w,
        height: h,
        pixels: px,
    };
    let (mut plain_err, mut scaled_err) = (0.0, 0.0);
    let n = 200;
    for i in 0..n {
        let d = test.image(i);
        let plain =
            predict::to_mnist(p, &grey(28, 28, d.iter().map(|&v| v as f32).collect())).unwrap();
        let inverted = predict::to_mnist(
            p,
            &grey(28, 28, d.iter().map(|&v| 255.0 - v as f32).collect()),
        )
        .unwrap();
        assert_eq!(plain, inverted, "digit {i}: inversion undone exactly");
        let big = predict::to_mnist(
            p,
            &grey(
                56,
                56,
                resize(d, 56, 56).iter().map(|v| v * 255.0).collect(),
            ),
        )
        .unwrap();
        let mad = |a: &[u8]| {
            a.iter()
                .zip(d)
                .map(|(&x, &y)| (x as f32 - y as f32).abs())
                .sum::<f32>()
                / 784.0
        };
        plain_err += mad(&plain);
        scaled_err += mad(&big);
    }
    let (plain_err, scaled_err) = (plain_err / n as f32, scaled_err / n as f32);
    println!("mean |preprocessed - original| per pixel: plain {plain_err:.2}, from 56x56 {scaled_err:.2} (of 255)");
    assert!(
        plain_err < 12.0 && scaled_err < 20.0,
        "plain {plain_err}, 56x56 {scaled_err}"
    );
    // Off-centre, small digits come out centred and 20 pixels tall.
    let mut px = vec![0.0; 200 * 150];
    for y in 100..130 {
        for x in 20..35 {
            px[y * 200 + x] = 255.0;
        }
    }
    let out = predict::to_mnist(p, &grey(200, 150, px)).unwrap();
    let rows: Vec<usize> = (0..28)
        .filter(|&y| out[y * 28..y * 28 + 28].iter().any(|&v| v > 128))
        .collect();
    assert_eq!((rows.len(), rows[0]), (20, 5), "rows {rows:?}");
}

#[test]
fn unreadable_images_get_clear_errors() {
    let dir = temp_dir("errors");
    let d = mnist().test.image(0);
    let good = encode(&render(0, d));
    let blank = encode(&Png(
        30,
        30,
        ColorType::Grayscale,
        BitDepth::Eight,
        vec![255; 900],
    ));
    let cases: Vec<(&str, Option<Vec<u8>>, &str)> = vec![
        ("missing.png", None, "cannot read"),
        ("empty.png", Some(vec![]), "empty"),
        (
            "notes.png",
            Some(b"hello, world".to_vec()),
            "not a PNG file",
        ),
        (
            "photo.png",
            Some(vec![0xff, 0xd8, 0xff, 0xe0, 0, 0]),
            "a JPEG file",
        ),
        (
            "truncated.png",
            Some(good[..good.len() / 2].to_vec()),
            "not a readable PNG",
        ),
        ("blank.png", Some(blank), "no digit found"),
    ];
    for (name, bytes, want) in cases {
        let path = dir.join(name);
        if let Some(b) = bytes {
            std::fs::write(&path, b).unwrap();
        }
        match predict::load_digit(&path) {
            Err(e @ Error::Image { .. }) => {
                let msg = e.to_string();
                assert!(
                    msg.starts_with(&format!("image {}: ", path.display())) && msg.contains(want),
                    "{name}: {msg}"
                );
            }
            other => panic!(
                "{name}: expected an image error, got {:?}",
                other.map(|d| d.len())
            ),
        }
    }
    let _ = std::fs::remove_dir_all(dir);
}

// ---------------------------------------------------------------- on the GPU

/// An MLP trained for one epoch on the 60,000 training images, as a checkpoint.
fn trained(gpu: &'static shadergrad::gpu::Gpu) -> Checkpoint {
    let train = &mnist().train;
    let cfg = FitConfig {
        epochs: 1,
        batch_size: 128,
        validation_split: 0.0,
        verbose: false,
        ..FitConfig::default()
    };
    let mut t = Trainer::new(gpu, Sequential::mnist_mlp(), Optimizer::adam(1e-3), 42).unwrap();
    let ds = t.add_dataset(&train.images, &train.labels).unwrap();
    let split = split_sources(&mut t, ds, train.len(), 0.0).unwrap();
    let started = std::time::Instant::now();
    let log = train_epoch(&mut t, &split, &cfg, 1, &|| false).unwrap();
    println!(
        "trained the MLP in {:.1} s: {}",
        started.elapsed().as_secs_f64(),
        log.line(1)
    );
    Checkpoint::capture(&t, "mlp", &cfg, 1, &[log], serde_json::Value::Null).unwrap()
}

#[test]
fn predicts_rendered_test_digits() {
    let Some(gpu) = common::gpu() else { return };
    let ck = trained(gpu);
    let dir = temp_dir("rendered");
    let test = &mnist().test;
    let picks: Vec<usize> = (0..100).map(|i| i * 97 % test.len()).collect();
    let mut t = Trainer::new(gpu, ck.model.clone(), ck.optimizer, 1).unwrap();
    ck.restore(&mut t).unwrap();
    let raw: Vec<Vec<u8>> = picks.iter().map(|&i| test.image(i).to_vec()).collect();
    let score = |probs: &[Vec<f32>]| {
        probs
            .iter()
            .zip(&picks)
            .filter(|(p, &i)| argmax(p) == test.labels[i] as usize)
            .count()
    };
    let baseline = score(&predict::predict_digits(&mut t, &raw).unwrap());
    println!("the 100 test digits as they are: {baseline}/100");
    let mut paths = Vec::new();
    for (v, name) in VARIANTS.iter().enumerate() {
        let files: Vec<PathBuf> = picks
            .iter()
            .map(|&i| {
                let path = dir.join(format!("{}-{i}.png", name.replace(' ', "_")));
                std::fs::write(&path, encode(&render(v, test.image(i)))).unwrap();
                path
            })
            .collect();
        let digits: Vec<Vec<u8>> = files
            .iter()
            .map(|p| predict::load_digit(p).unwrap())
            .collect();
        let correct = score(&predict::predict_digits(&mut t, &digits).unwrap());
        println!("{name}: {correct}/100");
        assert!(
            correct >= 95,
            "{name}: {correct}/100 right (as they are: {baseline}/100)"
        );
        paths.push(files[0].clone());
    }

    // The command itself: a table row per image, an error for the unreadable one.
    let ckpt = dir.join("mlp.safetensors");
    checkpoint::save(&ckpt, &ck).unwrap();
    std::fs::write(dir.join("bad.png"), b"not an image").unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_shadergrad"))
        .arg("predict")
        .arg("--checkpoint")
        .arg(&ckpt)
        .args(&paths)
        .arg(dir.join("bad.png"))
        .output()
        .unwrap();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(
        !out.status.success(),
        "an unreadable image fails the command"
    );
    assert!(stderr.contains("bad.png: not a PNG file"), "{stderr}");
    assert!(stdout.contains("digit     p0     p1"), "{stdout}");
    let want = test.labels[picks[0]].to_string();
    for p in &paths {
        let line = stdout
            .lines()
            .find(|l| l.ends_with(&*p.to_string_lossy()))
            .unwrap_or_else(|| panic!("{stdout}"));
        let probs: Vec<f32> = line
            .split_whitespace()
            .skip(1)
            .take(10)
            .map(|v| v.parse().unwrap())
            .collect();
        assert!((probs.iter().sum::<f32>() - 1.0).abs() < 2e-3, "{line}");
        assert_eq!(
            line.split_whitespace().next(),
            Some(want.as_str()),
            "{line}"
        );
    }

    // --as-is (Fashion-MNIST and other IDX sets that are not centred digits): a test image
    // written as a 28x28 PNG is read pixel for pixel, so the probabilities printed are
    // predict_digits' on the raw image.
    let raw_png = dir.join("raw.png");
    let i = picks[1];
    std::fs::write(&raw_png, encode(&render(0, test.image(i)))).unwrap();
    let want = predict::predict_digits(&mut t, &[test.image(i).to_vec()]).unwrap();
    let want: Vec<String> = want[0].iter().map(|p| format!("{p:.4}")).collect();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_shadergrad"))
        .args(["predict", "--as-is", "--checkpoint"])
        .arg(&ckpt)
        .arg(&raw_png)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    let line = stdout.lines().find(|l| l.ends_with("raw.png")).unwrap();
    let got: Vec<&str> = line.split_whitespace().skip(1).take(10).collect();
    assert_eq!(got, want, "{line}");
    let _ = std::fs::remove_dir_all(dir);
}

/// Trainer::write_images (the web page's drawn digit): the overwritten set predicts exactly
/// what a set uploaded with those pixels does; a wrong size or a non-image set is refused.
#[test]
fn rewritten_images_predict_as_uploaded_ones() {
    let Some(gpu) = common::gpu() else { return };
    let test = &mnist().test;
    let mut t = Trainer::new(gpu, Sequential::mnist_mlp(), Optimizer::adam(1e-3), 7).unwrap();
    let infer = |t: &mut Trainer<'_>, set: usize| {
        let src = t.add_source(set, &[0, 1]).unwrap();
        predict::infer(t, src, 2).unwrap().probs
    };
    let two = |a: usize, b: usize| [test.image(a), test.image(b)].concat();
    let canvas = t.add_dataset(&two(0, 1), &[0, 0]).unwrap();
    t.write_images(canvas, &two(5, 9)).unwrap();
    let rewritten = infer(&mut t, canvas);
    let fresh = t.add_dataset(&two(5, 9), &[0, 0]).unwrap();
    assert_eq!(rewritten, infer(&mut t, fresh));
    let e = t
        .write_images(canvas, test.image(3))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("write_images") && e.contains("784 pixel bytes for 2 images"),
        "{e}"
    );
}

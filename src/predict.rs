//! Inference on the GPU kernels: reading a model's per-sample probabilities ([`infer`]),
//! the confusion matrix, and `predict` on PNG files, which turns any PNG into an MNIST-style
//! 28x28 digit the way MNIST was made: grey, light digit on dark ground, cropped to the
//! digit, scaled into a 20x20 box (aspect ratio kept, anti-aliased) and placed in 28x28 so
//! that its centre of mass is the centre.

use std::path::Path;

use crate::executor::{Metrics, Trainer};
use crate::{Error, Result};

/// MNIST's image side and the box the digit is scaled into.
pub const SIDE: usize = 28;
pub const BOX: usize = 20;
/// A pixel belongs to the digit, for cropping, above this fraction of the ink range.
pub const CROP_THRESHOLD: f32 = 0.3;
/// Decoded images larger than this many bytes are refused.
pub const MAX_DECODED_BYTES: usize = 256 << 20;

/// A grey image, row-major, values 0 (black) ..= 255 (white).
#[derive(Clone, Debug, PartialEq)]
pub struct GreyImage {
    pub width: usize,
    pub height: usize,
    pub pixels: Vec<f32>,
}

fn image_err(path: &Path, msg: impl Into<String>) -> Error {
    Error::Image {
        path: path.to_path_buf(),
        msg: msg.into(),
    }
}

/// Read a PNG of any size, bit depth and colour type as grey: colour by luminance
/// (0.299 R + 0.587 G + 0.114 B), transparency composited over white.
pub fn load_png(path: &Path) -> Result<GreyImage> {
    let bytes = std::fs::read(path).map_err(|e| image_err(path, format!("cannot read: {e}")))?;
    decode_png(path, &bytes)
}

/// [`load_png`] on bytes already read; `path` names them in errors.
pub fn decode_png(path: &Path, bytes: &[u8]) -> Result<GreyImage> {
    const SIGNATURE: &[u8] = b"\x89PNG\r\n\x1a\n";
    if !bytes.starts_with(SIGNATURE) {
        let what = if bytes.starts_with(b"\xff\xd8\xff") {
            "a JPEG file"
        } else if bytes.is_empty() {
            "empty"
        } else {
            "not a PNG file"
        };
        return Err(image_err(
            path,
            format!("{what}; predict reads PNG images (convert it to PNG first)"),
        ));
    }
    let decode_err = |e: png::DecodingError| image_err(path, format!("not a readable PNG: {e}"));
    let mut decoder = png::Decoder::new(std::io::Cursor::new(bytes));
    decoder.set_transformations(png::Transformations::EXPAND | png::Transformations::STRIP_16);
    let mut reader = decoder.read_info().map_err(decode_err)?;
    let size = reader
        .output_buffer_size()
        .filter(|&n| n <= MAX_DECODED_BYTES)
        .ok_or_else(|| {
            let (w, h) = reader.info().size();
            image_err(
                path,
                format!(
                    "{w}x{h} pixels is too large (limit {} MiB decoded)",
                    MAX_DECODED_BYTES >> 20
                ),
            )
        })?;
    let mut buf = vec![0u8; size];
    let info = reader.next_frame(&mut buf).map_err(decode_err)?;
    let (width, height) = (info.width as usize, info.height as usize);
    let channels = match info.color_type {
        png::ColorType::Grayscale => 1,
        png::ColorType::GrayscaleAlpha => 2,
        png::ColorType::Rgb => 3,
        png::ColorType::Rgba => 4,
        png::ColorType::Indexed => return Err(image_err(path, "palette was not expanded")),
    };
    if info.bit_depth != png::BitDepth::Eight || width == 0 || height == 0 {
        return Err(image_err(
            path,
            format!(
                "unsupported {width}x{height} {:?} at {:?}",
                info.color_type, info.bit_depth
            ),
        ));
    }
    let mut pixels = Vec::with_capacity(width * height);
    for row in buf.chunks_exact(info.line_size).take(height) {
        for p in row.chunks_exact(channels).take(width) {
            let f = |i: usize| p[i] as f32;
            let (grey, alpha) = match channels {
                1 => (f(0), 255.0),
                2 => (f(0), f(1)),
                3 => (0.299 * f(0) + 0.587 * f(1) + 0.114 * f(2), 255.0),
                _ => (0.299 * f(0) + 0.587 * f(1) + 0.114 * f(2), f(3)),
            };
            let a = alpha / 255.0;
            pixels.push(grey * a + 255.0 * (1.0 - a));
        }
    }
    if pixels.len() != width * height {
        return Err(image_err(path, "image data shorter than its size"));
    }
    Ok(GreyImage {
        width,
        height,
        pixels,
    })
}

/// An MNIST-style 28x28 digit (row-major u8, light on dark) from any grey image: invert
/// when the border is light, stretch ink to 0..255, crop to the digit, scale the longer
/// side to 20 pixels, centre by mass. `path` names the image in errors.
pub fn to_mnist(path: &Path, img: &GreyImage) -> Result<Vec<u8>> {
    let (w, h) = (img.width, img.height);
    if w == 0 || h == 0 || img.pixels.len() != w * h {
        return Err(image_err(
            path,
            format!("{w}x{h} image with {} pixels", img.pixels.len()),
        ));
    }
    let ink = ink(path, img)?; // [h, w] in 0..1, the digit light on dark
    let (boxed, tw) = scale_to_box(&ink, w, h); // [th, tw], the longer side BOX
    Ok(centre_by_mass(&boxed, tw))
}

/// The image as ink in 0..1: inverted when the border (its median) is light, then stretched
/// from the background to the brightest pixel. An error when there is no contrast.
fn ink(path: &Path, img: &GreyImage) -> Result<Vec<f32>> {
    let (w, h) = (img.width, img.height);
    let at = |x: usize, y: usize| img.pixels[y * w + x];
    let mut border: Vec<f32> = (0..w)
        .flat_map(|x| [at(x, 0), at(x, h - 1)])
        .chain((0..h).flat_map(|y| [at(0, y), at(w - 1, y)]))
        .collect();
    border.sort_by(f32::total_cmp);
    let median = border[border.len() / 2];
    let invert = median > 127.5;
    let ink: Vec<f32> = img
        .pixels
        .iter()
        .map(|&p| if invert { 255.0 - p } else { p })
        .collect();
    let bg = if invert { 255.0 - median } else { median };
    let top = ink.iter().copied().fold(0.0, f32::max);
    if top - bg < 32.0 {
        return Err(image_err(
            path,
            format!(
                "no digit found: the image is nearly uniform (contrast {:.0} of 255)",
                top - bg
            ),
        ));
    }
    Ok(ink
        .iter()
        .map(|&p| ((p - bg) / (top - bg)).clamp(0.0, 1.0))
        .collect())
}

/// The digit's bounding box (pixels over CROP_THRESHOLD) scaled so its longer side is BOX
/// pixels: area averaging when shrinking (exact at 1:1, anti-aliased below), bilinear
/// interpolation when enlarging. Returns the `[th, tw]` box and tw.
fn scale_to_box(ink: &[f32], w: usize, h: usize) -> (Vec<f32>, usize) {
    let (mut x0, mut y0, mut x1, mut y1) = (w, h, 0, 0);
    for (i, &v) in ink.iter().enumerate() {
        if v > CROP_THRESHOLD {
            let (x, y) = (i % w, i / w);
            (x0, y0, x1, y1) = (x0.min(x), y0.min(y), x1.max(x), y1.max(y));
        }
    }
    let (bw, bh) = (x1 + 1 - x0, y1 + 1 - y0);
    let s = BOX as f32 / bw.max(bh) as f32; // target pixels per source pixel
    let (tw, th) = (
        ((bw as f32 * s).round() as usize).clamp(1, BOX),
        ((bh as f32 * s).round() as usize).clamp(1, BOX),
    );
    let (wx, wy) = (axis_weights(x0, tw, s, w), axis_weights(y0, th, s, h));
    let mut boxed = vec![0f32; tw * th];
    for (ty, ry) in wy.iter().enumerate() {
        for (tx, rx) in wx.iter().enumerate() {
            boxed[ty * tw + tx] = ry
                .iter()
                .map(|&(y, fy)| fy * rx.iter().map(|&(x, fx)| fx * ink[y * w + x]).sum::<f32>())
                .sum();
        }
    }
    (boxed, tw)
}

/// The `[th, tw]` box placed in the SIDE x SIDE field with its centre of mass at pixel 14 (as
/// in MNIST, whose mean centre of mass is (14.0, 14.0) in pixel indices), as u8 grey values.
fn centre_by_mass(boxed: &[f32], tw: usize) -> Vec<u8> {
    let mass: f32 = boxed.iter().sum();
    let com = |coord: &dyn Fn(usize) -> usize| {
        boxed
            .iter()
            .enumerate()
            .map(|(i, &v)| v * (coord(i) as f32 + 0.5))
            .sum::<f32>()
            / mass.max(1e-6)
    };
    let (cx, cy) = (com(&|i| i % tw), com(&|i| i / tw));
    let half = SIDE as f32 / 2.0 + 0.5;
    let (ox, oy) = ((half - cx).round() as isize, (half - cy).round() as isize);
    let mut out = vec![0u8; SIDE * SIDE];
    for (i, &v) in boxed.iter().enumerate() {
        let (x, y) = ((i % tw) as isize + ox, (i / tw) as isize + oy);
        if (0..SIDE as isize).contains(&x) && (0..SIDE as isize).contains(&y) {
            out[y as usize * SIDE + x as usize] = (v * 255.0).round().clamp(0.0, 255.0) as u8;
        }
    }
    out
}

/// Along one axis, for each of `n` target pixels, the (source index, weight) pairs that
/// make it: a target pixel spans 1/s source pixels from `start`. Weights sum to 1.
fn axis_weights(start: usize, n: usize, s: f32, len: usize) -> Vec<Vec<(usize, f32)>> {
    (0..n)
        .map(|t| {
            if s <= 1.0 {
                let (a, b) = (
                    start as f32 + t as f32 / s,
                    start as f32 + (t + 1) as f32 / s,
                );
                (a.floor() as usize..(b.ceil() as usize).min(len))
                    .map(|i| (i, (b.min(i as f32 + 1.0) - a.max(i as f32)).max(0.0) * s))
                    .collect()
            } else {
                let c = (start as f32 + (t as f32 + 0.5) / s - 0.5).clamp(0.0, (len - 1) as f32);
                let i = c.floor() as usize;
                let f = c - i as f32;
                vec![(i, 1.0 - f), ((i + 1).min(len - 1), f)]
            }
        })
        .collect()
}

/// [`load_png`] then [`to_mnist`].
pub fn load_digit(path: &Path) -> Result<Vec<u8>> {
    to_mnist(path, &load_png(path)?)
}

/// An image for a model trained on image folders, read as the folders were
/// ([`crate::data::folder`]): it must have the model's size `[C, H, W]`; u8 CHW.
pub fn load_like_folder(path: &Path, [c, h, w]: [usize; 3]) -> Result<Vec<u8>> {
    let image = crate::data::folder::read_png(path)?;
    if (image.width, image.height) != (w, h) {
        let msg = format!(
            "is {}x{} (width x height); the model takes {w}x{h} images like its training folders",
            image.width, image.height
        );
        return Err(image_err(path, msg));
    }
    image.planes(c).ok_or_else(|| {
        image_err(
            path,
            "is a colour image; the model takes grey images (one channel)",
        )
    })
}

/// Per-sample outputs of a forward pass over a whole source.
#[derive(Clone, Debug)]
pub struct Inference {
    /// `[n, classes]`, row-major.
    pub probs: Vec<f32>,
    pub classes: usize,
    pub labels: Vec<u32>,
    /// Mean loss and accuracy, from the same GPU reduction as training's evaluation.
    pub metrics: Metrics,
}

impl Inference {
    pub fn predictions(&self) -> Vec<usize> {
        self.probs.chunks(self.classes.max(1)).map(argmax).collect()
    }

    /// counts[true label][predicted class].
    pub fn confusion(&self) -> Vec<Vec<usize>> {
        let mut m = vec![vec![0; self.classes]; self.classes];
        for (p, &l) in self.predictions().into_iter().zip(&self.labels) {
            if let Some(row) = m.get_mut(l as usize) {
                row[p] += 1;
            }
        }
        m
    }
}

/// Index of the largest value (the first on ties).
pub fn argmax(v: &[f32]) -> usize {
    v.iter()
        .enumerate()
        .fold(0, |best, (i, &x)| if x > v[best] { i } else { best })
}

/// Forward passes (no training) over `source` in batches of at most `batch`, reading each
/// batch's probabilities and labels back after its step.
pub fn infer(trainer: &mut Trainer<'_>, source: usize, batch: usize) -> Result<Inference> {
    let classes = trainer.model.outputs()?;
    let n = trainer.source_len(source);
    let (mut probs, mut labels) = (Vec::with_capacity(n * classes), Vec::with_capacity(n));
    trainer.reset_metrics();
    let mut start = 0;
    while start < n {
        let b = batch.max(1).min(n - start);
        trainer.step(source, start, b, false)?;
        let plan = trainer
            .outputs(source, b, false)
            .ok_or_else(|| Error::gpu("infer", "no plan after its step"))?;
        probs.extend(plan.prob.to_f32(trainer.gpu)?);
        labels.extend(plan.label.to_u32(trainer.gpu)?);
        start += b;
    }
    Ok(Inference {
        probs,
        classes,
        labels,
        metrics: trainer.read_metrics()?,
    })
}

/// Class probabilities of 28x28 digits (u8, light on dark, as [`to_mnist`] makes them),
/// computed by the trainer's GPU kernels.
pub fn predict_digits(trainer: &mut Trainer<'_>, digits: &[Vec<u8>]) -> Result<Vec<Vec<f32>>> {
    if digits.is_empty() {
        return Ok(Vec::new());
    }
    let flat: Vec<u8> = digits.concat();
    let dataset = trainer.add_dataset(&flat, &vec![0; digits.len()])?;
    let order: Vec<u32> = (0..digits.len() as u32).collect();
    let source = trainer.add_source(dataset, &order)?;
    let out = infer(trainer, source, 128)?;
    Ok(out
        .probs
        .chunks(out.classes.max(1))
        .map(<[f32]>::to_vec)
        .collect())
}

/// The confusion matrix as a table: rows are true digits, columns predictions.
pub fn format_confusion(m: &[Vec<usize>]) -> String {
    let mut s = format!("{:>10}", "true\\pred");
    for c in 0..m.len() {
        s += &format!("{c:>6}");
    }
    s.push('\n');
    for (r, row) in m.iter().enumerate() {
        s += &format!("{r:>10}");
        for n in row {
            s += &format!("{n:>6}");
        }
        s.push('\n');
    }
    s
}

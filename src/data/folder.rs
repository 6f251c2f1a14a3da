//! Image-folder datasets, as torchvision's `ImageFolder` and Keras's
//! `image_dataset_from_directory` read them: one sub-folder of PNG images per class.
//!
//! ```text
//! DIR/<class>/*.png                       every image (training; no test set), or
//! DIR/train/<class>/*.png                 the training images and
//! DIR/test/<class>/*.png                  the test images
//! ```
//!
//! Classes are the sub-folders' names sorted (byte order), labelled 0, 1, ...; a test
//! folder may lack classes but has none the training folder lacks. Entries whose names
//! start with `.` are skipped, and so are plain files beside the class folders; inside a
//! class folder everything else must be a `.png` file. Every image must have the same
//! width and height. Channels come from the files: grey (and grey + alpha) images give
//! one channel, RGB, RGBA and palette images three (alpha is dropped, as PIL's
//! `convert("RGB")` does); when any image has colour, grey images are repeated into R, G
//! and B. 16-bit samples keep their high byte. Images are stored as u8 CHW, decoded once.
//!
//! The training images are put in one fixed shuffled order (a seeded shuffle whose seed
//! never changes), so that the validation split, taken from the end of the training set
//! as Keras does, holds every class.

use std::path::{Path, PathBuf};

use super::{ImageData, Split};
use crate::error::{Error, Result};
use crate::rng::Rng;

/// The seed of the fixed order the training images are put in.
pub const SHUFFLE_SEED: u64 = 0x1F01_DE25;
/// At most this many classes: labels are u8.
pub const MAX_CLASSES: usize = 256;
/// Decoded images larger than this many bytes are refused.
pub const MAX_IMAGE_BYTES: usize = 64 << 20;

/// One decoded image: `channels` (1 or 3) interleaved u8 samples per pixel, row-major.
#[derive(Clone, Debug, PartialEq)]
pub struct Image {
    pub width: usize,
    pub height: usize,
    pub channels: usize,
    pub pixels: Vec<u8>,
}

impl Image {
    /// The pixels as CHW planes with `channels` planes (1 or 3): grey repeated into R, G and
    /// B when 3 are asked of a grey image. `None` when a colour image is asked for 1.
    pub fn planes(&self, channels: usize) -> Option<Vec<u8>> {
        let hw = self.width * self.height;
        if self.channels == 3 && channels == 1 {
            return None;
        }
        let mut out = vec![0; channels * hw];
        for c in 0..channels {
            let from = c.min(self.channels - 1);
            for (i, px) in self.pixels.chunks_exact(self.channels).enumerate() {
                out[c * hw + i] = px[from];
            }
        }
        Some(out)
    }
}

fn bad(path: &Path, field: &str, msg: impl Into<String>) -> Error {
    Error::data(path, field, msg)
}

/// Decode a PNG file as 1 (grey) or 3 (colour) channels of u8; see the module docs.
pub fn read_png(path: &Path) -> Result<Image> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    decode_png(path, &bytes)
}

/// [`read_png`] on bytes already read; `path` names them in errors.
pub fn decode_png(path: &Path, bytes: &[u8]) -> Result<Image> {
    if !bytes.starts_with(b"\x89PNG\r\n\x1a\n") {
        let what = if bytes.is_empty() {
            "empty"
        } else {
            "not a PNG file"
        };
        return Err(bad(path, "png", format!("{what} (no PNG signature)")));
    }
    let broken = |e: png::DecodingError| bad(path, "png", format!("not a readable PNG: {e}"));
    let mut decoder = png::Decoder::new(std::io::Cursor::new(bytes));
    decoder.set_transformations(png::Transformations::EXPAND | png::Transformations::STRIP_16);
    let mut reader = decoder.read_info().map_err(broken)?;
    let (w, h) = reader.info().size();
    let size = reader
        .output_buffer_size()
        .filter(|&n| n <= MAX_IMAGE_BYTES)
        .ok_or_else(|| bad(path, "size", format!("{w}x{h} pixels is too large")))?;
    let mut buf = vec![0u8; size];
    let info = reader.next_frame(&mut buf).map_err(broken)?;
    let (width, height) = (info.width as usize, info.height as usize);
    let stored = match info.color_type {
        png::ColorType::Grayscale => 1,
        png::ColorType::GrayscaleAlpha => 2,
        png::ColorType::Rgb => 3,
        png::ColorType::Rgba => 4,
        png::ColorType::Indexed => return Err(bad(path, "png", "palette was not expanded")),
    };
    if info.bit_depth != png::BitDepth::Eight || width == 0 || height == 0 {
        let msg = format!("unsupported {width}x{height} {:?}", info.color_type);
        return Err(bad(path, "png", msg));
    }
    let channels = if stored <= 2 { 1 } else { 3 };
    let mut pixels = Vec::with_capacity(width * height * channels);
    for row in buf.chunks_exact(info.line_size).take(height) {
        for px in row.chunks_exact(stored).take(width) {
            pixels.extend_from_slice(&px[..channels]); // alpha dropped
        }
    }
    if pixels.len() != width * height * channels {
        return Err(bad(path, "png", "image data shorter than its size"));
    }
    Ok(Image {
        width,
        height,
        channels,
        pixels,
    })
}

/// Load the image folders of `dir` (see the module docs). With `names` (a model's classes),
/// folders are labelled by them, and a folder naming no class of theirs is refused; with
/// `want` (a model's input `[C, H, W]`) every image must have its size, and takes its
/// channels.
pub fn load(dir: &Path, names: &[String], want: Option<[usize; 3]>) -> Result<ImageData> {
    let (train_dir, test_dir) = (dir.join("train"), dir.join("test"));
    let split = train_dir.is_dir() && test_dir.is_dir();
    let train_root = if split { &train_dir } else { dir };
    let folders = class_folders(train_root)?;
    let names: Vec<String> = match names.is_empty() {
        true => folders.iter().map(|(n, _)| n.clone()).collect(),
        false => names.to_vec(),
    };
    let (mut train, shape) = read_split(train_root, &folders, &names, want)?;
    shuffle(&mut train);
    let test = match split {
        true => Some(read_split(&test_dir, &class_folders(&test_dir)?, &names, Some(shape))?.0),
        false => None,
    };
    Ok(ImageData {
        train,
        test,
        classes: names.len(),
        names,
    })
}

/// The class folders of `root`, sorted by name: at least 2, at most [`MAX_CLASSES`].
fn class_folders(root: &Path) -> Result<Vec<(String, PathBuf)>> {
    let mut out = Vec::new();
    for (name, path) in entries(root)? {
        if path.is_dir() {
            out.push((name, path));
        }
    }
    if out.len() < 2 || out.len() > MAX_CLASSES {
        let msg = format!(
            "{} class folders; expected 2 to {MAX_CLASSES} sub-folders of PNG images, one per class (DIR/<class>/*.png, or DIR/train/<class>/ and DIR/test/<class>/), or the four MNIST IDX files",
            out.len()
        );
        return Err(bad(root, "classes", msg));
    }
    Ok(out)
}

/// The entries of `dir` whose names do not start with `.`, sorted by name.
fn entries(dir: &Path) -> Result<Vec<(String, PathBuf)>> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))? {
        let path = entry.map_err(|e| Error::io(dir, e))?.path();
        let name = path.file_name().unwrap_or_default();
        let name = name
            .to_str()
            .ok_or_else(|| bad(&path, "name", "is not UTF-8; rename it"))?;
        if !name.starts_with('.') {
            out.push((name.to_string(), path));
        }
    }
    out.sort();
    Ok(out)
}

/// Every image of `folders` (labelled by their index in `names`), each `[C, H, W]` of
/// `want` when given, else all of the first image's height and width (and channels as
/// the module docs say); the split and its shape.
fn read_split(
    root: &Path,
    folders: &[(String, PathBuf)],
    names: &[String],
    want: Option<[usize; 3]>,
) -> Result<(Split, [usize; 3])> {
    let mut images: Vec<(PathBuf, Image, u8)> = Vec::new();
    for (name, folder) in folders {
        let label = names.iter().position(|n| n == name).ok_or_else(|| {
            let msg = format!("{name:?} is not one of the classes {names:?}");
            bad(folder, "class", msg)
        })?;
        let before = images.len();
        for (_, path) in entries(folder)? {
            check_png_name(&path)?;
            let image = read_png(&path)?;
            check_size(&path, &image, want, images.first())?;
            images.push((path, image, label as u8));
        }
        if images.len() == before {
            return Err(bad(
                folder,
                "images",
                "the class folder holds no PNG images",
            ));
        }
    }
    let first = &images[0].1; // at least two classes, each with an image
    let channels = match want {
        Some([c, _, _]) => c,
        None if images.iter().any(|(_, im, _)| im.channels == 3) => 3,
        None => 1,
    };
    let shape = [channels, first.height, first.width];
    let mut pixels = Vec::with_capacity(images.len() * shape.iter().product::<usize>());
    for (path, image, _) in &images {
        let planes = image.planes(channels).ok_or_else(|| {
            bad(path, "channels", format!("is a colour image, but the model takes grey images ({channels} channel); convert it to grey"))
        })?;
        pixels.extend_from_slice(&planes);
    }
    let split = Split {
        images: pixels,
        labels: images.iter().map(|(_, _, l)| *l).collect(),
        n: images.len(),
        channels,
        rows: shape[1],
        cols: shape[2],
    };
    log::debug!("{}: {} images of {shape:?}", root.display(), split.n);
    Ok((split, shape))
}

fn check_png_name(path: &Path) -> Result<()> {
    if path.is_dir() {
        return Err(bad(
            path,
            "file",
            "is a directory; a class folder holds only .png images",
        ));
    }
    let png = path
        .extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| e.eq_ignore_ascii_case("png"));
    if !png {
        let msg =
            "not a .png file; a class folder holds only PNG images (convert it, or move it out)";
        return Err(bad(path, "file", msg));
    }
    Ok(())
}

/// Every image has the first one's size (or the model's, `want`).
fn check_size(
    path: &Path,
    image: &Image,
    want: Option<[usize; 3]>,
    first: Option<&(PathBuf, Image, u8)>,
) -> Result<()> {
    let (w, h) = (image.width, image.height);
    let expected = match (want, first) {
        (Some([_, wh, ww]), _) => Some((ww, wh, "the model takes".to_string())),
        (None, Some((p, f, _))) => Some((f.width, f.height, format!("like {}", p.display()))),
        (None, None) => None,
    };
    match expected {
        Some((ew, eh, why)) if (ew, eh) != (w, h) => Err(bad(
            path,
            "size",
            format!("is {w}x{h} (width x height); every image must be {ew}x{eh}, {why}: resize the images to one size first"),
        )),
        _ => Ok(()),
    }
}

/// Put the images in the fixed order of [`SHUFFLE_SEED`].
fn shuffle(split: &mut Split) {
    let mut order: Vec<usize> = (0..split.n).collect();
    Rng::new(SHUFFLE_SEED).shuffle(&mut order);
    let px = split.pixels_per_image();
    let mut images = Vec::with_capacity(split.images.len());
    for &i in &order {
        images.extend_from_slice(split.image(i));
    }
    split.labels = order.iter().map(|&i| split.labels[i]).collect();
    split.images = images;
    debug_assert_eq!(split.images.len(), split.n * px);
}

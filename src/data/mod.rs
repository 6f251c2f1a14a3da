//! Image data: the IDX reader ([`read_idx`]), the loader of IDX sets of the MNIST layout
//! ([`load_mnist`], with SHA-256 verification and the class count taken from the labels),
//! image folders ([`folder`]), [`load_data_dir`] for either, and [`pack_u8_to_u32`] for
//! uploading bytes to the GPU. See [`idx`] for the IDX file format, and [`text`] for the
//! character-level text corpora.

use std::io;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::error::{Error, Result};

pub mod folder;
pub mod idx;
pub mod text;

use idx::{open_content, ReadCtx};
pub use idx::{parse_idx, read_idx, read_idx_with_cap, IdxArray, DEFAULT_CAP_BYTES};

/// Name of the optional checksum manifest: `<sha256 hex>  <file name>` per line, giving the
/// SHA-256 of each *decompressed* file (names without `.gz`).
pub const SHA256_MANIFEST: &str = "SHA256SUMS.raw";

/// The four standard MNIST file names, without `.gz`.
pub const TRAIN_IMAGES: &str = "train-images-idx3-ubyte";
pub const TRAIN_LABELS: &str = "train-labels-idx1-ubyte";
pub const TEST_IMAGES: &str = "t10k-images-idx3-ubyte";
pub const TEST_LABELS: &str = "t10k-labels-idx1-ubyte";

/// The training and test sets of an IDX set of the MNIST layout (MNIST, Fashion-MNIST).
#[derive(Debug, Clone)]
pub struct Mnist {
    pub train: Split,
    pub test: Split,
    /// Classes: the largest training label + 1 (10 for MNIST).
    pub classes: usize,
}

/// One split: `n` images of `channels × rows × cols` u8 pixels and their labels.
#[derive(Debug, Clone)]
pub struct Split {
    /// `n * channels * rows * cols` pixels, image-major, then channel, row, column (CHW,
    /// as PyTorch lays out an image).
    pub images: Vec<u8>,
    /// `n` labels, each below the set's class count.
    pub labels: Vec<u8>,
    pub n: usize,
    /// 1 (grey) or 3 (RGB); IDX images are grey.
    pub channels: usize,
    pub rows: usize,
    pub cols: usize,
}

impl Split {
    /// Pixels of one image (`channels * rows * cols` bytes, CHW). Panics if `i >= n`.
    pub fn image(&self, i: usize) -> &[u8] {
        let px = self.pixels_per_image();
        &self.images[i * px..(i + 1) * px]
    }

    /// Number of images.
    pub fn len(&self) -> usize {
        self.n
    }

    pub fn is_empty(&self) -> bool {
        self.n == 0
    }

    /// `channels * rows * cols`.
    pub fn pixels_per_image(&self) -> usize {
        self.channels * self.rows * self.cols
    }

    /// The per-image shape `[C, H, W]` a model must take.
    pub fn shape(&self) -> [usize; 3] {
        [self.channels, self.rows, self.cols]
    }
}

/// A labelled image set from a `--data-dir`: IDX files of the MNIST layout or image
/// folders (see [`load_data_dir`]).
#[derive(Debug, Clone)]
pub struct ImageData {
    /// The training images: for a folder without `train/` and `test/`, all of them.
    pub train: Split,
    /// The test images, when the directory has them (IDX sets always do).
    pub test: Option<Split>,
    /// Labels are `0..classes`.
    pub classes: usize,
    /// The class names in label order (the folders' names); empty for IDX sets.
    pub names: Vec<String>,
}

impl From<Mnist> for ImageData {
    fn from(m: Mnist) -> ImageData {
        ImageData {
            train: m.train,
            test: Some(m.test),
            classes: m.classes,
            names: Vec::new(),
        }
    }
}

/// Whether `dir` holds an IDX set (any of the four MNIST file names, raw or `.gz`).
pub fn is_idx_dir(dir: &Path) -> bool {
    [TRAIN_IMAGES, TRAIN_LABELS, TEST_IMAGES, TEST_LABELS]
        .iter()
        .any(|n| find_file(dir, n).is_ok())
}

/// Loads the labelled images of `dir`: an IDX set of the MNIST layout when `dir` holds any
/// of its four files ([`load_mnist`]), else image folders ([`folder::load`]). `names`,
/// when not empty, are the classes a model already knows (a checkpoint's): folders are
/// then labelled by them; `want`, a model's input `[C, H, W]`, is the size folder images
/// must have (IDX sets are checked against it by the caller).
pub fn load_data_dir(dir: &Path, names: &[String], want: Option<[usize; 3]>) -> Result<ImageData> {
    if !dir.is_dir() {
        return Err(Error::data(
            dir,
            "directory",
            "not found or not a directory; expected the four MNIST IDX files or one sub-folder of PNG images per class in it",
        ));
    }
    if is_idx_dir(dir) {
        return load_mnist(dir).map(ImageData::from);
    }
    folder::load(dir, names, want)
}

/// The vendored MNIST directory, `<crate root>/data/mnist`.
pub fn default_data_dir() -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/data/mnist"))
}

/// Packs bytes 4 per `u32`, little-endian: byte `i` goes to word `i / 4`, bits `8 * (i % 4)`;
/// the last word is zero-padded. A WGSL kernel reads byte `i` back as
/// `(words[i / 4u] >> (8u * (i % 4u))) & 0xffu`.
pub fn pack_u8_to_u32(bytes: &[u8]) -> Vec<u32> {
    bytes
        .chunks(4)
        .map(|c| {
            c.iter()
                .enumerate()
                .fold(0u32, |w, (k, &b)| w | (u32::from(b) << (8 * k)))
        })
        .collect()
}

/// Loads MNIST from `dir`: the four standard files, each raw or with `.gz` appended (raw is
/// used when both exist). If `dir` holds [`SHA256_MANIFEST`], each file's decompressed content
/// must match its SHA-256 there; directories without it skip that check.
pub fn load_mnist(dir: &Path) -> Result<Mnist> {
    if !dir.is_dir() {
        return Err(Error::data(
            dir,
            "directory",
            "not found or not a directory; expected the four MNIST IDX files in it",
        ));
    }
    let manifest = read_manifest(dir)?;
    let train = load_split(dir, TRAIN_IMAGES, TRAIN_LABELS, manifest.as_deref())?;
    let test = load_split(dir, TEST_IMAGES, TEST_LABELS, manifest.as_deref())?;
    let classes = check_classes(dir, &train, &test)?;
    if (train.rows, train.cols) != (test.rows, test.cols) {
        return Err(Error::data(
            dir.join(TEST_IMAGES),
            "dims",
            format!(
                "test images are {}x{} but training images are {}x{}",
                test.rows, test.cols, train.rows, train.cols
            ),
        ));
    }
    Ok(Mnist {
        train,
        test,
        classes,
    })
}

/// The class count, the largest training label + 1: at least 2, and no test label at or
/// past it.
fn check_classes(dir: &Path, train: &Split, test: &Split) -> Result<usize> {
    let classes = usize::from(train.labels.iter().copied().max().unwrap_or(0)) + 1;
    if classes < 2 {
        return Err(Error::data(
            dir.join(TRAIN_LABELS),
            "label",
            "every training label is 0; a classifier needs at least 2 classes (labels 0 and 1)",
        ));
    }
    if let Some((i, &v)) = test
        .labels
        .iter()
        .enumerate()
        .find(|(_, &v)| usize::from(v) >= classes)
    {
        return Err(Error::data(
            dir.join(TEST_LABELS),
            "label",
            format!(
                "label at index {i} is {v}, but the training labels are 0..={} ({classes} classes)",
                classes - 1
            ),
        ));
    }
    Ok(classes)
}

/// Checks the four MNIST files in `dir` against `dir/SHA256SUMS.raw` (SHA-256 of the
/// decompressed content). Returns `Ok(())` without checking if the manifest is absent.
pub fn verify_sha256(dir: &Path) -> Result<()> {
    let Some(manifest) = read_manifest(dir)? else {
        return Ok(());
    };
    for name in [TRAIN_IMAGES, TRAIN_LABELS, TEST_IMAGES, TEST_LABELS] {
        let path = find_file(dir, name)?;
        let (mut r, gz) = open_content(&path, DEFAULT_CAP_BYTES)?;
        let mut hasher = Sha256::new();
        let n = ReadCtx { path: &path, gz }.io(io::copy(&mut r, &mut hasher))?;
        if n > DEFAULT_CAP_BYTES {
            return Err(Error::data(
                &path,
                "length",
                format!("content exceeds the cap of {DEFAULT_CAP_BYTES} bytes"),
            ));
        }
        check_digest(&path, name, &manifest, &hex(&hasher.finalize()))?;
    }
    Ok(())
}

// ---- internals ---------------------------------------------------------------------------

type Manifest = [(String, String)];

fn load_split(
    dir: &Path,
    images: &str,
    labels: &str,
    manifest: Option<&Manifest>,
) -> Result<Split> {
    let ipath = find_file(dir, images)?;
    let lpath = find_file(dir, labels)?;
    let img = read_idx(&ipath)?;
    if let Some(m) = manifest {
        check_digest(&ipath, images, m, &idx_sha256(&img))?;
    }
    let lab = read_idx(&lpath)?;
    if let Some(m) = manifest {
        check_digest(&lpath, labels, m, &idx_sha256(&lab))?;
    }
    let (n, rows, cols) = match img.dims[..] {
        [n, rows, cols] => (n, rows, cols),
        _ => {
            return Err(Error::data(
                &ipath,
                "magic",
                format!(
                    "expected magic 0x00000803 (u8 images, 3 dims), found 0x000008{:02x} ({} dims)",
                    img.dims.len(),
                    img.dims.len()
                ),
            ))
        }
    };
    if lab.dims.len() != 1 {
        return Err(Error::data(
            &lpath,
            "magic",
            format!(
                "expected magic 0x00000801 (u8 labels, 1 dim), found 0x000008{:02x} ({} dims)",
                lab.dims.len(),
                lab.dims.len()
            ),
        ));
    }
    if rows == 0 || cols == 0 {
        return Err(Error::data(
            &ipath,
            "dims",
            format!("image size is {rows}x{cols}; rows and cols must be nonzero"),
        ));
    }
    if lab.data.len() != n {
        return Err(Error::data(
            &lpath,
            "count",
            format!(
                "images file {} holds {n} images but labels file {} holds {} labels",
                ipath.display(),
                lpath.display(),
                lab.data.len()
            ),
        ));
    }
    Ok(Split {
        images: img.data,
        labels: lab.data,
        n,
        channels: 1,
        rows,
        cols,
    })
}

/// `dir/name` if it exists, else `dir/name.gz`, else a "missing" error.
fn find_file(dir: &Path, name: &str) -> Result<PathBuf> {
    let raw = dir.join(name);
    if raw.is_file() {
        return Ok(raw);
    }
    let gz = dir.join(format!("{name}.gz"));
    if gz.is_file() {
        return Ok(gz);
    }
    Err(Error::data(
        &raw,
        "file",
        format!("missing: expected {name} or {name}.gz in {}", dir.display()),
    ))
}

/// Parses `dir/SHA256SUMS.raw` into `(file name, lowercase hex digest)` pairs; `None` if absent.
fn read_manifest(dir: &Path) -> Result<Option<Vec<(String, String)>>> {
    let path = dir.join(SHA256_MANIFEST);
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(Error::io(&path, e)),
    };
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let bad = || {
            Error::data(
                &path,
                format!("line {}", i + 1),
                format!("expected `<64 hex digits>  <file name>`, found {line:?}"),
            )
        };
        let (digest, name) = line.split_once(char::is_whitespace).ok_or_else(bad)?;
        // sha256sum writes " *name" in binary mode.
        let name = name.trim_start().trim_start_matches('*');
        if digest.len() != 64 || !digest.bytes().all(|b| b.is_ascii_hexdigit()) || name.is_empty() {
            return Err(bad());
        }
        out.push((name.to_string(), digest.to_ascii_lowercase()));
    }
    Ok(Some(out))
}

fn check_digest(path: &Path, name: &str, manifest: &Manifest, actual: &str) -> Result<()> {
    let expected = manifest
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, d)| d.as_str())
        .ok_or_else(|| {
            Error::data(
                path,
                "sha256",
                format!("{SHA256_MANIFEST} in the same directory has no entry for {name}"),
            )
        })?;
    if expected != actual {
        return Err(Error::data(path, "sha256", format!(
            "SHA-256 of the decompressed content is {actual} but {SHA256_MANIFEST} expects {expected}; the file is corrupt or not the original"
        )));
    }
    Ok(())
}

/// SHA-256 of the file content an `IdxArray` was read from: read_idx accepts exactly one
/// layout per (type, dims), so the header is rebuilt here rather than decompressing twice.
fn idx_sha256(a: &IdxArray) -> String {
    let mut h = Sha256::new();
    h.update([0, 0, 0x08, a.dims.len() as u8]);
    for &d in &a.dims {
        h.update((d as u32).to_be_bytes());
    }
    h.update(&a.data);
    hex(&h.finalize())
}

fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(s, "{b:02x}");
    }
    s
}

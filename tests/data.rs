//! Tests of the IDX reader and the MNIST loader: synthetic files in a temp dir for every
//! error path, plus the vendored MNIST in `data/mnist`.

use std::fs;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::Instant;

use flate2::read::GzDecoder;
use flate2::write::GzEncoder;
use flate2::Compression;
use sha2::{Digest, Sha256};
use shadergrad::data::{
    default_data_dir, load_mnist, pack_u8_to_u32, read_idx, read_idx_with_cap, verify_sha256,
    IdxArray,
};

/// A fresh temp dir, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> Self {
        let p = std::env::temp_dir().join(format!(
            "shadergrad-test-data-{}-{name}",
            std::process::id()
        ));
        let _ = fs::remove_dir_all(&p);
        fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }

    fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// Header + data of a u8 IDX file.
fn idx_bytes(dims: &[u32], data: &[u8]) -> Vec<u8> {
    let mut v = vec![0, 0, 0x08, dims.len() as u8];
    for d in dims {
        v.extend_from_slice(&d.to_be_bytes());
    }
    v.extend_from_slice(data);
    v
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut e = GzEncoder::new(Vec::new(), Compression::default());
    e.write_all(bytes).unwrap();
    e.finish().unwrap()
}

fn gunzip(bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    GzDecoder::new(bytes).read_to_end(&mut out).unwrap();
    out
}

fn write(path: &Path, bytes: &[u8]) -> PathBuf {
    fs::write(path, bytes).unwrap();
    path.to_path_buf()
}

/// Asserts `r` is an error whose message contains each of `words`.
#[track_caller]
fn assert_err<T: std::fmt::Debug>(r: shadergrad::Result<T>, words: &[&str]) -> String {
    let msg = r.expect_err("expected an error").to_string();
    eprintln!("{msg}");
    for w in words {
        assert!(msg.contains(w), "error {msg:?} does not contain {w:?}");
    }
    msg
}

/// A small MNIST-like dataset: 3 train and 2 test images of 2x3 pixels.
fn write_small_mnist(dir: &TempDir, gz: bool) {
    let files: [(&str, Vec<u8>); 4] = [
        (
            "train-images-idx3-ubyte",
            idx_bytes(&[3, 2, 3], &(0..18).collect::<Vec<u8>>()),
        ),
        ("train-labels-idx1-ubyte", idx_bytes(&[3], &[5, 0, 9])),
        (
            "t10k-images-idx3-ubyte",
            idx_bytes(&[2, 2, 3], &(100..112).collect::<Vec<u8>>()),
        ),
        ("t10k-labels-idx1-ubyte", idx_bytes(&[2], &[7, 2])),
    ];
    for (name, bytes) in files {
        if gz {
            write(&dir.path(&format!("{name}.gz")), &gzip(&bytes));
        } else {
            write(&dir.path(name), &bytes);
        }
    }
}

fn sha_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

// ---- read_idx: good files ------------------------------------------------------------------

#[test]
fn raw_and_gzip_round_trip() {
    let dir = TempDir::new("round-trip");
    let data: Vec<u8> = (0..24).collect();
    let bytes = idx_bytes(&[2, 3, 4], &data);
    let want = IdxArray {
        dims: vec![2, 3, 4],
        data,
    };
    assert_eq!(read_idx(&write(&dir.path("a.idx"), &bytes)).unwrap(), want);
    // gzip detected by magic bytes, whatever the extension
    assert_eq!(
        read_idx(&write(&dir.path("b.gz"), &gzip(&bytes))).unwrap(),
        want
    );
    assert_eq!(
        read_idx(&write(&dir.path("c.idx"), &gzip(&bytes))).unwrap(),
        want
    );
    let labels = idx_bytes(&[5], &[1, 2, 3, 4, 5]);
    let a = read_idx(&write(&dir.path("l"), &labels)).unwrap();
    assert_eq!((a.dims, a.data), (vec![5], vec![1, 2, 3, 4, 5]));
    // a zero-sized dimension is a valid, empty array
    let a = read_idx(&write(&dir.path("z"), &idx_bytes(&[0, 28, 28], &[]))).unwrap();
    assert_eq!((a.dims, a.data.len()), (vec![0, 28, 28], 0));
}

// ---- read_idx: bad files -------------------------------------------------------------------

#[test]
fn missing_file_is_io_error() {
    let dir = TempDir::new("missing-file");
    assert_err(read_idx(&dir.path("nothere.idx")), &["nothere.idx"]);
}

#[test]
fn empty_file() {
    let dir = TempDir::new("empty");
    let p = write(&dir.path("empty.idx"), &[]);
    assert_err(read_idx(&p), &["empty.idx", "empty"]);
    // a gzip stream of nothing
    let p = write(&dir.path("empty.gz"), &gzip(&[]));
    assert_err(read_idx(&p), &["empty.gz", "empty"]);
}

#[test]
fn truncated_header() {
    let dir = TempDir::new("trunc-header");
    let p = write(&dir.path("short.idx"), &[0, 0, 8]);
    assert_err(read_idx(&p), &["short.idx", "truncated header"]);
    // magic complete, dims cut: 3 dims need 12 bytes, only 5 present
    let p = write(&dir.path("dims.idx"), &[0, 0, 8, 3, 0, 0, 0, 2, 0]);
    assert_err(
        read_idx(&p),
        &["dims.idx", "truncated header", "found 5 bytes"],
    );
    let p = write(&dir.path("dims.gz"), &gzip(&[0, 0, 8, 1, 0]));
    assert_err(read_idx(&p), &["dims.gz", "truncated header"]);
}

#[test]
fn wrong_magic() {
    let dir = TempDir::new("magic");
    let mut b = idx_bytes(&[2], &[1, 2]);
    b[1] = 7;
    let p = write(&dir.path("magic.idx"), &b);
    assert_err(read_idx(&p), &["magic.idx", "magic"]);
    // a text file
    let p = write(&dir.path("text.idx"), b"hello world");
    assert_err(read_idx(&p), &["text.idx", "magic"]);
}

#[test]
fn wrong_element_type() {
    let dir = TempDir::new("etype");
    let mut b = idx_bytes(&[2], &[0; 8]);
    b[2] = 0x0d; // f32
    let p = write(&dir.path("float.idx"), &b);
    assert_err(
        read_idx(&p),
        &["float.idx", "element type", "0x08", "0x0d", "f32"],
    );
}

#[test]
fn wrong_number_of_dims() {
    let dir = TempDir::new("ndims");
    let p = write(&dir.path("zero.idx"), &[0, 0, 8, 0, 1, 2, 3, 4]);
    assert_err(read_idx(&p), &["zero.idx", "dimensions", "is 0"]);
    let p = write(&dir.path("five.idx"), &idx_bytes(&[1, 1, 1, 1, 1], &[9]));
    assert_err(read_idx(&p), &["five.idx", "dimensions", "is 5"]);
}

#[test]
fn dims_overflow() {
    let dir = TempDir::new("overflow");
    let p = write(
        &dir.path("huge.idx"),
        &idx_bytes(&[u32::MAX, u32::MAX, u32::MAX], &[]),
    );
    assert_err(read_idx(&p), &["huge.idx", "overflow"]);
}

#[test]
fn truncated_data() {
    let dir = TempDir::new("trunc-data");
    let b = idx_bytes(&[3, 2, 2], &[1; 10]); // 12 declared
    let p = write(&dir.path("short.idx"), &b);
    assert_err(
        read_idx(&p),
        &[
            "short.idx",
            "expected 12 bytes of data after the header, found 10",
        ],
    );
    let p = write(&dir.path("short.gz"), &gzip(&b));
    assert_err(
        read_idx(&p),
        &[
            "short.gz",
            "expected 12 bytes of data after the header, found 10",
        ],
    );
}

#[test]
fn trailing_bytes() {
    let dir = TempDir::new("trailing");
    let b = idx_bytes(&[4], &[1, 2, 3, 4, 5, 6, 7]); // 4 declared, 7 present
    let p = write(&dir.path("long.idx"), &b);
    assert_err(
        read_idx(&p),
        &[
            "long.idx",
            "expected 4 bytes of data after the header, found 7",
        ],
    );
    let p = write(&dir.path("long.gz"), &gzip(&b));
    assert_err(
        read_idx(&p),
        &[
            "long.gz",
            "expected 4 bytes of data after the header, found 7",
        ],
    );
}

#[test]
fn corrupt_gzip() {
    let dir = TempDir::new("corrupt-gz");
    let data: Vec<u8> = (0..=255).cycle().take(5000).collect();
    let good = gzip(&idx_bytes(&[5000], &data));
    // cut off the end of the stream (and the CRC trailer)
    let p = write(&dir.path("cut.gz"), &good[..good.len() / 2]);
    assert_err(read_idx(&p), &["cut.gz", "gzip"]);
    // damage the CRC trailer only: decompression works but the check must fail
    let mut bad_crc = good.clone();
    let n = bad_crc.len();
    bad_crc[n - 8] ^= 0xff;
    let p = write(&dir.path("crc.gz"), &bad_crc);
    assert_err(read_idx(&p), &["crc.gz", "gzip"]);
    // garbage deflate data after a valid gzip header
    let mut garbage = good[..10].to_vec();
    garbage.extend_from_slice(&[0xff; 64]);
    let p = write(&dir.path("garbage.gz"), &garbage);
    assert_err(read_idx(&p), &["garbage.gz", "gzip"]);
}

#[test]
fn inflate_cap() {
    let dir = TempDir::new("cap");
    // the header declares more than the cap: refused before inflating the data
    let p = write(
        &dir.path("big.gz"),
        &gzip(&idx_bytes(&[100_000], &vec![0; 100_000])),
    );
    assert_err(
        read_idx_with_cap(&p, 1000),
        &["big.gz", "cap of 1000 bytes"],
    );
    assert_eq!(read_idx_with_cap(&p, 100_008).unwrap().data.len(), 100_000);
    // a small declared array followed by a flood of zeros (a gzip bomb): stops at the cap
    let p = write(
        &dir.path("bomb.gz"),
        &gzip(&idx_bytes(&[10], &vec![0; 10_000_000])),
    );
    assert_err(
        read_idx_with_cap(&p, 4096),
        &["bomb.gz", "cap of 4096 bytes"],
    );
    // the default cap still reports it as trailing data
    assert_err(
        read_idx(&p),
        &["bomb.gz", "expected 10 bytes", "found 10000000"],
    );
}

// ---- load_mnist ----------------------------------------------------------------------------

#[test]
fn small_mnist_raw_and_gz() {
    for gz in [false, true] {
        let dir = TempDir::new(&format!("small-{gz}"));
        write_small_mnist(&dir, gz);
        let m = load_mnist(&dir.0).unwrap();
        assert_eq!((m.train.len(), m.train.rows, m.train.cols), (3, 2, 3));
        assert_eq!((m.test.n, m.test.rows, m.test.cols), (2, 2, 3));
        assert_eq!(m.train.labels, vec![5, 0, 9]);
        assert_eq!(m.test.labels, vec![7, 2]);
        assert_eq!(m.train.image(1), &[6, 7, 8, 9, 10, 11]);
        assert_eq!(m.test.image(1), &[106, 107, 108, 109, 110, 111]);
        assert_eq!(m.train.images.len(), 18);
        // no SHA256SUMS.raw: the check is skipped
        verify_sha256(&dir.0).unwrap();
    }
}

#[test]
fn small_mnist_with_manifest() {
    let dir = TempDir::new("small-manifest");
    write_small_mnist(&dir, true);
    let names = [
        "train-images-idx3-ubyte",
        "train-labels-idx1-ubyte",
        "t10k-images-idx3-ubyte",
        "t10k-labels-idx1-ubyte",
    ];
    let mut manifest = String::new();
    for name in names {
        let raw = gunzip(&fs::read(dir.path(&format!("{name}.gz"))).unwrap());
        manifest += &format!("{}  {name}\n", sha_hex(&raw));
    }
    write(&dir.path("SHA256SUMS.raw"), manifest.as_bytes());
    load_mnist(&dir.0).unwrap();
    verify_sha256(&dir.0).unwrap();

    // a manifest line that is not `<hex>  <name>`
    write(&dir.path("SHA256SUMS.raw"), b"nonsense\n");
    assert_err(load_mnist(&dir.0), &["SHA256SUMS.raw", "line 1"]);
    // a manifest without an entry for one of the files
    write(
        &dir.path("SHA256SUMS.raw"),
        manifest
            .lines()
            .take(3)
            .collect::<Vec<_>>()
            .join("\n")
            .as_bytes(),
    );
    assert_err(
        load_mnist(&dir.0),
        &["t10k-labels-idx1-ubyte", "sha256", "no entry"],
    );
}

#[test]
fn missing_file_in_dir() {
    let dir = TempDir::new("missing-in-dir");
    write_small_mnist(&dir, true);
    fs::remove_file(dir.path("t10k-labels-idx1-ubyte.gz")).unwrap();
    assert_err(
        load_mnist(&dir.0),
        &[
            "t10k-labels-idx1-ubyte",
            "missing",
            "t10k-labels-idx1-ubyte.gz",
        ],
    );
    assert_err(
        load_mnist(&dir.path("no-such-dir")),
        &["no-such-dir", "directory"],
    );
}

#[test]
fn images_labels_count_mismatch() {
    let dir = TempDir::new("count");
    write_small_mnist(&dir, false);
    write(
        &dir.path("train-labels-idx1-ubyte"),
        &idx_bytes(&[2], &[1, 2]),
    );
    assert_err(
        load_mnist(&dir.0),
        &[
            "train-images-idx3-ubyte",
            "train-labels-idx1-ubyte",
            "3 images",
            "2 labels",
        ],
    );
}

#[test]
fn label_out_of_range() {
    let dir = TempDir::new("label");
    write_small_mnist(&dir, false);
    write(
        &dir.path("t10k-labels-idx1-ubyte"),
        &idx_bytes(&[2], &[3, 10]),
    );
    assert_err(
        load_mnist(&dir.0),
        &["t10k-labels-idx1-ubyte", "index 1", "is 10"],
    );
}

#[test]
fn wrong_file_kind() {
    let dir = TempDir::new("kind");
    write_small_mnist(&dir, false);
    // labels where images belong
    write(
        &dir.path("train-images-idx3-ubyte"),
        &idx_bytes(&[3], &[1, 2, 3]),
    );
    assert_err(
        load_mnist(&dir.0),
        &["train-images-idx3-ubyte", "0x00000803"],
    );
    write_small_mnist(&dir, false);
    write(
        &dir.path("train-labels-idx1-ubyte"),
        &idx_bytes(&[3, 1], &[1, 2, 3]),
    );
    assert_err(
        load_mnist(&dir.0),
        &["train-labels-idx1-ubyte", "0x00000801"],
    );
    // zero-sized images
    write_small_mnist(&dir, false);
    write(
        &dir.path("train-images-idx3-ubyte"),
        &idx_bytes(&[3, 0, 3], &[]),
    );
    assert_err(load_mnist(&dir.0), &["train-images-idx3-ubyte", "nonzero"]);
}

// ---- pack_u8_to_u32 ------------------------------------------------------------------------

#[test]
fn pack_bytes_little_endian() {
    assert_eq!(pack_u8_to_u32(&[]), Vec::<u32>::new());
    assert_eq!(
        pack_u8_to_u32(&[1, 2, 3, 4, 5, 6, 7, 8]),
        vec![0x0403_0201, 0x0807_0605]
    );
    assert_eq!(pack_u8_to_u32(&[0xff, 0x80]), vec![0x0000_80ff]);
    assert_eq!(pack_u8_to_u32(&[1, 2, 3, 4, 9]), vec![0x0403_0201, 9]);
    // the unpacking rule the GPU kernel uses recovers every byte
    let bytes: Vec<u8> = (0..1001u32).map(|i| (i * 37 % 256) as u8).collect();
    let words = pack_u8_to_u32(&bytes);
    assert_eq!(words.len(), 251);
    for (i, &b) in bytes.iter().enumerate() {
        assert_eq!((words[i / 4] >> (8 * (i % 4))) & 0xff, u32::from(b));
    }
}

// ---- the vendored MNIST --------------------------------------------------------------------

#[test]
fn real_mnist() {
    let dir = default_data_dir();
    assert!(dir.ends_with("data/mnist"));
    let t0 = Instant::now();
    let m = load_mnist(&dir).unwrap();
    let secs = t0.elapsed().as_secs_f64();
    assert!(secs < 30.0, "loading MNIST took {secs:.1} s");
    eprintln!("load_mnist (with SHA-256 check): {secs:.2} s");

    assert_eq!((m.train.n, m.train.rows, m.train.cols), (60000, 28, 28));
    assert_eq!((m.test.n, m.test.rows, m.test.cols), (10000, 28, 28));
    assert_eq!(m.train.images.len(), 60000 * 784);
    assert_eq!(m.test.images.len(), 10000 * 784);
    assert_eq!(m.train.labels.len(), 60000);
    assert_eq!(m.test.labels.len(), 10000);
    assert_eq!(&m.train.labels[..10], &[5, 0, 4, 1, 9, 2, 1, 3, 1, 4]);
    assert_eq!(&m.test.labels[..10], &[7, 2, 1, 0, 4, 1, 4, 9, 5, 9]);
    let mut counts = [0usize; 10];
    for &l in &m.train.labels {
        counts[l as usize] += 1;
    }
    assert_eq!(
        counts,
        [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
    );
    // MNIST digits sit on a black background: corners are 0, some pixel is bright
    let img = m.train.image(0);
    assert_eq!(img.len(), 784);
    assert_eq!((img[0], img[27], img[783]), (0, 0, 0));
    assert!(img.iter().any(|&p| p > 200));

    verify_sha256(&dir).unwrap();
}

#[test]
fn tampered_mnist_fails_sha() {
    let src = default_data_dir();
    let dir = TempDir::new("tampered");
    for name in [
        "train-images-idx3-ubyte.gz",
        "train-labels-idx1-ubyte.gz",
        "t10k-images-idx3-ubyte.gz",
        "t10k-labels-idx1-ubyte.gz",
        "SHA256SUMS.raw",
    ] {
        fs::copy(src.join(name), dir.path(name)).unwrap();
    }
    // decompress the training labels, change one label to another valid label, write it raw
    let mut raw = gunzip(&fs::read(dir.path("train-labels-idx1-ubyte.gz")).unwrap());
    assert_eq!(raw[8], 5);
    raw[8] = 3;
    fs::remove_file(dir.path("train-labels-idx1-ubyte.gz")).unwrap();
    write(&dir.path("train-labels-idx1-ubyte"), &raw);

    // the file is still a valid IDX file...
    assert_eq!(
        read_idx(&dir.path("train-labels-idx1-ubyte")).unwrap().data[0],
        3
    );
    // ...but its content is not the original
    let words = ["train-labels-idx1-ubyte", "sha256", "SHA256SUMS.raw"];
    assert_err(load_mnist(&dir.0), &words);
    assert_err(verify_sha256(&dir.0), &words);
}

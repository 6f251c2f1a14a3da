//! Character-level text corpora for sequence models: a UTF-8 text file (raw or gzip) read
//! into a vocabulary of its sorted distinct characters and two encoded splits, train (the
//! first part) and val (the last `val_fraction`). The shipped corpus, Shakespeare's
//! tragedies (see `data/text/README.md`), is checked against its SHA-256 on every load.
//!
//! On the GPU the two splits live in one u32 buffer, train then val ([`TextCorpus::upload`]),
//! and [`crate::kernels::random::text_windows`] draws each batch there.

use std::io::{self, Read};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use super::idx::{open_content, ReadCtx, DEFAULT_CAP_BYTES};
use super::{check_digest, hex, read_manifest};
use crate::error::{Error, Result};
use crate::gpu::Gpu;
use crate::kernels::random::TextWindows;
use crate::tensor::Tensor;

/// File name of the shipped corpus in `data/text`.
pub const DEFAULT_TEXT: &str = "shakespeare_tragedies.txt.gz";

/// Share of the text (its end) held out for validation by [`TextCorpus::load`].
pub const DEFAULT_VAL_FRACTION: f64 = 0.1;

/// The shipped corpus, `<crate root>/data/text/shakespeare_tragedies.txt.gz`.
pub fn default_text_path() -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/data/text")).join(DEFAULT_TEXT)
}

/// One of the two parts of a [`TextCorpus`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TextSplit {
    Train,
    Val,
}

/// A text encoded character by character: token `k` is the character `vocab[k]`.
#[derive(Debug, Clone)]
pub struct TextCorpus {
    /// The file it came from (named in errors).
    pub path: PathBuf,
    /// The distinct characters of the whole text, sorted by code point.
    pub vocab: Vec<char>,
    /// The first `len - floor(len * val_fraction)` characters, encoded.
    pub train: Vec<u32>,
    /// The last `floor(len * val_fraction)` characters, encoded.
    pub val: Vec<u32>,
    pub val_fraction: f64,
}

impl TextCorpus {
    /// [`TextCorpus::load_with`] holding out the last [`DEFAULT_VAL_FRACTION`] (10%).
    pub fn load(path: &Path) -> Result<TextCorpus> {
        Self::load_with(path, DEFAULT_VAL_FRACTION)
    }

    /// Reads a UTF-8 text file, raw or gzip (detected by its magic bytes). If the file's
    /// directory holds a `SHA256SUMS.raw` naming it (without `.gz`), the decompressed
    /// content must match that SHA-256; the shipped corpus is named there.
    pub fn load_with(path: &Path, val_fraction: f64) -> Result<TextCorpus> {
        let (bytes, gz) = read_content(path)?;
        verify_listed_sha256(path, &bytes)?;
        let text = String::from_utf8(bytes).map_err(|e| not_utf8(path, gz, &e))?;
        Self::from_text(path, &text, val_fraction)
    }

    /// Builds the corpus from text in memory; `path` names it in errors.
    pub fn from_text(path: &Path, text: &str, val_fraction: f64) -> Result<TextCorpus> {
        if !(0.0..1.0).contains(&val_fraction) {
            return Err(Error::usage(
                "val_fraction",
                format!("{val_fraction} must lie in [0, 1) (the share of the text held out)"),
            ));
        }
        if text.is_empty() {
            return Err(Error::data(
                path,
                "length",
                "no characters; expected UTF-8 text",
            ));
        }
        let mut vocab: Vec<char> = text.chars().collect();
        vocab.sort_unstable();
        vocab.dedup();
        if vocab.len() < 2 {
            return Err(Error::data(
                path,
                "vocabulary",
                format!(
                    "only one distinct character ({:?}); a character model needs at least 2",
                    vocab[0]
                ),
            ));
        }
        let mut corpus = TextCorpus {
            path: path.to_path_buf(),
            vocab,
            train: Vec::new(),
            val: Vec::new(),
            val_fraction,
        };
        let mut tokens = corpus.encode(text)?;
        let n_val = (tokens.len() as f64 * val_fraction).floor() as usize;
        corpus.val = tokens.split_off(tokens.len() - n_val);
        corpus.train = tokens;
        Ok(corpus)
    }

    pub fn vocab_size(&self) -> usize {
        self.vocab.len()
    }

    /// Total number of characters, train and val.
    pub fn len(&self) -> usize {
        self.train.len() + self.val.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The encoded tokens of one split.
    pub fn split(&self, split: TextSplit) -> &[u32] {
        match split {
            TextSplit::Train => &self.train,
            TextSplit::Val => &self.val,
        }
    }

    /// The token ids of `s`; an error names the first character not in the vocabulary.
    pub fn encode(&self, s: &str) -> Result<Vec<u32>> {
        s.chars()
            .enumerate()
            .map(|(i, c)| {
                self.vocab.binary_search(&c).map(|k| k as u32).map_err(|_| {
                    Error::data(&self.path, "vocabulary", format!(
                        "character {c:?} (U+{:04X}) at position {i} of the text to encode is not among the corpus's {} characters",
                        c as u32,
                        self.vocab.len()
                    ))
                })
            })
            .collect()
    }

    /// The text of `ids`; an id outside the vocabulary becomes U+FFFD.
    pub fn decode(&self, ids: &[u32]) -> String {
        ids.iter()
            .map(|&k| {
                self.vocab
                    .get(k as usize)
                    .copied()
                    .unwrap_or(char::REPLACEMENT_CHARACTER)
            })
            .collect()
    }

    /// Checks that both splits hold at least one window of `seq_len + 1` tokens (inputs
    /// and their next-token targets).
    pub fn check_window(&self, seq_len: usize) -> Result<()> {
        self.check_split(TextSplit::Train, seq_len)?;
        self.check_split(TextSplit::Val, seq_len)
    }

    fn check_split(&self, split: TextSplit, seq_len: usize) -> Result<()> {
        if seq_len == 0 {
            return Err(Error::usage("context", "must be at least 1 token"));
        }
        let n = self.split(split).len();
        if n > seq_len {
            return Ok(());
        }
        let (what, hint) = match split {
            TextSplit::Train => ("the training split", "a longer text or a shorter context"),
            TextSplit::Val => (
                "the held-out split",
                "a longer text, a larger val fraction or a shorter context",
            ),
        };
        Err(Error::data(&self.path, "length", format!(
            "{what} has {n} characters ({} in all, val fraction {}); one window of context {seq_len} needs {} (context + 1). Hint: use {hint}",
            self.len(),
            self.val_fraction,
            seq_len + 1
        )))
    }

    /// Where `split` lies in [`TextCorpus::tokens`] and the windows to draw from it, for
    /// [`crate::kernels::random::text_windows`]; checks that a window fits.
    pub fn windows(&self, split: TextSplit, batch: usize, seq_len: usize) -> Result<TextWindows> {
        self.check_split(split, seq_len)?;
        let offset = match split {
            TextSplit::Train => 0,
            TextSplit::Val => self.train.len(),
        };
        Ok(TextWindows {
            offset,
            len: self.split(split).len(),
            batch,
            seq_len,
        })
    }

    /// All tokens, train then val (the layout of [`TextCorpus::upload`]).
    pub fn tokens(&self) -> Vec<u32> {
        [&self.train[..], &self.val[..]].concat()
    }

    /// Uploads [`TextCorpus::tokens`] as one u32 tensor of shape `[len]`.
    pub fn upload(&self, gpu: &Gpu) -> Result<Tensor> {
        let tokens = self.tokens();
        Tensor::from_u32(gpu, "text tokens", &[tokens.len()], &tokens)
    }

    /// Bits per character of the held-out split under the training split's unigram model
    /// with add-one smoothing, p(c) = (count(c) + 1) / (train len + vocab size): the
    /// baseline a sequence model must beat. NaN when the held-out split is empty.
    pub fn unigram_bpc(&self) -> f64 {
        let mut counts = vec![0u64; self.vocab.len()];
        for &k in &self.train {
            counts[k as usize] += 1;
        }
        let total = (self.train.len() + self.vocab.len()) as f64;
        let bits: f64 = self
            .val
            .iter()
            .map(|&k| -((counts[k as usize] + 1) as f64 / total).log2())
            .sum();
        bits / self.val.len() as f64
    }
}

// ---- internals ---------------------------------------------------------------------------

/// The file's content, gunzipped if it starts with the gzip magic, at most
/// [`DEFAULT_CAP_BYTES`]; and whether it was gzip.
fn read_content(path: &Path) -> Result<(Vec<u8>, bool)> {
    match std::fs::metadata(path) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Err(Error::data(
                path,
                "file",
                "not found; expected a UTF-8 text file (raw or .gz)",
            ))
        }
        Err(e) => return Err(Error::io(path, e)),
        Ok(m) if m.len() == 0 => {
            return Err(Error::data(
                path,
                "length",
                "file is empty (0 bytes); expected UTF-8 text",
            ))
        }
        Ok(_) => {}
    }
    let (mut r, gz) = open_content(path, DEFAULT_CAP_BYTES)?;
    let mut bytes = Vec::new();
    ReadCtx { path, gz }.io(r.read_to_end(&mut bytes))?;
    if bytes.len() as u64 > DEFAULT_CAP_BYTES {
        return Err(Error::data(
            path,
            "length",
            format!("content exceeds the cap of {DEFAULT_CAP_BYTES} bytes"),
        ));
    }
    if bytes.is_empty() {
        return Err(Error::data(
            path,
            "length",
            "gzip stream decompresses to 0 bytes; expected UTF-8 text",
        ));
    }
    Ok((bytes, gz))
}

fn not_utf8(path: &Path, gz: bool, e: &std::string::FromUtf8Error) -> Error {
    let at = e.utf8_error().valid_up_to();
    let byte = e.as_bytes()[at];
    let what = match e.utf8_error().error_len() {
        Some(_) => "invalid",
        None => "truncated (the content ends inside a character)",
    };
    Error::data(path, "encoding", format!(
        "not UTF-8: {what} sequence starting with byte 0x{byte:02x} at byte offset {at} of the {}content; expected UTF-8 text",
        if gz { "decompressed " } else { "" }
    ))
}

/// Checks `bytes` against `SHA256SUMS.raw` beside `path` when that manifest names the file
/// (its name without `.gz`); other files are not checked.
fn verify_listed_sha256(path: &Path, bytes: &[u8]) -> Result<()> {
    let (Some(dir), Some(name)) = (path.parent(), path.file_name().and_then(|n| n.to_str())) else {
        return Ok(());
    };
    let name = name.strip_suffix(".gz").unwrap_or(name);
    let Some(manifest) = read_manifest(dir)? else {
        return Ok(());
    };
    if !manifest.iter().any(|(n, _)| n == name) {
        return Ok(());
    }
    check_digest(path, name, &manifest, &hex(&Sha256::digest(bytes)))
}

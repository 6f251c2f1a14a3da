//! IDX file reader (raw or gzip).
//!
//! # The IDX format
//!
//! An IDX file (optionally gzip-compressed) is a big-endian header followed by raw data:
//!
//! ```text
//! byte 0..2   0x00 0x00              magic, always zero
//! byte 2      element type           0x08 = u8 (the only type MNIST uses and this reader accepts)
//! byte 3      number of dims D       1 for label files, 3 for image files
//! byte 4..    D × u32 big-endian     the size of each dimension
//! then        product(dims) elements row-major, last dimension varying fastest
//! ```
//!
//! So MNIST image files start `00 00 08 03 | n | 28 | 28` (magic 0x00000803) and label files
//! `00 00 08 01 | n` (magic 0x00000801). The reader checks every field, the exact data length
//! (neither truncated nor trailing bytes) and never inflates more than a cap, so a corrupt or
//! hostile file yields an [`Error::Data`] naming the file and the field, never a panic.

use std::fs::File;
use std::io::{self, BufRead, BufReader, Read};
use std::path::Path;

use flate2::bufread::MultiGzDecoder;

use crate::error::{Error, Result};

/// Default limit on the (decompressed) size of one IDX file: 256 MiB. MNIST's largest file
/// is 47 MB.
pub const DEFAULT_CAP_BYTES: u64 = 256 << 20;

/// A u8 IDX array: its dimension sizes and its row-major data (`data.len() == dims.product()`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdxArray {
    pub dims: Vec<usize>,
    pub data: Vec<u8>,
}

/// Reads a raw or gzip IDX file (gzip detected by its magic bytes `1f 8b`) of u8 elements,
/// refusing files whose content exceeds [`DEFAULT_CAP_BYTES`].
pub fn read_idx(path: &Path) -> Result<IdxArray> {
    read_idx_with_cap(path, DEFAULT_CAP_BYTES)
}

/// [`read_idx`] with an explicit cap on the (decompressed) content size, header included.
pub fn read_idx_with_cap(path: &Path, cap_bytes: u64) -> Result<IdxArray> {
    let (r, gz) = open_content(path, cap_bytes)?;
    parse_content(path, r, gz, cap_bytes)
}

/// [`read_idx_with_cap`] on a file's bytes already in memory (raw or gzip); `path` names
/// them in errors. The fuzz tests drive the reader through this.
pub fn parse_idx(path: &Path, bytes: &[u8], cap_bytes: u64) -> Result<IdxArray> {
    let (r, gz) = content_reader(path, Box::new(bytes), cap_bytes)?;
    parse_content(path, r, gz, cap_bytes)
}

fn parse_content(
    path: &Path,
    mut r: io::Take<Box<dyn Read + '_>>,
    gz: bool,
    cap_bytes: u64,
) -> Result<IdxArray> {
    let ctx = ReadCtx { path, gz };
    let nd = read_magic(&ctx, &mut r)?;
    let dims = read_dims(&ctx, &mut r, nd)?;
    let expected = dims
        .iter()
        .try_fold(1usize, |acc, &d| acc.checked_mul(d))
        .ok_or_else(|| Error::data(path, "dims", format!("product of dims {dims:?} overflows")))?;
    let header_len = 4 + 4 * nd as u64;
    if (expected as u64).saturating_add(header_len) > cap_bytes {
        return Err(Error::data(path, "dims", format!(
            "dims {dims:?} declare {expected} bytes of data, which with the {header_len}-byte header exceeds the cap of {cap_bytes} bytes"
        )));
    }
    let mut data = Vec::with_capacity(expected.min(64 << 20));
    ctx.io((&mut r).take(expected as u64).read_to_end(&mut data))?;
    if data.len() < expected {
        return Err(Error::data(path, "length", format!(
            "expected {expected} bytes of data after the header, found {} (dims {dims:?}; file truncated)",
            data.len()
        )));
    }
    // Read to the end: detects trailing bytes and makes the gzip decoder check its CRC.
    let extra = ctx.io(io::copy(&mut r, &mut io::sink()))?;
    if extra > 0 {
        let total = header_len + expected as u64 + extra;
        return Err(if total > cap_bytes {
            Error::data(path, "length", format!(
                "expected {expected} bytes of data after the header, found more than {} (dims {dims:?}; content exceeds the cap of {cap_bytes} bytes)",
                cap_bytes - header_len
            ))
        } else {
            Error::data(path, "length", format!(
                "expected {expected} bytes of data after the header, found {} (dims {dims:?}; {extra} trailing bytes)",
                expected as u64 + extra
            ))
        });
    }
    Ok(IdxArray { dims, data })
}

/// The 4-byte magic number: two zero bytes, the element type (0x08, unsigned byte) and the
/// number of dimensions (1 to 4), which it returns.
fn read_magic(ctx: &ReadCtx, r: &mut impl Read) -> Result<usize> {
    let path = ctx.path;
    let mut magic = [0u8; 4];
    let got = ctx.read_full(r, &mut magic)?;
    if got == 0 && ctx.gz {
        return Err(Error::data(
            path,
            "header",
            "gzip stream decompresses to 0 bytes (file is empty)",
        ));
    }
    if got < 4 {
        return Err(Error::data(path, "header", format!(
            "truncated header: the content is only {got} bytes, an IDX header needs at least 4 (magic number)"
        )));
    }
    if magic[0] != 0 || magic[1] != 0 {
        return Err(Error::data(path, "magic", format!(
            "bad magic number 0x{:02x}{:02x}{:02x}{:02x}: an IDX file starts with two zero bytes (is this an IDX file?)",
            magic[0], magic[1], magic[2], magic[3]
        )));
    }
    if magic[2] != 0x08 {
        let found = format!(
            "expected 0x08 (unsigned byte), found 0x{:02x} ({})",
            magic[2],
            type_name(magic[2])
        );
        return Err(Error::data(path, "element type", found));
    }
    let nd = usize::from(magic[3]);
    if !(1..=4).contains(&nd) {
        return Err(Error::data(
            path,
            "dims",
            format!("number of dimensions (4th magic byte) is {nd}, expected 1 to 4"),
        ));
    }
    Ok(nd)
}

/// The `nd` big-endian u32 dimension sizes after the magic number.
fn read_dims(ctx: &ReadCtx, r: &mut impl Read, nd: usize) -> Result<Vec<usize>> {
    let path = ctx.path;
    let mut raw_dims = [0u8; 16];
    let dim_bytes = &mut raw_dims[..4 * nd];
    let got = ctx.read_full(r, dim_bytes)?;
    if got < dim_bytes.len() {
        return Err(Error::data(path, "header", format!(
            "truncated header: expected {nd} dimension sizes ({} bytes) after the magic number, found {got} bytes",
            4 * nd
        )));
    }
    let mut dims = Vec::with_capacity(nd);
    for c in dim_bytes.chunks_exact(4) {
        let d = u32::from_be_bytes([c[0], c[1], c[2], c[3]]);
        dims.push(usize::try_from(d).map_err(|_| {
            Error::data(path, "dims", format!("dimension {d} does not fit in usize"))
        })?);
    }
    Ok(dims)
}

/// Opens `path` and returns a reader over its (decompressed) content, limited to
/// `cap + 1` bytes so callers can detect content over the cap, and whether it is gzip.
pub(super) fn open_content(path: &Path, cap: u64) -> Result<(io::Take<Box<dyn Read>>, bool)> {
    let file = File::open(path).map_err(|e| Error::io(path, e))?;
    content_reader(path, Box::new(BufReader::with_capacity(1 << 16, file)), cap)
}

fn content_reader<'a>(
    path: &Path,
    mut br: Box<dyn BufRead + 'a>,
    cap: u64,
) -> Result<(io::Take<Box<dyn Read + 'a>>, bool)> {
    let head = br.fill_buf().map_err(|e| Error::io(path, e))?;
    if head.is_empty() {
        return Err(Error::data(
            path,
            "header",
            "file is empty (0 bytes); expected an IDX header",
        ));
    }
    let gz = head.starts_with(&[0x1f, 0x8b]);
    let inner: Box<dyn Read + 'a> = if gz {
        Box::new(MultiGzDecoder::new(br))
    } else {
        Box::new(br)
    };
    Ok((inner.take(cap.saturating_add(1)), gz))
}

pub(super) struct ReadCtx<'a> {
    pub(super) path: &'a Path,
    pub(super) gz: bool,
}

impl ReadCtx<'_> {
    /// Maps a read error: decoding failures of a gzip file become `Data { field: "gzip" }`.
    pub(super) fn io<T>(&self, r: io::Result<T>) -> Result<T> {
        r.map_err(|e| match e.kind() {
            io::ErrorKind::InvalidInput
            | io::ErrorKind::InvalidData
            | io::ErrorKind::UnexpectedEof
                if self.gz =>
            {
                Error::data(
                    self.path,
                    "gzip",
                    format!("corrupt or truncated gzip stream: {e}"),
                )
            }
            _ => Error::io(self.path, e),
        })
    }

    /// Reads until `buf` is full or EOF; returns the number of bytes read.
    fn read_full(&self, r: &mut impl Read, buf: &mut [u8]) -> Result<usize> {
        let mut got = 0;
        while got < buf.len() {
            match r.read(&mut buf[got..]) {
                Ok(0) => break,
                Ok(k) => got += k,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return self.io(Err(e)),
            }
        }
        Ok(got)
    }
}

fn type_name(t: u8) -> &'static str {
    match t {
        0x08 => "u8",
        0x09 => "i8",
        0x0b => "i16",
        0x0c => "i32",
        0x0d => "f32",
        0x0e => "f64",
        _ => "not an IDX type",
    }
}

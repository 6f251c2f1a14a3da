//! Counter-based random numbers (Philox-4x32-10): shaders/random.wgsl, its wrappers and
//! bit-exact CPU references. Element i takes word i % 4 of
//! philox4x32_10((i / 4, 0, counter_lo, counter_hi), (seed_lo, seed_hi)).
//! [`text_windows`] draws a language-model batch with the same words: row b's window start;
//! [`augment_images`] shifts and flips each image of a training batch by its block's words.

use bytemuck::{Pod, Zeroable};

use super::{dispatch, grid_1d, Dispatch, KernelCall, Shader, WG_1D};
use crate::gpu::{Access, Gpu};
use crate::tensor::Tensor;
use crate::{Error, Result};

/// Which stream (seed) and which draw of it (counter, e.g. the step number).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RandomSpec {
    pub seed: u64,
    pub counter: u64,
}

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct Params {
    n: u32,
    threshold: u32,
    scale: f32,
    _pad: u32,
    seed: [u32; 2],
    counter: [u32; 2],
    /// text_windows only: T, and the split's offset and length in the token buffer.
    seq_len: u32,
    tok_offset: u32,
    tok_len: u32,
    _pad1: u32,
    /// augment_images only: the image shape C, H, W, the largest shift S and flip (0/1).
    channels: u32,
    height: u32,
    width: u32,
    max_shift: u32,
    flip: u32,
    _pad2: [u32; 3],
}

/// Byte offset of the seed (u64, little-endian: lo then hi word) in the uniform.
pub const SEED_OFFSET: u64 = 16;
/// Byte offset of the counter (u64, little-endian) in the uniform, for the executor's
/// per-step write (see [`write_counter`]).
pub const COUNTER_OFFSET: u64 = 24;

fn split(v: u64) -> [u32; 2] {
    [v as u32, (v >> 32) as u32]
}

/// (threshold, scale) of a dropout with drop probability p.
fn dropout_constants(p: f32) -> (u32, f32) {
    (
        (p as f64 * (1u64 << 24) as f64).round() as u32,
        1.0 / (1.0 - p),
    )
}

fn call(
    gpu: &Gpu,
    entry: &'static str,
    spec: &RandomSpec,
    (threshold, scale): (u32, f32),
    out: &Tensor,
) -> Result<Dispatch> {
    let n = out.numel();
    if n == 0 || n > u32::MAX as usize - 4 {
        return Err(Error::shape(
            entry,
            format!("output of shape {:?}: 1 to 2^32 - 5 elements", out.shape),
        ));
    }
    let params = Params {
        n: n as u32,
        threshold,
        scale,
        _pad: 0,
        seed: split(spec.seed),
        counter: split(spec.counter),
        ..Zeroable::zeroed()
    };
    dispatch(
        gpu,
        &KernelCall {
            shader: Shader::Random,
            entry,
            params: bytemuck::bytes_of(&params),
            bindings: &[(out, Access::ReadWrite)],
            workgroups: grid_1d(gpu, entry, n.div_ceil(4))?,
            constants: &[],
        },
    )
}

/// y (any shape) = uniform floats in [0, 1) with 24 random bits each.
pub fn random_uniform(gpu: &Gpu, spec: &RandomSpec, y: &Tensor) -> Result<Dispatch> {
    call(gpu, "random_uniform", spec, (0, 1.0), y)
}

/// mask (any shape) = 0 with probability p, else 1 / (1 - p); x * mask is inverted
/// dropout, and the backward is dy * mask.
pub fn dropout_mask(gpu: &Gpu, spec: &RandomSpec, p: f32, mask: &Tensor) -> Result<Dispatch> {
    if !(0.0..1.0).contains(&p) {
        return Err(Error::usage(
            "dropout p",
            format!("{p} must lie in [0, 1) (the probability of dropping an element)"),
        ));
    }
    call(gpu, "dropout_mask", spec, dropout_constants(p), mask)
}

/// Where [`text_windows`] draws from and what it draws: `batch` windows of `seq_len + 1`
/// tokens, all inside `tokens[offset .. offset + len]` (one split of the encoded text).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TextWindows {
    pub offset: usize,
    pub len: usize,
    pub batch: usize,
    pub seq_len: usize,
}

impl TextWindows {
    fn check(&self, tokens: usize) -> Result<()> {
        let (b, t) = (self.batch, self.seq_len);
        let end = self.offset.checked_add(self.len);
        let problem = if b == 0 || t == 0 {
            Some("batch and seq_len must be at least 1".to_string())
        } else if self.len <= t {
            Some(format!(
                "the split has {} tokens; one window needs seq_len + 1 = {}",
                self.len,
                t + 1
            ))
        } else if end.is_none_or(|e| e > tokens || e > u32::MAX as usize) {
            Some(format!(
                "the split [{}, +{}) passes the token buffer of {tokens} tokens (or 2^32)",
                self.offset, self.len
            ))
        } else if b
            .checked_mul(t)
            .is_none_or(|n| n > u32::MAX as usize - WG_1D)
        {
            Some(format!("batch * seq_len = {b} * {t} passes 2^32 - {WG_1D}"))
        } else {
            None
        };
        match problem {
            Some(msg) => Err(Error::shape("text_windows", format!("{self:?}: {msg}"))),
            None => Ok(()),
        }
    }
}

/// Draws a batch of next-token windows on the GPU: for row b, u = the stream's word b,
/// start = floor(u * (len - seq_len) / 2^32), and for t < seq_len
/// `x[b * T + t] = tokens[offset + start + t]`, `y[b * T + t] = tokens[offset + start + t + 1]`.
/// x and y are u32 tensors of `batch * seq_len` elements (any shape). Rewrite the counter
/// per step with [`write_counter`] for a fresh batch from the same dispatch.
pub fn text_windows(
    gpu: &Gpu,
    spec: &RandomSpec,
    w: &TextWindows,
    tokens: &Tensor,
    x: &Tensor,
    y: &Tensor,
) -> Result<Dispatch> {
    w.check(tokens.numel())?;
    let n = w.batch * w.seq_len;
    for (name, t) in [("x", x), ("y", y)] {
        if t.numel() != n {
            return Err(Error::shape(
                "text_windows",
                format!(
                    "{name} has shape {:?}, expected batch * seq_len = {} * {} = {n} elements",
                    t.shape, w.batch, w.seq_len
                ),
            ));
        }
    }
    let params = Params {
        n: n as u32,
        seed: split(spec.seed),
        counter: split(spec.counter),
        seq_len: w.seq_len as u32,
        tok_offset: w.offset as u32,
        tok_len: w.len as u32,
        ..Zeroable::zeroed()
    };
    dispatch(
        gpu,
        &KernelCall {
            shader: Shader::Random,
            entry: "text_windows",
            params: bytemuck::bytes_of(&params),
            bindings: &[
                (x, Access::ReadWrite),
                (y, Access::ReadWrite),
                (tokens, Access::Read),
            ],
            workgroups: grid_1d(gpu, "text_windows", n)?,
            constants: &[],
        },
    )
}

/// Random shifts of up to `shift` pixels each way and, with `flip`, horizontal flips of a
/// training batch's images ([`augment_images`]); all zero: no augmentation.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Augment {
    pub shift: usize,
    pub flip: bool,
}

impl Augment {
    pub fn is_off(&self) -> bool {
        self.shift == 0 && !self.flip
    }

    /// As a checkpoint's `augment` metadata holds it: `{"shift": 2, "flip": true}`.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({ "shift": self.shift, "flip": self.flip })
    }

    /// The inverse of [`Augment::to_json`]; `None` when a field is missing or mistyped.
    pub fn from_json(v: &serde_json::Value) -> Option<Augment> {
        Some(Augment {
            shift: usize::try_from(v.get("shift")?.as_u64()?).ok()?,
            flip: v.get("flip")?.as_bool()?,
        })
    }

    /// Refuse a shift the images cannot take (S must stay below H and W).
    pub fn check(&self, [c, h, w]: [usize; 3]) -> Result<()> {
        if c == 0 || self.shift >= h.min(w) || self.shift > u16::MAX as usize {
            return Err(Error::shape(
                "augment_images",
                format!(
                    "a shift of up to {} pixels on {c}x{h}x{w} images; it must stay below the height and width (hint: --augment-shift 1 to 4)",
                    self.shift
                ),
            ));
        }
        Ok(())
    }
}

/// out `[B, C, H, W]` = the batch x `[B, C, H, W]` with image b flipped (when `aug.flip` and
/// its draw says so) and moved by (dy, dx) in `[-S, S]`^2, zeros coming in at the edges;
/// see random.wgsl for the draws. Rewrite the counter per step ([`write_counter`]) for
/// fresh draws from the same dispatch.
pub fn augment_images(
    gpu: &Gpu,
    spec: &RandomSpec,
    aug: &Augment,
    chw: [usize; 3],
    x: &Tensor,
    out: &Tensor,
) -> Result<Dispatch> {
    let op = "augment_images";
    aug.check(chw)?;
    let per_image: usize = chw.iter().product();
    let n = x.numel();
    if n == 0 || !n.is_multiple_of(per_image) || out.numel() != n {
        return Err(Error::shape(
            op,
            format!(
                "x {:?} and out {:?} must both hold whole {chw:?} images",
                x.shape, out.shape
            ),
        ));
    }
    if n > u32::MAX as usize - WG_1D {
        return Err(Error::shape(
            op,
            format!("{n} elements pass 2^32 - {WG_1D}"),
        ));
    }
    let params = Params {
        n: n as u32,
        seed: split(spec.seed),
        counter: split(spec.counter),
        channels: chw[0] as u32,
        height: chw[1] as u32,
        width: chw[2] as u32,
        max_shift: aug.shift as u32,
        flip: aug.flip as u32,
        ..Zeroable::zeroed()
    };
    // x sits at binding 2 (text_windows' second output), read only; binding 3 is unused.
    dispatch(
        gpu,
        &KernelCall {
            shader: Shader::Random,
            entry: op,
            params: bytemuck::bytes_of(&params),
            bindings: &[(out, Access::ReadWrite), (x, Access::ReadWrite)],
            workgroups: grid_1d(gpu, op, n)?,
            constants: &[],
        },
    )
}

/// Rewrite the counter of a [`random_uniform`], [`dropout_mask`], [`text_windows`] or
/// [`augment_images`] dispatch (takes effect at the next submit).
pub fn write_counter(gpu: &Gpu, d: &Dispatch, counter: u64) {
    gpu.queue
        .write_buffer(&d.params, COUNTER_OFFSET, &counter.to_le_bytes());
}

// ---- CPU references (bit-exact) ----------------------------------------------------------

/// One Philox-4x32-10 block.
pub fn philox4x32_10(ctr: [u32; 4], key: [u32; 2]) -> [u32; 4] {
    let mulhilo = |a: u32, b: u32| {
        let p = a as u64 * b as u64;
        ((p >> 32) as u32, p as u32)
    };
    let (mut c, mut k) = (ctr, key);
    for _ in 0..10 {
        let (hi0, lo0) = mulhilo(0xD251_1F53, c[0]);
        let (hi1, lo1) = mulhilo(0xCD9E_8D57, c[2]);
        c = [hi1 ^ c[1] ^ k[0], lo1, hi0 ^ c[3] ^ k[1], lo0];
        k = [
            k[0].wrapping_add(0x9E37_79B9),
            k[1].wrapping_add(0xBB67_AE85),
        ];
    }
    c
}

fn words(spec: &RandomSpec, n: usize) -> impl Iterator<Item = u32> + '_ {
    let [clo, chi] = split(spec.counter);
    (0..n.div_ceil(4))
        .flat_map(move |b| philox4x32_10([b as u32, 0, clo, chi], split(spec.seed)))
        .take(n)
}

/// Reference of [`random_uniform`], bit for bit.
pub fn random_uniform_ref(spec: &RandomSpec, n: usize) -> Vec<f32> {
    words(spec, n)
        .map(|w| (w >> 8) as f32 * (1.0 / 16_777_216.0))
        .collect()
}

/// Reference of [`dropout_mask`], bit for bit.
pub fn dropout_mask_ref(spec: &RandomSpec, p: f32, n: usize) -> Vec<f32> {
    let (threshold, scale) = dropout_constants(p);
    words(spec, n)
        .map(|w| if (w >> 8) >= threshold { scale } else { 0.0 })
        .collect()
}

/// The window starts [`text_windows`] draws, relative to `w.offset`: row b starts at
/// `(word_b * (len - seq_len)) >> 32`, in `0 .. len - seq_len`.
pub fn text_window_starts(spec: &RandomSpec, w: &TextWindows) -> Vec<usize> {
    let range = (w.len - w.seq_len) as u64;
    words(spec, w.batch)
        .map(|word| ((word as u64 * range) >> 32) as usize)
        .collect()
}

/// Reference of [`text_windows`], bit for bit: (x, y), each `batch * seq_len` tokens.
/// Panics if `w` does not fit `tokens` (the GPU wrapper returns an error instead).
pub fn text_windows_ref(
    spec: &RandomSpec,
    w: &TextWindows,
    tokens: &[u32],
) -> (Vec<u32>, Vec<u32>) {
    let split = &tokens[w.offset..w.offset + w.len];
    let (mut x, mut y) = (Vec::new(), Vec::new());
    for start in text_window_starts(spec, w) {
        x.extend_from_slice(&split[start..start + w.seq_len]);
        y.extend_from_slice(&split[start + 1..start + w.seq_len + 1]);
    }
    (x, y)
}

/// The draws of [`augment_images`] for image b < `batch`: (dy, dx, flipped).
pub fn augment_draws(spec: &RandomSpec, aug: &Augment, batch: usize) -> Vec<(i64, i64, bool)> {
    let [clo, chi] = split(spec.counter);
    let range = 2 * aug.shift as u64 + 1;
    let shift = |w: u32| ((w as u64 * range) >> 32) as i64 - aug.shift as i64;
    (0..batch)
        .map(|b| {
            let w = philox4x32_10([b as u32, 0, clo, chi], split(spec.seed));
            (shift(w[0]), shift(w[1]), aug.flip && w[2] >> 31 == 1)
        })
        .collect()
}

/// Reference of [`augment_images`], bit for bit: x holds whole `[c, h, w]` images.
pub fn augment_images_ref(
    spec: &RandomSpec,
    aug: &Augment,
    [c, h, w]: [usize; 3],
    x: &[f32],
) -> Vec<f32> {
    let batch = x.len() / (c * h * w);
    let mut out = vec![0.0; x.len()];
    for (b, (dy, dx, flipped)) in augment_draws(spec, aug, batch).into_iter().enumerate() {
        for plane in b * c..(b + 1) * c {
            for y in 0..h as i64 {
                for xx in 0..w as i64 {
                    let (sy, u) = (y - dy, xx - dx);
                    if sy < 0 || sy >= h as i64 || u < 0 || u >= w as i64 {
                        continue;
                    }
                    let sx = if flipped { w as i64 - 1 - u } else { u };
                    out[(plane * h + y as usize) * w + xx as usize] =
                        x[(plane * h + sy as usize) * w + sx as usize];
                }
            }
        }
    }
    out
}

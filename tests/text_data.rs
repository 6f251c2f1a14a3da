//! The character-level text corpus (src/data/text.rs) and the CPU reference of the batch
//! sampler: the shipped corpus's known facts, the vocabulary, encode/decode, the unigram
//! baseline, and a clear error for every bad file. No GPU.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use shadergrad::data::text::{default_text_path, TextCorpus, TextSplit};
use shadergrad::kernels::random::{text_window_starts, text_windows_ref, RandomSpec, TextWindows};

struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> TempDir {
        let p = std::env::temp_dir().join(format!(
            "shadergrad-test-text-{}-{name}",
            std::process::id()
        ));
        let _ = fs::remove_dir_all(&p);
        fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }

    fn file(&self, name: &str, bytes: &[u8]) -> PathBuf {
        let p = self.0.join(name);
        fs::write(&p, bytes).unwrap();
        p
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    e.write_all(bytes).unwrap();
    e.finish().unwrap()
}

/// The error message of a load that must fail, checked to name the file and `parts`.
fn load_err(path: &Path, val_fraction: f64, parts: &[&str]) -> String {
    let msg = TextCorpus::load_with(path, val_fraction)
        .expect_err("load must fail")
        .to_string();
    let name = path.file_name().unwrap().to_str().unwrap();
    assert!(msg.contains(name), "{msg:?} does not name the file {name}");
    for p in parts {
        assert!(msg.contains(p), "{msg:?} does not mention {p:?}");
    }
    msg
}

fn corpus(text: &str, val_fraction: f64) -> TextCorpus {
    TextCorpus::from_text(Path::new("mem.txt"), text, val_fraction).unwrap()
}

#[test]
fn shipped_corpus_matches_its_known_facts() {
    let c = TextCorpus::load(&default_text_path()).unwrap();
    assert_eq!(c.len(), 1_546_085);
    assert_eq!((c.train.len(), c.val.len()), (1_391_477, 154_608));
    assert_eq!(c.vocab_size(), 80);
    let vocab: String = c.vocab.iter().collect();
    assert_eq!(
        vocab,
        "\n !\"&'(),-./0123456789:;?ABCDEFGHIJKLMNOPQRSTUVWXYZ[]abcdefghijklmnopqrstuvwxyz}"
    );
    assert!(c.decode(&c.train[..20]).starts_with("ANTONY AND CLEOPATRA"));
    assert_eq!(c.decode(&c.val[c.val.len() - 11..]), "[Exit.]\n\n\n\n");
    c.check_window(256).unwrap();
    // Python (float64) gives 4.874885509238456 for the same model.
    let bpc = c.unigram_bpc();
    assert!(
        (bpc - 4.874_885_509_238_456).abs() < 1e-9,
        "unigram bpc {bpc}"
    );
}

#[test]
fn raw_and_gzip_files_load_the_same() {
    let dir = TempDir::new("raw-gz");
    let text = "To be, or not to be: that is the question.\nÆsop's fable, naïve café — ✓\n";
    let raw = TextCorpus::load(&dir.file("a.txt", text.as_bytes())).unwrap();
    let gz = TextCorpus::load(&dir.file("a.txt.gz", &gzip(text.as_bytes()))).unwrap();
    assert_eq!(raw.vocab, gz.vocab);
    assert_eq!(raw.tokens(), gz.tokens());
    assert_eq!(raw.decode(&raw.tokens()), text);
}

#[test]
fn vocabulary_is_sorted_distinct_chars_and_round_trips() {
    let c = corpus("hello, world\n¿qué?", 0.0);
    let mut want: Vec<char> = "hello, world\n¿qué?".chars().collect();
    want.sort();
    want.dedup();
    assert_eq!(c.vocab, want);
    assert!(c.vocab.windows(2).all(|w| w[0] < w[1]));
    let ids = c.encode("world qué").unwrap();
    assert!(ids.iter().all(|&k| (k as usize) < c.vocab_size()));
    assert_eq!(c.decode(&ids), "world qué");
    assert_eq!(c.encode("").unwrap(), Vec::<u32>::new());
    assert_eq!(c.decode(&[0, 999]), "\n\u{FFFD}");
}

#[test]
fn encode_names_the_unknown_character() {
    let c = corpus("abcabc", 0.0);
    let msg = c.encode("abz").unwrap_err().to_string();
    for part in ["mem.txt", "'z'", "U+007A", "position 2", "3 characters"] {
        assert!(msg.contains(part), "{msg:?} lacks {part:?}");
    }
}

#[test]
fn val_is_the_last_fraction() {
    let text = "abcdefghij".repeat(10); // 100 chars
    let c = corpus(&text, 0.1);
    assert_eq!((c.train.len(), c.val.len()), (90, 10));
    assert_eq!(c.decode(&c.val), "abcdefghij");
    assert_eq!(c.tokens(), c.encode(&text).unwrap());
    let c = corpus(&text, 0.25);
    assert_eq!((c.train.len(), c.val.len()), (75, 25));
    let c = corpus(&text, 0.0);
    assert_eq!((c.train.len(), c.val.len()), (100, 0));
    assert!(c.unigram_bpc().is_nan());
    for bad in [-0.1, 1.0, f64::NAN] {
        let msg = TextCorpus::from_text(Path::new("m"), &text, bad)
            .unwrap_err()
            .to_string();
        assert!(msg.contains("val_fraction"), "{msg}");
    }
}

#[test]
fn unigram_bpc_is_add_one_smoothed_train_counts_on_val() {
    // train "aaab" (a:3, b:1), val "ab"; V = 2 -> p(a) = 4/6, p(b) = 2/6.
    let c = corpus("aaabab", 2.0 / 6.0);
    assert_eq!(c.decode(&c.train), "aaab");
    let want = -((4.0f64 / 6.0).log2() + (2.0f64 / 6.0).log2()) / 2.0;
    assert!((c.unigram_bpc() - want).abs() < 1e-12);
}

#[test]
fn windows_locate_the_splits_in_the_token_buffer() {
    let c = corpus(&"0123456789".repeat(10), 0.2);
    let w = c.windows(TextSplit::Train, 4, 8).unwrap();
    assert_eq!(
        w,
        TextWindows {
            offset: 0,
            len: 80,
            batch: 4,
            seq_len: 8
        }
    );
    let w = c.windows(TextSplit::Val, 3, 19).unwrap();
    assert_eq!(
        w,
        TextWindows {
            offset: 80,
            len: 20,
            batch: 3,
            seq_len: 19
        }
    );
    let msg = c.windows(TextSplit::Val, 3, 20).unwrap_err().to_string();
    assert!(msg.contains("held-out split has 20 characters"), "{msg}");
    assert!(msg.contains("needs 21"), "{msg}");
}

#[test]
fn check_window_refuses_texts_shorter_than_one_window() {
    let c = corpus("abcdefghij", 0.0);
    let msg = c.check_window(10).unwrap_err().to_string();
    for part in ["mem.txt", "training split has 10 characters", "needs 11"] {
        assert!(msg.contains(part), "{msg:?} lacks {part:?}");
    }
    // The text is long enough, but its held-out split is not.
    let c = corpus(&"abcdefghij".repeat(10), 0.1);
    c.check_window(9).unwrap();
    let msg = c.check_window(10).unwrap_err().to_string();
    assert!(msg.contains("held-out split has 10 characters"), "{msg}");
    assert!(c.check_window(0).is_err());
}

#[test]
fn bad_files_get_clear_errors() {
    let dir = TempDir::new("bad");
    load_err(&dir.0.join("absent.txt"), 0.1, &["not found", "UTF-8"]);
    load_err(&dir.file("empty.txt", b""), 0.1, &["empty"]);
    load_err(&dir.file("empty.txt.gz", &gzip(b"")), 0.1, &["0 bytes"]);
    load_err(
        &dir.file("corrupt.gz", &[0x1f, 0x8b, 8, 0, 1, 2]),
        0.1,
        &["gzip"],
    );
    // Latin-1 'é' (0xe9) at byte offset 4: raw, and inside a gzip stream.
    let latin1 = b"caf\xc3\xa9 \xe9t\xe9";
    let msg = load_err(
        &dir.file("latin1.txt", latin1),
        0.1,
        &["not UTF-8", "0xe9", "byte offset 6"],
    );
    assert!(!msg.contains("decompressed"), "{msg}");
    load_err(
        &dir.file("latin1.txt.gz", &gzip(latin1)),
        0.1,
        &["not UTF-8", "byte offset 6 of the decompressed"],
    );
    load_err(
        &dir.file("cut.txt", b"ab\xc3"),
        0.1,
        &["truncated", "byte offset 2"],
    );
    load_err(
        &dir.file("one.txt", b"zzzzzz"),
        0.1,
        &["only one distinct character", "'z'"],
    );
}

#[test]
fn a_listed_file_must_match_its_sha256() {
    let dir = TempDir::new("sha");
    let shipped = fs::read(default_text_path()).unwrap();
    let manifest = fs::read(default_text_path().with_file_name("SHA256SUMS.raw")).unwrap();
    fs::write(dir.0.join("SHA256SUMS.raw"), &manifest).unwrap();
    let p = dir.file("shakespeare_tragedies.txt.gz", &shipped);
    assert_eq!(TextCorpus::load(&p).unwrap().len(), 1_546_085);
    // Same name, other content: refused. A file the manifest does not name: not checked.
    let p = dir.file("shakespeare_tragedies.txt", b"Exeunt, pursued by a bear.\n");
    load_err(&p, 0.1, &["sha256", "SHA256SUMS.raw", "208c8aa0"]);
    let p = dir.file("other.txt", b"Exeunt, pursued by a bear.\n");
    assert_eq!(TextCorpus::load(&p).unwrap().len(), 27);
}

#[test]
fn reference_windows_are_next_token_pairs_inside_the_split() {
    let tokens: Vec<u32> = (0..1000).collect();
    for (offset, len, batch, seq_len) in [(0, 900, 7, 16), (900, 100, 13, 1), (5, 12, 64, 11)] {
        let w = TextWindows {
            offset,
            len,
            batch,
            seq_len,
        };
        let spec = RandomSpec {
            seed: 9,
            counter: 3,
        };
        let (x, y) = text_windows_ref(&spec, &w, &tokens);
        assert_eq!((x.len(), y.len()), (batch * seq_len, batch * seq_len));
        for (b, start) in text_window_starts(&spec, &w).into_iter().enumerate() {
            assert!(start < len - seq_len, "{w:?} row {b} starts at {start}");
            for t in 0..seq_len {
                let i = b * seq_len + t;
                assert_eq!(x[i] as usize, offset + start + t);
                assert_eq!(y[i], x[i] + 1);
            }
        }
    }
}

#[test]
fn reference_starts_are_seeded_and_cover_the_range() {
    let w = TextWindows {
        offset: 0,
        len: 20,
        batch: 4000,
        seq_len: 10,
    };
    let spec = RandomSpec {
        seed: 1,
        counter: 0,
    };
    let starts = text_window_starts(&spec, &w);
    assert_eq!(starts, text_window_starts(&spec, &w));
    assert_ne!(
        starts,
        text_window_starts(
            &RandomSpec {
                seed: 1,
                counter: 1
            },
            &w
        )
    );
    assert_ne!(
        starts,
        text_window_starts(
            &RandomSpec {
                seed: 2,
                counter: 0
            },
            &w
        )
    );
    // 10 possible starts, 4000 draws: each about 400 times.
    let mut hist = [0usize; 10];
    for s in starts {
        hist[s] += 1;
    }
    assert!(hist.iter().all(|&h| (300..500).contains(&h)), "{hist:?}");
}

//! `--data-dir` beyond MNIST: image folders (class names, channels, sizes, train/test
//! layouts and every refusal naming the file), IDX sets with other class counts, and the
//! command line training, evaluating and predicting on them with the output width and the
//! class names following the data.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use png::{BitDepth, ColorType};
use shadergrad::data::{
    load_data_dir, load_mnist, TEST_IMAGES, TEST_LABELS, TRAIN_IMAGES, TRAIN_LABELS,
};

struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> TempDir {
        let p =
            std::env::temp_dir().join(format!("shadergrad-datadir-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Write a PNG of `w` x `h` pixels (`data` as the colour type and depth lay them out).
fn png(path: &Path, w: u32, h: u32, color: ColorType, depth: BitDepth, data: &[u8]) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    let file = std::fs::File::create(path).unwrap();
    let mut enc = png::Encoder::new(file, w, h);
    enc.set_color(color);
    enc.set_depth(depth);
    if color == ColorType::Indexed {
        enc.set_palette(vec![0, 0, 0, 200, 100, 50]);
    }
    enc.write_header().unwrap().write_image_data(data).unwrap();
}

/// A grey 8-bit image whose every pixel is `v`.
fn grey(path: &Path, w: u32, h: u32, v: u8) {
    png(
        path,
        w,
        h,
        ColorType::Grayscale,
        BitDepth::Eight,
        &vec![v; (w * h) as usize],
    );
}

/// Classes `names`, `per_class` grey 5x4 images each; image j of class i has pixels
/// 10 * i + j, so a loaded image tells which file it was.
fn folders(root: &Path, names: &[&str], per_class: usize) {
    for (i, n) in names.iter().enumerate() {
        for j in 0..per_class {
            grey(
                &root.join(n).join(format!("img{j:02}.png")),
                5,
                4,
                (10 * i + j) as u8,
            );
        }
    }
}

fn err(dir: &Path) -> String {
    load_data_dir(dir, &[], None)
        .expect_err("refused")
        .to_string()
}

#[test]
fn image_folders_take_sorted_class_names_and_one_fixed_shuffle() {
    let tmp = TempDir::new("sorted");
    folders(&tmp.0, &["zebra", "ant", "moth"], 4);
    std::fs::write(
        tmp.0.join("README.txt"),
        "files beside the class folders are skipped",
    )
    .unwrap();
    std::fs::create_dir_all(tmp.0.join(".cache")).unwrap();
    let d = load_data_dir(&tmp.0, &[], None).unwrap();
    assert_eq!(d.names, ["ant", "moth", "zebra"]);
    assert_eq!((d.classes, d.train.n, d.train.shape()), (3, 12, [1, 4, 5]));
    assert!(d.test.is_none());
    // Each image is its file: class folder i of the sorted names, pixel 10 * k + j where k
    // is the folder's place in the order written (zebra, ant, moth).
    let written = ["zebra", "ant", "moth"];
    let mut seen = Vec::new();
    for i in 0..d.train.n {
        let img = d.train.image(i);
        assert!(img.iter().all(|&p| p == img[0]));
        let k = written
            .iter()
            .position(|n| *n == d.names[d.train.labels[i] as usize])
            .unwrap();
        assert_eq!(
            img[0] as usize / 10,
            k,
            "image {i} has the pixels of another class"
        );
        seen.push(img[0]);
    }
    seen.sort();
    seen.dedup();
    assert_eq!(seen.len(), 12, "every file once");
    // Shuffled, the same way every time: the last fifth (a validation split) is not one class.
    assert_eq!(
        d.train.labels,
        load_data_dir(&tmp.0, &[], None).unwrap().train.labels
    );
    let tail = &d.train.labels[9..];
    assert!(tail.iter().any(|&l| l != tail[0]), "{:?}", d.train.labels);
    // Known names label the folders by themselves (a checkpoint's classes).
    let names: Vec<String> = ["moth", "zebra", "ant", "bee"].map(String::from).to_vec();
    let again = load_data_dir(&tmp.0, &names, Some([1, 4, 5])).unwrap();
    assert_eq!(again.classes, 4);
    for i in 0..again.train.n {
        let name = &names[again.train.labels[i] as usize];
        let k = written.iter().position(|n| n == name).unwrap();
        assert_eq!(again.train.image(i)[0] as usize / 10, k);
    }
}

#[test]
fn channels_come_from_the_files() {
    let tmp = TempDir::new("channels");
    let d = &tmp.0;
    // 16-bit grey keeps its high byte; grey + alpha drops the alpha.
    png(
        &d.join("a/g16.png"),
        2,
        1,
        ColorType::Grayscale,
        BitDepth::Sixteen,
        &[0x12, 0x34, 0xAB, 0xCD],
    );
    png(
        &d.join("a/ga.png"),
        2,
        1,
        ColorType::GrayscaleAlpha,
        BitDepth::Eight,
        &[7, 0, 9, 255],
    );
    grey(&d.join("b/g.png"), 2, 1, 50);
    let g = load_data_dir(d, &[], None).unwrap();
    assert_eq!(g.train.shape(), [1, 1, 2]);
    let mut all: Vec<Vec<u8>> = (0..3).map(|i| g.train.image(i).to_vec()).collect();
    all.sort();
    assert_eq!(all, [vec![7, 9], vec![0x12, 0xAB], vec![50, 50]]);
    // One colour image makes the set RGB: RGBA drops alpha, palettes expand, grey repeats.
    png(
        &d.join("b/rgba.png"),
        2,
        1,
        ColorType::Rgba,
        BitDepth::Eight,
        &[1, 2, 3, 0, 4, 5, 6, 9],
    );
    png(
        &d.join("b/pal.png"),
        2,
        1,
        ColorType::Indexed,
        BitDepth::Eight,
        &[1, 0],
    );
    let c = load_data_dir(d, &[], None).unwrap();
    assert_eq!(c.train.shape(), [3, 1, 2]);
    let mut all: Vec<Vec<u8>> = (0..5).map(|i| c.train.image(i).to_vec()).collect();
    all.sort();
    assert_eq!(
        all,
        [
            vec![1, 4, 2, 5, 3, 6], // RGBA, CHW
            vec![7, 9, 7, 9, 7, 9], // grey + alpha, repeated
            vec![0x12, 0xAB, 0x12, 0xAB, 0x12, 0xAB],
            vec![50, 50, 50, 50, 50, 50],
            vec![200, 0, 100, 0, 50, 0], // palette entries 1 and 0
        ]
    );
    // A grey model refuses colour images, naming the file.
    let e = load_data_dir(d, &[], Some([1, 1, 2]))
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("colour") && e.contains(".png"), "{e}");
}

#[test]
fn a_train_and_test_layout_gives_a_test_set_labelled_by_the_training_classes() {
    let tmp = TempDir::new("split");
    folders(&tmp.0.join("train"), &["cat", "dog", "emu"], 3);
    folders(&tmp.0.join("test"), &["dog", "emu"], 2);
    let d = load_data_dir(&tmp.0, &[], None).unwrap();
    assert_eq!((d.classes, d.train.n), (3, 9));
    let test = d.test.unwrap();
    assert_eq!(test.n, 4);
    assert!(test.labels.iter().all(|&l| l == 1 || l == 2));
    // A class the training set lacks.
    folders(&tmp.0.join("test"), &["gnu"], 1);
    let e = err(&tmp.0);
    assert!(
        e.contains("test/gnu") && e.contains("not one of the classes"),
        "{e}"
    );
}

#[test]
fn bad_image_folders_name_the_file_and_the_problem() {
    type Break = Box<dyn Fn(&Path)>;
    #[rustfmt::skip]
    let cases: Vec<(&str, Break, Vec<&str>)> = vec![
        ("an empty class folder", Box::new(|d| std::fs::create_dir_all(d.join("moth")).unwrap()),
            vec!["moth", "holds no PNG images"]),
        ("a file that is no PNG", Box::new(|d| std::fs::write(d.join("ant/notes.txt"), "hi").unwrap()),
            vec!["ant/notes.txt", "not a .png file"]),
        ("a JPEG named .png", Box::new(|d| std::fs::write(d.join("ant/photo.png"), b"\xff\xd8\xff\xe0 jfif").unwrap()),
            vec!["ant/photo.png", "no PNG signature"]),
        ("a truncated PNG", Box::new(|d| {
            let p = d.join("bee/img01.png");
            let b = std::fs::read(&p).unwrap();
            std::fs::write(&p, &b[..b.len() / 2]).unwrap();
        }), vec!["bee/img01.png", "not a readable PNG"]),
        ("an image of another size", Box::new(|d| grey(&d.join("bee/wide.png"), 6, 4, 1)),
            vec!["bee/wide.png", "is 6x4", "must be 5x4", "ant/img00.png"]),
        ("a folder inside a class folder", Box::new(|d| std::fs::create_dir_all(d.join("ant/more")).unwrap()),
            vec!["ant/more", "is a directory"]),
        ("one class only", Box::new(|d| std::fs::remove_dir_all(d.join("bee")).unwrap()),
            vec!["1 class folders", "expected 2 to 256"]),
        ("nothing at all", Box::new(|d| {
            std::fs::remove_dir_all(d.join("bee")).unwrap();
            std::fs::remove_dir_all(d.join("ant")).unwrap();
        }), vec!["0 class folders", "MNIST IDX files"]),
    ];
    for (i, (case, breaks, needles)) in cases.into_iter().enumerate() {
        let tmp = TempDir::new(&format!("bad{i}"));
        folders(&tmp.0, &["ant", "bee"], 2);
        breaks(&tmp.0);
        let e = err(&tmp.0);
        for n in needles {
            assert!(e.contains(n), "{case}: {e:?} lacks {n:?}");
        }
        println!("{case}: {e}");
    }
    let e = load_data_dir(Path::new("/nonexistent/images"), &[], None)
        .err()
        .unwrap()
        .to_string();
    assert!(
        e.contains("/nonexistent/images") && e.contains("not found"),
        "{e}"
    );
}

// ---------------------------------------------------------------- IDX sets

fn idx(dims: &[u32], data: &[u8]) -> Vec<u8> {
    let mut b = vec![0, 0, 8, dims.len() as u8];
    for d in dims {
        b.extend(d.to_be_bytes());
    }
    b.extend_from_slice(data);
    b
}

/// An IDX set of `n` 6x5 training and `m` test images with labels `label(i)` (images
/// carry their label in every pixel, times 19).
fn idx_set(dir: &Path, n: usize, m: usize, label: &dyn Fn(usize) -> u8) {
    std::fs::create_dir_all(dir).unwrap();
    for (images, labels, count) in [
        (TRAIN_IMAGES, TRAIN_LABELS, n),
        (TEST_IMAGES, TEST_LABELS, m),
    ] {
        let labs: Vec<u8> = (0..count).map(label).collect();
        let px: Vec<u8> = labs
            .iter()
            .flat_map(|&l| [l.wrapping_mul(19); 30])
            .collect();
        std::fs::write(dir.join(images), idx(&[count as u32, 6, 5], &px)).unwrap();
        std::fs::write(dir.join(labels), idx(&[count as u32], &labs)).unwrap();
    }
}

#[test]
fn idx_sets_take_their_class_count_from_the_labels() {
    let tmp = TempDir::new("idx");
    for classes in [2usize, 3, 13] {
        let dir = tmp.0.join(format!("c{classes}"));
        idx_set(&dir, 40, 13, &|i| (i % classes) as u8);
        let m = load_mnist(&dir).unwrap();
        assert_eq!(m.classes, classes);
        let d = load_data_dir(&dir, &[], None).unwrap();
        assert_eq!(
            (d.classes, d.train.shape(), d.names.len()),
            (classes, [1, 6, 5], 0)
        );
        assert_eq!(d.test.unwrap().n, 13);
    }
    // A test label the training labels do not reach.
    let dir = tmp.0.join("beyond");
    idx_set(&dir, 40, 13, &|i| (i % 3) as u8);
    std::fs::write(
        dir.join(TEST_LABELS),
        idx(&[13], &[0, 1, 2, 3, 0, 1, 2, 0, 1, 2, 0, 1, 2]),
    )
    .unwrap();
    let e = err(&dir);
    assert!(
        e.contains(TEST_LABELS)
            && e.contains("label at index 3 is 3")
            && e.contains("0..=2 (3 classes)"),
        "{e}"
    );
    // One class is no classification.
    let dir = tmp.0.join("one");
    idx_set(&dir, 10, 5, &|_| 0);
    let e = err(&dir);
    assert!(
        e.contains(TRAIN_LABELS) && e.contains("at least 2 classes"),
        "{e}"
    );
}

// ---------------------------------------------------------------- the command line

fn shadergrad(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_shadergrad"))
        .args(args)
        .env("SHADERGRAD_TUNE", "0")
        .output()
        .expect("the shadergrad binary runs")
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn ok(args: &[&str]) -> String {
    let out = shadergrad(args);
    let all = text(&out);
    assert!(out.status.success(), "{args:?} failed:\n{all}");
    all
}

fn fails(args: &[&str], needles: &[&str]) -> String {
    let out = shadergrad(args);
    let all = text(&out);
    assert!(
        !out.status.success() && !all.contains("panicked"),
        "{args:?}:\n{all}"
    );
    for n in needles {
        assert!(all.contains(n), "{args:?}: output lacks {n:?}:\n{all}");
    }
    all
}

/// 13 classes in IDX: the named model's output is 13 wide, evaluate's confusion matrix is
/// 13 x 13, and a model file with 10 outputs is refused naming the file.
#[test]
fn cli_trains_an_idx_set_of_13_classes() {
    let Some(_) = common::gpu() else { return };
    let tmp = TempDir::new("cli-idx");
    let dir = tmp.0.join("idx13");
    idx_set(&dir, 130, 26, &|i| (i % 13) as u8);
    let (d, ck) = (dir.to_str().unwrap(), tmp.0.join("m.safetensors"));
    let c = ck.to_str().unwrap();
    let base = [
        "train",
        "--data-dir",
        d,
        "--epochs",
        "1",
        "--batch-size",
        "26",
    ];
    let out = ok(&[&base[..], &["--model", "mlp", "--save", c]].concat());
    assert!(
        out.contains("(None, 13)"),
        "the summary shows 13 outputs:\n{out}"
    );
    let eval = ok(&["evaluate", "--checkpoint", c, "--data-dir", d]);
    assert!(
        eval.contains("26 images: test") && eval.contains("    12"),
        "{eval}"
    );
    let file = tmp.0.join("ten.json");
    std::fs::write(&file, r#"{"input": [1, 6, 5], "layers": [{"type": "flatten"}, {"type": "dense", "units": 10, "activation": "softmax"}]}"#).unwrap();
    let f = file.to_str().unwrap();
    fails(
        &[&base[..], &["--model-file", f]].concat(),
        &["ten.json", "10 outputs", "13 classes"],
    );
}

/// An RGB image folder with train/ and test/: the CNN takes 3x8x8 and 3 classes, augments
/// its training batches, saves the class names and the augmentation, predicts by name, and
/// a resumed run keeps the augmentation and refuses another.
#[test]
fn cli_trains_an_rgb_image_folder_with_augmentation() {
    let Some(_) = common::gpu() else { return };
    let tmp = TempDir::new("cli-rgb");
    let names = ["blue", "green", "red"];
    for (split, count) in [("train", 12), ("test", 4)] {
        for (c, name) in names.iter().enumerate() {
            for j in 0..count {
                let mut px = Vec::new();
                for k in 0..64 {
                    let mut rgb = [(k * 3 + j) as u8 % 40; 3];
                    rgb[2 - c] = 200; // blue, green, red in channel 2, 1, 0
                    px.extend(rgb);
                }
                let p = tmp.0.join(split).join(name).join(format!("{j}.png"));
                png(&p, 8, 8, ColorType::Rgb, BitDepth::Eight, &px);
            }
        }
    }
    let d = tmp.0.to_str().unwrap();
    let ck = tmp.0.join("rgb.safetensors");
    let c = ck.to_str().unwrap();
    let out = ok(&[
        "train",
        "--data-dir",
        d,
        "--epochs",
        "1",
        "--batch-size",
        "9",
        "--lr",
        "0.01",
        "--augment-shift",
        "2",
        "--augment-flip",
        "--save",
        c,
    ]);
    assert!(
        out.contains("(None, 32, 6, 6)") && out.contains("(None, 3) "),
        "{out}"
    );
    assert!(
        out.contains(
            "augmenting training batches on the GPU: shifts of up to 2 pixels, horizontal flips"
        ),
        "{out}"
    );
    assert!(out.contains("test_accuracy"), "{out}");
    let meta = shadergrad::checkpoint::load(&ck, None).unwrap();
    assert_eq!(meta.classes, names);
    assert_eq!((meta.augment.shift, meta.augment.flip), (2, true));
    assert_eq!(meta.model.input, [3, 8, 8]);
    let img = tmp.0.join("test/red/0.png");
    let pred = ok(&["predict", "--checkpoint", c, img.to_str().unwrap()]);
    assert!(pred.contains("class") && pred.contains("p2 red"), "{pred}");
    let eval = ok(&["evaluate", "--checkpoint", c, "--data-dir", d]);
    assert!(
        eval.contains("12 images: test") && eval.contains("2 red"),
        "{eval}"
    );
    // Resume: the flags must agree with the checkpoint, or be left out.
    fails(
        &[
            "train",
            "--resume",
            c,
            "--epochs",
            "2",
            "--augment-shift",
            "1",
            "--data-dir",
            d,
        ],
        &[
            "--augment-shift",
            "differ from the checkpoint's augmentation",
        ],
    );
    let resumed = ok(&["train", "--resume", c, "--epochs", "2", "--data-dir", d]);
    assert!(resumed.contains("shifts of up to 2 pixels"), "{resumed}");
    // A picture of another size is refused by name.
    let small = tmp.0.join("small.png");
    png(&small, 4, 4, ColorType::Rgb, BitDepth::Eight, &[9; 48]);
    fails(
        &["predict", "--checkpoint", c, small.to_str().unwrap()],
        &["small.png", "is 4x4", "8x8"],
    );
}

/// A folder without test/: training skips the test evaluation and says so, evaluate takes
/// every image, and a shift the images cannot take is refused before any GPU work.
#[test]
fn cli_trains_a_folder_without_a_test_set() {
    let Some(_) = common::gpu() else { return };
    let tmp = TempDir::new("cli-plain");
    folders(&tmp.0, &["ant", "bee", "cow"], 6);
    let d = tmp.0.to_str().unwrap();
    let ck = tmp.0.join("plain.safetensors");
    let c = ck.to_str().unwrap();
    let base = [
        "train",
        "--data-dir",
        d,
        "--epochs",
        "1",
        "--batch-size",
        "7",
        "--model",
        "softmax",
    ];
    let out = ok(&[&base[..], &["--save", c]].concat());
    assert!(
        out.contains("train on 14 samples, validate on 4") && out.contains("no test set"),
        "{out}"
    );
    let eval = ok(&["evaluate", "--checkpoint", c, "--data-dir", d]);
    assert!(
        eval.contains("18 images: every image of the folder") && eval.contains("2 cow"),
        "{eval}"
    );
    let all = fails(
        &[&base[..], &["--augment-shift", "4"]].concat(),
        &["--augment-shift", "1x4x5"],
    );
    assert!(!all.contains("adapter:"), "{all}");
}

//! Fixtures for the integration tests: generated images, tiny ONNX classifiers, and helpers
//! that run the real binaries and print everything when they fail.
#![allow(dead_code)]

use image::{Rgb, RgbImage};
use ndarray::ArrayD;
use rand::{Rng, SeedableRng};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use tlearn::onnx::builder::A;
use tlearn::onnx::{self, Dim, GraphBuilder};

pub fn bin(name: &str) -> PathBuf {
    let var = format!("CARGO_BIN_EXE_{name}");
    PathBuf::from(std::env::var(&var).unwrap_or_else(|_| panic!("{var} not set")))
}

/// Run a binary in `cwd`; returns the output, printing it all.
pub fn run(name: &str, args: &[&str], cwd: &Path) -> Output {
    let out =
        Command::new(bin(name)).args(args).current_dir(cwd).env("RUST_LOG", "info,ort=error").output().expect("spawn");
    eprintln!(
        "$ {name} {}\n--- status: {}\n--- stdout:\n{}\n--- stderr:\n{}",
        args.join(" "),
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Run and require success; returns stdout.
pub fn ok(name: &str, args: &[&str], cwd: &Path) -> String {
    let out = run(name, args, cwd);
    assert!(out.status.success(), "{name} {args:?} failed");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Run and require failure; returns stderr.
pub fn fails(name: &str, args: &[&str], cwd: &Path) -> String {
    let out = run(name, args, cwd);
    assert!(!out.status.success(), "{name} {args:?} should have failed");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// A small image whose colour depends on the class (so tiny backbones separate them), with noise.
pub fn make_image(class_idx: usize, seed: u64, w: u32, h: u32) -> RgbImage {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let base: [f32; 3] = match class_idx % 3 {
        0 => [200.0, 60.0, 50.0],
        1 => [40.0, 40.0, 230.0],
        _ => [60.0, 200.0, 70.0],
    };
    RgbImage::from_fn(w, h, |x, y| {
        let g = ((x + y) % 16) as f32 * 2.0;
        Rgb(std::array::from_fn(|c| (base[c] + g + rng.gen_range(-40.0..40.0)).clamp(0.0, 255.0) as u8))
    })
}

/// `root/<class>/<class>_<i>.png` (or Kaggle flat `root/<class>.<i>.jpg` when `kaggle`).
pub fn make_dataset(root: &Path, classes: &[&str], per_class: usize, kaggle: bool) {
    std::fs::create_dir_all(root).unwrap();
    for (ci, c) in classes.iter().enumerate() {
        for i in 0..per_class {
            let img = make_image(ci, (ci * 1000 + i) as u64, 24 + (i as u32 % 3) * 8, 20 + (i as u32 % 4) * 6);
            if kaggle {
                img.save(root.join(format!("{c}.{i}.jpg"))).unwrap();
            } else {
                let d = root.join(c);
                std::fs::create_dir_all(&d).unwrap();
                img.save(d.join(format!("{c}_{i}.png"))).unwrap();
            }
        }
    }
}

/// A tiny tf2onnx-like classifier: NHWC input (N,32,32,3) → Transpose → Conv 3→8 3×3 → Relu →
/// MaxPool 2×2 (tensor `pool_out`, NCHW) → Flatten → Gemm → Softmax. Cut it at `pool_out`.
pub fn tiny_classifier(path: &Path, seed: u64) {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let mut b = GraphBuilder::new("tiny").with_prefix("t/");
    b.input("input_1", &[Dim::named("unk"), Dim::Fixed(32), Dim::Fixed(32), Dim::Fixed(3)]);
    let x = b.op("Transpose", &["input_1"], vec![("perm", A::Ints(vec![0, 3, 1, 2]))]);
    let w = b.init_f32(
        "conv/kernel",
        &ArrayD::from_shape_simple_fn(ndarray::IxDyn(&[8, 3, 3, 3]), || rng.gen_range(-0.02f32..0.02)),
    );
    let bias =
        b.init_f32("conv/bias", &ArrayD::from_shape_simple_fn(ndarray::IxDyn(&[8]), || rng.gen_range(-0.1f32..0.1)));
    let c = b.op(
        "Conv",
        &[&x, &w, &bias],
        vec![("kernel_shape", A::Ints(vec![3, 3])), ("pads", A::Ints(vec![1, 1, 1, 1]))],
    );
    let r = b.op("Relu", &[&c], vec![]);
    b.node(
        "MaxPool",
        &[&r],
        &["pool_out"],
        vec![("kernel_shape", A::Ints(vec![2, 2])), ("strides", A::Ints(vec![2, 2]))],
    );
    let f = b.op("Flatten", &["pool_out"], vec![]);
    let w2 = b.init_f32(
        "fc/kernel",
        &ArrayD::from_shape_simple_fn(ndarray::IxDyn(&[8 * 16 * 16, 4]), || rng.gen_range(-0.01f32..0.01)),
    );
    let b2 = b.init_f32("fc/bias", &ArrayD::zeros(ndarray::IxDyn(&[4])));
    let g = b.op("Gemm", &[&f, &w2, &b2], vec![]);
    b.node("Softmax", &[&g], &["output"], vec![]);
    b.output("output", &[Dim::named("unk"), Dim::Fixed(4)]);
    let mut m = onnx::model(b.finish(), "tf2onnx-like test fixture");
    m.opset_import[0].version = 13;
    onnx::save_model(&m, path).unwrap();
}

/// [`tiny_classifier`] written into a fresh temp dir and loaded: (dir, path, model).
pub fn tiny_loaded(seed: u64) -> (tempfile::TempDir, PathBuf, tlearn::onnx::proto::ModelProto) {
    let d = tempfile::tempdir().unwrap();
    let src = d.path().join("tiny.onnx");
    tiny_classifier(&src, seed);
    let m = onnx::load_model(&src).unwrap();
    (d, src, m)
}

/// A model whose input is not an image (rank 2).
pub fn not_image_model(path: &Path) {
    let mut b = GraphBuilder::new("vec");
    b.input("x", &[Dim::named("N"), Dim::Fixed(10)]);
    b.node("Relu", &["x"], &["y"], vec![]);
    b.output("y", &[Dim::named("N"), Dim::Fixed(10)]);
    onnx::save_model(&onnx::model(b.finish(), "test"), path).unwrap();
}

/// A fresh temp dir with an empty `onnx/` folder (the built-in catalog is part of the binaries).
pub fn workdir() -> tempfile::TempDir {
    let d = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(d.path().join("onnx")).unwrap();
    d
}

/// A Python that imports TensorFlow: `BENCH_TF_PYTHON`, else `.cache/tfenv/bin/python`
/// (`make bench-tf-env`); None where there is none (the tests that need it skip).
pub fn tf_python() -> Option<String> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let py = std::env::var("BENCH_TF_PYTHON")
        .unwrap_or_else(|_| root.join(".cache/tfenv/bin/python").to_string_lossy().into_owned());
    let ok = Command::new(&py)
        .args(["-c", "import tensorflow"])
        .env("TF_CPP_MIN_LOG_LEVEL", "3")
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    ok.then_some(py)
}

/// A split toy dataset in `w/data/toy` and the tiny classifier registered as backbone `tiny`
/// (cut at `pool_out`, 32×32); returns its feature folder.
pub fn prepared(w: &Path, classes: &[&str], per_class: usize) -> String {
    make_dataset(&w.join("raw"), classes, per_class, false);
    ok("tlearn-data", &["split", "raw", "data/toy", "--seed", "1"], w);
    tiny_classifier(&w.join("tiny.onnx"), 3);
    let out = ok(
        "tlearn-backbone",
        &["add", "tiny.onnx", "--output", "pool_out", "--preprocess", "caffe", "--size", "32"],
        w,
    );
    assert!(out.contains("[16, 16, 8]"), "{out}");
    "features/toy/tiny-32".into()
}

/// `prepared` + features + a dense head run `toy`; returns its feature folder.
pub fn trained(w: &Path, classes: &[&str], per_class: usize) -> String {
    let feats = prepared(w, classes, per_class);
    ok("tlearn-extract", &["--data", "data/toy", "--backbone", "tiny", "--device", "cpu"], w);
    ok("tlearn-head", &["--features", &feats, "--run", "toy", "--epochs", "2", "--units", "8"], w);
    feats
}

/// history.csv without its `seconds` column (timings differ between any two runs).
pub fn history_sans_time(p: &Path) -> Vec<String> {
    let text = std::fs::read_to_string(p).unwrap();
    let mut lines = text.lines();
    let header: Vec<&str> = lines.next().unwrap().split(',').collect();
    let t = header.iter().position(|h| *h == "seconds").unwrap();
    lines
        .map(|l| l.split(',').enumerate().filter(|(i, _)| *i != t).map(|(_, v)| v).collect::<Vec<_>>().join(","))
        .collect()
}

/// The names of the entries of `dir` (panics when it cannot be read).
pub fn file_names(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect()
}

/// Every folder and file under `from` copied below `to` at the same relative path (into folders
/// that may exist already).
pub fn copy_tree(from: &Path, to: &Path) {
    for e in walkdir::WalkDir::new(from).into_iter().filter_map(|e| e.ok()) {
        let dest = to.join(e.path().strip_prefix(from).unwrap());
        if e.file_type().is_dir() {
            std::fs::create_dir_all(&dest).unwrap();
        } else {
            std::fs::copy(e.path(), &dest).unwrap();
        }
    }
}

/// How many files lie under `dir`, at any depth.
pub fn count_files(dir: &Path) -> usize {
    walkdir::WalkDir::new(dir).into_iter().filter_map(|e| e.ok()).filter(|e| e.file_type().is_file()).count()
}

/// A JSON file's value (a sidecar, a summary, a record); panics naming the file.
pub fn json(p: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))).unwrap()
}

/// Every evaluated test image has a score row with the same class and probability (within 1e-4).
pub fn assert_scores_match_predictions(scores_csv: &str, predictions_csv: &str) {
    let rows: Vec<&str> = scores_csv.lines().skip(1).collect();
    for line in predictions_csv.lines().skip(1) {
        let f: Vec<&str> = line.split(',').collect();
        let name = Path::new(f[0]).file_name().unwrap().to_string_lossy().into_owned();
        let row = rows
            .iter()
            .find(|r| r.split(',').next().unwrap().ends_with(&format!("/{name}")))
            .unwrap_or_else(|| panic!("{name} not scored"));
        let r: Vec<&str> = row.split(',').collect();
        assert_eq!(r[1], f[2], "class of {name}");
        let (a, b): (f64, f64) = (r[2].parse().unwrap(), f[3].parse().unwrap());
        assert!((a - b).abs() < 1e-4, "{name}: score {a} vs evaluate {b}");
    }
}

/// A test that cannot run here says so in one line that `.ci/run` collects at the end of its log:
/// `SKIPPED <test binary>::<test>: <why>`. It is written straight to standard error, past the test
/// harness's capture, so it shows for passing tests too.
pub fn skipped(why: &str) {
    use std::io::Write;
    let thread = std::thread::current();
    let test = thread.name().filter(|n| *n != "main").unwrap_or("?");
    let _ = writeln!(std::io::stderr(), "SKIPPED {}::{test}: {why}", env!("CARGO_CRATE_NAME"));
}

/// Whether this is a CI run (`CI` set, as CI services and `.ci/run` do): there a missing tool is a
/// failure, not a skip.
pub fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| !v.is_empty() && v != "0" && v != "false")
}

/// Start `name args` and SIGKILL it: after `delay`, or once `progress()` says it has done part of
/// its work (whichever the round asks for). Returns whether it was still running when killed.
pub fn kill_at(
    name: &str,
    args: &[&str],
    cwd: &Path,
    delay: Option<std::time::Duration>,
    progress: &dyn Fn() -> bool,
) -> bool {
    let mut c = Command::new(bin(name))
        .args(args)
        .current_dir(cwd)
        .env("RUST_LOG", "warn,ort=error")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let t = std::time::Instant::now();
    loop {
        if c.try_wait().unwrap().is_some() {
            return false;
        }
        let due = match delay {
            Some(d) => t.elapsed() >= d,
            None => progress(),
        };
        if due || t.elapsed() > std::time::Duration::from_secs(120) {
            c.kill().unwrap();
            c.wait().unwrap();
            return true;
        }
        std::thread::sleep(std::time::Duration::from_millis(2));
    }
}

/// `bin` run in `cwd` with `env` set (a `None` value removes the variable), printed as `run` does.
pub fn run_with(bin: &Path, args: &[&str], cwd: &Path, env: &[(&str, Option<&Path>)]) -> Output {
    let mut cmd = Command::new(bin);
    cmd.args(args).current_dir(cwd).env("RUST_LOG", "info,ort=error");
    for (k, v) in env {
        match v {
            Some(v) => cmd.env(k, v),
            None => cmd.env_remove(k),
        };
    }
    let out = cmd.output().expect("spawn");
    eprintln!(
        "$ {} {}\n--- status: {}\n--- stdout:\n{}\n--- stderr:\n{}",
        bin.display(),
        args.join(" "),
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

pub fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// The named binaries linked (or copied) into `dir`, alone: a tlearn installed elsewhere.
pub fn install(dir: &Path, names: &[&str]) {
    std::fs::create_dir_all(dir).unwrap();
    for n in names {
        if std::fs::hard_link(bin(n), dir.join(n)).is_err() {
            std::fs::copy(bin(n), dir.join(n)).unwrap();
        }
    }
}

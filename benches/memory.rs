//! Peak memory of `tlearn-score` and `tlearn-extract` on 1,000 vs 100,000 small generated images,
//! and of `tlearn-finetune --max-memory` on 1,000 vs 20,000 (`make bench-memory`, in `make bench`).
//! All three stream: scoring its file list through fixed-size batches and journal chunks,
//! extraction its rows through journal chunks into an `.npy` written row by row, fine-tuning its
//! decoded images through a file past the budget. Goal for each: the big set's peak ≤ 1.5× the
//! small one's.
//!
//! Scoring: 1,000 distinct 32×32 PNGs, hard-linked into 100 folders for the 100,000-image run
//! (distinct paths, the same decode work); model: the mnist convnet (2 classes, untrained) as a
//! deployable tlearn classifier. Extraction computes each distinct content once, so its images are
//! 100,000 distinct 32×32 PNGs (the 1,000-image set is the first 1,000); backbone: one 3×3 conv
//! with 8 filters and a 2×2 max-pool, 16×16×8 features (8 KB a row: 800 MB for the big set, which
//! a cache held in memory would show). Peak RSS from GNU time (`/usr/bin/time -f %M`).

#[path = "common/cpu.rs"]
mod cpu;

use std::path::{Path, PathBuf};
use std::process::Command;

/// Run a tlearn binary under GNU time: (peak RSS in KB, seconds, stdout).
fn peak_rss_kb(bin: &str, args: &[&std::ffi::OsStr], cwd: &Path) -> (u64, f64, String) {
    let t = std::time::Instant::now();
    let o = Command::new("/usr/bin/time")
        .args(["-f", "PEAK_KB %M"])
        .arg(bin)
        .args(args)
        .current_dir(cwd)
        .env("RUST_LOG", "warn,ort=error")
        .output()
        .expect("run /usr/bin/time (GNU time)");
    let secs = t.elapsed().as_secs_f64();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{bin} failed:\n{err}");
    let kb = err.lines().find_map(|l| l.strip_prefix("PEAK_KB ")).and_then(|v| v.trim().parse().ok()).expect("%M");
    (kb, secs, String::from_utf8_lossy(&o.stdout).into_owned())
}

/// One stage's line: peak RSS on `small` vs `big` images, (KB, seconds) each.
fn report(stage: &str, (small, big): (u32, u32), (small_kb, small_s): (u64, f64), (big_kb, big_s): (u64, f64)) {
    let ratio = big_kb as f64 / small_kb as f64;
    println!(
        "{stage}: peak RSS {:.1} MB on {small} images ({small_s:.1} s), {:.1} MB on {big} ({big_s:.1} s, {:.0} img/s): {ratio:.2}× (goal ≤ 1.5×) {}",
        small_kb as f64 / 1024.0,
        big_kb as f64 / 1024.0,
        big as f64 / big_s,
        if ratio <= 1.5 { "OK" } else { "OVER" }
    );
}

/// Image `i` of `side`×`side`: its first row spells `i` in bits, so every image is distinct.
fn image(i: u32, side: u32) -> image::RgbImage {
    image::RgbImage::from_fn(side, side, |x, y| {
        let bits = if y == 0 && x < 17 { ((i >> x) & 1) as u8 * 255 } else { (x * 256 / side) as u8 };
        image::Rgb([bits, (y * 256 / side) as u8, (i % 251) as u8])
    })
}

fn score(d: &Path) {
    std::fs::create_dir_all(d).unwrap();
    let spec = tlearn::convnet::spec("mnist").unwrap().with_classes(2).unwrap();
    let net = tlearn::convnet::build(&spec, 0).unwrap();
    let classes = vec!["a".to_string(), "b".to_string()];
    let dep = tlearn::runs::deployable(&net, 28, 1, 1.0 / 255.0, Default::default(), &classes, &[]).unwrap();
    let model = d.join("model.onnx");
    tlearn::onnx::save_model(&dep, &model).unwrap();
    let base = d.join("k1");
    std::fs::create_dir_all(&base).unwrap();
    let originals: Vec<PathBuf> = (0..1000u32)
        .map(|i| {
            let p = base.join(format!("img_{i:04}.png"));
            image(i, 32).save(&p).unwrap();
            p
        })
        .collect();
    let big = d.join("k100");
    for f in 0..100 {
        let sub = big.join(format!("folder_{f:03}"));
        std::fs::create_dir_all(&sub).unwrap();
        for p in &originals {
            std::fs::hard_link(p, sub.join(p.file_name().unwrap())).unwrap();
        }
    }
    let bin = env!("CARGO_BIN_EXE_tlearn-score");
    let run = |input: &Path, out: &str| {
        let args = [input.as_os_str(), "--model".as_ref(), model.as_os_str(), "--out".as_ref(), out.as_ref()];
        let more = ["--device", "cpu", "--batch", "64"].map(std::ffi::OsStr::new);
        let (kb, s, _) = peak_rss_kb(bin, &[&args[..], &more[..]].concat(), d);
        (kb, s)
    };
    let small = run(&base, "s1.csv");
    let big_run = run(&big, "s100.csv");
    let rows = std::fs::read_to_string(d.join("s100.csv")).unwrap().lines().count() - 1;
    assert_eq!(rows, 100_000);
    report("score_memory", (1_000, 100_000), small, big_run);
}

/// The backbone: NHWC (N,32,32,3) → Transpose → Conv 3→8 3×3 → Relu → MaxPool 2×2 → `pool_out`.
fn conv_backbone(path: &Path) {
    use ndarray::{ArrayD, IxDyn};
    use tlearn::onnx::{builder::A, Dim, GraphBuilder};
    let mut b = GraphBuilder::new("bench");
    b.input("input_1", &[Dim::named("unk"), Dim::Fixed(32), Dim::Fixed(32), Dim::Fixed(3)]);
    let x = b.op("Transpose", &["input_1"], vec![("perm", A::Ints(vec![0, 3, 1, 2]))]);
    let w =
        b.init_f32("conv/kernel", &ArrayD::from_shape_fn(IxDyn(&[8, 3, 3, 3]), |i| (i[0] + i[1] + i[2]) as f32 / 50.0));
    let bias = b.init_f32("conv/bias", &ArrayD::zeros(IxDyn(&[8])));
    let pads = ("pads", A::Ints(vec![1, 1, 1, 1]));
    let c = b.op("Conv", &[&x, &w, &bias], vec![("kernel_shape", A::Ints(vec![3, 3])), pads]);
    let r = b.op("Relu", &[&c], vec![]);
    let pool = vec![("kernel_shape", A::Ints(vec![2, 2])), ("strides", A::Ints(vec![2, 2]))];
    b.node("MaxPool", &[&r], &["pool_out"], pool);
    b.output("pool_out", &[Dim::named("unk"), Dim::Fixed(8), Dim::Fixed(16), Dim::Fixed(16)]);
    let mut m = tlearn::onnx::model(b.finish(), "bench fixture");
    m.opset_import[0].version = 13;
    tlearn::onnx::save_model(&m, path).unwrap();
}

fn extract(d: &Path) {
    std::fs::create_dir_all(d.join("onnx")).unwrap();
    conv_backbone(&d.join("conv.onnx"));
    let add = ["add", "conv.onnx", "--output", "pool_out", "--preprocess", "caffe", "--size", "32"];
    let o = Command::new(env!("CARGO_BIN_EXE_tlearn-backbone")).args(add).current_dir(d).output().unwrap();
    assert!(o.status.success(), "tlearn-backbone add: {}", String::from_utf8_lossy(&o.stderr));
    for (set, n) in [("e1", 1_000u32), ("e100", 100_000)] {
        for i in 0..n {
            let class = ["a", "b"][(i % 2) as usize];
            let dir = d.join(set).join("train").join(class).join(format!("f{:03}", i / 1000));
            if i % 1000 < 2 {
                std::fs::create_dir_all(&dir).unwrap();
            }
            image(i, 32).save(dir.join(format!("img_{i:06}.png"))).unwrap();
        }
    }
    let bin = env!("CARGO_BIN_EXE_tlearn-extract");
    let run = |set: &str| {
        let args = ["--data", set, "--backbone", "conv", "--device", "cpu", "--out", &format!("feats-{set}")];
        let args: Vec<&std::ffi::OsStr> = args.iter().map(std::ffi::OsStr::new).collect();
        let (kb, s, out) = peak_rss_kb(bin, &args, d);
        assert!(out.contains("train"), "{out}");
        (kb, s)
    };
    let small = run("e1");
    let big = run("e100");
    let f = std::fs::metadata(d.join("feats-e100/train.npy")).unwrap().len();
    assert!(f > 100_000 * 8 * 1024, "100,000 rows of 8 KB: {f} bytes");
    report("extract_memory", (1_000, 100_000), small, big);
}

/// A trainable classifier of 96×96 RGB images: a 3×3 conv (8 filters, stride 4), ReLU, global
/// average pool, a dense layer to two classes — cheap to train, so decoding and holding the
/// images is what the run's memory shows.
fn small_classifier(path: &Path) {
    use ndarray::{ArrayD, IxDyn};
    use tlearn::onnx::{builder::A, Dim, GraphBuilder};
    let mut b = GraphBuilder::new("bench");
    b.input("input_1", &[Dim::named("unk"), Dim::Fixed(96), Dim::Fixed(96), Dim::Fixed(3)]);
    let x = b.op("Transpose", &["input_1"], vec![("perm", A::Ints(vec![0, 3, 1, 2]))]);
    let w = b.init_f32("conv/kernel", &ArrayD::from_shape_fn(IxDyn(&[8, 3, 3, 3]), |i| (i[0] as f32 - 3.5) / 40.0));
    let bias = b.init_f32("conv/bias", &ArrayD::zeros(IxDyn(&[8])));
    let conv = vec![("kernel_shape", A::Ints(vec![3, 3])), ("strides", A::Ints(vec![4, 4]))];
    let c = b.op("Conv", &[&x, &w, &bias], conv);
    let r = b.op("Relu", &[&c], vec![]);
    let p = b.op("GlobalAveragePool", &[&r], vec![]);
    let f = b.op("Flatten", &[&p], vec![]);
    let w2 = b.init_f32("fc/kernel", &ArrayD::from_shape_fn(IxDyn(&[8, 1]), |i| (i[0] as f32 - 3.5) / 10.0));
    let b2 = b.init_f32("fc/bias", &ArrayD::zeros(IxDyn(&[1])));
    let g = b.op("Gemm", &[&f, &w2, &b2], vec![]);
    b.node("Sigmoid", &[&g], &["output"], vec![]);
    b.output("output", &[Dim::named("unk"), Dim::Fixed(1)]);
    let mut m = tlearn::onnx::model(b.finish(), "bench fixture");
    m.opset_import[0].version = 13;
    tlearn::onnx::save_model(&m, path).unwrap();
}

/// Fine-tuning with `--max-memory 16M` on 1,000 vs 20,000 distinct 96×96 images (553 MB of
/// pixels for the big set), one epoch each; the big set once more with the default budget, where
/// the images sit in memory, for contrast.
fn finetune(d: &Path) {
    std::fs::create_dir_all(d).unwrap();
    small_classifier(&d.join("net.onnx"));
    for (set, n) in [("f1", 1_000u32), ("f20", 20_000)] {
        for i in 0..n {
            let class = ["a", "b"][(i % 2) as usize];
            let dir = d.join(set).join("train").join(class);
            if i < 2 {
                std::fs::create_dir_all(&dir).unwrap();
            }
            image(i, 96).save(dir.join(format!("img_{i:06}.png"))).unwrap();
        }
    }
    let bin = env!("CARGO_BIN_EXE_tlearn-finetune");
    let run = |set: &str, budget: Option<&str>| {
        let mut args = vec!["net.onnx", "--data", set, "--run", set, "--epochs", "1", "--batch", "64"];
        args.extend_from_slice(&["--optimizer", "adam", "--lr", "1e-3", "--device", "cpu", "--restart"]);
        args.extend(budget.iter().flat_map(|b| ["--max-memory", *b]));
        let args: Vec<&std::ffi::OsStr> = args.iter().map(std::ffi::OsStr::new).collect();
        let (kb, s, out) = peak_rss_kb(bin, &args, d);
        assert!(out.contains("trained"), "{out}");
        (kb, s)
    };
    let small = run("f1", Some("16M"));
    let big = run("f20", Some("16M"));
    report("finetune_memory (--max-memory 16M)", (1_000, 20_000), small, big);
    let (kb, s) = run("f20", None);
    println!(
        "finetune_memory (default budget, images in memory): peak RSS {:.1} MB on 20000 ({s:.1} s)",
        kb as f64 / 1024.0
    );
}

/// One measured stage, run in its own folder.
type Stage = fn(&Path);

fn main() {
    println!("{}", cpu::describe());
    if !Path::new("/usr/bin/time").exists() {
        println!("memory: skipped (needs GNU time at /usr/bin/time: apt install time)");
        return;
    }
    // TLEARN_BENCH_MEMORY=score,extract,finetune (the default) picks the stages.
    let only = std::env::var("TLEARN_BENCH_MEMORY").unwrap_or_default();
    let wanted = |stage: &str| only.is_empty() || only.split(',').any(|s| s.trim() == stage);
    let dir = tempfile::tempdir().unwrap();
    let stages: [(&str, Stage); 3] = [("score", score), ("extract", extract), ("finetune", finetune)];
    for (name, stage) in stages.into_iter().filter(|(n, _)| wanted(n)) {
        stage(&dir.path().join(name));
    }
}

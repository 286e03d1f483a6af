//! Peak memory of `tlearn-score` and `tlearn-extract` on 1,000 vs 100,000 small generated images
//! (`make bench-memory`, in `make bench`). Both stream: scoring its file list through fixed-size
//! batches and journal chunks, extraction its rows through journal chunks into an `.npy` written
//! row by row. Goal for each: the 100,000-image peak ≤ 1.5× the 1,000-image one.
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

fn report(stage: &str, (small_kb, small_s): (u64, f64), (big_kb, big_s): (u64, f64)) {
    let ratio = big_kb as f64 / small_kb as f64;
    println!(
        "{stage}: peak RSS {:.1} MB on 1,000 images ({small_s:.1} s), {:.1} MB on 100,000 ({big_s:.1} s, {:.0} img/s): {ratio:.2}× (goal ≤ 1.5×) {}",
        small_kb as f64 / 1024.0,
        big_kb as f64 / 1024.0,
        100_000.0 / big_s,
        if ratio <= 1.5 { "OK" } else { "OVER" }
    );
}

fn image(i: u32) -> image::RgbImage {
    image::RgbImage::from_fn(32, 32, |x, y| {
        let bits = if y == 0 && x < 17 { ((i >> x) & 1) as u8 * 255 } else { (x * 8) as u8 };
        image::Rgb([bits, (y * 8) as u8, (i % 251) as u8])
    })
}

fn score(d: &Path) {
    std::fs::create_dir_all(d).unwrap();
    let spec = tlearn::convnet::spec("mnist").unwrap().with_classes(2).unwrap();
    let net = tlearn::convnet::build(&spec, 0).unwrap();
    let classes = vec!["a".to_string(), "b".to_string()];
    let dep = tlearn::score::deployable(&net, 28, 1, 1.0 / 255.0, Default::default(), &classes, &[]).unwrap();
    let model = d.join("model.onnx");
    tlearn::onnx::save_model(&dep, &model).unwrap();
    let base = d.join("k1");
    std::fs::create_dir_all(&base).unwrap();
    let originals: Vec<PathBuf> = (0..1000u32)
        .map(|i| {
            let p = base.join(format!("img_{i:04}.png"));
            image(i).save(&p).unwrap();
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
    report("score_memory", small, big_run);
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
            image(i).save(dir.join(format!("img_{i:06}.png"))).unwrap();
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
    report("extract_memory", small, big);
}

fn main() {
    println!("{}", cpu::describe());
    if !Path::new("/usr/bin/time").exists() {
        println!("memory: skipped (needs GNU time at /usr/bin/time: apt install time)");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    score(&dir.path().join("score"));
    extract(&dir.path().join("extract"));
}

//! Peak memory of `tlearn-score` on 1,000 vs 100,000 small generated images (`make bench`).
//! Scoring streams its file list through fixed-size batches and journal chunks, so its peak
//! should stay flat in the number of files: the goal is ≤ 1.5× the 1,000-image peak.
//!
//! Images: 1,000 distinct 32×32 PNGs, hard-linked into 100 folders for the 100,000-image run
//! (distinct paths, the same decode work). Model: the mnist convnet (2 classes, untrained weights)
//! as a deployable tlearn classifier. Peak RSS from GNU time (`/usr/bin/time -f %M`).

#[path = "common/cpu.rs"]
mod cpu;

use std::path::{Path, PathBuf};
use std::process::Command;

fn peak_rss_kb(model: &Path, input: &Path, out: &Path) -> (u64, f64) {
    let t = std::time::Instant::now();
    let o = Command::new("/usr/bin/time")
        .args(["-f", "PEAK_KB %M"])
        .arg(env!("CARGO_BIN_EXE_tlearn-score"))
        .arg(input)
        .arg("--model")
        .arg(model)
        .arg("--out")
        .arg(out)
        .args(["--device", "cpu", "--batch", "64"])
        .env("RUST_LOG", "warn,ort=error")
        .output()
        .expect("run /usr/bin/time (GNU time)");
    let secs = t.elapsed().as_secs_f64();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "tlearn-score failed:\n{err}");
    let kb = err.lines().find_map(|l| l.strip_prefix("PEAK_KB ")).and_then(|v| v.trim().parse().ok()).expect("%M");
    (kb, secs)
}

fn main() {
    println!("{}", cpu::describe());
    if !Path::new("/usr/bin/time").exists() {
        println!("score_memory: skipped (needs GNU time at /usr/bin/time: apt install time)");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
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
            let img =
                image::RgbImage::from_fn(32, 32, |x, y| image::Rgb([(x * 8) as u8, (y * 8) as u8, (i % 251) as u8]));
            let p = base.join(format!("img_{i:04}.png"));
            img.save(&p).unwrap();
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
    let (small_kb, small_s) = peak_rss_kb(&model, &base, &d.join("s1.csv"));
    let (big_kb, big_s) = peak_rss_kb(&model, &big, &d.join("s100.csv"));
    let rows = std::fs::read_to_string(d.join("s100.csv")).unwrap().lines().count() - 1;
    assert_eq!(rows, 100_000);
    let ratio = big_kb as f64 / small_kb as f64;
    println!(
        "score_memory: peak RSS {:.1} MB on 1,000 images ({small_s:.1} s), {:.1} MB on 100,000 ({big_s:.1} s, {:.0} img/s): {ratio:.2}× (goal ≤ 1.5×) {}",
        small_kb as f64 / 1024.0,
        big_kb as f64 / 1024.0,
        100_000.0 / big_s,
        if ratio <= 1.5 { "OK" } else { "OVER" }
    );
}

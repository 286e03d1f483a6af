//! `make bench`: feature-extraction throughput measured side by side in one run —
//! (1) the raw ORT session on already-preprocessed tensors, (2) tlearn's pipeline (decode +
//! preprocess overlapped with inference), (3) a plain Python onnxruntime + Pillow loop.
//! Also checks that tlearn's features equal the Python loop's on the same images.
//!
//! Each measurement takes seconds, so this is a plain harness (criterion's sampling would
//! repeat a VGG16 pass dozens of times). Env: BENCH_IMAGES (default 120), BENCH_PYTHON
//! (a Python with onnxruntime, numpy, Pillow; `make bench-env` makes one), BENCH_BACKBONE.

#[path = "common/cpu.rs"]
mod cpu;

use ndarray::{Array4, Axis};
use std::path::PathBuf;
use std::time::Instant;
use tlearn::batch::{run_images, LoadSpec};
use tlearn::runtime::{self, Device, SessionOptions};

fn main() {
    println!("{}", cpu::describe());
    let n: usize = std::env::var("BENCH_IMAGES").ok().and_then(|v| v.parse().ok()).unwrap_or(120);
    let name = std::env::var("BENCH_BACKBONE").unwrap_or_else(|_| "vgg16".into());
    let bb = tlearn::backbone::Backbone::open(std::path::Path::new("onnx"), &name).expect("run `make backbone` first");
    let (_, items, _) =
        tlearn::dataset::list_split(std::path::Path::new("data/elpv"), "test").expect("run `make data` first");
    let paths: Vec<PathBuf> = items.iter().take(n).map(|i| i.path.clone()).collect();
    let size = bb.info.size;
    let batch = 20;
    let spec = LoadSpec {
        size: (size, size),
        interpolation: Default::default(),
        preprocess: bb.info.preprocess.clone(),
        max_pixels: u64::MAX,
        view: Default::default(),
    };
    let opts = SessionOptions { device: Device::Cpu, threads: 0, precision: None };
    let mut s = runtime::open(&bb.bytes, &bb.path, &opts).unwrap().session;
    // Warm up.
    let warm = Array4::<f32>::zeros((batch, size as usize, size as usize, 3)).into_dyn();
    runtime::run_f32(&mut s, vec![("image", warm.view())], &["features"]).unwrap();

    // (1) raw session throughput on preprocessed tensors, and (2) tlearn's pipeline from files,
    // alternated over `rounds` rounds (best of each) so drift on a noisy machine hits both alike.
    let tensors: Vec<_> = paths
        .iter()
        .map(|p| tlearn::imageio::load(p, spec.size, spec.interpolation, &spec.preprocess, u64::MAX).unwrap())
        .collect();
    let rounds: usize = std::env::var("BENCH_ROUNDS").ok().and_then(|v| v.parse().ok()).unwrap_or(2);
    let (mut raw, mut tl) = (0f64, 0f64);
    let mut first = vec![];
    for _ in 0..rounds {
        let t = Instant::now();
        for chunk in tensors.chunks(batch) {
            let views: Vec<_> = chunk.iter().map(|a| a.view()).collect();
            let x = ndarray::stack(Axis(0), &views).unwrap().into_dyn();
            runtime::run_f32(&mut s, vec![("image", x.view())], &["features"]).unwrap();
        }
        raw = raw.max(n as f64 / t.elapsed().as_secs_f64());
        first.clear();
        let t = Instant::now();
        run_images(&mut s, "image", "features", &paths, &spec, batch, |i, r| {
            if i < batch {
                first.push(r.unwrap().to_owned());
            }
            Ok(())
        })
        .unwrap();
        tl = tl.max(n as f64 / t.elapsed().as_secs_f64());
    }

    // (3) the Python loop.
    let py = std::env::var("BENCH_PYTHON").unwrap_or_else(|_| ".cache/benchenv/bin/python".into());
    let list = std::env::temp_dir().join("tlearn-bench-list.txt");
    std::fs::write(&list, paths.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join("\n")).unwrap();
    let dump = std::env::temp_dir().join("tlearn-bench-first.npy");
    let out = std::process::Command::new(&py)
        .args(["pyref/python_extract.py", "--model"])
        .arg(&bb.path)
        .arg("--list")
        .arg(&list)
        .args(["--size", &size.to_string(), "--batch", &batch.to_string(), "--rounds", &rounds.to_string(), "--dump"])
        .arg(&dump)
        .output();
    let python = match out {
        Ok(o) if o.status.success() => {
            let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
            Some(v["img_per_s"].as_f64().unwrap())
        }
        Ok(o) => {
            println!(
                "Python loop skipped: {} failed: {}",
                py,
                String::from_utf8_lossy(&o.stderr).lines().last().unwrap_or("")
            );
            None
        }
        Err(e) => {
            println!("Python loop skipped: {py}: {e} (run `make bench-env`)");
            None
        }
    };
    println!(
        "feature extraction, {name} at {size}×{size}, {n} ELPV images, batch {batch}, {} threads, best of {rounds} rounds",
        std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)
    );
    println!("{:<44} {:>8}", "", "img/s");
    println!("{:<44} {:>8.2}", "raw ORT session (preprocessed tensors)", raw);
    println!("{:<44} {:>8.2}  ({:.1} % of raw ORT)", "tlearn pipeline (files → features)", tl, 100.0 * tl / raw);
    if let Some(p) = python {
        println!("{:<44} {:>8.2}  (tlearn = {:.2}× Python)", "Python onnxruntime + Pillow loop", p, tl / p);
        let yp: ndarray::ArrayD<f32> = ndarray_npy::read_npy(&dump).unwrap();
        let views: Vec<_> = first.iter().map(|a| a.view()).collect();
        let yt = ndarray::stack(Axis(0), &views).unwrap();
        let scale = yp.iter().fold(0f32, |m, v| m.max(v.abs())).max(1e-12);
        let diff = yt.iter().zip(yp.iter()).fold(0f32, |m, (a, b)| m.max((a - b).abs()));
        println!("features vs the Python loop: max |Δ| = {diff:.3e} ({:.2e} relative to max |y|)", diff / scale);
    }
}

//! int8 backbones next to fp32 in one run (`make bench-int8`, in `make bench`): for each
//! backbone fetched (VGG16 at 150, ResNet-50 and EfficientNet-Lite0 at 224), `tlearn-backbone
//! quantize` calibrated on 200 ELPV training cells, then every ELPV cell extracted with the fp32
//! and the int8 model (extraction img/s from tlearn-extract itself, fresh caches), then the same
//! heads (`tlearn-compare --heads logistic,dense --pool avg`, seed fixed) trained on each set of
//! features: test accuracy side by side. `TLEARN_BENCH_INT8` overrides the list
//! (`name:size,…`), `TLEARN_BENCH_INT8_METHOD` the calibration method (default minmax),
//! `TLEARN_BENCH_INT8_ARGS` adds quantize options (e.g. `--float-last 1`).

#[path = "common/cpu.rs"]
mod cpu;

use std::path::{Path, PathBuf};
use std::process::Command;

fn run(bin: &str, args: &[&str]) -> String {
    let exe = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/release").join(bin);
    let o = Command::new(&exe).args(args).env("RUST_LOG", "warn,ort=error").output().expect("run a tlearn binary");
    let (out, err) = (String::from_utf8_lossy(&o.stdout).into_owned(), String::from_utf8_lossy(&o.stderr));
    assert!(o.status.success(), "{bin} {args:?} failed:\n{out}\n{err}");
    out
}

/// Extract every split with `backbone` into a fresh folder; returns (folder, img/s).
fn extract(backbone: &str, size: &str, root: &Path) -> (String, f64) {
    let out = root.join(format!("{backbone}-{size}"));
    let _ = std::fs::remove_dir_all(&out);
    let out = out.to_string_lossy().into_owned();
    let text = run(
        "tlearn-extract",
        &["--data", "data/elpv", "--backbone", backbone, "--size", size, "--out", &out, "--device", "cpu"],
    );
    let ips =
        text.rsplit('(').next().and_then(|t| t.split_whitespace().next()).and_then(|v| v.parse().ok()).expect("img/s");
    (out, ips)
}

/// Test accuracy per (feature folder's backbone, head) from tlearn-compare's table.
fn accuracies(table: &Path) -> Vec<(String, String, f64)> {
    let mut r = csv::Reader::from_path(table).expect("table.csv");
    r.records()
        .map(|rec| {
            let rec = rec.unwrap();
            (rec[0].to_string(), rec[2].to_string(), rec[3].parse().unwrap())
        })
        .collect()
}

fn main() {
    println!("{}", cpu::describe());
    std::env::set_current_dir(env!("CARGO_MANIFEST_DIR")).unwrap();
    if !Path::new("data/elpv/manifest.csv").exists() {
        println!("int8: skipped (needs ELPV: make data)");
        return;
    }
    let list = std::env::var("TLEARN_BENCH_INT8")
        .unwrap_or_else(|_| "vgg16:150,resnet50-thin:224,efficientnet-lite0:224".into());
    let method = std::env::var("TLEARN_BENCH_INT8_METHOD").unwrap_or_else(|_| "minmax".into());
    let extra = std::env::var("TLEARN_BENCH_INT8_ARGS").unwrap_or_default();
    let extra: Vec<&str> = extra.split_whitespace().collect();
    let label = if extra.is_empty() { String::new() } else { format!(", {}", extra.join(" ")) };
    let root = PathBuf::from("target/bench-int8");
    println!("| backbone | size | precision | extract img/s | × fp32 | features vs fp32 (corr.) | logistic acc | dense acc |");
    println!("|---|---|---|---|---|---|---|---|");
    for item in list.split(',') {
        let (name, size) = item.split_once(':').expect("name:size");
        if !Path::new(&format!("onnx/{name}.onnx")).exists() {
            println!("| {name} | {size} | skipped: run `make backbone BACKBONE={name}` | | | | | |");
            continue;
        }
        let args = ["quantize", name, "--calibrate", "data/elpv", "--images", "200", "--size", size, "--method"];
        let args = [&args[..], &[&method, "--device", "cpu"], &extra[..]].concat();
        let q = run("tlearn-backbone", &args);
        let corr = q.split("correlation ").nth(1).and_then(|t| t.split(',').next()).unwrap_or("?").to_string();
        let int8 = format!("{name}-int8");
        let (fp_dir, fp_ips) = extract(name, size, &root);
        let (q_dir, q_ips) = extract(&int8, size, &root);
        let out = root.join(format!("compare-{name}"));
        let (out_s, runs_s) =
            (out.to_string_lossy().into_owned(), root.join(format!("runs-{name}")).to_string_lossy().into_owned());
        run(
            "tlearn-compare",
            &[
                &fp_dir,
                &q_dir,
                "--heads",
                "logistic,dense",
                "--pool",
                "avg",
                "--out",
                &out_s,
                "--runs",
                &runs_s,
                "--device",
                "cpu",
            ],
        );
        let acc = accuracies(&out.join("table.csv"));
        let get = |b: &str, h: &str| {
            acc.iter().find(|(x, y, _)| x == b && y == h).map_or("?".into(), |(_, _, a)| format!("{a:.4}"))
        };
        println!(
            "| {name} | {size} | fp32 | {fp_ips:.1} | 1.0× | 1 | {} | {} |",
            get(name, "logistic"),
            get(name, "dense")
        );
        println!(
            "| {name} | {size} | int8 ({method}, 200 cells{label}) | {q_ips:.1} | {:.1}× | {corr} | {} | {} |",
            q_ips / fp_ips,
            get(&int8, "logistic"),
            get(&int8, "dense")
        );
    }
}

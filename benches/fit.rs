//! Time to accuracy on ELPV (`make bench-fit`): one `tlearn fit` of the seed-42 split in
//! `data/elpv` (`make data`) with `BENCH_FIT_ARGS` (default: `make finetune-best`'s recipe), from
//! nothing — its run folder started over, so the split's features are extracted again — to the
//! test report. Prints the CPU, the recipe, the wall clock, each fine-tune's epochs and sizes as
//! they ran, and the test numbers: whether ≥ 0.90 came, and within how long.
//!
//! `BENCH_FIT_RUN` names the run (default `bench-fit`; its folder under `runs/` and `reports/` is
//! replaced, as `tlearn fit --restart` replaces what a fit wrote). Needs the backbone fetched
//! once (`tlearn fit` fetches it on first use; that time is counted).

#[path = "common/cpu.rs"]
mod cpu;

use std::path::Path;
use std::process::Command;

/// The goal the issue this bench answers sets: test accuracy on ELPV's seed-42 split.
const GOAL: f64 = 0.90;

fn json(p: &Path) -> Option<serde_json::Value> {
    serde_json::from_str(&std::fs::read_to_string(p).ok()?).ok()
}

/// "2 at 224 + 3 at 300 (45 s + 600 s)" for a fine-tune run folder, or None when it did not run.
fn epochs_of(run: &Path, size: u64) -> Option<String> {
    let r = json(&run.join("run.json"))?;
    let n = r["epochs_run"].as_u64()?;
    let secs = r["train_seconds"].as_f64()?;
    let main = format!("{n} at {size}");
    Some(match (r["config"]["progressive"].as_object(), r["presize_seconds"].as_f64()) {
        (Some(p), Some(early)) => format!(
            "{} at {} + {main} ({early:.0} s + {:.0} s)",
            p["epochs"].as_u64()?,
            p["size"].as_u64()?,
            secs - early
        ),
        _ => format!("{main} ({secs:.0} s)"),
    })
}

fn main() {
    println!("{}", cpu::describe());
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    assert!(root.join("data/elpv/train").is_dir(), "no data/elpv: run `make data` first");
    let args = std::env::var("BENCH_FIT_ARGS").unwrap_or_else(|_| "--size 300 --flips --epochs 12".into());
    let name = std::env::var("BENCH_FIT_RUN").unwrap_or_else(|_| "bench-fit".into());
    let mut cmd = vec!["data/elpv", "--run", &name, "--restart", "--explain", "0", "--device", "cpu"];
    cmd.extend(args.split_whitespace());
    println!("recipe: tlearn fit {}", cmd.join(" "));
    let t = std::time::Instant::now();
    let out = Command::new(env!("CARGO_BIN_EXE_tlearn-fit"))
        .args(&cmd)
        .current_dir(root)
        .env("RUST_LOG", "warn,ort=error")
        .output()
        .expect("tlearn-fit runs");
    let wall = t.elapsed().as_secs_f64();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "tlearn fit failed:\n{text}");
    let dir = root.join("runs").join(&name);
    let fit = json(&dir.join("run.json")).expect("the fit's record");
    let size = fit["settings"]["size"].as_u64().unwrap_or(0);
    for (what, run) in [("validated fine-tune", "tune"), ("final fit", "final")] {
        if let Some(e) = epochs_of(&dir.join(run), size) {
            println!("{what}: {e}");
        }
    }
    // What a recipe is chosen on: the validated fine-tune's best epoch, never the test split.
    if let Some(b) = json(&dir.join("tune/run.json")).map(|t| t["best_epoch"].clone()).filter(|b| !b.is_null()) {
        println!(
            "validation (choose recipes on this): best epoch {} of the validated fine-tune, val_loss {:.4}, \
             val_accuracy {:.4}",
            b["epoch"],
            b["val_loss"].as_f64().unwrap_or(f64::NAN),
            b["val_accuracy"].as_f64().unwrap_or(f64::NAN)
        );
    }
    if let Some(n) = fit["settings"]["final_epochs"].as_u64() {
        println!("no validated fine-tune: --final-epochs {n}, a length chosen before this fit (no validation numbers)");
    }
    if let Some(plan) = fit.get("plan").filter(|p| !p.is_null()) {
        println!("plan: {plan}");
    }
    let m = json(&root.join("reports").join(&name).join("metrics.json")).expect("the test report");
    let acc = m["accuracy"].as_f64().unwrap_or(f64::NAN);
    let f1 = m["macro_f1"].as_f64().unwrap_or(f64::NAN);
    println!(
        "wall clock {:.0} s ({:.1} min); test accuracy {acc:.4} (macro-F1 {f1:.4}) on {} images: {} {GOAL:.2}",
        wall,
        wall / 60.0,
        m["n_test"],
        if acc >= GOAL { "reaches" } else { "short of" }
    );
}

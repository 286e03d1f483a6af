//! tlearn-setup: put the pinned ONNX Runtime library into the per-user folder, so tlearn runs
//! from any folder (what `make setup` does for a clone's `.ort/`).

use anyhow::{Context, Result};
use clap::Parser;
use std::path::PathBuf;

#[derive(Parser)]
#[command(
    version,
    about = "Put libonnxruntime 1.31.1 (the pinned PyPI wheel, sha256 checked) into $TLEARN_HOME/ort/ \
             (default ~/.local/share/tlearn/ort/), where every tlearn command finds it from any folder"
)]
struct Args {
    /// A downloaded onnxruntime 1.31.1 wheel to take the library from (checked against the same
    /// sha256) instead of fetching it from PyPI.
    #[arg(long)]
    wheel: Option<PathBuf>,
    /// The per-user folder (default: $TLEARN_HOME, else $XDG_DATA_HOME/tlearn, else
    /// ~/.local/share/tlearn). Another folder needs TLEARN_HOME set to it when tlearn runs.
    #[arg(long)]
    home: Option<PathBuf>,
}

fn main() -> std::process::ExitCode {
    tlearn::cli::main(|| run(Args::parse()))
}

fn run(a: Args) -> Result<()> {
    let home = a.home.or_else(tlearn::runtime::home).context(
        "no per-user folder: neither TLEARN_HOME, XDG_DATA_HOME nor HOME is set; give one with --home DIR \
         (and set TLEARN_HOME=DIR when running tlearn)",
    )?;
    let term = tlearn::cli::Terminal::default();
    let done = tlearn::setup::install(&home, a.wheel.as_deref(), &term)
        .with_context(|| format!("setting up onnxruntime {} in {}", tlearn::runtime::ORT_VERSION, home.display()))?;
    let what = if done.unchanged { "already in place" } else { "installed" };
    tlearn::outln!(
        "onnxruntime {} {what} → {} (from {})",
        tlearn::runtime::ORT_VERSION,
        done.library.display(),
        done.wheel.display()
    );
    if tlearn::runtime::user_library().as_ref() != Some(&done.library) {
        tlearn::outln!("tlearn looks there when TLEARN_HOME={} is set", home.display());
    }
    if let Some(p) = std::env::var_os("ORT_DYLIB_PATH") {
        tlearn::outln!(
            "note: ORT_DYLIB_PATH={} is set and comes first; unset it to use this library",
            p.to_string_lossy()
        );
    }
    Ok(())
}

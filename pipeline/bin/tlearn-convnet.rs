//! tlearn-convnet: write a built-in convnet (mnist, v1, v2) as ONNX and print its summary.

use anyhow::Result;
use clap::Parser;
use std::path::PathBuf;

#[derive(Parser)]
#[command(version, about = "Define a small convnet as ONNX (Keras initialisers, seeded) and print its summary")]
struct Args {
    /// mnist (28×28×1, 10 classes), v1 (150×150×3, binary), v2 (v1 + Dropout 0.5).
    name: String,
    /// Output file (default: onnx/<name>.onnx).
    #[arg(long)]
    out: Option<PathBuf>,
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Number of classes of the classifier (default: the net's: mnist 10, v1/v2 2).
    #[arg(long)]
    classes: Option<usize>,
}

fn main() -> std::process::ExitCode {
    tlearn::cli::main(|| run(Args::parse()))
}

fn run(a: Args) -> Result<()> {
    let mut spec = tlearn::convnet::spec(&a.name)?;
    if let Some(k) = a.classes {
        spec = spec.with_classes(k)?;
    }
    let m = tlearn::convnet::build(&spec, a.seed)?;
    let out = a.out.unwrap_or_else(|| tlearn::layout::net_path(&a.name));
    let bytes = tlearn::onnx::encode_model(&m);
    let target = tlearn::output::target(&out)?;
    if target.is_stdout() {
        tlearn::cli::send_report_to_stderr();
    }
    tlearn::fsutil::write_bytes_atomic(&out, &bytes)?;
    let rows = tlearn::onnx::summary::rows(&m, &out, spec.input[0] as u32)?;
    let params: usize = rows.iter().map(|r| r.params).sum();
    // A stream (`-`, a FIFO, a device) gets no sidecar beside it.
    (!target.is_stream())
        .then(|| {
            tlearn::fsutil::write_json(
                &tlearn::fsutil::sidecar_path(&out),
                &serde_json::json!({
                    "net": a.name,
                    "seed": a.seed,
                    "input": spec.input,
                    "params": params,
                    "onnx_sha256": tlearn::fsutil::sha256_bytes(&bytes),
                    "tlearn_version": env!("CARGO_PKG_VERSION"),
                }),
            )
        })
        .transpose()?;
    tlearn::out!("{}", tlearn::onnx::summary::render(&a.name, &rows, None));
    tlearn::outln!("→ {}", out.display());
    Ok(())
}

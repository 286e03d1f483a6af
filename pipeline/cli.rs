//! What every binary shares (and nothing else in the library uses): logging to stderr, the
//! terminal sink (progress bars, epoch lines), `main`'s error handling, shared argument groups.

use crate::history::Epoch;
use crate::params::{Checked, ParamGuard};
use crate::progress::{Meter, Sink};
use indicatif::{ProgressBar, ProgressStyle};

mod training;
pub use training::{AugmentArgs, FinetuneArgs, Lr, SweepArgs};

/// `println!` that ends quietly when stdout is closed (`tlearn-head … | head -2`): a broken pipe
/// ends the output, never the work (Rust's `println!` panics on it).
#[macro_export]
macro_rules! outln {
    ($($t:tt)*) => {{
        use std::io::Write as _;
        if $crate::cli::data_on_stdout() {
            let _ = writeln!(std::io::stderr(), $($t)*);
        } else {
            let _ = writeln!(std::io::stdout(), $($t)*);
        }
    }};
}

/// `print!` that ends quietly when stdout is closed (see [`outln!`]).
#[macro_export]
macro_rules! out {
    ($($t:tt)*) => {{
        use std::io::Write as _;
        if $crate::cli::data_on_stdout() {
            let _ = write!(std::io::stderr(), $($t)*);
        } else {
            let _ = write!(std::io::stdout(), $($t)*);
        }
    }};
}

/// `eprintln!` that ends quietly when stderr is closed (see [`outln!`]).
#[macro_export]
macro_rules! errln {
    ($($t:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stderr(), $($t)*);
    }};
}

/// Logs go to stderr (`RUST_LOG` overrides the default `info`); results go to files/stdout.
pub fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,ort=warn"));
    let _ =
        tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_target(false).try_init();
}

/// A progress bar on stderr with a per-second rate; hidden when stderr is not a terminal.
fn progress(len: u64, unit: &str) -> ProgressBar {
    let pb = ProgressBar::new(len);
    let tmpl = format!("{{spinner}} {{msg}} [{{bar:30}}] {{pos}}/{{len}} {unit} ({{per_sec}}, eta {{eta}})");
    pb.set_style(
        ProgressStyle::with_template(&tmpl).unwrap_or_else(|_| ProgressStyle::default_bar()).progress_chars("=> "),
    );
    pb
}

/// The binaries' [`Sink`]: progress bars on stderr (hidden when stderr is not a terminal), epoch
/// lines on stdout, notes on stderr; a line is printed above the bar in progress, not through it.
#[derive(Default)]
pub struct Terminal {
    bar: std::sync::Mutex<Option<ProgressBar>>,
}

struct Bar<'a> {
    pb: ProgressBar,
    term: &'a Terminal,
}

impl Meter for Bar<'_> {
    fn inc(&self, n: u64) {
        self.pb.inc(n);
    }
    fn set_message(&self, message: String) {
        self.pb.set_message(message);
    }
}

impl Drop for Bar<'_> {
    fn drop(&mut self) {
        self.pb.finish_and_clear();
        *self.term.bar.lock().unwrap_or_else(|e| e.into_inner()) = None;
    }
}

impl Terminal {
    fn above(&self, print: impl FnOnce()) {
        let bar = self.bar.lock().unwrap_or_else(|e| e.into_inner()).clone();
        match bar {
            Some(pb) => pb.suspend(print),
            None => print(),
        }
    }
}

impl Sink for Terminal {
    fn meter(&self, len: u64, unit: &str, message: &str) -> Box<dyn Meter + '_> {
        let pb = progress(len, unit);
        pb.set_message(message.to_string());
        *self.bar.lock().unwrap_or_else(|e| e.into_inner()) = Some(pb.clone());
        Box::new(Bar { pb, term: self })
    }
    fn epoch(&self, e: &Epoch, epochs: usize) {
        self.above(|| crate::outln!("{}", e.line(epochs)));
    }
    fn note(&self, text: &str) {
        self.above(|| crate::errln!("{text}"));
    }
}

/// The whole of every binary's `main`: logging, run, `error: …` with its causes and exit 1.
static DATA_ON_STDOUT: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// The command's data (scores to `--out -`) goes to standard output: from now on, what
/// [`outln!`] and [`out!`] report goes to standard error, so the data stays clean.
pub fn send_report_to_stderr() {
    DATA_ON_STDOUT.store(true, std::sync::atomic::Ordering::Relaxed);
}

/// See [`send_report_to_stderr`].
pub fn data_on_stdout() -> bool {
    DATA_ON_STDOUT.load(std::sync::atomic::Ordering::Relaxed)
}

pub fn main(run: impl FnOnce() -> anyhow::Result<()>) -> std::process::ExitCode {
    init_logging();
    match run() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            crate::errln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// The onnxruntime options every ORT stage takes.
#[derive(clap::Args, Clone, Debug)]
pub struct OrtArgs {
    /// auto: CUDA when the CUDA execution provider loads, else CPU.
    #[arg(long, value_enum, default_value = "auto")]
    pub device: crate::runtime::Device,
    /// Intra-op threads (0 = all cores).
    #[arg(long, default_value_t = 0)]
    pub threads: usize,
    /// What `--device openvino` computes in, and the training stages' steps: auto is bf16 on CPUs
    /// with AMX (training: where `make setup-openvino` was run), else f32; training in bf16 runs
    /// each step's forward and backward on OpenVINO's CPU plugin and its update in f32. Feature
    /// caches, fine-tunes and fits record it. int8 is a backbone of its own: `tlearn-backbone
    /// quantize`.
    #[arg(long, value_enum, default_value = "auto")]
    pub precision: crate::runtime::PrecisionChoice,
}

impl OrtArgs {
    /// The options of an inference stage (`--precision` applies to OpenVINO only).
    pub fn session(&self) -> crate::runtime::SessionOptions {
        if self.precision != crate::runtime::PrecisionChoice::Auto && self.device != crate::runtime::Device::Openvino {
            tracing::warn!(
                "--precision applies to --device openvino only; the {:?} device computes in f32",
                self.device
            );
        }
        self.training()
    }

    /// The options of a training stage, where `--precision` also chooses where steps run
    /// ([`SessionOptions::training_precision`](crate::runtime::SessionOptions::training_precision)).
    pub fn training(&self) -> crate::runtime::SessionOptions {
        crate::runtime::SessionOptions {
            device: self.device,
            threads: self.threads,
            precision: self.precision.chosen(),
        }
    }
}

/// `--optimizer` of the training stages (each stage keeps its own `--lr` default).
#[derive(clap::ValueEnum, Clone, Copy, Debug)]
pub enum OptimizerKind {
    Rmsprop,
    Adam,
    Sgd,
}

impl OptimizerKind {
    /// The optimizer with Keras defaults for everything but `lr` (and SGD's `momentum`).
    pub fn build(self, lr: f64, momentum: f64) -> crate::train::optim::Optimizer {
        use crate::train::optim::Optimizer;
        match self {
            OptimizerKind::Rmsprop => Optimizer::rmsprop(lr),
            OptimizerKind::Adam => Optimizer::adam(lr),
            OptimizerKind::Sgd => Optimizer::sgd(lr, momentum),
        }
    }
}

#[derive(clap::ValueEnum, Clone, Copy, Debug)]
pub enum ScheduleKind {
    Constant,
    Step,
    Cosine,
}

/// Learning-rate schedule options shared by the training stages.
#[derive(clap::Args, Clone, Debug)]
pub struct ScheduleArgs {
    /// constant; step (× --step-factor every --step-every epochs); cosine (per step down to
    /// --cosine-alpha × lr, Keras CosineDecay).
    #[arg(long, value_enum, default_value = "constant")]
    pub schedule: ScheduleKind,
    #[arg(long, default_value_t = 10)]
    pub step_every: usize,
    #[arg(long, default_value_t = 0.1)]
    pub step_factor: f64,
    #[arg(long, default_value_t = 0.0)]
    pub cosine_alpha: f64,
    /// Raise the rate linearly from ~0 over this many epochs first (by step); the schedule then
    /// runs over the remaining steps (Keras CosineDecay's warmup_steps).
    #[arg(long, default_value_t = 0)]
    pub warmup_epochs: usize,
}

/// Regularisation and class balance of a training loop (the dense head's and tlearn-finetune's).
#[derive(clap::Args, Clone, Debug)]
pub struct RegArgs {
    /// Decoupled weight decay (Keras 3's `weight_decay`; with --optimizer adam this is AdamW),
    /// on weights of rank ≥ 2 (not biases or BatchNorm's γ/β).
    #[arg(long, default_value_t = 0.0)]
    pub weight_decay: f64,
    /// Label smoothing ε (Keras): training targets y(1−ε) + ε/K.
    #[arg(long, default_value_t = 0.0)]
    pub label_smoothing: f64,
    /// Weight each training sample's loss by its class (Keras' class_weight): `balanced`
    /// (n / (K·n_c)) or one weight per class, comma-separated, in class order.
    #[arg(long, value_parser = class_weight)]
    pub class_weight: Option<crate::train::ClassWeight>,
    /// Which samples each epoch draws: `shuffle` (each once) or `balanced` (an equal share per
    /// class, a rare class's samples repeated; seeded like the shuffle).
    #[arg(long, value_enum, default_value = "shuffle")]
    pub sampling: crate::train::Sampling,
}

fn class_weight(s: &str) -> Result<crate::train::ClassWeight, String> {
    if s == "balanced" {
        return Ok(crate::train::ClassWeight::Balanced);
    }
    let w: Result<Vec<f64>, _> = s.split(',').map(|v| v.trim().parse::<f64>()).collect();
    w.map(crate::train::ClassWeight::Given)
        .map_err(|_| format!("`{s}`: give `balanced` or comma-separated numbers, one per class"))
}

/// The checked loop settings from the shared options.
pub fn fit_config(
    (epochs, batch, seed): (usize, usize, u64),
    optimizer: crate::train::optim::Optimizer,
    schedule: &ScheduleArgs,
    reg: &RegArgs,
) -> crate::Result<Checked<crate::train::FitConfig>> {
    crate::train::FitConfig {
        epochs,
        batch,
        seed,
        optimizer,
        schedule: schedule.schedule(),
        warmup_epochs: schedule.warmup_epochs,
        weight_decay: reg.weight_decay,
        label_smoothing: reg.label_smoothing,
        class_weight: reg.class_weight.clone(),
        sampling: reg.sampling,
    }
    .check()
}

impl ScheduleArgs {
    pub fn schedule(&self) -> crate::train::optim::Schedule {
        use crate::train::optim::Schedule;
        match self.schedule {
            ScheduleKind::Constant => Schedule::Constant,
            ScheduleKind::Step => Schedule::Step { every: self.step_every, factor: self.step_factor },
            ScheduleKind::Cosine => Schedule::Cosine { alpha: self.cosine_alpha },
        }
    }
}

/// The shape of a head: layers, units, dropout, pooling, standardisation (shared by the binaries
/// that build one: `tlearn-head`, `tlearn-compare`, `tlearn-lr-find`).
#[derive(clap::Args, Clone, Debug)]
pub struct HeadShapeArgs {
    #[arg(long, default_value_t = 256)]
    pub units: usize,
    /// Hidden dense layers.
    #[arg(long, default_value_t = 1)]
    pub layers: usize,
    #[arg(long, default_value_t = 0.5)]
    pub dropout: f32,
    #[arg(long, value_enum, default_value = "flatten")]
    pub pool: crate::heads::Pool,
    /// Standardise features with the training set's mean and std (frozen, inside the head).
    /// Default: on for logistic, svm, rbf and knn; off for dense and forest.
    #[arg(long, num_args = 0..=1, default_missing_value = "true")]
    pub standardize: Option<bool>,
    /// `ordinal`: the classes are ordered (sorted by folder name: grades, levels): the dense head
    /// ends in one score and K−1 ordered thresholds (a cumulative-link model), K probabilities out.
    #[arg(long, value_enum, default_value = "classes")]
    pub target: crate::heads::Target,
}

impl HeadShapeArgs {
    /// The head spec for `kind` (standardisation: as asked, else the kind's default).
    pub fn spec(&self, kind: crate::heads::HeadKind) -> crate::heads::HeadSpec {
        crate::heads::HeadSpec {
            units: self.units,
            layers: self.layers,
            dropout: self.dropout,
            pool: self.pool,
            standardize: self.standardize.unwrap_or(kind.standardizes_by_default()),
            target: self.target,
        }
    }
}

/// Head hyper-parameters and the dense head's training loop, shared by `tlearn-head` and
/// `tlearn-compare` (defaults: the classic head; scikit-learn's for the classical ones).
#[derive(clap::Args, Clone, Debug)]
pub struct HeadArgs {
    #[command(flatten)]
    pub shape: HeadShapeArgs,
    /// Classical heads: keep this many principal components (after standardisation).
    #[arg(long)]
    pub pca: Option<usize>,
    /// svm/rbf: C; logistic: L2 penalty 1/C.
    #[arg(long, default_value_t = 1.0)]
    pub c: f64,
    /// rbf: γ (default 1 / (features · variance), scikit-learn's "scale").
    #[arg(long)]
    pub gamma: Option<f64>,
    /// forest: number of trees.
    #[arg(long, default_value_t = 100)]
    pub trees: usize,
    /// forest: maximum tree depth (default: unlimited).
    #[arg(long)]
    pub max_depth: Option<u16>,
    /// knn: neighbours.
    #[arg(long, default_value_t = 5)]
    pub k: usize,
    /// logistic: L-BFGS iterations.
    #[arg(long, default_value_t = 100)]
    pub max_iterations: u64,
    #[arg(long, value_enum, default_value = "rmsprop")]
    pub optimizer: OptimizerKind,
    /// The dense head's learning rate, or `auto`: the learning-rate range test (as
    /// tlearn-lr-find runs it) chooses, tlearn-head only.
    #[arg(long, default_value_t = Lr::Given(crate::heads::DEFAULT_LR))]
    pub lr: Lr,
    /// SGD momentum.
    #[arg(long, default_value_t = 0.0)]
    pub momentum: f64,
    #[arg(long, default_value_t = 30)]
    pub epochs: usize,
    #[arg(long, default_value_t = 20)]
    pub batch: usize,
    /// Seeds the dense head's initialisation, shuffles and dropout, and the forest's bootstraps.
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    #[command(flatten)]
    pub lr_schedule: ScheduleArgs,
    #[command(flatten)]
    pub reg: RegArgs,
}

impl HeadArgs {
    /// The head spec for `kind` (standardisation: as asked, else the kind's default).
    pub fn spec(&self, kind: crate::heads::HeadKind) -> crate::heads::HeadSpec {
        self.shape.spec(kind)
    }

    pub fn classical(&self) -> crate::Result<Checked<crate::heads::ClassicalSpec>> {
        crate::heads::ClassicalSpec {
            pca: self.pca,
            c: self.c,
            gamma: self.gamma,
            trees: self.trees,
            max_depth: self.max_depth,
            k: self.k,
            max_iterations: self.max_iterations,
        }
        .check()
    }

    /// The loop settings; `--lr auto` is refused (the binaries that sweep use
    /// [`HeadArgs::fit_to_sweep`]).
    pub fn fit(&self) -> crate::Result<Checked<crate::train::FitConfig>> {
        if self.lr == Lr::Auto {
            return Err(crate::Error::Param {
                name: "lr",
                value: "auto".into(),
                reason: "give a number here; tlearn-head --lr auto and tlearn-lr-find find one".into(),
            });
        }
        self.fit_to_sweep()
    }

    /// The loop settings, at the default rate where the rate is `auto` (the sweep replaces it).
    pub fn fit_to_sweep(&self) -> crate::Result<Checked<crate::train::FitConfig>> {
        let optimizer = self.optimizer.build(self.lr.or(crate::heads::DEFAULT_LR), self.momentum);
        fit_config((self.epochs, self.batch, self.seed), optimizer, &self.lr_schedule, &self.reg)
    }
}

/// clap value parser for run names (see [`crate::fsutil::check_name`]).
pub fn run_name(s: &str) -> Result<String, String> {
    crate::fsutil::check_name("run", s).map(|_| s.to_string()).map_err(|e| e.to_string())
}

/// A run given by name (a folder under `runs`) or as a path to its folder (it holds a `/`).
pub fn run_dir(runs: &std::path::Path, given: &str) -> std::path::PathBuf {
    if given.contains('/') {
        std::path::PathBuf::from(given)
    } else {
        runs.join(given)
    }
}

/// clap value parser for sizes in bytes: a number with an optional K, M, G or T (powers of 1024;
/// a trailing B or iB is accepted), e.g. `512M`, `1.5G`, `4096`.
pub fn byte_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let lower = t.to_ascii_lowercase();
    let unit_len = if lower.ends_with("ib") { 2 } else { lower.ends_with('b') as usize };
    let t = &t[..t.len() - unit_len];
    let (num, shift) = match t.char_indices().last() {
        Some((i, c)) if c.is_ascii_alphabetic() => {
            let shift = match c.to_ascii_uppercase() {
                'K' => 10,
                'M' => 20,
                'G' => 30,
                'T' => 40,
                _ => return Err(format!("`{s}`: unknown unit `{c}` (give K, M, G or T)")),
            };
            (&t[..i], shift)
        }
        _ => (t, 0),
    };
    match num.trim().parse::<f64>() {
        Ok(v) if v >= 0.0 && v.is_finite() && v * 2f64.powi(shift) < u64::MAX as f64 => {
            Ok((v * 2f64.powi(shift)).round() as u64)
        }
        _ => Err(format!("`{s}`: give a size in bytes, e.g. 512M or 2G")),
    }
}

/// clap value parser for durations: a number with s, m or h, or several (`20m`, `1h30m`, `90s`;
/// a bare number is minutes); returns seconds.
pub fn duration(s: &str) -> Result<f64, String> {
    let bad = || format!("`{s}`: give a duration such as 20m, 1h30m or 90s");
    let t = s.trim();
    if let Ok(minutes) = t.parse::<f64>() {
        return (minutes > 0.0 && minutes.is_finite()).then_some(minutes * 60.0).ok_or_else(bad);
    }
    let (mut total, mut num) = (0.0, String::new());
    for c in t.chars() {
        let unit = match c {
            'h' => 3600.0,
            'm' => 60.0,
            's' => 1.0,
            c if c.is_ascii_digit() || c == '.' => {
                num.push(c);
                continue;
            }
            _ => return Err(bad()),
        };
        total += num.parse::<f64>().map_err(|_| bad())? * unit;
        num.clear();
    }
    (num.is_empty() && total > 0.0 && total.is_finite()).then_some(total).ok_or_else(bad)
}

/// Command-line values for the library's choices: each [`Choice`]'s names and help, as clap
/// offers and parses them (the library itself knows no argument parser).
macro_rules! choice_values {
    ($($t:ty),* $(,)?) => {$(
        impl clap::ValueEnum for $t {
            fn value_variants<'a>() -> &'a [Self] {
                static VALUES: std::sync::LazyLock<Vec<$t>> =
                    std::sync::LazyLock::new(|| <$t as Choice>::ALL.iter().map(|c| c.0).collect());
                &VALUES
            }
            fn to_possible_value(&self) -> Option<clap::builder::PossibleValue> {
                let (_, name, help) = <$t as Choice>::ALL.iter().find(|c| c.0 == *self)?;
                let value = clap::builder::PossibleValue::new(*name);
                Some(if help.is_empty() { value } else { value.help(*help) })
            }
        }
    )*};
}

use crate::params::Choice;
choice_values!(
    crate::runtime::Device,
    crate::runtime::Precision,
    crate::runtime::PrecisionChoice,
    crate::heads::HeadKind,
    crate::heads::Pool,
    crate::onnx::qdq::WeightRange,
    crate::onnx::cut::Layout,
    crate::onnx::cut::GlobalPool,
    crate::augment::FillMode,
    crate::imageio::Interpolation,
    crate::imageio::View,
    crate::imageio::PreprocessKind,
    crate::dataset::LinkMode,
    crate::score::Format,
    crate::score::PredictionFormat,
    crate::calibrate::Method,
    crate::runs::Balance,
    crate::train::Sampling,
    crate::heads::Target,
);

#[cfg(test)]
mod tests {
    #[test]
    fn durations_read_as_seconds() {
        assert_eq!(super::duration("20m"), Ok(1200.0));
        assert_eq!(super::duration("1h30m"), Ok(5400.0));
        assert_eq!(super::duration("90s"), Ok(90.0));
        assert_eq!(super::duration("15"), Ok(900.0));
        for bad in ["", "0", "m", "20x", "1h30", "-5m"] {
            assert!(super::duration(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn durations_written_by_a_plan_read_back_as_budgets() {
        for (s, text) in [(0.1, "0.1s"), (5.0, "5s"), (44.2, "45s"), (400.0, "6m40s"), (1200.0, "20m")] {
            assert_eq!(crate::runs::fit::minutes(s), text);
            assert!(super::duration(text).unwrap() >= s);
        }
    }
}

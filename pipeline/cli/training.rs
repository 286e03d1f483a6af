//! Argument groups of the training binaries beyond `cli.rs`'s shared loop options: the learning
//! rate as a number or `auto`, the range test's sweep, Keras-style augmentation, and what a
//! fine-tune trains on (shared by `tlearn-finetune` and `tlearn-lr-find`).

use crate::augment::{Augment, FillMode};
use crate::finetune::FinetuneConfig;
use crate::imageio::Interpolation;
use crate::params::{Checked, ParamGuard};
use crate::train::lr_find::Sweep;
use std::path::{Path, PathBuf};

/// `--lr`: a rate, or `auto` (the learning-rate range test chooses it).
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Lr {
    Auto,
    Given(f64),
}

impl std::str::FromStr for Lr {
    type Err = String;
    fn from_str(s: &str) -> Result<Lr, String> {
        if s.eq_ignore_ascii_case("auto") {
            return Ok(Lr::Auto);
        }
        match s.trim().parse::<f64>() {
            Ok(v) if v > 0.0 && v.is_finite() => Ok(Lr::Given(v)),
            _ => Err(format!("`{s}`: give a positive number (e.g. 1e-4) or `auto` (the range test chooses)")),
        }
    }
}

impl std::fmt::Display for Lr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Lr::Auto => write!(f, "auto"),
            Lr::Given(v) => write!(f, "{v}"),
        }
    }
}

impl Lr {
    /// The rate to build the loop with: the given one, or `sweeping` (any valid rate; `auto`
    /// replaces it with the sweep's choice before training).
    pub fn or(self, sweeping: f64) -> f64 {
        match self {
            Lr::Auto => sweeping,
            Lr::Given(v) => v,
        }
    }
}

/// The learning-rate range test's rates (fastai's defaults).
#[derive(clap::Args, Clone, Debug)]
pub struct SweepArgs {
    /// The sweep's first learning rate.
    #[arg(long, default_value_t = 1e-7)]
    pub start_lr: f64,
    /// The rate the sweep grows towards (exponentially; it stops earlier once the smoothed loss
    /// passes 4× its minimum).
    #[arg(long, default_value_t = 10.0)]
    pub end_lr: f64,
    /// Steps (batches) of the sweep.
    #[arg(long, default_value_t = 100)]
    pub steps: usize,
}

impl SweepArgs {
    pub fn sweep(&self) -> crate::Result<Checked<Sweep>> {
        Sweep { start: self.start_lr, end: self.end_lr, steps: self.steps }.check()
    }
}

/// Keras `ImageDataGenerator`-style augmentation of the training images.
#[derive(clap::Args, Clone, Debug)]
pub struct AugmentArgs {
    /// The classic augmentation preset: rotation 40, shifts 0.2, shear 0.2, zoom 0.2, horizontal flip.
    #[arg(long)]
    pub augment: bool,
    #[arg(long)]
    pub rotation_range: Option<f32>,
    #[arg(long)]
    pub width_shift_range: Option<f32>,
    #[arg(long)]
    pub height_shift_range: Option<f32>,
    #[arg(long)]
    pub shear_range: Option<f32>,
    #[arg(long)]
    pub zoom_range: Option<f32>,
    #[arg(long)]
    pub horizontal_flip: bool,
    #[arg(long)]
    pub vertical_flip: bool,
    /// A random quarter turn after the flips (square inputs): with both flips, all eight
    /// symmetries of the square — for images whose label does not depend on orientation.
    #[arg(long)]
    pub rot90: bool,
    /// Brightness factor range LO,HI (Keras' brightness_range), e.g. 0.8,1.2.
    #[arg(long, value_parser = range_pair)]
    pub brightness_range: Option<(f32, f32)>,
    /// Contrast factor U(1 − C, 1 + C) about each image's mean (0 ≤ C < 1).
    #[arg(long, value_parser = contrast)]
    pub contrast_range: Option<f32>,
    #[arg(long, value_enum, default_value = "nearest")]
    pub fill_mode: FillMode,
    #[arg(long, default_value_t = 0.0)]
    pub cval: f32,
}

impl AugmentArgs {
    /// The augmentation asked for; None when it would change nothing.
    pub fn augmentation(&self) -> Option<Augment> {
        let mut g = if self.augment { Augment::classic() } else { Augment::default() };
        let set = |v: Option<f32>, f: &mut f32| {
            if let Some(v) = v {
                *f = v;
            }
        };
        set(self.rotation_range, &mut g.rotation_range);
        set(self.width_shift_range, &mut g.width_shift_range);
        set(self.height_shift_range, &mut g.height_shift_range);
        set(self.shear_range, &mut g.shear_range);
        set(self.zoom_range, &mut g.zoom_range);
        g.horizontal_flip |= self.horizontal_flip;
        g.vertical_flip |= self.vertical_flip;
        g.rot90 |= self.rot90;
        g.brightness_range = self.brightness_range.or(g.brightness_range);
        set(self.contrast_range, &mut g.contrast_range);
        g.fill_mode = self.fill_mode;
        g.cval = self.cval;
        (!g.is_identity()).then_some(g)
    }
}

fn range_pair(s: &str) -> Result<(f32, f32), String> {
    let v: Vec<f32> =
        s.split(',').map(|x| x.trim().parse::<f32>()).collect::<Result<_, _>>().map_err(|e| e.to_string())?;
    match v[..] {
        [lo, hi] if 0.0 < lo && lo <= hi && hi.is_finite() => Ok((lo, hi)),
        _ => Err(format!("`{s}`: give LO,HI with 0 < LO ≤ HI")),
    }
}

fn contrast(s: &str) -> Result<f32, String> {
    match s.parse::<f32>() {
        Ok(v) if (0.0..1.0).contains(&v) => Ok(v),
        _ => Err(format!("`{s}`: give C with 0 ≤ C < 1 (factors 1 − C … 1 + C)")),
    }
}

/// What a fine-tune trains and on what: the parameters, the conv base's rate, the images and how
/// they are fed (shared by `tlearn-finetune` and `tlearn-lr-find`, so a sweep sees what the run
/// will).
#[derive(clap::Args, Clone, Debug)]
pub struct FinetuneArgs {
    /// Learning rate of the pretrained conv base (everything up to the last spatial features),
    /// when it should move slower than the head (--lr); e.g. --lr 1e-3 --lr-base 1e-4.
    #[arg(long)]
    pub lr_base: Option<f64>,
    /// Train only parameters matching these name patterns (`*` wildcards; else substring), e.g.
    /// `--trainable 'block5_*' --trainable dense`. Default: all.
    #[arg(long)]
    pub trainable: Vec<String>,
    /// Freeze the layers before the net reaches stride S (those whose maps are larger than 1/S of
    /// the image's side, e.g. 16): they keep their pretrained weights and have no backward pass,
    /// so a step costs much less (EfficientNet-Lite0 at 300: S = 16 freezes the 150, 75 and 38 px
    /// layers).
    #[arg(long, value_name = "S", value_parser = clap::value_parser!(u32).range(2..))]
    pub freeze_stride: Option<u32>,
    /// Train on train/ and validation/ together, with no validation pass (the last epoch is the
    /// model): the final fit, once runs with validation chose the recipe and --epochs.
    #[arg(long)]
    pub include_validation: bool,
    /// Run the frozen layers before the first trained one once per image and flipped view, and
    /// train the rest on their cached output (with --trainable; augmentation: flips only).
    #[arg(long)]
    pub cache_trunk: bool,
    /// Progressive resizing: the first EPOCHS epochs at SIZE×SIZE (below the model's own size;
    /// each step costs about the image's area), then --epochs at the model's own size, from
    /// where they left the weights (e.g. `--progressive 224:3` for a 300×300 model). The early
    /// epochs' history goes to the run's presize/ folder.
    #[arg(long, value_name = "SIZE:EPOCHS")]
    pub progressive: Option<crate::runs::finetune::Progressive>,
    /// Pixel scale (Keras' rescale). Default: 1/255, or 1 for a model that scales its input
    /// itself (a leading Mul/Div by a constant, e.g. a Keras Rescaling layer) or is a deployable
    /// tlearn model.
    #[arg(long)]
    pub rescale: Option<f32>,
    #[arg(long, value_enum, default_value = "nearest")]
    pub interpolation: Interpolation,
    /// Train a deployable model on data whose class names differ from those it records (the
    /// model's output k becomes the data's k-th class, sorted by name); without it such data is
    /// refused, both lists named.
    #[arg(long)]
    pub relabel: bool,
    #[command(flatten)]
    pub augment: AugmentArgs,
    /// Memory for the decoded training and validation images and a cached trunk's outputs
    /// (e.g. 2G, 512M; the test images get the same after training); what does not fit is read
    /// from a file in the run folder a batch at a time, with the same result. Default: a quarter
    /// of the memory the process may use (its cgroup's limit if lower), at most half the free.
    #[arg(long, value_parser = super::byte_size)]
    pub max_memory: Option<u64>,
}

impl FinetuneArgs {
    /// The fine-tune of `model` on `data` with the loop `fit`, into `run_dir`; no patience, no
    /// TTA, the stage's resume default (the caller sets what it has).
    pub fn config(
        &self,
        (model, data, run_dir): (&Path, &Path, PathBuf),
        fit: Checked<crate::train::FitConfig>,
        session: crate::runtime::SessionOptions,
    ) -> crate::Result<FinetuneConfig> {
        Ok(FinetuneConfig {
            model: model.into(),
            data: data.into(),
            run_dir,
            fit,
            trainable: self.trainable.clone(),
            freeze_stride: self.freeze_stride,
            lr_base: self.lr_base,
            lr_auto: None,
            relabel: self.relabel,
            patience: None,
            include_validation: self.include_validation,
            cache_trunk: self.cache_trunk,
            progressive: self.progressive,
            rescale: crate::finetune::rescale_for(self.rescale, model)?,
            interpolation: self.interpolation,
            augment: self.augment.augmentation(),
            tta: vec![],
            max_pixels: crate::imageio::DEFAULT_MAX_PIXELS,
            max_memory: self.max_memory,
            precision: session.training_precision()?,
            session,
            resume: crate::finetune::RESUME,
        })
    }
}

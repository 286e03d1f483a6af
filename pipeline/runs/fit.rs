//! A fit run (`tlearn fit`): one folder holding the phases that made a model — the split, the
//! cached features, the warm-start head, the validated fine-tune, the final fit — and the record
//! that says which of them is the model. Opening a fit run opens that phase's run, so every
//! stage that takes a run (evaluate, score, predict) takes a fit run too.

use crate::error::{Error, Result};
use crate::params::ParamGuard;
use crate::train::ClassWeight;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// Phase folders inside a fit run.
pub const SPLIT: &str = "data";
pub const FEATURES: &str = "features";
pub const HEAD_RUN: &str = "head";
pub const TUNE_RUN: &str = "tune";
pub const FINAL_RUN: &str = "final";
/// The settings a fit was started with (written first; a rerun must match them).
pub const SETTINGS: &str = "fit.json";
/// `--budget`'s plan, made once.
pub const PLAN: &str = "plan.json";

/// `tlearn fit`'s defaults (the command line's, and what [`FitSettings::recipe_args`] leaves out).
pub mod defaults {
    pub const BACKBONE: &str = "efficientnet-lite0";
    pub const EPOCHS: usize = 12;
    pub const PATIENCE: usize = 3;
    pub const BATCH: usize = 16;
    pub const LR: f64 = 1e-4;
    pub const TEST: f64 = 0.25;
    pub const VALIDATION: f64 = 0.2;
    pub const SEED: u64 = 42;
    pub const HEAD_EPOCHS: usize = 30;
}

/// When to weight the classes' losses.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Balance {
    /// `balanced` when the largest training class has over [`IMBALANCE`] times the smallest's images.
    Auto,
    /// Never.
    Off,
    /// Always `balanced`.
    On,
    /// Class-balanced sampling each epoch instead of weights (a rare class's images repeated).
    Sample,
}

impl crate::params::Choice for Balance {
    const ALL: &'static [(Self, &'static str, &'static str)] = &[
        (Balance::Auto, "auto", "balanced when the largest class has over 3× the images of the smallest"),
        (Balance::Off, "off", "every image weighs the same"),
        (Balance::On, "on", "each class's loss weighted by n / (K·n_c)"),
        (Balance::Sample, "sample", "each class an equal share of every epoch's draws, losses unweighted"),
    ];
}

/// The ratio of the largest training class to the smallest above which `Balance::Auto` weights.
pub const IMBALANCE: f64 = 3.0;

impl Balance {
    /// How the fit's epochs draw their images.
    pub fn sampling(self) -> crate::train::Sampling {
        match self {
            Balance::Sample => crate::train::Sampling::Balanced,
            _ => crate::train::Sampling::Shuffle,
        }
    }

    /// The class weights for training class counts `counts` (None: unweighted), and why.
    pub fn decide(self, counts: &[usize]) -> (Option<ClassWeight>, String) {
        let (lo, hi) = (counts.iter().copied().min().unwrap_or(0), counts.iter().copied().max().unwrap_or(0));
        let ratio = hi as f64 / lo.max(1) as f64;
        let why = format!("the largest class has {ratio:.1}× the images of the smallest ({hi} vs {lo})");
        match self {
            Balance::On => (Some(ClassWeight::Balanced), format!("class weights balanced (asked); {why}")),
            Balance::Off => (None, format!("classes unweighted (asked); {why}")),
            Balance::Sample => (None, format!("classes sampled equally each epoch (asked); {why}")),
            Balance::Auto if ratio > IMBALANCE => {
                (Some(ClassWeight::Balanced), format!("class weights balanced: {why}, over {IMBALANCE}×"))
            }
            Balance::Auto => (None, format!("classes unweighted: {why}, not over {IMBALANCE}×")),
        }
    }
}

/// What `tlearn fit` was asked to do, resolved (the backbone's size filled in).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FitSettings {
    /// The images: class folders, a Kaggle flat folder, or a split dataset.
    pub data: PathBuf,
    pub backbone: String,
    pub size: u32,
    /// The most epochs the validated fine-tune may run; validation loss chooses the length.
    pub epochs: usize,
    /// Stop the validated fine-tune after this many epochs without a better validation loss.
    pub patience: usize,
    pub batch: usize,
    pub lr: f64,
    /// `--lr auto`: the learning-rate range test chooses the fine-tune's rate (`lr` unused); the
    /// final fit trains at the rate it chose.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub lr_auto: bool,
    /// The images have no orientation: train with random flips and average the flipped views.
    pub flips: bool,
    pub balance: Balance,
    /// `ordinal`: the classes are ordered; the warm-start head (and so the fine-tuned net) ends
    /// in a cumulative-link output.
    #[serde(default, skip_serializing_if = "is_classes")]
    pub target: crate::heads::Target,
    /// Progressive resizing: each fine-tune's first epochs at a smaller size (see
    /// [`super::finetune::Progressive`]); `epochs` counts those at `size`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub progressive: Option<super::finetune::Progressive>,
    /// `--freeze-stride`: each fine-tune keeps the layers before the net reaches this stride
    /// frozen (see [`super::finetune::FinetuneConfig::freeze_stride`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub freeze_stride: Option<u32>,
    /// Retrain on train + validation for the length validation chose.
    pub final_fit: bool,
    /// `--final-epochs`: no validated fine-tune; the final fit on train + validation runs this
    /// many epochs, a length chosen before (by an earlier fit, or a k-fold run's best epochs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub final_epochs: Option<usize>,
    /// K-fold cross-validation instead of one split: K runs, each a fit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub folds: Option<usize>,
    /// The fraction held out for test and then for validation when the data is split here.
    pub test: f64,
    pub validation: f64,
    pub seed: u64,
    /// Epochs of the warm-start head on pooled features.
    pub head_epochs: usize,
    /// `--budget`: seconds the whole fit may take (each fold its share); the fine-tune's length
    /// is planned from a measured step to end within it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub budget: Option<f64>,
    /// What the fine-tunes' steps compute in (`--precision`, resolved where the fit started).
    #[serde(default, skip_serializing_if = "crate::runtime::Precision::is_f32")]
    pub precision: crate::runtime::Precision,
}

impl ParamGuard for FitSettings {
    fn check_ref(&self) -> Result<()> {
        let bad =
            |name: &'static str, value: String, reason: &str| Err(Error::Param { name, value, reason: reason.into() });
        if self.epochs == 0 {
            return bad("epochs", "0".into(), "give at least one epoch");
        }
        if self.batch == 0 {
            return bad("batch", "0".into(), "give a batch of at least one image");
        }
        if !(self.lr > 0.0 && self.lr.is_finite()) {
            return bad("lr", self.lr.to_string(), "the learning rate must be positive");
        }
        if self.folds.is_some_and(|k| k < 2) {
            return bad("folds", format!("{:?}", self.folds), "K-fold needs K ≥ 2");
        }
        if !(0.0..1.0).contains(&self.test) || !(0.0..1.0).contains(&self.validation) {
            return bad("test", format!("{}/{}", self.test, self.validation), "fractions must be in [0, 1)");
        }
        if let Some(b) = self.budget.filter(|b| !(*b > 0.0 && b.is_finite())) {
            return bad("budget", b.to_string(), "give a positive duration, e.g. 20m");
        }
        if self.validation == 0.0 {
            return bad("validation", "0".into(), "the fit chooses its length on validation images: give > 0");
        }
        match self.final_epochs {
            Some(0) => return bad("final-epochs", "0".into(), "give at least one epoch"),
            Some(n) if !self.final_fit => {
                return bad(
                    "final-epochs",
                    n.to_string(),
                    "is the final fit's length, and --no-final-fit asks for none: drop one of the two",
                )
            }
            _ => {}
        }
        if let Some(s) = self.freeze_stride.filter(|s| *s < 2) {
            return bad(
                "freeze-stride",
                s.to_string(),
                "a stride of at least 2 (e.g. 16) freezes the layers before it",
            );
        }
        if let Some(p) = self.progressive.filter(|p| p.size >= self.size) {
            return bad(
                "progressive",
                p.to_string(),
                &format!("the early epochs' size must be below the fit's --size {}", self.size),
            );
        }
        Ok(())
    }
}

fn is_classes(t: &crate::heads::Target) -> bool {
    *t == crate::heads::Target::Classes
}

/// A fit's length planned for its `--budget` (kept as `plan.json` in the fit's folder, so a
/// killed fit continues with the same plan).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Plan {
    /// The fine-tune's most epochs: the validated one's (the final fit runs at most as many),
    /// or with `--final-epochs` the final fit's.
    pub epochs: usize,
    /// The seconds planned for (the fit's budget, or a fold's share of it).
    pub budget_seconds: f64,
    /// Seconds spent before the plan (split, features, warm start, the measurement).
    pub spent_seconds: f64,
    /// The planned end, counted from the start, were every epoch run.
    pub eta_seconds: f64,
    /// A planned epoch's seconds: a validated one's (its steps, validation and writes), or with
    /// `--final-epochs` a final-fit epoch's.
    pub epoch_seconds: f64,
    pub step_seconds: f64,
    pub predict_seconds: f64,
    /// A full-size final-fit epoch's seconds, as rehearsed (0 in plans made before it was kept:
    /// their final fit runs the best epoch's length).
    #[serde(default)]
    pub final_epoch_seconds: f64,
    /// What follows the validated fine-tune besides the final fit's full-size epochs: its set-up
    /// and early epochs at the smaller size, the test report.
    #[serde(default)]
    pub after_seconds: f64,
    /// The final fit's length, decided once when the validated fine-tune ended: its best epoch,
    /// fewer when the fine-tune ran slower than rehearsed and the rest would overrun (0: no time
    /// for a final fit, the validated fine-tune's model is the fit's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub final_epochs: Option<usize>,
}

impl Plan {
    /// One line for the log and the report.
    pub fn describe(&self) -> String {
        format!(
            "budget {}: up to {} epochs of ≈ {} ({} per training step, {} per image predicted, measured); \
             planned to end within {} of the start ({} spent before the plan)",
            minutes(self.budget_seconds),
            self.epochs,
            seconds(self.epoch_seconds),
            seconds(self.step_seconds),
            seconds(self.predict_seconds),
            minutes(self.eta_seconds),
            seconds(self.spent_seconds)
        ) + &match self.final_epochs {
            Some(0) => "; no time left for the final fit: the validated fine-tune's model is the fit's".to_string(),
            Some(n) => format!("; the final fit: {n} epochs"),
            None => String::new(),
        }
    }
}

/// Seconds with the digits that matter: `12 s`, `2.5 s`, `0.031 s`, `0.00012 s`.
pub fn seconds(s: f64) -> String {
    match s {
        s if s >= 10.0 => format!("{s:.0} s"),
        s if s >= 1.0 => format!("{s:.1} s"),
        s if s >= 0.01 => format!("{s:.3} s"),
        s => format!("{s:.5} s"),
    }
}

/// A duration as `--budget` takes it: `0.5s`, `45s`, `6m40s`, `20m` (seconds rounded up).
pub fn minutes(seconds: f64) -> String {
    if seconds < 10.0 {
        return format!("{}s", (seconds * 10.0).ceil().max(1.0) / 10.0);
    }
    let whole = seconds.ceil() as u64;
    match (whole / 60, whole % 60) {
        (0, s) => format!("{s}s"),
        (m, 0) => format!("{m}m"),
        (m, s) => format!("{m}m{s}s"),
    }
}

impl FitSettings {
    /// The options that make this recipe, as `tlearn fit` takes them: the backbone and its size,
    /// then what differs from the defaults (the data, folds, budget and test fraction aside).
    pub fn recipe_args(&self) -> Vec<String> {
        use crate::params::Choice;
        use defaults as d;
        let mut a = vec![];
        if self.backbone != d::BACKBONE {
            a.push(format!("--backbone {}", self.backbone));
        }
        a.push(format!("--size {}", self.size));
        let mut differs = |flag: &str, value: String, default: String| {
            if value != default {
                a.push(format!("--{flag} {value}"));
            }
        };
        differs("epochs", self.epochs.to_string(), d::EPOCHS.to_string());
        differs("patience", self.patience.to_string(), d::PATIENCE.to_string());
        differs("batch", self.batch.to_string(), d::BATCH.to_string());
        let lr = if self.lr_auto { "auto".to_string() } else { self.lr.to_string() };
        differs("lr", lr, d::LR.to_string());
        differs("validation", self.validation.to_string(), d::VALIDATION.to_string());
        differs("seed", self.seed.to_string(), d::SEED.to_string());
        differs("head-epochs", self.head_epochs.to_string(), d::HEAD_EPOCHS.to_string());
        differs("balance", self.balance.name().to_string(), Balance::Auto.name().to_string());
        differs("target", self.target.name().to_string(), crate::heads::Target::Classes.name().to_string());
        differs("precision", self.precision.name().to_string(), crate::runtime::Precision::F32.name().to_string());
        if let Some(p) = self.progressive {
            a.push(format!("--progressive {p}"));
        }
        if let Some(s) = self.freeze_stride {
            a.push(format!("--freeze-stride {s}"));
        }
        if self.flips {
            a.push("--flips".into());
        }
        if !self.final_fit {
            a.push("--no-final-fit".into());
        }
        if let Some(n) = self.final_epochs {
            a.push(format!("--final-epochs {n}"));
        }
        a
    }
}

/// One fold's test numbers.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FoldScore {
    pub fold: usize,
    pub accuracy: f64,
    pub macro_f1: f64,
    /// ROC-AUC (binary) or the mean one-vs-rest AUC; None where a class is missing from the fold.
    pub roc_auc: Option<f64>,
    pub test_images: usize,
}

/// A finished fit's record (`run.json`, type `fit`).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct FitRecord {
    pub settings: FitSettings,
    /// The phase folder whose run is the fit's model (`final` or `tune`); None for a K-fold run,
    /// whose models are its folds'.
    pub model_run: Option<String>,
    /// The split the fit trained on: the data itself when it was split already, else `data/`.
    pub split: PathBuf,
    /// What the class weights were, and why.
    pub balance: String,
    /// The validated fine-tune's best epoch (the final fit's length).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub best_epoch: Option<usize>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub folds: Vec<FoldScore>,
    /// `--budget`: the plan the fine-tune's length came from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub plan: Option<Plan>,
    /// Wall-clock seconds of the command that finished the fit (a fit continued after a kill:
    /// of its last start only; each fine-tune's `train_seconds` counts its epochs of every start).
    pub seconds: f64,
    pub tlearn_version: String,
}

impl FitRecord {
    /// The folder of the run that is this fit's model.
    pub fn model_dir(&self, fit_dir: &Path) -> Result<PathBuf> {
        match &self.model_run {
            Some(phase) => {
                crate::fsutil::check_name("phase", phase)?;
                Ok(fit_dir.join(phase))
            }
            None => Err(Error::BadData {
                path: fit_dir.into(),
                reason: format!(
                    "a {}-fold cross-validation: each fold is a run of its own (e.g. --runs {} --run fold-1); \
                     `tlearn fit` without --folds makes one model",
                    self.folds.len().max(self.settings.folds.unwrap_or(0)),
                    fit_dir.display()
                ),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auto_balances_only_past_three_to_one() {
        assert!(Balance::Auto.decide(&[300, 100]).0.is_none());
        assert_eq!(Balance::Auto.decide(&[301, 100]).0, Some(ClassWeight::Balanced));
        assert!(Balance::Off.decide(&[1000, 1]).0.is_none());
        assert_eq!(Balance::On.decide(&[10, 10]).0, Some(ClassWeight::Balanced));
        assert!(Balance::Auto.decide(&[301, 100]).1.contains("3.0×"), "{}", Balance::Auto.decide(&[301, 100]).1);
    }

    #[test]
    fn sample_balances_by_drawing_not_by_weights() {
        let (weights, why) = Balance::Sample.decide(&[900, 100]);
        assert!(weights.is_none() && why.contains("sampled equally") && why.contains("9.0×"), "{why}");
        assert_eq!(Balance::Sample.sampling(), crate::train::Sampling::Balanced);
        for b in [Balance::Auto, Balance::Off, Balance::On] {
            assert_eq!(b.sampling(), crate::train::Sampling::Shuffle);
        }
    }

    #[test]
    fn a_recipe_is_its_size_and_what_differs_from_the_defaults() {
        let s = FitSettings {
            data: "raw".into(),
            backbone: defaults::BACKBONE.into(),
            size: 300,
            epochs: defaults::EPOCHS,
            patience: defaults::PATIENCE,
            batch: defaults::BATCH,
            lr: defaults::LR,
            lr_auto: false,
            flips: true,
            balance: Balance::Auto,
            target: crate::heads::Target::Classes,
            progressive: None,
            freeze_stride: None,
            final_fit: true,
            final_epochs: None,
            folds: None,
            test: defaults::TEST,
            validation: defaults::VALIDATION,
            seed: defaults::SEED,
            head_epochs: defaults::HEAD_EPOCHS,
            budget: Some(60.0),
            precision: Default::default(),
        };
        assert_eq!(s.recipe_args(), ["--size 300", "--flips"]);
        let other = FitSettings {
            backbone: "vgg16".into(),
            lr_auto: true,
            balance: Balance::On,
            final_fit: false,
            progressive: Some(super::super::finetune::Progressive { size: 224, epochs: 2 }),
            freeze_stride: Some(16),
            ..s.clone()
        };
        assert_eq!(
            other.recipe_args(),
            [
                "--backbone vgg16",
                "--size 300",
                "--lr auto",
                "--balance on",
                "--progressive 224:2",
                "--freeze-stride 16",
                "--flips",
                "--no-final-fit"
            ]
        );
        // Settings written before --progressive existed read back as without it, and still say so.
        let v = serde_json::to_value(&s).unwrap();
        assert!(v.get("progressive").is_none() && v.get("freeze_stride").is_none(), "{v}");
        assert_eq!(serde_json::from_value::<FitSettings>(v).unwrap(), s);
        let with = serde_json::to_value(&other).unwrap();
        assert_eq!(with["progressive"], serde_json::json!({"size": 224, "epochs": 2}));
        assert_eq!(with["freeze_stride"], 16);
        assert_eq!(serde_json::from_value::<FitSettings>(with).unwrap(), other);
        let e =
            FitSettings { progressive: Some("300:2".parse().unwrap()), ..s.clone() }.check().unwrap_err().to_string();
        assert!(e.contains("below the fit's --size 300"), "{e}");
        assert!(FitSettings { freeze_stride: Some(1), ..s.clone() }.check().is_err());
        // A length chosen before: the recipe says it; none, or with --no-final-fit, is refused.
        let fixed = FitSettings { final_epochs: Some(3), ..s.clone() };
        assert_eq!(fixed.recipe_args(), ["--size 300", "--flips", "--final-epochs 3"]);
        assert_eq!(serde_json::from_value::<FitSettings>(serde_json::to_value(&fixed).unwrap()).unwrap(), fixed);
        assert!(FitSettings { final_epochs: Some(0), ..s.clone() }.check().is_err());
        let e = FitSettings { final_fit: false, ..fixed }.check().unwrap_err().to_string();
        assert!(e.contains("--no-final-fit"), "{e}");
    }
}

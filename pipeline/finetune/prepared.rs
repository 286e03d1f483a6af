//! What a fine-tune trains, built one way for the run, its early epochs at a smaller size, its
//! learning-rate sweep and its cost measurement: the model opened and checked, the images loaded,
//! a cached trunk, the trainer; the batches it draws; what a checkpoint must match.

use super::model::{at_size, check_class_names, check_trainable, input_shape, open_model, trainable_set};
use crate::augment::Augment;
use crate::error::{Error, Result};
use crate::fsutil;
use crate::imageset::ImageSet;
use crate::onnx::{self, cut, proto::ModelProto};
use crate::progress::Sink;
use crate::runs::finetune::{load_set, FinetuneConfig};
use crate::spill;
use crate::train::checkpoint;
use crate::train::{BatchSource, Trainer};

/// The settings a checkpoint must share to be continued: the config minus `epochs`, plus a
/// fingerprint of the training and validation images (paths and labels).
pub(super) fn comparable(cfg: &FinetuneConfig, train: &ImageSet, val: Option<&ImageSet>) -> serde_json::Value {
    let mut v = checkpoint::comparable(serde_json::to_value(cfg).expect("config serialises"));
    if let Some(o) = v.as_object_mut() {
        o.remove("tta");
    }
    use sha2::Digest;
    let mut h = sha2::Sha256::new();
    for set in std::iter::once(train).chain(val) {
        for (f, l) in set.files.iter().zip(&set.labels) {
            h.update(format!("{}\t{l}\n", f.display()).as_bytes());
        }
        h.update(b"--\n");
    }
    v["data_sha256"] = serde_json::Value::String(hex::encode(h.finalize()));
    v
}

/// A split's images as batches: scaled, augmented on the fly when the run augments.
pub(super) struct ImageBatches<'a> {
    pub set: &'a ImageSet,
    pub augment: Option<&'a Augment>,
    pub rescale: f32,
}

impl BatchSource for ImageBatches<'_> {
    fn labels(&self) -> &[usize] {
        &self.set.labels
    }
    fn batch(&self, idx: &[usize], rng: &mut rand_chacha::ChaCha8Rng) -> Result<ndarray::ArrayD<f32>> {
        match self.augment {
            Some(a) => self.set.with_rows(idx, |x, idx| a.batch(x, idx, self.rescale, rng)),
            None => self.set.batch_f32(idx, self.rescale),
        }
    }
}

/// The model's output width must be the class list's (one sigmoid output for two classes), and a
/// deployable model's class names the data's.
fn check_outputs(model: &ModelProto, cfg: &FinetuneConfig, classes: &[String]) -> Result<()> {
    let k_model =
        onnx::graph(model).output.first().and_then(|o| onnx::vi_shape(o).1.last().copied().flatten()).unwrap_or(0)
            as usize;
    let k_data = crate::metrics::output_width(classes.len());
    if k_model != k_data {
        // A deployable model names its classes: both lists say what differs.
        let named = crate::runs::meta(model, &cfg.model)
            .map(|m| format!(" (the model's: {}; the data's: {})", m.classes.join(", "), classes.join(", ")))
            .unwrap_or_default();
        return Err(Error::Shape {
            what: format!("{} outputs vs classes of {}{named}", cfg.model.display(), cfg.data.join("train").display()),
            expected: vec![k_data],
            got: vec![k_model],
        });
    }
    check_class_names(model, cfg, classes)
}

/// `--lr-base`: the conv base's parameters (found on the whole `model`) at that rate.
fn scale_base(trainer: &mut Trainer, cfg: &FinetuneConfig, model: &ModelProto, input: [usize; 3]) -> Result<()> {
    let Some(lr_base) = cfg.lr_base else { return Ok(()) };
    let base = cut::base_initializers(model, &cfg.model, input[0] as u32)?;
    let factor = (lr_base / cfg.fit.optimizer.lr()) as f32;
    trainer.scale_lr(&|p| if base.contains(p) { factor } else { 1.0 });
    let n = trainer.train.params.iter().filter(|p| base.contains(*p)).count();
    tracing::info!("{n} of {} trainable tensors in the conv base, at learning rate {lr_base}", trainer.params.len());
    Ok(())
}

/// What a fine-tune trains, built one way for a run and for its learning-rate sweep: the model,
/// its input and classes, the training (and validation) images, a cached trunk, the trainer.
pub(super) struct Prepared {
    pub model: ModelProto,
    pub input: [usize; 3],
    pub classes: Vec<String>,
    pub train: ImageSet,
    pub val: Option<ImageSet>,
    pub trunk: Option<crate::trunk::Trunk>,
    pub trainer: Trainer,
}

/// What [`prepare`] prepares for: the run (its folder checked apart from its inputs, validation
/// images loaded) or a learning-rate sweep (neither).
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Purpose {
    Run,
    Sweep,
}

/// Open and check the model (taking `at`×`at` images when given: [`at_size`]), load
/// the images, run a cached trunk, build the trainer with the run's trainable set and `--lr-base`.
pub(super) fn prepare(
    cfg: &FinetuneConfig,
    budget: &spill::Budget,
    purpose: Purpose,
    at: Option<u32>,
    sink: &dyn Sink,
) -> Result<Prepared> {
    let full = open_model(&cfg.model, &cfg.data)?;
    let resized = at.map(|size| at_size(&full, &cfg.model, size)).transpose()?;
    let model = resized.as_ref().unwrap_or(&full);
    check_trainable(cfg, model)?;
    let input = input_shape(model, &cfg.model)?;
    if purpose == Purpose::Run {
        fsutil::check_output_apart(&cfg.run_dir, &[&cfg.data, &cfg.model])?;
    }
    let classes = crate::dataset::training_classes(&cfg.data)?;
    check_outputs(model, cfg, &classes)?;
    let (fit_on, validate_on): (&[&str], &[&str]) =
        if cfg.include_validation { (&["train", "validation"], &[]) } else { (&["train"], &["validation"]) };
    let mut train = load_set(cfg, fit_on, &classes, input, budget, sink)?.expect("train exists");
    let mut val = match purpose {
        Purpose::Run => load_set(cfg, validate_on, &classes, input, budget, sink)?,
        Purpose::Sweep => None,
    };
    let trainable = trainable_set(cfg, model, &full)?;
    let trunk = cached_trunk(cfg, model, input, &trainable, (&train, val.as_ref()), budget, sink)?;
    if trunk.is_some() {
        // Training reads the trunk's outputs from here on, never the images.
        train.release_pixels();
        val.iter_mut().for_each(ImageSet::release_pixels);
    }
    let (net, shape) = match &trunk {
        Some(t) => (&t.rest, t.shape.clone()),
        None => (model, input.to_vec()),
    };
    let opts = cfg.session.training(cfg.precision);
    let mut trainer = Trainer::with_trainable(net, &cfg.model, &shape, classes.len(), &opts, &trainable)?;
    // The conv base as the whole-size net has it (at a small size its last map may shrink to 1×1).
    scale_base(&mut trainer, cfg, &full, input_shape(&full, &cfg.model)?)?;
    if let Some(t) = &trunk {
        check_trunk(t, &trainer, cfg)?;
    }
    // The net trained: the resized copy, else the opened net itself (moved, not copied).
    Ok(Prepared { model: resized.unwrap_or(full), input, classes, train, val, trunk, trainer })
}

/// The training batches: the trunk's cached outputs, or the images (augmented as the run says).
pub(super) enum TrainBatches<'a> {
    Images(ImageBatches<'a>),
    Cached(crate::trunk::CachedViews<'a>),
}

impl<'a> TrainBatches<'a> {
    pub fn of(cfg: &'a FinetuneConfig, train: &'a ImageSet, trunk: Option<&'a crate::trunk::Trunk>) -> Self {
        match trunk {
            Some(trunk) => TrainBatches::Cached(crate::trunk::CachedViews { trunk, labels: &train.labels }),
            None => {
                TrainBatches::Images(ImageBatches { set: train, augment: cfg.augment.as_ref(), rescale: cfg.rescale })
            }
        }
    }
    pub fn source(&self) -> &dyn BatchSource {
        match self {
            TrainBatches::Images(i) => i,
            TrainBatches::Cached(c) => c,
        }
    }
}

/// `--cache-trunk`: the frozen trunk run over the images (None without the option).
fn cached_trunk(
    cfg: &FinetuneConfig,
    model: &ModelProto,
    input: [usize; 3],
    trainable: &dyn Fn(&str) -> bool,
    (train, val): (&ImageSet, Option<&ImageSet>),
    budget: &spill::Budget,
    sink: &dyn Sink,
) -> Result<Option<crate::trunk::Trunk>> {
    if !cfg.cache_trunk {
        return Ok(None);
    }
    let spec = crate::trunk::TrunkSpec {
        model,
        path: &cfg.model,
        input,
        rescale: cfg.rescale,
        augment: cfg.augment.as_ref(),
        session: &cfg.session,
    };
    crate::trunk::build(&spec, trainable, (train, val), budget, sink).map(Some)
}

/// The rest after a trunk trains every parameter the run selected: the compiler never trains the
/// constants right after its input (they look like input normalisation).
fn check_trunk(t: &crate::trunk::Trunk, trainer: &Trainer, cfg: &FinetuneConfig) -> Result<()> {
    if t.trained == trainer.params.len() {
        return Ok(());
    }
    Err(Error::BadModel {
        path: cfg.model.clone(),
        reason: format!(
            "--cache-trunk: only {} of the {} parameter tensors after `{}` would train; run without it",
            trainer.params.len(),
            t.trained,
            t.tensor
        ),
    })
}

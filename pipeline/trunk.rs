//! A fine-tune's frozen trunk run once (`tlearn-finetune --cache-trunk`): when the first layers of
//! a net are not trained, their output for an image never changes, so it is computed once per
//! image and view (the flips the run augments with) and the trainable rest is trained on those
//! tensors — "Deep Learning with R"'s feature extraction with the top of the base fine-tuned, at
//! the cost of the rest alone. Random transforms (rotations, shifts, zoom, brightness) would need
//! the trunk every epoch and are refused with it.

use crate::augment::Augment;
use crate::error::{Error, Result};
use crate::imageio::View;
use crate::imageset::ImageSet;
use crate::onnx::{self, proto::ModelProto};
use crate::progress::Sink;
use crate::runtime::SessionOptions;
use crate::spill::{self, RowWriter, Rows};
use crate::train::BatchSource;
use ndarray::{ArrayD, Axis};
use rand::Rng;
use std::path::Path;

/// The trunk's outputs and the rest of the net that trains on them.
pub struct Trunk {
    /// The tensor the trainable rest starts from.
    pub tensor: String,
    /// One sample's shape of that tensor.
    pub shape: Vec<usize>,
    /// The net after the tensor (its input), with every trainable parameter.
    pub rest: ModelProto,
    /// How many parameter tensors the run trains (the rest must train them all).
    pub trained: usize,
    /// The training images' trunk output, one row set per view (plain first).
    pub train: Vec<Rows<f32>>,
    /// The validation images' (plain view).
    pub val: Option<Rows<f32>>,
    pub views: Vec<View>,
    pub seconds: f64,
}

/// The views a cached trunk holds for `augment`: the plain image and the flips it draws from.
pub fn views(augment: Option<&Augment>) -> Result<Vec<View>> {
    let Some(a) = augment else { return Ok(vec![View::Identity]) };
    let only_flips = Augment {
        horizontal_flip: a.horizontal_flip,
        vertical_flip: a.vertical_flip,
        fill_mode: a.fill_mode,
        cval: a.cval,
        ..Augment::default()
    };
    if *a != only_flips {
        return Err(Error::Param {
            name: "cache_trunk",
            value: "with random transforms".into(),
            reason: "a cached trunk holds fixed views: only --horizontal-flip / --vertical-flip augment it".into(),
        });
    }
    Ok(match (a.horizontal_flip, a.vertical_flip) {
        (true, true) => vec![View::Identity, View::Hflip, View::Vflip, View::Rot180],
        (true, false) => vec![View::Identity, View::Hflip],
        (false, true) => vec![View::Identity, View::Vflip],
        (false, false) => vec![View::Identity],
    })
}

/// Everything [`build`] needs besides the images.
pub struct TrunkSpec<'a> {
    pub model: &'a ModelProto,
    pub path: &'a Path,
    /// One sample's input shape (H, W, C).
    pub input: [usize; 3],
    pub rescale: f32,
    pub augment: Option<&'a Augment>,
    pub session: &'a SessionOptions,
}

/// Split `spec.model` before its first layer with a parameter `trainable` accepts and run the
/// trunk over the training images (each view) and the validation images; the outputs are kept
/// in memory while `budget` allows, else spilled.
pub fn build(
    spec: &TrunkSpec,
    trainable: &dyn Fn(&str) -> bool,
    (train, val): (&ImageSet, Option<&ImageSet>),
    budget: &spill::Budget,
    sink: &dyn Sink,
) -> Result<Trunk> {
    let views = views(spec.augment)?;
    let t0 = std::time::Instant::now();
    let g = onnx::graph(spec.model);
    // What compiling the whole net would train.
    let selected = crate::train::graph::select_params(g, &|n| !crate::train::is_frozen(n) && trainable(n));
    let params: std::collections::HashSet<&str> = selected.iter().map(|s| s.as_str()).collect();
    let first = g.node.iter().position(|n| n.input.iter().any(|i| params.contains(i.as_str())));
    let cut = first.and_then(|f| onnx::split::single_cut(g, f)).ok_or_else(|| Error::BadModel {
        path: spec.path.into(),
        reason: "--cache-trunk: no single tensor feeds the trained layers (nothing frozen before them?)".into(),
    })?;
    let sample = ArrayD::<f32>::zeros(ndarray::IxDyn(&[&[1][..], &spec.input[..]].concat()));
    let (input, _) = onnx::cut::image_input(spec.model, spec.path)?;
    let names = std::slice::from_ref(&cut.tensor);
    let shape = onnx::probe::shapes(spec.model, spec.path, vec![(&input, sample.view())], names)?[&cut.tensor].clone();
    let (before, rest) = onnx::split::split_at(spec.model, &cut, &shape);
    let bytes = onnx::encode_model(&before);
    let meter = sink.meter((views.len() + val.is_some() as usize) as u64, "pass", "trunk");
    // Converted and flipped a chunk at a time: the cache, not a float copy of the images, is what
    // stays in memory.
    let mut net = crate::train::Predictor::open(&bytes, spec.path, spec.session)?;
    let mut run = |set: &ImageSet, view: View, what: &str| -> Result<Rows<f32>> {
        let mut rows = RowWriter::new(budget, what, set.len(), &shape[1..])?;
        let idx: Vec<usize> = (0..set.len()).collect();
        for chunk in idx.chunks(64) {
            let x = set.batch_f32(chunk, spec.rescale)?;
            let y = net.run(view.of_batch(x.view()).view(), 32)?;
            if y.shape()[1..] != shape[1..] {
                return Err(Error::BadModel {
                    path: spec.path.into(),
                    reason: format!(
                        "--cache-trunk: `{}` is {:?} for a batch of {}, {:?} for one image",
                        cut.tensor,
                        y.shape(),
                        chunk.len(),
                        &shape[1..]
                    ),
                });
            }
            rows.push(chunk.len(), y.as_standard_layout().as_slice().expect("standard layout"))?;
        }
        rows.finish()
    };
    let mut outs = vec![];
    for &v in &views {
        outs.push(run(train, v, &format!("trunk outputs of train ({v:?})"))?);
        meter.inc(1);
    }
    let val = val.map(|v| run(v, View::Identity, "trunk outputs of validation")).transpose()?;
    let floats: usize = outs.iter().chain(&val).map(|r| r.len() * shape[1..].iter().product::<usize>()).sum();
    sink.note(&format!(
        "trunk up to `{}` {:?}: {} view(s) cached, {:.0} MB",
        cut.tensor,
        &shape[1..],
        views.len(),
        floats as f64 * 4.0 / 1e6
    ));
    Ok(Trunk {
        tensor: cut.tensor,
        shape: shape[1..].to_vec(),
        rest,
        trained: params.len(),
        train: outs,
        val,
        views,
        seconds: t0.elapsed().as_secs_f64(),
    })
}

/// `full` with the parameters of `rest` (a trained copy of its part after the trunk).
pub fn merge(full: &ModelProto, rest: &ModelProto) -> ModelProto {
    let trained: std::collections::HashMap<&str, &onnx::proto::TensorProto> =
        onnx::graph(rest).initializer.iter().map(|t| (t.name.as_str(), t)).collect();
    let mut m = full.clone();
    for t in m.graph.as_mut().expect("graph").initializer.iter_mut() {
        if let Some(new) = trained.get(t.name.as_str()) {
            *t = (*new).clone();
        }
    }
    m
}

/// Batches of cached trunk outputs: each sample in one of the cached views, drawn per sample.
pub struct CachedViews<'a> {
    pub trunk: &'a Trunk,
    pub labels: &'a [usize],
}

impl BatchSource for CachedViews<'_> {
    fn labels(&self) -> &[usize] {
        self.labels
    }
    fn batch(&self, idx: &[usize], rng: &mut rand_chacha::ChaCha8Rng) -> Result<ArrayD<f32>> {
        let views = &self.trunk.train;
        let rows = idx
            .iter()
            .map(|&i| {
                let v = if views.len() > 1 { rng.gen_range(0..views.len()) } else { 0 };
                views[v].select(&[i])
            })
            .collect::<Result<Vec<_>>>()?;
        let rows: Vec<_> = rows.iter().map(|r| r.view()).collect();
        ndarray::concatenate(Axis(0), &rows).map_err(|e| Error::Other(format!("cached trunk batch: {e}")))
    }
}

/// The validation images' cached trunk outputs as samples.
pub struct CachedRows<'a> {
    pub rows: &'a Rows<f32>,
    pub labels: &'a [usize],
}

impl BatchSource for CachedRows<'_> {
    fn labels(&self) -> &[usize] {
        self.labels
    }
    fn batch(&self, idx: &[usize], _: &mut rand_chacha::ChaCha8Rng) -> Result<ArrayD<f32>> {
        self.rows.select(idx)
    }
}

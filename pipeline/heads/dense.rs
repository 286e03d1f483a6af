//! The dense head (the classic: Flatten → Dense(256, relu) → Dropout(0.5) → Dense(1, sigmoid)),
//! defined as an ONNX graph with Keras' default initialisers and trained by the training-graph
//! compiler.

use super::prep::{emit_pool, emit_standardize, pooled, standardizer};
use super::spec::{Data, Head, HeadSpec, Trained, INPUT, OUTPUT};
use crate::error::{Error, Result};
use crate::init::glorot_uniform;
use crate::onnx::builder::A;
use crate::onnx::proto::ModelProto;
use crate::onnx::{self, Dim, GraphBuilder};
use crate::params::Checked;
use crate::progress::Sink;
use crate::runtime::{Device, SessionOptions};
use crate::train::learner::{self, Checkpointing, FitOptions, Live};
use crate::train::lr_find::{LrCurve, Sweep};
use crate::train::{FitConfig, InMemory, Trainer};
use ndarray::ArrayD;
use rand::SeedableRng;
use std::path::Path;

pub struct Dense {
    pub spec: Checked<HeadSpec>,
    pub fit: Checked<FitConfig>,
    pub opts: SessionOptions,
    /// Checkpoint (and continue from an earlier checkpoint) when set.
    pub checkpoint: Option<Checkpointing>,
    /// Keep the history files up to date while the fit runs, when set.
    pub live: Option<Live>,
}

impl Dense {
    fn layers(&self, shape: &[usize], classes: usize) -> String {
        let spec = &self.spec;
        let mut layers = vec![shape.iter().map(|d| d.to_string()).collect::<Vec<_>>().join("×")];
        layers.push(format!("{:?}", spec.pool));
        if spec.standardize {
            layers.push("Standardize".into());
        }
        for _ in 0..spec.layers {
            layers.push(format!("Dense({}, relu)", spec.units));
            if spec.dropout > 0.0 {
                layers.push(format!("Dropout({})", spec.dropout));
            }
        }
        layers.push(match (classes, spec.target) {
            (2, _) => "Dense(1, sigmoid)".into(),
            (_, super::spec::Target::Ordinal) => format!("Dense(1) → {} ordered thresholds (ordinal)", classes - 1),
            _ => format!("Dense({classes}, softmax)"),
        });
        layers.join(" → ")
    }
}

impl Dense {
    /// The head for `data` (initialised from `seed`) and its trainer.
    fn trainer(&self, data: &Data, seed: u64) -> Result<Trainer> {
        data.validate()?;
        let shape = &data.x.shape()[1..];
        let model = build(shape, data.classes, &self.spec, seed, Some(data.x))?;
        // A head on cached features is a few small matrix products: it trains in f32 on the CPU
        // provider even under `--device openvino`, whose bf16 its record would not show.
        let opts = match self.opts.device {
            Device::Openvino => SessionOptions { device: Device::Cpu, precision: None, ..self.opts.clone() },
            _ => self.opts.clone(),
        };
        Trainer::new(&model, Path::new("head.onnx"), shape, data.classes, &opts)
    }

    /// The learning-rate range test for this head on `data` (see [`crate::train::lr_find`]):
    /// the head built and initialised as [`Head::fit`] builds it, stepping through the training
    /// features as the fit would. Nothing is written.
    pub fn lr_find(&self, data: &Data, seed: u64, sweep: &Checked<Sweep>, sink: &dyn Sink) -> Result<LrCurve> {
        let mut trainer = self.trainer(data, seed)?;
        let params: usize = trainer.params.iter().map(|p| p.len()).sum();
        sink.note(&format!(
            "head: {} ({} parameters); learning-rate sweep over {} train samples, {} steps from {:e} to {:e}",
            self.layers(&data.x.shape()[1..], data.classes),
            crate::onnx::summary::thousands(params),
            data.y.len(),
            sweep.steps,
            sweep.start,
            sweep.end
        ));
        trainer.lr_sweep(&InMemory { x: data.x, labels: data.y }, &self.fit, sweep, sink)
    }
}

impl Head for Dense {
    fn fit(&self, data: &Data, seed: u64, sink: &dyn Sink) -> Result<Trained> {
        let mut trainer = self.trainer(data, seed)?;
        let shape = &data.x.shape()[1..];
        let params: usize = trainer.params.iter().map(|p| p.len()).sum();
        let describe = self.layers(shape, data.classes);
        sink.note(&format!(
            "head: {describe} ({} parameters); {} train / {} validation samples; {:?}",
            crate::onnx::summary::thousands(params),
            data.y.len(),
            data.val.map(|v| v.1.len()).unwrap_or(0),
            self.fit.optimizer,
        ));
        let o = FitOptions {
            fit: self.fit.clone(),
            checkpoint: self.checkpoint.clone(),
            models: None,
            patience: None,
            wrap: None,
            live: self.live.clone(),
        };
        let val = data.val.map(|(x, labels)| InMemory { x, labels });
        let fitted = learner::fit(
            &mut trainer,
            &InMemory { x: data.x, labels: data.y },
            val.as_ref().map(|v| v as &dyn crate::train::BatchSource),
            &o,
            sink,
        )?;
        Ok(Trained { model: trainer.export(), history: fitted.history, describe, params })
    }
}

/// Build the head for features of shape (h, w, c) and `classes` classes (1 sigmoid output when 2).
/// `train_x` supplies the statistics when `spec.standardize`.
pub fn build(
    feature_shape: &[usize],
    classes: usize,
    spec: &Checked<HeadSpec>,
    seed: u64,
    train_x: Option<&ArrayD<f32>>,
) -> Result<ModelProto> {
    if classes < 2 {
        return Err(Error::Param {
            name: "classes",
            value: classes.to_string(),
            reason: "need at least 2 classes".into(),
        });
    }
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let mut b = GraphBuilder::new("tlearn_head").with_prefix("head/");
    let mut dims = vec![Dim::named("N")];
    dims.extend(feature_shape.iter().map(|&d| Dim::Fixed(d as i64)));
    b.input(INPUT, &dims);
    let (mut x, mut width) = emit_pool(&mut b, INPUT, spec.pool, feature_shape)?;
    if spec.standardize {
        let tx = train_x.ok_or_else(|| Error::Param {
            name: "standardize",
            value: "true".into(),
            reason: "needs the training features".into(),
        })?;
        let (mean, std) = standardizer(&pooled(tx, spec.pool))?;
        x = emit_standardize(&mut b, &x, &mean, &std);
    }
    let ordinal = spec.target == super::spec::Target::Ordinal;
    if ordinal && classes < 3 {
        return Err(Error::Param {
            name: "target",
            value: "ordinal".into(),
            reason: format!("{classes} classes: an order needs three or more (two classes are one sigmoid already)"),
        });
    }
    let out_units = crate::metrics::output_width(classes);
    for layer in 0..=spec.layers {
        let last = layer == spec.layers;
        if last && ordinal {
            super::ordinal::emit(&mut b, &x, width, classes, &format!("dense_{layer}/"), &mut rng);
            break;
        }
        let units = if last { out_units } else { spec.units };
        let w = b.init_f32(&format!("dense_{layer}/kernel"), &glorot_uniform(&mut rng, &[width, units], width, units));
        let bias = b.init_f32(&format!("dense_{layer}/bias"), &ArrayD::zeros(ndarray::IxDyn(&[units])));
        x = b.op("Gemm", &[&x, &w, &bias], vec![]);
        if last {
            let act = if classes == 2 { "Sigmoid" } else { "Softmax" };
            let attrs = if classes == 2 { vec![] } else { vec![("axis", A::I(-1))] };
            b.node(act, &[&x], &[OUTPUT], attrs);
        } else {
            x = b.op("Relu", &[&x], vec![]);
            if spec.dropout > 0.0 {
                x = b.op("Dropout", &[&x], vec![("seed", A::I(seed as i64))]);
                let ratio = b.const_f32("ratio", spec.dropout);
                let node = b.graph.node.last_mut().expect("dropout");
                node.input.push(ratio);
            }
        }
        width = units;
    }
    b.output(OUTPUT, &[Dim::named("N"), Dim::Fixed(out_units as i64)]);
    Ok(onnx::model(b.finish(), "tlearn-head"))
}

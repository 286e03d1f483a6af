//! The dense head behind [`Head`]: built by [`crate::train::head::build`], trained by the
//! training-graph compiler, one line per epoch on stdout and a progress bar on stderr.

use super::{Data, Head, Trained};
use crate::error::Result;
use crate::runtime::SessionOptions;
use crate::train::checkpoint::{self, Resume};
use crate::train::head::HeadSpec;
use crate::train::{FitConfig, Trainer};
use ndarray::Axis;
use std::path::{Path, PathBuf};

pub struct Dense {
    pub spec: HeadSpec,
    pub fit: FitConfig,
    pub opts: SessionOptions,
    /// Checkpoint every epoch (and continue from an earlier one) when set.
    pub checkpoint: Option<Checkpointing>,
}

/// Where a head's checkpoint lives and what it must match to be continued.
#[derive(Clone, Debug)]
pub struct Checkpointing {
    pub path: PathBuf,
    /// The run's settings and data fingerprint (see [`checkpoint::comparable`]).
    pub config: serde_json::Value,
    pub resume: Resume,
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
        layers.push(if classes == 2 { "Dense(1, sigmoid)".into() } else { format!("Dense({classes}, softmax)") });
        layers.join(" → ")
    }
}

impl Head for Dense {
    fn fit(&self, data: &Data, seed: u64) -> Result<Trained> {
        data.validate()?;
        self.spec.validate()?;
        self.fit.validate()?;
        let shape = &data.x.shape()[1..];
        let model = crate::train::head::build(shape, data.classes, &self.spec, seed, Some(data.x))?;
        let mut trainer = Trainer::new(&model, Path::new("head.onnx"), shape, data.classes, &self.opts)?;
        let params: usize = trainer.params.iter().map(|p| p.len()).sum();
        let describe = self.layers(shape, data.classes);
        crate::errln!(
            "head: {describe} ({} parameters); {} train / {} validation samples; {:?}",
            crate::onnx::summary::thousands(params),
            data.y.len(),
            data.val.map(|v| v.1.len()).unwrap_or(0),
            self.fit.optimizer,
        );
        let empty = ndarray::ArrayD::<f32>::zeros(ndarray::IxDyn(&[0]));
        let (vx, vl) = data.val.unwrap_or((&empty, &[]));
        let epochs = self.fit.epochs;
        let line = |e: &crate::train::Epoch| {
            crate::outln!(
                "epoch {:>3}/{}  loss {:.4}  acc {:.4}  val_loss {:.4}  val_acc {:.4}  ({:.2} s)",
                e.epoch,
                epochs,
                e.loss,
                e.accuracy,
                e.val_loss,
                e.val_accuracy,
                e.seconds
            )
        };
        let resumed = match &self.checkpoint {
            Some(c) => checkpoint::restore(&c.path, &c.config, &self.fit.optimizer, &mut trainer, c.resume)?,
            None => None,
        };
        let done = resumed.as_ref().map(|r| r.state.epoch).unwrap_or(0);
        for e in resumed.iter().flat_map(|r| &r.state.history) {
            line(e);
        }
        let pb = crate::cli::progress(epochs.saturating_sub(done) as u64, "epochs");
        let x = data.x;
        let history = trainer.fit_with(
            data.y,
            |idx, _| Ok(x.select(Axis(0), idx)),
            vx,
            vl,
            &self.fit,
            resumed.map(|r| r.state),
            |e, tr, fs| {
                pb.suspend(|| line(e));
                pb.inc(1);
                if let Some(c) = &self.checkpoint {
                    checkpoint::save(&c.path, &tr.export(), tr, fs, &c.config, Default::default())?;
                }
                Ok(true)
            },
        )?;
        pb.finish_and_clear();
        Ok(Trained { model: trainer.export(), history, describe, params })
    }
}

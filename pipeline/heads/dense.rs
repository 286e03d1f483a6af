//! The dense head behind [`Head`]: built by [`crate::train::head::build`], trained by the
//! training-graph compiler, one line per epoch on stdout and a progress bar on stderr.

use super::{Data, Head, Trained};
use crate::error::Result;
use crate::runtime::SessionOptions;
use crate::train::head::HeadSpec;
use crate::train::{FitConfig, Trainer};
use std::path::Path;

pub struct Dense {
    pub spec: HeadSpec,
    pub fit: FitConfig,
    pub opts: SessionOptions,
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
        eprintln!(
            "head: {describe} ({} parameters); {} train / {} validation samples; {:?}",
            crate::onnx::summary::thousands(params),
            data.y.len(),
            data.val.map(|v| v.1.len()).unwrap_or(0),
            self.fit.optimizer,
        );
        let empty = ndarray::ArrayD::<f32>::zeros(ndarray::IxDyn(&[0]));
        let (vx, vl) = data.val.unwrap_or((&empty, &[]));
        let epochs = self.fit.epochs;
        let pb = crate::cli::progress(epochs as u64, "epochs");
        let history = trainer.fit(data.x, data.y, vx, vl, &self.fit, |e| {
            pb.suspend(|| {
                println!(
                    "epoch {:>3}/{}  loss {:.4}  acc {:.4}  val_loss {:.4}  val_acc {:.4}  ({:.2} s)",
                    e.epoch, epochs, e.loss, e.accuracy, e.val_loss, e.val_accuracy, e.seconds
                )
            });
            pb.inc(1);
        })?;
        pb.finish_and_clear();
        Ok(Trained { model: trainer.export(), history, describe, params })
    }
}

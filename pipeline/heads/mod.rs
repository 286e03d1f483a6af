//! The head zoo: classifiers trained on cached features behind one interface.
//!
//! Every head — the dense network and the classical ones (logistic regression and linear/RBF SVMs
//! from linfa, a random forest from smartcore, k-nearest neighbours) — is fitted through [`Head`]
//! and saved the same way: as an ONNX graph `features (N, h, w, c) → probs` (N, 1) = P(class 1) for
//! two classes, else (N, C)). So `tlearn-evaluate`, `tlearn-score` and the fused deployable model
//! treat them alike. The classical models are compiled to standard ONNX ops (Gemm, Exp, TopK, …)
//! and, for the forest, ONNX-ML's `TreeEnsembleClassifier`; each keeps its library's predictions
//! in Rust ([`Fitted::predict_proba`]) so tests can check the graph against the library.

pub mod dense;
pub mod forest;
pub mod knn;
pub mod linear;
mod ops;
pub mod ordinal;
pub mod prep;
mod spec;

pub use prep::Prep;

/// The dense head's learning rate when none is given (RMSprop, as in the course's classic head).
pub const DEFAULT_LR: f64 = 2e-5;
pub use spec::{ClassicalSpec, Data, Fit, Fitted, Head, HeadKind, HeadSpec, Pool, Target, Trained, INPUT, OUTPUT};

use crate::error::Result;
use crate::history::Epoch;
use crate::onnx::proto::ModelProto;
use crate::onnx::{self, Dim, GraphBuilder};
use crate::params::Checked;
use crate::progress::Sink;
use ndarray::ArrayD;
use spec::bad;

/// A classical head: [`Prep`] then one [`Fit`] model, saved as one ONNX graph.
pub struct Classical {
    pub kind: HeadKind,
    pub spec: Checked<HeadSpec>,
    pub classical: Checked<ClassicalSpec>,
}

impl Classical {
    fn fitter(&self) -> Result<Box<dyn Fit>> {
        let c = &self.classical;
        Ok(match self.kind {
            HeadKind::Logistic => Box::new(linear::Logistic { c: c.c, max_iterations: c.max_iterations }),
            HeadKind::Svm => Box::new(linear::Svm { c: c.c, kernel: linear::Kernel::Linear }),
            HeadKind::Rbf => Box::new(linear::Svm { c: c.c, kernel: linear::Kernel::Rbf(c.gamma) }),
            HeadKind::Forest => Box::new(forest::Forest { trees: c.trees, max_depth: c.max_depth }),
            HeadKind::Knn => Box::new(knn::Knn { k: c.k }),
            HeadKind::Dense => return Err(bad("head", "dense", "is not a classical head")),
        })
    }

    /// Classical heads model unordered classes only.
    fn check_target(&self) -> Result<()> {
        match self.spec.target {
            Target::Classes => Ok(()),
            Target::Ordinal => {
                Err(bad("target", "ordinal", "only the dense head has an ordinal output: give --head dense"))
            }
        }
    }

    /// Fit and return the prepared-rows model too (tests compare it with the graph).
    pub fn fit_model(&self, data: &Data, seed: u64) -> Result<(Prep, Box<dyn Fitted>, ModelProto)> {
        data.validate()?;
        self.check_target()?;
        let prep = Prep::fit(data.x, &self.spec, self.classical.pca)?;
        let rows = prep.apply(data.x).mapv(f64::from);
        let fitted = self.fitter()?.fit(rows.view(), data.y, data.classes, seed)?;
        let shape = &data.x.shape()[1..];
        let mut b = GraphBuilder::new("tlearn_head").with_prefix("head/");
        let mut dims = vec![Dim::named("N")];
        dims.extend(shape.iter().map(|&d| Dim::Fixed(d as i64)));
        b.input(INPUT, &dims);
        let x = prep.emit(&mut b, INPUT, shape)?;
        let p = fitted.emit(&mut b, &x)?;
        b.node("Identity", &[&p], &[OUTPUT], vec![]);
        let width = crate::metrics::output_width(data.classes);
        b.output(OUTPUT, &[Dim::named("N"), Dim::Fixed(width as i64)]);
        let model = onnx::model(b.finish(), "tlearn-head");
        Ok((prep, fitted, model))
    }
}

impl Head for Classical {
    fn fit(&self, data: &Data, seed: u64, _: &dyn Sink) -> Result<Trained> {
        let t = std::time::Instant::now();
        let (prep, fitted, model) = self.fit_model(data, seed)?;
        let seconds = t.elapsed().as_secs_f64();
        // One history row: the fitted model's loss and accuracy on train and validation.
        let score = |x: &ArrayD<f32>, y: &[usize]| {
            let p = fitted.predict_proba(prep.apply(x).mapv(f64::from).view()).mapv(|v| v as f32).into_dyn();
            crate::metrics::loss_accuracy(&p, y)
        };
        let (loss, accuracy) = score(data.x, data.y);
        let (val_loss, val_accuracy) = data.val.map(|(x, y)| score(x, y)).unwrap_or((f64::NAN, f64::NAN));
        let history = vec![Epoch { epoch: 1, loss, accuracy, val_loss, val_accuracy, lr: f64::NAN, seconds }];
        let mut describe = vec![format!("{:?}", self.spec.pool)];
        if self.spec.standardize {
            describe.push("Standardize".into());
        }
        if let Some(k) = self.classical.pca {
            describe.push(format!("PCA({k})"));
        }
        describe.push(fitted.describe());
        Ok(Trained { model, history, describe: describe.join(" → "), params: fitted.params() })
    }
}

/// The head of `kind` (the dense one trains with `fit` and `opts`, checkpointing and keeping its
/// history files live as told).
pub fn head(
    kind: HeadKind,
    spec: &Checked<HeadSpec>,
    classical: &Checked<ClassicalSpec>,
    fit: &Checked<crate::train::FitConfig>,
    opts: &crate::runtime::SessionOptions,
    checkpoint: Option<crate::train::learner::Checkpointing>,
    live: Option<crate::train::learner::Live>,
) -> Box<dyn Head> {
    match kind {
        HeadKind::Dense => {
            Box::new(dense::Dense { spec: spec.clone(), fit: fit.clone(), opts: opts.clone(), checkpoint, live })
        }
        _ => Box::new(Classical { kind, spec: spec.clone(), classical: classical.clone() }),
    }
}

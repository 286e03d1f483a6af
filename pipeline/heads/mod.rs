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
pub mod prep;

pub use prep::{Pool, Prep};

use crate::error::{Error, Result};
use crate::history::Epoch;
use crate::onnx::builder::A;
use crate::onnx::proto::ModelProto;
use crate::onnx::{self, Dim, GraphBuilder};
use crate::params::{Checked, ParamGuard};
use crate::progress::Sink;
use ndarray::{Array2, ArrayD, ArrayView2, Axis};
use serde::{Deserialize, Serialize};

/// A head's graph: `features` (N, h, w, c) → `probs`.
pub const INPUT: &str = "features";
pub const OUTPUT: &str = "probs";

/// Head hyper-parameters; defaults are the classic head.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct HeadSpec {
    pub units: usize,
    pub layers: usize,
    pub dropout: f32,
    pub pool: Pool,
    /// Standardise the (pooled) features with the training set's mean and std, baked into the
    /// graph as frozen constants.
    #[serde(default)]
    pub standardize: bool,
}

impl Default for HeadSpec {
    fn default() -> Self {
        HeadSpec { units: 256, layers: 1, dropout: 0.5, pool: Pool::Flatten, standardize: false }
    }
}

impl ParamGuard for HeadSpec {
    fn check_ref(&self) -> Result<()> {
        if self.layers > 0 && self.units == 0 {
            return Err(Error::Param { name: "units", value: "0".into(), reason: "must be ≥ 1".into() });
        }
        if !(0.0..1.0).contains(&self.dropout) {
            return Err(Error::Param {
                name: "dropout",
                value: self.dropout.to_string(),
                reason: "must be in [0, 1)".into(),
            });
        }
        Ok(())
    }
}

/// Which classifier a head is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum HeadKind {
    /// Dense(units, relu) → Dropout → Dense(sigmoid|softmax), trained by tlearn's graph compiler.
    #[default]
    Dense,
    /// L2-regularised logistic regression (linfa-logistic; softmax regression for > 2 classes).
    Logistic,
    /// Linear-kernel SVM with Platt-scaled probabilities (linfa-svm; one-vs-rest for > 2 classes).
    Svm,
    /// RBF-kernel SVM with Platt-scaled probabilities (linfa-svm; one-vs-rest for > 2 classes).
    Rbf,
    /// Random forest (smartcore); probability = fraction of the trees' votes.
    Forest,
    /// k-nearest neighbours (Euclidean); probability = fraction of the k neighbours' votes.
    Knn,
}

impl crate::params::Choice for HeadKind {
    const ALL: &'static [(Self, &'static str, &'static str)] = &[
        (
            HeadKind::Dense,
            "dense",
            "Dense(units, relu) → Dropout → Dense(sigmoid|softmax), trained by tlearn's graph compiler",
        ),
        (
            HeadKind::Logistic,
            "logistic",
            "L2-regularised logistic regression (linfa-logistic; softmax regression for > 2 classes)",
        ),
        (
            HeadKind::Svm,
            "svm",
            "Linear-kernel SVM with Platt-scaled probabilities (linfa-svm; one-vs-rest for > 2 classes)",
        ),
        (
            HeadKind::Rbf,
            "rbf",
            "RBF-kernel SVM with Platt-scaled probabilities (linfa-svm; one-vs-rest for > 2 classes)",
        ),
        (HeadKind::Forest, "forest", "Random forest (smartcore); probability = fraction of the trees' votes"),
        (HeadKind::Knn, "knn", "k-nearest neighbours (Euclidean); probability = fraction of the k neighbours' votes"),
    ];
}

impl HeadKind {
    /// Whether the head standardises its features unless told otherwise: yes for the distance- and
    /// margin-based ones (logistic, SVMs, k-NN), no for the dense head (as the classic) and the
    /// forest (splits do not care about scale).
    pub fn standardizes_by_default(self) -> bool {
        !matches!(self, HeadKind::Dense | HeadKind::Forest)
    }

    pub fn name(self) -> &'static str {
        crate::params::Choice::name(self)
    }
}

/// Hyper-parameters of the classical heads; the defaults are scikit-learn's.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct ClassicalSpec {
    /// Keep this many principal components (linfa-reduction PCA, after standardisation); None = all.
    pub pca: Option<usize>,
    /// Inverse regularisation strength: the SVMs' C; logistic regression's L2 penalty is 1/C. Default 1.
    pub c: f64,
    /// RBF width γ in exp(−γ‖x − x′‖²). None = scikit-learn's "scale": 1 / (width · variance of X).
    pub gamma: Option<f64>,
    /// Trees of the forest (default 100).
    pub trees: usize,
    /// Depth limit of the forest's trees (None = grow until pure).
    pub max_depth: Option<u16>,
    /// Neighbours of k-NN (default 5).
    pub k: usize,
    /// L-BFGS iterations of logistic regression (default 100).
    pub max_iterations: u64,
}

impl Default for ClassicalSpec {
    fn default() -> Self {
        ClassicalSpec { pca: None, c: 1.0, gamma: None, trees: 100, max_depth: None, k: 5, max_iterations: 100 }
    }
}

fn bad(name: &'static str, value: impl ToString, reason: &str) -> Error {
    Error::Param { name, value: value.to_string(), reason: reason.into() }
}

impl ParamGuard for ClassicalSpec {
    fn check_ref(&self) -> Result<()> {
        if self.pca == Some(0) {
            return Err(bad("pca", 0, "must be ≥ 1 component"));
        }
        if !(self.c.is_finite() && self.c > 0.0) {
            return Err(bad("c", self.c, "must be > 0"));
        }
        if let Some(g) = self.gamma.filter(|g| !(g.is_finite() && *g > 0.0)) {
            return Err(bad("gamma", g, "must be > 0"));
        }
        if self.trees == 0 || self.trees > u16::MAX as usize {
            return Err(bad("trees", self.trees, "must be in 1..=65535"));
        }
        if self.max_depth == Some(0) {
            return Err(bad("max_depth", 0, "must be ≥ 1"));
        }
        if self.k == 0 {
            return Err(bad("k", 0, "must be ≥ 1"));
        }
        if self.max_iterations == 0 {
            return Err(bad("max_iterations", 0, "must be ≥ 1"));
        }
        Ok(())
    }
}

/// Training data of a head: cached features (N, h, w, c) and labels, optional validation split.
pub struct Data<'a> {
    pub x: &'a ArrayD<f32>,
    pub y: &'a [usize],
    pub val: Option<(&'a ArrayD<f32>, &'a [usize])>,
    pub classes: usize,
}

impl Data<'_> {
    fn validate(&self) -> Result<()> {
        if self.x.ndim() < 2 || self.x.shape()[0] != self.y.len() || self.y.is_empty() {
            return Err(Error::Shape {
                what: "training features vs labels".into(),
                expected: vec![self.y.len()],
                got: self.x.shape().to_vec(),
            });
        }
        let mut seen = vec![false; self.classes];
        for &l in self.y {
            *seen.get_mut(l).ok_or_else(|| bad("labels", l, "label outside the class list"))? = true;
        }
        if let Some(missing) = seen.iter().position(|s| !s) {
            return Err(bad("labels", missing, "a class has no training sample"));
        }
        Ok(())
    }
}

/// What fitting a head produces: its ONNX graph, a history (one row per epoch for the dense head,
/// one summary row for the others), and a one-line description.
pub struct Trained {
    pub model: ModelProto,
    pub history: Vec<Epoch>,
    pub describe: String,
    pub params: usize,
}

/// A head that can be fitted on cached features (the shared `Fit` of the zoo).
pub trait Head {
    /// Fit on `data`; epochs and notes go to `sink`.
    fn fit(&self, data: &Data, seed: u64, sink: &dyn Sink) -> Result<Trained>;
}

/// A fitted classical model on prepared rows (pooled, standardised, projected).
pub trait Fitted {
    /// Class probabilities by the library's own prediction path: (N, 1) = P(class 1) for two
    /// classes, else (N, C).
    fn predict_proba(&self, x: ArrayView2<f64>) -> Array2<f64>;
    /// The same function as ONNX nodes on `x` (N, d) float32; returns the output's name.
    fn emit(&self, b: &mut GraphBuilder, x: &str) -> Result<String>;
    fn describe(&self) -> String;
    /// Stored numbers (weights, support vectors, tree nodes, training rows).
    fn params(&self) -> usize;
    /// The library's own class predictions where [`Self::predict_proba`] is computed by tlearn
    /// from the library's model rather than by the library (the forest's vote fractions); None
    /// elsewhere.
    fn library_labels(&self, _x: ArrayView2<f64>) -> Option<Vec<usize>> {
        None
    }
}

/// Fits one kind of classical model on prepared rows (the zoo's `Fit`, below [`Head`]).
pub trait Fit {
    fn fit(&self, x: ArrayView2<f64>, y: &[usize], classes: usize, seed: u64) -> Result<Box<dyn Fitted>>;
}

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

    /// Fit and return the prepared-rows model too (tests compare it with the graph).
    pub fn fit_model(&self, data: &Data, seed: u64) -> Result<(Prep, Box<dyn Fitted>, ModelProto)> {
        data.validate()?;
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
        let history = vec![Epoch { epoch: 1, loss, accuracy, val_loss, val_accuracy, seconds }];
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

/// The head of `kind` (the dense one trains with `fit` and `opts`).
pub fn head(
    kind: HeadKind,
    spec: &Checked<HeadSpec>,
    classical: &Checked<ClassicalSpec>,
    fit: &Checked<crate::train::FitConfig>,
    opts: &crate::runtime::SessionOptions,
    checkpoint: Option<crate::train::learner::Checkpointing>,
) -> Box<dyn Head> {
    match kind {
        HeadKind::Dense => {
            Box::new(dense::Dense { spec: spec.clone(), fit: fit.clone(), opts: opts.clone(), checkpoint })
        }
        _ => Box::new(Classical { kind, spec: spec.clone(), classical: classical.clone() }),
    }
}

/// ndarray 0.17 (ours, ort's) → 0.16 (linfa's).
pub(crate) fn to16(a: ArrayView2<f64>) -> ndarray16::Array2<f64> {
    ndarray16::Array2::from_shape_vec(a.dim(), a.iter().copied().collect()).expect("shape of a view")
}

/// `p` (N, C) → column 1 as (N, 1) when two classes (the sigmoid heads' convention), else itself.
pub(crate) fn binary_column(p: Array2<f64>, classes: usize) -> Array2<f64> {
    if classes == 2 {
        p.slice(ndarray::s![.., 1..2]).to_owned()
    } else {
        p
    }
}

/// The graph's counterpart of [`binary_column`].
pub(crate) fn emit_binary_column(b: &mut GraphBuilder, p: &str, classes: usize) -> String {
    if classes != 2 {
        return p.into();
    }
    let st = b.const_i64("col_start", &[1]);
    let en = b.const_i64("col_end", &[2]);
    let ax = b.const_i64("col_axis", &[1]);
    b.op("Slice", &[p, &st, &en, &ax], vec![])
}

/// Squared Euclidean distances (N, M) from rows `x` (graph, (N, d)) to the constant rows `t` (M × d):
/// ‖x‖² + ‖t‖² − 2·x·tᵀ, clamped at 0.
pub(crate) fn emit_sq_distances(b: &mut GraphBuilder, x: &str, t: &Array2<f32>) -> String {
    let tt = t.map_axis(Axis(1), |r| r.dot(&r)).insert_axis(Axis(0));
    let tt = b.const_arr_f32(&format!("{}sq_norms", prep::FROZEN), &tt.into_dyn());
    let tm = b.const_arr_f32(&format!("{}rows_t", prep::FROZEN), &(t.t().mapv(|v| -2.0 * v)).into_dyn());
    let xx = b.op("ReduceSumSquare", &[x], vec![("axes", A::Ints(vec![1])), ("keepdims", A::I(1))]);
    let xt = b.op("MatMul", &[x, &tm], vec![]);
    let d = b.op("Add", &[&xt, &xx], vec![]);
    let d = b.op("Add", &[&d, &tt], vec![]);
    let zero = b.const_f32("zero", 0.0);
    b.op("Max", &[&d, &zero], vec![])
}

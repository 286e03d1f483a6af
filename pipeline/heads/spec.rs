//! What every head shares: its graph's names, the settings (`HeadSpec`, `HeadKind`,
//! `ClassicalSpec`, `Pool`), its training data, what fitting produces, and the traits a head
//! and a classical model implement.

use crate::error::{Error, Result};
use crate::history::Epoch;
use crate::onnx::proto::ModelProto;
use crate::onnx::GraphBuilder;
use crate::params::ParamGuard;
use crate::progress::Sink;
use ndarray::{Array2, ArrayD, ArrayView2};
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
    /// What the output models: unordered classes, or ordered ones (a cumulative-link output).
    #[serde(default, skip_serializing_if = "Target::is_classes")]
    pub target: Target,
}

/// What a head's output models.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Target {
    /// Unordered classes: a sigmoid (two) or a softmax over them.
    #[default]
    Classes,
    /// Classes in the order of their folder names' sort (grades, levels): one score and K−1
    /// ordered thresholds (a cumulative-link model), K probabilities out.
    Ordinal,
}

impl Target {
    fn is_classes(&self) -> bool {
        *self == Target::Classes
    }
}

impl crate::params::Choice for Target {
    const ALL: &'static [(Self, &'static str, &'static str)] = &[
        (Target::Classes, "classes", "unordered classes: sigmoid (two) or softmax"),
        (Target::Ordinal, "ordinal", "ordered classes (sorted by name): one score, K−1 ordered thresholds"),
    ];
}

impl Default for HeadSpec {
    fn default() -> Self {
        HeadSpec {
            units: 256,
            layers: 1,
            dropout: 0.5,
            pool: Pool::Flatten,
            standardize: false,
            target: Target::Classes,
        }
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

pub(crate) fn bad(name: &'static str, value: impl ToString, reason: &str) -> Error {
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
    pub(crate) fn validate(&self) -> Result<()> {
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

/// How the (h, w, c) feature map is reduced before the dense layers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Pool {
    /// Flatten h·w·c (the classic head).
    #[default]
    Flatten,
    /// Global average pooling over h and w.
    Avg,
    /// Global max pooling over h and w.
    Max,
}

impl crate::params::Choice for Pool {
    const ALL: &'static [(Self, &'static str, &'static str)] = &[
        (Pool::Flatten, "flatten", "Flatten h·w·c (the classic head)"),
        (Pool::Avg, "avg", "Global average pooling over h and w"),
        (Pool::Max, "max", "Global max pooling over h and w"),
    ];
}

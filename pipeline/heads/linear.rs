//! Logistic regression (linfa-logistic) and SVMs with Platt-scaled probabilities (linfa-svm),
//! compiled to ONNX as affine maps (and an RBF kernel) followed by sigmoid or softmax.

use super::ops::{emit_sq_distances, to16};
use super::spec::{bad, Fit, Fitted};
use crate::error::{Error, Result};
use crate::onnx::builder::A;
use crate::onnx::GraphBuilder;
use linfa::dataset::Pr;
use linfa::traits::{Fit as _, Predict as _};
use ndarray::{Array1, Array2, ArrayView2, Axis};

fn lib_err(what: &str, e: impl std::fmt::Display) -> Error {
    Error::Other(format!("{what}: {e}"))
}

fn to17(a: &ndarray16::Array2<f64>) -> Array2<f64> {
    Array2::from_shape_vec(a.dim(), a.iter().copied().collect()).expect("same shape")
}

/// `x · w + b` as a Gemm with float32 constants.
fn emit_affine(b: &mut GraphBuilder, x: &str, w: &Array2<f64>, bias: &Array1<f64>) -> String {
    let w = b.const_arr_f32("weights", &w.mapv(|v| v as f32).into_dyn());
    let bias = b.const_arr_f32("bias", &bias.mapv(|v| v as f32).into_dyn());
    b.op("Gemm", &[x, &w, &bias], vec![])
}

/// L2-regularised logistic regression; penalty 1/C (scikit-learn's C).
pub struct Logistic {
    pub c: f64,
    pub max_iterations: u64,
}

enum LogisticModel {
    /// P(class 1) = σ(x·w + b); `flip` when linfa's positive class is class 0.
    Binary {
        m: linfa_logistic::FittedLogisticRegression<f64, usize>,
        flip: bool,
    },
    Multi(linfa_logistic::MultiFittedLogisticRegression<f64, usize>),
}

struct FittedLogistic(LogisticModel);

impl Fit for Logistic {
    fn fit(&self, x: ArrayView2<f64>, y: &[usize], classes: usize, _seed: u64) -> Result<Box<dyn Fitted>> {
        let x = to16(x);
        let y = ndarray16::Array1::from_iter(y.iter().copied());
        let ds = linfa::Dataset::new(x, y);
        let model = if classes == 2 {
            let m = linfa_logistic::LogisticRegression::default()
                .alpha(1.0 / self.c)
                .max_iterations(self.max_iterations)
                .fit(&ds)
                .map_err(|e| lib_err("logistic regression", e))?;
            let flip = m.labels().pos.class == 0;
            LogisticModel::Binary { m, flip }
        } else {
            let m = linfa_logistic::MultiLogisticRegression::default()
                .alpha(1.0 / self.c)
                .max_iterations(self.max_iterations)
                .fit(&ds)
                .map_err(|e| lib_err("logistic regression", e))?;
            LogisticModel::Multi(m)
        };
        Ok(Box::new(FittedLogistic(model)))
    }
}

impl FittedLogistic {
    /// (w (d × P), b (P)) of the logits.
    fn affine(&self) -> (Array2<f64>, Array1<f64>) {
        match &self.0 {
            LogisticModel::Binary { m, flip } => {
                let s = if *flip { -1.0 } else { 1.0 };
                let w = Array1::from_iter(m.params().iter().map(|v| s * v)).insert_axis(Axis(1));
                (w, Array1::from_elem(1, s * m.intercept()))
            }
            LogisticModel::Multi(m) => (to17(m.params()), Array1::from_iter(m.intercept().iter().copied())),
        }
    }
}

impl Fitted for FittedLogistic {
    fn predict_proba(&self, x: ArrayView2<f64>) -> Array2<f64> {
        let x = to16(x);
        match &self.0 {
            LogisticModel::Binary { m, flip } => {
                let p = m.predict_probabilities(&x);
                Array2::from_shape_fn((p.len(), 1), |(i, _)| if *flip { 1.0 - p[i] } else { p[i] })
            }
            LogisticModel::Multi(m) => to17(&m.predict_probabilities(&x)),
        }
    }

    fn emit(&self, b: &mut GraphBuilder, x: &str) -> Result<String> {
        let (w, bias) = self.affine();
        let z = emit_affine(b, x, &w, &bias);
        Ok(match self.0 {
            LogisticModel::Binary { .. } => b.op("Sigmoid", &[&z], vec![]),
            LogisticModel::Multi(_) => b.op("Softmax", &[&z], vec![("axis", A::I(-1))]),
        })
    }

    fn describe(&self) -> String {
        let (w, _) = self.affine();
        format!("LogisticRegression({} → {})", w.nrows(), w.ncols())
    }

    fn params(&self) -> usize {
        let (w, b) = self.affine();
        w.len() + b.len()
    }
}

#[derive(Clone, Copy, Debug)]
pub enum Kernel {
    Linear,
    /// γ; None = 1 / (d · var(X)) (scikit-learn's "scale").
    Rbf(Option<f64>),
}

/// C-SVM (linfa-svm's SMO, tolerance 1e-3 as libsvm) with Platt scaling; one-vs-rest when > 2 classes.
pub struct Svm {
    pub c: f64,
    pub kernel: Kernel,
}

/// What the emitted graph needs of one binary problem, read from linfa's serialised model
/// (its fields are private): decision f(x) = Σ αᵢ K(svᵢ, x) − ρ (or w·x − ρ), P = 1/(1 + e^(A·f + B)).
struct Problem {
    model: linfa_svm::Svm<f64, Pr>,
    /// Linear: w (d). Rbf: support vectors (M × d) and their α (M).
    w: Option<Array1<f64>>,
    sv: Option<(Array2<f64>, Array1<f64>)>,
    rho: f64,
    platt: (f64, f64),
}

struct FittedSvm {
    problems: Vec<Problem>,
    /// RBF: the kernel's ε in exp(−‖x − x′‖² / ε) (= 1/γ).
    eps: Option<f64>,
    classes: usize,
}

fn array_from_json(v: &serde_json::Value, what: &str) -> Result<(Vec<usize>, Vec<f64>)> {
    let err = || Error::Other(format!("linfa-svm's serialised {what} has an unexpected form"));
    let dim = v.get("dim").and_then(|d| d.as_array()).ok_or_else(err)?;
    let data = v.get("data").and_then(|d| d.as_array()).ok_or_else(err)?;
    let dim: Vec<usize> = dim.iter().map(|d| d.as_u64().map(|d| d as usize)).collect::<Option<_>>().ok_or_else(err)?;
    let data: Vec<f64> = data.iter().map(|d| d.as_f64()).collect::<Option<_>>().ok_or_else(err)?;
    if dim.iter().product::<usize>() != data.len() {
        return Err(err());
    }
    Ok((dim, data))
}

impl Problem {
    fn new(model: linfa_svm::Svm<f64, Pr>) -> Result<Problem> {
        let v = serde_json::to_value(&model).map_err(|e| lib_err("serialising the SVM", e))?;
        let err = |what: &str| Error::Other(format!("linfa-svm's serialised model lacks {what}"));
        let rho = v["rho"].as_f64().ok_or_else(|| err("rho"))?;
        let pc = v["probability_coeffs"].as_array().ok_or_else(|| err("Platt coefficients"))?;
        let platt = (pc[0].as_f64().ok_or_else(|| err("Platt A"))?, pc[1].as_f64().ok_or_else(|| err("Platt B"))?);
        let hp = &v["sep_hyperplane"];
        let (mut w, mut sv) = (None, None);
        if let Some(lin) = hp.get("Linear") {
            let (_, data) = array_from_json(lin, "hyperplane")?;
            w = Some(Array1::from(data));
        } else if let Some(comb) = hp.get("WeightedCombination") {
            let (dim, data) = array_from_json(comb, "support vectors")?;
            let svs = Array2::from_shape_vec((dim[0], dim[1]), data).expect("checked");
            // `weighted_sum` pairs the stored rows with the α that are not ~0, in order.
            let alpha: Vec<f64> = model.alpha.iter().copied().filter(|a| a.abs() > 100.0 * f64::EPSILON).collect();
            if alpha.len() != svs.nrows() {
                return Err(Error::Other(format!(
                    "linfa-svm: {} support vectors but {} non-zero α",
                    svs.nrows(),
                    alpha.len()
                )));
            }
            sv = Some((svs, Array1::from(alpha)));
        } else {
            return Err(err("a separating hyperplane"));
        }
        Ok(Problem { model, w, sv, rho, platt })
    }
}

impl Fit for Svm {
    fn fit(&self, x: ArrayView2<f64>, y: &[usize], classes: usize, _seed: u64) -> Result<Box<dyn Fitted>> {
        let eps = match self.kernel {
            Kernel::Linear => None,
            Kernel::Rbf(gamma) => {
                let gamma = gamma.unwrap_or_else(|| {
                    let var = x.var(0.0);
                    if var > 0.0 {
                        1.0 / (x.ncols() as f64 * var)
                    } else {
                        1.0
                    }
                });
                Some(1.0 / gamma)
            }
        };
        let x16 = to16(x);
        let positives: Vec<usize> = if classes == 2 { vec![1] } else { (0..classes).collect() };
        let problems = positives
            .iter()
            .map(|&pos| {
                let t = ndarray16::Array1::from_iter(y.iter().map(|&l| l == pos));
                let ds = linfa::Dataset::new(x16.clone(), t);
                let p = linfa_svm::Svm::<f64, Pr>::params().pos_neg_weights(self.c, self.c).eps(1e-3);
                let p = match eps {
                    Some(e) => p.gaussian_kernel(e),
                    None => p.linear_kernel(),
                };
                let m = p.fit(&ds).map_err(|e| lib_err("SVM", e))?;
                Problem::new(m)
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Box::new(FittedSvm { problems, eps, classes }))
    }
}

impl Fitted for FittedSvm {
    fn predict_proba(&self, x: ArrayView2<f64>) -> Array2<f64> {
        let x = to16(x);
        let mut p = Array2::from_shape_fn((x.nrows(), self.problems.len()), |(i, j)| {
            *self.problems[j].model.predict(x.row(i)) as f64
        });
        if self.classes > 2 {
            for mut r in p.rows_mut() {
                let s = r.sum();
                r /= s;
            }
        }
        p
    }

    fn emit(&self, b: &mut GraphBuilder, x: &str) -> Result<String> {
        // The logit of problem j is −(A·f + B) = (−A)·f + (A·ρ − B): fold it into one affine map.
        let scale = Array1::from_iter(self.problems.iter().map(|p| -p.platt.0));
        let bias = Array1::from_iter(self.problems.iter().map(|p| p.platt.0 * p.rho - p.platt.1));
        let z = match self.eps {
            None => {
                let d = self.problems[0].w.as_ref().map(|w| w.len()).unwrap_or(0);
                let mut w = Array2::zeros((d, self.problems.len()));
                for (j, p) in self.problems.iter().enumerate() {
                    let pw = p.w.as_ref().ok_or_else(|| bad("svm", "linear", "model has no hyperplane"))?;
                    w.column_mut(j).assign(&(pw * scale[j]));
                }
                emit_affine(b, x, &w, &bias)
            }
            Some(eps) => {
                // One kernel matrix over all problems' support vectors; a block matrix of α.
                let svs: Vec<&(Array2<f64>, Array1<f64>)> = self
                    .problems
                    .iter()
                    .map(|p| p.sv.as_ref().ok_or_else(|| bad("rbf", "kernel", "model has no support vectors")))
                    .collect::<Result<_>>()?;
                let views: Vec<_> = svs.iter().map(|s| s.0.view()).collect();
                let all = ndarray::concatenate(Axis(0), &views).map_err(|e| lib_err("support vectors", e))?;
                let mut coef = Array2::zeros((all.nrows(), self.problems.len()));
                let mut row = 0;
                for (j, s) in svs.iter().enumerate() {
                    for &a in s.1.iter() {
                        coef[[row, j]] = a * scale[j];
                        row += 1;
                    }
                }
                let d2 = emit_sq_distances(b, x, &all.mapv(|v| v as f32));
                let k = b.const_f32("neg_inv_eps", (-1.0 / eps) as f32);
                let e = b.op("Mul", &[&d2, &k], vec![]);
                let kx = b.op("Exp", &[&e], vec![]);
                emit_affine(b, &kx, &coef, &bias)
            }
        };
        let p = b.op("Sigmoid", &[&z], vec![]);
        if self.classes == 2 {
            return Ok(p);
        }
        let axis = b.const_i64("axis", &[1]);
        let s = b.op("ReduceSum", &[&p, &axis], vec![("keepdims", A::I(1))]);
        Ok(b.op("Div", &[&p, &s], vec![]))
    }

    fn describe(&self) -> String {
        let what = match self.eps {
            None => "linear".to_string(),
            Some(e) => format!("rbf γ={:.3e}", 1.0 / e),
        };
        let n: Vec<String> = self.problems.iter().map(|p| p.model.nsupport().to_string()).collect();
        format!("SVM({what}, {} support vectors{})", n.join("+"), if self.classes > 2 { ", one-vs-rest" } else { "" })
    }

    fn params(&self) -> usize {
        self.problems
            .iter()
            .map(|p| {
                p.w.as_ref().map(|w| w.len()).unwrap_or(0)
                    + p.sv.as_ref().map(|s| s.0.len() + s.1.len()).unwrap_or(0)
                    + 3
            })
            .sum()
    }
}

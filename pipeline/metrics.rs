//! Classification metrics: loss, accuracy, per-class precision/recall/F1, confusion matrix, ROC-AUC.

use ndarray::{ArrayD, ArrayView1, Axis};
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct ClassMetrics {
    pub class: String,
    pub precision: f64,
    pub recall: f64,
    pub f1: f64,
    pub support: usize,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Metrics {
    pub n_test: usize,
    pub accuracy: f64,
    /// Cross-entropy with probabilities clipped to [1e-7, 1 − 1e-7] (Keras).
    pub loss: f64,
    pub per_class: Vec<ClassMetrics>,
    pub macro_f1: f64,
    /// Rows: true class, columns: predicted class.
    pub confusion: Vec<Vec<usize>>,
    /// Binary only: area under the ROC curve of the positive class (index 1).
    pub roc_auc: Option<f64>,
}

const EPS: f64 = 1e-7;

/// Probability of each class from one row of model outputs: a sigmoid output p becomes (1−p, p).
pub fn row_probs(r: ArrayView1<'_, f32>) -> Vec<f64> {
    if r.is_empty() {
        vec![]
    } else if r.len() == 1 {
        vec![1.0 - r[0] as f64, r[0] as f64]
    } else {
        r.iter().map(|&v| v as f64).collect()
    }
}

/// The predicted class of one row: sigmoid p ≥ 0.5 → 1, else the first most probable class.
pub fn predicted_class(r: ArrayView1<'_, f32>) -> usize {
    if r.len() == 1 {
        (r[0] >= 0.5) as usize
    } else {
        r.iter().enumerate().fold((0, f32::MIN), |a, (i, &v)| if v > a.1 { (i, v) } else { a }).0
    }
}

/// Outputs per image a classifier of `classes` classes gives: one sigmoid for two, else one
/// probability per class.
pub fn output_width(classes: usize) -> usize {
    if classes == 2 {
        1
    } else {
        classes
    }
}

/// Refuse outputs of `model` that are not (N, [`output_width`]) for `classes` classes (a head
/// trained on other classes, a swapped file) before any row is read by class index.
pub fn check_width(probs: &ArrayD<f32>, classes: usize, model: &std::path::Path) -> crate::Result<()> {
    let k = output_width(classes);
    if probs.ndim() != 2 || probs.shape()[1] != k {
        return Err(crate::Error::BadModel {
            path: model.into(),
            reason: format!(
                "outputs of shape {:?}, but its {classes} classes need (N, {k}); the model does not match its class list",
                probs.shape()
            ),
        });
    }
    Ok(())
}

/// The outputs of each row (sample) as one vector, whatever the rank of the outputs (a model's
/// (N, k), or an unusual (N) or (N, 1, k) that [`check_width`] refuses where it matters).
fn rows(probs: &ArrayD<f32>) -> impl Iterator<Item = ndarray::Array1<f32>> + '_ {
    let rows = if probs.ndim() == 0 { 0 } else { probs.shape()[0] };
    (0..rows).map(|i| probs.index_axis(Axis(0), i).iter().copied().collect())
}

/// Probability of each class for each row.
pub fn class_probs(probs: &ArrayD<f32>) -> Vec<Vec<f64>> {
    rows(probs).map(|r| row_probs(r.view())).collect()
}

/// Predicted class of each row of model outputs.
pub fn predicted(probs: &ArrayD<f32>) -> Vec<usize> {
    rows(probs).map(|r| predicted_class(r.view())).collect()
}

pub fn accuracy(pred: &[usize], labels: &[usize]) -> f64 {
    pred.iter().zip(labels).filter(|(a, b)| a == b).count() as f64 / labels.len().max(1) as f64
}

/// Mean cross-entropy of per-class probabilities, clipped to [1e-7, 1 − 1e-7] (Keras).
fn cross_entropy(p: &[Vec<f64>], labels: &[usize]) -> f64 {
    let prob = |r: &Vec<f64>, t: usize| r.get(t).copied().unwrap_or(0.0);
    labels.iter().zip(p).map(|(&t, r)| -(prob(r, t).clamp(EPS, 1.0 - EPS)).ln()).sum::<f64>()
        / labels.len().max(1) as f64
}

/// (loss, accuracy) of model outputs, as [`compute`] reports them.
pub fn loss_accuracy(probs: &ArrayD<f32>, labels: &[usize]) -> (f64, f64) {
    (cross_entropy(&class_probs(probs), labels), accuracy(&predicted(probs), labels))
}

impl Metrics {
    /// The confusion matrix with each row divided by its true class's count: row i holds the
    /// share of class i's images predicted as each class (its recall on the diagonal), so a rare
    /// class's row reads like a common one's. A class with no images has a row of zeros.
    pub fn confusion_normalized(&self) -> Vec<Vec<f64>> {
        normalized_rows(&self.confusion)
    }
}

/// Each row of `m` divided by its sum (a row summing to 0 stays 0).
pub fn normalized_rows(m: &[Vec<usize>]) -> Vec<Vec<f64>> {
    m.iter()
        .map(|row| {
            let n = row.iter().sum::<usize>().max(1) as f64;
            row.iter().map(|&c| c as f64 / n).collect()
        })
        .collect()
}

pub fn compute(probs: &ArrayD<f32>, labels: &[usize], classes: &[String]) -> Metrics {
    let p = class_probs(probs);
    let k = classes.len();
    let pred: Vec<usize> = predicted(probs);
    let mut confusion = vec![vec![0usize; k]; k];
    for (&t, &q) in labels.iter().zip(&pred) {
        confusion[t][q] += 1;
    }
    let n = labels.len();
    let loss = cross_entropy(&p, labels);
    let per_class: Vec<ClassMetrics> = (0..k)
        .map(|c| {
            let tp = confusion[c][c] as f64;
            let predicted: f64 = (0..k).map(|r| confusion[r][c]).sum::<usize>() as f64;
            let support: usize = confusion[c].iter().sum();
            let precision = if predicted > 0.0 { tp / predicted } else { 0.0 };
            let recall = if support > 0 { tp / support as f64 } else { 0.0 };
            let f1 = if precision + recall > 0.0 { 2.0 * precision * recall / (precision + recall) } else { 0.0 };
            ClassMetrics { class: classes[c].clone(), precision, recall, f1, support }
        })
        .collect();
    let macro_f1 = per_class.iter().map(|c| c.f1).sum::<f64>() / k.max(1) as f64;
    let roc_auc = (k == 2)
        .then(|| {
            roc_auc(&p.iter().map(|r| r[1]).collect::<Vec<_>>(), &labels.iter().map(|&l| l == 1).collect::<Vec<_>>())
        })
        .flatten();
    Metrics { n_test: n, accuracy: accuracy(&pred, labels), loss, per_class, macro_f1, confusion, roc_auc }
}

/// The ROC curve as (false-positive rate, true-positive rate) points from (0, 0) to (1, 1), one per
/// distinct score (ties move diagonally); empty without both classes.
pub fn roc_points(scores: &[f64], positive: &[bool]) -> Vec<(f64, f64)> {
    let n_pos = positive.iter().filter(|&&p| p).count() as f64;
    let n_neg = positive.len() as f64 - n_pos;
    if n_pos == 0.0 || n_neg == 0.0 {
        return vec![];
    }
    let mut idx: Vec<usize> = (0..scores.len()).collect();
    idx.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]));
    let (mut tp, mut fp) = (0.0, 0.0);
    let mut pts = vec![(0.0, 0.0)];
    for (k, &i) in idx.iter().enumerate() {
        if positive[i] {
            tp += 1.0;
        } else {
            fp += 1.0;
        }
        if idx.get(k + 1).is_none_or(|&j| scores[j] != scores[i]) {
            pts.push((fp / n_neg, tp / n_pos));
        }
    }
    pts
}

/// ROC-AUC by the rank statistic (ties get average ranks); None without both classes.
pub fn roc_auc(scores: &[f64], positive: &[bool]) -> Option<f64> {
    let n_pos = positive.iter().filter(|&&p| p).count();
    let n_neg = positive.len() - n_pos;
    if n_pos == 0 || n_neg == 0 {
        return None;
    }
    let mut idx: Vec<usize> = (0..scores.len()).collect();
    idx.sort_by(|&a, &b| scores[a].total_cmp(&scores[b]));
    let mut ranks = vec![0.0; scores.len()];
    let mut i = 0;
    while i < idx.len() {
        let mut j = i;
        while j + 1 < idx.len() && scores[idx[j + 1]] == scores[idx[i]] {
            j += 1;
        }
        let r = (i + j) as f64 / 2.0 + 1.0;
        for &t in &idx[i..=j] {
            ranks[t] = r;
        }
        i = j + 1;
    }
    let sum_pos: f64 = ranks.iter().zip(positive).filter(|(_, &p)| p).map(|(r, _)| r).sum();
    Some((sum_pos - (n_pos * (n_pos + 1)) as f64 / 2.0) / (n_pos * n_neg) as f64)
}

/// ROC curves to draw: for two classes, class 1's; for more, one-vs-rest per class. A class whose
/// curve is undefined (no positive or no negative row) has none.
pub fn roc_curves(probs: &ArrayD<f32>, labels: &[usize], classes: &[String]) -> Vec<(String, Vec<(f64, f64)>)> {
    let p = class_probs(probs);
    let positives: Vec<usize> = if classes.len() == 2 { vec![1] } else { (0..classes.len()).collect() };
    positives
        .iter()
        .filter_map(|&c| {
            let scores: Vec<f64> = p.iter().map(|r| r[c]).collect();
            let pos: Vec<bool> = labels.iter().map(|&l| l == c).collect();
            let auc = roc_auc(&scores, &pos)?;
            Some((format!("{} (AUC {auc:.4})", classes[c]), roc_points(&scores, &pos)))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalized_rows_are_shares_of_each_true_class() {
        let m = vec![vec![3, 1], vec![0, 0], vec![2, 8]];
        assert_eq!(normalized_rows(&m), vec![vec![0.75, 0.25], vec![0.0, 0.0], vec![0.2, 0.8]]);
    }

    #[test]
    fn roc_auc_by_ranks() {
        let auc = roc_auc(&[0.1, 0.4, 0.35, 0.8], &[false, false, true, true]).unwrap();
        assert!((auc - 0.75).abs() < 1e-12);
        assert_eq!(roc_auc(&[0.5, 0.5], &[false, true]), Some(0.5));
        assert_eq!(roc_auc(&[0.5], &[true]), None);
    }

    #[test]
    fn metrics_confusion_and_f1() {
        let probs = ArrayD::from_shape_vec(ndarray::IxDyn(&[4, 1]), vec![0.9, 0.2, 0.7, 0.4]).unwrap();
        let m = compute(&probs, &[1, 0, 0, 1], &["a".into(), "b".into()]);
        assert_eq!(m.confusion, vec![vec![1, 1], vec![1, 1]]);
        assert_eq!(m.accuracy, 0.5);
        assert!((m.per_class[1].f1 - 0.5).abs() < 1e-12);
    }

    /// Outputs of rank 1 and 3 (a hole a read-through found): per-row probabilities and
    /// predictions, no panic; a width check names the shape.
    #[test]
    fn outputs_of_any_rank_give_probabilities_and_predictions() {
        use ndarray::IxDyn;
        let r1 = ArrayD::from_shape_vec(IxDyn(&[2]), vec![0.2f32, 0.9]).unwrap();
        assert_eq!(predicted(&r1), [0, 1]);
        let r3 = ArrayD::from_shape_vec(IxDyn(&[2, 1, 2]), vec![0.1f32, 0.9, 0.8, 0.2]).unwrap();
        assert_eq!(predicted(&r3), [1, 0]);
        assert_eq!(class_probs(&r3)[1], [0.800000011920929, 0.20000000298023224]);
        let e = check_width(&r3, 2, std::path::Path::new("m.onnx")).err().unwrap();
        assert!(e.to_string().contains("[2, 1, 2]"), "{e}");
    }
}

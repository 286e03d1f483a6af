//! Random forest (smartcore), compiled to ONNX-ML's `TreeEnsembleClassifier`: every leaf votes
//! 1/trees for its class, so the output is the fraction of the trees' votes.

use super::ops::{binary_column, emit_binary_column};
use super::spec::{Fit, Fitted};
use crate::error::{Error, Result};
use crate::onnx::builder::A;
use crate::onnx::GraphBuilder;
use ndarray::{Array2, ArrayView1, ArrayView2};
use smartcore::ensemble::random_forest_classifier::{RandomForestClassifier, RandomForestClassifierParameters};
use smartcore::linalg::basic::matrix::DenseMatrix;

type Model = RandomForestClassifier<f32, u32, DenseMatrix<f32>, Vec<u32>>;

pub struct Forest {
    pub trees: usize,
    pub max_depth: Option<u16>,
}

/// One node of a tree as smartcore stores it: a leaf (`children` None) outputs `class`; a split
/// sends x[feature] ≤ threshold to the first child.
#[derive(Clone, Debug)]
struct Node {
    class: usize,
    feature: usize,
    threshold: f64,
    children: Option<(usize, usize)>,
}

struct FittedForest {
    model: Model,
    trees: Vec<Vec<Node>>,
    classes: usize,
}

/// The trees of a fitted forest, read from its serde form (smartcore keeps them private).
fn read_trees(model: &Model) -> Result<Vec<Vec<Node>>> {
    let v = serde_json::to_value(model).map_err(|e| Error::Other(format!("serialising the forest: {e}")))?;
    let err = || Error::Other("smartcore's serialised forest has an unexpected form".into());
    let trees = v["trees"].as_array().ok_or_else(err)?;
    trees
        .iter()
        .map(|t| {
            let nodes = t["nodes"].as_array().ok_or_else(err)?;
            nodes
                .iter()
                .map(|n| {
                    let u = |k: &str| n[k].as_u64().map(|v| v as usize);
                    let children = match (u("true_child"), u("false_child")) {
                        (Some(a), Some(b)) => Some((a, b)),
                        (None, None) => None,
                        _ => return Err(err()),
                    };
                    Ok(Node {
                        class: u("output").ok_or_else(err)?,
                        feature: u("split_feature").ok_or_else(err)?,
                        threshold: n["split_value"].as_f64().unwrap_or(f64::NAN),
                        children,
                    })
                })
                .collect()
        })
        .collect()
}

impl Fit for Forest {
    fn fit(&self, x: ArrayView2<f64>, y: &[usize], classes: usize, seed: u64) -> Result<Box<dyn Fitted>> {
        let (n, d) = x.dim();
        let m = DenseMatrix::new(n, d, x.iter().map(|&v| v as f32).collect(), false)
            .map_err(|e| Error::Other(format!("forest input: {e}")))?;
        let labels: Vec<u32> = y.iter().map(|&l| l as u32).collect();
        let mut p = RandomForestClassifierParameters::default().with_n_trees(self.trees as u16).with_seed(seed);
        if let Some(depth) = self.max_depth {
            p = p.with_max_depth(depth);
        }
        let model = RandomForestClassifier::fit(&m, &labels, p).map_err(|e| Error::Other(format!("forest: {e}")))?;
        let trees = read_trees(&model)?;
        Ok(Box::new(FittedForest { model, trees, classes }))
    }
}

impl FittedForest {
    fn leaf(tree: &[Node], row: ArrayView1<f64>) -> usize {
        let mut i = 0;
        while let Some((yes, no)) = tree[i].children {
            // As smartcore compares: the f32 feature widened to f64 against the f64 threshold.
            i = if (row[tree[i].feature] as f32 as f64) <= tree[i].threshold { yes } else { no };
        }
        tree[i].class
    }
}

impl Fitted for FittedForest {
    fn predict_proba(&self, x: ArrayView2<f64>) -> Array2<f64> {
        let w = 1.0 / self.trees.len() as f64;
        let mut p = Array2::zeros((x.nrows(), self.classes));
        for (i, row) in x.rows().into_iter().enumerate() {
            for t in &self.trees {
                p[[i, Self::leaf(t, row)]] += w;
            }
        }
        binary_column(p, self.classes)
    }

    fn emit(&self, b: &mut GraphBuilder, x: &str) -> Result<String> {
        let w = 1.0 / self.trees.len() as f32;
        let (mut tree_ids, mut node_ids, mut features, mut values, mut modes) =
            (vec![], vec![], vec![], vec![], vec![]);
        let (mut yes, mut no) = (vec![], vec![]);
        let (mut c_tree, mut c_node, mut c_id, mut c_w) = (vec![], vec![], vec![], vec![]);
        for (t, tree) in self.trees.iter().enumerate() {
            for (i, n) in tree.iter().enumerate() {
                tree_ids.push(t as i64);
                node_ids.push(i as i64);
                features.push(n.feature as i64);
                // The largest float32 ≤ the f64 threshold: for float32 inputs, x ≤ t ⇔ x ≤ that value.
                let mut v = n.threshold as f32;
                if (v as f64) > n.threshold {
                    v = v.next_down();
                }
                values.push(if n.children.is_some() { v } else { 0.0 });
                let (a, c) = n.children.unwrap_or((0, 0));
                yes.push(a as i64);
                no.push(c as i64);
                modes.push(if n.children.is_some() { "BRANCH_LEQ" } else { "LEAF" }.to_string());
                if n.children.is_none() {
                    // Every leaf lists every class (weight 0 for the others), so ONNX Runtime never
                    // takes its one-class "binary" shortcut.
                    for k in 0..self.classes {
                        c_tree.push(t as i64);
                        c_node.push(i as i64);
                        c_id.push(k as i64);
                        c_w.push(if k == n.class { w } else { 0.0 });
                    }
                }
            }
        }
        let label = b.fresh("forest_label");
        let scores = b.fresh("forest_scores");
        b.ml_node(
            "TreeEnsembleClassifier",
            &[x],
            &[&label, &scores],
            vec![
                ("classlabels_int64s", A::Ints((0..self.classes as i64).collect())),
                ("nodes_treeids", A::Ints(tree_ids)),
                ("nodes_nodeids", A::Ints(node_ids)),
                ("nodes_featureids", A::Ints(features)),
                ("nodes_values", A::Floats(values)),
                ("nodes_modes", A::Strs(modes)),
                ("nodes_truenodeids", A::Ints(yes)),
                ("nodes_falsenodeids", A::Ints(no)),
                ("class_treeids", A::Ints(c_tree)),
                ("class_nodeids", A::Ints(c_node)),
                ("class_ids", A::Ints(c_id)),
                ("class_weights", A::Floats(c_w)),
                ("post_transform", A::S("NONE")),
            ],
        );
        Ok(emit_binary_column(b, &scores, self.classes))
    }

    fn describe(&self) -> String {
        let nodes: usize = self.trees.iter().map(|t| t.len()).sum();
        format!("RandomForest({} trees, {nodes} nodes)", self.trees.len())
    }

    fn params(&self) -> usize {
        self.trees.iter().map(|t| t.len()).sum::<usize>() * 2
    }

    /// smartcore's own `predict`: the majority vote.
    fn library_labels(&self, x: ArrayView2<f64>) -> Option<Vec<usize>> {
        let (n, d) = x.dim();
        let m = DenseMatrix::new(n, d, x.iter().map(|&v| v as f32).collect(), false).ok()?;
        Some(self.model.predict(&m).ok()?.into_iter().map(|c| c as usize).collect())
    }
}

//! An ensemble run: finished runs (any kind: heads, fine-tunes, fits) whose deployable models are
//! fused into one ONNX graph that outputs the mean of their probabilities. The folder holds the
//! fused `model.onnx` and the record naming each member and the model it had; a member changed
//! since is refused, so the ensemble's evaluation is always of the models it fused.

use super::fuse::{classifier_builder, finish, meta, rename, INPUT, OUTPUT};
use crate::error::{Error, Result};
use crate::fsutil;
use crate::imageio::Interpolation;
use crate::onnx::builder::A;
use crate::onnx::proto::ModelProto;
use crate::onnx::{self, Dim, GraphBuilder};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// One member of an ensemble: the run and the deployable model it had when fused.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Member {
    pub name: String,
    /// The member's folder: a sibling's name (resolved beside the ensemble's folder) or a path.
    pub dir: PathBuf,
    /// Its deployable model's side (images are fed at the ensemble's, resized in the graph).
    pub size: u32,
    pub model_sha256: String,
}

/// `run.json` of an ensemble run.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EnsembleRecord {
    pub members: Vec<Member>,
    pub classes: Vec<String>,
    /// The fused model's input side: the largest member's.
    pub size: u32,
    pub model_sha256: String,
    pub tlearn_version: String,
}

impl EnsembleRecord {
    /// The members as a person tells them apart: their run names, with the parent folder where
    /// two share a name (`tv-a/tune`, `tv-b/tune`: the fine-tunes of two fits), and the whole
    /// recorded folder where those are shared too.
    pub fn labels(&self) -> Vec<String> {
        let parent = |m: &Member| m.dir.parent().and_then(|p| p.file_name()).map(|p| p.to_string_lossy().into_owned());
        let with_parent = |m: &Member| match parent(m) {
            Some(p) => format!("{p}/{}", m.name),
            None => m.name.clone(),
        };
        let shared = |label: &dyn Fn(&Member) -> String, m: &Member| {
            self.members.iter().filter(|o| label(o) == label(m)).count() > 1
        };
        let name = |m: &Member| m.name.clone();
        self.members
            .iter()
            .map(|m| match (shared(&name, m), shared(&with_parent, m)) {
                (false, _) => m.name.clone(),
                (true, false) => with_parent(m),
                (true, true) => m.dir.display().to_string(),
            })
            .collect()
    }
}

impl Member {
    /// Where the member's folder is, for an ensemble in `ensemble_dir`.
    pub fn resolve(&self, ensemble_dir: &Path) -> PathBuf {
        if self.dir.components().count() == 1 && self.dir.is_relative() {
            fsutil::parent_dir(ensemble_dir).join(&self.dir)
        } else {
            self.dir.clone()
        }
    }

    /// How `dir` is recorded for an ensemble in `ensemble_dir`: by name when a sibling, else as
    /// an absolute path (the ensemble may be used from another folder).
    pub fn recorded_dir(dir: &Path, ensemble_dir: &Path) -> PathBuf {
        let real = |p: &Path| fsutil::real_path(p);
        let sibling = real(fsutil::parent_dir(dir)) == real(fsutil::parent_dir(ensemble_dir));
        match dir.file_name() {
            Some(name) if sibling => PathBuf::from(name),
            _ => real(dir),
        }
    }
}

/// One deployable model from the deployable `models` (with their paths, for messages) of the
/// same classes: the image fed to each (resized in the graph to a member's own side when it is
/// smaller than the largest), their probabilities averaged (ONNX `Mean`).
pub fn fuse_mean(models: &[(&ModelProto, &Path)]) -> Result<ModelProto> {
    let metas = models.iter().map(|(m, p)| meta(m, p)).collect::<Result<Vec<_>>>()?;
    let largest = metas.iter().max_by_key(|m| m.size).ok_or_else(|| Error::Other("an ensemble of no models".into()))?;
    let (size, interpolation, classes) = (largest.size, largest.interpolation, metas[0].classes.clone());
    for (mm, (_, path)) in metas.iter().zip(models) {
        if mm.classes != classes {
            return Err(Error::BadData {
                path: path.to_path_buf(),
                reason: format!(
                    "classes {} differ from the first member's {}: an ensemble averages the same classes in the \
                     same order",
                    mm.classes.join(", "),
                    classes.join(", ")
                ),
            });
        }
    }
    let k = crate::metrics::output_width(classes.len());
    let mut b = classifier_builder(size);
    let mut outs = Vec::with_capacity(models.len());
    for (i, ((m, _), mm)) in models.iter().zip(&metas).enumerate() {
        let prefix = format!("member{i}/");
        let input = if mm.size == size { INPUT.to_string() } else { emit_resize(&mut b, mm.size, mm.interpolation) };
        let out = format!("{prefix}{OUTPUT}");
        let keep = HashMap::from([(INPUT.to_string(), input), (OUTPUT.to_string(), out.clone())]);
        let g = rename(onnx::graph(m), &prefix, &keep);
        b.graph.node.extend(g.node);
        b.graph.initializer.extend(g.initializer);
        outs.push(out);
    }
    let outs: Vec<&str> = outs.iter().map(String::as_str).collect();
    b.node("Mean", &outs, &[OUTPUT], vec![]);
    b.output(OUTPUT, &[Dim::named("N"), Dim::Fixed(k as i64)]);
    let parts: Vec<&ModelProto> = models.iter().map(|(m, _)| *m).collect();
    finish(b, &parts, size, interpolation, &classes, &[])
}

/// The ensemble's input resized to `side`² for a smaller member (NHWC → NCHW for `Resize`, back).
fn emit_resize(b: &mut GraphBuilder, side: u32, interpolation: Interpolation) -> String {
    let nchw = b.op("Transpose", &[INPUT], vec![("perm", A::Ints(vec![0, 3, 1, 2]))]);
    let shape = b.op("Shape", &[INPUT], vec![]);
    let (start, end) = (b.const_i64("resize/n_start", &[0]), b.const_i64("resize/n_end", &[1]));
    let n = b.op("Slice", &[&shape, &start, &end], vec![]);
    let rest = b.const_i64(&format!("resize/{side}"), &[3, side as i64, side as i64]);
    let sizes = b.op("Concat", &[&n, &rest], vec![("axis", A::I(0))]);
    let mode = match interpolation {
        Interpolation::Nearest => "nearest",
        Interpolation::Bilinear => "linear",
    };
    let r = b.op("Resize", &[&nchw, "", "", &sizes], vec![("mode", A::S(mode))]);
    b.op("Transpose", &[&r], vec![("perm", A::Ints(vec![0, 2, 3, 1]))])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::{Device, SessionOptions};
    use ndarray::{Array4, ArrayD};

    /// A net of any input side: the image's mean colour → a logistic unit (weights `w`).
    fn net(w: [f32; 3]) -> ModelProto {
        let mut b = GraphBuilder::new("mean_colour");
        b.input("x", &[Dim::named("N"), Dim::named("H"), Dim::named("W"), Dim::Fixed(3)]);
        let m = b.op("ReduceMean", &["x"], vec![("axes", A::Ints(vec![1, 2])), ("keepdims", A::I(0))]);
        let wt = b.init_f32("w", &ndarray::Array2::from_shape_vec((3, 1), w.to_vec()).unwrap().into_dyn());
        let z = b.op("MatMul", &[&m, &wt], vec![]);
        b.node("Sigmoid", &[&z], &["p"], vec![]);
        b.output("p", &[Dim::named("N"), Dim::Fixed(1)]);
        onnx::model(b.finish(), "test")
    }

    fn probs(m: &ModelProto, x: &ArrayD<f32>) -> Vec<f32> {
        let bytes = onnx::encode_model(m);
        let opts = SessionOptions { device: Device::Cpu, threads: 1, precision: None };
        let mut s = crate::runtime::open(&bytes, Path::new("test.onnx"), &opts).unwrap().session;
        crate::runtime::run_f32(&mut s, vec![(INPUT, x.view())], &[OUTPUT]).unwrap().remove(0).into_iter().collect()
    }

    #[test]
    fn the_fused_model_averages_members_of_other_sizes() {
        let classes = ["a".to_string(), "b".to_string()];
        let at = |w, size| {
            super::super::fuse::deployable(&net(w), size, 3, 1.0 / 255.0, Interpolation::Nearest, &classes, &[])
        };
        let (big, small) = (at([0.02, -0.01, 0.005], 32).unwrap(), at([-0.03, 0.01, 0.02], 16).unwrap());
        let fused = fuse_mean(&[(&big, Path::new("big")), (&small, Path::new("small"))]).unwrap();
        assert_eq!(meta(&fused, Path::new("fused")).unwrap().size, 32, "fed at the largest member's side");
        // Flat colours: a mean colour any resize keeps, so each member's probability is known.
        let colours = [[200.0, 30.0, 90.0], [10.0, 240.0, 128.0]];
        let x = Array4::from_shape_fn((2, 32, 32, 3), |(n, _, _, c)| colours[n][c]).into_dyn();
        let x16 = Array4::from_shape_fn((2, 16, 16, 3), |(n, _, _, c)| colours[n][c]).into_dyn();
        let (pb, ps, pf) = (probs(&big, &x), probs(&small, &x16), probs(&fused, &x));
        for n in 0..2 {
            assert!((pf[n] - (pb[n] + ps[n]) / 2.0).abs() < 1e-6, "{pf:?} vs {pb:?} and {ps:?}");
            assert!((pb[n] - ps[n]).abs() > 1e-3, "the members differ, so the mean is a test");
        }
        let three = ["a".to_string(), "b".to_string(), "c".to_string()];
        let other =
            super::super::fuse::deployable(&net([0.0; 3]), 32, 3, 1.0, Interpolation::Nearest, &three, &[]).unwrap();
        let err = fuse_mean(&[(&big, Path::new("big")), (&other, Path::new("other"))]).unwrap_err().to_string();
        assert!(err.contains("other") && err.contains("a, b, c differ") && err.contains("same order"), "{err}");
    }

    #[test]
    fn members_sharing_a_name_are_told_apart_by_their_folder() {
        let m = |dir: &str| Member {
            name: Path::new(dir).file_name().unwrap().to_string_lossy().into_owned(),
            dir: dir.into(),
            size: 300,
            model_sha256: String::new(),
        };
        let e = |members| EnsembleRecord {
            members,
            classes: vec![],
            size: 300,
            model_sha256: String::new(),
            tlearn_version: String::new(),
        };
        let two = e(vec![m("/r/fit-a/tune"), m("/r/fit-b/tune"), m("lite1")]);
        assert_eq!(two.labels(), ["fit-a/tune", "fit-b/tune", "lite1"]);
        assert_eq!(e(vec![m("/r/fit-a/tune"), m("lite1")]).labels(), ["tune", "lite1"]);
        let deeper = e(vec![m("/a/fit/tune"), m("/b/fit/tune"), m("/b/other/tune")]);
        assert_eq!(deeper.labels(), ["/a/fit/tune", "/b/fit/tune", "other/tune"]);
    }
}

//! The head zoo: every classical head's ONNX graph computes what its library predicts, heads
//! learn separable data, hyper-parameters are checked, and the forest agrees with smartcore.

use ndarray::{ArrayD, IxDyn};
use rand::{Rng, SeedableRng};
use std::path::Path;
use tlearn::heads::{Classical, ClassicalSpec, Data, HeadKind};
use tlearn::heads::{HeadSpec, Pool};
use tlearn::params::ParamGuard;
use tlearn::runtime::{Device, SessionOptions};
use tlearn::Error;

const KINDS: [HeadKind; 5] = [HeadKind::Logistic, HeadKind::Svm, HeadKind::Rbf, HeadKind::Forest, HeadKind::Knn];

/// `n` feature maps (2, 2, 3) per class around class-specific centres, with noise.
fn blobs(classes: usize, n: usize, seed: u64) -> (ArrayD<f32>, Vec<usize>) {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let mut centres = rand_chacha::ChaCha8Rng::seed_from_u64(99);
    let c: Vec<Vec<f32>> = (0..classes).map(|_| (0..12).map(|_| centres.gen_range(-2.0..2.0)).collect()).collect();
    let labels: Vec<usize> = (0..classes * n).map(|i| i % classes).collect();
    let x = ArrayD::from_shape_fn(IxDyn(&[classes * n, 2, 2, 3]), |i| {
        let f = i[1] * 6 + i[2] * 3 + i[3];
        c[labels[i[0]]][f] + rng.gen_range(-1.0..1.0f32) + 5.0
    });
    (x, labels)
}

fn head(kind: HeadKind, pool: Pool, pca: Option<usize>) -> Classical {
    let spec = HeadSpec { pool, standardize: kind != HeadKind::Forest, ..Default::default() };
    let classical = ClassicalSpec { pca, trees: 25, ..Default::default() };
    Classical { kind, spec: spec.check().unwrap(), classical: classical.check().unwrap() }
}

fn onnx_predict(m: &tlearn::onnx::proto::ModelProto, x: &ArrayD<f32>) -> ArrayD<f32> {
    let opts = SessionOptions { device: Device::Cpu, threads: 1, precision: None };
    tlearn::train::predict(&tlearn::onnx::encode_model(m), Path::new("head.onnx"), x, 16, &opts).unwrap()
}

#[test]
fn every_classical_head_exports_what_its_library_predicts() {
    for classes in [2, 3] {
        let (x, y) = blobs(classes, 30, 1);
        let (tx, ty) = blobs(classes, 20, 2);
        for kind in KINDS {
            for (pool, pca) in [(Pool::Flatten, None), (Pool::Avg, None), (Pool::Flatten, Some(4))] {
                let what = format!("{kind:?}, {classes} classes, {pool:?}, pca {pca:?}");
                let data = Data { x: &x, y: &y, val: None, classes };
                let (prep, fitted, model) = head(kind, pool, pca).fit_model(&data, 7).unwrap();
                let lib = fitted.predict_proba(prep.apply(&tx).mapv(f64::from).view());
                let graph = onnx_predict(&model, &tx);
                let width = if classes == 2 { 1 } else { classes };
                assert_eq!(graph.shape(), &[tx.shape()[0], width], "{what}");
                let diff = graph.iter().zip(lib.iter()).map(|(a, b)| (*a as f64 - b).abs()).fold(0.0, f64::max);
                assert!(diff < 1e-4, "{what}: ONNX vs library max |Δp| = {diff}");
                let rows: Vec<f64> =
                    (0..graph.shape()[0]).map(|i| graph.slice(ndarray::s![i, ..]).sum() as f64).collect();
                if classes > 2 {
                    assert!(rows.iter().all(|s| (s - 1.0).abs() < 1e-4), "{what}: rows sum to 1: {rows:?}");
                }
                // Separable blobs: the class-1 probability must point the right way.
                let (_, acc) = tlearn::metrics::loss_accuracy(&graph, &ty);
                if pool != Pool::Avg {
                    assert!(acc >= 0.9, "{what}: test accuracy {acc}");
                }
            }
        }
    }
}

#[test]
fn forest_votes_agree_with_smartcore_and_follow_the_seed() {
    let (x, y) = blobs(3, 30, 3);
    let (tx, _) = blobs(3, 20, 4);
    let data = Data { x: &x, y: &y, val: None, classes: 3 };
    let (prep, fitted, model) = head(HeadKind::Forest, Pool::Flatten, None).fit_model(&data, 7).unwrap();
    let rows = prep.apply(&tx).mapv(f64::from);
    let p = fitted.predict_proba(rows.view());
    let lib = fitted.library_labels(rows.view()).expect("the forest reports smartcore's labels");
    let mut compared = 0;
    for (i, r) in p.rows().into_iter().enumerate() {
        let best = r.iter().cloned().fold(f64::MIN, f64::max);
        if r.iter().filter(|&&v| v == best).count() == 1 {
            let argmax = r.iter().position(|&v| v == best).unwrap();
            assert_eq!(argmax, lib[i], "row {i}: votes {r} vs smartcore");
            compared += 1;
        }
    }
    assert!(compared > 40, "{compared} untied rows");
    let again = head(HeadKind::Forest, Pool::Flatten, None).fit_model(&data, 7).unwrap().2;
    let other = head(HeadKind::Forest, Pool::Flatten, None).fit_model(&data, 8).unwrap().2;
    let bytes = tlearn::onnx::encode_model;
    assert_eq!(bytes(&model), bytes(&again), "same seed, same forest");
    assert_ne!(bytes(&model), bytes(&other), "another seed, another forest");
}

#[test]
fn classical_hyper_parameters_and_data_are_checked() {
    let (x, y) = blobs(2, 5, 5);
    let data = Data { x: &x, y: &y, val: None, classes: 2 };
    // The name of the parameter refused: by the check of the settings, or by the fit (limits
    // that depend on the data).
    let refused = |kind, cs: ClassicalSpec| -> &'static str {
        let e = cs.check().and_then(|cs| {
            let c = Classical { kind, spec: HeadSpec::default().check().unwrap(), classical: cs };
            c.fit_model(&data, 1).map(|_| ())
        });
        match e {
            Err(Error::Param { name, .. }) => name,
            other => panic!("expected a parameter error, got {:?}", other.err()),
        }
    };
    let d = ClassicalSpec::default;
    assert_eq!(refused(HeadKind::Svm, ClassicalSpec { c: 0.0, ..d() }), "c");
    assert_eq!(refused(HeadKind::Knn, ClassicalSpec { k: 11, ..d() }), "k");
    assert_eq!(refused(HeadKind::Logistic, ClassicalSpec { pca: Some(11), ..d() }), "pca");
    assert_eq!(refused(HeadKind::Rbf, ClassicalSpec { gamma: Some(-1.0), ..d() }), "gamma");
    assert_eq!(refused(HeadKind::Forest, ClassicalSpec { trees: 0, ..d() }), "trees");
    // A class without a training sample cannot be learned.
    let data3 = Data { x: &x, y: &y, val: None, classes: 3 };
    let c = Classical {
        kind: HeadKind::Logistic,
        spec: HeadSpec::default().check().unwrap(),
        classical: d().check().unwrap(),
    };
    match c.fit_model(&data3, 1).err() {
        Some(Error::Param { name: "labels", reason, .. }) => assert!(reason.contains("no training sample"), "{reason}"),
        other => panic!("expected the labels refused, got {other:?}"),
    }
}

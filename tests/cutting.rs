//! Backbones cut from ONNX models: the cut graph computes what the original does up to the cut,
//! multi-scale cuts pool and concatenate, `tlearn-backbone summary` and `add` name bad models, the
//! summary of a malformed model is an error, not a panic. (From `tests/pipeline.rs` and
//! `tests/units.rs`.)

mod common;
use common::*;
use ndarray::{ArrayD, Axis};
use tlearn::imageio::{self, Interpolation, Preprocess, PreprocessKind};

/// Lay out a split dataset with a tiny registered backbone; returns the feature folder.
#[test]
fn backbone_summary_and_bad_models() {
    let w = workdir();
    tiny_classifier(&w.path().join("tiny.onnx"), 3);
    ok(
        "tlearn-backbone",
        &["add", "tiny.onnx", "--output", "pool_out", "--preprocess", "tf", "--size", "32"],
        w.path(),
    );
    let s = ok("tlearn-backbone", &["summary", "tiny", "--size", "32"], w.path());
    assert!(s.contains("(None, 32, 32, 8)") && s.contains("(None, 16, 16, 8)"), "{s}");
    assert!(s.contains("Total params: 224"), "3·3·3·8 + 8 = 224: {s}");
    let list = ok("tlearn-backbone", &["list"], w.path());
    assert!(list.contains("tiny") && list.contains("vgg16"), "{list}");
    not_image_model(&w.path().join("vec.onnx"));
    let err = fails("tlearn-backbone", &["add", "vec.onnx", "--output", "y", "--preprocess", "unit"], w.path());
    assert!(err.contains("vec.onnx") && err.contains("not an image tensor"), "{err}");
    let err = fails(
        "tlearn-backbone",
        &["add", "tiny.onnx", "--output", "no_such_tensor", "--preprocess", "unit", "--name", "t2"],
        w.path(),
    );
    assert!(err.contains("no_such_tensor"), "{err}");
    std::fs::write(w.path().join("trunc.onnx"), &std::fs::read(w.path().join("tiny.onnx")).unwrap()[..100]).unwrap();
    let err =
        fails("tlearn-backbone", &["add", "trunc.onnx", "--output", "pool_out", "--preprocess", "unit"], w.path());
    assert!(err.contains("trunc.onnx") && err.contains("not a valid ONNX model"), "{err}");
}

#[test]
fn cut_backbone_equals_the_original_graph_and_a_plain_session() {
    let (d, src, m) = common::tiny_loaded(8);
    let cut = tlearn::onnx::cut::cut_model(&m, &src, "pool_out", tlearn::onnx::cut::Layout::Nchw).unwrap();
    assert_eq!(tlearn::onnx::cut::param_count(&cut), 224);
    // The same preprocessed tensor through the cut graph (tlearn's runtime) and through the
    // original graph with `pool_out` exposed (a plain ort session).
    let img = common::make_image(1, 3, 40, 30);
    let p = d.path().join("i.png");
    img.save(&p).unwrap();
    let x = imageio::load(&p, (32, 32), Interpolation::Nearest, &Preprocess::of(PreprocessKind::Caffe), u64::MAX)
        .unwrap()
        .insert_axis(Axis(0))
        .into_dyn();
    let bytes = tlearn::onnx::encode_model(&cut);
    let mut s = tlearn::runtime::open(&bytes, &src, &Default::default()).unwrap().session;
    let y = tlearn::runtime::run_f32(&mut s, vec![("image", x.view())], &["features"]).unwrap().remove(0);
    let shapes = tlearn::onnx::probe::shapes(&m, &src, vec![("input_1", x.view())], &["pool_out".to_string()]).unwrap();
    assert_eq!(shapes["pool_out"], vec![1, 8, 16, 16]);
    let mut full = m.clone();
    let g = full.graph.as_mut().unwrap();
    g.output = vec![tlearn::onnx::value_info("pool_out", tlearn::onnx::proto::dtype::FLOAT, &[])];
    let mut plain = ort::session::Session::builder(ort_env())
        .unwrap()
        .commit_from_memory(&tlearn::onnx::encode_model(&full))
        .unwrap();
    let out = plain.run(ort::inputs!["input_1" => ort::value::TensorRef::from_array_view(x.view()).unwrap()]).unwrap();
    let reference = out["pool_out"].try_extract_array::<f32>().unwrap().permuted_axes(vec![0, 2, 3, 1]).to_owned();
    let scale = reference.iter().fold(0f32, |a, v| a.max(v.abs()));
    let diff = y.iter().zip(reference.iter()).fold(0f32, |a, (p, q)| a.max((p - q).abs()));
    assert!(scale > 0.0 && diff <= 1e-4 * scale, "max diff {diff} vs scale {scale}");
    // Bit-for-bit stable across runs.
    let y2 = tlearn::runtime::run_f32(&mut s, vec![("image", x.view())], &["features"]).unwrap().remove(0);
    assert_eq!(y, y2);
}

fn ort_env() -> &'static ort::environment::Environment {
    tlearn::runtime::init().unwrap();
    tlearn::runtime::environment().unwrap()
}

#[test]
fn multiscale_cut_pools_and_concatenates() {
    use tlearn::onnx::cut::{cut_model, cut_model_pooled, GlobalPool, Layout};
    let (_dir, src, m) = common::tiny_loaded(4);
    let relu = m.graph.as_ref().unwrap().node.iter().find(|n| n.op_type == "Relu").unwrap().output[0].clone();
    let pooled =
        cut_model_pooled(&m, &src, &["pool_out".into(), relu], Layout::Nchw, Some(GlobalPool::AvgMax)).unwrap();
    let plain = cut_model(&m, &src, "pool_out", Layout::Nchw).unwrap();
    let x = ArrayD::from_shape_fn(ndarray::IxDyn(&[2, 32, 32, 3]), |i| {
        ((i[1] * 3 + i[2] * 5 + i[3] * 7 + i[0]) % 11) as f32 * 10.0
    });
    let run = |m: &tlearn::onnx::proto::ModelProto| {
        let mut s = tlearn::runtime::open(&tlearn::onnx::encode_model(m), &src, &Default::default()).unwrap().session;
        tlearn::runtime::run_f32(&mut s, vec![("image", x.view())], &["features"]).unwrap().remove(0)
    };
    let (yp, y) = (run(&pooled), run(&plain));
    assert_eq!(yp.shape(), &[2, 1, 1, 32], "avg+max of two 8-channel tensors");
    for n in 0..2 {
        for c in 0..8 {
            let v: Vec<f32> =
                (0..16).flat_map(|h| (0..16).map(move |w| (h, w))).map(|(h, w)| y[[n, h, w, c]]).collect();
            let mean = v.iter().sum::<f32>() / v.len() as f32;
            let max = v.iter().fold(f32::MIN, |a, &b| a.max(b));
            assert!((yp[[n, 0, 0, c]] - mean).abs() < 1e-4 * mean.abs().max(1.0), "avg of pool_out channel {c}");
            assert_eq!(yp[[n, 0, 0, 8 + c]], max, "max of pool_out channel {c}");
        }
    }
    let err = cut_model_pooled(&m, &src, &["pool_out".into(), "nope".into()], Layout::Nchw, Some(GlobalPool::Avg))
        .unwrap_err()
        .to_string();
    assert!(err.contains("nope"), "{err}");
}

/// A model the fuzzer found (a layer node without outputs) once panicked the Keras-style summary;
/// now it is summarised or refused with an error.
#[test]
fn summary_of_a_malformed_model_does_not_panic() {
    let p =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/seeds/onnx_model/regression-node-without-outputs");
    let m = tlearn::onnx::decode_model(&std::fs::read(&p).unwrap(), &p).expect("it decodes");
    let r = std::panic::catch_unwind(|| tlearn::onnx::summary::rows(&m, &p, 32).map(|rows| rows.len()));
    assert!(r.is_ok(), "summary::rows panicked");
}

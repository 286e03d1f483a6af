//! `tlearn-backbone quantize`: an int8 QDQ backbone calibrated on images, fused by ORT into
//! integer kernels, close to fp32, deterministic, and a backbone name for every stage.

mod common;
use common::*;
use std::path::Path;
use std::process::Command;

fn features(w: &Path, dir: &str) -> ndarray::ArrayD<f32> {
    tlearn::features::load(&w.join(dir), "test").unwrap().x
}

fn correlation(a: &ndarray::ArrayD<f32>, b: &ndarray::ArrayD<f32>) -> f64 {
    let n = a.len() as f64;
    let (ma, mb) = (a.iter().map(|&v| v as f64).sum::<f64>() / n, b.iter().map(|&v| v as f64).sum::<f64>() / n);
    let (mut ab, mut aa, mut bb) = (0.0, 0.0, 0.0);
    for (&x, &y) in a.iter().zip(b) {
        let (x, y) = (x as f64 - ma, y as f64 - mb);
        ab += x * y;
        aa += x * x;
        bb += y * y;
    }
    ab / (aa * bb).sqrt()
}

/// The int8-vs-fp32 correlation `tlearn-backbone quantize` reports on its calibration images.
fn reported_correlation(out: &str) -> f64 {
    out.split("correlation ").nth(1).unwrap().split(',').next().unwrap().parse().unwrap()
}

/// The op types ORT ran, from the profile of a run with TLEARN_ORT_PROFILE.
fn profiled_ops(w: &Path, args: &[&str]) -> Vec<String> {
    let prefix = w.join("prof");
    let o = Command::new(bin("tlearn-extract"))
        .args(args)
        .current_dir(w)
        .env(tlearn::runtime::PROFILE_ENV, &prefix)
        .env("RUST_LOG", "warn,ort=error")
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let mut ops = vec![];
    for e in std::fs::read_dir(w).unwrap().filter_map(|e| e.ok()) {
        let name = e.file_name().to_string_lossy().into_owned();
        if !name.starts_with("prof") {
            continue;
        }
        let Ok(v) = serde_json::from_str::<serde_json::Value>(&std::fs::read_to_string(e.path()).unwrap()) else {
            continue;
        };
        for ev in v.as_array().unwrap() {
            if let Some(op) = ev["args"]["op_name"].as_str() {
                ops.push(op.to_string());
            }
        }
        std::fs::remove_file(e.path()).unwrap();
    }
    ops
}

#[test]
fn an_int8_backbone_is_calibrated_fused_close_to_fp32_and_usable_everywhere() {
    let w = workdir();
    let w = w.path();
    prepared(w, &["cat", "dog"], 24);
    let q = ["quantize", "tiny", "--calibrate", "data/toy", "--images", "16", "--device", "cpu"];
    let out = ok("tlearn-backbone", &q, w);
    assert!(out.contains("tiny-int8") && out.contains("correlation"), "{out}");
    let model = w.join("onnx/tiny-int8.onnx");
    let first = std::fs::read(&model).unwrap();
    let m = tlearn::onnx::load_model(&model).unwrap();
    let g = m.graph.as_ref().unwrap();
    assert!(g.node.iter().any(|n| n.op_type == "QuantizeLinear"));
    let w8 = g.initializer.iter().find(|t| t.name.ends_with("/w_int8")).expect("an int8 weight");
    assert_eq!(w8.data_type, tlearn::onnx::proto::dtype::INT8);
    assert!(!g.initializer.iter().any(|t| t.name == "t/conv/kernel"), "the float weight is gone");
    let side: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(w.join("onnx/tiny-int8.onnx.json")).unwrap()).unwrap();
    let qi = &side["quantization"];
    assert_eq!(
        (qi["of"].as_str(), qi["method"].as_str(), qi["images"].as_u64()),
        (Some("tiny"), Some("minmax"), Some(16))
    );
    assert!(qi["ranges"].as_object().unwrap().len() >= 2 && qi["correlation"].as_f64().unwrap() > 0.99, "{qi}");
    assert_eq!(qi["calibration_sha256"].as_str().unwrap().len(), 64);
    // The weights' range defaults to this CPU's (reduced on x86-64 without VNNI, else full) and is
    // recorded.
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let vnni = cpuinfo.split_whitespace().any(|f| ["avx512_vnni", "avx_vnni", "amx_int8"].contains(&f));
    let expected = if cfg!(target_arch = "x86_64") && !vnni { "reduced" } else { "full" };
    assert_eq!(qi["weights"], expected);

    let list = ok("tlearn-backbone", &["list"], w);
    assert!(list.lines().any(|l| l.starts_with("tiny-int8") && l.contains("int8 of tiny")), "{list}");

    // Deterministic: the same calibration gives the same bytes.
    ok("tlearn-backbone", &q, w);
    assert!(std::fs::read(&model).unwrap() == first, "a rerun writes the same model");

    // ORT fuses the QDQ form into integer kernels: no float Conv runs.
    let args = ["--data", "data/toy", "--backbone", "tiny-int8", "--device", "cpu", "--splits", "test"];
    let ops = profiled_ops(w, &args);
    assert!(ops.iter().any(|o| o == "QLinearConv"), "{ops:?}");
    assert!(!ops.iter().any(|o| o == "Conv" || o == "FusedConv"), "{ops:?}");

    // Features close to fp32's; the int8 name works for extract, head, evaluate and score.
    ok("tlearn-extract", &["--data", "data/toy", "--backbone", "tiny-int8", "--device", "cpu"], w);
    ok("tlearn-extract", &["--data", "data/toy", "--backbone", "tiny", "--device", "cpu"], w);
    let c = correlation(&features(w, "features/toy/tiny-32"), &features(w, "features/toy/tiny-int8-32"));
    assert!(c > 0.99, "int8 vs fp32 features: correlation {c}");
    ok("tlearn-head", &["--features", "features/toy/tiny-int8-32", "--run", "q", "--epochs", "3", "--units", "8"], w);
    ok("tlearn-evaluate", &["--run", "q"], w);
    let out = ok("tlearn-score", &["data/toy/test", "--run", "q", "--out", "q.csv", "--device", "cpu"], w);
    assert!(out.contains("scored"), "{out}");
    let rows = std::fs::read_to_string(w.join("q.csv")).unwrap().lines().count() - 1;
    assert_eq!(rows, tlearn::features::load(&w.join("features/toy/tiny-int8-32"), "test").unwrap().files.len());
    // Grad-CAM and fine-tuning need gradients: refused up front, naming the fp32 backbone, with
    // no scores written first.
    let explain = ["data/toy/test", "--run", "q", "--out", "q2.csv", "--device", "cpu", "--explain", "cams"];
    let ft = ["runs/q/model.onnx", "--data", "data/toy", "--run", "qft", "--epochs", "1"];
    for err in [fails("tlearn-score", &explain, w), fails("tlearn-finetune", &ft, w)] {
        assert!(err.contains("int8") && err.contains("`--backbone tiny`"), "{err}");
    }
    assert!(!w.join("q2.csv").exists() && !w.join("runs/qft").exists());

    // The histogram methods give ranges as close; bad calibration input is a clear error.
    for method in ["percentile", "entropy"] {
        let out = ok("tlearn-backbone", &["quantize", "tiny", "--calibrate", "data/toy", "--method", method], w);
        let corr = reported_correlation(&out);
        assert!(corr > 0.98, "{method}: {out}");
    }
    let r = ["quantize", "tiny", "--calibrate", "data/toy", "--weight-range", "reduced"];
    let out = ok("tlearn-backbone", &r, w);
    let corr = reported_correlation(&out);
    assert!(out.contains("reduced-range weights") && corr > 0.98, "{out}");
    let side: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(w.join("onnx/tiny-int8.onnx.json")).unwrap()).unwrap();
    assert_eq!(side["quantization"]["weights"], "reduced");
    // Any folder of images calibrates (walked), not only a dataset's train split.
    let out = ok("tlearn-backbone", &["quantize", "tiny", "--calibrate", "data/toy/test", "--images", "5"], w);
    assert!(out.contains("5 images"), "{out}");
    std::fs::create_dir_all(w.join("empty")).unwrap();
    let err = fails("tlearn-backbone", &["quantize", "tiny", "--calibrate", "empty"], w);
    assert!(err.contains("empty") && err.contains("no images to calibrate"), "{err}");
    // A size no image fits at in memory is refused before anything runs (it used to abort on the
    // allocation), as extraction does.
    let err = fails("tlearn-backbone", &["quantize", "tiny", "--calibrate", "data/toy", "--size", "16384"], w);
    assert!(err.contains("16384×16384 image needs about") && err.contains("smaller --size"), "{err}");
    let err = fails("tlearn-backbone", &["quantize", "nonesuch", "--calibrate", "data/toy"], w);
    assert!(err.contains("unknown backbone `nonesuch`"), "{err}");
}

/// A chain of four 3×3 Convs (2 → 2 channels, each followed by a Relu), opset 13; with
/// `grouped`, the second is depthwise (group 2) and the third grouped with two output channels a
/// group (2 → 4 channels, the fourth reading 4).
fn chain(grouped: bool) -> tlearn::onnx::proto::ModelProto {
    use ndarray::{ArrayD, IxDyn};
    use tlearn::onnx::{builder::A, Dim, GraphBuilder};
    let mut b = GraphBuilder::new("chain");
    b.input("x", &[Dim::named("n"), Dim::Fixed(2), Dim::Fixed(8), Dim::Fixed(8)]);
    let mut t = "x".to_string();
    for i in 0..4 {
        let shape = match (grouped, i) {
            (true, 1) => [2, 1, 3, 3],
            (true, 2) => [4, 1, 3, 3],
            (true, 3) => [2, 4, 3, 3],
            _ => [2, 2, 3, 3],
        };
        let w = ArrayD::from_shape_fn(IxDyn(&shape), |ix| 0.1 * (i + 1) as f32 * (ix[3] as f32 - 0.7));
        let w = b.init_f32(&format!("w{i}"), &w);
        let mut attrs = vec![("kernel_shape", A::Ints(vec![3, 3])), ("pads", A::Ints(vec![1; 4]))];
        if grouped && (i == 1 || i == 2) {
            attrs.push(("group", A::I(2)));
        }
        let c = b.op("Conv", &[&t, &w], attrs);
        t = b.op("Relu", &[&c], vec![]);
    }
    b.node("Identity", &[&t], &["y"], vec![]);
    b.output("y", &[Dim::named("n"), Dim::Fixed(2), Dim::Fixed(8), Dim::Fixed(8)]);
    let mut m = tlearn::onnx::model(b.finish(), "test");
    m.opset_import[0].version = 13;
    m
}

/// `--float-first`/`--float-last`: the Convs at those ends keep float weights and read float
/// inputs unless an int8 Conv writes them; the rest are quantized as before; counts past the
/// number of Convs leave them all in float.
#[test]
fn convs_at_the_float_ends_stay_float() {
    use tlearn::onnx::qdq::{self, FloatEnds};
    let m = chain(false);
    let convs: Vec<String> =
        tlearn::onnx::graph(&m).node.iter().filter(|n| n.op_type == "Conv").map(|n| n.output[0].clone()).collect();
    let int8_weights = |plan: &qdq::Plan| -> Vec<bool> {
        let ranges = plan.calibrated().into_iter().map(|t| (t, (0.0f32, 4.0f32))).collect();
        let q = qdq::quantize(&m, plan, &ranges, qdq::WeightRange::Full, Path::new("chain.onnx")).unwrap();
        let g = tlearn::onnx::graph(&q);
        g.node.iter().filter(|n| n.op_type == "Conv").map(|n| n.input[1].ends_with("/qdq/w")).collect()
    };
    let all = qdq::plan(&m, FloatEnds::default());
    assert!(all.float_convs.is_empty());
    assert_eq!(int8_weights(&all), [true; 4]);
    let ends = qdq::plan(&m, FloatEnds { first: 1, last: 2 });
    assert_eq!(ends.float_convs.iter().cloned().collect::<Vec<_>>(), {
        let mut v = vec![convs[0].clone(), convs[2].clone(), convs[3].clone()];
        v.sort();
        v
    });
    assert_eq!(int8_weights(&ends), [false, true, false, false]);
    // The image input is not quantized (only the float first Conv reads it); the int8 Conv's
    // input and output are.
    assert!(!ends.range_of.contains_key("x"), "{:?}", ends.range_of);
    assert_eq!(ends.range_of.len(), 2, "{:?}", ends.range_of);
    let none = qdq::plan(&m, FloatEnds { first: 3, last: 3 });
    assert_eq!(none.float_convs.len(), 4);
    assert!(none.range_of.is_empty());
}

/// `--weight-range reduced`: every int8 weight of a non-depthwise Conv within ±63 (each channel's
/// largest at 63) — a grouped one with two output channels a group included, which ORT runs as a
/// GEMM — and a depthwise Conv's at ±127 as with full range; each dequantizes to its float weight
/// within half a step.
#[test]
fn reduced_range_weights_stay_within_seven_bits() {
    use tlearn::onnx::qdq::{self, FloatEnds, WeightRange};
    let m = chain(true);
    let plan = qdq::plan(&m, FloatEnds::default());
    let ranges = plan.calibrated().into_iter().map(|t| (t, (0.0f32, 4.0f32))).collect();
    let floats: Vec<Vec<f32>> = tlearn::onnx::graph(&m)
        .initializer
        .iter()
        .map(|t| tlearn::onnx::tensor_to_f32(t).unwrap().into_iter().collect())
        .collect();
    for (range, limits) in [(WeightRange::Full, [127; 4]), (WeightRange::Reduced, [63, 127, 63, 63])] {
        let q = qdq::quantize(&m, &plan, &ranges, range, Path::new("chain.onnx")).unwrap();
        let g = tlearn::onnx::graph(&q);
        let weights: Vec<_> = g.initializer.iter().filter(|t| t.name.ends_with("/w_int8")).collect();
        assert_eq!(weights.len(), 4, "{range:?}: every Conv's weight quantized");
        for ((w, float), limit) in weights.iter().zip(&floats).zip(limits) {
            let scale_name = w.name.replace("/w_int8", "/w_scale");
            let scales =
                tlearn::onnx::tensor_to_f32(g.initializer.iter().find(|t| t.name == scale_name).unwrap()).unwrap();
            let per = w.raw_data.len() / scales.len();
            let ints: Vec<i32> = w.raw_data.iter().map(|&b| b as i8 as i32).collect();
            assert_eq!(ints.iter().map(|v| v.abs()).max(), Some(limit), "{range:?}: {}", w.name);
            for (k, (&v, &f)) in ints.iter().zip(float).enumerate() {
                let channel = &float[k / per * per..(k / per + 1) * per];
                let step = channel.iter().fold(0f32, |a, v| a.max(v.abs())) / limit as f32;
                let d = v as f32 * scales[k / per];
                assert!((d - f).abs() <= 0.5 * step + 1e-7, "{range:?}: {} weight {k}: {d} vs {f}", w.name);
            }
        }
    }
}

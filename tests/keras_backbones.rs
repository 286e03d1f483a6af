//! Keras applications as backbones: `onnx/export_keras.py` exports each conv base (random weights:
//! no download) with tf2onnx and registers it with `tlearn-backbone add`; `tlearn-extract` then
//! runs it. Needs a Python with TensorFlow and tf2onnx (`make bench-tf-env`); skipped otherwise.

mod common;
use common::*;
use std::path::Path;
use std::process::Command;

const NETS: [&str; 6] = ["VGG19", "ResNet50", "InceptionV3", "Xception", "MobileNetV2", "DenseNet121"];

#[test]
fn keras_application_bases_export_register_and_extract() {
    let py = tf_python()
        .filter(|py| Command::new(py).args(["-c", "import tf2onnx"]).status().map(|s| s.success()).unwrap_or(false));
    let Some(py) = py else {
        skipped("no Python with TensorFlow and tf2onnx (make bench-tf-env)");
        return;
    };
    let w = workdir();
    let w = w.path();
    make_dataset(&w.join("raw"), &["a", "b"], 4, false);
    ok("tlearn-data", &["split", "raw", "data/toy", "--seed", "1"], w);
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("onnx/export_keras.py");
    // The script registers through `tlearn-backbone` on PATH.
    let bin_dir = bin("tlearn-backbone").parent().unwrap().to_path_buf();
    let path = format!("{}:{}", bin_dir.display(), std::env::var("PATH").unwrap_or_default());
    for net in NETS {
        let o = Command::new(&py)
            .args([script.to_str().unwrap(), net, "--weights", "none", "--size", "96"])
            .current_dir(w)
            .env("PATH", &path)
            .env("TF_CPP_MIN_LOG_LEVEL", "3")
            .output()
            .unwrap();
        let (out, err) = (String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
        assert!(o.status.success(), "{net}: export/register failed\n{out}\n{err}");
        let name = format!("{}-keras", net.to_lowercase());
        let side: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(w.join(format!("onnx/{name}.onnx.json"))).unwrap()).unwrap();
        let shape: Vec<u64> = side["features"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap()).collect();
        assert_eq!(shape.len(), 3, "{net}: (h, w, c) features: {side}");
        let out =
            ok("tlearn-extract", &["--data", "data/toy", "--backbone", &name, "--size", "96", "--device", "cpu"], w);
        assert!(out.contains("test"), "{out}");
        let x = ndarray_npy::read_npy::<_, ndarray::ArrayD<f32>>(w.join(format!("features/toy/{name}-96/test.npy")))
            .unwrap();
        assert_eq!(x.ndim(), 4, "{net}");
        assert!(x.iter().all(|v| v.is_finite()), "{net}: finite features");
        eprintln!("{net}: features {:?} per image at 96×96", &x.shape()[1..]);
    }
}

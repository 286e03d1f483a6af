//! The compiled training graph against a reference autodiff: 20 RMSprop steps of the mnist net
//! (no dropout) in tlearn and in Keras/TensorFlow from identical weights and batches; the loss
//! curves must agree within 1e-3.
//!
//! With a Python that has TensorFlow (BENCH_TF_PYTHON, else `.cache/tfenv/bin/python`, made by
//! `make bench-tf-env`) Keras runs live; `make agree` also records its curve (TLEARN_RECORD=1) in
//! `tests/fixtures/keras_mnist_rmsprop.json` with the sha256 of the weights and batches it was
//! computed from. Without TensorFlow (CI) the test compares against that recording; if the
//! inputs changed (net, initialiser, data) the recording is stale and the test fails, asking for
//! `make agree`.

use ndarray::{ArrayD, Axis, IxDyn};
use rand::{Rng, SeedableRng};
use std::path::{Path, PathBuf};
use tlearn::runtime::{Device, SessionOptions};
use tlearn::train::{label_tensor, optim, Trainer};

const STEPS: usize = 20;
const BATCH: usize = 64;
const LR: f64 = 1e-3;
const TOLERANCE: f64 = 1e-3;

fn tf_python() -> Option<String> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let py = std::env::var("BENCH_TF_PYTHON")
        .unwrap_or_else(|_| root.join(".cache/tfenv/bin/python").to_string_lossy().into_owned());
    let ok = std::process::Command::new(&py)
        .args(["-c", "import tensorflow"])
        .env("TF_CPP_MIN_LOG_LEVEL", "3")
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    ok.then_some(py)
}

/// Class-structured 28×28 images: class k lights rows 2k..2k+4, plus continuous noise (so the
/// loss moves and max-pool windows have no ties).
fn batches(k: usize) -> (ArrayD<f32>, Vec<usize>) {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(3);
    let n = STEPS * BATCH;
    let labels: Vec<usize> = (0..n).map(|_| rng.gen_range(0..k)).collect();
    let x = ArrayD::from_shape_fn(IxDyn(&[n, 28, 28, 1]), |i| {
        let band = (2 * labels[i[0]]..2 * labels[i[0]] + 4).contains(&i[1]);
        (if band { 0.6 } else { 0.0 }) + rng.gen_range(0.0..0.4f32)
    });
    (x, labels)
}

/// Keras' losses on the inputs hashed `inputs_sha256`.
#[derive(serde::Serialize, serde::Deserialize)]
struct Recording {
    inputs_sha256: String,
    reference: String,
    losses: Vec<f64>,
}

fn fixture() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/keras_mnist_rmsprop.json")
}

/// Keras' loss curve: live when TensorFlow is here (recorded when TLEARN_RECORD=1), else the
/// recording.
fn keras_losses(dir: &Path, inputs_sha256: &str) -> Vec<f64> {
    let Some(py) = tf_python() else {
        let text = std::fs::read_to_string(fixture()).expect("recorded Keras curve (run `make agree`)");
        let rec: Recording = serde_json::from_str(&text).unwrap();
        assert_eq!(
            rec.inputs_sha256,
            inputs_sha256,
            "{} was recorded from other weights/batches: run `make agree` to re-record it",
            fixture().display()
        );
        eprintln!("no TensorFlow here: comparing with the recorded {} curve", rec.reference);
        return rec.losses;
    };
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("bench/keras_agree.py");
    let out = std::process::Command::new(&py)
        .arg(&script)
        .args([dir.to_str().unwrap(), "mnist", &BATCH.to_string(), &LR.to_string()])
        .env("TF_CPP_MIN_LOG_LEVEL", "2")
        .env("CUDA_VISIBLE_DEVICES", "")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "keras_agree.py failed:\n{}", String::from_utf8_lossy(&out.stderr));
    let losses: Vec<f64> = stdout.lines().filter_map(|l| l.trim().parse().ok()).collect();
    assert_eq!(losses.len(), STEPS, "keras output:\n{stdout}");
    let version = std::process::Command::new(&py)
        .args([
            "-c",
            "import tensorflow as tf, keras; print(f'Keras {keras.__version__} / TensorFlow {tf.__version__}')",
        ])
        .env("TF_CPP_MIN_LOG_LEVEL", "3")
        .output()
        .unwrap();
    if std::env::var_os("TLEARN_RECORD").is_none() {
        return losses;
    }
    let rec = Recording {
        inputs_sha256: inputs_sha256.into(),
        reference: String::from_utf8_lossy(&version.stdout).trim().into(),
        losses: losses.clone(),
    };
    std::fs::create_dir_all(fixture().parent().unwrap()).unwrap();
    std::fs::write(fixture(), serde_json::to_string_pretty(&rec).unwrap() + "\n").unwrap();
    losses
}

#[test]
fn mnist_net_loss_curve_matches_keras_within_1e3() {
    let spec = tlearn::convnet::spec("mnist").unwrap();
    let model = tlearn::convnet::build(&spec, 7).unwrap();
    let opts = SessionOptions { device: Device::Cpu, threads: 1 };
    let mut t = Trainer::new(&model, Path::new("mnist.onnx"), &spec.input, 10, &opts).unwrap();
    let (x, labels) = batches(10);
    let y = label_tensor(&labels, t.train.loss, 10);

    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, a: &ArrayD<f32>| ndarray_npy::write_npy(dir.path().join(name), a).unwrap();
    for (name, p) in t.train.params.iter().zip(&t.params) {
        write(&format!("{}.npy", name.replace('/', "__")), p);
    }
    write("x.npy", &x);
    write("y.npy", &y);

    let state = optim::State::new(optim::Optimizer::rmsprop(LR), &t.params);
    t.start(&state).unwrap();
    let mut ours = vec![];
    for s in 0..STEPS {
        let r = s * BATCH..(s + 1) * BATCH;
        let xb = x.slice_axis(Axis(0), r.clone().into()).to_owned();
        let yb = y.slice_axis(Axis(0), r.into()).to_owned();
        ours.push(t.train_step(xb, yb, vec![], state.opt.step_lr(LR, s as i32 + 1)).unwrap().0 as f64);
    }

    let mut names: Vec<_> = std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().path()).collect();
    names.sort();
    let bytes: Vec<u8> = names.iter().flat_map(|p| std::fs::read(p).unwrap()).collect();
    let keras = keras_losses(dir.path(), &tlearn::fsutil::sha256_bytes(&bytes));

    let diffs: Vec<f64> = ours.iter().zip(&keras).map(|(a, b)| (a - b).abs()).collect();
    eprintln!("step  tlearn      keras       |diff|");
    for i in 0..STEPS {
        eprintln!("{:>4}  {:.7}  {:.7}  {:.2e}", i + 1, ours[i], keras[i], diffs[i]);
    }
    let worst = diffs.iter().fold(0f64, |m, &d| m.max(d));
    assert!(ours[STEPS - 1] < ours[0] - 0.1, "the loss should fall over 20 steps: {ours:?}");
    assert!(worst <= TOLERANCE, "loss curves differ by up to {worst:.2e} (tolerance {TOLERANCE:e})");
}

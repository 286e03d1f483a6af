//! `--device openvino`: ORT's OpenVINO execution provider as a plugin library. The plugin is a
//! pinned 53 MB wheel, so `make test` runs only the part without it; `make check-openvino` fetches
//! it (`make setup-openvino`) and runs the rest (and `.ci/run` does).

mod common;
use common::*;
use ndarray::{ArrayD, IxDyn};
use rand::{Rng, SeedableRng};
use std::path::Path;
use tlearn::onnx::builder::A;
use tlearn::onnx::{self, proto::ModelProto, Dim, GraphBuilder};
use tlearn::runtime::{Device, Precision, SessionOptions};
use tlearn::train::{label_tensor, optim, Trainer};

type Rg = rand_chacha::ChaCha8Rng;

fn rand_array(rng: &mut impl Rng, shape: &[usize], scale: f32) -> ArrayD<f32> {
    ArrayD::from_shape_simple_fn(IxDyn(shape), || rng.gen_range(-scale..scale))
}

#[path = "common/conv_body.rs"]
mod conv_body;
use conv_body::{conv, conv_model};

fn info(w: &Path, dir: &str) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(w.join(dir).join("test.npy.json")).unwrap()).unwrap()
}

fn x(w: &Path, dir: &str) -> ndarray::ArrayD<f32> {
    tlearn::features::load(&w.join(dir), "test").unwrap().x
}

fn max_rel_err(a: &ndarray::ArrayD<f32>, b: &ndarray::ArrayD<f32>) -> f32 {
    let top = a.iter().fold(0f32, |m, v| m.max(v.abs()));
    a.iter().zip(b).fold(0f32, |m, (p, q)| m.max((p - q).abs())) / top
}

#[test]
fn without_the_plugin_openvino_is_a_clear_error() {
    let w = workdir();
    let w = w.path();
    prepared(w, &["cat", "dog"], 6);
    let without_plugin = |name: &str, args: &[&str]| {
        let o = std::process::Command::new(bin(name))
            .args(args)
            .current_dir(w)
            .env(tlearn::runtime::OPENVINO_ENV, w.join("no/such/plugin.so"))
            .output()
            .unwrap();
        assert!(!o.status.success(), "{}", text(&o.stderr));
        text(&o.stderr)
    };
    let err = without_plugin("tlearn-extract", &["--data", "data/toy", "--backbone", "tiny", "--device", "openvino"]);
    assert!(err.contains("plugin.so") && err.contains("make setup-openvino"), "{err}");
    // Training in bf16 needs the plugin too (and a CPU with bf16 instructions: the other error).
    tiny_classifier(&w.join("tiny4.onnx"), 1);
    let bf16 = ["tiny4.onnx", "--data", "data/toy", "--epochs", "1", "--device", "cpu", "--precision", "bf16"];
    let err = without_plugin("tlearn-finetune", &bf16);
    let no_bf16 = err.contains("no bf16 instructions") && err.contains("--precision f32");
    assert!(no_bf16 || (err.contains("plugin.so") && err.contains("make setup-openvino")), "{err}");
    // And bf16 training does not run on CUDA.
    let cuda = SessionOptions { device: Device::Cuda, threads: 1, precision: Some(Precision::Bf16) };
    let e = cuda.training_precision().unwrap_err().to_string();
    assert!(e.contains("CUDA trains in f32") && e.contains("--device cpu"), "{e}");
    // Auto takes bf16 only where AMX makes it pay.
    let auto = SessionOptions { device: Device::Cpu, threads: 1, precision: None };
    if !tlearn::runtime::cpu_has(&["amx_bf16"]) {
        assert_eq!(auto.training_precision().unwrap(), Precision::F32);
    }
}

#[test]
#[ignore = "needs the OpenVINO plugin (53 MB wheel): run by `make check-openvino`"]
fn openvino_extracts_and_scores_like_the_cpu_and_records_its_precision() {
    let w = workdir();
    let w = w.path();
    prepared(w, &["cat", "dog"], 12);
    let base = ["--data", "data/toy", "--backbone", "tiny", "--splits", "train,validation,test"];
    let with = |extra: &[&'static str]| -> Vec<&str> { base.iter().copied().chain(extra.iter().copied()).collect() };
    ok("tlearn-extract", &with(&["--device", "cpu", "--out", "cpu"]), w);
    let o = run("tlearn-extract", &with(&["--device", "openvino", "--precision", "f32", "--out", "ov"]), w);
    let err = String::from_utf8_lossy(&o.stderr);
    if err.contains("offers no CPU device here") {
        // The plugin serves Intel CPUs only: elsewhere the error must say so, and that is all.
        assert!(!o.status.success() && err.contains("serves Intel CPUs"), "{err}");
        skipped("the OpenVINO runs (its plugin serves Intel CPUs only; the error saying so checked instead)");
        return;
    }
    assert!(o.status.success(), "{err}");
    let i = info(w, "ov");
    assert_eq!((i["device"].as_str(), i["precision"].as_str()), (Some("openvino"), Some("f32")), "{i}");
    let e = max_rel_err(&x(w, "cpu"), &x(w, "ov"));
    assert!(e < 1e-4, "OpenVINO f32 vs the CPU provider: {e}");
    // f32 on OpenVINO is full precision: the CPU reuses that cache as it is.
    let out = ok("tlearn-extract", &with(&["--device", "cpu", "--out", "ov"]), w);
    assert_eq!(out.matches("(up to date)").count(), 3, "{out}");
    // bf16 is not: its rows are computed afresh and recorded as bf16.
    let out = ok("tlearn-extract", &with(&["--device", "openvino", "--precision", "bf16", "--out", "ov"]), w);
    assert!(!out.contains("up to date"), "{out}");
    assert_eq!(info(w, "ov")["precision"].as_str(), Some("bf16"));
    let e = max_rel_err(&x(w, "cpu"), &x(w, "ov"));
    assert!(e < 0.05, "bf16 vs f32: {e}");
    // Where the CPU computes bf16 natively, the hint must have taken: the features differ.
    let amx = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default().contains("amx_bf16");
    assert!(!amx || e > 0.0, "bf16 recorded, but the features equal f32's bit for bit");

    // A deployable model scores on OpenVINO as on the CPU; training is refused, clearly.
    ok("tlearn-head", &["--features", "cpu", "--run", "r", "--epochs", "2", "--units", "8", "--device", "cpu"], w);
    ok("tlearn-score", &["data/toy/test", "--run", "r", "--out", "c.csv", "--device", "cpu"], w);
    ok(
        "tlearn-score",
        &["data/toy/test", "--run", "r", "--out", "o.csv", "--device", "openvino", "--precision", "f32"],
        w,
    );
    let probs = |f: &str| -> Vec<f64> {
        let mut r = csv::Reader::from_path(w.join(f)).unwrap();
        let k = r.headers().unwrap().iter().position(|c| c == "probability").unwrap();
        r.records().map(|rec| rec.unwrap()[k].parse().unwrap()).collect()
    };
    let (c, o) = (probs("c.csv"), probs("o.csv"));
    assert_eq!(c.len(), o.len());
    assert!(c.iter().zip(&o).all(|(a, b)| (a - b).abs() < 1e-4), "{c:?} vs {o:?}");

    // That model fine-tuned with its steps on OpenVINO: in bf16 where the CPU has bf16
    // instructions (recorded in the run), else at f32. The CPU sessions around the steps (shape
    // probes, the update) stay on the CPU provider with the plugin registered.
    let bf16 = tlearn::runtime::cpu_has(&["avx512_bf16", "amx_bf16"]);
    let (device, precision) = if bf16 { ("cpu", "bf16") } else { ("openvino", "f32") };
    let args = ["runs/r/model.onnx", "--data", "data/toy", "--run", "ft", "--epochs", "2", "--batch", "4"];
    ok("tlearn-finetune", &[&args[..], &["--device", device, "--precision", precision]].concat(), w);
    let record = json(&w.join("runs/ft/run.json"));
    assert_eq!(record["config"]["precision"].as_str(), bf16.then_some("bf16"), "{record}");
}

/// A fine-tune started in bf16 and continued with `--precision auto` (the default) keeps bf16, on a
/// CPU without AMX too, where auto alone would pick f32; where bf16 cannot run (no plugin),
/// continuing says why and how to go on.
#[test]
#[ignore = "needs the OpenVINO plugin (53 MB wheel): run by `make check-openvino`"]
fn a_fine_tune_started_in_bf16_continues_in_bf16() {
    if !openvino_here("continuing a bf16 fine-tune") {
        return;
    }
    if !tlearn::runtime::cpu_has(&["avx512_bf16", "amx_bf16"]) {
        skipped("continuing a bf16 fine-tune (this CPU has no bf16 instructions)");
        return;
    }
    let w = workdir();
    let w = w.path();
    prepared(w, &["a", "b", "c", "d"], 6);
    tiny_classifier(&w.join("tiny4.onnx"), 1);
    let args = |epochs: &'static str| {
        ["tiny4.onnx", "--data", "data/toy", "--run", "ft", "--epochs", epochs, "--device", "cpu"]
    };
    ok("tlearn-finetune", &[&args("2")[..], &["--precision", "bf16"]].concat(), w);
    ok("tlearn-finetune", &args("3"), w);
    let record = json(&w.join("runs/ft/run.json"));
    assert_eq!((record["config"]["precision"].as_str(), record["epochs_run"].as_u64()), (Some("bf16"), Some(3)));
    let o = std::process::Command::new(bin("tlearn-finetune"))
        .args(args("4"))
        .current_dir(w)
        .env(tlearn::runtime::OPENVINO_ENV, w.join("no/such/plugin.so"))
        .output()
        .unwrap();
    let err = text(&o.stderr);
    let said = err.contains("started in bf16") && err.contains("plugin.so") && err.contains("--restart");
    assert!(!o.status.success() && said, "{err}");
}

/// Whether OpenVINO serves this machine; where it does not (an AMD CPU), the reason is shown as
/// the test's skip.
fn openvino_here(what: &str) -> bool {
    match tlearn::runtime::openvino_available() {
        Ok(()) => true,
        Err(e) if e.to_string().contains("serves Intel CPUs") => {
            skipped(&format!("{what} (the OpenVINO plugin serves Intel CPUs only: {e})"));
            false
        }
        Err(e) => panic!("{e}"),
    }
}

/// An EfficientNet-like net: a strided stem, ReLU6, depthwise convolutions (stride 1 and 2: their
/// weight gradients take the batch's output gradient as weights, which OpenVINO compiles only for
/// a fixed batch), a MaxPool (OpenVINO has no MaxUnpool for its gradient), 1×1 projections.
fn depthwise_net() -> ModelProto {
    let depthwise = |b: &mut GraphBuilder, rng: &mut Rg, x: &str, c: usize, stride: i64| {
        let w = b.fresh("dw");
        let w = b.init_f32(&w, &rand_array(rng, &[c, 1, 3, 3], 0.5));
        let attrs = vec![
            ("group", A::I(c as i64)),
            ("auto_pad", A::S("SAME_UPPER")),
            ("strides", A::Ints(vec![stride, stride])),
        ];
        b.op("Conv", &[x, &w], attrs)
    };
    let relu6 = |b: &mut GraphBuilder, x: &str| {
        let (lo, hi) = (b.const_f32("lo", 0.0), b.const_f32("hi", 6.0));
        b.op("Clip", &[x, &lo, &hi], vec![])
    };
    conv_model([16, 16, 3], 3, |b, rng, x| {
        let h = conv(b, rng, &x, 3, 8, 3, vec![("auto_pad", A::S("SAME_UPPER")), ("strides", A::Ints(vec![2, 2]))]);
        let h = relu6(b, &h);
        let h = depthwise(b, rng, &h, 8, 1);
        let h = relu6(b, &h);
        let pool = vec![("kernel_shape", A::Ints(vec![2, 2])), ("strides", A::Ints(vec![2, 2]))];
        let h = b.op("MaxPool", &[&h], pool);
        let h = conv(b, rng, &h, 8, 4, 1, vec![]);
        let h = depthwise(b, rng, &h, 4, 2);
        conv(b, rng, &h, 4, 6, 1, vec![])
    })
}

/// Gradients on one batch, then the losses of three Adam steps on batches of 8, 8 and 3 (a
/// second batch size: a second compiled OpenVINO session), of one more step of 8 in a second fit
/// (the trainer started again), and the parameters after them. The trainer compiles each batch
/// size once across its fits.
type Trace = (Vec<ArrayD<f32>>, Vec<f32>, Vec<ArrayD<f32>>);

fn trace(m: &ModelProto, opts: &SessionOptions) -> Trace {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(4);
    let mut t = Trainer::new(m, Path::new("dw.onnx"), &[16, 16, 3], 3, opts).unwrap();
    let x = rand_array(&mut rng, &[8, 16, 16, 3], 1.0);
    let labels: Vec<usize> = (0..8).map(|i| i % 3).collect();
    let y = label_tensor(&labels, t.train.loss, 3);
    let grads = t.gradients(x.view(), &y, &[]).unwrap().2;
    let mut state = optim::State::new(optim::Optimizer::adam(1e-3), &t.params);
    t.start(&state).unwrap();
    let mut losses = vec![];
    for (s, &n) in [8usize, 8, 3, 8].iter().enumerate() {
        if s == 3 {
            t.sync(&mut state).unwrap();
            t.start(&state).unwrap();
        }
        let (xb, yb) = (x.slice(ndarray::s![..n, .., .., ..]).to_owned().into_dyn(), y.slice(ndarray::s![..n, ..]));
        losses
            .push(t.train_step(xb, yb.to_owned().into_dyn(), vec![], state.opt.step_lr(1e-3, s as i32 + 1)).unwrap().0);
    }
    t.sync(&mut state).unwrap();
    let compiled = if opts.device == Device::Openvino { 2 } else { 1 };
    assert_eq!(t.gradient_sessions(), compiled, "gradients sessions after two fits on {:?}", opts.device);
    (grads, losses, t.params)
}

fn cosine(a: &ArrayD<f32>, b: &ArrayD<f32>) -> f32 {
    let dot: f32 = a.iter().zip(b).map(|(p, q)| p * q).sum();
    dot / (a.mapv(|v| v * v).sum().sqrt() * b.mapv(|v| v * v).sum().sqrt()).max(1e-30)
}

/// Training on OpenVINO: each step's forward and backward there, its update in f32 on the CPU
/// provider (`--precision bf16`'s path, `train::fit::split`). At f32 it gives the CPU's gradients,
/// losses and parameters; at bf16 (where the CPU has bf16 instructions) it stays close: the loss
/// within 2 %, every gradient within a cosine of 0.98 of f32's.
#[test]
#[ignore = "needs the OpenVINO plugin (53 MB wheel): run by `make check-openvino`"]
fn training_on_openvino_follows_the_cpu_at_f32_and_stays_close_at_bf16() {
    if !openvino_here("training on OpenVINO") {
        return;
    }
    let m = depthwise_net();
    let at = |device, precision| SessionOptions { device, threads: 1, precision };
    let (cpu_g, cpu_l, cpu_p) = trace(&m, &at(Device::Cpu, None));
    let (ov_g, ov_l, ov_p) = trace(&m, &at(Device::Openvino, Some(Precision::F32)));
    for (a, b) in cpu_g.iter().zip(&ov_g) {
        assert!(max_rel_err(a, b) < 1e-4, "gradient: {}", max_rel_err(a, b));
    }
    assert!(cpu_l.iter().zip(&ov_l).all(|(a, b)| (a - b).abs() < 1e-4 * a.abs()), "{cpu_l:?} vs {ov_l:?}");
    for (a, b) in cpu_p.iter().zip(&ov_p) {
        assert!(max_rel_err(a, b) < 1e-4, "parameters: {}", max_rel_err(a, b));
    }
    if !tlearn::runtime::cpu_has(&["avx512_bf16", "amx_bf16"]) {
        skipped("bf16 training (this CPU has no bf16 instructions, so OpenVINO would compute in f32)");
        return;
    }
    let (bf_g, bf_l, _) = trace(&m, &at(Device::Openvino, Some(Precision::Bf16)));
    assert!(cpu_l.iter().zip(&bf_l).all(|(a, b)| (a - b).abs() < 0.02 * a.abs()), "{cpu_l:?} vs {bf_l:?}");
    for (a, b) in cpu_g.iter().zip(&bf_g) {
        assert!(cosine(a, b) > 0.98, "bf16 gradient: cosine {}", cosine(a, b));
    }
    // bf16 must have taken: f32's gradients are not matched to f32's rounding.
    assert!(cpu_g.iter().zip(&bf_g).any(|(a, b)| max_rel_err(a, b) > 1e-4), "bf16 gradients equal f32's");
}

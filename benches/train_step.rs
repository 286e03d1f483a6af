//! `make bench-train`: training-step time of the built-in convnets (mnist at batch 64, v1 at
//! batch 32) and of a ResNet-50 fine-tuning step (224×224, batch 16, BatchNorm frozen),
//! tlearn's compiled training graph + RMSprop vs Keras/TensorFlow CPU on the same net, batch and
//! threads — TF's default build, with `TF_ENABLE_ONEDNN_OPTS=1`, and on AMX CPUs also with
//! oneDNN's bf16 math (`ONEDNN_DEFAULT_FPMATH_MODE=BF16`) — measured side by side in one run.
//! Keras is optional: BENCH_TF_PYTHON (default `.cache/tfenv/bin/python`, made by `make
//! bench-tf-env`) must import tensorflow, else its columns are skipped with a message. The
//! ResNet-50 is `keras.applications.ResNet50(weights=None)` exported once with tf2onnx
//! (`.cache/bench/resnet50.onnx`; its frozen BatchNorms folded into the convolutions), so that
//! row needs the same Python. ResNet-50 times `max(BENCH_STEPS / 4, 3)` steps.
//! GFLOP/s count forward FLOPs × 3 (forward + two backward GEMM-like passes).
//! Env: BENCH_STEPS (timed steps, default 20), BENCH_ROUNDS (alternated rounds of tlearn and
//! each Keras mode, default 3; the median round counts), BENCH_THREADS (default: all cores),
//! BENCH_NETS (comma-separated subset of `mnist,v1,resnet50`).

#[path = "common/cpu.rs"]
mod cpu;

use ndarray::{ArrayD, IxDyn};
use rand::{Rng, SeedableRng};
use std::path::Path;
use std::time::Instant;
use tlearn::runtime::{Device, SessionOptions};
use tlearn::train::{label_tensor, optim, Trainer};

/// Forward FLOPs per image (multiply-adds × 2) of the convs and dense layers.
fn forward_flops(net: &str) -> f64 {
    match net {
        "mnist" => 5.59e6,
        // 4.09 G multiply-adds at 224×224 (torchvision's count).
        "resnet50" => 8.18e9,
        _ => 0.472e9,
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

/// The net as ONNX, one sample's input shape and its classes; None when it cannot be made (the
/// ResNet-50 export needs TensorFlow + tf2onnx).
fn net_model(net: &str, python: Option<&str>) -> Option<(tlearn::onnx::proto::ModelProto, Vec<usize>, usize)> {
    if net != "resnet50" {
        let spec = tlearn::convnet::spec(net).unwrap();
        let k = if net == "mnist" { 10 } else { 2 };
        return Some((tlearn::convnet::build(&spec, 1).unwrap(), spec.input.to_vec(), k));
    }
    let path = Path::new(".cache/bench/resnet50.onnx");
    if !path.exists() {
        std::fs::create_dir_all(path.parent()?).ok()?;
        let o = std::process::Command::new(python?)
            .args(["keras_export_net.py", "resnet50", "../.cache/bench/resnet50.onnx"])
            .current_dir("pyref")
            .env("TF_CPP_MIN_LOG_LEVEL", "3")
            .output();
        let o = match o {
            Ok(o) => o,
            Err(e) => {
                eprintln!("resnet50 export could not start {}: {e}", python.unwrap_or_default());
                return None;
            }
        };
        if !o.status.success() {
            eprintln!("resnet50 export failed: {}", String::from_utf8_lossy(&o.stderr).lines().last().unwrap_or(""));
            return None;
        }
    }
    Some((tlearn::onnx::load_model(path).ok()?, vec![224, 224, 3], 2))
}

/// Median seconds per training step (forward + backward + RMSprop update) of `net`.
fn tlearn_step(
    net: &(tlearn::onnx::proto::ModelProto, Vec<usize>, usize),
    batch: usize,
    steps: usize,
    opts: &SessionOptions,
) -> f64 {
    let (m, input, k) = (&net.0, &net.1, net.2);
    let mut t = Trainer::new(m, Path::new("bench.onnx"), input, k, opts).unwrap();
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(0);
    let shape: Vec<usize> = [&[batch][..], input].concat();
    let x = ArrayD::from_shape_simple_fn(IxDyn(&shape), || rng.gen::<f32>());
    let labels: Vec<usize> = (0..batch).map(|i| i % k).collect();
    let y = label_tensor(&labels, t.train.loss, k);
    t.start(&optim::State::new(optim::Optimizer::rmsprop(1e-4), &t.params)).unwrap();
    let mut times = vec![];
    for i in 0..steps + 3 {
        let masks = t.draw_masks(batch, &mut rng);
        let (xb, yb) = (x.clone(), y.clone());
        let s = Instant::now();
        t.train_step(xb, yb, masks, 1e-4).unwrap();
        if i >= 3 {
            times.push(s.elapsed().as_secs_f64());
        }
    }
    median(times)
}

/// How Keras runs: TF's default kernels, oneDNN's (fp32), or oneDNN's with bf16 math
/// (`ONEDNN_DEFAULT_FPMATH_MODE=BF16`: fp32 tensors, bf16 products; AMX kernels on AMX CPUs).
#[derive(Clone, Copy, PartialEq)]
enum Keras {
    Default,
    OneDnn,
    OneDnnBf16,
}

/// Keras median step seconds for (net, batch), or None when TensorFlow is not available.
fn keras_step(python: &str, net: &str, batch: usize, steps: usize, threads: usize, mode: Keras) -> Option<f64> {
    let mut cmd = std::process::Command::new(python);
    cmd.arg("pyref/keras_step.py")
        .args([net, &batch.to_string(), &steps.to_string(), &threads.to_string()])
        .env("TF_ENABLE_ONEDNN_OPTS", if mode == Keras::Default { "0" } else { "1" })
        .env("TF_CPP_MIN_LOG_LEVEL", "2");
    if mode == Keras::OneDnnBf16 {
        cmd.env("ONEDNN_DEFAULT_FPMATH_MODE", "BF16");
    }
    let out = cmd.output().ok()?;
    if !out.status.success() {
        eprintln!("keras ({net}) failed: {}", String::from_utf8_lossy(&out.stderr).lines().last().unwrap_or(""));
        return None;
    }
    String::from_utf8_lossy(&out.stdout).trim().lines().last()?.parse().ok()
}

/// Keras' modes to time. oneDNN's bf16 math mode changes kernels only where it has bf16 ones to
/// change to: on an AVX-512 BF16 CPU without AMX its convolutions stay `brg_conv_*:avx512_core`
/// (fp32), so a bf16 column there would time the fp32 run twice.
fn keras_modes(have_tf: bool) -> Vec<Keras> {
    let mut modes = vec![Keras::Default, Keras::OneDnn];
    if cpu::has("amx_bf16") {
        modes.push(Keras::OneDnnBf16);
    } else if have_tf {
        println!("no AMX (amx_bf16): oneDNN's bf16 math mode keeps its fp32 kernels here, so no bf16 column");
    }
    modes
}

/// Whether to time tlearn in bf16 (`--precision bf16`: each step's forward and backward on
/// OpenVINO's CPU plugin, the update in f32): where AMX is meant to make it pay, or where
/// BENCH_TLEARN_BF16=1 asks, and the plugin serves this CPU.
fn tlearn_bf16_column() -> bool {
    let asked = std::env::var("BENCH_TLEARN_BF16").is_ok_and(|v| v == "1");
    (cpu::has("amx_bf16") || asked)
        && match tlearn::runtime::openvino_available() {
            Ok(()) => true,
            Err(e) => {
                println!("tlearn bf16 column skipped: {e}");
                false
            }
        }
}

/// The table's header: Keras' oneDNN bf16 column and tlearn's bf16 column where they are timed.
fn print_header(bf16: bool, tl_bf16: bool) {
    print!(
        "{:<8} {:>5} {:>12} {:>10} {:>14} {:>14}",
        "net", "batch", "tlearn ms", "GFLOP/s", "Keras ms", "Keras+oneDNN"
    );
    if bf16 {
        print!(" {:>14}", "oneDNN bf16");
    }
    if tl_bf16 {
        print!(" {:>12}", "tlearn bf16");
    }
    println!(" {:>10} {:>10}{}", "vs Keras", "vs oneDNN", if bf16 { "    vs bf16" } else { "" });
}

fn main() {
    println!("{}", cpu::describe());
    let steps: usize = std::env::var("BENCH_STEPS").ok().and_then(|v| v.parse().ok()).unwrap_or(20);
    let threads: usize = std::env::var("BENCH_THREADS").ok().and_then(|v| v.parse().ok()).unwrap_or(0);
    let rounds: usize = std::env::var("BENCH_ROUNDS").ok().and_then(|v| v.parse().ok()).unwrap_or(3).max(1);
    let py = std::env::var("BENCH_TF_PYTHON").unwrap_or_else(|_| ".cache/tfenv/bin/python".into());
    // Absolute: the ResNet-50 export runs in `pyref/`, where a relative path to the venv's python
    // names nothing (the export then failed unseen and the row read "skipped").
    let py = match Path::new(&py).is_relative() && py.contains('/') {
        true => std::env::current_dir().map(|d| d.join(&py).to_string_lossy().into_owned()).unwrap_or(py),
        false => py,
    };
    let have_tf = std::process::Command::new(&py)
        .args(["-c", "import tensorflow"])
        .env("TF_CPP_MIN_LOG_LEVEL", "3")
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    if !have_tf {
        println!("Keras/TensorFlow not available at {py} (make bench-tf-env): Keras columns skipped");
    }
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    let th = if threads == 0 { cores } else { threads };
    let modes = keras_modes(have_tf);
    let f32_opts = SessionOptions { device: Device::Cpu, threads, precision: None };
    let bf16_opts = f32_opts.training(tlearn::runtime::Precision::Bf16);
    let tl_bf16 = tlearn_bf16_column();
    println!("training step, median over {rounds} alternated rounds of the median of {steps} steps, {th} threads, RMSprop, random inputs");
    let bf16 = modes.contains(&Keras::OneDnnBf16);
    print_header(bf16, tl_bf16);
    let only = std::env::var("BENCH_NETS").unwrap_or_default();
    for (net, batch) in [("mnist", 64usize), ("v1", 32), ("resnet50", 16)] {
        if !only.is_empty() && !only.split(',').any(|n| n == net) {
            continue;
        }
        let Some(model) = net_model(net, have_tf.then_some(py.as_str())) else {
            println!("{net:<6} skipped: its ONNX is made by exporting the Keras net (make bench-tf-env)");
            continue;
        };
        let steps = if net == "resnet50" { (steps / 4).max(3) } else { steps };
        // Rounds alternate tlearn and each Keras mode, so a noisy spell hits all of them.
        let (mut ts, mut ks, mut tb) = (vec![], vec![vec![]; modes.len()], vec![]);
        for _ in 0..rounds {
            ts.push(tlearn_step(&model, batch, steps, &f32_opts));
            if tl_bf16 {
                tb.push(tlearn_step(&model, batch, steps, &bf16_opts));
            }
            for (k, mode) in ks.iter_mut().zip(&modes).filter(|_| have_tf) {
                k.extend(keras_step(&py, net, batch, steps, th, *mode));
            }
        }
        let show = |v: &[f64]| v.iter().map(|s| format!("{:.1}", s * 1e3)).collect::<Vec<_>>().join(" / ");
        let keras: Vec<String> = ks.iter().map(|k| show(k)).collect();
        let labels = ["default", "oneDNN", "oneDNN bf16"][..modes.len()].join(", ");
        eprintln!(
            "{net}: rounds (ms) tlearn {} (bf16: {}); Keras ({labels}) {}",
            show(&ts),
            show(&tb),
            keras.join("; ")
        );
        let t = median(ts);
        let gflops = forward_flops(net) * 3.0 * batch as f64 / t / 1e9;
        let ks: Vec<Option<f64>> = ks.into_iter().map(|k| (!k.is_empty()).then(|| median(k))).collect();
        let ms = |v: &Option<f64>| v.map(|s| format!("{:.1}", s * 1e3)).unwrap_or_else(|| "-".into());
        let ratio = |v: &Option<f64>| v.map(|s| format!("{:.2}×", s / t)).unwrap_or_else(|| "-".into());
        let times: Vec<String> = ks.iter().map(|k| format!(" {:>14}", ms(k))).collect();
        let ratios: Vec<String> = ks.iter().map(|k| format!(" {:>10}", ratio(k))).collect();
        let bf16_ms = if tl_bf16 { format!(" {:>12.1}", median(tb.clone()) * 1e3) } else { String::new() };
        println!("{net:<8} {batch:>5} {:>12.1} {gflops:>10.1}{}{bf16_ms}{}", t * 1e3, times.concat(), ratios.concat());
        if tl_bf16 && bf16 {
            if let Some(k) = ks[2] {
                println!("{net:<8} bf16: Keras + oneDNN bf16 / tlearn bf16 = {:.2}×", k / median(tb));
            }
        }
    }
    println!("ratios: Keras step time / tlearn f32 step time (> 1: tlearn faster)");
}

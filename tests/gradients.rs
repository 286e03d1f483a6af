//! Training through the public `Trainer`: the compiler's gradients against central finite
//! differences, op by op (dense and convolutional models); the in-graph optimizers against Keras'
//! update rules; class weights, weight decay and learning-rate factors; CUDA against CPU. The
//! checks of the compiler's own passes (MaxPool gradient forms, `poolconv`, NCHWc) are unit tests
//! beside them in `pipeline/train/compile/`.

mod common;
use ndarray::{ArrayD, IxDyn};
use rand::{Rng, SeedableRng};
use std::path::Path;
use tlearn::heads::dense as head;
use tlearn::heads::{HeadSpec, Pool, Target};
use tlearn::onnx::builder::A;
use tlearn::onnx::{self, proto::ModelProto, Dim, GraphBuilder};
use tlearn::params::ParamGuard;
use tlearn::runtime::{Device, SessionOptions};
use tlearn::train::{label_tensor, optim, Trainer};

type Rg = rand_chacha::ChaCha8Rng;

fn opts() -> SessionOptions {
    SessionOptions { device: Device::Cpu, threads: 1, precision: None }
}

fn rand_array(rng: &mut impl Rng, shape: &[usize], scale: f32) -> ArrayD<f32> {
    ArrayD::from_shape_simple_fn(IxDyn(shape), || rng.gen_range(-scale..scale))
}

/// Compare analytic gradients with central differences on every parameter (sampled entries).
fn check(model: &ModelProto, feature_shape: &[usize], classes: usize, n: usize) {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(11);
    let mut t = Trainer::new(model, Path::new("test.onnx"), feature_shape, classes, &opts()).unwrap();
    let x = rand_array(&mut rng, &[&[n][..], feature_shape].concat(), 1.0);
    let labels: Vec<usize> = (0..n).map(|i| i % classes).collect();
    let y = label_tensor(&labels, t.train.loss, classes);
    let masks = t.draw_masks(n, &mut rng);
    let (_, _, grads) = t.gradients(x.view(), &y, &masks).unwrap();
    let eps = 1e-3f32;
    let mut checked = 0;
    for (p, grad) in grads.iter().enumerate() {
        let len = t.params[p].len();
        for _ in 0..len.min(12) {
            let j = rng.gen_range(0..len);
            let orig = t.params[p].as_slice().unwrap()[j];
            t.params[p].as_slice_mut().unwrap()[j] = orig + eps;
            let lp = t.gradients(x.view(), &y, &masks).unwrap().0 as f64;
            t.params[p].as_slice_mut().unwrap()[j] = orig - eps;
            let lm = t.gradients(x.view(), &y, &masks).unwrap().0 as f64;
            t.params[p].as_slice_mut().unwrap()[j] = orig;
            let fd = (lp - lm) / (2.0 * eps as f64);
            let an = grad.as_slice().unwrap()[j] as f64;
            assert!(
                (fd - an).abs() <= 2e-3 + 2e-2 * fd.abs().max(an.abs()),
                "param {} [{j}]: analytic {an} vs finite difference {fd}",
                t.train.params[p]
            );
            checked += 1;
        }
    }
    assert!(checked >= 2 * t.params.len().min(1), "checked {checked} entries");
}

#[test]
fn dense_head_sigmoid_bce_with_dropout() {
    let spec =
        HeadSpec { units: 6, layers: 1, dropout: 0.5, pool: Pool::Flatten, standardize: false, ..Default::default() };
    let m = head::build(&[2, 2, 3], 2, &spec.clone().check().unwrap(), 1, None).unwrap();
    check(&m, &[2, 2, 3], 2, 5);
}

#[test]
fn two_hidden_layers_softmax_ce() {
    let spec =
        HeadSpec { units: 5, layers: 2, dropout: 0.3, pool: Pool::Flatten, standardize: false, ..Default::default() };
    let m = head::build(&[3, 1, 2], 3, &spec.clone().check().unwrap(), 2, None).unwrap();
    check(&m, &[3, 1, 2], 3, 6);
}

#[test]
fn ordinal_head_cumulative_link() {
    // One score, three ordered thresholds (their gaps as squared roots), the steps between the
    // sigmoids as probabilities, Clip and Log under the Softmax: each rule's gradient through it.
    let spec = HeadSpec { units: 5, layers: 1, dropout: 0.0, target: Target::Ordinal, ..Default::default() };
    let m = head::build(&[2, 1, 3], 4, &spec.clone().check().unwrap(), 4, None).unwrap();
    check(&m, &[2, 1, 3], 4, 8);
}

#[test]
fn average_pooled_head() {
    let spec = HeadSpec { units: 4, layers: 1, dropout: 0.0, pool: Pool::Avg, standardize: true, ..Default::default() };
    let m = head::build(
        &[3, 3, 4],
        2,
        &spec.clone().check().unwrap(),
        3,
        Some(&ArrayD::from_shape_fn(IxDyn(&[5, 3, 3, 4]), |i| (i[0] * 7 + i[3]) as f32)),
    )
    .unwrap();
    check(&m, &[3, 3, 4], 2, 4);
}

/// A tf2onnx-style dense stack: MatMul + broadcast Add + Relu + Softmax.
fn matmul_add_model() -> ModelProto {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(5);
    let mut b = GraphBuilder::new("mm").with_prefix("m/");
    b.input("x", &[Dim::named("N"), Dim::Fixed(6)]);
    let w1 = b.init_f32("w1", &rand_array(&mut rng, &[6, 5], 0.5));
    let b1 = b.init_f32("b1", &rand_array(&mut rng, &[5], 0.1));
    let w2 = b.init_f32("w2", &rand_array(&mut rng, &[5, 3], 0.5));
    let b2 = b.init_f32("b2", &rand_array(&mut rng, &[1, 3], 0.1));
    let h = b.op("MatMul", &["x", &w1], vec![]);
    let h = b.op("Add", &[&h, &b1], vec![]);
    let h = b.op("Relu", &[&h], vec![]);
    let h = b.op("MatMul", &[&h, &w2], vec![]);
    let h = b.op("Add", &[&b2, &h], vec![]);
    b.node("Softmax", &[&h], &["y"], vec![("axis", A::I(-1))]);
    b.output("y", &[Dim::named("N"), Dim::Fixed(3)]);
    onnx::model(b.finish(), "test")
}

#[test]
fn matmul_and_broadcast_add() {
    check(&matmul_add_model(), &[6], 3, 7);
}

#[test]
fn unsupported_op_names_node_and_op() {
    let mut m = matmul_add_model();
    let g = m.graph.as_mut().unwrap();
    let relu = g.node.iter_mut().find(|n| n.op_type == "Relu").unwrap();
    relu.op_type = "Tanh".into();
    let name = relu.name.clone();
    let err = match Trainer::new(&m, Path::new("t.onnx"), &[6], 3, &opts()) {
        Err(e) => e.to_string(),
        Ok(_) => panic!("Tanh has no backward rule yet"),
    };
    assert!(err.contains(&name) && err.contains("Tanh"), "{err}");
}

#[test]
fn training_reduces_the_loss_and_is_reproducible() {
    let spec =
        HeadSpec { units: 8, layers: 1, dropout: 0.5, pool: Pool::Flatten, standardize: false, ..Default::default() };
    let m = head::build(&[4], 2, &spec.clone().check().unwrap(), 9, None).unwrap();
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(3);
    let x = rand_array(&mut rng, &[64, 4], 1.0);
    let labels: Vec<usize> = x.outer_iter().map(|r| (r[0] + r[1] > 0.0) as usize).collect();
    let cfg = tlearn::train::FitConfig::new(15, 8, 4, tlearn::train::optim::Optimizer::rmsprop(1e-2)).check().unwrap();
    let fit = || {
        let mut t = Trainer::new(&m, Path::new("t.onnx"), &[4], 2, &opts()).unwrap();
        let val = tlearn::train::InMemory { x: &x, labels: &labels };
        t.fit(&x, &labels, Some(&val), &cfg, |_| {}).unwrap()
    };
    let h1 = fit();
    let h2 = fit();
    assert_eq!(
        h1,
        h2.iter().map(|e| tlearn::history::Epoch { seconds: h1[e.epoch - 1].seconds, ..e.clone() }).collect::<Vec<_>>(),
        "same seed, same history"
    );
    assert!(h1.last().unwrap().val_loss < h1[0].val_loss * 0.7, "loss fell: {h1:?}");
    assert!(h1.last().unwrap().val_accuracy > 0.85, "{h1:?}");
}

#[path = "common/conv_body.rs"]
mod conv_body;
use conv_body::{conv, conv_model};

#[test]
fn conv_same_relu_maxpool_conv_stride2_valid() {
    let m = conv_model([7, 7, 2], 2, |b, rng, x| {
        let h = conv(b, rng, &x, 2, 3, 3, vec![("pads", A::Ints(vec![1, 1, 1, 1]))]);
        let h = b.op("Relu", &[&h], vec![]);
        let h = b.op("MaxPool", &[&h], vec![("kernel_shape", A::Ints(vec![2, 2])), ("strides", A::Ints(vec![2, 2]))]);
        let h = conv(b, rng, &h, 3, 4, 2, vec![("strides", A::Ints(vec![2, 2]))]);
        b.op("Relu", &[&h], vec![])
    });
    check(&m, &[7, 7, 2], 2, 3);
}

#[test]
fn conv_5x5_same_upper_stride2_dilated_global_average_softmax() {
    let m = conv_model([8, 9, 3], 3, |b, rng, x| {
        let h = conv(b, rng, &x, 3, 4, 5, vec![("auto_pad", A::S("SAME_UPPER")), ("strides", A::Ints(vec![2, 2]))]);
        let h = b.op("Relu", &[&h], vec![]);
        let h =
            conv(b, rng, &h, 4, 2, 3, vec![("dilations", A::Ints(vec![2, 2])), ("pads", A::Ints(vec![2, 2, 2, 2]))]);
        b.op("GlobalAveragePool", &[&h], vec![])
    });
    check(&m, &[8, 9, 3], 3, 4);
}

#[test]
fn overlapping_maxpool_batchnorm_concat_and_residual_add() {
    let m = conv_model([9, 9, 2], 2, |b, rng, x| {
        let h = conv(b, rng, &x, 2, 3, 3, vec![("pads", A::Ints(vec![1, 1, 1, 1]))]);
        let scale = b.init_f32("bn_scale", &rand_array(rng, &[3], 1.0).mapv(|v| v + 1.5));
        let bias = b.init_f32("bn_bias", &rand_array(rng, &[3], 0.2));
        let mean = b.init_f32("bn_mean", &rand_array(rng, &[3], 0.3));
        let var = b.init_f32("bn_var", &rand_array(rng, &[3], 0.3).mapv(|v| v + 0.5));
        let h = b.op("BatchNormalization", &[&h, &scale, &bias, &mean, &var], vec![("epsilon", A::F(1e-3))]);
        // Smooth activations here: ReLU kinks after BN's gain make central differences unreliable.
        let h = b.op("Sigmoid", &[&h], vec![]);
        let p = b.op(
            "MaxPool",
            &[&h],
            vec![
                ("kernel_shape", A::Ints(vec![3, 3])),
                ("strides", A::Ints(vec![2, 2])),
                ("pads", A::Ints(vec![1, 1, 1, 1])),
            ],
        );
        let a = conv(b, rng, &p, 3, 2, 1, vec![]);
        let c = conv(b, rng, &p, 3, 3, 3, vec![("pads", A::Ints(vec![1, 1, 1, 1]))]);
        let cat = b.op("Concat", &[&a, &c], vec![("axis", A::I(1))]);
        let r = conv(b, rng, &cat, 5, 5, 3, vec![("pads", A::Ints(vec![1, 1, 1, 1]))]);
        let sum = b.op("Add", &[&r, &cat], vec![]);
        b.op("Sigmoid", &[&sum], vec![])
    });
    // The running statistics are constants, not parameters.
    let t = Trainer::new(&m, Path::new("t.onnx"), &[9, 9, 2], 2, &opts()).unwrap();
    assert!(t.train.params.iter().all(|p| !p.contains("bn_mean") && !p.contains("bn_var")), "{:?}", t.train.params);
    assert!(t.train.params.iter().any(|p| p.contains("bn_scale")));
    check(&m, &[9, 9, 2], 2, 3);
}

/// A convolution with `group` groups: weight (cout, cin / group, k, k); `dims` = [cin, cout, k, group].
fn grouped(b: &mut GraphBuilder, rng: &mut Rg, x: &str, dims: [usize; 4], attrs: Vec<(&str, A)>) -> String {
    let [cin, cout, k, group] = dims;
    let w = b.fresh("gw");
    let w =
        b.init_f32(&w, &ArrayD::from_shape_simple_fn(IxDyn(&[cout, cin / group, k, k]), || rng.gen_range(-0.5..0.5)));
    let mut attrs = attrs;
    attrs.push(("group", A::I(group as i64)));
    b.op("Conv", &[x, &w], attrs)
}

fn clip(b: &mut GraphBuilder, x: &str, lo: f32, hi: f32) -> String {
    let (l, h) = (b.const_f32("lo", lo), b.const_f32("hi", hi));
    b.op("Clip", &[x, &l, &h], vec![])
}

#[test]
fn depthwise_and_grouped_convolutions_clip_pad_swish_squeeze_excite_and_div() {
    // EfficientNet/MobileNet blocks: 1×1 expand → Clip (ReLU6-like, both bounds reached) →
    // depthwise 3×3 stride 2 SAME_UPPER → 1×1 project; a grouped 3×3 conv; an asymmetric Pad; swish;
    // squeeze-excite (ReduceMean → 1×1 → Relu → 1×1 → Sigmoid → Mul); a trained Div.
    let m = conv_model([7, 8, 2], 3, |b, rng, x| {
        let h = conv(b, rng, &x, 2, 6, 1, vec![]);
        let h = clip(b, &h, -0.4, 0.4);
        let h =
            grouped(b, rng, &h, [6, 6, 3, 6], vec![("auto_pad", A::S("SAME_UPPER")), ("strides", A::Ints(vec![2, 2]))]);
        let h = clip(b, &h, -0.5, 0.3);
        let h = conv(b, rng, &h, 6, 4, 1, vec![]);
        let h = grouped(b, rng, &h, [4, 4, 3, 2], vec![("pads", A::Ints(vec![1, 1, 1, 1]))]);
        // Groups with more outputs than inputs (cg 2, mg 3), and a depthwise multiplier (cg 1, mg 2).
        let h = grouped(b, rng, &h, [4, 6, 3, 2], vec![("pads", A::Ints(vec![1, 1, 1, 1]))]);
        let h = grouped(b, rng, &h, [6, 12, 3, 6], vec![("pads", A::Ints(vec![1, 1, 1, 1]))]);
        let h = conv(b, rng, &h, 12, 4, 1, vec![]);
        let pads = b.const_i64("pads", &[0, 0, 1, 0, 0, 0, 0, 1]);
        let h = b.op("Pad", &[&h, &pads], vec![]);
        let h = grouped(b, rng, &h, [4, 4, 2, 4], vec![]);
        let sg = b.op("Sigmoid", &[&h], vec![]);
        let h = b.op("Mul", &[&h, &sg], vec![]);
        let s = b.op("ReduceMean", &[&h], vec![("axes", A::Ints(vec![2, 3])), ("keepdims", A::I(1))]);
        let s = conv(b, rng, &s, 4, 2, 1, vec![]);
        let s = b.op("Relu", &[&s], vec![]);
        let s = conv(b, rng, &s, 2, 4, 1, vec![]);
        let s = b.op("Sigmoid", &[&s], vec![]);
        let h = b.op("Mul", &[&h, &s], vec![]);
        // A per-channel divisor, trained too (Div's both operands, broadcast back).
        let dv = b.init_f32("div_w", &rand_array(rng, &[4, 1, 1], 0.5).mapv(|v| v + 1.5));
        b.op("Div", &[&h, &dv], vec![])
    });
    check(&m, &[7, 8, 2], 3, 3);
}

#[test]
fn a_models_own_input_normalisation_stays_constant() {
    // A Keras Normalization layer as tf2onnx writes it: Sub mean, Div std before the first conv.
    let m = conv_model([5, 5, 2], 2, |b, rng, x| {
        let mean = b.init_f32("norm_mean", &rand_array(rng, &[2, 1, 1], 0.5));
        let std = b.init_f32("norm_std", &rand_array(rng, &[2, 1, 1], 0.2).mapv(|v| v + 1.0));
        let h = b.op("Sub", &[&x, &mean], vec![]);
        let h = b.op("Div", &[&h, &std], vec![]);
        let h = conv(b, rng, &h, 2, 3, 3, vec![]);
        b.op("Relu", &[&h], vec![])
    });
    let t = Trainer::new(&m, Path::new("t.onnx"), &[5, 5, 2], 2, &opts()).unwrap();
    assert!(t.train.params.iter().all(|p| !p.contains("norm_")), "{:?}", t.train.params);
    assert_eq!(t.train.params.len(), 4, "conv and dense weights and biases: {:?}", t.train.params);
    check(&m, &[5, 5, 2], 2, 3);
}

/// Keras 3's update rules, written out independently of the library (f32, Keras' order).
fn keras_update(opt: &optim::Optimizer, t: i32, w: &mut [f32], g: &[f32], s0: &mut [f32], s1: &mut [f32]) {
    for j in 0..w.len() {
        match *opt {
            optim::Optimizer::Rmsprop { lr, rho, epsilon } => {
                let (lr, rho, eps) = (lr as f32, rho as f32, epsilon as f32);
                s0[j] = rho * s0[j] + (1.0 - rho) * (g[j] * g[j]);
                w[j] -= lr * g[j] / (s0[j] + eps).sqrt();
            }
            optim::Optimizer::Sgd { lr, momentum: 0.0 } => w[j] -= g[j] * lr as f32,
            optim::Optimizer::Sgd { lr, momentum } => {
                s0[j] = s0[j] * momentum as f32 - g[j] * lr as f32;
                w[j] += s0[j];
            }
            optim::Optimizer::Adam { lr, beta1, beta2, epsilon } => {
                let alpha = (lr * (1.0 - beta2.powi(t)).sqrt() / (1.0 - beta1.powi(t))) as f32;
                s0[j] += (g[j] - s0[j]) * (1.0 - beta1 as f32);
                s1[j] += (g[j] * g[j] - s1[j]) * (1.0 - beta2 as f32);
                w[j] -= s0[j] * alpha / (s1[j].sqrt() + epsilon as f32);
            }
        }
    }
}

/// The in-graph optimizer step (weights kept on the device between steps) equals Keras' update
/// rules applied to the compiler's gradients, over several steps (slots and Adam's bias
/// correction carried), and `sync` brings back exactly the device's parameters and slots.
#[test]
fn in_graph_optimizers_follow_keras_update_rules() {
    let spec =
        HeadSpec { units: 5, layers: 1, dropout: 0.0, pool: Pool::Flatten, standardize: false, ..Default::default() };
    let m = head::build(&[2, 2, 3], 3, &spec.clone().check().unwrap(), 4, None).unwrap();
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(5);
    let x = rand_array(&mut rng, &[6, 2, 2, 3], 1.0);
    let labels: Vec<usize> = (0..6).map(|i| i % 3).collect();
    for opt in [
        optim::Optimizer::rmsprop(1e-2),
        optim::Optimizer::sgd(0.1, 0.0),
        optim::Optimizer::sgd(0.1, 0.9),
        optim::Optimizer::adam(1e-2),
    ] {
        let mut reference = Trainer::new(&m, Path::new("t.onnx"), &[2, 2, 3], 3, &opts()).unwrap();
        let mut device = Trainer::new(&m, Path::new("t.onnx"), &[2, 2, 3], 3, &opts()).unwrap();
        let y = label_tensor(&labels, reference.train.loss, 3);
        let mut slots: Vec<(ArrayD<f32>, ArrayD<f32>)> =
            reference.params.iter().map(|p| (ArrayD::zeros(p.raw_dim()), ArrayD::zeros(p.raw_dim()))).collect();
        let mut state = optim::State::new(opt.clone(), &device.params);
        device.start(&state).unwrap();
        for t in 1..=4 {
            let (loss_ref, _, grads) = reference.gradients(x.view(), &y, &[]).unwrap();
            for (p, (g, (s0, s1))) in reference.params.iter_mut().zip(grads.iter().zip(slots.iter_mut())) {
                let (s0, s1) = (s0.as_slice_mut().unwrap(), s1.as_slice_mut().unwrap());
                keras_update(&opt, t, p.as_slice_mut().unwrap(), g.as_slice().unwrap(), s0, s1);
            }
            let (loss, _) = device.train_step(x.clone(), y.clone(), vec![], opt.step_lr(opt.lr(), t)).unwrap();
            assert!(
                (loss - loss_ref).abs() <= 1e-6 * loss_ref.abs().max(1.0),
                "{opt:?} step {t}: {loss} vs {loss_ref}"
            );
        }
        device.sync(&mut state).unwrap();
        let close = |a: &ArrayD<f32>, b: &ArrayD<f32>, what: &str| {
            let d = (a - b).mapv(f32::abs).fold(0f32, |m, &v| m.max(v));
            assert!(d <= 1e-6, "{opt:?} {what}: max |device − Keras rule| = {d}");
        };
        for (i, p) in device.params.iter().enumerate() {
            close(p, &reference.params[i], &device.train.params[i]);
            close(&state.slots[i].0, &slots[i].0, "slot 0");
            close(&state.slots[i].1, &slots[i].1, "slot 1");
        }
        assert!(device
            .params
            .iter()
            .zip(&Trainer::new(&m, Path::new("t.onnx"), &[2, 2, 3], 3, &opts()).unwrap().params)
            .any(|(a, b)| a != b));
    }
}

/// `--device cuda` training: parameters and slots resident on the GPU give the CPU's losses and
/// parameters. Skipped with a message where the loaded onnxruntime has no CUDA provider.
#[test]
fn cuda_training_matches_cpu() {
    tlearn::runtime::init().unwrap();
    if !tlearn::runtime::cuda_compiled_in() {
        common::skipped("the loaded onnxruntime has no CUDA execution provider (make setup-cuda on a GPU machine)");
        return;
    }
    let spec = tlearn::convnet::spec("mnist").unwrap();
    let m = tlearn::convnet::build(&spec, 3).unwrap();
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(8);
    let x = rand_array(&mut rng, &[16, 28, 28, 1], 1.0);
    let labels: Vec<usize> = (0..16).map(|i| i % 10).collect();
    let run = |device: Device| {
        let o = SessionOptions { device, threads: 1, precision: None };
        let mut t = Trainer::new(&m, Path::new("mnist.onnx"), &spec.input, 10, &o).unwrap();
        let y = label_tensor(&labels, t.train.loss, 10);
        let mut state = optim::State::new(optim::Optimizer::rmsprop(1e-3), &t.params);
        t.start(&state).unwrap();
        let losses: Vec<f32> = (1..=3)
            .map(|s| t.train_step(x.clone(), y.clone(), vec![], state.opt.step_lr(1e-3, s)).unwrap().0)
            .collect();
        t.sync(&mut state).unwrap();
        (losses, t.params)
    };
    let (cpu_l, cpu_p) = run(Device::Cpu);
    let (gpu_l, gpu_p) = run(Device::Cuda);
    eprintln!("losses cpu {cpu_l:?} cuda {gpu_l:?}");
    for (a, b) in cpu_l.iter().zip(&gpu_l) {
        assert!((a - b).abs() < 1e-3, "loss cpu {a} vs cuda {b}");
    }
    for (a, b) in cpu_p.iter().zip(&gpu_p) {
        let d = (a - b).mapv(f32::abs).fold(0f32, |m, &v| m.max(v));
        assert!(d < 1e-3, "parameters differ by {d}");
    }
}

/// One SGD step with class weights, decoupled weight decay and a per-parameter learning-rate
/// factor equals the rule computed from the per-sample gradients: P' = P − s·lr·wd·P·[rank ≥ 2]
/// − s·lr·Σ wᵢgᵢ / N; and label smoothing gives Keras' targets.
#[test]
fn class_weights_weight_decay_and_lr_factors_follow_their_rules() {
    let spec =
        HeadSpec { units: 5, layers: 1, dropout: 0.0, pool: Pool::Flatten, standardize: false, ..Default::default() };
    let m = head::build(&[4], 3, &spec.check().unwrap(), 2, None).unwrap();
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(5);
    let x = rand_array(&mut rng, &[2, 4], 1.0);
    let labels = [0usize, 2];
    let mut t = Trainer::new(&m, Path::new("t.onnx"), &[4], 3, &opts()).unwrap();
    let p0 = t.params.clone();
    let per_sample: Vec<Vec<ArrayD<f32>>> = (0..2)
        .map(|i| {
            let xi = x.slice(ndarray::s![i..i + 1, ..]).into_dyn();
            t.gradients(xi, &label_tensor(&labels[i..i + 1], t.train.loss, 3), &[]).unwrap().2
        })
        .collect();
    let (lr, wd, cw) = (0.1f64, 0.3f64, [2.0f64, 1.0, 0.5]);
    let mut cfg = tlearn::train::FitConfig::new(1, 2, 1, optim::Optimizer::sgd(lr, 0.0));
    cfg.weight_decay = wd;
    cfg.class_weight = Some(tlearn::train::ClassWeight::Given(cw.to_vec()));
    let first = t.train.params[0].clone();
    t.scale_lr(&|p| if p == first { 0.5 } else { 1.0 });
    let data = tlearn::train::InMemory { x: &x, labels: &labels };
    t.fit_with(&data, None, &cfg.check().unwrap(), None, |_, _, _| Ok(true)).unwrap();
    for (k, p) in t.params.iter().enumerate() {
        let s = if k == 0 { 0.5 } else { 1.0 };
        let decay = if p0[k].ndim() >= 2 { s * lr * wd } else { 0.0 };
        let g = (&per_sample[0][k] * cw[labels[0]] as f32 + &per_sample[1][k] * cw[labels[1]] as f32) / 2.0;
        let want = &p0[k] - &(&p0[k] * decay as f32) - &(g * (s * lr) as f32);
        let d = (p - &want).mapv(f32::abs).fold(0f32, |m, &v| m.max(v));
        assert!(d < 1e-5, "{}: off by {d}", t.train.params[k]);
    }
    assert!(t.params.iter().zip(&p0).all(|(a, b)| a != b), "every parameter moved");
    let loss = tlearn::train::graph::Loss::BinaryCrossEntropy;
    let y = tlearn::train::smoothed_labels(&[1, 0], loss, 1, 0.2);
    assert_eq!(y.as_slice().unwrap(), &[0.9, 0.1]);
    let y = tlearn::train::smoothed_labels(&[2], tlearn::train::graph::Loss::CategoricalCrossEntropy, 4, 0.2);
    assert_eq!(y.as_slice().unwrap(), &[0.05, 0.05, 0.85, 0.05]);
    let balanced = tlearn::train::ClassWeight::Balanced.weights(&[0, 0, 0, 1], 2).unwrap();
    assert_eq!(balanced, [4.0 / 6.0, 2.0]);
}

/// The update alone (`update_graph`: what a bf16 step applies, in f32, to the gradients OpenVINO
/// computed) gives the next parameters and Adam slots of the update appended to the training
/// graph, with a learning-rate factor and weight decay.
#[test]
fn the_update_alone_equals_the_update_appended_to_the_training_graph() {
    let m = matmul_add_model();
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(3);
    let mut t = Trainer::new(&m, Path::new("mm.onnx"), &[6], 3, &opts()).unwrap();
    let x = rand_array(&mut rng, &[4, 6], 1.0);
    let y = label_tensor(&[0, 1, 2, 1], t.train.loss, 3);
    let (_, _, grads) = t.gradients(x.view(), &y, &[]).unwrap();
    let opt = optim::Optimizer::adam(1e-2);
    let groups = optim::Groups { lr_scale: vec![0.5, 1.0, 2.0, 1.0], decayed: vec![true, false, true, false] };
    let slots: Vec<[ArrayD<f32>; 2]> = t
        .params
        .iter()
        .map(|p| [rand_array(&mut rng, p.shape(), 0.1), rand_array(&mut rng, p.shape(), 0.1).mapv(f32::abs)])
        .collect();
    let (lr, decay) = (ndarray::arr0(0.03f32).into_dyn(), ndarray::arr0(0.002f32).into_dyn());
    let ones = ArrayD::ones(IxDyn(&[4, 1]));
    let names = |p: &str| [optim::slot_name(0, p), optim::slot_name(1, p)];
    let outputs: Vec<String> = t
        .train
        .params
        .iter()
        .flat_map(|p| [optim::next_name(p), optim::next_name(&names(p)[0]), optim::next_name(&names(p)[1])])
        .collect();
    let run = |model: &ModelProto, fed: Vec<(&str, ndarray::ArrayViewD<'_, f32>)>| -> Vec<ArrayD<f32>> {
        let mut feed = fed;
        feed.extend([(optim::LR, lr.view()), (optim::DECAY, decay.view())]);
        let slot_names: Vec<[String; 2]> = t.train.params.iter().map(|p| names(p)).collect();
        for (((p, a), s), n) in t.train.params.iter().zip(&t.params).zip(&slots).zip(&slot_names) {
            feed.extend([(p.as_str(), a.view()), (n[0].as_str(), s[0].view()), (n[1].as_str(), s[1].view())]);
        }
        let mut s = tlearn::runtime::open(&onnx::encode_model(model), Path::new("u.onnx"), &opts()).unwrap().session;
        let outs: Vec<&str> = outputs.iter().map(String::as_str).collect();
        tlearn::runtime::run_f32(&mut s, feed, &outs).unwrap()
    };
    let batch =
        vec![("x", x.view()), (tlearn::train::graph::LABELS, y.view()), (tlearn::train::graph::WEIGHTS, ones.view())];
    let appended = run(&optim::append_update(&t.train, &opt, &groups), batch);
    let grad_names: Vec<String> = t.train.params.iter().map(|p| tlearn::train::graph::grad_name(p)).collect();
    let fed = grad_names.iter().map(String::as_str).zip(grads.iter().map(|g| g.view())).collect();
    let alone = run(&optim::update_graph(&t.train, &opt, &groups), fed);
    for ((name, a), b) in outputs.iter().zip(&appended).zip(&alone) {
        let d = (a - b).mapv(f32::abs).fold(0f32, |m, &v| m.max(v));
        assert!(d < 1e-6, "{name}: off by {d}");
    }
    t.params.iter().zip(appended.iter().step_by(3)).for_each(|(p, a)| assert_ne!(p, a, "every parameter moved"));
}

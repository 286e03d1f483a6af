//! The compiler end to end, checked on compiled graphs run in onnxruntime: the MaxPool gradient
//! forms (CPU and CUDA), the first block without pool indices ([`poolconv`](super::poolconv)), the NCHWc kernels
//! against standard ops ([`nchwc`]) and the order of [`lower`]'s passes. They need the whole
//! compiler, so they sit beside it rather than inside the passes (which the compiler imports).
use super::graph::{grad_name, Forms, Mode, PoolGrad, TrainGraph, LABELS, LOSS, WEIGHTS};
use super::lower::{lower, Update};
use super::update::{self, Groups, Optimizer};
use super::{compile, compile_with, nchwc};
use crate::kernels;
use crate::onnx::builder::A;
use crate::onnx::{self, proto::ModelProto, Dim, GraphBuilder};
use crate::runtime::{Device, SessionOptions};
use ndarray::{ArrayD, IxDyn};
use rand::{Rng, SeedableRng};
use std::collections::HashSet;
use std::path::Path;

type Rg = rand_chacha::ChaCha8Rng;

fn opts() -> SessionOptions {
    SessionOptions { device: Device::Cpu, threads: 1, precision: None }
}

fn rand_array(rng: &mut impl Rng, shape: &[usize], scale: f32) -> ArrayD<f32> {
    ArrayD::from_shape_simple_fn(IxDyn(shape), || rng.gen_range(-scale..scale))
}

#[path = "../../../tests/common/conv_body.rs"]
mod conv_body;
use conv_body::{conv, conv_model};

/// Run the training graph `model` (compiled from `m` as `tg`, or a rewrite of it) on one batch at
/// `m`'s initial weights; returns the tensors `names`.
fn run_train_graph(
    model: &ModelProto,
    m: &ModelProto,
    tg: &TrainGraph,
    x: &ArrayD<f32>,
    y: &ArrayD<f32>,
    names: &[String],
) -> Vec<ArrayD<f32>> {
    let what = Path::new("test.onnx");
    let mut s = crate::runtime::open(&onnx::encode_model(model), what, &opts()).unwrap().session;
    let params: Vec<ArrayD<f32>> = tg
        .params
        .iter()
        .map(|p| onnx::tensor_to_f32(onnx::graph(m).initializer.iter().find(|t| &t.name == p).unwrap()).unwrap())
        .collect();
    let ones = ArrayD::ones(IxDyn(&[y.shape()[0], 1]));
    let mut feed = vec![(tg.input.as_str(), x.view()), (LABELS, y.view()), (WEIGHTS, ones.view())];
    feed.extend(tg.params.iter().map(|p| p.as_str()).zip(params.iter().map(|a| a.view())));
    let names: Vec<&str> = names.iter().map(|s| s.as_str()).collect();
    crate::runtime::run_f32(&mut s, feed, &names).unwrap()
}

/// Largest absolute difference and largest magnitude of `a`.
fn max_diff(a: &ArrayD<f32>, b: &ArrayD<f32>) -> (f32, f32) {
    let d = (a - b).iter().fold(0f32, |m, v| m.max(v.abs()));
    (d, a.iter().fold(0f32, |m, v| m.max(v.abs())))
}

/// One-hot labels (N, k): the targets of a categorical cross-entropy.
fn one_hot(labels: &[usize], k: usize) -> ArrayD<f32> {
    ArrayD::from_shape_fn(IxDyn(&[labels.len(), k]), |i| (labels[i[0]] == i[1]) as u8 as f32)
}

/// The CUDA form of the MaxPool gradient (ScatterElements only: ORT's CUDA provider has no
/// MaxUnpool kernel) gives the same gradients as the CPU form, and contains no MaxUnpool.
#[test]
fn scatter_pool_gradients_equal_unpool_gradients() {
    let spec = crate::convnet::spec("mnist").unwrap();
    let m = crate::convnet::build(&spec, 2).unwrap();
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(6);
    let x = rand_array(&mut rng, &[4, 28, 28, 1], 1.0);
    let y = one_hot(&[1, 3, 5, 7], 10);
    let grads = |pools: PoolGrad| {
        let tg = compile_with(
            &m,
            Path::new("mnist.onnx"),
            &|_| true,
            &spec.input,
            Mode::Train,
            Forms { pools, ..Forms::default() },
        )
        .unwrap();
        let ops: Vec<&str> = onnx::graph(&tg.model).node.iter().map(|n| n.op_type.as_str()).collect();
        let names: Vec<String> = tg.params.iter().map(|p| grad_name(p)).collect();
        (
            run_train_graph(&tg.model, &m, &tg, &x, &y, &names),
            ops.contains(&"MaxUnpool"),
            ops.contains(&"ScatterElements"),
        )
    };
    let (unpool, has_unpool, _) = grads(PoolGrad::Unpool);
    let (scatter, still_unpool, has_scatter) = grads(PoolGrad::Scatter);
    let (argmax, unpool_left, scatter_left) = grads(PoolGrad::Argmax);
    assert!(has_unpool && !still_unpool && has_scatter && !unpool_left && !scatter_left);
    for (form, other) in [("scatter", &scatter), ("tlearn's CPU kernels", &argmax)] {
        for (a, b) in unpool.iter().zip(other) {
            let (d, _) = max_diff(a, b);
            assert!(d <= 1e-6, "{form} vs unpool gradients differ by {d}");
        }
    }
}

/// The first Conv→Relu→MaxPool block, trained as four strided convolutions and a Max
/// (`train::poolconv`), gives the gradients of the MaxPool form — also where window values tie
/// (blank regions of quantised images, as in MNIST): the Max rule routes to the first maximum, as
/// MaxPool's Indices do. The MaxPool form is what the compiler emits when the block's input needs
/// a gradient, here through a trainable 1×1 input convolution.
#[test]
fn first_block_without_pool_indices_equals_maxpool_gradients() {
    let mut b = GraphBuilder::new("m").with_prefix("m/");
    b.input("x", &[Dim::named("N"), Dim::Fixed(13), Dim::Fixed(12), Dim::Fixed(1)]);
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(31);
    let t = b.op("Transpose", &["x"], vec![("perm", A::Ints(vec![0, 3, 1, 2]))]);
    // A 1×1 convolution of weight 1 (an input Mul would be input normalisation, never trained).
    let s = b.init_f32("scale", &ndarray::Array4::from_elem((1, 1, 1, 1), 1.0f32).into_dyn());
    let t = b.op("Conv", &[&t, &s], vec![]);
    // Filters 0–3 are uniform: different patches with equal sums tie in a window, and which of
    // them gets the gradient changes the weight gradient.
    let mut wv = rand_array(&mut rng, &[8, 1, 3, 3], 0.5);
    wv.slice_mut(ndarray::s![0..4, .., .., ..]).fill(0.25);
    let w = b.init_f32("w", &wv);
    let bias = b.init_f32("b", &ndarray::Array1::from_vec((0..8).map(|i| 0.05 * i as f32 - 0.1).collect()).into_dyn());
    let z = b.op("Conv", &[&t, &w, &bias], vec![("pads", A::Ints(vec![1, 0, 0, 1]))]);
    let a = b.op("Relu", &[&z], vec![]);
    let p = b.op("MaxPool", &[&a], vec![("kernel_shape", A::Ints(vec![2, 2])), ("strides", A::Ints(vec![2, 2]))]);
    let f = b.op("Flatten", &[&p], vec![("axis", A::I(1))]);
    let dw = b.init_f32("dw", &rand_array(&mut rng, &[8 * 6 * 5, 3], 0.3));
    let db = b.init_f32("db", &rand_array(&mut rng, &[3], 0.1));
    let l = b.op("Gemm", &[&f, &dw, &db], vec![]);
    b.node("Softmax", &[&l], &["y"], vec![("axis", A::I(-1))]);
    b.output("y", &[Dim::named("N"), Dim::Fixed(3)]);
    let m = onnx::model(b.finish(), "test");
    // Quantised images with blank (all-zero) regions: windows whose four values tie.
    let x = ArrayD::from_shape_fn(IxDyn(&[4, 13, 12, 1]), |ix| {
        if ix[1] < 5 || ix[2] > 8 {
            0.0
        } else {
            ((ix[0] * 7 + ix[1] * 3 + ix[2] * 5) % 3) as f32 * 0.5
        }
    });
    let y = one_hot(&[0, 1, 2, 1], 3);
    let names: Vec<String> = ["w", "b", "dw", "db"].iter().map(|p| grad_name(p)).collect();
    let grads = |train_scale: bool, pools: PoolGrad| {
        let sel = |n: &str| train_scale || n != "scale";
        let forms = Forms { pools, ..Forms::default() };
        let tg = compile_with(&m, Path::new("first-block.onnx"), &sel, &[13, 12, 1], Mode::Train, forms).unwrap();
        let ops: Vec<String> = onnx::graph(&tg.model).node.iter().map(|n| n.op_type.clone()).collect();
        (run_train_graph(&tg.model, &m, &tg, &x, &y, &names), ops)
    };
    let (split, split_ops) = grads(false, PoolGrad::Unpool);
    let (pooled, pooled_ops) = grads(true, PoolGrad::Unpool);
    // On tlearn's CPU kernels the block keeps its MaxPool, with the Relu's ReLU′ folded in.
    let (kernel, kernel_ops) = grads(false, PoolGrad::Argmax);
    assert!(!split_ops.iter().any(|o| o == "MaxPool") && split_ops.iter().any(|o| o == "Max"), "{split_ops:?}");
    assert!(pooled_ops.iter().any(|o| o == "MaxUnpool" || o == "ScatterElements"), "{pooled_ops:?}");
    assert!(kernel_ops.iter().any(|o| o == kernels::MAX_POOL_GRAD) && !kernel_ops.iter().any(|o| o == "Max"));
    for (form, other) in [("split", &split), ("tlearn's kernels", &kernel)] {
        for ((a, c), name) in other.iter().zip(&pooled).zip(["w", "b", "dw", "db"]) {
            let (d, scale) = max_diff(a, c);
            assert!(scale > 0.0 && d <= 1e-5 * scale + 1e-7, "grad of {name}: {form} vs MaxPool form differ by {d}");
        }
    }
}

/// The CPU fast path (`train::nchwc`: convolutions and their input gradients on onnxruntime's
/// NCHWc kernels) computes what the standard-op graph computes — loss, outputs and every
/// gradient — on the nodes it rewrites: symmetric, asymmetric and 5×5 pads, 1×1 filters, fused
/// and unfused ReLU, 16/32 channels (a multiple of every block size; 32 → 32 gives two blocks on
/// both sides of a filter even with AVX-512's 16).
#[test]
fn nchwc_rewrite_matches_standard_ops() {
    let Some(block) = nchwc::block() else {
        // MLAS has NCHWc kernels on every x86-64 CPU with AVX2: there the probe must find them.
        #[cfg(target_arch = "x86_64")]
        assert!(!is_x86_feature_detected!("avx2"), "AVX2 CPU, but the NCHWc probe found no kernels");
        eprintln!("skipped: onnxruntime has no NCHWc kernels on this CPU");
        return;
    };
    let m = conv_model([9, 9, 16], 3, |b, rng, x| {
        let h = conv(b, rng, &x, 16, 32, 3, vec![("pads", A::Ints(vec![1, 1, 1, 1]))]);
        let h = b.op("Relu", &[&h], vec![]);
        let h = b.op("MaxPool", &[&h], vec![("kernel_shape", A::Ints(vec![2, 2])), ("strides", A::Ints(vec![2, 2]))]);
        let h = conv(b, rng, &h, 32, 16, 3, vec![("pads", A::Ints(vec![0, 1, 1, 0]))]);
        let h = b.op("Relu", &[&h], vec![]);
        let h = conv(b, rng, &h, 16, 32, 5, vec![("pads", A::Ints(vec![2, 2, 2, 2]))]);
        conv(b, rng, &h, 32, 32, 1, vec![])
    });
    let what = Path::new("nchwc.onnx");
    let tg = compile(&m, what, &|_| true, &[9, 9, 16], Mode::Train).unwrap();
    let mut fast = tg.model.clone();
    // Forward: the 2nd to 4th convolutions (the 1st block becomes four strided convolutions,
    // poolconv.rs), and their input gradients (the 1st's input is the data).
    assert_eq!(nchwc::rewrite(&mut fast, block), 6);
    let ops: Vec<&str> = onnx::graph(&fast).node.iter().map(|n| n.op_type.as_str()).collect();
    assert!(!ops.contains(&"ConvTranspose"), "{ops:?}");
    assert_same_step(&m, &tg, &fast, [9, 9, 16], 8);
}

/// Group-1 convolutions over channel counts that do not fill whole blocks (EfficientNet's 24 and
/// 40) go onto the kernels with zero filters added, their outputs cropped, where that adds at most
/// half the work: with AVX-512's 16, 24 → 32 and 40 → 48 move, 20 (→ 32) stays; with AVX2's 8
/// all fill whole blocks. ReLU, ReLU6 and a residual Add on the 24 channels.
#[test]
fn nchwc_rewrite_fills_channels_to_whole_blocks() {
    let Some(block) = kernels_block() else { return };
    let m = conv_model([10, 10, 16], 3, |b, rng, x| {
        let h1 = conv(b, rng, &x, 16, 24, 1, vec![]);
        let h1 = b.op("Relu", &[&h1], vec![]);
        let h = conv(b, rng, &h1, 24, 40, 3, vec![("pads", A::Ints(vec![1, 1, 1, 1]))]);
        let (lo, hi) = (b.const_f32("lo", 0.0), b.const_f32("hi", 0.5));
        let h = b.op("Clip", &[&h, &lo, &hi], vec![]);
        let h = conv(b, rng, &h, 40, 24, 1, vec![]);
        let h = b.op("Add", &[&h, &h1], vec![]);
        let h = conv(b, rng, &h, 24, 20, 1, vec![]);
        conv(b, rng, &h, 20, 32, 1, vec![])
    });
    let what = Path::new("nchwc-filled.onnx");
    let tg = compile(&m, what, &|_| true, &[10, 10, 16], Mode::Train).unwrap();
    let mut fast = tg.model.clone();
    // Forwards and the input gradients of all but the first (its input is the data).
    let moved = nchwc::rewrite(&mut fast, block);
    let pads = onnx::graph(&fast).node.iter().filter(|n| n.op_type == "Pad").count();
    match block {
        16 => assert_eq!((moved, pads), (3 + 2, 2 * 3 + 2), "24 and 40 filled (filters and biases, filters); 20 left"),
        8 => assert_eq!((moved, pads), (5 + 4, 0), "whole blocks of 8"),
        b => eprintln!("block {b}: {moved} moved"),
    }
    assert_same_step(&m, &tg, &fast, [10, 10, 16], 10);
}

/// tlearn's CPU kernels (`kernels/`: MaxPools with byte argmaxes, one-pass Relu and Clip
/// gradients, the weight gradients' columns) compute the standard forms' step: the first block's pool (the standard form splits
/// it, poolconv.rs) on an odd map (the floor drops a row and a column), a Relu elsewhere, a ReLU6,
/// and a Relu read by a 2×2 pool (its ReLU′ folded into the pool's gradient).
#[test]
fn cpu_kernel_forms_equal_the_standard_forms() {
    let m = conv_model([11, 11, 4], 3, |b, rng, x| {
        let pool = vec![("kernel_shape", A::Ints(vec![2, 2])), ("strides", A::Ints(vec![2, 2]))];
        let h = conv(b, rng, &x, 4, 8, 3, vec![("pads", A::Ints(vec![1, 1, 1, 1]))]);
        let h = b.op("Relu", &[&h], vec![]);
        let h = b.op("MaxPool", &[&h], pool.clone());
        let h = conv(b, rng, &h, 8, 8, 1, vec![]);
        let r = b.op("Relu", &[&h], vec![]);
        let h = conv(b, rng, &r, 8, 8, 3, vec![("pads", A::Ints(vec![1, 1, 1, 1]))]);
        let (lo, hi) = (b.const_f32("lo", 0.0), b.const_f32("hi", 0.5));
        let h = b.op("Clip", &[&h, &lo, &hi], vec![]);
        let h = b.op("Add", &[&h, &r], vec![]);
        let h = conv(b, rng, &h, 8, 8, 1, vec![]);
        let h = b.op("Relu", &[&h], vec![]);
        b.op("MaxPool", &[&h], pool)
    });
    let what = Path::new("kernels.onnx");
    let tg = compile(&m, what, &|_| true, &[11, 11, 4], Mode::Train).unwrap();
    let forms = Forms { pools: PoolGrad::Argmax, ..Forms::default() };
    let on_kernels = compile_with(&m, what, &|_| true, &[11, 11, 4], Mode::Train, forms).unwrap();
    let count = |op: &str| onnx::graph(&on_kernels.model).node.iter().filter(|n| n.op_type == op).count();
    let standard = ["MaxUnpool", "Max", "Greater", "Less"].map(count);
    let custom = [kernels::MAX_POOL, kernels::MAX_POOL_GRAD, kernels::CLIP_GRAD, kernels::UNFOLD].map(count);
    let want = ([0; 4], [2, 2, 2, 2]);
    assert_eq!((standard, custom), want, "two pools, a Relu and the Clip, the 3×3 layers' columns on the kernels");
    assert_same_step(&m, &tg, &on_kernels.model, [11, 11, 4], 12);
}

/// The NCHWc block, or None (saying the test skips) where onnxruntime has no NCHWc kernels.
fn kernels_block() -> Option<usize> {
    let block = nchwc::block();
    if block.is_none() {
        eprintln!("skipped: onnxruntime has no NCHWc kernels on this CPU");
    }
    block
}

/// `fast` (a rewrite of `tg`, compiled from `m`) gives the loss, outputs and gradients `tg` gives
/// on one random batch of five `input`-shaped images.
fn assert_same_step(m: &ModelProto, tg: &TrainGraph, fast: &ModelProto, input: [usize; 3], seed: u64) {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let x = rand_array(&mut rng, &[5, input[0], input[1], input[2]], 1.0);
    let y = one_hot(&[0, 1, 2, 0, 1], 3);
    let mut names = vec![LOSS.to_string(), tg.output.clone()];
    names.extend(tg.params.iter().map(|p| grad_name(p)));
    let standard = run_train_graph(&tg.model, m, tg, &x, &y, &names);
    let rewritten = run_train_graph(fast, m, tg, &x, &y, &names);
    for ((a, b), name) in standard.iter().zip(&rewritten).zip(&names) {
        let (d, scale) = max_diff(a, b);
        assert!(scale > 0.0 && d <= 1e-4 * scale + 1e-6, "{name}: the rewritten form differs by {d} (scale {scale})");
    }
}

/// The same for depthwise convolutions (EfficientNet's): forwards at stride 1 and 2, dilated, with
/// asymmetric, SAME_UPPER and SAME_LOWER (stride 2: pads 1 before, 0 after) pads, a fused ReLU and ReLU6,
/// and the input gradients of the stride-1 undilated ones (a SAME forward's as explicit pads) and
/// of the stride-2 ones by phases (`nchwc/phases.rs`); the dilated one's stays
/// ConvTranspose. A group-1 convolution with SAME pads moves too.
#[test]
fn nchwc_rewrite_matches_standard_ops_on_depthwise_convolutions() {
    let Some(block) = kernels_block() else { return };
    let (m, input) = depthwise_model();
    let what = Path::new("nchwc-depthwise.onnx");
    let tg = compile(&m, what, &|_| true, &input, Mode::Train).unwrap();
    let mut fast = tg.model.clone();
    // Ten forwards; the input gradients of the five stride-1 undilated layers after the first
    // (whose input is the data), the SAME ones' included, and of the three at stride 2, by phases
    // (the odd ones cropped).
    assert_eq!(nchwc::rewrite(&mut fast, block), 18);
    let left = onnx::graph(&fast).node.iter().filter(|n| n.op_type == "ConvTranspose").count();
    assert_eq!(left, 1, "the dilated layer's input gradient");
    let acts: Vec<String> = onnx::graph(&fast)
        .node
        .iter()
        .filter_map(|n| onnx::attr(n, "activation").map(|a| String::from_utf8_lossy(&a.s).into_owned()))
        .collect();
    assert_eq!(acts, ["Relu", "Clip"], "the ReLU and the ReLU6 fused into their convolutions");
    let g = onnx::graph(&fast);
    let read: HashSet<&str> = g.node.iter().flat_map(|n| n.input.iter().map(String::as_str)).collect();
    let unread: Vec<&str> = g.initializer.iter().map(|t| t.name.as_str()).filter(|t| !read.contains(t)).collect();
    assert!(unread.is_empty(), "initializers no node reads (the fused Clip's bounds?): {unread:?}");
    // A conv reading another's output takes it blocked, not unblocked and blocked again.
    let blocked: HashSet<&str> = g
        .node
        .iter()
        .filter(|n| n.domain == nchwc::DOMAIN && n.op_type == "Conv")
        .map(|n| n.output[0].as_str())
        .collect();
    let unblocked: HashSet<&str> =
        g.node.iter().filter(|n| n.op_type == "ReorderOutput").map(|n| n.output[0].as_str()).collect();
    let reorders = |t: &str| g.node.iter().filter(|n| n.op_type == "ReorderInput" && n.input[0] == t).count();
    assert!(g.node.iter().any(|n| n.op_type == "Conv" && blocked.contains(n.input[0].as_str())), "a blocked chain");
    assert_eq!(unblocked.iter().map(|t| reorders(t)).sum::<usize>(), 0, "no round trip left");
    assert_same_step(&m, &tg, &fast, input, 9);
}

/// A stride-2 depthwise layer's input gradient by phases on a non-square map with other pads on
/// each axis: rows (0, 0) with a row the stride drops (output_padding 1), columns (1, 1) and an odd
/// width (the odd phase cropped) — rows and columns swapped would not match.
#[test]
fn strided_depthwise_input_gradients_by_phases_on_a_non_square_map() {
    let Some(block) = kernels_block() else { return };
    let input = [12, 17, 16];
    let m = conv_model(input, 3, |b, rng, x| {
        let h = conv(b, rng, &x, 16, 32, 1, vec![]);
        let dw = vec![("group", A::I(32)), ("pads", A::Ints(vec![0, 1, 0, 1])), ("strides", A::Ints(vec![2, 2]))];
        let h = conv(b, rng, &h, 1, 32, 3, dw);
        conv(b, rng, &h, 32, 32, 1, vec![])
    });
    let tg = compile(&m, Path::new("phases.onnx"), &|_| true, &input, Mode::Train).unwrap();
    let mut fast = tg.model.clone();
    nchwc::rewrite(&mut fast, block);
    let ops: Vec<&str> = onnx::graph(&fast).node.iter().map(|n| n.op_type.as_str()).collect();
    assert!(!ops.contains(&"ConvTranspose"), "{ops:?}");
    let phases = onnx::graph(&fast).node.iter().filter(|n| {
        n.domain == nchwc::DOMAIN
            && onnx::attr_i(n, "group", 1) == 32
            && onnx::attr_ints(n, "kernel_shape").is_some_and(|k| k != [3, 3])
    });
    assert_eq!(phases.count(), 4, "one stride-1 convolution per phase");
    assert_same_step(&m, &tg, &fast, input, 11);
}

/// Depthwise weight gradients in the stacked form (`Forms::nchwc`: one depthwise Conv of the
/// batch stacked along the height) equal the correlation's, on every layer of
/// [`depthwise_model`], on a batch other than the compile's (the kernels' rows follow it); on the
/// NCHWc kernels those Convs move too, with the same gradients.
#[test]
fn stacked_depthwise_weight_gradients_equal_the_standard_forms() {
    let (m, input) = depthwise_model();
    let what = Path::new("stacked.onnx");
    let tg = compile(&m, what, &|_| true, &input, Mode::Train).unwrap();
    let stacked = |block| {
        compile_with(&m, what, &|_| true, &input, Mode::Train, Forms { nchwc: Some(block), ..Forms::default() })
            .unwrap()
    };
    let standard = stacked(16);
    let g = onnx::graph(&standard.model);
    let declared = g.value_info.iter().filter(|v| format!("{v:?}").contains(super::rules::conv::STACKED_ROWS)).count();
    assert_eq!(declared, 7, "one stacked kernel per depthwise layer");
    // The group-1 3×3 layer's dW is a correlation (two Pads of zero images); no other Pad.
    let pads = g.node.iter().filter(|n| n.op_type == "Pad").count();
    assert_eq!(pads, 2, "rows of zeros by Concat (Pad is 4× slower)");
    assert_same_step(&m, &tg, &standard.model, input, 10);
    let Some(block) = nchwc::block() else {
        eprintln!("skipped (the NCHWc half): onnxruntime has no NCHWc kernels on this CPU");
        return;
    };
    let mut fast = stacked(block).model;
    assert_eq!(nchwc::rewrite(&mut fast, block), 18 + 7 + 1, "and the eight weight gradients");
    let g = onnx::graph(&fast);
    let stacked_kernels: Vec<&str> = g.value_info.iter().map(|v| v.name.as_str()).collect();
    let left = g
        .node
        .iter()
        .filter(|n| n.op_type == "Conv" && n.domain.is_empty() && stacked_kernels.contains(&n.input[1].as_str()));
    assert_eq!(left.count(), 0, "every stacked Conv on the kernels");
    assert_same_step(&m, &tg, &fast, input, 10);
}

/// Group-1 weight gradients with a small output as one correlation on the kernels
/// (`Forms::nchwc`: X's channels as the batch, its images as the channels, dY as the kernels, both
/// with zero images up to whole blocks) give the standard forms' gradients: a batch of five (not a
/// block), symmetric, asymmetric and no pads, 24 output channels (filled with AVX-512's 16); the
/// 1×1 layer's dW stays a MatMul.
#[test]
fn correlated_weight_gradients_on_the_kernels_equal_the_standard_forms() {
    let Some(block) = kernels_block() else { return };
    let m = conv_model([9, 9, 16], 3, |b, rng, x| {
        let h = conv(b, rng, &x, 16, 32, 3, vec![("pads", A::Ints(vec![1, 1, 1, 1]))]);
        let h = b.op("Relu", &[&h], vec![]);
        let h = conv(b, rng, &h, 32, 24, 3, vec![("pads", A::Ints(vec![0, 1, 1, 0]))]);
        let h = conv(b, rng, &h, 24, 32, 3, vec![]);
        conv(b, rng, &h, 32, 32, 1, vec![])
    });
    let (what, input) = (Path::new("correlated.onnx"), [9, 9, 16]);
    let tg = compile(&m, what, &|_| true, &input, Mode::Train).unwrap();
    let forms = Forms { nchwc: Some(block), ..Forms::default() };
    let mut fast = compile_with(&m, what, &|_| true, &input, Mode::Train, forms).unwrap().model;
    let declared: Vec<String> = onnx::graph(&fast)
        .value_info
        .iter()
        .filter(|v| format!("{v:?}").contains(nchwc::BATCH_BLOCKS))
        .map(|v| v.name.clone())
        .collect();
    assert_eq!(declared.len(), 3, "the three 3×3 layers");
    nchwc::rewrite(&mut fast, block);
    let g = onnx::graph(&fast);
    let plain = g.node.iter().filter(|n| n.op_type == "Conv" && n.domain.is_empty());
    assert_eq!(plain.filter(|n| declared.contains(&n.input[1])).count(), 0, "every correlation on the kernels");
    assert_same_step(&m, &tg, &fast, input, 11);
}

/// Depthwise convolutions (EfficientNet's) at stride 1 and 2, dilated, with asymmetric,
/// SAME_UPPER and SAME_LOWER pads, a ReLU and a ReLU6, and a group-1 SAME convolution; 32
/// channels.
fn depthwise_model() -> (ModelProto, [usize; 3]) {
    let dw = |pads: [i64; 4], s: i64, d: i64| {
        let mut a = vec![("group", A::I(32)), ("pads", A::Ints(pads.to_vec()))];
        a.extend([("strides", A::Ints(vec![s, s])), ("dilations", A::Ints(vec![d, d]))]);
        a
    };
    // As EfficientNet's exports write them: SAME_UPPER (at stride 2: pads 0 before, 1 after).
    let same = |how: &'static str, s: i64, group: i64| {
        let mut a = vec![("auto_pad", A::S(how)), ("strides", A::Ints(vec![s, s]))];
        a.extend([("kernel_shape", A::Ints(vec![3, 3])), ("group", A::I(group))]);
        a
    };
    let m = conv_model([20, 20, 16], 3, |b, rng, x| {
        let h = conv(b, rng, &x, 16, 32, 1, vec![]);
        let h = conv(b, rng, &h, 1, 32, 3, dw([1, 1, 1, 1], 1, 1));
        let h = b.op("Relu", &[&h], vec![]);
        let h = conv(b, rng, &h, 1, 32, 5, dw([2, 2, 2, 2], 2, 1));
        let h = conv(b, rng, &h, 1, 32, 3, same("SAME_UPPER", 2, 32));
        let h = conv(b, rng, &h, 1, 32, 3, same("SAME_UPPER", 1, 32));
        // ReLU6 as EfficientNet-Lite's exports write it (bounds as inputs), inputs on both sides.
        let (lo, hi) = (b.const_f32("lo", 0.0), b.const_f32("hi", 0.5));
        let h = b.op("Clip", &[&h, &lo, &hi], vec![]);
        let h = conv(b, rng, &h, 1, 32, 3, same("SAME_LOWER", 2, 32));
        let h = conv(b, rng, &h, 32, 32, 3, same("SAME_UPPER", 1, 1));
        let h = conv(b, rng, &h, 1, 32, 3, dw([0, 1, 1, 0], 1, 1));
        let h = conv(b, rng, &h, 1, 32, 3, dw([2, 2, 2, 2], 1, 2));
        conv(b, rng, &h, 32, 32, 1, vec![])
    });
    (m, [20, 20, 16])
}

#[test]
fn the_update_comes_first_then_the_cpu_kernels() {
    let m = conv_model([6, 6, 16], 3, |b, rng, x| {
        let h = conv(b, rng, &x, 16, 32, 3, vec![("pads", A::Ints(vec![1, 1, 1, 1]))]);
        b.op("Relu", &[&h], vec![])
    });
    let tg = compile(&m, Path::new("lower.onnx"), &|_| true, &[6, 6, 16], Mode::Train).unwrap();
    let (opt, groups) = (Optimizer::adam(1e-3), Groups::default());
    let u = Update { opt: &opt, groups: &groups };
    // CUDA sessions get the standard-op graph, with the update when asked for.
    assert_eq!(lower(&tg, None, Device::Cuda), tg.model);
    let updated = update::append_update(&tg, &opt, &groups);
    assert_eq!(lower(&tg, Some(u), Device::Cuda), updated);
    // On the CPU the kernels rewrite the updated graph: every parameter's next value is still
    // an output, and the convolutions run in the NCHWc domain where the kernels exist.
    let cpu = lower(&tg, Some(u), Device::Cpu);
    let g = crate::onnx::graph(&cpu);
    for p in &tg.params {
        assert!(g.output.iter().any(|o| o.name == update::next_name(p)), "{p}");
    }
    let blocked = g.node.iter().any(|n| n.domain == nchwc::DOMAIN);
    assert_eq!(blocked, nchwc::block().is_some(), "{:?}", nchwc::block());
}

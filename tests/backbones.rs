//! Backbones built by tlearn from PyTorch state dicts: the legacy `.pth` reader on generated files
//! (strided views, integer entries, truncation, wrong formats) and the EfficientNet-Lite builder on
//! a small generated state dict (blocks, strides and residuals read from the weights; missing and
//! mis-shaped keys named). The real Lite0/1/2 weights are checked on photos by `make
//! check-backbones` (tests/check_backbones.rs).

use ndarray::{ArrayD, IxDyn};
use rand::{Rng, SeedableRng};
use std::path::Path;
use tlearn::runtime::{Device, SessionOptions};

/// Writes pickles with the opcodes legacy `.pth` files use (protocol 2).
#[derive(Default)]
struct Pickle(Vec<u8>);

impl Pickle {
    fn op(&mut self, b: &[u8]) -> &mut Self {
        self.0.extend_from_slice(b);
        self
    }
    fn proto(&mut self) -> &mut Self {
        self.op(&[0x80, 2])
    }
    fn str(&mut self, s: &str) -> &mut Self {
        self.op(b"X").op(&(s.len() as u32).to_le_bytes()).op(s.as_bytes())
    }
    fn int(&mut self, v: i32) -> &mut Self {
        self.op(b"J").op(&v.to_le_bytes())
    }
    fn global(&mut self, module: &str, name: &str) -> &mut Self {
        self.op(b"c").op(module.as_bytes()).op(b"\n").op(name.as_bytes()).op(b"\n")
    }
    fn ints(&mut self, v: &[usize]) -> &mut Self {
        self.op(b"(");
        for &x in v {
            self.int(x as i32);
        }
        self.op(b"t")
    }
    fn ordered_dict(&mut self) -> &mut Self {
        self.global("collections", "OrderedDict").op(b")R")
    }
    /// `_rebuild_tensor_v2(storage, offset, size, stride, False, OrderedDict())`.
    fn tensor(
        &mut self,
        ty: &str,
        key: &str,
        numel: usize,
        offset: usize,
        size: &[usize],
        stride: &[usize],
    ) -> &mut Self {
        self.global("torch._utils", "_rebuild_tensor_v2").op(b"((");
        self.str("storage").global("torch", ty).str(key).str("cpu").int(numel as i32).op(b"tQ");
        self.int(offset as i32).ints(size).ints(stride).op(&[0x89]).ordered_dict().op(b"tR")
    }
}

/// A state-dict entry: name, storage type, storage key, size, stride, offset.
type Entry<'a> = (&'a str, &'a str, &'a str, Vec<usize>, Vec<usize>, usize);

/// A legacy `.pth` holding `entries` over `storages` (key, raw little-endian bytes, element count).
fn pth(entries: &[Entry], storages: &[(&str, Vec<u8>, usize)]) -> Vec<u8> {
    let mut p = Pickle::default();
    let magic: u128 = 0x1950a86a20f9469cfc6c;
    p.proto().op(&[0x8a, 10]).op(&magic.to_le_bytes()[..10]).op(b".");
    p.proto().op(b"M").op(&1001u16.to_le_bytes()).op(b".");
    p.proto().op(b"}.");
    p.proto().ordered_dict().op(b"(");
    for (name, ty, key, size, stride, offset) in entries {
        let numel = storages.iter().find(|s| s.0 == *key).map(|s| s.2).unwrap_or(0);
        p.str(name).tensor(ty, key, numel, *offset, size, stride);
    }
    p.op(b"u.");
    p.proto().op(b"](");
    for (key, _, _) in storages {
        p.str(key);
    }
    p.op(b"e.");
    for (_, bytes, n) in storages {
        p.op(&(*n as i64).to_le_bytes()).op(bytes);
    }
    p.0
}

fn f32_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

#[test]
fn the_pth_reader_reads_strided_views_and_refuses_what_it_cannot_read() {
    let data: Vec<f32> = (0..12).map(|i| i as f32).collect();
    let entries = [
        ("w", "FloatStorage", "0", vec![3, 4], vec![4, 1], 0),
        // The transpose of the same storage, and a view starting inside it.
        ("w_t", "FloatStorage", "0", vec![4, 3], vec![1, 4], 0),
        ("tail", "FloatStorage", "0", vec![2], vec![1], 10),
        ("bn.num_batches_tracked", "LongStorage", "1", vec![], vec![], 0),
    ];
    let storages = [("0", f32_bytes(&data), 12), ("1", 7i64.to_le_bytes().to_vec(), 1)];
    let bytes = pth(&entries, &storages);
    let sd = tlearn::pth::parse_state_dict(&bytes, Path::new("gen.pth")).unwrap();
    let names: Vec<&str> = sd.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, ["w", "w_t", "tail"], "integer entries are left out");
    let w = ArrayD::from_shape_vec(IxDyn(&[3, 4]), data.clone()).unwrap();
    assert_eq!(sd[0].1, w);
    assert_eq!(sd[1].1, w.t().to_owned().into_dyn());
    assert_eq!(sd[2].1.as_slice().unwrap(), &[10.0, 11.0]);

    let err = |b: &[u8]| tlearn::pth::parse_state_dict(b, Path::new("gen.pth")).err().unwrap().to_string();
    let e = err(&bytes[..bytes.len() - 5]);
    assert!(e.contains("gen.pth") && e.contains("ends inside storage 1"), "{e}");
    let e = err(&bytes[..40]);
    assert!(e.contains("gen.pth") && e.contains("state dict"), "{e}");
    let e = err(b"PK\x03\x04 a zip-format file");
    assert!(e.contains("gen.pth") && e.contains("opcode"), "{e}");
    // Hostile files: values copied through the memo until memory runs out, containers nested a
    // million deep, storage types this reader does not know, half-precision tensors.
    let mut bomb = Pickle::default();
    bomb.proto().op(b"]q\x00");
    for _ in 0..40 {
        bomb.op(b"h\x00h\x00\x86q\x00");
    }
    let e = err(&bomb.op(b".").0);
    assert!(e.contains("copied past"), "{e}");
    let mut deep = Pickle::default();
    deep.proto().op(b")").op(&vec![0x85u8; 100_000]).op(b".");
    let e = err(&deep.0);
    assert!(e.contains("nested deeper"), "{e}");
    let odd = [("w", "ComplexFloatStorage", "0", vec![2], vec![1], 0)];
    let e = err(&pth(&odd, &storages[..1]));
    assert!(e.contains("ComplexFloatStorage"), "{e}");
    let half = [("w", "HalfStorage", "0", vec![2], vec![1], 0)];
    let e = err(&pth(&half, &storages[..1]));
    assert!(e.contains("w is stored as HalfStorage"), "{e}");
    // A name given twice keeps its last tensor, as a Python dict does.
    let twice = [("w", "FloatStorage", "0", vec![2], vec![1], 0), ("w", "FloatStorage", "0", vec![2], vec![1], 4)];
    let sd = tlearn::pth::parse_state_dict(&pth(&twice, &storages[..1]), Path::new("gen.pth")).unwrap();
    assert_eq!(sd.len(), 1);
    assert_eq!(sd[0].1.as_slice().unwrap(), &[4.0, 5.0]);
    for (size, stride) in [(vec![4, 4], vec![4, 1]), (vec![1 << 20, 1 << 20], vec![0, 0]), (vec![3], vec![])] {
        let bad_view = [("w", "FloatStorage", "0", size, stride, 0)];
        let e = err(&pth(&bad_view, &storages[..1]));
        assert!(e.contains("w: view outside its storage"), "{e}");
    }
}

/// A small EfficientNet-Lite state dict: stem 8, blocks (in → out, expand, kernel) and head 16,
/// `classes` outputs. Block 0 has no expansion (stage 0, stride 1); block 1 starts stage 1
/// (stride 2); block 2 repeats it (stride 1, residual).
fn small_lite(classes: usize) -> Vec<(String, ArrayD<f32>)> {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(5);
    let mut sd = vec![];
    let mut add = |name: &str, shape: &[usize], rng: &mut rand_chacha::ChaCha8Rng| {
        let a = ArrayD::from_shape_simple_fn(IxDyn(shape), || rng.gen_range(0.2f32..1.0));
        sd.push((name.to_string(), a));
    };
    let mut conv_bn = |conv: &str, bn: &str, shape: &[usize], rng: &mut rand_chacha::ChaCha8Rng| {
        add(&format!("{conv}.weight"), shape, rng);
        for p in ["weight", "bias", "running_mean", "running_var"] {
            add(&format!("{bn}.{p}"), &shape[..1], rng);
        }
    };
    conv_bn("_conv_stem", "_bn0", &[8, 3, 3, 3], &mut rng);
    conv_bn("_blocks.0._depthwise_conv", "_blocks.0._bn1", &[8, 1, 3, 3], &mut rng);
    conv_bn("_blocks.0._project_conv", "_blocks.0._bn2", &[4, 8, 1, 1], &mut rng);
    for (i, input) in [(1, 4), (2, 6)] {
        conv_bn(&format!("_blocks.{i}._expand_conv"), &format!("_blocks.{i}._bn0"), &[12, input, 1, 1], &mut rng);
        conv_bn(&format!("_blocks.{i}._depthwise_conv"), &format!("_blocks.{i}._bn1"), &[12, 1, 5, 5], &mut rng);
        conv_bn(&format!("_blocks.{i}._project_conv"), &format!("_blocks.{i}._bn2"), &[6, 12, 1, 1], &mut rng);
    }
    conv_bn("_conv_head", "_bn1", &[16, 6, 1, 1], &mut rng);
    let mut add = |name: &str, shape: &[usize]| {
        sd.push((name.to_string(), ArrayD::from_shape_simple_fn(IxDyn(shape), || rng.gen_range(-1.0f32..1.0))));
    };
    add("_fc.weight", &[classes, 16]);
    add("_fc.bias", &[classes]);
    sd
}

#[test]
fn efficientnet_lite_is_built_from_the_weights_it_is_given() {
    let sd = small_lite(10);
    let m = tlearn::efficientnet::lite(&sd, Path::new("small.pth")).unwrap();
    let g = tlearn::onnx::graph(&m);
    let count = |op: &str| g.node.iter().filter(|n| n.op_type == op).count();
    assert_eq!((count("Conv"), count("Clip"), count("Add")), (10, 7, 1), "stem, 3 blocks (one residual), head");
    let strides: Vec<i64> = g
        .node
        .iter()
        .filter(|n| n.op_type == "Conv" && n.attribute.iter().any(|a| a.name == "group" && a.i > 1))
        .map(|n| n.attribute.iter().find(|a| a.name == "strides").unwrap().ints[0])
        .collect();
    assert_eq!(strides, [1, 2, 1], "the depthwise convolutions' strides by stage");
    // Runs at any input size (TF "SAME" padding): (N, 10) probabilities; the cut features at /2/2.
    let opts = SessionOptions { device: Device::Cpu, threads: 1, precision: None };
    let bytes = tlearn::onnx::encode_model(&m);
    let x = ArrayD::from_shape_fn(IxDyn(&[2, 3, 33, 31]), |i| ((i[2] * 7 + i[3] * 3 + i[1]) % 11) as f32 / 11.0);
    let p = tlearn::train::predict(&bytes, Path::new("small.onnx"), &x, 2, &opts).unwrap();
    assert_eq!(p.shape(), &[2, 10]);
    assert!(p.outer_iter().all(|r| (r.sum() - 1.0).abs() < 1e-5));
    let cut = tlearn::onnx::cut::cut_model_pooled(
        &m,
        Path::new("small.onnx"),
        &[tlearn::efficientnet::FEATURES.to_string()],
        tlearn::onnx::cut::Layout::Nchw,
        None,
    )
    .unwrap();
    let shape = tlearn::backbone::feature_shape(&tlearn::onnx::encode_model(&cut), Path::new("cut.onnx"), 32).unwrap();
    assert_eq!(shape, [8, 8, 16]);
}

/// The EfficientNet-Lite tlearn builds — depthwise convolutions, ReLU6 as Clip, TF "SAME"
/// padding, a residual block, BatchNorm folded — fine-tuned whole: every weight trains and the
/// training loss falls on a task its random features can learn.
#[test]
fn a_small_efficientnet_lite_fine_tunes_whole() {
    let sd = small_lite(3);
    let m = tlearn::efficientnet::lite(&sd, Path::new("small.pth")).unwrap();
    let opts = SessionOptions { device: Device::Cpu, threads: 1, precision: None };
    let mut t = tlearn::train::Trainer::new(&m, Path::new("small.onnx"), &[3, 24, 24], 3, &opts).unwrap();
    let n_weights = tlearn::onnx::graph(&m).initializer.iter().filter(|i| i.dims.len() >= 2).count();
    assert!(t.train.params.len() >= n_weights, "{} parameters, {n_weights} weight tensors", t.train.params.len());
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(2);
    let labels: Vec<usize> = (0..24).map(|i| i % 3).collect();
    // The class is which channel is bright.
    let x = ArrayD::from_shape_fn(IxDyn(&[24, 3, 24, 24]), |i| {
        (if i[1] == labels[i[0]] { 1.0 } else { 0.2 }) + rng.gen_range(-0.1f32..0.1)
    });
    let cfg = tlearn::train::FitConfig::new(12, 8, 1, tlearn::train::optim::Optimizer::adam(3e-3));
    use tlearn::params::ParamGuard;
    let h = t.fit(&x, &labels, None, &cfg.check().unwrap(), |_| {}).unwrap();
    let (first, last) = (h[0].loss, h.last().unwrap().loss);
    assert!(last < 0.7 * first, "training loss {first} → {last}");
}

#[test]
fn a_state_dict_that_is_not_an_efficientnet_lite_is_refused_naming_the_key() {
    let err = |sd: &[(String, ArrayD<f32>)]| {
        tlearn::efficientnet::lite(sd, Path::new("odd.pth")).err().map(|e| e.to_string()).unwrap_or_default()
    };
    let sd: Vec<_> = small_lite(10).into_iter().filter(|(n, _)| n != "_blocks.1._bn1.running_var").collect();
    let e = err(&sd);
    assert!(e.contains("odd.pth") && e.contains("_blocks.1._bn1.running_var"), "{e}");
    let mut sd = small_lite(10);
    let i = sd.iter().position(|(n, _)| n == "_conv_head.weight").unwrap();
    sd[i].1 = ArrayD::zeros(IxDyn(&[16, 6]));
    let e = err(&sd);
    assert!(e.contains("_conv_head.weight") && e.contains("[16, 6]"), "{e}");
    let e = err(&[("fc.weight".to_string(), ArrayD::zeros(IxDyn(&[2, 2])))]);
    assert!(e.contains("odd.pth") && e.contains("_conv_stem.weight"), "{e}");
}

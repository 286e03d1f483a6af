//! Backbones built by tlearn from PyTorch state dicts: the legacy `.pth` reader on generated files
//! (strided views, integer entries, truncation, wrong formats) and the EfficientNet-Lite builder on
//! a small generated state dict (blocks, strides and residuals read from the weights; missing and
//! mis-shaped keys named). The real Lite0/1/2 weights are checked on photos by `make
//! check-backbones` (tests/check_backbones.rs).

use ndarray::{ArrayD, IxDyn};
use rand::{Rng, SeedableRng};
use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::path::Path;
use std::time::{Duration, Instant};
use tlearn::pth::StateDict;
use tlearn::runtime::{Device, SessionOptions};

/// The system allocator, counting what each thread holds, so a test can bound the memory that
/// one call on its own thread takes (other tests run on other threads).
struct Counting;

thread_local! {
    static LIVE: Cell<isize> = const { Cell::new(0) };
    static PEAK: Cell<isize> = const { Cell::new(0) };
}

fn track(delta: isize) {
    let _ = LIVE.try_with(|live| {
        live.set(live.get() + delta);
        let _ = PEAK.try_with(|peak| peak.set(peak.get().max(live.get())));
    });
}

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        track(l.size() as isize);
        unsafe { System.alloc(l) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        track(-(l.size() as isize));
        unsafe { System.dealloc(p, l) }
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, new: usize) -> *mut u8 {
        track(new as isize - l.size() as isize);
        unsafe { System.realloc(p, l, new) }
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

/// What `f` returns, how long it took and the most memory it held at once (this thread's).
fn measured<R>(f: impl FnOnce() -> R) -> (R, Duration, usize) {
    let start = LIVE.with(|l| l.get());
    PEAK.with(|p| p.set(start));
    let t = Instant::now();
    let r = f();
    (r, t.elapsed(), (PEAK.with(|p| p.get()) - start).max(0) as usize)
}

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
    // DUP, which no state dict uses (nor its copies through the memo).
    let e = err(b"\x80\x02N2q\x002.");
    assert!(e.contains("gen.pth") && e.contains("opcode 0x32 at byte 3"), "{e}");
    assert_eq!(sd.integers, [("bn.num_batches_tracked".to_string(), "LongStorage".to_string())]);
    // Hostile files: values built through the memo until memory runs out (more in
    // a_pth_built_to_expand_through_the_memo_fails_fast_in_bounded_memory), containers nested a
    // million deep, storage types this reader does not know, half-precision tensors.
    let mut bomb = Pickle::default();
    bomb.proto().op(b"]q\x00");
    for _ in 0..20 {
        bomb.op(b"h\x00h\x00\x86q\x00");
    }
    let e = err(&bomb.op(b".").0);
    assert!(e.contains("expands beyond"), "{e}");
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

/// The memo's amplification shapes, each cheap in bytes (opcodes only; no PROTO, no STOP): a list
/// stored under thousands of memo keys (a copy each, were the memo to copy), a list grown after it
/// was shared (a copy each time), a tuple of itself doubled through the memo (2^k values in 4k
/// bytes).
fn amplification_shapes() -> [Vec<u8>; 3] {
    let mut put = Pickle::default();
    put.op(b"](");
    for i in 0..2000 {
        put.op(b"K").op(&[i as u8]);
    }
    put.op(b"e");
    for k in 0..2000u32 {
        put.op(b"r").op(&(k + 10).to_le_bytes());
    }
    let mut grow = Pickle::default();
    grow.op(b"](").op(&b"K\x00".repeat(2000)).op(b"eq\x00").op(&b"h\x00K\x01aq\x00".repeat(200));
    let mut double = Pickle::default();
    double.op(b"]q\x01").op(&b"h\x01h\x01\x86q\x01".repeat(64));
    [put.0, grow.0, double.0]
}

fn one_pickle(parts: &[&[u8]]) -> Vec<u8> {
    [&[0x80, 2][..], &parts.concat(), b"."].concat()
}

#[test]
fn a_pth_built_to_expand_through_the_memo_fails_fast_in_bounded_memory() {
    let [put, grow, double] = amplification_shapes();
    let read =
        |b: &[u8]| measured(|| tlearn::pth::parse_state_dict(b, Path::new("amp.pth")).err().unwrap().to_string());
    for bomb in [one_pickle(&[&put, &grow, &double]), one_pickle(&[&grow]), one_pickle(&[&double])] {
        let (e, took, peak) = read(&bomb);
        assert!(e.contains("amp.pth") && e.contains("expands beyond"), "{e}");
        assert!(peak < 64 * bomb.len() + (1 << 20), "{peak} bytes held to read {} bytes", bomb.len());
        assert!(took < Duration::from_secs(2), "{took:?}");
    }
    // Stored under many keys, a value is not copied: no error but what the pickle is.
    let (e, _, peak) = read(&one_pickle(&[&put]));
    assert!(e.contains("magic number expected, got a list"), "{e}");
    assert!(peak < 64 * put.len() + (1 << 20), "{peak} bytes held to read {} bytes", put.len());
}

#[test]
fn a_large_state_dict_reads_in_linear_time() {
    let n = 80_000;
    let names: Vec<String> = (0..n).map(|i| format!("blocks.{i}.weight")).collect();
    let entries: Vec<Entry> =
        names.iter().enumerate().map(|(i, s)| (s.as_str(), "FloatStorage", "0", vec![1], vec![1], i)).collect();
    let data: Vec<f32> = (0..n).map(|i| i as f32).collect();
    let bytes = pth(&entries, &[("0", f32_bytes(&data), n)]);
    let (sd, took, _) = measured(|| tlearn::pth::parse_state_dict(&bytes, Path::new("big.pth")).unwrap());
    assert_eq!(sd.len(), n);
    assert_eq!((sd[n - 1].0.as_str(), sd[n - 1].1.as_slice().unwrap()), ("blocks.79999.weight", &[79999.0][..]));
    assert!(took < Duration::from_secs(2), "{n} entries read in {took:?}");
}

#[test]
fn a_pth_the_reader_cannot_use_is_named_for_what_it_is() {
    let err = |b: &[u8]| tlearn::pth::parse_state_dict(b, Path::new("gen.pth")).err().unwrap().to_string();
    let e = err(b"PK\x03\x04\x14\x00\x00\x00 a zip archive");
    assert!(e.contains("gen.pth") && e.contains("zip-format"), "{e}");
    assert!(e.contains("_use_new_zipfile_serialization=False"), "says how to re-save it: {e}");
    assert!(!e.contains("ONNX"), "a state dict is no ONNX model: {e}");
    let storages = [("0", f32_bytes(&[1.0, f32::NAN, 2.0]), 3)];
    let e = err(&pth(&[("bn.running_var", "FloatStorage", "0", vec![3], vec![1], 0)], &storages));
    assert!(e.contains("bn.running_var") && e.contains("NaN"), "{e}");
    assert!(!e.contains("ONNX"), "{e}");
}

/// A small EfficientNet-Lite state dict: stem 8, blocks (in → out, expand, kernel) and head 16,
/// `classes` outputs. Block 0 has no expansion (stage 0, stride 1); block 1 starts stage 1
/// (stride 2); block 2 repeats it (stride 1, residual).
fn small_lite(classes: usize) -> StateDict {
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
    sd.into()
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
    let err = |sd: &StateDict| {
        let e = tlearn::efficientnet::lite(sd, Path::new("odd.pth")).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(!e.contains("ONNX"), "a state dict is no ONNX model: {e}");
        e
    };
    let sd = small_lite(10);
    let without = |key: &str| -> StateDict { sd.iter().filter(|(n, _)| n != key).cloned().collect::<Vec<_>>().into() };
    let e = err(&without("_blocks.1._bn1.running_var"));
    assert!(e.contains("odd.pth") && e.contains("_blocks.1._bn1.running_var"), "{e}");
    let mut sd = small_lite(10);
    let i = sd.tensors.iter().position(|(n, _)| n == "_conv_head.weight").unwrap();
    sd.tensors[i].1 = ArrayD::zeros(IxDyn(&[16, 6]));
    let e = err(&sd);
    assert!(e.contains("_conv_head.weight") && e.contains("[16, 6]") && e.contains("rank 2"), "{e}");
    assert!(e.contains("rank-4"), "{e}");
    let e = err(&vec![("fc.weight".to_string(), ArrayD::zeros(IxDyn(&[2, 2])))].into());
    assert!(e.contains("odd.pth") && e.contains("_conv_stem.weight"), "{e}");
    // A weight the reader found stored as integers is named as such, not as missing.
    let mut sd = small_lite(10);
    sd.tensors.retain(|(n, _)| n != "_conv_stem.weight");
    sd.integers.push(("_conv_stem.weight".into(), "LongStorage".into()));
    let e = err(&sd);
    assert!(e.contains("`_conv_stem.weight` holds integers (LongStorage)"), "{e}");
}

#[test]
fn every_fuzz_seed_is_read_or_refused_quickly() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/seeds/pth_state_dict");
    for e in std::fs::read_dir(&dir).unwrap() {
        let (p, b) = (e.as_ref().unwrap().path(), std::fs::read(e.unwrap().path()).unwrap());
        let (r, took, peak) = measured(|| tlearn::pth::parse_state_dict(&b, &p).map(|sd| sd.len()));
        assert!(
            took < Duration::from_secs(1) && peak < 64 * b.len() + (1 << 20),
            "{}: {took:?}, {peak} bytes",
            p.display()
        );
        let named = |e: &tlearn::Error| e.to_string().contains(&*p.to_string_lossy());
        assert!(r.as_ref().is_ok_and(|&n| n > 0) || r.as_ref().is_err_and(named), "{}: {r:?}", p.display());
    }
}

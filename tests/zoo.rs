//! The ONNX Model Zoo by name: `tlearn-backbone fetch zoo:NAME` against a server on the loopback
//! address serving a generated zoo-like model (the real zoo is not reachable from our machines):
//! the right file, a wrong one, transfers that break (resumed with a Range request), a missing
//! file and no server at all.

mod common;

use common::*;
use ndarray::ArrayD;
use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::sync::{Arc, Mutex};
use tlearn::onnx::builder::A;
use tlearn::onnx::{self, Dim, GraphBuilder};

const ZOO_PATH: &str = "vision/classification/tiny/model/tiny-7.onnx";

/// A zoo-like classifier (MXNet/Caffe2 exports): NCHW input fixed at batch 1, Conv → Relu →
/// residual Add → Relu (`stage_out`) → GlobalAveragePool → Flatten → Gemm → Softmax.
fn zoo_like() -> Vec<u8> {
    let mut b = GraphBuilder::new("zoo_like").with_prefix("z/");
    b.input("data", &[Dim::Fixed(1), Dim::Fixed(3), Dim::Fixed(32), Dim::Fixed(32)]);
    let w = |b: &mut GraphBuilder, name: &str, dims: &[usize], k: f32| {
        let n: usize = dims.iter().product();
        let a = ArrayD::from_shape_vec(ndarray::IxDyn(dims), (0..n).map(|i| ((i % 7) as f32 - 3.0) * k).collect());
        b.init_f32(name, &a.unwrap())
    };
    let pads = || vec![("kernel_shape", A::Ints(vec![3, 3])), ("pads", A::Ints(vec![1, 1, 1, 1]))];
    let w1 = w(&mut b, "conv1/w", &[8, 3, 3, 3], 0.05);
    let c1 = b.op("Conv", &["data", &w1], pads());
    let r1 = b.op("Relu", &[&c1], vec![]);
    let w2 = w(&mut b, "conv2/w", &[8, 8, 3, 3], 0.02);
    let c2 = b.op("Conv", &[&r1, &w2], pads());
    let sum = b.op("Add", &[&c2, &r1], vec![]);
    b.node("Relu", &[&sum], &["stage_out"], vec![]);
    let gap = b.op("GlobalAveragePool", &["stage_out"], vec![]);
    let f = b.op("Flatten", &[&gap], vec![]);
    let fc = w(&mut b, "fc/w", &[8, 5], 0.1);
    let g = b.op("Gemm", &[&f, &fc], vec![]);
    b.node("Softmax", &[&g], &["prob"], vec![]);
    b.output("prob", &[Dim::Fixed(1), Dim::Fixed(5)]);
    onnx::encode_model(&onnx::model(b.finish(), "zoo-like test fixture"))
}

/// How the server answers.
#[derive(Clone, Copy, PartialEq)]
enum Mode {
    /// The file, honouring `Range`.
    Good,
    /// Other bytes of the same length.
    Wrong,
    /// A Git LFS pointer instead of the file.
    Pointer,
    /// Promise the whole file, send half, hang up; every time.
    Truncate,
    /// Like `Truncate` for the first request, then `Good`.
    TruncateOnce,
    NotFound,
    /// The file's length promised, then a byte every 200 ms.
    Trickle,
    /// An HTML page with no length.
    Page,
    /// A redirect to a local file.
    RedirectFile,
    /// A redirect to itself.
    RedirectLoop,
    /// A Content-Length that is no number.
    BadLength,
}

struct Server {
    port: u16,
    /// Every request's Range header ("" when none).
    ranges: Arc<Mutex<Vec<String>>>,
}

fn serve(body: Vec<u8>, mode: Mode) -> Server {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let ranges = Arc::new(Mutex::new(vec![]));
    let seen = ranges.clone();
    std::thread::spawn(move || {
        for (i, stream) in listener.incoming().enumerate() {
            let Ok(stream) = stream else { continue };
            let mode = if mode == Mode::TruncateOnce { [Mode::Truncate, Mode::Good][i.min(1)] } else { mode };
            answer(stream, &body, mode, &seen);
        }
    });
    Server { port, ranges }
}

fn answer(mut s: TcpStream, body: &[u8], mode: Mode, seen: &Mutex<Vec<String>>) {
    let mut r = BufReader::new(s.try_clone().unwrap());
    let (mut first, mut range) = (String::new(), String::new());
    r.read_line(&mut first).unwrap();
    loop {
        let mut line = String::new();
        if r.read_line(&mut line).unwrap() == 0 || line.trim().is_empty() {
            break;
        }
        if let Some(v) = line.to_ascii_lowercase().strip_prefix("range:") {
            range = v.trim().to_string();
        }
    }
    seen.lock().unwrap().push(range.clone());
    if !first.contains(ZOO_PATH) || mode == Mode::NotFound {
        let _ = s.write_all(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
        return;
    }
    if hostile(&mut s, body, mode) {
        return;
    }
    let wrong: Vec<u8> = body.iter().map(|b| b ^ 0x5a).collect();
    let pointer = b"version https://git-lfs.github.com/spec/v1\noid sha256:0\nsize 1\n";
    let data = match mode {
        Mode::Wrong => &wrong[..],
        Mode::Pointer => &pointer[..],
        _ => body,
    };
    let start: usize = range.strip_prefix("bytes=").and_then(|v| v.trim_end_matches('-').parse().ok()).unwrap_or(0);
    let n = data.len();
    let head = if start > 0 {
        format!("HTTP/1.1 206 Partial Content\r\nContent-Range: bytes {start}-{}/{n}\r\n", n - 1)
    } else {
        "HTTP/1.1 200 OK\r\n".to_string()
    };
    let part = &data[start..];
    let _ = s.write_all(format!("{head}Content-Length: {}\r\nConnection: close\r\n\r\n", part.len()).as_bytes());
    let send = if mode == Mode::Truncate { &part[..part.len() / 2] } else { part };
    let _ = s.write_all(send);
    let _ = s.flush();
    let _ = s.shutdown(std::net::Shutdown::Both);
}

/// The answers of the hostile modes; false for the others.
fn hostile(s: &mut TcpStream, body: &[u8], mode: Mode) -> bool {
    let head = match mode {
        Mode::Trickle => {
            let _ = write!(s, "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n", body.len());
            for b in body {
                std::thread::sleep(std::time::Duration::from_millis(200));
                if s.write_all(&[*b]).and_then(|_| s.flush()).is_err() {
                    break;
                }
            }
            return true;
        }
        Mode::Page => "HTTP/1.1 200 OK\r\nContent-Type: text/html; charset=utf-8\r\nConnection: close\r\n\r\n<html>rate limited</html>".into(),
        Mode::RedirectFile => "HTTP/1.1 302 Found\r\nLocation: file:///etc/passwd\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".into(),
        Mode::RedirectLoop => format!("HTTP/1.1 302 Found\r\nLocation: /{ZOO_PATH}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"),
        Mode::BadLength => "HTTP/1.1 200 OK\r\nContent-Length: lots\r\nConnection: close\r\n\r\nxyz".into(),
        _ => return false,
    };
    let _ = s.write_all(head.as_bytes());
    let _ = s.flush();
    let _ = s.shutdown(std::net::Shutdown::Both);
    true
}

/// A work folder whose user catalog holds `zoo-tiny`, pinned to `body`'s size and sha256.
fn catalog(body: &[u8]) -> tempfile::TempDir {
    let w = workdir();
    let toml = format!(
        "[zoo-tiny]\ndescription = \"test\"\nzoo_path = \"{ZOO_PATH}\"\nbytes = {}\nsha256 = \"{}\"\n\
         cut = \"auto\"\ncut_layout = \"nchw\"\npreprocess = \"torch\"\nsize = 32\n",
        body.len(),
        tlearn::fsutil::sha256_bytes(body)
    );
    std::fs::write(w.path().join("onnx").join(tlearn::catalog::USER_CATALOG), toml).unwrap();
    w
}

fn fetch(w: &Path, port: u16) -> std::process::Output {
    let url = format!("http://127.0.0.1:{port}/");
    run("tlearn-backbone", &["fetch", "zoo:tiny", "--zoo-url", &url], w)
}

fn stderr(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn the_right_file_is_downloaded_checked_cut_by_the_rule_and_cached() {
    let body = zoo_like();
    let w = catalog(&body);
    let srv = serve(body.clone(), Mode::Good);
    assert!(fetch(w.path(), srv.port).status.success());
    let cached = w.path().join(".cache/zoo/tiny-7.onnx");
    assert_eq!(std::fs::read(&cached).unwrap(), body);
    let info: serde_json::Value =
        serde_json::from_slice(&std::fs::read(w.path().join("onnx/zoo-tiny.onnx.json")).unwrap()).unwrap();
    assert_eq!(info["cut"], "stage_out", "the last spatial tensor before the global pooling");
    assert_eq!(info["features"], serde_json::json!([32, 32, 8]));
    assert_eq!(info["name"], "zoo-tiny");
    // Fetched again: from the cache, no request.
    let before = srv.ranges.lock().unwrap().len();
    assert!(fetch(w.path(), srv.port).status.success());
    assert_eq!(srv.ranges.lock().unwrap().len(), before);
    // Usable by name, either spelling, like any backbone: a summary, and a deployable model that
    // scores what evaluate predicted.
    let out = ok("tlearn-backbone", &["summary", "zoo:tiny"], w.path());
    assert!(out.contains("Total params"), "{out}");
    let w = w.path();
    make_dataset(&w.join("raw"), &["cat", "dog"], 8, false);
    ok("tlearn-data", &["split", "raw", "data/toy", "--seed", "1"], w);
    ok("tlearn-extract", &["--data", "data/toy", "--backbone", "zoo:tiny", "--size", "32", "--device", "cpu"], w);
    ok("tlearn-head", &["--features", "features/toy/zoo-tiny-32", "--run", "z", "--head", "logistic"], w);
    ok("tlearn-evaluate", &["--run", "z", "--device", "cpu"], w);
    ok("tlearn-score", &["data/toy/test", "--run", "z", "--out", "s.csv", "--device", "cpu"], w);
    let scores = std::fs::read_to_string(w.join("s.csv")).unwrap();
    let predictions = std::fs::read_to_string(w.join("reports/z/predictions.csv")).unwrap();
    assert_eq!(scores.lines().count(), predictions.lines().count(), "{scores}");
    // The fine-tuning recipe in two commands: the head warmed up with the base frozen, then the
    // deployable model that made fine-tuned whole (every parameter but its in-graph
    // preprocessing) with a lower rate for the base, warm-up, AdamW, label smoothing, balanced
    // class weights, quarter turns, and TTA in the result.
    let warm = ["runs/z/model.onnx", "--data", "data/toy", "--run", "zwarm", "--trainable", "head/*"];
    let out = ok("tlearn-finetune", &[&warm[..], &["--epochs", "1", "--batch", "4", "--device", "cpu"]].concat(), w);
    let trained = |out: &str| -> (usize, usize) {
        let words: Vec<&str> = out.lines().find(|l| l.starts_with("trained")).unwrap().split(' ').collect();
        (words[1].parse().unwrap(), words[3].parse().unwrap())
    };
    let (head_only, total) = trained(&out);
    assert!(head_only > 0 && head_only < total / 2, "{out}");
    let recipe = [
        "runs/zwarm/model.onnx",
        "--data",
        "data/toy",
        "--run",
        "zft",
        "--epochs",
        "2",
        "--batch",
        "4",
        "--optimizer",
        "adam",
        "--lr",
        "1e-3",
        "--lr-base",
        "1e-4",
        "--warmup-epochs",
        "1",
        "--weight-decay",
        "0.01",
        "--label-smoothing",
        "0.1",
        "--class-weight",
        "balanced",
        "--horizontal-flip",
        "--rot90",
        "--brightness-range",
        "0.8,1.2",
        "--tta",
        "hflip",
        "--device",
        "cpu",
    ];
    let out = ok("tlearn-finetune", &recipe, w);
    // Every weight but the preprocessing and the head's frozen statistics.
    let warm = tlearn::onnx::load_model(&w.join("runs/zwarm/model.onnx")).unwrap();
    let trainable: usize = tlearn::onnx::graph(&warm)
        .initializer
        .iter()
        .filter(|t| !t.name.starts_with("net/pre/") && !t.name.contains("/frozen/"))
        .map(|t| t.dims.iter().product::<i64>() as usize)
        .sum();
    assert!(trainable > head_only);
    assert_eq!(trained(&out).0, trainable, "{out}");
    let model = tlearn::onnx::load_model(&w.join("runs/zft/model.onnx")).unwrap();
    let tta = model.metadata_props.iter().find(|p| p.key == "tlearn.tta").unwrap();
    assert_eq!(tta.value, "[\"hflip\"]");
    let info = std::fs::read_to_string(w.join("runs/zft/run.json")).unwrap();
    for key in [
        "\"lr_base\": 0.0001",
        "\"weight_decay\": 0.01",
        "\"label_smoothing\": 0.1",
        "\"class_weight\": \"balanced\"",
        "\"rot90\": true",
    ] {
        assert!(info.contains(key), "{key} in {info}");
    }
    let bad: Vec<&str> = recipe
        .iter()
        .map(|a| {
            if *a == "1e-4" {
                "0"
            } else if *a == "zft" {
                "bad"
            } else {
                a
            }
        })
        .collect();
    let bad = fails("tlearn-finetune", &bad, w);
    assert!(bad.contains("--lr-base") && bad.contains("positive"), "{bad}");
}

#[test]
fn a_file_that_is_not_the_pinned_one_is_refused_and_not_kept() {
    let body = zoo_like();
    let w = catalog(&body);
    let srv = serve(body, Mode::Wrong);
    let o = fetch(w.path(), srv.port);
    assert!(!o.status.success());
    let err = stderr(&o);
    assert!(err.contains("sha256 mismatch") && err.contains(ZOO_PATH), "{err}");
    assert!(!w.path().join(".cache/zoo/tiny-7.onnx").exists());
    assert!(!w.path().join(".cache/zoo/tiny-7.onnx.part").exists(), "a wrong file is not resumed");
    assert!(!w.path().join("onnx/zoo-tiny.onnx").exists());
    // A pointer (or a page) where the file should be: refused from its size, nothing written.
    let srv = serve(zoo_like(), Mode::Pointer);
    let o = fetch(w.path(), srv.port);
    let err = stderr(&o);
    assert!(!o.status.success() && err.contains("the server has 63 bytes"), "{err}");
    assert_eq!(srv.ranges.lock().unwrap().len(), 1, "not retried");
    assert!(!w.path().join(".cache/zoo/tiny-7.onnx.part").exists());
}

#[test]
fn a_broken_transfer_resumes_with_a_range_request() {
    let body = zoo_like();
    // Breaks once: the retry asks for the rest.
    let w = catalog(&body);
    let srv = serve(body.clone(), Mode::TruncateOnce);
    assert!(fetch(w.path(), srv.port).status.success());
    assert_eq!(std::fs::read(w.path().join(".cache/zoo/tiny-7.onnx")).unwrap(), body);
    assert_eq!(*srv.ranges.lock().unwrap(), vec![String::new(), format!("bytes={}-", body.len() / 2)]);
    // Breaks every time: an error that keeps what came, and the next run (another server) resumes.
    let w = catalog(&body);
    let bad = serve(body.clone(), Mode::Truncate);
    let o = fetch(w.path(), bad.port);
    assert!(!o.status.success());
    let err = stderr(&o);
    assert!(err.contains("after 4 attempts") && err.contains("resumes"), "{err}");
    let part = w.path().join(".cache/zoo/tiny-7.onnx.part");
    let kept = std::fs::metadata(&part).unwrap().len() as usize;
    assert!(kept >= body.len() / 2 && kept < body.len(), "kept {kept} of {}", body.len());
    let good = serve(body.clone(), Mode::Good);
    assert!(fetch(w.path(), good.port).status.success());
    assert_eq!(*good.ranges.lock().unwrap(), vec![format!("bytes={kept}-")]);
    assert_eq!(std::fs::read(w.path().join(".cache/zoo/tiny-7.onnx")).unwrap(), body);
    assert!(!part.exists());
}

#[test]
fn a_missing_file_or_no_server_is_a_clear_error() {
    let body = zoo_like();
    let w = catalog(&body);
    let srv = serve(body.clone(), Mode::NotFound);
    let o = fetch(w.path(), srv.port);
    let err = stderr(&o);
    assert!(!o.status.success() && err.contains("HTTP 404") && err.contains(ZOO_PATH), "{err}");
    assert!(err.contains("--zoo-url") && err.contains("--source"), "{err}");
    assert_eq!(srv.ranges.lock().unwrap().len(), 1, "a missing file is not retried");
    // Nobody listens on a port just released.
    let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let o = fetch(w.path(), port);
    let err = stderr(&o);
    assert!(!o.status.success(), "{err}");
    assert!(err.contains("cannot reach") && err.contains("tlearn-backbone add"), "{err}");
    assert!(err.contains("--source"), "says how to give the file by hand: {err}");
    // Given by hand, the file is checked and cut like a download.
    let file = w.path().join("tiny-7.onnx");
    std::fs::write(&file, &body).unwrap();
    ok(
        "tlearn-backbone",
        &["fetch", "zoo:tiny", "--source", file.to_str().unwrap(), "--zoo-url", "http://127.0.0.1:9/"],
        w.path(),
    );
    assert!(w.path().join("onnx/zoo-tiny.onnx").exists());
}

#[test]
fn the_built_in_zoo_entries_are_pinned_and_named() {
    let cat = tlearn::catalog::Catalog::load(Path::new("/nonexistent-onnx-dir")).unwrap();
    let zoo: Vec<_> = cat.entries.iter().filter(|(_, e)| e.zoo_path.is_some()).collect();
    assert!(zoo.len() >= 20, "{} zoo entries", zoo.len());
    for (name, e) in zoo {
        assert!(name.starts_with("zoo-"), "{name}");
        assert!(e.sha256.len() == 64 && e.sha256.chars().all(|c| c.is_ascii_hexdigit()), "{name}");
        assert!(e.bytes.is_some_and(|b| b > 1_000_000), "{name}");
        assert_eq!(e.cut, tlearn::onnx::cut::AUTO, "{name}");
        // Where the repository's main branch keeps the files now (the manifest's paths are older).
        assert!(e.zoo_path.as_ref().unwrap().starts_with("validated/vision/classification/"), "{name}");
    }
    assert!(cat.get("zoo:resnet50-v2").is_ok());
    let listed = ok("tlearn-backbone", &["list"], workdir().path());
    assert!(listed.contains("zoo-resnet50-v2") && listed.contains("zoo-efficientnet-lite4"), "{listed}");
}

/// A classifier `stem` (NCHW, 8 channels at 16×16 from a (1,3,16,16) or NHWC (1,16,16,3) input)
/// followed by the head `head` writes; returns the encoded model.
fn family(nhwc: bool, head: impl FnOnce(&mut GraphBuilder, &str) -> String) -> onnx::proto::ModelProto {
    let mut b = GraphBuilder::new("family").with_prefix("f/");
    let dims = if nhwc { [1, 16, 16, 3] } else { [1, 3, 16, 16] };
    b.input("x", &dims.map(Dim::Fixed));
    let x = if nhwc { b.op("Transpose", &["x"], vec![("perm", A::Ints(vec![0, 3, 1, 2]))]) } else { "x".into() };
    let w = b.init_f32("conv/w", &ArrayD::from_elem(ndarray::IxDyn(&[8, 3, 3, 3]), 0.01));
    let c = b.op("Conv", &[&x, &w], vec![("kernel_shape", A::Ints(vec![3, 3])), ("pads", A::Ints(vec![1, 1, 1, 1]))]);
    let lo = b.const_f32("lo", 0.0);
    let hi = b.const_f32("hi", 6.0);
    b.node("Clip", &[&c, &lo, &hi], &["last"], vec![]);
    let out = head(&mut b, "last");
    b.node("Identity", &[&out], &["y"], vec![]);
    b.output_any("y");
    onnx::model(b.finish(), "test")
}

/// The features (h, w, c) of `m` cut by the rule at 16×16 (a batch of two, as fetch smoke-runs).
fn rule_features(m: &onnx::proto::ModelProto) -> tlearn::Result<[usize; 3]> {
    let p = Path::new("family.onnx");
    let (t, layout) = tlearn::onnx::cut::conv_base_end(m, p, 16)?;
    let cut = tlearn::onnx::cut::cut_model(m, p, &t, layout)?;
    tlearn::backbone::feature_shape(&onnx::encode_model(&cut), p, 16)
}

#[test]
fn the_cut_rule_finds_the_conv_base_of_each_zoo_family() {
    // Every family's trunk ends in 16×16×8; a wrong cut gives another shape (or an error).
    let fc = |b: &mut GraphBuilder, x: &str| {
        let w = b.init_f32("fc/w", &ArrayD::from_elem(ndarray::IxDyn(&[8, 4]), 0.1));
        let g = b.op("MatMul", &[x, &w], vec![]);
        b.op("Softmax", &[&g], vec![])
    };
    // TF Lite exports (EfficientNet-Lite4): NHWC input, a Transpose back to NHWC, then a
    // layout-keeping op the exporter moved past it, ReduceMean.
    let lite = family(true, |b, x| {
        let t = b.op("Transpose", &[x], vec![("perm", A::Ints(vec![0, 2, 3, 1]))]);
        let r = b.op("Relu", &[&t], vec![]);
        let m = b.op("ReduceMean", &[&r], vec![("axes", A::Ints(vec![1, 2])), ("keepdims", A::I(0))]);
        fc(b, &m)
    });
    assert_eq!(rule_features(&lite).unwrap(), [16, 16, 8]);
    // Gluon MobileNetV2: a 1×1 classifier conv after the global pooling.
    let gluon = family(false, |b, x| {
        let g = b.op("GlobalAveragePool", &[x], vec![]);
        let w = b.init_f32("cls/w", &ArrayD::from_elem(ndarray::IxDyn(&[4, 8, 1, 1]), 0.1));
        let c = b.op("Conv", &[&g, &w], vec![("kernel_shape", A::Ints(vec![1, 1]))]);
        b.op("Flatten", &[&c], vec![])
    });
    assert_eq!(rule_features(&gluon).unwrap(), [16, 16, 8]);
    // Gluon SqueezeNet: Dropout, a 1×1 class-score conv on the whole map, Relu, AveragePool:
    // the class-score map is spatial too, and not the conv base.
    let squeeze = family(false, |b, x| {
        let d = b.op("Dropout", &[x], vec![]);
        let w = b.init_f32("cls/w", &ArrayD::from_elem(ndarray::IxDyn(&[4, 8, 1, 1]), 0.1));
        let c = b.op("Conv", &[&d, &w], vec![("kernel_shape", A::Ints(vec![1, 1]))]);
        let r = b.op("Relu", &[&c], vec![]);
        let a = b.op("AveragePool", &[&r], vec![("kernel_shape", A::Ints(vec![16, 16]))]);
        b.op("Flatten", &[&a], vec![])
    });
    assert_eq!(rule_features(&squeeze).unwrap(), [16, 16, 8]);
    // Caffe2 GoogLeNet: a whole-map AveragePool, Dropout, Reshape.
    let caffe = family(false, |b, x| {
        let a = b.op("AveragePool", &[x], vec![("kernel_shape", A::Ints(vec![16, 16]))]);
        let d = b.op("Dropout", &[&a], vec![]);
        let s = b.const_i64("shape", &[1, -1]);
        let r = b.op("Reshape", &[&d, &s], vec![]);
        fc(b, &r)
    });
    assert_eq!(rule_features(&caffe).unwrap(), [16, 16, 8]);
    // Nothing spatial before the classifier: an error that says what to do.
    let only_pool = family(false, |b, _| {
        let s = b.const_i64("shape", &[1, -1]);
        b.op("Reshape", &["x", &s], vec![])
    });
    let err = rule_features(&only_pool).unwrap_err().to_string();
    assert!(err.contains("no 4-D tensor") && err.contains("--output"), "{err}");
}

/// `fetch` with `env` set, killed (and the test failed) if it runs past `limit`.
fn fetch_within(w: &Path, port: u16, env: &[(&str, &str)], limit: std::time::Duration) -> std::process::Output {
    let url = format!("http://127.0.0.1:{port}/");
    let mut cmd = std::process::Command::new(bin("tlearn-backbone"));
    cmd.args(["fetch", "zoo:tiny", "--zoo-url", &url]).current_dir(w).env("RUST_LOG", "info,ort=error");
    cmd.envs(env.iter().copied()).stdout(std::process::Stdio::piped()).stderr(std::process::Stdio::piped());
    let mut child = cmd.spawn().unwrap();
    let start = std::time::Instant::now();
    while child.try_wait().unwrap().is_none() {
        if start.elapsed() > limit {
            let _ = child.kill();
            let o = child.wait_with_output().unwrap();
            panic!("still running after {limit:?}: {}", stderr(&o));
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let o = child.wait_with_output().unwrap();
    eprintln!("--- stderr:\n{}", stderr(&o));
    o
}

#[test]
fn a_server_that_sends_slowly_cannot_hold_a_fetch_or_its_lock() {
    let body = zoo_like();
    let w = catalog(&body);
    let srv = serve(body.clone(), Mode::Trickle);
    let start = std::time::Instant::now();
    let o = fetch_within(w.path(), srv.port, &[("TLEARN_DOWNLOAD_TIMEOUT", "2")], std::time::Duration::from_secs(20));
    let err = stderr(&o);
    assert!(!o.status.success() && err.contains("deadline of 2 s") && err.contains("TLEARN_DOWNLOAD_TIMEOUT"), "{err}");
    assert!(start.elapsed() < std::time::Duration::from_secs(10), "{:?}", start.elapsed());
    // What came is kept: the same command resumes it.
    assert!(err.contains("resumes"), "{err}");
    assert!(std::fs::metadata(w.path().join(".cache/zoo/tiny-7.onnx.part")).unwrap().len() > 0);
    // A fetch holding the download lock is waited for no longer than the deadline, and named.
    let cached = w.path().join(".cache/zoo/tiny-7.onnx");
    let held = tlearn::lock::file(&cached).unwrap();
    let good = serve(body, Mode::Good);
    let o = fetch_within(w.path(), good.port, &[("TLEARN_DOWNLOAD_TIMEOUT", "1")], std::time::Duration::from_secs(20));
    let err = stderr(&o);
    assert!(
        !o.status.success()
            && err.contains("held by pid")
            && err.contains("gave up waiting after 1 s, the download deadline"),
        "{err}"
    );
    drop(held);
    let o =
        fetch_within(w.path(), good.port, &[("TLEARN_DOWNLOAD_TIMEOUT", "abc")], std::time::Duration::from_secs(20));
    assert!(!o.status.success() && stderr(&o).contains("TLEARN_DOWNLOAD_TIMEOUT"), "{}", stderr(&o));
}

#[test]
fn answers_that_cannot_give_the_file_are_not_kept_or_retried() {
    let body = zoo_like();
    let w = catalog(&body);
    let part = w.path().join(".cache/zoo/tiny-7.onnx.part");
    for (mode, says) in [
        (Mode::Page, "text/html"),
        (Mode::RedirectFile, "--source"),
        (Mode::RedirectLoop, "redirect"),
        (Mode::BadLength, "--source"),
    ] {
        let srv = serve(body.clone(), mode);
        let o = fetch(w.path(), srv.port);
        let err = stderr(&o);
        assert!(!o.status.success() && err.contains(says) && !err.contains("resumes"), "{err}");
        assert!(!err.contains("retrying"), "not retried: {err}");
        assert!(!part.exists(), "nothing kept: {err}");
    }
}

#[test]
fn a_damaged_cached_file_is_replaced_on_the_next_fetch() {
    let body = zoo_like();
    let w = catalog(&body);
    let cached = w.path().join(".cache/zoo/tiny-7.onnx");
    std::fs::create_dir_all(cached.parent().unwrap()).unwrap();
    std::fs::write(&cached, &body[..body.len() / 2]).unwrap();
    let srv = serve(body.clone(), Mode::Good);
    let o = fetch(w.path(), srv.port);
    let err = stderr(&o);
    assert!(o.status.success(), "{err}");
    assert!(err.contains("sha256 mismatch") && err.contains("fetching it again"), "says why it fetched again: {err}");
    assert_eq!(std::fs::read(&cached).unwrap(), body);
}

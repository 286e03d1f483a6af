//! One test per class of hole a red-team pass found: source deletion and overwritten inputs,
//! path-spelling-dependent shards, swapped models, escapes from the folders named, crashes on
//! absurd numbers or a closed stdout, and inputs dropped without a word.

mod common;

use common::*;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

fn no_panic(err: &str) {
    assert!(!err.contains("panicked"), "a panic instead of an error: {err}");
}

fn json(p: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))).unwrap()
}

#[test]
fn outputs_never_replace_or_overwrite_inputs() {
    let w = workdir();
    let w = w.path();
    make_dataset(&w.join("raw"), &["cat", "dog"], 6, false);
    std::os::unix::fs::symlink("raw", w.join("rawlink")).unwrap();
    // The output is the input, lies inside it, contains it, or is it spelled through a link.
    for out in ["raw", "raw/sub", ".", "rawlink", "./raw/"] {
        let err = fails("tlearn-data", &["split", "raw", out, "--force", "--mode", "symlink"], w);
        assert!(err.contains("input") && err.contains("never"), "{out}: {err}");
    }
    assert_eq!(count_files(&w.join("raw")), 12, "source images lost");
    for e in walkdir::WalkDir::new(w.join("raw")).into_iter().filter_map(|e| e.ok()) {
        assert!(!e.path_is_symlink(), "{} became a link", e.path().display());
    }
    // --force replaces a split tlearn made, never a folder of the user's.
    std::fs::create_dir(w.join("papers")).unwrap();
    std::fs::write(w.join("papers/thesis.txt"), b"years of work").unwrap();
    let err = fails("tlearn-data", &["split", "raw", "papers", "--force"], w);
    assert!(err.contains("papers") && err.contains("only a split tlearn made"), "{err}");
    assert_eq!(std::fs::read(w.join("papers/thesis.txt")).unwrap(), b"years of work");
    ok("tlearn-data", &["split", "raw", "split1", "--seed", "1"], w);
    ok("tlearn-data", &["split", "raw", "split1", "--seed", "2", "--force"], w);

    // Backbones: a built-in name is never taken over, a failed add registers nothing, a user
    // entry is replaced only on request, and a cut tensor named `features` is fine.
    tiny_classifier(&w.join("tiny.onnx"), 3);
    let add = |extra: &[&str]| -> Vec<String> {
        ["add", "tiny.onnx", "--output", "pool_out", "--preprocess", "caffe", "--size", "32"]
            .iter()
            .chain(extra)
            .map(|s| s.to_string())
            .collect()
    };
    let args = add(&["--name", "vgg16"]);
    let err = fails("tlearn-backbone", &args.iter().map(|s| s.as_str()).collect::<Vec<_>>(), w);
    assert!(err.contains("built-in"), "{err}");
    assert!(!w.join("onnx/vgg16.onnx").exists());
    // Cut at the softmax: the cut is valid, the smoke run finds no (N,h,w,c) features.
    let args: Vec<String> = add(&["--name", "small", "--layout", "nhwc"])
        .into_iter()
        .map(|s| if s == "pool_out" { "output".into() } else { s })
        .collect();
    let err = fails("tlearn-backbone", &args.iter().map(|s| s.as_str()).collect::<Vec<_>>(), w);
    assert!(err.contains("expected (2,h,w,c)"), "{err}");
    assert!(!w.join("onnx/small.onnx").exists());
    let user = std::fs::read_to_string(w.join("onnx/user-backbones.toml")).unwrap_or_default();
    assert!(!user.contains("small"), "a failed add left its entry: {user}");
    let args = add(&[]);
    ok("tlearn-backbone", &args.iter().map(|s| s.as_str()).collect::<Vec<_>>(), w);
    let err = fails("tlearn-backbone", &args.iter().map(|s| s.as_str()).collect::<Vec<_>>(), w);
    assert!(err.contains("--replace"), "{err}");
    let args = add(&["--replace"]);
    ok("tlearn-backbone", &args.iter().map(|s| s.as_str()).collect::<Vec<_>>(), w);
    let mut m = tlearn::onnx::load_model(&w.join("tiny.onnx")).unwrap();
    for n in m.graph.as_mut().unwrap().node.iter_mut() {
        for t in n.input.iter_mut().chain(n.output.iter_mut()) {
            if t == "pool_out" {
                *t = "features".into();
            }
        }
    }
    tlearn::onnx::save_model(&m, &w.join("feat.onnx")).unwrap();
    let out = ok(
        "tlearn-backbone",
        &["add", "feat.onnx", "--output", "features", "--preprocess", "caffe", "--size", "32"],
        w,
    );
    assert!(out.contains("[16, 16, 8]"), "{out}");
}

#[test]
fn shards_and_merges_do_not_depend_on_path_spelling() {
    let w = workdir();
    let w = w.path();
    prepared(w, &["cat", "dog", "fox"], 10);
    let abs = w.join("data/toy").display().to_string();
    let base = ["--backbone", "tiny", "--device", "cpu"];
    let single: Vec<&str> = base.iter().copied().chain(["--data", "data/toy", "--out", "single"]).collect();
    ok("tlearn-extract", &single, w);
    for (i, data) in [(0, "data/toy"), (1, "./data/toy/"), (2, abs.as_str())] {
        let s = format!("{i}/3");
        let args: Vec<&str> = base.iter().copied().chain(["--data", data, "--out", "sharded", "--shard", &s]).collect();
        ok("tlearn-extract", &args, w);
    }
    let before = std::fs::read(w.join("sharded/shard-0-of-3/train.npy")).unwrap();
    let err = fails(
        "tlearn-extract",
        &[
            "merge",
            "--out",
            "sharded/shard-0-of-3",
            "sharded/shard-0-of-3",
            "sharded/shard-1-of-3",
            "sharded/shard-2-of-3",
        ],
        w,
    );
    assert!(err.contains("inside the part"), "{err}");
    assert!(std::fs::read(w.join("sharded/shard-0-of-3/train.npy")).unwrap() == before);
    ok("tlearn-extract", &["merge", "--out", "sharded"], w);
    for f in ["train.npy", "train.files.csv", "train.npy.json", "test.files.csv", "validation.labels.npy"] {
        assert!(
            std::fs::read(w.join("single").join(f)).unwrap() == std::fs::read(w.join("sharded").join(f)).unwrap(),
            "{f}: merged ≠ one run"
        );
    }
    // A part from another dataset (a copy elsewhere) is refused.
    copy_tree(&w.join("data/toy"), &w.join("data/toy2"));
    let args: Vec<&str> =
        base.iter().copied().chain(["--data", "data/toy2", "--out", "other", "--shard", "2/3"]).collect();
    ok("tlearn-extract", &args, w);
    let err = fails(
        "tlearn-extract",
        &["merge", "--out", "mixed", "sharded/shard-0-of-3", "sharded/shard-1-of-3", "other/shard-2-of-3"],
        w,
    );
    assert!(err.contains("another dataset"), "{err}");

    // Scoring shards: inputs spelled three ways, merged: every image once.
    ok("tlearn-head", &["--features", "single", "--run", "toy", "--epochs", "1", "--units", "8"], w);
    ok("tlearn-score", &["data/toy", "--run", "toy", "--out", "one.csv"], w);
    for (i, data) in [(0, "data/toy"), (1, "./data/toy/"), (2, abs.as_str())] {
        let (s, o) = (format!("{i}/3"), format!("part{i}.csv"));
        ok("tlearn-score", &[data, "--run", "toy", "--out", &o, "--shard", &s], w);
    }
    ok("tlearn-score", &["merge", "--out", "merged.csv", "part0.csv", "part1.csv", "part2.csv"], w);
    let rows = |p: &str| std::fs::read_to_string(w.join(p)).unwrap().lines().count();
    assert_eq!(rows("merged.csv"), rows("one.csv"));
    assert_eq!(json(&w.join("merged.csv.summary.json"))["scored"], json(&w.join("one.csv.summary.json"))["scored"]);
    ok("tlearn-score", &["data/toy2", "--run", "toy", "--out", "x2.csv", "--shard", "2/3"], w);
    let err = fails("tlearn-score", &["merge", "--out", "bad.csv", "part0.csv", "part1.csv", "x2.csv"], w);
    assert!(err.contains("other inputs"), "{err}");
    // Outputs never overwrite inputs: an image, a part being merged.
    let img = first_file(&w.join("data/toy/test/cat"));
    let before = std::fs::read(&img).unwrap();
    let err = fails("tlearn-score", &["data/toy", "--run", "toy", "--out", img.to_str().unwrap()], w);
    assert!(err.contains("input"), "{err}");
    // Also spelled through a folder that does not exist yet (created before the write).
    let sneaky = format!("newdir/../{}", img.strip_prefix(w).unwrap().display());
    let err = fails("tlearn-score", &["data/toy", "--run", "toy", "--out", &sneaky], w);
    assert!(err.contains("input"), "{err}");
    assert!(std::fs::read(&img).unwrap() == before, "input image overwritten");
    let before = std::fs::read(w.join("part0.csv")).unwrap();
    let err = fails("tlearn-score", &["merge", "--out", "part0.csv", "part0.csv", "part1.csv", "part2.csv"], w);
    assert!(err.contains("input"), "{err}");
    assert!(std::fs::read(w.join("part0.csv")).unwrap() == before, "a part was overwritten");
}

fn first_file(dir: &Path) -> PathBuf {
    let e = walkdir::WalkDir::new(dir).sort_by_file_name().into_iter().filter_map(|e| e.ok());
    e.filter(|e| e.file_type().is_file()).map(|e| e.into_path()).next().expect("a file")
}

#[test]
fn recorded_checksums_and_class_counts_are_checked_on_load() {
    let w = workdir();
    let w = w.path();
    trained(w, &["cat", "dog", "fox"], 8);
    // A second run on two classes: its head has one sigmoid output.
    make_dataset(&w.join("raw2"), &["a", "b"], 8, false);
    ok("tlearn-data", &["split", "raw2", "data/two", "--seed", "1"], w);
    ok("tlearn-extract", &["--data", "data/two", "--backbone", "tiny", "--device", "cpu"], w);
    ok("tlearn-head", &["--features", "features/two/tiny-32", "--run", "two", "--epochs", "1", "--units", "8"], w);
    ok("tlearn-score", &["data/toy", "--run", "toy", "--out", "before.csv"], w);
    let head = w.join("runs/toy/head.onnx");
    let original = std::fs::read(&head).unwrap();
    std::fs::copy(w.join("runs/two/head.onnx"), &head).unwrap();
    for (bin, args) in [
        ("tlearn-evaluate", vec!["--run", "toy"]),
        ("tlearn-score", vec!["data/toy", "--run", "toy", "--out", "after.csv"]),
    ] {
        let err = fails(bin, &args, w);
        assert!(err.contains("head.onnx") && err.contains("changed since the run was recorded"), "{bin}: {err}");
    }
    // Even with the record forged to match, a head of another width is a clear error.
    let side = w.join("runs/toy/head.onnx.json");
    let mut rec = json(&side);
    rec["head_sha256"] = json(&w.join("runs/two/head.onnx.json"))["head_sha256"].clone();
    std::fs::write(&side, serde_json::to_string(&rec).unwrap()).unwrap();
    for (bin, args) in [
        ("tlearn-evaluate", vec!["--run", "toy"]),
        ("tlearn-score", vec!["data/toy", "--run", "toy", "--out", "after.csv"]),
    ] {
        let err = fails(bin, &args, w);
        no_panic(&err);
        assert!(err.contains("class"), "{bin}: {err}");
    }
    // A deployable model whose sidecar describes another file is refused.
    std::fs::write(&head, &original).unwrap();
    let mut rec = json(&side);
    rec["head_sha256"] = serde_json::json!(tlearn::fsutil::sha256_bytes(&original));
    std::fs::write(&side, serde_json::to_string(&rec).unwrap()).unwrap();
    ok("tlearn-score", &["data/toy", "--run", "toy", "--out", "again.csv"], w);
    let model = w.join("runs/toy/model.onnx");
    let mut bytes = std::fs::read(&model).unwrap();
    bytes.extend_from_slice(b"\0");
    std::fs::write(&model, &bytes).unwrap();
    let err = fails("tlearn-score", &["data/toy", "--model", "runs/toy/model.onnx", "--out", "m.csv"], w);
    assert!(err.contains("sha256"), "{err}");
}

/// A baseline JPEG of noise, and the same file cut after `keep` bytes of entropy-coded data and
/// closed with an end-of-image marker: the header still declares the whole image.
fn jpeg_pair(w: u32, h: u32, keep: usize) -> (Vec<u8>, Vec<u8>) {
    let img = make_image(0, 5, w, h);
    let mut full = vec![];
    image::codecs::jpeg::JpegEncoder::new_with_quality(&mut full, 90).encode_image(&img).unwrap();
    let sos = full.windows(2).position(|p| p == [0xFF, 0xDA]).unwrap();
    let len = u16::from_be_bytes([full[sos + 2], full[sos + 3]]) as usize;
    let start = sos + 2 + len;
    let mut cut = full[..start + keep].to_vec();
    cut.extend_from_slice(&[0xFF, 0xD9]);
    (full, cut)
}

#[test]
fn a_jpeg_whose_data_ends_before_its_rows_is_a_bad_file() {
    let (full, cut) = jpeg_pair(640, 480, 300);
    let p = Path::new("short.jpg");
    let err = tlearn::imageio::decode_bytes(&cut, p, 1 << 30).map(|_| ()).unwrap_err().to_string();
    assert!(err.contains("short.jpg") && err.contains("ends before"), "{err}");
    // Cut anywhere in the data, not only to a sliver of it.
    for frac in [0.5, 0.9] {
        let keep = ((full.len() - 700) as f64 * frac) as usize;
        let (_, cut) = jpeg_pair(640, 480, keep);
        let r = tlearn::imageio::decode_bytes(&cut, p, 1 << 30);
        assert!(r.is_err(), "{frac} of the data decoded as a whole image");
    }
    // Complete files decode exactly as the image crate decodes them: noise, flat images whose last
    // rows of blocks take a few bytes, small gray digits with a black bottom edge, progressive.
    let flat = image::RgbImage::from_pixel(16, 24, image::Rgb([128, 128, 128]));
    let digit =
        image::GrayImage::from_fn(28, 28, |x, y| image::Luma([if y < 20 && (8..20).contains(&x) { 255 } else { 0 }]));
    let encode = |img: image::DynamicImage| {
        let mut b = vec![];
        image::codecs::jpeg::JpegEncoder::new_with_quality(&mut b, 90).encode_image(&img).unwrap();
        b
    };
    let progressive =
        std::fs::read(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/hostile/progressive.jpg")).unwrap();
    for (what, bytes) in [
        ("noise", full.clone()),
        ("flat", encode(flat.into())),
        ("digit", encode(digit.into())),
        ("progressive", progressive),
    ] {
        let ours = tlearn::imageio::decode_bytes(&bytes, p, 1 << 30).unwrap_or_else(|e| panic!("{what}: {e}"));
        let theirs = image::load_from_memory(&bytes).unwrap();
        assert_eq!(ours.to_rgb8().into_raw(), theirs.to_rgb8().into_raw(), "{what}");
    }

    // Through a stage: scored files exclude it and the summary names it.
    let d = tempfile::tempdir().unwrap();
    let w = d.path();
    std::fs::write(w.join("short.jpg"), &cut).unwrap();
    let bad = tlearn::imageio::decode(&w.join("short.jpg"), 1 << 30).map(|_| ()).unwrap_err();
    assert!(bad.to_string().contains("ends before"), "{bad}");
}

#[test]
fn a_finetune_without_validation_resumes_and_reports_every_skipped_file() {
    let e = tlearn::history::Epoch {
        epoch: 1,
        loss: 0.5,
        accuracy: 0.75,
        val_loss: f64::NAN,
        val_accuracy: f64::NAN,
        seconds: 1.0,
    };
    let back: tlearn::history::Epoch = serde_json::from_str(&serde_json::to_string(&e).unwrap()).unwrap();
    assert!(back.val_loss.is_nan() && back.loss == 0.5);

    let w = workdir();
    let w = w.path();
    make_dataset(&w.join("raw"), &["cat", "dog"], 10, false);
    ok("tlearn-data", &["split", "raw", "data/nv", "--validation", "0", "--seed", "1"], w);
    std::fs::remove_dir_all(w.join("data/nv/validation")).ok();
    std::os::unix::fs::symlink("/nonexistent/x.png", w.join("data/nv/train/cat/dangling.png")).unwrap();
    std::fs::write(w.join("data/nv/test/dog/broken.png"), b"\x89PNG\r\n\x1a\n broken").unwrap();
    ok("tlearn-convnet", &["mnist", "--out", "net.onnx", "--classes", "2"], w);
    let args =
        |epochs: &'static str| ["net.onnx", "--data", "data/nv", "--run", "nv", "--epochs", epochs, "--batch", "8"];
    let out = ok("tlearn-finetune", &args("1"), w);
    assert!(out.contains("test: skipped 1"), "{out}");
    let info = json(&w.join("runs/nv/model.onnx.json"));
    let skipped = info["skipped"].to_string();
    assert!(skipped.contains("dangling.png"), "link error not listed: {skipped}");
    let metrics = json(&w.join("reports/nv/metrics.json"));
    assert!(metrics["skipped"].to_string().contains("broken.png"), "{metrics}");
    // The same command with more epochs continues from the checkpoint.
    let out = ok("tlearn-finetune", &args("2"), w);
    assert!(out.contains("epoch   2/2"), "{out}");
    let hist = std::fs::read_to_string(w.join("runs/nv/history.csv")).unwrap();
    assert_eq!(hist.lines().count(), 3, "{hist}");
    // A best model replaced since the checkpoint is refused on resume, not taken as the best.
    std::fs::copy(w.join("net.onnx"), w.join("runs/nv/best.onnx")).unwrap();
    let err = fails("tlearn-finetune", &args("3"), w);
    assert!(err.contains("best.onnx") && err.contains("sha256"), "{err}");
    // The run folder may not overlap the data it trains on.
    let err = fails(
        "tlearn-finetune",
        &["net.onnx", "--data", "data/nv", "--runs", "data", "--run", "nv", "--epochs", "1"],
        w,
    );
    assert!(err.contains("input"), "{err}");
}

#[test]
fn names_and_paths_read_from_files_stay_inside_the_folders_named() {
    let w = workdir();
    let w = w.path();
    let feats = trained(w, &["cat", "=cmd"], 8);
    // A sidecar's name becomes a folder: checked like a name on the command line.
    let side = w.join("onnx/tiny.onnx.json");
    let mut rec = json(&side);
    rec["name"] = serde_json::json!("../../../evil");
    std::fs::write(&side, serde_json::to_string(&rec).unwrap()).unwrap();
    let err = fails("tlearn-extract", &["--data", "data/toy", "--backbone", "tiny", "--out", "f2"], w);
    assert!(err.contains("plain name"), "{err}");
    rec["name"] = serde_json::json!("tiny");
    std::fs::write(&side, serde_json::to_string(&rec).unwrap()).unwrap();
    for splits in ["../x", "/tmp/x", "train/../.."] {
        let err = fails("tlearn-extract", &["--data", "data/toy", "--backbone", "tiny", "--splits", splits], w);
        assert!(err.contains("split"), "{splits}: {err}");
    }
    // A class folder linked to a folder outside the input is not pulled into the split.
    make_dataset(&w.join("outside"), &["secret"], 3, false);
    make_dataset(&w.join("raw3"), &["cat"], 6, false);
    std::os::unix::fs::symlink(w.join("outside/secret"), w.join("raw3/secret")).unwrap();
    std::os::unix::fs::symlink(w.join("outside/secret/secret_0.png"), w.join("raw3/cat/linked.png")).unwrap();
    ok("tlearn-data", &["split", "raw3", "data/three"], w);
    assert_eq!(count_files(&w.join("data/three")) - 2, 6, "only raw3's own cats (+ manifest, split.json)");
    assert!(json(&w.join("data/three/split.json"))["skipped"].to_string().contains("outside the input"));
    ok("tlearn-data", &["split", "raw3", "data/three-all", "--follow-outside"], w);
    assert_eq!(count_files(&w.join("data/three-all")) - 2, 10);

    // CSV injection: text cells that start like a formula are neutralised; JSON lines stay exact.
    ok("tlearn-score", &["data/toy/test", "--run", "toy", "--out", "s.csv", "--top-k", "2"], w);
    ok("tlearn-score", &["data/toy/test", "--run", "toy", "--out", "s.jsonl"], w);
    ok("tlearn-evaluate", &["--run", "toy", "--features", &feats], w);
    for f in ["s.csv", "reports/toy/predictions.csv"] {
        let text = std::fs::read_to_string(w.join(f)).unwrap();
        let mut r = csv::Reader::from_reader(text.as_bytes());
        for rec in r.records() {
            for cell in rec.unwrap().iter() {
                assert!(!cell.starts_with(['=', '+', '-', '@']), "{f}: live formula {cell}");
            }
        }
        assert!(text.contains("'=cmd"), "{f}: {text}");
    }
    let jl = std::fs::read_to_string(w.join("s.jsonl")).unwrap();
    assert!(jl.contains("\"=cmd\"") && !jl.contains("'=cmd"), "{jl}");
}

fn env_run(name: &str, args: &[&str], cwd: &Path, env: (&str, &str)) -> std::process::Output {
    Command::new(bin(name)).args(args).current_dir(cwd).env(env.0, env.1).output().unwrap()
}

#[test]
fn absurd_numbers_and_closed_pipes_end_in_clear_errors_not_crashes() {
    let w = workdir();
    let w = w.path();
    let feats = prepared(w, &["cat", "dog"], 6);
    let ex = |extra: &[&str]| -> String {
        let args: Vec<&str> = ["--data", "data/toy", "--backbone", "tiny", "--device", "cpu", "--out", "f"]
            .iter()
            .chain(extra)
            .copied()
            .collect();
        fails("tlearn-extract", &args, w)
    };
    for (args, says) in [
        (&["--size", "100000"][..], "size"),
        (&["--size", "16384"], "GB"),
        (&["--batch", "0"], "batch"),
        (&["--max-pixels", "0"], "max-pixels"),
    ] {
        let err = ex(args);
        no_panic(&err);
        assert!(err.contains(says), "{args:?}: {err}");
    }
    let err = fails(
        "tlearn-backbone",
        &["add", "tiny.onnx", "--output", "pool_out", "--preprocess", "caffe", "--name", "big", "--size", "100000"],
        w,
    );
    assert!(err.contains("size"), "{err}");
    for (size, says) in [("100000", "size"), ("16384", "GB")] {
        let err = fails("tlearn-backbone", &["summary", "tiny", "--size", size], w);
        no_panic(&err);
        assert!(err.contains(says), "summary --size {size}: {err}");
    }
    for counts in ["1,2", "1,1,1,1", "1,1,18446744073709551615", "0,1,1"] {
        let err = fails("tlearn-data", &["split", "raw", "data/c", "--counts", counts], w);
        no_panic(&err);
        assert!(err.contains("counts"), "{counts}: {err}");
    }
    for v in ["-5", "abc", "inf"] {
        let o = env_run(
            "tlearn-extract",
            &["--data", "data/toy", "--backbone", "tiny", "--out", "g"],
            w,
            ("TLEARN_LOCK_TIMEOUT", v),
        );
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success() && err.contains("TLEARN_LOCK_TIMEOUT"), "{v}: {err}");
        no_panic(&err);
    }
    // A closed stdout ends the output, not the work: the head is written, the exit is clean.
    ok("tlearn-extract", &["--data", "data/toy", "--backbone", "tiny", "--device", "cpu"], w);
    for (name, args, product) in [
        (
            "tlearn-head",
            vec!["--features", feats.as_str(), "--run", "piped", "--epochs", "3", "--units", "8"],
            Some("runs/piped/head.onnx"),
        ),
        ("tlearn-backbone", vec!["list"], None),
    ] {
        let mut c = Command::new(bin(name))
            .args(&args)
            .current_dir(w)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        drop(c.stdout.take());
        let o = c.wait_with_output().unwrap();
        let err = String::from_utf8_lossy(&o.stderr);
        no_panic(&err);
        assert!(o.status.success(), "{name}: {err}");
        if let Some(p) = product {
            assert!(w.join(p).exists(), "{p} not written");
        }
    }
    // Decoding is bounded by pixels in flight, whatever the number of threads.
    let budget = std::sync::Arc::new(tlearn::imageio::PixelBudget::new(1000));
    let peak = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    std::thread::scope(|s| {
        for t in 0..8u64 {
            let (budget, peak) = (budget.clone(), peak.clone());
            s.spawn(move || {
                for i in 0..50u64 {
                    let g = budget.acquire(100 + (t * 37 + i * 91) % 700);
                    peak.fetch_max(budget.in_use(), std::sync::atomic::Ordering::SeqCst);
                    std::thread::yield_now();
                    drop(g);
                }
            });
        }
    });
    let p = peak.load(std::sync::atomic::Ordering::SeqCst);
    assert!(p <= 1000 && p > 0, "peak {p} pixels in flight, budget 1000");
}

#[test]
fn every_unused_input_is_reported_and_odd_names_keep_their_bytes() {
    let w = workdir();
    let w = w.path();
    trained(w, &["cat", "dog"], 6);
    let d = w.join("odd");
    std::fs::create_dir_all(d.join("folder.jpg")).unwrap();
    assert!(Command::new("mkfifo").arg(d.join("fifo.png")).status().unwrap().success());
    std::os::unix::fs::symlink("/nonexistent/gone.png", d.join("dangling.png")).unwrap();
    // Four files whose names differ only in bytes that are not UTF-8.
    make_image(0, 7, 30, 30).save(w.join("one.png")).unwrap();
    let png = std::fs::read(w.join("one.png")).unwrap();
    let names: Vec<PathBuf> = [0xFFu8, 0xFE, 0xFD, 0xFC]
        .iter()
        .map(|&b| d.join(std::ffi::OsStr::from_bytes(&[b'x', b, b'.', b'p', b'n', b'g'])))
        .collect();
    for n in &names {
        std::fs::write(n, &png).unwrap();
    }
    for input in ["odd", "odd/*"] {
        let out = format!("{}.csv", if input == "odd" { "folder" } else { "glob" });
        ok("tlearn-score", &[input, "--run", "toy", "--out", &out], w);
        let summary = json(&w.join(format!("{out}.summary.json")));
        let bad = summary["unreadable"].to_string();
        for n in ["fifo.png", "dangling.png", "folder.jpg"] {
            assert!(bad.contains(n), "{input}: {n} not reported: {bad}");
        }
        assert_eq!(summary["scored"], 4, "{summary}");
        let text = std::fs::read_to_string(w.join(&out)).unwrap();
        let mut paths: Vec<PathBuf> = csv::Reader::from_reader(text.as_bytes())
            .records()
            .map(|r| tlearn::fsutil::text_path(tlearn::fsutil::csv_uncell(&r.unwrap()[0])))
            .collect();
        paths.sort();
        let mut want: Vec<PathBuf> = names.iter().map(|n| n.strip_prefix(w).unwrap().to_path_buf()).collect();
        want.sort();
        assert_eq!(paths, want, "rows must name the real files");
    }
    // Glob patterns follow links to folders, as the glob crate does.
    std::fs::create_dir(w.join("lk")).unwrap();
    std::os::unix::fs::symlink(w.join("data/toy/test/cat"), w.join("lk/cat")).unwrap();
    let n = count_files(&w.join("data/toy/test/cat"));
    ok("tlearn-score", &["lk/*/*.png", "--run", "toy", "--out", "linked.csv"], w);
    assert_eq!(json(&w.join("linked.csv.summary.json"))["scored"], n, "images behind a linked folder");
    // Folder trees given to tlearn-data: folders and FIFOs named like images are reported.
    make_dataset(&w.join("raw5"), &["cat", "dog"], 4, false);
    std::fs::create_dir_all(w.join("raw5/cat/dir.png")).unwrap();
    assert!(Command::new("mkfifo").arg(w.join("raw5/dog/pipe.jpg")).status().unwrap().success());
    std::fs::write(w.join("raw5/dog").join(std::ffi::OsStr::from_bytes(b"notes\xff.txt")), b"x").unwrap();
    ok("tlearn-data", &["split", "raw5", "data/five"], w);
    let skipped = json(&w.join("data/five/split.json"))["skipped"].to_string();
    assert!(skipped.contains("dir.png") && skipped.contains("pipe.jpg"), "{skipped}");
    let non_images = json(&w.join("data/five/split.json"))["non_images"].to_string();
    assert!(non_images.contains("notes\\\\xff.txt"), "{non_images}");
}

//! kill -9 at random points of extract, score, head and finetune, several rounds each; the rerun
//! resumes (journals, checkpoints) and its outputs equal an uninterrupted run's, byte for byte.

mod common;
use common::*;
use rand::{Rng, SeedableRng};
use std::path::Path;
use std::time::{Duration, Instant};

/// Several rounds of kills (random delays within the uninterrupted time `full`, and kills right
/// after the first durable progress), then a run to the end; returns how many kills landed. After
/// a round whose run got to the end (on a busy machine a delay can outlast the work, or a kill can
/// land after the last write), `finished()` clears the output so the next round has work to cut.
fn rounds(
    name: &str,
    args: &[&str],
    cwd: &Path,
    full: Duration,
    progress: &dyn Fn() -> bool,
    finished: &dyn Fn(),
    seed: u64,
) -> usize {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let mut landed = 0;
    for round in 0..6 {
        let delay = (round % 2 == 0).then(|| full.mul_f64(rng.gen_range(0.05..1.0)));
        let killed = kill_at(name, args, cwd, delay, progress);
        eprintln!("{name} round {round}: delay {delay:?}, killed while running: {killed}");
        landed += killed as usize;
        if !killed {
            finished();
        }
    }
    ok(name, args, cwd);
    landed
}

fn timed(name: &str, args: &[&str], cwd: &Path) -> Duration {
    let t = Instant::now();
    ok(name, args, cwd);
    t.elapsed()
}

fn bytes(p: &Path) -> Vec<u8> {
    std::fs::read(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

fn any_chunk(dir: &Path) -> bool {
    std::fs::read_dir(dir)
        .map(|d| {
            d.filter_map(|e| e.ok())
                .any(|e| e.file_name() != "manifest.json" && e.file_name().to_string_lossy().ends_with(".json"))
        })
        .unwrap_or(false)
}

#[test]
fn killed_extract_and_score_resume_to_the_uninterrupted_bytes() {
    let w = workdir();
    let w = w.path();
    prepared(w, &["cat", "dog", "fox"], 40);
    std::fs::write(w.join("data/toy/train/cat/broken.jpg"), b"\xFF\xD8\xFF\xE0 truncated").unwrap();
    let base =
        ["--data", "data/toy", "--backbone", "tiny", "--device", "cpu", "--batch", "4", "--checkpoint-every", "4"];
    let with_out = |o: &'static str| -> Vec<&str> { base.iter().copied().chain(["--out", o]).collect() };
    let full = timed("tlearn-extract", &with_out("ref"), w);
    let jdir = w.join("feats/train.npy.partial");
    let clear = || {
        let _ = std::fs::remove_dir_all(w.join("feats"));
    };
    let landed = rounds("tlearn-extract", &with_out("feats"), w, full, &|| any_chunk(&jdir), &clear, 1);
    assert!(landed >= 3, "at least the progress-triggered kills land mid-run: {landed}");
    let mut n = 0;
    for e in std::fs::read_dir(w.join("ref")).unwrap().filter_map(|e| e.ok()) {
        let name = e.file_name().to_string_lossy().into_owned();
        if name.ends_with(".lock") {
            continue;
        }
        assert!(bytes(&e.path()) == bytes(&w.join("feats").join(&name)), "{name} differs after kills");
        n += 1;
    }
    assert_eq!(n, 12);
    let left: Vec<String> = std::fs::read_dir(w.join("feats"))
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".tmp") || n.ends_with(".partial"))
        .collect();
    assert!(left.is_empty(), "temporary files or journals left: {left:?}");

    // A corrupt cache is detected (checksums), refused by the head, and rebuilt by extract.
    for f in ["train.npy", "train.files.csv", "train.labels.npy"] {
        let p = w.join("feats").join(f);
        let mut b = bytes(&p);
        let at = b.len() - 3;
        b[at] ^= 0x5a;
        std::fs::write(&p, b).unwrap();
        let err = fails("tlearn-head", &["--features", "feats", "--run", "corrupt", "--epochs", "1"], w);
        assert!(err.contains(f) && err.contains("sha256 mismatch"), "{err}");
        let out = ok("tlearn-extract", &with_out("feats"), w);
        let line = out.lines().find(|l| l.starts_with("train ")).unwrap();
        assert!(!line.contains("up to date") && line.contains(" 0 reused"), "rebuilt, not reused: {line}");
        assert!(bytes(&p) == bytes(&w.join("ref").join(f)), "{f} rebuilt to the same bytes");
    }

    ok("tlearn-head", &["--features", "ref", "--run", "toy", "--epochs", "2", "--units", "8"], w);
    ok("tlearn-score", &["--run", "toy", "--export-only"], w);
    let args = |o: &'static str| -> Vec<&'static str> {
        vec!["data/toy", "--run", "toy", "--out", o, "--batch", "4", "--checkpoint-every", "4", "--device", "cpu"]
    };
    let full = timed("tlearn-score", &args("ref.csv"), w);
    let jdir = w.join("s.csv.partial");
    let landed = rounds("tlearn-score", &args("s.csv"), w, full, &|| any_chunk(&jdir), &|| {}, 2);
    assert!(landed >= 3, "{landed}");
    for f in ["", ".summary.json"] {
        assert_eq!(
            String::from_utf8(bytes(&w.join(format!("s.csv{f}")))).unwrap(),
            String::from_utf8(bytes(&w.join(format!("ref.csv{f}")))).unwrap()
        );
    }
    assert!(!w.join("s.csv.partial").exists());

    // An image changed while a run was down voids the journal: no stale score survives.
    let jdir = w.join("t.csv.partial");
    assert!(kill_at("tlearn-score", &args("t.csv"), w, None, &|| any_chunk(&jdir)), "killed mid-run");
    let first = csv::Reader::from_path(w.join("ref.csv")).unwrap().records().next().unwrap().unwrap()[0].to_string();
    make_image(1, 4242, 50, 50).save(w.join(&first)).unwrap();
    let out = run("tlearn-score", &args("t.csv"), w);
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("starting over"), "journal discarded");
    ok("tlearn-score", &args("fresh.csv"), w);
    assert!(bytes(&w.join("t.csv")) == bytes(&w.join("fresh.csv")), "scores of the changed image are fresh");
}

#[test]
fn killed_head_and_finetune_resume_from_their_checkpoints() {
    let w = workdir();
    let w = w.path();
    let feats = prepared(w, &["cat", "dog", "fox"], 12);
    ok("tlearn-extract", &["--data", "data/toy", "--backbone", "tiny", "--device", "cpu"], w);
    let head = |run: &'static str| -> Vec<String> {
        ["--features", &feats, "--run", run, "--epochs", "40", "--units", "32", "--batch", "4"]
            .iter()
            .map(|s| s.to_string())
            .collect()
    };
    let refs = head("href");
    let refs: Vec<&str> = refs.iter().map(|s| s.as_str()).collect();
    let full = timed("tlearn-head", &refs, w);
    let h = head("h");
    let h: Vec<&str> = h.iter().map(|s| s.as_str()).collect();
    let ckpt = w.join("runs/h/checkpoint.onnx");
    let landed = rounds("tlearn-head", &h, w, full, &|| ckpt.exists(), &|| {}, 3);
    assert!(landed >= 3, "{landed}");
    assert!(bytes(&w.join("runs/h/head.onnx")) == bytes(&w.join("runs/href/head.onnx")), "head weights differ");
    assert_eq!(history_sans_time(&w.join("runs/h/history.csv")), history_sans_time(&w.join("runs/href/history.csv")));

    ok("tlearn-convnet", &["mnist", "--out", "net.onnx", "--classes", "3"], w);
    let ft = |run: &'static str| -> Vec<&'static str> {
        vec![
            "net.onnx",
            "--data",
            "data/toy",
            "--run",
            run,
            "--epochs",
            "6",
            "--batch",
            "8",
            "--horizontal-flip",
            "--device",
            "cpu",
        ]
    };
    let full = timed("tlearn-finetune", &ft("fref"), w);
    let ckpt = w.join("runs/f/checkpoint.onnx");
    let landed = rounds("tlearn-finetune", &ft("f"), w, full, &|| ckpt.exists(), &|| {}, 4);
    assert!(landed >= 3, "{landed}");
    for f in ["best.onnx", "last.onnx", "model.onnx"] {
        assert!(bytes(&w.join("runs/f").join(f)) == bytes(&w.join("runs/fref").join(f)), "{f} differs after kills");
    }
    assert_eq!(history_sans_time(&w.join("runs/f/history.csv")), history_sans_time(&w.join("runs/fref/history.csv")));
}

/// A journal with a chunk torn out of its middle: the resumed run writes its new chunks past
/// every name in the folder (a new chunk that took a recorded chunk's name would replace rows
/// the cache is then assembled from), and the cache equals an uninterrupted run's.
#[test]
fn a_journal_with_a_missing_chunk_resumes_to_the_uninterrupted_bytes() {
    let w = workdir();
    let w = w.path();
    prepared(w, &["cat", "dog", "fox"], 40);
    let base =
        ["--data", "data/toy", "--backbone", "tiny", "--device", "cpu", "--batch", "4", "--checkpoint-every", "4"];
    let with_out = |o: &'static str| -> Vec<&str> { base.iter().copied().chain(["--out", o]).collect() };
    ok("tlearn-extract", &with_out("ref"), w);
    let jdir = w.join("feats/train.npy.partial");
    let chunks = || -> usize {
        std::fs::read_dir(&jdir)
            .map(|d| {
                d.filter_map(|e| e.ok())
                    .filter(|e| e.file_name() != "manifest.json" && e.file_name().to_string_lossy().ends_with(".json"))
                    .count()
            })
            .unwrap_or(0)
    };
    let mut torn = false;
    for _ in 0..5 {
        let _ = std::fs::remove_dir_all(w.join("feats"));
        if kill_at("tlearn-extract", &with_out("feats"), w, None, &|| chunks() >= 3) && chunks() >= 3 {
            torn = true;
            break;
        }
    }
    assert!(torn, "a kill landed after three chunks");
    std::fs::remove_file(jdir.join("00000001.json")).unwrap();
    ok("tlearn-extract", &with_out("feats"), w);
    for f in ["train.npy", "train.files.csv", "train.labels.npy", "train.npy.json"] {
        assert!(bytes(&w.join("ref").join(f)) == bytes(&w.join("feats").join(f)), "{f} differs after the resume");
    }
}

/// A kill after a split's new rows are renamed into place but before their sidecar is: the
/// pending sidecar that vouches for them (rows and file list checked) takes its place on the next
/// run and nothing is recomputed; a pending sidecar for rows that never landed (a kill before the
/// rename) is dropped and the cache kept as it was.
#[test]
fn a_kill_between_a_caches_rows_and_its_sidecar_loses_no_work() {
    let w = workdir();
    let w = w.path();
    prepared(w, &["cat", "dog"], 12);
    let args = ["--data", "data/toy", "--backbone", "tiny", "--device", "cpu", "--out", "feats"];
    ok("tlearn-extract", &args, w);
    let (sidecar, pending) = (w.join("feats/train.npy.json"), w.join("feats/train.npy.json.pending"));
    let good = bytes(&sidecar);
    let with_npy_sha = |sha: &str| -> Vec<u8> {
        let mut v: serde_json::Value = serde_json::from_slice(&good).unwrap();
        v["npy_sha256"] = sha.into();
        serde_json::to_vec(&v).unwrap()
    };
    let train_line = |out: &str| out.lines().find(|l| l.starts_with("train ")).unwrap().to_string();
    // New rows in place, the earlier run's sidecar (another sha) still there, the new one pending.
    std::fs::rename(&sidecar, &pending).unwrap();
    std::fs::write(&sidecar, with_npy_sha(&"0".repeat(64))).unwrap();
    let line = train_line(&ok("tlearn-extract", &args, w));
    assert!(line.contains("up to date"), "recovered, not recomputed: {line}");
    assert!(bytes(&sidecar) == good && !pending.exists());
    // One whose pending labels are not the ones it records is dropped with them, the labels in
    // place left as they were.
    let labels = w.join("feats/train.labels.npy");
    let labels_pending = w.join("feats/train.labels.npy.pending");
    std::fs::rename(&sidecar, &pending).unwrap();
    std::fs::write(&sidecar, &good).unwrap();
    std::fs::write(&labels_pending, b"not these labels").unwrap();
    let placed = bytes(&labels);
    let view = tlearn::imageio::View::Identity;
    assert!(!tlearn::features::recover_pending(&w.join("feats"), "train", view).unwrap());
    assert!(!pending.exists() && !labels_pending.exists() && bytes(&labels) == placed && bytes(&sidecar) == good);
    // A pending sidecar whose rows never replaced the cache's.
    std::fs::write(&pending, with_npy_sha(&"1".repeat(64))).unwrap();
    let line = train_line(&ok("tlearn-extract", &args, w));
    assert!(line.contains("up to date"), "{line}");
    assert!(bytes(&sidecar) == good && !pending.exists());
    // The order itself: the new rows cannot be renamed into place (a folder holds their name), so
    // the run fails with their sidecar, labels and file list pending and the old sidecar as it was.
    let npy = w.join("feats/train.npy");
    std::fs::remove_file(&npy).unwrap();
    std::fs::create_dir_all(npy.join("blocker")).unwrap();
    let err = fails("tlearn-extract", &args, w);
    assert!(err.contains("train.npy"), "{err}");
    assert!(pending.exists() && bytes(&sidecar) == good, "the sidecar is written pending, before the rows land");
    for f in ["train.files.csv.pending", "train.labels.npy.pending"] {
        assert!(w.join("feats").join(f).exists(), "{f}");
    }
    let hint = fails("tlearn-head", &["--features", "feats", "--run", "h", "--epochs", "1"], w);
    assert!(hint.contains("rerun tlearn-extract"), "{hint}");
    std::fs::remove_dir_all(&npy).unwrap();
    ok("tlearn-extract", &args, w);
    assert!(bytes(&sidecar) == good && !pending.exists(), "rebuilt to the same cache, pending files dropped");
    let left: Vec<_> = file_names(&w.join("feats")).into_iter().filter(|n| n.ends_with(".pending")).collect();
    assert!(left.is_empty(), "{left:?}");
}

//! Scale-out and concurrency: `--shard I/N` runs as N concurrent processes, merged, equal one run
//! byte for byte; locks make a second writer wait or fail clearly; memory budgets (`--max-memory`
//! sizes, a fine-tune past its budget reading images from disk); shards and merges that do not
//! depend on how a path is spelled (from the red-team pass).

mod common;
use common::*;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

fn spawn(name: &str, args: &[&str], cwd: &Path) -> Child {
    Command::new(bin(name))
        .args(args)
        .current_dir(cwd)
        .env("RUST_LOG", "info,ort=error")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn")
}

fn finish(c: Child, what: &str) -> String {
    let out = c.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    eprintln!("--- {what}: {}\n{}{err}", out.status, String::from_utf8_lossy(&out.stdout));
    assert!(out.status.success(), "{what} failed");
    err
}

/// Every file under `a` (but lock files) has the same bytes under `b`.
fn same_tree(a: &Path, b: &Path) -> usize {
    let mut n = 0;
    for e in walkdir::WalkDir::new(a).max_depth(1) {
        let e = e.unwrap();
        let name = e.file_name().to_string_lossy().into_owned();
        if !e.file_type().is_file() || name.ends_with(".lock") {
            continue;
        }
        let other = b.join(&name);
        assert!(other.exists(), "{} missing from the merged output", other.display());
        assert!(std::fs::read(e.path()).unwrap() == std::fs::read(&other).unwrap(), "{name} differs");
        n += 1;
    }
    n
}

fn hostile_extras(w: &Path) {
    std::fs::write(w.join("data/toy/train/cat/broken.jpg"), b"\xFF\xD8\xFF\xE0 truncated").unwrap();
    std::fs::write(w.join("data/toy/test/dog/empty.png"), b"").unwrap();
    std::fs::write(w.join("data/toy/test/zz-note.png"), b"not a png").unwrap();
}

#[test]
fn four_shards_merged_equal_one_run_byte_for_byte() {
    let w = workdir();
    let w = w.path();
    prepared(w, &["cat", "dog", "fox"], 16);
    hostile_extras(w);
    let base = ["--data", "data/toy", "--backbone", "tiny", "--device", "cpu", "--batch", "5"];
    let single: Vec<&str> = base.iter().copied().chain(["--out", "single", "--views", "hflip"]).collect();
    ok("tlearn-extract", &single, w);
    let kids: Vec<Child> = (0..4)
        .map(|i| {
            let s = format!("{i}/4");
            let args: Vec<&str> =
                base.iter().copied().chain(["--out", "sharded", "--views", "hflip", "--shard", &s]).collect();
            spawn("tlearn-extract", &args, w)
        })
        .collect();
    for (i, c) in kids.into_iter().enumerate() {
        finish(c, &format!("extract shard {i}/4"));
    }
    let parts: Vec<PathBuf> = (0..4).map(|i| w.join(format!("sharded/shard-{i}-of-4"))).collect();
    // Each part holds only its own files, and together they hold all of them once.
    let rows = |d: &Path| std::fs::read_to_string(d.join("train.files.csv")).unwrap().lines().count() - 1;
    let per_part: Vec<usize> = parts.iter().map(|p| rows(p)).collect();
    assert_eq!(per_part.iter().sum::<usize>(), rows(&w.join("single")), "{per_part:?}");
    assert!(per_part.iter().all(|&n| n > 0 && n < rows(&w.join("single"))), "{per_part:?}");
    // A missing part is refused.
    let err = fails("tlearn-extract", &["merge", "--out", "bad", "sharded/shard-0-of-4", "sharded/shard-2-of-4"], w);
    assert!(err.contains("missing [1/4, 3/4]"), "{err}");
    // A part whose extraction was killed before committing a cache is refused, not merged without
    // that split (the first part's listing used to decide which splits there were).
    let (done, pending) = (parts[0].join("validation.npy.json"), parts[0].join("validation.npy.json.pending"));
    std::fs::rename(&done, &pending).unwrap();
    let err = fails("tlearn-extract", &["merge", "--out", "sharded"], w);
    assert!(err.contains("validation.npy.json.pending") && err.contains("rerun that shard"), "{err}");
    std::fs::rename(&pending, &done).unwrap();
    // So is a part that lacks a cache the others hold (a kill before its sidecar was staged):
    // named before anything is written.
    let aside = w.join("validation.npy.json.aside");
    std::fs::rename(&done, &aside).unwrap();
    let err = fails("tlearn-extract", &["merge", "--out", "sharded"], w);
    assert!(err.contains("shard-0-of-4") && err.contains("no `validation` cache"), "{err}");
    assert!(!w.join("sharded/train.npy").exists(), "a merge that fails wrote a cache");
    std::fs::rename(&aside, &done).unwrap();
    let out = ok("tlearn-extract", &["merge", "--out", "sharded"], w);
    assert!(out.contains("merged 4 parts"), "{out}");
    let n = same_tree(&w.join("single"), &w.join("sharded"));
    assert_eq!(n, 3 * 2 * 4, "3 splits × 2 views × (npy, labels, files, sidecar)");

    // Scoring: four shard processes, merged, equal one run (CSV and JSON lines).
    ok("tlearn-head", &["--features", "single", "--run", "toy", "--epochs", "2", "--units", "8"], w);
    ok("tlearn-score", &["--run", "toy", "--export-only"], w);
    for ext in ["csv", "jsonl"] {
        let one = format!("one.{ext}");
        ok("tlearn-score", &["data/toy", "--run", "toy", "--out", &one, "--top-k", "2"], w);
        let kids: Vec<Child> = (0..4)
            .map(|i| {
                let (s, o) = (format!("{i}/4"), format!("part{i}.{ext}"));
                spawn("tlearn-score", &["data/toy", "--run", "toy", "--out", &o, "--top-k", "2", "--shard", &s], w)
            })
            .collect();
        for (i, c) in kids.into_iter().enumerate() {
            finish(c, &format!("score shard {i}/4"));
        }
        let merged = format!("merged.{ext}");
        let parts: Vec<String> = (0..4).map(|i| format!("part{i}.{ext}")).collect();
        let mut args = vec!["merge", "--out", &merged];
        args.extend(parts.iter().map(|s| s.as_str()));
        ok("tlearn-score", &args, w);
        for suffix in ["", ".summary.json"] {
            let (a, b) = (w.join(format!("{one}{suffix}")), w.join(format!("{merged}{suffix}")));
            let (a, b) = (std::fs::read_to_string(a).unwrap(), std::fs::read_to_string(b).unwrap());
            assert_eq!(a, b, "{one}{suffix} vs {merged}{suffix}");
        }
        let summary: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(w.join(format!("{one}.summary.json"))).unwrap()).unwrap();
        assert_eq!(summary["unreadable"].as_array().unwrap().len(), 3, "{summary}");
    }
    deploy_specs_as_local_processes(w);
}

fn read_bytes(p: &Path) -> Vec<u8> {
    std::fs::read(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

/// The repo's Slurm array scripts and Kubernetes Indexed Job spec, run as local processes with the
/// environment their schedulers set; merged outputs equal one run's.
fn deploy_specs_as_local_processes(w: &Path) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let bins = bin("tlearn-score").parent().unwrap().to_path_buf();
    let slurm = |script: &str, i: usize, env: &[(&str, &str)]| {
        let mut c = Command::new("bash");
        c.arg(root.join("deploy/slurm").join(script))
            .current_dir(w)
            .env("SLURM_ARRAY_TASK_ID", i.to_string())
            .env("SLURM_ARRAY_TASK_COUNT", "4")
            .env("SLURM_CPUS_PER_TASK", "1")
            .env("TLEARN_BIN", &bins)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for (k, v) in env {
            c.env(k, v);
        }
        c.spawn().unwrap()
    };
    let env = [
        ("DATA", "data/toy"),
        ("BACKBONE", "tiny"),
        ("SIZE", "32"),
        ("OUT", "slurm-feats"),
        ("EXTRACT_ARGS", "--views hflip --batch 5"),
    ];
    let kids: Vec<Child> = (0..4).map(|i| slurm("extract-array.sh", i, &env)).collect();
    for (i, c) in kids.into_iter().enumerate() {
        finish(c, &format!("slurm extract task {i}"));
    }
    ok("tlearn-extract", &["merge", "--out", "slurm-feats"], w);
    assert_eq!(same_tree(&w.join("single"), &w.join("slurm-feats")), 24);

    let env =
        [("INPUT", "data/toy"), ("MODEL", "runs/toy/model.onnx"), ("OUT", "slurm.csv"), ("SCORE_ARGS", "--top-k 2")];
    let kids: Vec<Child> = (0..4).map(|i| slurm("score-array.sh", i, &env)).collect();
    for (i, c) in kids.into_iter().enumerate() {
        finish(c, &format!("slurm score task {i}"));
    }
    let parts: Vec<String> = (0..4).map(|i| format!("slurm.csv.part-{i}-of-4.csv")).collect();
    let mut args = vec!["merge", "--out", "slurm.csv"];
    args.extend(parts.iter().map(|s| s.as_str()));
    ok("tlearn-score", &args, w);
    assert!(read_bytes(&w.join("slurm.csv")) == read_bytes(&w.join("one.csv")), "slurm-merged scores differ");

    // Kubernetes: the Indexed Job's container args with the completion index substituted (as the
    // downward API does), the volumes mapped to local folders; then the merge Job's args.
    let spec_args = |file: &str| -> Vec<String> {
        let text = std::fs::read_to_string(root.join("deploy/k8s").join(file)).unwrap();
        let line = text.lines().map(str::trim).find_map(|l| l.strip_prefix("args: ")).expect("an args: [...] line");
        let v: Vec<String> = serde_json::from_str(line).expect("args as a JSON-compatible flow list");
        v.into_iter()
            .map(|a| a.replace("/data/inbox", "data/toy").replace("/models/", "runs/toy/").replace("/results/", "k8s/"))
            .collect()
    };
    std::fs::create_dir_all(w.join("k8s")).unwrap();
    let job = spec_args("score-indexed-job.yaml");
    let n: usize = job.iter().find_map(|a| a.strip_prefix("$(SHARD)/")).unwrap().parse().unwrap();
    let kids: Vec<Child> = (0..n)
        .map(|i| {
            let a: Vec<String> = job.iter().map(|a| a.replace("$(SHARD)", &i.to_string())).collect();
            let a: Vec<&str> = a.iter().map(|s| s.as_str()).chain(["--top-k", "2", "--threads", "1"]).collect();
            spawn("tlearn-score", &a, w)
        })
        .collect();
    for (i, c) in kids.into_iter().enumerate() {
        finish(c, &format!("k8s pod {i}"));
    }
    let merge = spec_args("score-merge-job.yaml");
    let a: Vec<&str> = merge.iter().map(|s| s.as_str()).collect();
    ok("tlearn-score", &a, w);
    assert!(read_bytes(&w.join("k8s/scores.csv")) == read_bytes(&w.join("one.csv")), "k8s-merged scores differ");
}

#[test]
fn a_second_writer_waits_for_the_lock_or_fails_clearly() {
    let w = workdir();
    let w = w.path();
    prepared(w, &["cat", "dog"], 6);
    let dir = w.join("feats");
    std::fs::create_dir_all(&dir).unwrap();
    let lock =
        std::fs::OpenOptions::new().create(true).truncate(false).write(true).open(dir.join(".tlearn.lock")).unwrap();
    lock.lock().unwrap();
    std::fs::write(dir.join(".tlearn.lock"), "pid 12345 (the test)").unwrap();
    let args = ["--data", "data/toy", "--backbone", "tiny", "--device", "cpu", "--out", "feats"];
    let out = Command::new(bin("tlearn-extract"))
        .args(args)
        .current_dir(w)
        .env("TLEARN_LOCK_TIMEOUT", "0.5")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(err.contains("feats/.tlearn.lock") && err.contains("held by pid 12345 (the test)"), "{err}");
    assert!(!dir.join("train.npy").exists(), "nothing written while locked");
    // Without a timeout the second process waits, then does its work once the lock is free.
    let child = spawn("tlearn-extract", &args, w);
    std::thread::sleep(std::time::Duration::from_millis(1500));
    assert!(!dir.join("train.npy").exists(), "the waiting process wrote under the lock");
    drop(lock);
    let err = finish(child, "extract after the lock was released");
    assert!(err.contains("waiting for it to finish"), "{err}");
    assert!(dir.join("train.npy.json").exists());
}

/// A shard that owns only an unreadable file of a split (a dangling link) writes an empty part
/// listing it.
#[test]
fn a_shard_owning_only_bad_files_writes_an_empty_part() {
    let w = workdir();
    let w = w.path();
    prepared(w, &["cat", "dog"], 6);
    let bad = "data/toy/test/cat/zz-bad.png";
    std::os::unix::fs::symlink("nowhere.png", w.join(bad)).unwrap();
    let tests: Vec<String> = walkdir::WalkDir::new(w.join("data/toy/test"))
        .into_iter()
        .filter_map(|e| e.ok())
        .filter(|e| !e.file_type().is_dir())
        .map(|e| e.path().strip_prefix(w.join("data/toy")).unwrap().display().to_string())
        .collect();
    // Shards own files by their path inside the dataset folder.
    let rel = bad.strip_prefix("data/toy/").unwrap();
    let (n, i) = (8..500)
        .find_map(|n| {
            let i = tlearn::shard::of(rel.as_bytes(), n);
            tests.iter().all(|t| t == rel || tlearn::shard::of(t.as_bytes(), n) != i).then_some((n, i))
        })
        .unwrap();
    let s = format!("{i}/{n}");
    ok(
        "tlearn-extract",
        &["--data", "data/toy", "--backbone", "tiny", "--splits", "test", "--out", "f", "--shard", &s],
        w,
    );
    let part = w.join(format!("f/shard-{i}-of-{n}/test.npy.json"));
    let info: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(part).unwrap()).unwrap();
    assert_eq!((info["n"].as_u64(), info["shape"][0].as_u64()), (Some(0), Some(0)), "{info}");
    assert_eq!(info["skipped"][0]["path"], bad, "{info}");
}

/// `tlearn-finetune --max-memory` below the decoded images: training, validation and test images
/// (and a cached trunk's outputs) are read back from files a batch at a time (augmented,
/// test-time flipped) and the run equals one held in memory byte for byte — weights, history,
/// test predictions — with no spill file left in the run folder.
#[test]
fn finetune_past_its_memory_budget_reads_images_from_disk_with_the_same_result() {
    let w = workdir();
    let w = w.path();
    make_dataset(&w.join("raw"), &["cat", "dog", "fox"], 14, false);
    ok("tlearn-data", &["split", "raw", "data/toy", "--seed", "1"], w);
    ok("tlearn-convnet", &["mnist", "--out", "net.onnx", "--classes", "3"], w);
    let ft = |name: &str, extra: &[&str]| -> String {
        let mut args = vec!["net.onnx", "--data", "data/toy", "--run", name, "--epochs", "3", "--batch", "8"];
        args.extend_from_slice(&["--horizontal-flip", "--tta", "hflip,vflip", "--device", "cpu", "--explain", "0"]);
        args.extend_from_slice(extra);
        let out = run("tlearn-finetune", &args, w);
        assert!(out.status.success(), "tlearn-finetune {args:?} failed");
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    // With the trunk cached, its outputs (plain and flipped training images, validation) spill too.
    for (mem, disk, extra, spills) in
        [("mem", "disk", &[][..], 3), ("tmem", "tdisk", &["--cache-trunk", "--trainable", "dense*"][..], 6)]
    {
        let held = ft(mem, extra);
        assert!(!held.contains("past the memory budget"), "{held}");
        let spilled = ft(disk, &[extra, &["--max-memory", "1K"][..]].concat());
        for split in ["train", "validation", "test"] {
            assert!(spilled.contains(&format!("{split} images: ")), "{split} not spilled:\n{spilled}");
        }
        assert_eq!(spilled.matches("past the memory budget").count(), spills, "{spilled}");
        let (a, b) = (w.join("runs").join(mem), w.join("runs").join(disk));
        for f in ["best.onnx", "last.onnx", "model.onnx"] {
            assert!(read_bytes(&a.join(f)) == read_bytes(&b.join(f)), "{disk}: {f} differs from the in-memory run's");
        }
        assert_eq!(history_sans_time(&a.join("history.csv")), history_sans_time(&b.join("history.csv")));
        let preds = |r: &str| read_bytes(&w.join("reports").join(r).join("predictions.csv"));
        assert!(preds(mem) == preds(disk), "{disk}: test predictions differ");
        let left: Vec<_> = file_names(&b).into_iter().filter(|n| n.contains("spill")).collect();
        assert!(left.is_empty(), "spill files left behind: {left:?}");
    }
    let bad = fails("tlearn-finetune", &["net.onnx", "--data", "data/toy", "--max-memory", "12Q"], w);
    assert!(bad.contains("12Q") && bad.contains("unit"), "{bad}");
}

#[test]
fn byte_sizes_read_as_powers_of_1024() {
    use tlearn::cli::byte_size;
    assert_eq!(byte_size("4096"), Ok(4096));
    assert_eq!(byte_size("1K"), Ok(1024));
    assert_eq!(byte_size("512M"), Ok(512 << 20));
    assert_eq!(byte_size("1.5G"), Ok(3 << 29));
    assert_eq!(byte_size("2GiB"), Ok(2 << 30));
    assert_eq!(byte_size("2gb"), Ok(2 << 30));
    for bad in ["", "G", "-1M", "12Q", "1e400", "nanG"] {
        assert!(byte_size(bad).is_err(), "{bad}");
    }
}

fn first_file(dir: &Path) -> PathBuf {
    let e = walkdir::WalkDir::new(dir).sort_by_file_name().into_iter().filter_map(|e| e.ok());
    e.filter(|e| e.file_type().is_file()).map(|e| e.into_path()).next().expect("a file")
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

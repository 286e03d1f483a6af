//! The data stage: `tlearn-data split` on class folders and on the Kaggle flat layout (stratified,
//! seeded, printed; bad inputs named by their path), and the ELPV labels read into classes.
//! (From `tests/pipeline.rs` and `tests/units.rs`.)

mod common;
use common::*;
use std::path::Path;

fn read(p: &Path) -> String {
    std::fs::read_to_string(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

#[test]
fn split_class_folders_is_stratified_seeded_and_printed() {
    let w = workdir();
    let raw = w.path().join("raw");
    make_dataset(&raw, &["cat", "dog"], 20, false);
    std::fs::write(raw.join("cat/notes.txt"), "not an image").unwrap();
    let out = ok(
        "tlearn-data",
        &["split", "raw", "data/a", "--test", "0.25", "--validation", "0.2", "--seed", "7"],
        w.path(),
    );
    // 20 per class: 5 test, round(15·0.2)=3 validation, 12 train.
    assert!(out.lines().any(|l| l.split_whitespace().collect::<Vec<_>>() == ["cat", "12", "3", "5", "20"]), "{out}");
    assert!(out.contains("skipped 1 non-image"), "{out}");
    for split in ["train", "validation", "test"] {
        for c in ["cat", "dog"] {
            assert!(w.path().join("data/a").join(split).join(c).is_dir());
        }
    }
    ok("tlearn-data", &["split", "raw", "data/b", "--seed", "7"], w.path());
    ok("tlearn-data", &["split", "raw", "data/c", "--seed", "8"], w.path());
    let m = |d: &str| {
        read(&w.path().join(d).join("manifest.csv"))
            .lines()
            .map(|l| l.split(',').take(3).collect::<Vec<_>>().join(","))
            .collect::<Vec<_>>()
    };
    assert_eq!(m("data/a"), m("data/b"), "same seed, same split");
    assert_ne!(m("data/a"), m("data/c"), "another seed, another split");
    // Existing output is refused without --force.
    let err = fails("tlearn-data", &["split", "raw", "data/a"], w.path());
    assert!(err.contains("data/a") && err.contains("exists"), "{err}");
}

#[test]
fn split_kaggle_flat_layout_with_counts() {
    let w = workdir();
    make_dataset(&w.path().join("train"), &["cat", "dog"], 10, true);
    let out = ok("tlearn-data", &["split", "train", "small", "--counts", "4,2,3", "--mode", "copy"], w.path());
    assert!(out.lines().any(|l| l.split_whitespace().collect::<Vec<_>>() == ["dog", "4", "2", "3", "9"]), "{out}");
    assert!(w.path().join("small/train/cat").read_dir().unwrap().count() == 4);
    let name = w.path().join("small/test/dog").read_dir().unwrap().next().unwrap().unwrap().file_name();
    assert!(name.to_string_lossy().starts_with("dog."), "Kaggle names kept: {name:?}");
    let err = fails("tlearn-data", &["split", "train", "big", "--counts", "8,2,3"], w.path());
    assert!(err.contains("class `cat` has 10 images"), "{err}");
}

#[test]
fn split_bad_inputs_name_the_path() {
    let w = workdir();
    let err = fails("tlearn-data", &["split", "nowhere", "out"], w.path());
    assert!(err.contains("nowhere") && err.contains("does not exist"), "{err}");
    // An empty class folder is left out (and said so); dangling links and link loops are skipped
    // and counted; the split goes on.
    make_dataset(&w.path().join("raw"), &["a", "b"], 5, false);
    std::fs::create_dir_all(w.path().join("raw/empty")).unwrap();
    std::os::unix::fs::symlink("nowhere.png", w.path().join("raw/a/dangling.png")).unwrap();
    std::os::unix::fs::symlink("loop2.png", w.path().join("raw/b/loop1.png")).unwrap();
    std::os::unix::fs::symlink("loop1.png", w.path().join("raw/b/loop2.png")).unwrap();
    let out = ok("tlearn-data", &["split", "raw", "out", "--counts", "2,1,1", "--mode", "copy"], w.path());
    assert!(out.contains("empty class folder(s) left out: empty") && out.contains("unreadable: 3"), "{out}");
    assert!(out.contains("raw/a/dangling.png") && out.contains("raw/b/loop1.png"), "{out}");
    let info: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(w.path().join("out/split.json")).unwrap()).unwrap();
    assert_eq!(info["skipped"].as_array().unwrap().len(), 3, "{info}");
    assert_eq!(info["empty_classes"][0], "empty");
    assert!(!w.path().join("out/train/empty").exists());
}

#[test]
fn elpv_labels_and_classes() {
    let cells = tlearn::elpv::parse_labels(
        "images/cell0001.png  1.0  mono\nimages/cell0002.png 0.3333333333333333 poly\n",
        Path::new("labels.csv"),
    )
    .unwrap();
    assert_eq!(tlearn::elpv::class_of(&cells[0], 2), "defective");
    assert_eq!(tlearn::elpv::class_of(&cells[1], 2), "functional");
    assert_eq!(tlearn::elpv::class_of(&cells[1], 4), "p033");
    match tlearn::elpv::parse_labels("images/x.png oops mono", Path::new("labels.csv")) {
        Err(tlearn::Error::BadData { path, reason }) => {
            assert!(path == Path::new("labels.csv") && reason.starts_with("line 1:"), "{reason}")
        }
        other => panic!("expected bad data, got {:?}", other.map(|c| c.len())),
    }
}

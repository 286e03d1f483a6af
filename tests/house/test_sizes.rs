//! Test and benchmark files stay small too: every `tests/**/*.rs` and `benches/**/*.rs` file is at
//! most 600 lines; a longer one is split by subject.

use std::path::{Path, PathBuf};

/// The `.rs` files under `dirs` (relative to `root`) longer than `max` lines: (path, lines).
pub fn long_files(root: &Path, dirs: &[&str], max: usize) -> Vec<(String, usize)> {
    let mut out = vec![];
    for dir in dirs.iter().map(|d| root.join(d)).filter(|d| d.is_dir()) {
        for e in walkdir::WalkDir::new(&dir).sort_by_file_name().into_iter().map(|e| e.unwrap()) {
            let p: PathBuf = e.path().into();
            if e.file_type().is_file() && p.extension().is_some_and(|x| x == "rs") {
                let n = std::fs::read_to_string(&p).unwrap().lines().count();
                if n > max {
                    out.push((p.strip_prefix(root).unwrap().display().to_string(), n));
                }
            }
        }
    }
    out
}

#[test]
fn test_and_bench_files_stay_under_600_lines() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let long = long_files(root, &["tests", "benches"], 600);
    let wrong: Vec<String> =
        long.iter().map(|(p, n)| format!("{p}: {n} lines (at most 600): split it by subject")).collect();
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

/// The rule on a deliberately broken copy: a 601-line file under `tests/` or in a subfolder of
/// `benches/` is found; 600 lines and files that are not Rust pass.
#[test]
fn the_size_rule_finds_a_long_test_file_in_a_broken_copy() {
    let d = tempfile::tempdir().unwrap();
    let put = |rel: &str, lines: usize| {
        let p = d.path().join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, "// x\n".repeat(lines)).unwrap();
    };
    put("tests/ok.rs", 600);
    put("tests/data.txt", 900);
    put("benches/ok.rs", 10);
    assert_eq!(long_files(d.path(), &["tests", "benches"], 600), vec![]);
    put("tests/long.rs", 601);
    put("benches/deep/common/mod.rs", 700);
    assert_eq!(
        long_files(d.path(), &["tests", "benches"], 600),
        [("tests/long.rs".to_string(), 601), ("benches/deep/common/mod.rs".to_string(), 700)]
    );
}

/// The rule on a deliberately broken copy of `tests/` and `benches/` themselves: one file made
/// 601 lines long is reported, and only it.
#[test]
fn the_size_rule_finds_a_test_file_grown_in_a_copy_of_the_tests() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let copy = tempfile::tempdir().unwrap();
    for dir in ["tests", "benches"] {
        for e in walkdir::WalkDir::new(root.join(dir)).into_iter().map(|e| e.unwrap()) {
            let rel = e.path().strip_prefix(root).unwrap();
            if e.file_type().is_file() && rel.extension().is_some_and(|x| x == "rs") {
                std::fs::create_dir_all(copy.path().join(rel).parent().unwrap()).unwrap();
                std::fs::copy(e.path(), copy.path().join(rel)).unwrap();
            }
        }
    }
    let before = long_files(copy.path(), &["tests", "benches"], 600);
    assert_eq!(before, long_files(root, &["tests", "benches"], 600), "the copy is the tests");
    let report = copy.path().join("tests/report.rs");
    let n = std::fs::read_to_string(&report).unwrap().lines().count();
    std::fs::write(&report, "// x\n".repeat(601)).unwrap();
    assert!(n <= 600);
    let after = long_files(copy.path(), &["tests", "benches"], 600);
    let new: Vec<_> = after.iter().filter(|f| !before.contains(f)).collect();
    assert_eq!(new, [&("tests/report.rs".to_string(), 601)]);
}

//! The house rules, checked: the library's layering (binaries → workflows → stages → domain →
//! infrastructure; nothing imports upward, no stage imports another stage, no import cycles
//! between modules, the argument parser only in the CLI layer) and its sizes (files ≤ 600 lines,
//! functions ≤ 80 lines). See ARCHITECTURE.md. Beside them, in `tests/house/`: no import cycles
//! inside a folder module, test and benchmark files ≤ 600 lines, no shell.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

#[path = "house/folder_cycles.rs"]
mod folder_cycles;
#[path = "house/no_shell.rs"]
mod no_shell;
#[path = "house/test_sizes.rs"]
mod test_sizes;

/// Every top-level module of `pipeline/` and its layer: 0 infrastructure, 1 domain, 2 stages (one
/// per binary: each stands alone, importing no other stage), 3 workflows (several stages composed),
/// 4 what only the binaries use. A new module must be given a layer here.
const LAYERS: &[(&str, u8)] = &[
    ("error", 0),
    ("fsutil", 0),
    ("output", 0),
    ("onnx", 0),
    ("kernels", 0),
    ("runtime", 0),
    ("journal", 0),
    ("lock", 0),
    ("shard", 0),
    ("memory", 0),
    ("spill", 0),
    ("imageio", 0),
    ("batch", 0),
    ("inputs", 0),
    ("progress", 0),
    ("params", 0),
    ("history", 0),
    ("init", 0),
    ("pth", 0),
    ("download", 0),
    ("setup", 0),
    ("layout", 1),
    ("catalog", 1),
    ("backbone", 1),
    ("calibrate", 1),
    ("dataset", 1),
    ("imageset", 1),
    ("augment", 1),
    ("convnet", 1),
    ("efficientnet", 1),
    ("features", 1),
    ("metrics", 1),
    ("plot", 1),
    ("report", 1),
    ("explain", 1),
    ("train", 1),
    ("trunk", 1),
    ("heads", 1),
    ("runs", 1),
    ("elpv", 2),
    ("mnist", 2),
    ("split", 2),
    ("extract", 2),
    ("head", 2),
    ("evaluate", 2),
    ("score", 2),
    ("finetune", 2),
    ("quantize", 2),
    ("ensemble", 2),
    ("compare", 3),
    ("fit", 3),
    ("cli", 4),
    ("commands", 4),
];
const NAMES: [&str; 5] = ["infrastructure", "domain", "stages", "workflows", "binaries"];
const STAGE: u8 = 2;

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

fn library_files() -> Vec<(String, PathBuf)> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("pipeline");
    let mut files = vec![];
    rust_files(&root, &mut files);
    files.sort();
    files
        .into_iter()
        .filter_map(|p| {
            let rel = p.strip_prefix(&root).unwrap().to_string_lossy().into_owned();
            let top = rel.split('/').next().unwrap().trim_end_matches(".rs").to_string();
            (top != "bin" && top != "lib").then_some((top, p))
        })
        .collect()
}

/// The top-level modules a file names as `crate::<module>` (in `use` lines and in paths).
fn imports(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    // Doc links (`[`crate::x`]` in `///` and `//!`) count: a module's docs must not know a higher
    // layer either. Plain `//` comments do not.
    let plain_comment = |l: &str| {
        let t = l.trim_start();
        t.starts_with("//") && !t.starts_with("///") && !t.starts_with("//!")
    };
    for line in text.lines().filter(|l| !plain_comment(l)) {
        let mut rest = line;
        while let Some(at) = rest.find("crate::") {
            rest = &rest[at + "crate::".len()..];
            if let Some(stripped) = rest.strip_prefix('{') {
                // `use crate::{a::x, b};`: every item of the group (one line, as rustfmt keeps
                // short groups; longer ones put one item per line, read below).
                for item in stripped.split('}').next().unwrap_or("").split(',') {
                    let name: String = item.trim().chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect();
                    out.insert(name);
                }
                continue;
            }
            let name: String = rest.chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect();
            // `crate::outln!(…)` is a macro (exported at the crate root), not a module.
            if !rest[name.len()..].starts_with('!') {
                out.insert(name);
            }
        }
    }
    // Items of a multi-line `use crate::{` group.
    let mut in_group = false;
    for line in text.lines() {
        let t = line.trim();
        if t.starts_with("use crate::{") && !t.contains('}') {
            in_group = true;
            continue;
        }
        if in_group {
            if t.starts_with('}') {
                in_group = false;
                continue;
            }
            for item in t.split(',') {
                let name: String = item.trim().chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect();
                out.insert(name);
            }
        }
    }
    out.retain(|n| !n.is_empty() && n.chars().next().unwrap().is_lowercase());
    out
}

fn import_graph() -> BTreeMap<String, BTreeSet<String>> {
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (top, path) in library_files() {
        let text = std::fs::read_to_string(&path).unwrap();
        let deps = graph.entry(top.clone()).or_default();
        for d in imports(&text) {
            if d != top {
                deps.insert(d);
            }
        }
    }
    graph
}

#[test]
fn no_module_imports_from_a_higher_layer() {
    let layer: BTreeMap<&str, u8> = LAYERS.iter().copied().collect();
    let graph = import_graph();
    let mut wrong = vec![];
    for (m, deps) in &graph {
        let Some(&lm) = layer.get(m.as_str()) else {
            wrong.push(format!("pipeline/{m}: no layer (add it to LAYERS in tests/house.rs and ARCHITECTURE.md)"));
            continue;
        };
        for d in deps {
            match layer.get(d.as_str()) {
                Some(&ld) if ld > lm => wrong.push(format!(
                    "{m} ({}) imports {d} ({}): a lower layer must not know a higher one",
                    NAMES[lm as usize], NAMES[ld as usize]
                )),
                None => wrong.push(format!("{m} imports crate::{d}, which has no layer")),
                _ => {}
            }
        }
    }
    assert!(wrong.is_empty(), "layering broken:\n{}", wrong.join("\n"));
}

/// Stages that import another stage, as "a imports b" lines.
fn stage_imports(graph: &BTreeMap<String, BTreeSet<String>>, layer: &BTreeMap<&str, u8>) -> Vec<String> {
    let is_stage = |m: &str| layer.get(m) == Some(&STAGE);
    let mut wrong = vec![];
    for (m, deps) in graph.iter().filter(|(m, _)| is_stage(m)) {
        for d in deps.iter().filter(|d| is_stage(d)) {
            wrong.push(format!(
                "stage {m} imports stage {d}: what both need belongs in the domain (a run: crate::runs), \
                 and what composes stages in a workflow"
            ));
        }
    }
    wrong
}

#[test]
fn no_stage_imports_another_stage() {
    let layer: BTreeMap<&str, u8> = LAYERS.iter().copied().collect();
    let wrong = stage_imports(&import_graph(), &layer);
    assert!(wrong.is_empty(), "stages must stand alone:\n{}", wrong.join("\n"));
}

#[test]
fn the_stage_rule_catches_a_stage_importing_a_stage() {
    // The rule on a broken copy: evaluate importing finetune (as it once did) is reported, a
    // workflow importing a stage and a stage importing the domain are not.
    let layer: BTreeMap<&str, u8> = LAYERS.iter().copied().collect();
    let mut graph = import_graph();
    graph.entry("evaluate".into()).or_default().insert("finetune".into());
    graph.entry("compare".into()).or_default().insert("head".into());
    let wrong = stage_imports(&graph, &layer);
    assert_eq!(wrong.len(), 1, "{wrong:?}");
    assert!(wrong[0].starts_with("stage evaluate imports stage finetune"), "{wrong:?}");
}

/// Library files (all but the binaries and `cli.rs`) that name the argument parser.
fn files_naming_clap(files: &[(String, PathBuf)]) -> Vec<String> {
    files
        .iter()
        .filter(|(top, _)| top != "cli")
        .filter(|(_, p)| std::fs::read_to_string(p).unwrap().contains("clap"))
        .map(|(_, p)| p.display().to_string())
        .collect()
}

#[test]
fn only_the_cli_layer_knows_the_argument_parser() {
    // Choices are `params::Choice` tables; `cli.rs` makes them command-line values.
    let wrong = files_naming_clap(&library_files());
    assert!(wrong.is_empty(), "clap outside pipeline/cli.rs and pipeline/bin/:\n{}", wrong.join("\n"));
    let dir = tempfile::tempdir().unwrap();
    let broken = dir.path().join("device.rs");
    std::fs::write(&broken, "#[derive(clap::ValueEnum)]\npub enum Device { Cpu }\n").unwrap();
    assert_eq!(files_naming_clap(&[("runtime".into(), broken)]).len(), 1, "the check must see a derive");
}

#[test]
fn modules_import_each_other_without_cycles() {
    let graph = import_graph();
    // Depth-first search for a back edge; report the cycle it closes.
    fn visit(
        m: &str,
        graph: &BTreeMap<String, BTreeSet<String>>,
        state: &mut BTreeMap<String, u8>,
        stack: &mut Vec<String>,
    ) -> Option<Vec<String>> {
        state.insert(m.into(), 1);
        stack.push(m.into());
        for d in graph.get(m).into_iter().flatten() {
            match state.get(d.as_str()) {
                Some(1) => {
                    let at = stack.iter().position(|s| s == d).unwrap();
                    return Some([&stack[at..], std::slice::from_ref(d)].concat());
                }
                None => {
                    if let Some(c) = visit(d, graph, state, stack) {
                        return Some(c);
                    }
                }
                _ => {}
            }
        }
        stack.pop();
        state.insert(m.into(), 2);
        None
    }
    let mut state = BTreeMap::new();
    for m in graph.keys() {
        if !state.contains_key(m.as_str()) {
            if let Some(cycle) = visit(m, &graph, &mut state, &mut vec![]) {
                panic!("import cycle: {}", cycle.join(" → "));
            }
        }
    }
}

#[test]
fn the_imports_reader_sees_every_form_of_import() {
    let text = "use crate::a::X;\nuse crate::{b, c::Y};\nuse crate::{\n    d::{self, Z},\n    e,\n};\nfn f() { crate::g::h(); crate::outln!(); }\n// crate::ignored\n/// See [`crate::k`].\n";
    let got: Vec<String> = imports(text).into_iter().collect();
    assert_eq!(got, ["a", "b", "c", "d", "e", "g", "k"]);
}

/// Functions longer than `max` lines in `text` (rustfmt layout: a `fn` at some indentation ends
/// at the first line that is that indentation plus `}`), as (name, first line, length).
fn long_functions(text: &str, max: usize) -> Vec<(String, usize, usize)> {
    let lines: Vec<&str> = text.lines().collect();
    let mut out = vec![];
    for (i, l) in lines.iter().enumerate() {
        let t = l.trim_start();
        let t = t.strip_prefix("pub ").or_else(|| t.strip_prefix("pub(crate) ")).unwrap_or(t);
        let t = t.strip_prefix("const ").unwrap_or(t);
        let Some(sig) = t.strip_prefix("fn ") else { continue };
        if l.trim_end().ends_with(';') || (l.contains('{') && l.trim_end().ends_with('}')) {
            continue;
        }
        let indent = &l[..l.len() - l.trim_start().len()];
        let close = format!("{indent}}}");
        if let Some(end) = lines[i..].iter().position(|x| *x == close) {
            if end + 1 > max {
                let name: String = sig.chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect();
                out.push((name, i + 1, end + 1));
            }
        }
    }
    out
}

#[test]
fn files_and_functions_stay_small() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("pipeline");
    let mut files = vec![];
    rust_files(&root, &mut files);
    let mut wrong = vec![];
    for p in files {
        let text = std::fs::read_to_string(&p).unwrap();
        let rel = p.strip_prefix(&root).unwrap().display().to_string();
        let n = text.lines().count();
        if n > 600 {
            wrong.push(format!("pipeline/{rel}: {n} lines (at most 600)"));
        }
        for (name, line, len) in long_functions(&text, 80) {
            wrong.push(format!("pipeline/{rel}:{line}: fn {name} is {len} lines (at most 80)"));
        }
    }
    assert!(wrong.is_empty(), "split these by concept or phase:\n{}", wrong.join("\n"));
}

#[test]
fn the_size_check_measures_functions() {
    let f = |body: usize| format!("pub fn f() {{\n{}}}\n", "    x();\n".repeat(body));
    assert!(long_functions(&f(78), 80).is_empty());
    assert_eq!(long_functions(&f(79), 80), vec![("f".to_string(), 1, 81)]);
}

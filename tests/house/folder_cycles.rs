//! No import cycles inside a folder module: in every folder of `pipeline/` (`extract/`,
//! `features/`, `onnx/`, `train/`, … and their subfolders) the sibling modules — its files and
//! subfolders, with its `mod.rs` as the folder's own node — import each other without a cycle.
//! An import is a path that names a sibling: `super::x`, `self::x`, `crate::<folder>::x`, a bare
//! `x::` where `x` is a child of the module the path is written in, each item of a `use` group,
//! and doc links; `super::Item` (not a module) is the folder's own node, `mod.rs`. A `pub use` in
//! `mod.rs` is the folder's interface, not its code's dependency: it does not count, so a child
//! may use a helper of `mod.rs` that re-exports the child's items, but not one whose code uses it.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// A module path from the crate root: `["train", "compile", "graph"]` for `pipeline/train/compile/graph.rs`.
type ModPath = Vec<String>;

/// Whether `seg` names a module under `module` on disk (`seg.rs` or `seg/`).
fn is_child(root: &Path, module: &[String], seg: &str) -> bool {
    let dir = module.iter().fold(root.to_path_buf(), |d, s| d.join(s));
    !seg.is_empty() && (dir.join(format!("{seg}.rs")).is_file() || dir.join(seg).join("mod.rs").is_file())
}

/// The module a path written in `scope` names (its deepest module prefix), or None for a path
/// that does not start in this crate.
fn resolve(root: &Path, scope: &[String], segs: &[&str]) -> Option<ModPath> {
    let (mut cur, rest): (ModPath, &[&str]) = match segs.first().copied()? {
        "crate" => (vec![], &segs[1..]),
        "self" => (scope.to_vec(), &segs[1..]),
        "super" => {
            let ups = segs.iter().take_while(|s| **s == "super").count();
            (scope[..scope.len().checked_sub(ups)?].to_vec(), &segs[ups..])
        }
        first if is_child(root, scope, first) => (scope.to_vec(), segs),
        _ => return None,
    };
    for seg in rest {
        if *seg == "self" {
            continue;
        }
        if !is_child(root, &cur, seg) {
            break;
        }
        cur.push(seg.to_string());
    }
    Some(cur)
}

/// The paths of a `use` tree (`a::{b, c::{self, D}}` → `a::b`, `a::c::self`, `a::c::D`).
fn use_paths(tree: &str) -> Vec<String> {
    let tree: String = tree.chars().filter(|c| !c.is_whitespace()).collect();
    let Some(open) = tree.find('{') else { return vec![tree] };
    let (prefix, body) = (&tree[..open], &tree[open + 1..tree.rfind('}').unwrap_or(tree.len())]);
    // Split the group's body at top-level commas.
    let (mut items, mut depth, mut start) = (vec![], 0, 0);
    for (i, c) in body.char_indices() {
        match c {
            '{' => depth += 1,
            '}' => depth -= 1,
            ',' if depth == 0 => {
                items.push(&body[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    items.push(&body[start..]);
    items.into_iter().filter(|i| !i.is_empty()).flat_map(use_paths).map(|p| format!("{prefix}{p}")).collect()
}

/// Every `a::b::c` path in a line of code that does not follow another `::` or identifier.
fn code_paths(line: &str) -> Vec<Vec<&str>> {
    let ident = |c: char| c.is_alphanumeric() || c == '_';
    let bytes = line.as_bytes();
    let mut out = vec![];
    let mut i = 0;
    while i < line.len() {
        let c = line[i..].chars().next().unwrap();
        let after_path = i > 0 && (ident(line[..i].chars().next_back().unwrap()) || bytes[i - 1] == b':');
        if !ident(c) || after_path {
            i += c.len_utf8();
            continue;
        }
        let mut segs = vec![];
        let mut j = i;
        loop {
            let len = line[j..].find(|c: char| !ident(c)).unwrap_or(line.len() - j);
            segs.push(&line[j..j + len]);
            j += len;
            if !line[j..].starts_with("::") || !line[j + 2..].starts_with(ident) {
                break;
            }
            j += 2;
        }
        if segs.len() > 1 {
            out.push(segs);
        }
        i = j.max(i + 1);
    }
    out
}

/// The module each line of a file is in: the file's own, or an inline `mod name {` block's
/// (rustfmt layout: the block ends at its indentation plus `}`).
fn line_scopes(text: &str, file_module: &[String]) -> Vec<ModPath> {
    let lines: Vec<&str> = text.lines().collect();
    let mut scopes = vec![file_module.to_vec(); lines.len()];
    for (i, l) in lines.iter().enumerate() {
        let t = l.trim_start();
        let t = t.strip_prefix("pub ").or_else(|| t.strip_prefix("pub(crate) ")).unwrap_or(t);
        let Some(name) = t.strip_prefix("mod ").and_then(|r| r.strip_suffix(" {")) else { continue };
        let close = format!("{}}}", &l[..l.len() - l.trim_start().len()]);
        let end = lines[i..].iter().position(|x| *x == close).map_or(lines.len(), |e| i + e);
        let inner = [scopes[i].clone(), vec![name.to_string()]].concat();
        scopes[i + 1..end].iter_mut().for_each(|s| *s = inner.clone());
    }
    scopes
}

/// The modules a file names, as (module, line number, the path as written); a folder's own file
/// (`mod.rs`) leaves out its re-exports (`pub use`).
fn file_imports(root: &Path, text: &str, module: &[String], folder_file: bool) -> Vec<(ModPath, usize, String)> {
    let plain_comment = |l: &str| {
        let t = l.trim_start();
        t.starts_with("//") && !t.starts_with("///") && !t.starts_with("//!")
    };
    let lines: Vec<&str> = text.lines().collect();
    let scopes = line_scopes(text, module);
    let mut out = vec![];
    let mut i = 0;
    while i < lines.len() {
        let (first, scope) = (i, &scopes[i]);
        let t = lines[i].trim_start();
        let re_export = t.starts_with("pub use ") || t.starts_with("pub(crate) use ");
        let t = t.strip_prefix("pub ").or_else(|| t.strip_prefix("pub(crate) ")).unwrap_or(t);
        if let Some(rest) = t.strip_prefix("use ") {
            let mut stmt = rest.to_string();
            while !stmt.contains(';') && i + 1 < lines.len() {
                i += 1;
                stmt.push_str(lines[i]);
            }
            if re_export && folder_file {
                i += 1;
                continue;
            }
            for p in use_paths(stmt.split(';').next().unwrap()) {
                let segs: Vec<&str> = p.split(" as ").next().unwrap().split("::").collect();
                if let Some(m) = resolve(root, scope, &segs) {
                    out.push((m, first + 1, p.clone()));
                }
            }
        } else if !plain_comment(lines[i]) {
            for segs in code_paths(lines[i]) {
                if let Some(m) = resolve(root, scope, &segs) {
                    out.push((m, i + 1, segs.join("::")));
                }
            }
        }
        i += 1;
    }
    out
}

/// A folder's import graph: node → node → (file:line, path) of the first import making the edge.
type Graph = BTreeMap<String, BTreeMap<String, String>>;

/// Every folder module under `root` (its module path) and the graph among its children.
fn folder_graphs(root: &Path) -> BTreeMap<ModPath, Graph> {
    let mut files = vec![];
    walk(root, &mut files);
    let module_of = |p: &Path| -> ModPath {
        let rel = p.strip_prefix(root).unwrap().with_extension("");
        let mut m: ModPath = rel.iter().map(|s| s.to_string_lossy().into_owned()).collect();
        if m.last().is_some_and(|s| s == "mod" || s == "lib") {
            m.pop();
        }
        m
    };
    let mut graphs: BTreeMap<ModPath, Graph> = BTreeMap::new();
    for f in files.iter().filter(|f| f.ends_with("mod.rs")) {
        let folder = module_of(f);
        let g = graphs.entry(folder.clone()).or_default();
        for c in files.iter().map(|c| module_of(c)).filter(|c| c.len() > folder.len() && c.starts_with(&folder)) {
            g.entry(c[folder.len()].clone()).or_default();
        }
        g.entry("mod".into()).or_default();
    }
    let node = |m: &[String], folder: &[String]| m.get(folder.len()).cloned().unwrap_or_else(|| "mod".into());
    for f in &files {
        let module = module_of(f);
        let text = std::fs::read_to_string(f).unwrap();
        let rel = f.strip_prefix(root).unwrap().display().to_string();
        let folder_file = f.ends_with("mod.rs") || f.ends_with("lib.rs");
        for (target, line, path) in file_imports(root, &text, &module, folder_file) {
            for (folder, g) in graphs.iter_mut() {
                if !module.starts_with(folder) || !target.starts_with(folder) {
                    continue;
                }
                let (from, to) = (node(&module, folder), node(&target, folder));
                if from != to {
                    g.entry(from).or_default().entry(to).or_insert_with(|| format!("{rel}:{line} `{path}`"));
                }
            }
        }
    }
    graphs
}

fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().path()).collect();
    entries.sort();
    for p in entries {
        if p.is_dir() && !p.ends_with("bin") {
            walk(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// The cycles among the children of each folder under `root`: (folder, the modules of one
/// strongly connected component, sorted, the imports that close it).
pub fn folder_cycles(root: &Path) -> Vec<(String, Vec<String>, Vec<String>)> {
    let mut out = vec![];
    for (folder, g) in folder_graphs(root).into_iter().filter(|(f, _)| !f.is_empty()) {
        let reach = |from: &str| -> BTreeSet<String> {
            let (mut seen, mut todo) = (BTreeSet::new(), vec![from.to_string()]);
            while let Some(n) = todo.pop() {
                for d in g.get(&n).into_iter().flat_map(|e| e.keys()) {
                    if seen.insert(d.clone()) {
                        todo.push(d.clone());
                    }
                }
            }
            seen
        };
        let reaches: BTreeMap<&String, BTreeSet<String>> = g.keys().map(|n| (n, reach(n))).collect();
        let mut done = BTreeSet::new();
        for n in g.keys().filter(|n| reaches[n].contains(*n)) {
            if done.contains(n) {
                continue;
            }
            let scc: Vec<String> = reaches[n].iter().filter(|m| reaches[m].contains(n)).cloned().collect();
            let why = scc
                .iter()
                .flat_map(|a| {
                    g[a].iter().filter(|(b, _)| scc.contains(b)).map(move |(b, at)| format!("{a} → {b}: {at}"))
                })
                .collect();
            done.extend(scc.iter().cloned());
            out.push((folder.join("/"), scc, why));
        }
    }
    out
}

#[test]
fn sibling_modules_import_each_other_without_cycles() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("pipeline");
    let cycles = folder_cycles(&root);
    let wrong: Vec<String> = cycles
        .iter()
        .map(|(folder, members, why)| {
            format!("pipeline/{folder}: {} import each other:\n    {}", members.join(", "), why.join("\n    "))
        })
        .collect();
    assert!(
        wrong.is_empty(),
        "import cycles inside a folder (see tests/house/folder_cycles.rs):\n{}",
        wrong.join("\n")
    );
}

/// A small tree without a cycle: `a/y.rs` imports `a/x.rs` and an item of `a/mod.rs`, which only
/// re-exports from `y`; `a/sub/` re-exports its child, whose tests read `super::*` (their own
/// module's parent, inside `sub`).
const TREE: &[(&str, &str)] = &[
    ("lib.rs", "pub mod a;\npub mod other;\n"),
    ("other.rs", "use crate::a::x::X;\n"),
    ("a/mod.rs", "pub mod x;\npub mod y;\npub mod sub;\npub use y::Y;\npub struct Top;\n"),
    ("a/x.rs", "pub struct X;\n"),
    ("a/y.rs", "use super::x::X;\nuse super::Top;\npub struct Y;\npub fn g() {}\n"),
    ("a/sub/mod.rs", "mod inner;\npub use inner::f;\n\npub fn h() {\n    inner::f()\n}\n"),
    ("a/sub/inner.rs", "pub fn f() {}\n\n#[cfg(test)]\nmod tests {\n    use super::*;\n}\n"),
];

/// `TREE` with some files replaced, in a temp folder; the cycles the rule finds there.
fn cycles_in(changes: &[(&str, &str)]) -> Vec<(String, Vec<String>)> {
    let d = tempfile::tempdir().unwrap();
    for (rel, text) in TREE.iter().filter(|(r, _)| !changes.iter().any(|(c, _)| c == r)).chain(changes) {
        let p = d.path().join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, text).unwrap();
    }
    folder_cycles(d.path()).into_iter().map(|(f, m, _)| (f, m)).collect()
}

/// The rule on deliberately broken copies of a small tree: each form of import that closes a
/// cycle is found, and the tree without one passes.
#[test]
fn the_folder_rule_finds_each_form_of_cycle_in_a_broken_tree() {
    assert_eq!(cycles_in(&[]), vec![], "no cycle in the tree as it is");
    let cycle = |m: &[&str]| vec![("a".to_string(), m.iter().map(|s| s.to_string()).collect::<Vec<_>>())];
    let top = "pub mod x;\npub mod y;\npub mod sub;\npub use y::Y;\npub struct Top;\n";
    let cases: [(&str, &[(&str, &str)], _); 6] = [
        (
            "super:: in code",
            &[("a/x.rs", "pub struct X;\nfn f() -> super::y::Y {\n    todo!()\n}\n")],
            cycle(&["x", "y"]),
        ),
        ("crate:: in code", &[("a/x.rs", "pub struct X;\nfn f() {\n    crate::a::y::g()\n}\n")], cycle(&["x", "y"])),
        (
            "a use group over lines",
            &[("a/x.rs", "use crate::a::{\n    sub,\n    y::{self, Y},\n};\n")],
            cycle(&["x", "y"]),
        ),
        (
            "super::super:: from a subfolder",
            &[
                ("a/x.rs", "pub fn g() {\n    super::sub::f()\n}\n"),
                ("a/sub/inner.rs", "use super::super::x::g;\npub fn f() {}\n"),
            ],
            cycle(&["sub", "x"]),
        ),
        (
            "mod.rs naming a child bare, the child an item of mod.rs",
            &[("a/mod.rs", &format!("{top}fn f(_: x::X) {{}}\n")), ("a/x.rs", "pub struct X(super::Top);\n")],
            cycle(&["mod", "x"]),
        ),
        (
            "self:: in mod.rs",
            &[("a/mod.rs", &format!("{top}use self::y::Y;\n")), ("a/y.rs", "use super::Top;\npub struct Y;\n")],
            cycle(&["mod", "y"]),
        ),
    ];
    for (what, changes, want) in cases {
        assert_eq!(cycles_in(changes), want, "{what}");
    }
}

/// The rule on a deliberately broken copy of `pipeline/` itself: one line added to
/// `extract/sources.rs` (whose folder's `mod.rs` uses it) closes a cycle the rule reports.
#[test]
fn the_folder_rule_finds_a_cycle_added_to_a_copy_of_the_library() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("pipeline");
    let copy = tempfile::tempdir().unwrap();
    for e in walkdir::WalkDir::new(&root).into_iter().map(|e| e.unwrap()).filter(|e| e.file_type().is_file()) {
        let to = copy.path().join(e.path().strip_prefix(&root).unwrap());
        std::fs::create_dir_all(to.parent().unwrap()).unwrap();
        std::fs::copy(e.path(), to).unwrap();
    }
    let names = |root: &Path| -> Vec<(String, Vec<String>)> {
        folder_cycles(root).into_iter().map(|(f, m, _)| (f, m)).collect()
    };
    let before = names(copy.path());
    assert_eq!(before, names(&root), "the copy is the library");
    let sources = copy.path().join("extract/sources.rs");
    let text = std::fs::read_to_string(&sources).unwrap();
    std::fs::write(&sources, format!("{text}\n#[allow(unused_imports)]\nuse super::*;\n")).unwrap();
    let after = names(copy.path());
    let new: Vec<_> = after.iter().filter(|c| !before.contains(c)).collect();
    assert_eq!(new, [&("extract".to_string(), vec!["mod".to_string(), "sources".to_string()])]);
}

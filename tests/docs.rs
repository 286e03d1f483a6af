//! The documentation as a map that holds: every relative link in the project's Markdown files
//! (the root, `docs/`, `data/`, `features/`, `deploy/`, `pyref/`) names a file that exists, and a
//! `#anchor` into a Markdown file names one of its headings (GitHub's slugs); the README stays a
//! first page (≤ 250 lines). Links to http(s) and mailto are not followed.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

const README_MAX_LINES: usize = 250;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The Markdown files the check covers, sorted: `*.md` in `root` itself, and under the listed
/// folders at any depth.
fn markdown_files(root: &Path) -> Vec<PathBuf> {
    fn walk(dir: &Path, deep: bool, out: &mut Vec<PathBuf>) {
        let Ok(rd) = std::fs::read_dir(dir) else { return };
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() {
                if deep {
                    walk(&p, true, out);
                }
            } else if p.extension().is_some_and(|x| x == "md") {
                out.push(p);
            }
        }
    }
    let mut out = vec![];
    walk(root, false, &mut out);
    for d in ["docs", "data", "features", "deploy", "pyref"] {
        walk(&root.join(d), true, &mut out);
    }
    out.sort();
    out
}

/// A line with its inline code spans blanked (a link written as code is not a link).
fn without_code(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut rest = line;
    while let Some(start) = rest.find('`') {
        let ticks = rest[start..].chars().take_while(|&c| c == '`').count();
        let fence = &rest[start..start + ticks];
        out.push_str(&rest[..start]);
        match rest[start + ticks..].find(fence) {
            Some(end) => rest = &rest[start + ticks + end + ticks..],
            None => {
                // An unclosed span is text.
                out.push_str(fence);
                rest = &rest[start + ticks..];
            }
        }
    }
    out.push_str(rest);
    out
}

/// The lines outside fenced code blocks, numbered from 1.
fn prose_lines(text: &str) -> Vec<(usize, &str)> {
    let mut fenced = false;
    let mut out = vec![];
    for (i, line) in text.lines().enumerate() {
        let t = line.trim_start();
        if t.starts_with("```") || t.starts_with("~~~") {
            fenced = !fenced;
            continue;
        }
        if !fenced {
            out.push((i + 1, line));
        }
    }
    out
}

/// The targets of `[text](target)` and `![alt](target)` links on one line (code removed).
fn link_targets(line: &str) -> Vec<String> {
    let line = without_code(line);
    let b = line.as_bytes();
    let mut out = vec![];
    let mut i = 0;
    while let Some(off) = line[i..].find("](") {
        let start = i + off + 2;
        let mut depth = 1;
        let mut j = start;
        while j < b.len() {
            match b[j] {
                b'(' => depth += 1,
                b')' => {
                    depth -= 1;
                    if depth == 0 {
                        break;
                    }
                }
                _ => {}
            }
            j += 1;
        }
        if j >= b.len() {
            break;
        }
        let inner = line[start..j].trim();
        // `<path with spaces>`, or the first word (a title may follow).
        let target = if let Some(s) = inner.strip_prefix('<') {
            s.split('>').next().unwrap_or("")
        } else {
            inner.split_whitespace().next().unwrap_or("")
        };
        out.push(target.to_string());
        i = j + 1;
    }
    out
}

/// GitHub's anchor for a heading's text: inline markup dropped, lower case, every character but
/// letters, digits, `_`, `-` and spaces removed, spaces as `-`.
fn slug(heading: &str) -> String {
    // A link in a heading contributes its text.
    let mut text = String::new();
    let mut rest = heading;
    while let Some(open) = rest.find('[') {
        match (rest[open..].find("]("), rest[open..].find(')')) {
            (Some(close), Some(end)) if close < end => {
                text.push_str(&rest[..open]);
                text.push_str(&rest[open + 1..open + close]);
                rest = &rest[open + end + 1..];
            }
            _ => break,
        }
    }
    text.push_str(rest);
    text.trim()
        .to_lowercase()
        .chars()
        .filter(|&c| c.is_alphanumeric() || c == '_' || c == '-' || c == ' ')
        .map(|c| if c == ' ' { '-' } else { c })
        .collect()
}

/// Every anchor a Markdown text offers: its headings' slugs (a repeated slug gets `-1`, `-2`, …
/// as on GitHub) and explicit `<a id="…">` / `<a name="…">` anchors.
fn anchors(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for (_, line) in prose_lines(text) {
        let t = line.trim_start();
        let hashes = t.chars().take_while(|&c| c == '#').count();
        if (1..=6).contains(&hashes) && t[hashes..].starts_with(' ') {
            let base = slug(t[hashes..].trim().trim_end_matches('#'));
            let mut s = base.clone();
            let mut n = 0;
            while out.contains(&s) {
                n += 1;
                s = format!("{base}-{n}");
            }
            out.insert(s);
        }
        for key in ["id=\"", "name=\""] {
            let mut rest = t;
            while let Some(p) = rest.find(key) {
                let after = &rest[p + key.len()..];
                if let Some(end) = after.find('"') {
                    out.insert(after[..end].to_string());
                }
                rest = after;
            }
        }
    }
    out
}

/// `%20` and other percent escapes in a link's path.
fn percent_decoded(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = |c: u8| (c as char).to_digit(16);
        if b[i] == b'%' && i + 2 < b.len() {
            if let (Some(h), Some(l)) = (hex(b[i + 1]), hex(b[i + 2])) {
                out.push((h * 16 + l) as u8);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Every broken link under `root`, as `file:line: [target] why`.
fn broken_links(root: &Path) -> Vec<String> {
    let mut problems = vec![];
    for file in markdown_files(root) {
        let text = std::fs::read_to_string(&file).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
        let shown = file.strip_prefix(root).unwrap_or(&file).display().to_string();
        for (n, line) in prose_lines(&text) {
            for target in link_targets(line) {
                let lower = target.to_ascii_lowercase();
                if target.is_empty()
                    || lower.starts_with("http://")
                    || lower.starts_with("https://")
                    || lower.starts_with("mailto:")
                {
                    continue;
                }
                let (path, anchor) = match target.split_once('#') {
                    Some((p, a)) => (p, Some(a)),
                    None => (target.as_str(), None),
                };
                let dest = if path.is_empty() {
                    file.clone()
                } else if let Some(abs) = path.strip_prefix('/') {
                    root.join(percent_decoded(abs))
                } else {
                    file.parent().unwrap().join(percent_decoded(path))
                };
                if !dest.exists() {
                    problems.push(format!("{shown}:{n}: ({target}) {}: no such file", path));
                    continue;
                }
                let Some(anchor) = anchor else { continue };
                if dest.extension().is_none_or(|x| x != "md") {
                    continue;
                }
                let dtext = std::fs::read_to_string(&dest).unwrap_or_default();
                if !anchors(&dtext).contains(&percent_decoded(anchor).to_lowercase()) {
                    let in_file = if path.is_empty() { "this file".to_string() } else { path.to_string() };
                    problems.push(format!("{shown}:{n}: ({target}) no heading #{anchor} in {in_file}"));
                }
            }
        }
    }
    problems
}

#[test]
fn every_relative_link_resolves() {
    let problems = broken_links(&root());
    assert!(problems.is_empty(), "{} broken link(s):\n{}", problems.len(), problems.join("\n"));
}

#[test]
fn readme_is_a_first_page() {
    let text = std::fs::read_to_string(root().join("README.md")).unwrap();
    let n = text.lines().count();
    assert!(n <= README_MAX_LINES, "README.md has {n} lines; at most {README_MAX_LINES} (details go to docs/guide/)");
}

/// The check itself: a generated tree with good and broken links of every kind.
#[test]
fn the_check_finds_broken_links() {
    let dir = std::env::temp_dir().join(format!("tlearn-docs-check-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("docs/guide")).unwrap();
    std::fs::write(
        dir.join("README.md"),
        "# Top\n\n[ok](docs/guide/a.md) [ok](docs/guide/a.md#the-size-150150-x) [ok](#top)\n\
         [gone](docs/missing.md)\n[bad anchor](docs/guide/a.md#nope) [web](https://example.com/x)\n\
         `[code](not/checked.md)`\n```\n[fenced](not/checked.md)\n```\n[self](#nowhere)\n",
    )
    .unwrap();
    std::fs::write(
        dir.join("docs/guide/a.md"),
        "# A\n\n## The size: 150×150 (`x`)\n\n[up](../../README.md#top) [dir](../guide) [nope](../../nope/)\n",
    )
    .unwrap();
    let problems = broken_links(&dir);
    std::fs::remove_dir_all(&dir).unwrap();
    let want = [
        "README.md:4: (docs/missing.md)",
        "README.md:5: (docs/guide/a.md#nope) no heading #nope",
        "README.md:10: (#nowhere) no heading #nowhere in this file",
        "docs/guide/a.md:5: (../../nope/)",
    ];
    assert_eq!(problems.len(), want.len(), "{problems:#?}");
    for (p, w) in problems.iter().zip(want) {
        assert!(p.starts_with(w), "{p} (expected {w}…)");
    }
}

#[test]
fn slugs_follow_github() {
    assert_eq!(
        slug("`make finetune-best`: a pretrained backbone fine-tuned whole (EfficientNet-Lite0, ELPV binary)"),
        "make-finetune-best-a-pretrained-backbone-fine-tuned-whole-efficientnet-lite0-elpv-binary"
    );
    assert_eq!(
        slug("The same table at 7700b45: filters reordered by `ReorderInput`"),
        "the-same-table-at-7700b45-filters-reordered-by-reorderinput"
    );
    assert_eq!(slug("Scale-out: [deploy/](x)"), "scale-out-deploy");
}

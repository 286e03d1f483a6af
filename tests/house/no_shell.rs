//! No shell: library and binary code never starts one (user-controlled strings must never reach
//! it), and every subprocess is one of the reviewed, pinned downloaders or the front command's
//! `exec` of a stage binary.

/// No library or binary code starts a shell (user-controlled strings must never reach one), and
/// every subprocess is one of the pinned downloaders or the front command's `exec` of a
/// `tlearn-<command>` binary found beside it or on PATH.
#[test]
fn no_shell_is_ever_invoked() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("pipeline");
    let mut spawns = vec![];
    for e in walkdir::WalkDir::new(&root).into_iter().filter_map(|e| e.ok()) {
        if e.path().extension().is_none_or(|x| x != "rs") {
            continue;
        }
        let text = std::fs::read_to_string(e.path()).unwrap();
        for (i, line) in text.lines().enumerate() {
            for shell in ["\"sh\"", "\"bash\"", "\"/bin/sh\"", "\"-c\""] {
                assert!(!line.contains(shell), "{}:{}: {line}", e.path().display(), i + 1);
            }
            if line.contains("Command::new(") {
                spawns.push(format!("{}:{}", e.path().strip_prefix(&root).unwrap().display(), line.trim()));
            }
        }
    }
    spawns.sort();
    assert_eq!(
        spawns,
        [
            "commands.rs:std::process::Command::new(program).args(args).exec()",
            "download.rs:run_tool(std::process::Command::new(\"npm\").args(args).arg(&dir), \"npm\", &spec)?;",
            "download.rs:run_tool(std::process::Command::new(&python).args(args).arg(&dir).arg(&spec), &python, &spec)?;",
        ],
        "new subprocesses need a review (no shell, pinned inputs)"
    );
}

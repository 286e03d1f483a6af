//! The `tlearn` front command, as `git` and `cargo` have theirs: `tlearn <command> args…` runs
//! the binary `tlearn-<command>` found beside `tlearn` (else on `PATH`) with the arguments as
//! given, and ends as it ends. What the front knows: the commands, their one-line descriptions,
//! where their binaries are, and what to say when a command is unknown or not installed.

use std::ffi::{OsStr, OsString};
use std::path::{Path, PathBuf};

/// Every command with its one-line description, in the order a project meets them.
pub const COMMANDS: &[(&str, &str)] = &[
    ("setup", "put the ONNX Runtime library into the per-user folder (once, before the rest)"),
    ("data", "split a folder of class folders into train/validation/test; prepare ELPV or MNIST"),
    ("backbone", "fetch, add, quantize, summarise or list backbones (ImageNet conv bases as ONNX)"),
    ("extract", "cache a backbone's features of every split of a dataset"),
    ("head", "train a classifier head on cached features into a run"),
    ("compare", "train every head on every feature folder into one table and chart"),
    ("fit", "a folder of images to an evaluated, deployable model in one command"),
    ("lr-find", "sweep the learning rate over a short fit and suggest one"),
    ("convnet", "write a built-in convnet (mnist, v1, v2) as ONNX"),
    ("finetune", "train a whole ONNX classifier on a dataset into a run"),
    ("ensemble", "average finished runs into one run with one deployable model"),
    ("evaluate", "metrics, charts and an HTML report of a run on a split"),
    ("score", "score folders, globs or lists of images with a run into a scores file"),
    ("predict", "print each image's class and probability under a run (writes no file)"),
];

/// What a `tlearn` command line asks for.
#[derive(Debug, PartialEq)]
pub enum Invocation {
    /// `tlearn`, `tlearn --help`, `tlearn help`: the list of commands.
    Help,
    /// `tlearn --version`.
    Version,
    /// `tlearn <command> args…` (`tlearn help <command>` is `<command> --help`).
    Run { command: &'static str, args: Vec<OsString> },
}

/// Why a command line cannot be run.
#[derive(Debug, PartialEq)]
pub enum FrontError {
    /// No such command; the closest one, if any is close.
    Unknown { given: String, suggestion: Option<&'static str> },
    /// A listed command whose binary is not installed: where it was looked for.
    Missing { command: &'static str, beside: Option<PathBuf> },
}

impl FrontError {
    /// The exit status: 2 for a command line to correct (as for unknown options), 1 otherwise.
    pub fn exit_code(&self) -> u8 {
        match self {
            FrontError::Unknown { .. } => 2,
            FrontError::Missing { .. } => 1,
        }
    }
}

impl std::fmt::Display for FrontError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FrontError::Unknown { given, suggestion } => {
                write!(f, "no command `{given}`")?;
                if let Some(s) = suggestion {
                    write!(f, "; did you mean `{s}`?")?;
                }
                write!(f, "\n\n{}", list())
            }
            FrontError::Missing { command, beside } => {
                let dir = beside.as_ref().map_or_else(|| "beside tlearn".into(), |d| format!("in {}", d.display()));
                write!(
                    f,
                    "`tlearn {command}` runs tlearn-{command}, which is not installed: not {dir} (where tlearn is) \
                     nor in a folder of PATH. Install every command with `cargo install --path .` in a clone of \
                     tlearn, or build them there with `cargo build --release` and run target/release/tlearn"
                )
            }
        }
    }
}

impl std::error::Error for FrontError {}

/// The command named `given`, or why not (with the closest name).
pub fn command(given: &OsStr) -> Result<&'static str, FrontError> {
    let text = given.to_string_lossy();
    COMMANDS
        .iter()
        .map(|c| c.0)
        .find(|c| *c == text)
        .ok_or_else(|| FrontError::Unknown { given: text.clone().into_owned(), suggestion: closest(&text) })
}

/// The command closest to a mistyped one ([`crate::params::nearest`]: the one it begins, `eval` →
/// `evaluate`, else one a few edits away, a transposition counting as one).
fn closest(given: &str) -> Option<&'static str> {
    crate::params::nearest(given, COMMANDS.iter().map(|c| c.0))
}

/// Read a command line (without the program name).
pub fn parse(args: &[OsString]) -> Result<Invocation, FrontError> {
    let Some(first) = args.first() else { return Ok(Invocation::Help) };
    match first.to_str() {
        Some("-h" | "--help") => Ok(Invocation::Help),
        Some("-V" | "--version") => Ok(Invocation::Version),
        Some("help") => match args.get(1) {
            None => Ok(Invocation::Help),
            Some(c) => Ok(Invocation::Run { command: command(c)?, args: vec!["--help".into()] }),
        },
        _ => Ok(Invocation::Run { command: command(first)?, args: args[1..].to_vec() }),
    }
}

/// The commands and what each does, one a line.
pub fn list() -> String {
    let width = COMMANDS.iter().map(|c| c.0.len()).max().unwrap_or(0);
    let lines: Vec<String> = COMMANDS.iter().map(|(c, what)| format!("  {c:<width$}  {what}")).collect();
    format!("commands:\n{}\n", lines.join("\n"))
}

/// `tlearn --help`.
pub fn help() -> String {
    format!(
        "tlearn {}: transfer learning for image classification on ONNX Runtime\n\n\
         usage: tlearn <command> [args…]   runs tlearn-<command> with the arguments\n       \
         tlearn help <command>       that command's options (tlearn-<command> --help)\n\n{}\n\
         Each command is a binary of its own too: `tlearn score …` is `tlearn-score …`.\n",
        env!("CARGO_PKG_VERSION"),
        list()
    )
}

/// The binary of `command`: `tlearn-<command>` beside the running `tlearn` (`beside`), else in
/// the first folder of `path` (a `PATH` value) that holds it as an executable file.
pub fn locate(command: &'static str, beside: Option<&Path>, path: Option<&OsStr>) -> Result<PathBuf, FrontError> {
    let name = format!("tlearn-{command}");
    let folders = beside.map(Path::to_path_buf).into_iter().chain(path.into_iter().flat_map(std::env::split_paths));
    folders
        .map(|d| d.join(&name))
        .find(|p| is_executable(p))
        .ok_or_else(|| FrontError::Missing { command, beside: beside.map(Path::to_path_buf) })
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// Run `program` with `args` in this process's place: on Unix it replaces this process (so
/// signals, standard streams and the exit status are the command's own), and returns only the
/// error when it could not be started. Never through a shell.
pub fn exec(program: &Path, args: &[OsString]) -> std::io::Error {
    use std::os::unix::process::CommandExt;
    std::process::Command::new(program).args(args).exec()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn os(args: &[&str]) -> Vec<OsString> {
        args.iter().map(OsString::from).collect()
    }

    #[test]
    fn command_lines_are_read_as_git_reads_them() {
        assert_eq!(parse(&[]), Ok(Invocation::Help));
        assert_eq!(parse(&os(&["help"])), Ok(Invocation::Help));
        assert_eq!(parse(&os(&["--version"])), Ok(Invocation::Version));
        let run = parse(&os(&["score", "x", "--run", "r"])).unwrap();
        assert_eq!(run, Invocation::Run { command: "score", args: os(&["x", "--run", "r"]) });
        let help = parse(&os(&["help", "lr-find"])).unwrap();
        assert_eq!(help, Invocation::Run { command: "lr-find", args: os(&["--help"]) });
    }

    #[test]
    fn a_mistyped_command_gets_the_closest_one() {
        for (typo, meant) in [("scroe", "score"), ("eval", "evaluate"), ("lrfind", "lr-find"), ("Predict", "predict")] {
            assert_eq!(closest(typo), Some(meant), "{typo}");
        }
        assert_eq!(closest("zzzzzzzz"), None);
        let e = command(OsStr::new("bogus")).unwrap_err();
        assert!(e.to_string().starts_with("no command `bogus`\n"), "{e}");
    }

    #[test]
    fn a_binary_is_found_beside_first_then_on_path() {
        use std::os::unix::fs::PermissionsExt;
        let d = tempfile::tempdir().unwrap();
        let (a, b) = (d.path().join("a"), d.path().join("b"));
        for dir in [&a, &b] {
            std::fs::create_dir(dir).unwrap();
        }
        let put = |dir: &Path, mode: u32| {
            let p = dir.join("tlearn-score");
            std::fs::write(&p, b"").unwrap();
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
            p
        };
        let path = std::env::join_paths([&a, &b]).unwrap();
        assert!(matches!(locate("score", None, Some(&path)), Err(FrontError::Missing { .. })));
        put(&a, 0o644);
        let on_path = put(&b, 0o755);
        assert_eq!(locate("score", None, Some(&path)).unwrap(), on_path, "a file that is not executable is passed");
        let beside = d.path().join("bin");
        std::fs::create_dir(&beside).unwrap();
        let own = put(&beside, 0o755);
        assert_eq!(locate("score", Some(&beside), Some(&path)).unwrap(), own);
    }
}

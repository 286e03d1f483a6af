//! tlearn: the front command. `tlearn <command> args…` runs `tlearn-<command>` (beside this
//! binary, else on PATH) in its place; `tlearn --help` lists the commands.

use std::process::ExitCode;
use tlearn::commands::{self, Invocation};

fn main() -> ExitCode {
    let args: Vec<std::ffi::OsString> = std::env::args_os().skip(1).collect();
    let fail = |e: commands::FrontError| {
        tlearn::errln!("error: {e}");
        ExitCode::from(e.exit_code())
    };
    match commands::parse(&args) {
        Ok(Invocation::Help) => tlearn::out!("{}", commands::help()),
        Ok(Invocation::Version) => tlearn::outln!("tlearn {}", env!("CARGO_PKG_VERSION")),
        Ok(Invocation::Run { command, args }) => {
            let exe = std::env::current_exe().ok();
            let beside = exe.as_deref().and_then(std::path::Path::parent);
            let program = match commands::locate(command, beside, std::env::var_os("PATH").as_deref()) {
                Ok(p) => p,
                Err(e) => return fail(e),
            };
            let e = commands::exec(&program, &args);
            tlearn::errln!("error: cannot run {}: {e}", program.display());
            return ExitCode::FAILURE;
        }
        Err(e) => return fail(e),
    }
    ExitCode::SUCCESS
}

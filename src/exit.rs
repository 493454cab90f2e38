//! Exit codes (DESIGN.md): 0 all succeeded; 1 the run ended with failed or blocked instances;
//! 2 invalid input or refused (stderr says where and why; nothing was written); 3 cancelled.

use std::process::ExitCode;

/// How a command ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Exit {
    /// Everything succeeded.
    Ok,
    /// The run ended with failed or blocked instances.
    Failed,
    /// The run was cancelled.
    Cancelled,
    /// A signal stopped the process; the run is resumable. 130 for SIGINT, 143 for SIGTERM (the
    /// shell convention; outside DESIGN.md's 0–3, which describe how a run ended).
    Interrupted(u8),
}

/// Input that rewind refuses: printed as is, exit code 2, nothing written.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Refused(pub String);

/// An [`anyhow::Error`] carrying a [`Refused`].
pub fn refused(msg: impl Into<String>) -> anyhow::Error {
    anyhow::Error::new(Refused(msg.into()))
}

/// Prints an error, if any, and maps the outcome to the process exit code.
pub fn finish(result: anyhow::Result<Exit>) -> ExitCode {
    match result {
        Ok(Exit::Ok) => ExitCode::SUCCESS,
        Ok(Exit::Failed) => ExitCode::from(1),
        Ok(Exit::Cancelled) => ExitCode::from(3),
        Ok(Exit::Interrupted(code)) => ExitCode::from(code),
        Err(e) => {
            if is_broken_pipe(&e) {
                return ExitCode::from(BROKEN_PIPE);
            }
            if let Some(r) = e.downcast_ref::<Refused>() {
                crate::telemetry::error(&r.to_string());
                ExitCode::from(2)
            } else {
                crate::telemetry::error(&format!("rewind: error: {e:#}"));
                ExitCode::from(1)
            }
        }
    }
}

/// The exit code of a process whose output was closed (`rewind plan ... | head`): what a shell
/// reports for one killed by SIGPIPE, 128 + 13.
pub const BROKEN_PIPE: u8 = 141;

fn is_broken_pipe(e: &anyhow::Error) -> bool {
    use std::io::ErrorKind::BrokenPipe;
    e.chain().any(|c| {
        c.downcast_ref::<std::io::Error>().is_some_and(|io| io.kind() == BrokenPipe)
            // JSON written straight to stdout: serde_json keeps the I/O error inside its own.
            || c.downcast_ref::<serde_json::Error>()
                .is_some_and(|j| j.io_error_kind() == Some(BrokenPipe))
    })
}

/// Output into a closed pipe ends the process quietly with [`BROKEN_PIPE`], as it would a Unix
/// tool killed by SIGPIPE, instead of `println!`'s panic. (Rust ignores SIGPIPE, and resetting
/// it needs `unsafe`, which this crate forbids.) Other panics keep the default report.
pub fn quiet_broken_pipe() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let p = info.payload();
        let msg = p
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| p.downcast_ref::<&str>().copied());
        if msg.is_some_and(|m| m.starts_with("failed printing to std") && m.contains("Broken pipe"))
        {
            std::process::exit(i32::from(BROKEN_PIPE));
        }
        default(info);
    }));
}

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
            if let Some(r) = e.downcast_ref::<Refused>() {
                eprintln!("{r}");
                ExitCode::from(2)
            } else {
                eprintln!("rewind: error: {e:#}");
                ExitCode::from(1)
            }
        }
    }
}

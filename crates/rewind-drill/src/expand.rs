//! Filling a drill's commands (`${VAR}`, `{{run.id}}`) and running them.

use std::path::Path;
use std::process::Stdio;

use rewind_exec::Vars;
use rewind_model::CommandSpec;

/// `text` with every `${VAR}` read from `vars` and every `{{run.id}}` replaced by `run_id`.
/// An unset variable, an unclosed `${` or a `{{run.id}}` before there is a run is an error naming
/// it.
pub fn expand(text: &str, vars: &Vars, run_id: Option<&str>) -> Result<String, String> {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(i) = rest.find("${") {
        out.push_str(&rest[..i]);
        let after = &rest[i + 2..];
        let end = after.find('}').ok_or_else(|| format!("unclosed `${{` in {text:?}"))?;
        out.push_str(&vars.get(&after[..end])?);
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    if out.contains("{{run.id}}") {
        let id =
            run_id.ok_or_else(|| format!("{text:?} uses {{{{run.id}}}} before the run exists"))?;
        out = out.replace("{{run.id}}", id);
    }
    Ok(out)
}

/// Runs a drill command (a selector, the `[rpo]` probe, a cleanup command) in `dir` (the drill
/// file's folder: a program with a `/` is relative to it) and returns its stdout. A non-zero
/// exit is an error with its stderr's last lines.
pub async fn run_command(
    cmd: &CommandSpec,
    vars: &Vars,
    dir: &Path,
    run_id: Option<&str>,
) -> Result<String, String> {
    let program = expand(&cmd.program, vars, run_id)?;
    let args = cmd.args.iter().map(|a| expand(a, vars, run_id)).collect::<Result<Vec<_>, _>>()?;
    let shown = std::iter::once(program.as_str())
        .chain(args.iter().map(String::as_str))
        .collect::<Vec<_>>()
        .join(" ");
    let mut command = tokio::process::Command::new(rewind_exec::command::resolve(dir, &program));
    command.args(&args).current_dir(dir).stdin(Stdio::null()).kill_on_drop(true);
    for (k, v) in vars.fixed() {
        command.env(k, v);
    }
    let out = command.output().await.map_err(|e| format!("`{shown}` could not start: {e}"))?;
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        let tail: Vec<&str> = stderr.lines().rev().take(5).collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        return Err(format!("`{shown}` failed ({}): {}", out.status, tail.join(" | ")));
    }
    String::from_utf8(out.stdout).map_err(|_| format!("`{shown}` printed text that is not UTF-8"))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn fills_variables_and_the_run_id() {
        let vars = Vars::default().with("SANDBOX", "/tmp/s");
        assert_eq!(
            expand("${SANDBOX}/x --scratch {{run.id}}", &vars, Some("r1")).unwrap(),
            "/tmp/s/x --scratch r1"
        );
        assert!(
            expand("${REWIND_NO_SUCH_VAR_9}", &vars, None)
                .unwrap_err()
                .contains("REWIND_NO_SUCH_VAR_9")
        );
        assert!(expand("{{run.id}}", &vars, None).unwrap_err().contains("before the run exists"));
        assert!(expand("${SANDBOX", &vars, None).unwrap_err().contains("unclosed"));
    }
}

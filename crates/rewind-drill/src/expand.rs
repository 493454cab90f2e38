//! Filling a drill's commands (`${VAR}`, `{{run.id}}`, and in cleanup commands `{{target.id}}`
//! and `{{target.attr.NAME}}`) and running them.

use std::path::Path;
use std::process::Stdio;

use rewind_exec::Vars;
use rewind_model::{CommandSpec, Target};

/// Whether a cleanup command names a tenant (`{{target.id}}`, `{{target.attr.NAME}}`): it is
/// then run once per sampled tenant.
pub fn per_target(cmd: &CommandSpec) -> bool {
    std::iter::once(&cmd.program).chain(&cmd.args).any(|a| a.contains("{{target."))
}

/// `text` with every `${VAR}` read from `vars`, every `{{run.id}}` replaced by `run_id`, and
/// every `{{target.id}}` / `{{target.attr.NAME}}` by `target`'s. An unset variable, an unclosed
/// `${`, a `{{run.id}}` before there is a run, a `{{target.…}}` without a tenant, or an
/// attribute the tenant lacks is an error naming it.
pub fn expand(
    text: &str,
    vars: &Vars,
    run_id: Option<&str>,
    target: Option<&Target>,
) -> Result<String, String> {
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
    if out.contains("{{target.") {
        let t = target.ok_or_else(|| {
            format!("{text:?} names a tenant ({{{{target.…}}}}), which only cleanup commands may")
        })?;
        // One pass, left to right: a value filled in is never read again for placeholders (a
        // tenant's attribute may hold any text, `{{target.…}}` included).
        let mut filled = String::with_capacity(out.len());
        let mut rest = out.as_str();
        while let Some(i) = rest.find("{{target.") {
            filled.push_str(&rest[..i]);
            let after = &rest[i + 2..];
            let end = after.find("}}").ok_or_else(|| format!("unclosed `{{{{` in {text:?}"))?;
            let name = &after[..end];
            let value = if name == "target.id" {
                t.id.to_string()
            } else if let Some(attr) = name.strip_prefix("target.attr.") {
                t.attrs
                    .iter()
                    .find(|(k, _)| k.as_str() == attr)
                    .map(|(_, v)| v.to_string())
                    .ok_or_else(|| format!("{text:?}: tenant {} has no attribute `{attr}`", t.id))?
            } else {
                return Err(format!(
                    "{text:?}: unknown placeholder {{{{{name}}}}} (use {{{{target.id}}}} or \
                     {{{{target.attr.NAME}}}})"
                ));
            };
            filled.push_str(&value);
            rest = &after[end + 2..];
        }
        filled.push_str(rest);
        out = filled;
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
    target: Option<&Target>,
) -> Result<String, String> {
    let program = expand(&cmd.program, vars, run_id, target)?;
    let args =
        cmd.args.iter().map(|a| expand(a, vars, run_id, target)).collect::<Result<Vec<_>, _>>()?;
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
            expand("${SANDBOX}/x --scratch {{run.id}}", &vars, Some("r1"), None).unwrap(),
            "/tmp/s/x --scratch r1"
        );
        assert!(
            expand("${REWIND_NO_SUCH_VAR_9}", &vars, None, None)
                .unwrap_err()
                .contains("REWIND_NO_SUCH_VAR_9")
        );
        assert!(
            expand("{{run.id}}", &vars, None, None).unwrap_err().contains("before the run exists")
        );
        assert!(expand("${SANDBOX", &vars, None, None).unwrap_err().contains("unclosed"));
    }

    #[test]
    fn fills_a_tenant_only_where_there_is_one() {
        let vars = Vars::default();
        let set = rewind_model::TargetSet::parse(
            "t.csv",
            "id,kind,new_id\n7d1c52a4-3b8e-4f0a-9e27-c4a1d0b57e39,site,0b7c0f55-1f0e-4c1e-9b8e-3f7d1f2a9c10\n",
            rewind_model::TargetsFormat::Csv,
        )
        .unwrap();
        let t = &set.targets()[0];
        assert_eq!(
            expand("drop {{target.attr.new_id}} of {{target.id}}", &vars, None, Some(t)).unwrap(),
            "drop 0b7c0f55-1f0e-4c1e-9b8e-3f7d1f2a9c10 of 7d1c52a4-3b8e-4f0a-9e27-c4a1d0b57e39"
        );
        assert!(
            expand("{{target.attr.nope}}", &vars, None, Some(t)).unwrap_err().contains("`nope`")
        );
        assert!(expand("{{target.id}}", &vars, None, None).unwrap_err().contains("only cleanup"));
        assert!(
            expand("{{target.other}}", &vars, None, Some(t))
                .unwrap_err()
                .contains("unknown placeholder")
        );
        // A value holding a placeholder is filled in as it is, not expanded again.
        let tricky = rewind_model::TargetSet::parse(
            "t.csv",
            "id,kind,name\n7d1c52a4-3b8e-4f0a-9e27-c4a1d0b57e39,site,{{target.attr.name}}\n",
            rewind_model::TargetsFormat::Csv,
        )
        .unwrap();
        assert_eq!(
            expand("x {{target.attr.name}} y", &vars, None, Some(&tricky.targets()[0])).unwrap(),
            "x {{target.attr.name}} y"
        );
        let cmd = CommandSpec { program: "x".into(), args: vec!["{{target.id}}".into()] };
        assert!(per_target(&cmd));
    }
}

//! A drill's result as Markdown, JUnit XML (one testsuite per drill, a testcase per objective and
//! per target, failures with their messages), and the trend of a drill's history.

use std::fmt::Write as _;

use crate::result::DrillResult;

fn opt_s(v: Option<f64>) -> String {
    v.map_or_else(|| "-".to_owned(), |s| format!("{s:.1}s"))
}

/// The result as a Markdown document an auditor can read.
pub fn markdown(r: &DrillResult) -> String {
    let mut out = String::new();
    let verdict = if r.passed { "PASSED" } else { "FAILED" };
    let _ = writeln!(out, "# Drill `{}`: {verdict}\n", r.drill);
    let _ = writeln!(out, "| | |\n|---|---|");
    let _ = writeln!(out, "| drill id | `{}` |", r.drill_id);
    let _ = writeln!(out, "| run | `{}` |", r.run_id.as_deref().unwrap_or("-"));
    let _ = writeln!(out, "| mode | {} |", r.mode);
    let _ = writeln!(out, "| started | {} |", r.started_at);
    if let Some(s) = &r.scheduled {
        let when = match s.late_s {
            Some(l) if s.late => format!("late by {l:.0}s"),
            _ => "on time".to_owned(),
        };
        let _ = writeln!(out, "| scheduled | {} ({when}) |", s.due_at);
    }
    let _ = writeln!(out, "| restore point | {} |", r.restore_point.as_deref().unwrap_or("-"));
    let _ = writeln!(out, "| wall time | {:.1}s |", r.wall_s);
    let _ = writeln!(
        out,
        "\n## Objectives\n\n| objective | target | achieved | result |\n|---|---|---|---|"
    );
    for o in &r.objectives {
        let _ = writeln!(
            out,
            "| {} | {:.1}s | {} | {} |",
            o.name.to_uppercase(),
            o.objective_s,
            opt_s(o.achieved_s),
            o.message
        );
    }
    let _ = writeln!(out, "\n## Targets\n\n| target | restored | at |\n|---|---|---|");
    for t in &r.targets {
        let state = if t.restored {
            "yes".to_owned()
        } else {
            format!("no: {}", t.failure.as_deref().unwrap_or(""))
        };
        let id = match &t.new_id {
            Some(n) => format!("`{}` as `{n}`", t.id),
            None => format!("`{}`", t.id),
        };
        let _ = writeln!(out, "| {id} | {state} | {} |", opt_s(t.restored_s));
    }
    if !r.cleanup.is_empty() {
        let _ = writeln!(out, "\n## Cleanup\n");
        for c in &r.cleanup {
            let _ = writeln!(
                out,
                "- {} `{}`: {}",
                if c.ok { "ok" } else { "FAILED" },
                c.command,
                c.said
            );
        }
    }
    if !r.failures.is_empty() {
        let _ = writeln!(out, "\n## Failures\n");
        for f in &r.failures {
            let _ = writeln!(out, "- {f}");
        }
    }
    out
}

/// `s` escaped for XML text and attribute values.
pub fn xml_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            c if (c as u32) < 0x20 && !matches!(c, '\n' | '\t' | '\r') => out.push(' '),
            c => out.push(c),
        }
    }
    out
}

/// JUnit XML: a testsuite for the drill, a testcase per objective and per target (and one for
/// the cleanup), failures with their messages.
pub fn junit(r: &DrillResult) -> String {
    let mut cases = String::new();
    let mut failures = 0;
    let mut case = |name: &str, time: Option<f64>, failure: Option<&str>| {
        let _ = write!(
            cases,
            "    <testcase classname=\"drill.{}\" name=\"{}\" time=\"{:.3}\"",
            xml_escape(&r.drill),
            xml_escape(name),
            time.unwrap_or(0.0)
        );
        match failure {
            Some(msg) => {
                failures += 1;
                let _ = write!(
                    cases,
                    ">\n      <failure message=\"{0}\">{0}</failure>\n    </testcase>\n",
                    xml_escape(msg)
                );
            }
            None => cases.push_str("/>\n"),
        }
    };
    for o in &r.objectives {
        case(
            &format!("objective {}", o.name),
            o.achieved_s,
            (!o.passed).then_some(o.message.as_str()),
        );
    }
    for t in &r.targets {
        let why = t.failure.clone().unwrap_or_else(|| "not restored and validated".to_owned());
        let name = match &t.new_id {
            Some(n) => format!("target {} as {n}", t.id),
            None => format!("target {}", t.id),
        };
        case(&name, t.restored_s, (!t.restored).then_some(why.as_str()));
    }
    let bad_cleanup: Vec<String> =
        r.cleanup.iter().filter(|c| !c.ok).map(|c| format!("{}: {}", c.command, c.said)).collect();
    if !r.cleanup.is_empty() {
        let msg = bad_cleanup.join("; ");
        case("cleanup", None, (!bad_cleanup.is_empty()).then_some(msg.as_str()));
    }
    let tests = r.objectives.len() + r.targets.len() + usize::from(!r.cleanup.is_empty());
    format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<testsuites name=\"rewind drills\" tests=\"{tests}\" failures=\"{failures}\">\n  <testsuite name=\"{}\" id=\"{}\" tests=\"{tests}\" failures=\"{failures}\" errors=\"0\" timestamp=\"{}\" time=\"{:.3}\">\n    <properties>\n      <property name=\"run_id\" value=\"{}\"/>\n      <property name=\"mode\" value=\"{}\"/>\n      <property name=\"restore_point\" value=\"{}\"/>\n    </properties>\n{cases}  </testsuite>\n</testsuites>\n",
        xml_escape(&r.drill),
        xml_escape(&r.drill_id),
        xml_escape(&r.started_at),
        r.wall_s,
        xml_escape(r.run_id.as_deref().unwrap_or("")),
        xml_escape(&r.mode),
        xml_escape(r.restore_point.as_deref().unwrap_or("")),
    )
}

/// The trend of a series (oldest first): `first → last (±x%)` over the values present.
pub fn trend(values: &[Option<f64>]) -> String {
    let present: Vec<f64> = values.iter().flatten().copied().collect();
    match (present.first(), present.last()) {
        (Some(&a), Some(&b)) if present.len() > 1 => {
            let pct =
                if a > 0.0 { format!(" ({:+.0}%)", (b - a) / a * 100.0) } else { String::new() };
            let min = present.iter().copied().fold(f64::INFINITY, f64::min);
            let max = present.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            format!(
                "{a:.1}s → {b:.1}s{pct}, min {min:.1}s, max {max:.1}s over {} drills",
                present.len()
            )
        }
        (Some(&a), _) => format!("{a:.1}s (one drill)"),
        _ => "-".to_owned(),
    }
}

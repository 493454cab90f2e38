//! Live progress on stderr: a progress bar on a terminal, plain log lines otherwise.

use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};
use rewind_model::RunId;
use rewind_runtime::{Observer, Progress};

use crate::output::{human, thousands};

/// How often plain (non-terminal) output prints a progress line.
const LOG_EVERY: Duration = Duration::from_secs(5);

/// Shows progress on stderr (as JSON lines with `--log-format json`).
pub struct Display {
    run: Option<RunId>,
    bar: Option<ProgressBar>,
    last_line: Option<Instant>,
    last: Option<Progress>,
    /// Whether `last` was printed as a line (then `finish` does not print it again).
    last_printed: bool,
}

impl Display {
    /// A bar when stderr is a terminal (and logs are text), log lines otherwise; `run` is named
    /// in JSON log lines.
    pub fn new(run: Option<RunId>) -> Self {
        let bar = (std::io::stderr().is_terminal() && !crate::telemetry::json()).then(|| {
            let bar = ProgressBar::new(0);
            bar.set_style(
                ProgressStyle::with_template(
                    "{spinner} [{elapsed_precise}] {bar:30} {pos}/{len} instances | {msg}",
                )
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
            );
            bar.enable_steady_tick(Duration::from_millis(200));
            bar
        });
        Self { run, bar, last_line: None, last: None, last_printed: false }
    }

    fn line(p: &Progress) -> String {
        let c = &p.counts;
        let clock =
            if p.simulated { format!("{} simulated", human(p.clock)) } else { human(p.clock) };
        let eta = eta(p).map(|e| format!(", {e}")).unwrap_or_default();
        format!(
            "[{clock}] {}/{} targets restored ({:.1}%), {}/{} instances done, {} running, {} failed, {} blocked{eta}",
            thousands(p.restored_targets),
            thousands(p.targets),
            p.percent_restored(),
            thousands(c.finished()),
            thousands(c.total()),
            c.running,
            c.failed,
            c.blocked,
        )
    }

    fn print(bar: Option<&ProgressBar>, text: &str) {
        match bar {
            Some(bar) => bar.println(text),
            None => {
                let mut err = std::io::stderr().lock();
                let _ = writeln!(err, "{text}");
            }
        }
    }

    /// Ends the display without a final line.
    pub fn finish_quietly(&mut self) {
        if let Some(bar) = self.bar.take() {
            bar.finish_and_clear();
        }
    }

    /// Ends the display, leaving the last progress line.
    pub fn finish(&mut self) {
        if let Some(bar) = self.bar.take() {
            bar.finish_and_clear();
        }
        if let Some(p) = self.last.as_ref().filter(|_| !self.last_printed) {
            crate::telemetry::progress(self.run, p, &Self::line(p), |t| Self::print(None, t));
        }
    }
}

impl Observer for Display {
    fn progress(&mut self, p: &Progress) {
        self.last_printed = false;
        match &self.bar {
            Some(bar) => {
                bar.set_length(p.counts.total() as u64);
                bar.set_position(p.counts.finished() as u64);
                let eta = eta(p).map(|e| format!(" | {e}")).unwrap_or_default();
                bar.set_message(format!(
                    "{}/{} targets ({:.1}%) | {} failed{eta}",
                    thousands(p.restored_targets),
                    thousands(p.targets),
                    p.percent_restored(),
                    p.counts.failed
                ));
            }
            None => {
                // The first line once the ETA learned from observed durations comes at once.
                let learned = self.last.as_ref().is_some_and(|l| l.eta_basis != p.eta_basis);
                if learned || self.last_line.is_none_or(|t| t.elapsed() >= LOG_EVERY) {
                    self.last_line = Some(Instant::now());
                    self.last_printed = true;
                    crate::telemetry::progress(self.run, p, &Self::line(p), |t| {
                        Self::print(None, t);
                    });
                }
            }
        }
        self.last = Some(p.clone());
    }

    fn failure(&mut self, key: &str, attempt: u32, error: &str, retry_in: Option<Duration>) {
        let next = match retry_in {
            Some(d) => format!("; retrying in {}", human(d)),
            None => "; no retries left".to_owned(),
        };
        let text = format!("failed: {key} attempt {attempt}: {error}{next}");
        let bar = self.bar.as_ref();
        crate::telemetry::failure(self.run, key, attempt, error, retry_in, &text, |t| {
            Self::print(bar, t);
        });
    }

    fn note(&mut self, message: &str) {
        let bar = self.bar.as_ref();
        crate::telemetry::note(self.run, &format!("rewind: {message}"), |t| Self::print(bar, t));
    }
}

/// `ETA 3m 10s`, and for a real run what it is based on: `ETA 1d by estimates` until an
/// instance finished, then `ETA 4.2s by observed durations`. A simulation's clock is the
/// estimates: no basis is shown.
fn eta(p: &Progress) -> Option<String> {
    let e = p.eta?;
    Some(if p.simulated {
        format!("ETA {}", human(e))
    } else {
        format!("ETA {} {}", human(e), p.eta_basis.words())
    })
}

/// An observer for commands that drive nothing (`cancel`): notes go to stderr as they come.
#[derive(Clone, Copy, Debug, Default)]
pub struct Notes;

impl Observer for Notes {
    fn progress(&mut self, _: &Progress) {}

    fn failure(&mut self, _: &str, _: u32, _: &str, _: Option<Duration>) {}

    fn note(&mut self, message: &str) {
        crate::telemetry::info(None, &format!("rewind: {message}"));
    }
}

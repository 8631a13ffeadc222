//! Progress of long commands on a terminal (`indicatif`): a counter of what a check has
//! done (fsck, scrub: phase, count, rate, elapsed), a spinner with the elapsed time
//! while the CLI waits on something whose size it does not know (gc, a restore or a
//! purge through the daemon). Drawn on stderr only when stderr is a terminal and
//! `--json` is not given; otherwise nothing at all, so what scripts read is unchanged.
//! Everything drawn is cleared when the work ends, before the result is printed.

use std::io::IsTerminal;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use decofs::store::check::Progress;

/// A phase of unknown size: a count, its rate, the elapsed time.
const COUNTER: &str = "{spinner} {prefix}: {human_pos} {msg} ({per_sec}, {elapsed})";
/// A phase whose total is known: a bar, done of total, and the time left.
const BAR: &str = "{prefix}: {msg} [{wide_bar}] {human_pos}/{human_len} ({per_sec}, {eta} left)";

/// How often a spinner redraws by itself (it also shows the elapsed time).
const TICK: Duration = Duration::from_millis(120);

/// Is progress drawn: stderr is a terminal and the output is not `--json`.
pub fn shown(json: bool) -> bool {
    !json && std::io::stderr().is_terminal()
}

/// A bar drawn nowhere yet (`start` shows it), so it is set up before its first draw.
fn bar(template: &str) -> ProgressBar {
    let b = ProgressBar::with_draw_target(None, ProgressDrawTarget::hidden());
    if let Ok(style) = ProgressStyle::with_template(template) {
        b.set_style(style);
    }
    b
}

/// Show `b` on stderr if progress is shown: draw it at once (a short command still
/// shows what it does), then keep it moving.
fn start(b: &ProgressBar, json: bool) {
    if shown(json) {
        // Also hidden by indicatif itself when TERM is unset or dumb.
        b.set_draw_target(ProgressDrawTarget::stderr());
        b.tick();
        b.enable_steady_tick(TICK);
    }
}

/// A spinner saying what the CLI waits for, with the elapsed time; gone when dropped.
pub struct Spinner(ProgressBar);

impl Spinner {
    pub fn new(msg: &str, json: bool) -> Spinner {
        let b = bar("{spinner} {msg} ({elapsed})");
        b.set_message(msg.to_string());
        start(&b, json);
        Spinner(b)
    }
}

impl Drop for Spinner {
    fn drop(&mut self) {
        self.0.finish_and_clear();
    }
}

/// A check's progress: its phase, how many items of it are done, the rate and the
/// elapsed time; a bar with the total and an ETA for a phase whose total is known
/// (a scan's entries, a scrub's blobs). Gone when dropped.
pub struct Counter(ProgressBar);

impl Counter {
    pub fn new(what: &str, json: bool) -> Counter {
        let b = bar(COUNTER);
        b.set_prefix(what.to_string());
        b.set_message("starting");
        start(&b, json);
        Counter(b)
    }

    /// The callback the checks call (every `check::PROGRESS_EVERY` items).
    pub fn update(&self, p: &Progress) {
        if self.0.message() != p.phase {
            // A new phase counts from zero: its rate and ETA are its own.
            self.0.set_message(p.phase);
            let template = match p.total {
                Some(_) => BAR,
                None => COUNTER,
            };
            if let Ok(style) = ProgressStyle::with_template(template) {
                self.0.set_style(style);
            }
            match p.total {
                Some(t) => self.0.set_length(t),
                None => self.0.unset_length(),
            }
            self.0.reset_eta();
        }
        self.0.set_position(p.done);
    }
}

impl Drop for Counter {
    fn drop(&mut self) {
        self.0.finish_and_clear();
    }
}

//! What the CLI prints: results on stdout (text or `--json`), warnings and the error
//! report on stderr, and the exit status.
//!
//! Every write to stdout goes through [`Out`] (or `outln!`): a reader that went away
//! (`decofs trash ls | head -1`) ends the command quietly with exit 141, as a `cat` that
//! SIGPIPE killed ends, instead of the panic `println!` gives on EPIPE. Other write errors (a full
//! disk) end it with the report and exit 1. SIGPIPE stays ignored (the Rust runtime's
//! default), so the daemon, started by the same binary, never dies of it.

use std::io::{self, BufWriter, StdoutLock, Write};
use std::process::ExitCode;

use serde::Serialize;

use decofs::control::Report;
use decofs::store::Error;

/// A command that failed: the report, and the exit status (1 unless a check says
/// otherwise).
pub struct Failure {
    pub report: Report,
    pub exit: u8,
}

impl Failure {
    pub fn new(report: Report) -> Failure {
        Failure { report, exit: 1 }
    }

    /// The same failure with another exit status.
    pub fn exit(mut self, code: u8) -> Failure {
        self.exit = code;
        self
    }
}

impl From<Report> for Failure {
    fn from(r: Report) -> Failure {
        Failure::new(r)
    }
}

/// What a command returns: its exit status, or why it failed.
pub type Outcome = Result<ExitCode, Failure>;

/// Say what could not be done, whatever the error's origin.
pub trait Context<T> {
    fn or_fail(self, what: &str) -> Result<T, Failure>;
}

impl<T> Context<T> for Result<T, Error> {
    fn or_fail(self, what: &str) -> Result<T, Failure> {
        self.map_err(|e| Failure::new(Report::of(what, &e)))
    }
}

impl<T> Context<T> for Result<T, Report> {
    fn or_fail(self, what: &str) -> Result<T, Failure> {
        self.map_err(|r| Failure::new(r.with_what(what)))
    }
}

/// An argument that cannot be used.
pub fn invalid(what: &str, reason: String, suggestion: &str) -> Failure {
    Failure::new(Report::invalid(what, reason, suggestion))
}

/// The end of a command: print the failure (as text or JSON) and give the exit code.
pub fn finish(r: Outcome, json: bool) -> ExitCode {
    match r {
        Ok(code) => code,
        Err(f) => {
            print_report(&f.report, json);
            ExitCode::from(f.exit)
        }
    }
}

/// The report on stderr: `decofs: WHAT: REASON [code: CODE] SUGGESTION`, or with
/// `--json` one object `{"error", "code", "reason", "suggestion"}`.
pub fn print_report(r: &Report, json: bool) {
    if json {
        err_line(&json_line(r));
    } else {
        err_line(&format!("decofs: {r}"));
    }
}

/// A unix time as people read it: local ISO 8601 with the offset,
/// `2026-12-06 23:40:12 +0000` (text output; `--json` keeps unix seconds).
pub fn local_time(secs: i64) -> String {
    let t: libc::time_t = secs;
    // SAFETY: `tm` is a plain C struct for which all-zero bytes are a valid value.
    let mut tm: libc::tm = unsafe { std::mem::zeroed() };
    // SAFETY: both pointers are to valid locals; localtime_r is the reentrant form.
    if unsafe { libc::localtime_r(&t, &mut tm) }.is_null() {
        return format!("@{secs}");
    }
    let mut buf = [0u8; 64];
    // SAFETY: buf is writable for its length, the format is NUL-terminated and tm was
    // filled by localtime_r; strftime writes at most buf.len() bytes.
    let n = unsafe {
        libc::strftime(
            buf.as_mut_ptr().cast(),
            buf.len(),
            c"%Y-%m-%d %H:%M:%S %z".as_ptr(),
            &tm,
        )
    };
    if n == 0 {
        return format!("@{secs}");
    }
    String::from_utf8_lossy(&buf[..n]).into_owned()
}

/// A lock holder as written in the lock file ("pid P on host H since T (unix time),
/// epoch E") for people: the time local, the epoch left to the caller (who prints it
/// once).
pub fn show_holder(holder: &str) -> String {
    let h = match holder.rsplit_once(", epoch ") {
        Some((h, e)) if e.trim().parse::<u64>().is_ok() => h,
        _ => holder,
    };
    match h.split_once(" since ") {
        Some((who, rest)) => {
            let secs = rest.trim_end_matches(" (unix time)").trim();
            match secs.parse::<i64>() {
                Ok(t) => format!("{who} since {}", local_time(t)),
                Err(_) => h.to_string(),
            }
        }
        None => h.to_string(),
    }
}

/// Is a person at a terminal to answer a question (stdin and stderr are terminals)?
pub fn interactive() -> bool {
    use std::io::IsTerminal;
    io::stdin().is_terminal() && io::stderr().is_terminal()
}

/// Ask a yes/no question on stderr and read the answer from stdin: only "y" or "yes"
/// (any case) is yes; end of input is no.
pub fn ask(question: &str) -> bool {
    let mut e = io::stderr();
    let _ = e.write_all(question.as_bytes());
    let _ = e.flush();
    let mut answer = String::new();
    if io::stdin().read_line(&mut answer).is_err() {
        return false;
    }
    matches!(answer.trim().to_ascii_lowercase().as_str(), "y" | "yes")
}

/// A line on stderr; a closed stderr is not worth a panic.
pub fn err_line(s: &str) {
    let _ = writeln!(io::stderr(), "{s}");
}

/// A value as one JSON line, keys sorted (as `serde_json::Value` orders them; the
/// order `--json` has always printed).
pub fn json_line<T: Serialize>(v: &T) -> String {
    serde_json::to_value(v)
        .expect("replies serialize")
        .to_string()
}

/// Buffered stdout that treats a closed pipe as the end of the command.
pub struct Out(BufWriter<StdoutLock<'static>>);

impl Out {
    pub fn new() -> Out {
        Out(BufWriter::new(io::stdout().lock()))
    }

    pub fn bytes(&mut self, b: &[u8]) -> &mut Out {
        if let Err(e) = self.0.write_all(b) {
            stdout_failed(e);
        }
        self
    }

    pub fn str(&mut self, s: &str) -> &mut Out {
        self.bytes(s.as_bytes())
    }

    /// Write everything buffered (call before the command goes on to wait or ends).
    pub fn flush(&mut self) {
        if let Err(e) = self.0.flush() {
            stdout_failed(e);
        }
    }
}

impl Drop for Out {
    fn drop(&mut self) {
        self.flush();
    }
}

/// One line on stdout.
pub fn line(s: &str) {
    let mut o = Out::new();
    o.str(s).str("\n");
    o.flush();
}

/// A value as one JSON line on stdout (see `json_line`).
pub fn json<T: Serialize>(v: &T) {
    line(&json_line(v));
}

/// A report as pretty JSON on stdout, fields in their declared order.
pub fn json_pretty<T: Serialize>(v: &T) {
    line(&serde_json::to_string_pretty(v).expect("reports serialize"));
}

/// What a command exits with when its reader hung up: what a shell reports for a
/// process that SIGPIPE killed (128 + 13), as `cat` or `ls` would end in `| head`. Not 0:
/// the command did not finish its output, and `fsck | head` must not look clean to a
/// script with `pipefail`. SIGPIPE itself stays ignored (the daemon is this binary).
pub const EXIT_PIPE_CLOSED: i32 = 128 + libc::SIGPIPE;

/// stdout failed: a reader that hung up ends the command quietly (`EXIT_PIPE_CLOSED`);
/// anything else is reported (exit 1).
fn stdout_failed(e: io::Error) -> ! {
    if e.kind() == io::ErrorKind::BrokenPipe {
        std::process::exit(EXIT_PIPE_CLOSED);
    }
    print_report(
        &Report::of(
            "cannot write the output",
            &Error::io("write to standard output", e),
        ),
        false,
    );
    std::process::exit(1);
}

/// `println!` through [`line`]: a closed stdout ends the command instead of panicking.
macro_rules! outln {
    ($($arg:tt)*) => {
        $crate::cli::output::line(&format!($($arg)*))
    };
}
pub(crate) use outln;

/// `eprintln!` that ignores a closed stderr.
macro_rules! errln {
    ($($arg:tt)*) => {
        $crate::cli::output::err_line(&format!($($arg)*))
    };
}
pub(crate) use errln;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_are_local_iso_8601() {
        let t = local_time(1_796_600_554);
        // "YYYY-MM-DD HH:MM:SS +HHMM", whatever the local zone.
        assert_eq!(t.len(), 25, "{t}");
        assert_eq!(&t[4..5], "-");
        assert_eq!(&t[10..11], " ");
        assert!(t[20..].starts_with('+') || t[20..].starts_with('-'), "{t}");
    }

    #[test]
    fn holders_name_the_epoch_once() {
        let h = show_holder("pid 12 on host vm since 1796600554 (unix time), epoch 3");
        assert!(h.starts_with("pid 12 on host vm since 20"), "{h}");
        assert!(!h.contains("epoch") && !h.contains("unix"), "{h}");
        assert_eq!(show_holder(""), "");
    }
}

//! stdout and stderr that never take the process down. `println!` panics when its stream is
//! closed (EPIPE, e.g. `| head`) or full (ENOSPC, `>/dev/full`), which would kill a run for a
//! progress line; here the first failure marks the stream gone, later writes to it are
//! skipped, and the command goes on (the run's `train.log` is a separate writer and keeps
//! every line). SIGPIPE stays ignored, as Rust sets it up, so a closed pipe is an error we
//! see rather than a signal that kills us.

use std::fmt;
use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};

static STDOUT_GONE: AtomicBool = AtomicBool::new(false);
static STDERR_GONE: AtomicBool = AtomicBool::new(false);

fn write_to(gone: &AtomicBool, mut w: impl Write, bytes: &[u8]) {
    if gone.load(Ordering::Relaxed) {
        return;
    }
    if w.write_all(bytes).and_then(|()| w.flush()).is_err() {
        gone.store(true, Ordering::Relaxed);
    }
}

/// One line on stdout (the `out!` macro).
pub fn out_line(args: fmt::Arguments) {
    write_to(
        &STDOUT_GONE,
        std::io::stdout().lock(),
        format!("{args}\n").as_bytes(),
    );
}

/// Text as it is (no newline added) on stdout.
pub fn out_text(text: &str) {
    write_to(&STDOUT_GONE, std::io::stdout().lock(), text.as_bytes());
}

/// One line on stderr (the `err!` macro).
pub fn err_line(args: fmt::Arguments) {
    write_to(
        &STDERR_GONE,
        std::io::stderr().lock(),
        format!("{args}\n").as_bytes(),
    );
}

/// `println!` that survives a closed or full stdout.
macro_rules! out {
    ($($arg:tt)*) => { $crate::term::out_line(format_args!($($arg)*)) };
}

/// `eprintln!` that survives a closed or full stderr.
macro_rules! err {
    ($($arg:tt)*) => { $crate::term::err_line(format_args!($($arg)*)) };
}

/// The tracing layer's stderr: the same "gone after the first failure" rule, and never an
/// error back to tracing-subscriber (which would report it with `eprintln!`).
pub struct Stderr;

pub struct StderrWriter;

impl Write for StderrWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        write_to(&STDERR_GONE, std::io::stderr().lock(), buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Stderr {
    type Writer = StderrWriter;
    fn make_writer(&'a self) -> StderrWriter {
        StderrWriter
    }
}

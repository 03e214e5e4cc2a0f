//! A tracing writer whose file is chosen after start-up: `train` knows its `train.log` only
//! once the run directory exists, but the subscriber is global and installed first.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::Path;
use std::sync::{Mutex, OnceLock};

use tracing_subscriber::fmt::MakeWriter;

static FILE: OnceLock<Mutex<Option<File>>> = OnceLock::new();

fn slot() -> &'static Mutex<Option<File>> {
    FILE.get_or_init(|| Mutex::new(None))
}

/// Starts appending log lines to `path` (a failure to open it is reported, not fatal).
pub fn open(path: &Path) {
    match OpenOptions::new().create(true).append(true).open(path) {
        Ok(f) => {
            if let Ok(mut s) = slot().lock() {
                *s = Some(f);
            }
        }
        Err(e) => err!(
            "warning: cannot open the log file `{}`: {e}",
            path.display()
        ),
    }
}

pub struct LogFile;

pub struct LogWriter;

impl Write for LogWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if let Ok(mut s) = slot().lock()
            && let Some(f) = s.as_mut()
        {
            f.write_all(buf)?;
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        if let Ok(mut s) = slot().lock()
            && let Some(f) = s.as_mut()
        {
            f.flush()?;
        }
        Ok(())
    }
}

impl<'a> MakeWriter<'a> for LogFile {
    type Writer = LogWriter;
    fn make_writer(&'a self) -> LogWriter {
        LogWriter
    }
}

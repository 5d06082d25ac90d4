//! Progress bars for the operations a person waits for (config-sync apply, config diff, config
//! check over many files, wal inspect). Drawn on standard error, only when it is a terminal and
//! the output is not JSON: pipes, CI logs and `--output json` never see one. Lines printed
//! while a bar is shown go through [`Progress::println`], which clears the bar first.

use std::io::Write;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// A progress bar, or nothing when progress is not shown.
#[derive(Debug)]
pub struct Progress(Option<ProgressBar>);

/// What a bar counts.
#[derive(Debug, Clone, Copy)]
pub enum Unit {
    /// Items: `[####      ] 12/40`.
    Items,
    /// Bytes: `[####      ] 1.20 MiB/4.00 MiB`.
    Bytes,
}

impl Progress {
    /// A bar of `len` steps on standard error when `show`; otherwise nothing is drawn.
    pub fn new(show: bool, len: u64, unit: Unit) -> Progress {
        if !show {
            return Progress(None);
        }
        let template = match unit {
            Unit::Items => "[{bar:30}] {pos}/{len} {msg}",
            Unit::Bytes => "[{bar:30}] {binary_bytes}/{binary_total_bytes} {msg}",
        };
        let style = ProgressStyle::with_template(template)
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("## ");
        let bar = ProgressBar::with_draw_target(Some(len), ProgressDrawTarget::stderr())
            .with_style(style);
        Progress(Some(bar))
    }

    /// Nothing drawn.
    pub fn hidden() -> Progress {
        Progress(None)
    }

    pub fn inc(&self, n: u64) {
        if let Some(b) = &self.0 {
            b.inc(n);
        }
    }

    pub fn set_position(&self, pos: u64) {
        if let Some(b) = &self.0 {
            b.set_position(pos);
        }
    }

    /// Writes `line` (and a newline) to `w` with the bar cleared meanwhile, so the two never
    /// mix on one terminal line. A failed write is returned.
    pub fn println(&self, w: &mut dyn Write, line: &str) -> std::io::Result<()> {
        match &self.0 {
            Some(b) => b.suspend(|| writeln!(w, "{line}")),
            None => writeln!(w, "{line}"),
        }
    }

    /// Removes the bar from the terminal.
    pub fn finish(&self) {
        if let Some(b) = &self.0 {
            b.finish_and_clear();
        }
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        self.finish();
    }
}

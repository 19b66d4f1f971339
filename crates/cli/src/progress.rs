//! Terminal rendering of library progress (indicatif) and of logs (tracing),
//! on stderr, with bars suspended while a log line is written.

use std::io::Write;
use std::sync::Mutex;

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use selftrain_data::Progress;

/// Progress bars for the phases libraries report.
pub struct Bars {
    multi: MultiProgress,
    current: Mutex<Option<ProgressBar>>,
}

impl Bars {
    /// Bars on stderr; hidden with `quiet` (indicatif also hides them when
    /// stderr is not a terminal).
    pub fn new(quiet: bool) -> Bars {
        let target = if quiet { ProgressDrawTarget::hidden() } else { ProgressDrawTarget::stderr() };
        Bars { multi: MultiProgress::with_draw_target(target), current: Mutex::new(None) }
    }

    pub fn multi(&self) -> MultiProgress {
        self.multi.clone()
    }
}

impl Progress for Bars {
    fn begin(&self, phase: &str, total: u64) {
        let style = ProgressStyle::with_template("{prefix:>24} [{bar:30}] {pos}/{len} {per_sec} eta {eta}")
            .expect("template is valid")
            .progress_chars("=> ");
        let bar = self.multi.add(ProgressBar::new(total).with_style(style).with_prefix(phase.to_string()));
        if let Some(old) = self.current.lock().expect("progress lock").replace(bar) {
            old.finish_and_clear();
        }
    }

    fn advance(&self, done: u64) {
        if let Some(bar) = self.current.lock().expect("progress lock").as_ref() {
            bar.inc(done);
        }
    }

    fn finish(&self, summary: &str) {
        if let Some(bar) = self.current.lock().expect("progress lock").take() {
            bar.finish_and_clear();
        }
        if !summary.is_empty() {
            tracing::info!("{summary}");
        }
    }
}

/// A tracing writer that suspends the bars while it writes a line.
#[derive(Clone)]
pub struct SuspendingStderr(pub MultiProgress);

impl Write for SuspendingStderr {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.suspend(|| std::io::stderr().write_all(buf))?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        std::io::stderr().flush()
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for SuspendingStderr {
    type Writer = SuspendingStderr;

    fn make_writer(&'a self) -> Self::Writer {
        self.clone()
    }
}

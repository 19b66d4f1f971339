//! The small interface through which library crates report progress.
//!
//! Libraries never print; the CLI implements this trait with indicatif bars
//! (or nothing, with `--quiet`).

/// Receives progress of a long-running stage.
pub trait Progress: Send + Sync {
    /// A new phase begins, with `total` units of work (images, steps).
    fn begin(&self, phase: &str, total: u64);
    /// `done` more units finished.
    fn advance(&self, done: u64);
    /// The current phase ended; `summary` is a one-line result for the user
    /// (empty when the library logged its own).
    fn finish(&self, summary: &str);
}

/// Discards all progress (tests, `--quiet`).
#[derive(Debug, Default, Clone, Copy)]
pub struct NoProgress;

impl Progress for NoProgress {
    fn begin(&self, _phase: &str, _total: u64) {}
    fn advance(&self, _done: u64) {}
    fn finish(&self, _summary: &str) {}
}

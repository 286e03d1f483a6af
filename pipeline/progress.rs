//! How the library tells its caller about work in progress: through a [`Sink`] the caller hands
//! in. The library never writes to the terminal itself; a binary hands in one that draws progress
//! bars and prints lines (`cli::Terminal`), a test or an embedding program [`Silent`] or its own.

use crate::history::Epoch;

/// Where progress, finished epochs and notes about the work go.
pub trait Sink: Sync {
    /// A task of `len` units (images, steps, epochs) starts; its meter counts them.
    fn meter(&self, len: u64, unit: &str, message: &str) -> Box<dyn Meter + '_>;
    /// An epoch finished (or, when a fit resumes, one finished earlier is replayed).
    fn epoch(&self, e: &Epoch, epochs: usize);
    /// A line about the work: what is being trained, on how much data.
    fn note(&self, text: &str);
}

/// Counts a task's units as they are done; cleared when dropped.
pub trait Meter: Send + Sync {
    fn inc(&self, n: u64);
    fn set_message(&self, message: String);
}

/// A sink that shows nothing.
pub struct Silent;

struct NoMeter;

impl Meter for NoMeter {
    fn inc(&self, _: u64) {}
    fn set_message(&self, _: String) {}
}

impl Sink for Silent {
    fn meter(&self, _: u64, _: &str, _: &str) -> Box<dyn Meter + '_> {
        Box::new(NoMeter)
    }
    fn epoch(&self, _: &Epoch, _: usize) {}
    fn note(&self, _: &str) {}
}

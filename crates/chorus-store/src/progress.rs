//! What long work in this crate ([`crate::import`], [`crate::audit`]) reports as it goes. The
//! CLI prints it; a bench or a test passes `&mut ()` and hears nothing.

/// A sink for progress: stages, each with an optional total, and counts within the stage.
pub trait Progress {
    /// A new stage begins (the previous one, if any, is over).
    fn stage(&mut self, label: &'static str, total: Option<u64>);
    /// `n` more items of the current stage are done.
    fn add(&mut self, n: u64);
    /// The last stage is over.
    fn finish(&mut self);
}

/// No progress reported.
impl Progress for () {
    fn stage(&mut self, _: &'static str, _: Option<u64>) {}
    fn add(&mut self, _: u64) {}
    fn finish(&mut self) {}
}

//! Progress lines on stderr for long work: at most one per second, and a final one if the work
//! took longer than a second. Nothing is printed for quick runs.

use std::time::{Duration, Instant};

pub struct Progress {
    label: &'static str,
    total: Option<u64>,
    done: u64,
    start: Instant,
    last: Instant,
}

const EVERY: Duration = Duration::from_secs(1);

impl Progress {
    pub fn new(label: &'static str, total: Option<u64>) -> Self {
        let now = Instant::now();
        Progress {
            label,
            total,
            done: 0,
            start: now,
            last: now,
        }
    }

    pub fn add(&mut self, n: u64) {
        self.done += n;
        if self.last.elapsed() >= EVERY {
            self.last = Instant::now();
            self.print();
        }
    }

    fn print(&self) {
        let secs = self.start.elapsed().as_secs_f64();
        let rate = self.done as f64 / secs.max(1e-9);
        match self.total {
            Some(t) if t > 0 => eprintln!(
                "{}: {}/{} ({:.0}%), {:.0}/s",
                self.label,
                self.done,
                t,
                100.0 * self.done as f64 / t as f64,
                rate
            ),
            _ => eprintln!("{}: {} ({:.0}/s)", self.label, self.done, rate),
        }
    }

    pub fn finish(self) {
        if self.start.elapsed() >= EVERY {
            self.print();
        }
    }
}

/// The stages of long work in `chorus-store` (import, verify), printed as above: one
/// [`Progress`] per stage.
#[derive(Default)]
pub struct Stages {
    current: Option<Progress>,
}

impl chorus_store::progress::Progress for Stages {
    fn stage(&mut self, label: &'static str, total: Option<u64>) {
        if let Some(p) = self.current.replace(Progress::new(label, total)) {
            p.finish();
        }
    }

    fn add(&mut self, n: u64) {
        if let Some(p) = &mut self.current {
            p.add(n);
        }
    }

    fn finish(&mut self) {
        if let Some(p) = self.current.take() {
            p.finish();
        }
    }
}

//! Progress of a node's catch-up in its log: a node far behind its peers (a new node, one back
//! from a long partition) says every [`REPORT_EVERY`] how many events it holds, how far behind
//! the most advanced peer it is, its rate and the time left, and once more when it has caught
//! up (no longer catching up, or within half the bound: a lag that hovers around the bound
//! does not start and end a report every tick). A node only a little behind (the everyday lag
//! of live traffic) logs nothing.

use std::time::{Duration, Instant};

/// How far behind a node must be for its catch-up to be reported (the `/ready` bound).
pub const REPORT_ABOVE_LAG: u64 = 1_024;
/// How often a catch-up under way is reported.
pub const REPORT_EVERY: Duration = Duration::from_secs(5);

/// The catch-up under way, if any.
#[derive(Debug, Default)]
pub struct CatchUp {
    under_way: Option<Run>,
}

#[derive(Debug)]
struct Run {
    started: Instant,
    events_at_start: u64,
    last_report: Instant,
    events_at_report: u64,
}

impl CatchUp {
    /// Takes the node's figures at a tick; returns the line to log, if one is due.
    pub fn tick(
        &mut self,
        now: Instant,
        events: u64,
        lag: u64,
        catching_up: bool,
    ) -> Option<String> {
        let behind = match self.under_way {
            None => catching_up && lag > REPORT_ABOVE_LAG,
            Some(_) => catching_up && lag > REPORT_ABOVE_LAG / 2,
        };
        match (&mut self.under_way, behind) {
            (None, false) => None,
            (None, true) => {
                self.under_way = Some(Run {
                    started: now,
                    events_at_start: events,
                    last_report: now,
                    events_at_report: events,
                });
                Some(format!(
                    "catching up: {events} events held, {lag} behind the most advanced peer"
                ))
            }
            (Some(run), true) => {
                if now.duration_since(run.last_report) < REPORT_EVERY {
                    return None;
                }
                let secs = now.duration_since(run.last_report).as_secs_f64();
                let rate = events.saturating_sub(run.events_at_report) as f64 / secs;
                run.last_report = now;
                run.events_at_report = events;
                let left = if rate > 0.0 {
                    format!(", about {:.0} s left", lag as f64 / rate)
                } else {
                    String::new()
                };
                Some(format!(
                    "catching up: {events} events held, {lag} behind, {rate:.0} events/s{left}"
                ))
            }
            (Some(run), false) => {
                let got = events.saturating_sub(run.events_at_start);
                let took = now.duration_since(run.started).as_secs_f64();
                self.under_way = None;
                Some(format!(
                    "caught up: {got} events in {took:.1} s, {events} held, {lag} behind"
                ))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_long_catch_up_is_reported_with_its_rate_and_its_end_a_small_lag_is_not() {
        let mut c = CatchUp::default();
        let t0 = Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        assert_eq!(c.tick(t0, 10, 500, true), None, "a small lag");
        let first = c.tick(at(1), 10, 100_000, true).unwrap();
        assert!(first.contains("100000 behind"), "{first}");
        assert_eq!(c.tick(at(2), 5_000, 95_000, true), None, "not due yet");
        let mid = c.tick(at(6), 50_010, 50_000, true).unwrap();
        assert!(
            mid.contains("10000 events/s") && mid.contains("about 5 s left"),
            "{mid}"
        );
        let end = c.tick(at(11), 100_010, 0, false).unwrap();
        assert!(
            end.starts_with("caught up: 100000 events in 10.0 s"),
            "{end}"
        );
        assert_eq!(c.tick(at(12), 100_010, 0, false), None);
    }

    #[test]
    fn a_lag_hovering_around_the_bound_is_one_report_not_one_a_tick() {
        let mut c = CatchUp::default();
        let t0 = Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        assert!(c.tick(t0, 0, 1_100, true).is_some(), "starts");
        assert_eq!(
            c.tick(at(1), 100, 1_000, true),
            None,
            "still within the report"
        );
        assert_eq!(c.tick(at(2), 200, 1_050, true), None);
        assert!(
            c.tick(at(3), 300, 400, true)
                .unwrap()
                .starts_with("caught up")
        );
    }
}

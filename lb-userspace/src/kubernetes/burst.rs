//! When the daemon applies the cluster's events: once they pause for [`QUIET`] — a
//! burst the API server streams back to back becomes one apply. A burst that comes in
//! spurts (a controller writing 1,000 EndpointSlices, each a request of its own) must
//! pause longer the more it holds — a quarter of its length so far, or [`PER_EVENT`]
//! per event, about what applying one costs, up to [`MAX_QUIET`] — so that its spurts
//! make one apply, not one each. And no sooner than
//! the last apply's own length after it ends, so however events come, applying takes
//! at most about half the daemon's time; but never later than [`MAX_WAIT`] after the
//! first event waiting.
//!
//! The state lives outside the daemon's `select!`: a wait held inside one of its
//! branches (as a future that had taken the first event and slept for quiet) was
//! dropped whenever another branch won — a health tick, say — and the events it had
//! taken were never applied until the next event came (seen as a change not live
//! within 40 s in the Kubernetes kernel test).

use std::time::Duration;

use tokio::time::Instant;

/// Quiet time after the last event before the apply: events streamed together arrive
/// microseconds apart; a change on its own waits this long.
pub const QUIET: Duration = Duration::from_millis(2);
/// How much longer a burst must pause to end for each event it holds.
pub const PER_EVENT: Duration = Duration::from_micros(100);
/// The longest pause that a burst must make to end.
pub const MAX_QUIET: Duration = Duration::from_millis(20);
/// The longest an event waits while others keep coming.
pub const MAX_WAIT: Duration = Duration::from_millis(200);

/// Events seen and not applied yet.
#[derive(Clone, Copy, Debug, Default)]
pub struct Burst {
    /// The first and the last event not applied yet, and how many there are.
    pending: Option<(Instant, Instant, u32)>,
    /// No apply before this (the last one's end plus its length).
    rest_until: Option<Instant>,
}

impl Burst {
    /// An event came at `now`.
    pub fn event(&mut self, now: Instant) {
        let (first, events) = self.pending.map_or((now, 0), |(first, _, n)| (first, n));
        self.pending = Some((first, now, events.saturating_add(1)));
    }

    /// When the events seen are due to be applied (None: none waits).
    pub fn due(&self) -> Option<Instant> {
        self.pending.map(|(first, last, events)| {
            let longer = ((last - first) / 4).max(PER_EVENT * events);
            let quiet = last + longer.clamp(QUIET, MAX_QUIET);
            let settled = self.rest_until.map_or(quiet, |r| quiet.max(r));
            settled.min(first + MAX_WAIT)
        })
    }

    /// An apply that began at `started` and ended at `now` applied the events seen.
    pub fn applied(&mut self, started: Instant, now: Instant) {
        self.pending = None;
        self.rest_until = Some(now + (now - started));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn a_pause_a_rest_or_the_bound_ends_a_burst() {
        let t0 = Instant::now();
        let mut b = Burst::default();
        assert_eq!(b.due(), None);
        b.event(t0);
        assert_eq!(b.due(), Some(t0 + QUIET));
        // Events closer than QUIET keep pushing the apply back, up to MAX_WAIT after
        // the first.
        b.event(t0 + MS);
        assert_eq!(b.due(), Some(t0 + MS + QUIET));
        // A burst 40 ms long so far must pause 10 ms to end...
        b.event(t0 + 40 * MS);
        assert_eq!(b.due(), Some(t0 + 50 * MS));
        // ...and one of 150 events 15 ms.
        for _ in 3..150 {
            b.event(t0 + 40 * MS);
        }
        assert_eq!(b.due(), Some(t0 + 55 * MS));
        for i in 2..1000 {
            b.event(t0 + i * MS);
        }
        assert_eq!(b.due(), Some(t0 + MAX_WAIT));
        // An apply of 30 ms: the next waits as long after it ends, not QUIET...
        b.applied(t0 + 1000 * MS, t0 + 1030 * MS);
        assert_eq!(b.due(), None);
        b.event(t0 + 1031 * MS);
        assert_eq!(b.due(), Some(t0 + 1060 * MS));
        // ...and an apply after a rest is QUIET after its event.
        b.applied(t0 + 1060 * MS, t0 + 1061 * MS);
        b.event(t0 + 2000 * MS);
        assert_eq!(b.due(), Some(t0 + 2000 * MS + QUIET));
        // A long apply (a first sync) holds the next back no longer than MAX_WAIT.
        b.applied(t0 + 2000 * MS, t0 + 3000 * MS);
        b.event(t0 + 3001 * MS);
        assert_eq!(b.due(), Some(t0 + 3001 * MS + MAX_WAIT));
    }
}

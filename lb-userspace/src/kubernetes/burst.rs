//! When the daemon applies the cluster's events: once they pause for [`QUIET`], and
//! at most [`MAX_WAIT`] after the first of them, so a rollout's burst becomes one
//! apply and a steady stream of events still applies every `MAX_WAIT`.
//!
//! The state lives outside the daemon's `select!`: a wait held inside one of its
//! branches (as a future that had taken the first event and slept for quiet) was
//! dropped whenever another branch won — a health tick, say — and the events it had
//! taken were never applied until the next event came (seen as a change not live
//! within 40 s in the Kubernetes kernel test).

use std::time::Duration;

use tokio::time::Instant;

/// Quiet time after the last event before the apply.
pub const QUIET: Duration = Duration::from_millis(20);
/// The longest an event waits while others keep coming.
pub const MAX_WAIT: Duration = Duration::from_millis(200);

/// Events seen and not applied yet.
#[derive(Clone, Copy, Debug, Default)]
pub struct Burst {
    /// The first and the last event not applied yet.
    pending: Option<(Instant, Instant)>,
}

impl Burst {
    /// An event came at `now`.
    pub fn event(&mut self, now: Instant) {
        let first = self.pending.map_or(now, |(first, _)| first);
        self.pending = Some((first, now));
    }

    /// When the events seen are due to be applied (None: none waits).
    pub fn due(&self) -> Option<Instant> {
        self.pending
            .map(|(first, last)| (first + MAX_WAIT).min(last + QUIET))
    }

    /// The events seen are being applied.
    pub fn applied(&mut self) {
        self.pending = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn a_pause_or_the_bound_ends_a_burst() {
        let t0 = Instant::now();
        let mut b = Burst::default();
        assert_eq!(b.due(), None);
        b.event(t0);
        assert_eq!(b.due(), Some(t0 + QUIET));
        // Events 10 ms apart keep pushing the apply back, up to MAX_WAIT after the
        // first.
        b.event(t0 + 10 * MS);
        assert_eq!(b.due(), Some(t0 + 10 * MS + QUIET));
        for i in 2..100 {
            b.event(t0 + i * 10 * MS);
        }
        assert_eq!(b.due(), Some(t0 + MAX_WAIT));
        b.applied();
        assert_eq!(b.due(), None);
        // The next burst is timed from its own first event.
        b.event(t0 + 2000 * MS);
        assert_eq!(b.due(), Some(t0 + 2000 * MS + QUIET));
    }
}

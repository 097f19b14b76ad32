//! Which rejections become Events: only those that last. A bundle applied at once
//! (`kubectl apply -f` of a Service, its DestinationRule and VirtualService) reaches lb
//! over several watches, and with a few milliseconds between reloads one of its
//! objects can be rejected for a moment — a VirtualService read before its Service
//! names an unknown host. That is logged and shown by `lb status` while it holds; an
//! Event, which its owner reads later in `kubectl describe`, is posted once the same
//! rejection has held for [`AFTER`].

use std::time::Duration;

use tokio::time::Instant;

use crate::model::accept::Rejected;

/// How long a rejection holds before an Event says so.
pub const AFTER: Duration = Duration::from_secs(1);

/// Rejections not posted yet, each with when it was first seen.
#[derive(Default)]
pub struct Lasting {
    pending: Vec<(Instant, Rejected)>,
}

impl Lasting {
    /// The rejections of a reload at `now` (`before`: the last reload's): the new
    /// ones wait; those that no longer hold are forgotten.
    pub fn rejected(&mut self, rejected: &[Rejected], before: &[Rejected], now: Instant) {
        self.pending.retain(|(_, r)| rejected.contains(r));
        for r in rejected.iter().filter(|r| !before.contains(r)) {
            if !self.pending.iter().any(|(_, p)| p == r) {
                self.pending.push((now, r.clone()));
            }
        }
    }

    /// The rejections that have held for [`AFTER`] at `now`, to post (once).
    pub fn due(&mut self, now: Instant) -> Vec<Rejected> {
        let (due, wait): (Vec<_>, Vec<_>) = std::mem::take(&mut self.pending)
            .into_iter()
            .partition(|(since, _)| now.duration_since(*since) >= AFTER);
        self.pending = wait;
        due.into_iter().map(|(_, r)| r).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rejected(reason: &'static str) -> Rejected {
        Rejected {
            object: "VirtualService team-b/other-vs".into(),
            problems: vec![format!("{reason} problem")],
            reason,
            last_good_stays: false,
        }
    }

    #[test]
    fn only_a_rejection_that_holds_is_posted_once() {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let mut l = Lasting::default();
        let (host, subset) = (
            rejected("ReferencedHostNotFound"),
            rejected("SubsetNotFound"),
        );
        // Rejected for its host, then (its Service read 5 ms later) for its subset.
        l.rejected(std::slice::from_ref(&host), &[], t0);
        l.rejected(
            std::slice::from_ref(&subset),
            std::slice::from_ref(&host),
            t0 + ms(5),
        );
        assert!(l.due(t0 + ms(900)).is_empty());
        assert_eq!(l.due(t0 + ms(1005)), std::slice::from_ref(&subset));
        assert!(l.due(t0 + ms(3000)).is_empty(), "posted once");
        // A rejection that clears within AFTER is never posted.
        l.rejected(
            std::slice::from_ref(&host),
            std::slice::from_ref(&subset),
            t0 + ms(4000),
        );
        l.rejected(&[], std::slice::from_ref(&host), t0 + ms(4100));
        assert!(l.due(t0 + ms(6000)).is_empty());
    }
}

//! The cluster's objects handed to the model in runs of a few hundred, in key order
//! (kind, namespace, name), each run made again only when an object in its range
//! changed: a change among 10,000 Services hands over the same runs but one, and the
//! model reads only that one (load/docs.rs). A run's range starts at its first key
//! and ends where the next run starts; a run made again is cut into runs of at most
//! 256, and one left empty disappears (its range joins the run before).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use crate::diagnostic::Diagnostic;
use crate::load::docs::{Docs, Run};

/// An object's place in the order: (kind, namespace, name).
pub type Id = (String, String, String);

/// Objects a run is made with, at most (a few in tests, so that theirs split).
const SIZE: usize = if cfg!(test) { 3 } else { 256 };

/// One run as made last: its objects, and the problems of those that did not load.
struct Made {
    run: Run,
    diags: Vec<Diagnostic>,
}

/// The runs by their first key; the first run starts at the smallest key.
pub struct Runs {
    runs: BTreeMap<Id, Made>,
    /// Runs (by start) with an object changed since they were made.
    dirty: BTreeSet<Id>,
}

impl Default for Runs {
    fn default() -> Self {
        let mut runs = Runs {
            runs: BTreeMap::new(),
            dirty: BTreeSet::new(),
        };
        runs.all_changed();
        runs
    }
}

/// What one object is: a loaded document, or the problems of one that is not.
pub enum Item<'a> {
    Loaded(&'a Arc<crate::load::Loaded>),
    Invalid(&'a [Diagnostic]),
}

impl Runs {
    /// Everything is made again (and parted again) on the next [`make`](Self::make).
    pub fn all_changed(&mut self) {
        self.runs.clear();
        self.dirty.clear();
        self.dirty.insert(Id::default());
    }

    /// The object `id` changed (came, went, or is read differently).
    pub fn changed(&mut self, id: &Id) {
        let start = self
            .runs
            .range(..=id)
            .next_back()
            .map_or_else(Id::default, |(k, _)| k.clone());
        self.dirty.insert(start);
    }

    /// The runs now: those changed are made again from `items(from, to)` (the objects
    /// with keys in `from..to`, `to` None: to the end, in order).
    pub fn make<'a>(
        &mut self,
        items: impl Fn(&Id, Option<&Id>) -> Vec<(Id, Item<'a>)>,
    ) -> (Docs, Vec<Diagnostic>) {
        for start in std::mem::take(&mut self.dirty) {
            let end = (self.runs.range(start.clone()..))
                .find(|(k, _)| **k != start)
                .map(|(k, _)| k.clone());
            self.runs.remove(&start);
            let mut part: Vec<(Id, Vec<_>, Vec<Diagnostic>)> = Vec::new();
            for (id, item) in items(&start, end.as_ref()) {
                if part.last().is_none_or(|(_, docs, _)| docs.len() >= SIZE) {
                    part.push((id, Vec::new(), Vec::new()));
                }
                let (_, docs, diags) = part.last_mut().expect("pushed");
                match item {
                    Item::Loaded(l) => docs.push(l.clone()),
                    Item::Invalid(d) => diags.extend(d.iter().cloned()),
                }
            }
            // The first part keeps the range's start (the first run starts at the
            // smallest key); an empty range leaves no run.
            if let Some(first) = part.first_mut() {
                first.0 = start;
            }
            for (id, docs, diags) in part {
                let made = Made {
                    run: docs.into(),
                    diags,
                };
                self.runs.insert(id, made);
            }
        }
        let mut docs = Docs::default();
        let mut diags = Vec::new();
        for m in self.runs.values() {
            docs.push(m.run.clone());
            diags.extend(m.diags.iter().cloned());
        }
        (docs, diags)
    }
}

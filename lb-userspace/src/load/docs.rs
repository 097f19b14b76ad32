//! The loaded documents in load order, in runs shared between reloads: a file's
//! documents are one run, held by the parse cache, so a reload hands out one pointer
//! per file instead of one per document, and the model finds what changed by the runs
//! that are not the very ones it saw last time (model/slices.rs).

use std::sync::Arc;

use super::Loaded;

/// One run of documents (a file's, or the cluster's).
pub type Run = Arc<[Arc<Loaded>]>;

/// A run's address: what tells it from another while it is held.
pub fn run_addr(r: &Run) -> usize {
    Arc::as_ptr(r) as *const () as usize
}

#[derive(Debug, Clone, Default)]
pub struct Docs {
    runs: Vec<Run>,
}

impl Docs {
    pub fn push(&mut self, run: Run) {
        if !run.is_empty() {
            self.runs.push(run);
        }
    }

    pub fn runs(&self) -> &[Run] {
        &self.runs
    }

    pub fn iter(&self) -> impl Iterator<Item = &Arc<Loaded>> {
        self.runs.iter().flat_map(|r| r.iter())
    }

    pub fn len(&self) -> usize {
        self.runs.iter().map(|r| r.len()).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.runs.is_empty()
    }

    /// `other`'s runs after these.
    pub fn extend(&mut self, other: &Docs) {
        self.runs.extend(other.runs.iter().cloned());
    }

    pub fn to_vec(&self) -> Vec<Arc<Loaded>> {
        self.iter().cloned().collect()
    }
}

impl From<Vec<Arc<Loaded>>> for Docs {
    /// All in one run.
    fn from(docs: Vec<Arc<Loaded>>) -> Self {
        let mut d = Docs::default();
        d.push(docs.into());
        d
    }
}

impl FromIterator<Arc<Loaded>> for Docs {
    fn from_iter<I: IntoIterator<Item = Arc<Loaded>>>(docs: I) -> Self {
        Docs::from(docs.into_iter().collect::<Vec<_>>())
    }
}

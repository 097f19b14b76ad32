//! A shared cluster's rule: an object that fails validation is rejected on its own —
//! its last good version, if it had one, stays — so one team's broken VirtualService
//! does not freeze everybody's routing. Files keep theirs: a problem anywhere in them
//! rejects the whole change (they are one operator's, edited together).

use std::collections::BTreeMap;
use std::sync::Arc;

use super::{Cache, HashMap, ModelError, Options, Sliced};
use crate::diagnostic::{self, Diagnostic};
use crate::load::docs::{Run, run_addr};
use crate::load::{Docs, Loaded};

/// Objects as one source gave them, with the problems of those it could not read.
#[derive(Default)]
pub struct Input {
    pub loaded: Docs,
    pub diags: Vec<Diagnostic>,
}

/// A cluster object left out of the plan, and why.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Rejected {
    /// `Kind ns/name`.
    pub object: String,
    /// Its errors, one line each.
    pub problems: Vec<String>,
    /// What its first error is (`Problem::reason`: the reason of the Event on it).
    pub reason: &'static str,
    /// Whether its last good version stays in the plan (else none of it does).
    pub last_good_stays: bool,
}

/// The last accepted version of each cluster object, by `Kind ns/name` (kept by the
/// daemon across reloads).
#[derive(Default)]
pub struct LastGood {
    by_name: HashMap<String, Arc<Loaded>>,
    /// Each of them by its address: a reload names only the objects it has not seen
    /// (most change a few of thousands).
    names: HashMap<usize, String>,
    /// The runs of objects last accepted, by address: a run seen again is not read.
    runs: HashMap<usize, Run>,
}

impl LastGood {
    fn get(&self, name: &str) -> Option<&Arc<Loaded>> {
        self.by_name.get(name)
    }

    /// `objects` (one per name) are the last good versions now.
    fn accept(&mut self, objects: &Docs) {
        let at = |o: &Arc<Loaded>| Arc::as_ptr(o) as usize;
        let now: HashMap<usize, &Run> = objects.runs().iter().map(|r| (run_addr(r), r)).collect();
        let mut seen = crate::fasthash::HashSet::default();
        for (k, r) in &now {
            if self.runs.contains_key(k) {
                continue;
            }
            for o in r.iter() {
                seen.insert(at(o));
                if self.names.contains_key(&at(o)) {
                    continue;
                }
                let name = key(o);
                if let Some(old) = self.by_name.insert(name.clone(), o.clone()) {
                    self.names.remove(&at(&old));
                }
                self.names.insert(at(o), name);
            }
        }
        // The objects of runs gone that are in no new run are gone (one replaced by
        // a new version left `names` above).
        let stale: Vec<usize> = self
            .runs
            .keys()
            .filter(|k| !now.contains_key(k))
            .copied()
            .collect();
        for k in stale {
            let run = self.runs.remove(&k).expect("listed");
            for o in run.iter().filter(|o| !seen.contains(&at(o))) {
                if let Some(name) = self.names.remove(&at(o)) {
                    self.by_name.remove(&name);
                }
            }
        }
        self.runs
            .extend(now.into_iter().map(|(k, r)| (k, r.clone())));
    }
}

fn key(l: &Loaded) -> String {
    format!("{} {}/{}", l.kind, l.namespace, l.name)
}

/// Validates files and cluster objects together. A problem in the files rejects the
/// change (`Err`); a cluster object with a problem is replaced by its last good
/// version, or left out, until the rest validates.
pub fn build(
    files: Input,
    cluster: Input,
    last_good: &mut LastGood,
    cache: &mut Cache,
    opts: &Options,
) -> Result<(Sliced, Vec<Rejected>), ModelError> {
    let built = build_in_rounds(files, cluster, last_good, cache, opts);
    cache.reloaded();
    built
}

fn build_in_rounds(
    files: Input,
    cluster: Input,
    last_good: &mut LastGood,
    cache: &mut Cache,
    opts: &Options,
) -> Result<(Sliced, Vec<Rejected>), ModelError> {
    let mut rejected: BTreeMap<String, (Vec<String>, &'static str)> = BTreeMap::new();
    let mut objects: Docs = cluster.loaded;
    // Objects that did not even parse: their last good version, if any, instead.
    let mut instead = Vec::new();
    for d in cluster.diags.iter().filter(|d| d.is_error()) {
        let k = d.origin.resource.clone();
        if !rejected.contains_key(&k)
            && let Some(good) = last_good.get(&k)
        {
            instead.push(good.clone());
        }
        rejected
            .entry(k)
            .or_insert_with(|| (Vec::new(), d.problem.reason()))
            .0
            .push(d.to_string());
    }
    let warnings_in = |diags: &[Diagnostic]| -> Vec<Diagnostic> {
        diags.iter().filter(|d| !d.is_error()).cloned().collect()
    };
    objects.push(instead.into());
    // Each round takes at least one object back to its last good version (once) or
    // out: the loop ends, in at most two rounds per object.
    let mut diags = Vec::new();
    for _ in 0..=2 * objects.len() {
        diags = files.diags.clone();
        diags.extend(warnings_in(&cluster.diags));
        let mut all = files.loaded.clone();
        all.extend(&objects);
        let slices =
            super::slices::build(&all, &mut cache.slices, &mut cache.service_entries, opts);
        diags.extend(cache.slices.diags().cloned());
        diagnostic::sort(&mut diags);
        let errors: Vec<&Diagnostic> = diags.iter().filter(|d| d.is_error()).collect();
        if errors.is_empty() {
            last_good.accept(&objects);
            let rejected = rejected
                .into_iter()
                .map(|(object, (problems, reason))| Rejected {
                    last_good_stays: last_good.get(&object).is_some(),
                    object,
                    problems,
                    reason,
                })
                .collect();
            return Ok((
                Sliced {
                    slices,
                    changes: cache.slices.take_changes(),
                    warnings: diags,
                },
                rejected,
            ));
        }
        let mut progress = false;
        // A round with errors changes the cluster's objects: one run of them again.
        let mut objects_now = objects.to_vec();
        for e in &errors {
            let k = &e.origin.resource;
            let Some(i) = objects_now.iter().position(|o| key(o) == *k) else {
                // A file's problem (or one no object owns): the files' rule.
                return Err(ModelError::Invalid { diagnostics: diags });
            };
            rejected
                .entry(k.clone())
                .or_insert_with(|| (Vec::new(), e.problem.reason()))
                .0
                .push(e.to_string());
            match last_good.get(k) {
                Some(good) if !Arc::ptr_eq(good, &objects_now[i]) => objects_now[i] = good.clone(),
                _ => {
                    objects_now.remove(i);
                }
            }
            progress = true;
        }
        objects = objects_now.into();
        if !progress {
            return Err(ModelError::Invalid { diagnostics: diags });
        }
    }
    Err(ModelError::Invalid { diagnostics: diags })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Two services, a and b, each with its DestinationRule (v0, v1) and its
    /// VirtualService; b's routes to `b_subset` at `b_weight` / rest.
    fn cluster(b_subset: &str, b_weight: u32) -> Vec<serde_json::Value> {
        let mut out = Vec::new();
        for (svc, ip, subset, w) in [("a", 1, "v1", 90), ("b", 2, b_subset, b_weight)] {
            let se = format!(
                "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {{name: {svc}, namespace: team-{svc}}}\nspec:\n  hosts: [{svc}]\n  addresses: [127.10.20.{ip}]\n  ports: [{{number: 80, name: http}}]\n  endpoints:\n  - {{address: 127.0.0.2, labels: {{version: v0}}}}\n  - {{address: 127.0.0.3, labels: {{version: v1}}}}\n"
            );
            let dr = format!(
                "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {{name: {svc}, namespace: team-{svc}}}\nspec:\n  host: {svc}\n  subsets: [{{name: v0, labels: {{version: v0}}}}, {{name: v1, labels: {{version: v1}}}}]\n"
            );
            let vs = format!(
                "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {{name: {svc}-vs, namespace: team-{svc}}}\nspec:\n  hosts: [{svc}]\n  http:\n  - route:\n    - {{destination: {{host: {svc}, subset: v0}}, weight: {}}}\n    - {{destination: {{host: {svc}, subset: {subset}}}, weight: {w}}}\n",
                100 - w
            );
            for doc in [se, dr, vs] {
                out.push(serde_yaml::from_str(&doc).expect("yaml"));
            }
        }
        out
    }

    fn input(objects: &[serde_json::Value]) -> Input {
        let mut diags = Vec::new();
        let loaded = objects
            .iter()
            .filter_map(|o| crate::load::load_object(o, &mut diags))
            .map(Arc::new)
            .collect();
        Input { loaded, diags }
    }

    /// The weights of the service at 127.10.20.`ip`:80 in the model.
    fn weights(v: &Sliced, ip: u8) -> Vec<(String, u32)> {
        let addr = std::net::SocketAddrV4::new([127, 10, 20, ip].into(), 80);
        v.slices
            .iter()
            .flat_map(|s| s.take_model().services)
            .find(|s| s.frontend == addr)
            .map(|s| s.split.iter().map(|w| (w.name.clone(), w.weight)).collect())
            .unwrap_or_default()
    }

    fn build_with(
        cluster_objects: &[serde_json::Value],
        last_good: &mut LastGood,
    ) -> (Sliced, Vec<Rejected>) {
        build(
            Input::default(),
            input(cluster_objects),
            last_good,
            &mut Cache::default(),
            &Options::default(),
        )
        .expect("the rest validates")
    }

    #[test]
    fn a_broken_object_is_rejected_alone_and_its_last_good_version_stays() {
        let mut last_good = LastGood::default();
        // Team b's VirtualService names a subset that does not exist: only it goes.
        let (v, rejected) = build_with(&cluster("v9", 10), &mut last_good);
        assert_eq!(weights(&v, 1), [("v0".into(), 10), ("v1".into(), 90)]);
        assert_eq!(
            weights(&v, 2),
            [("(all)".into(), 1)],
            "no VirtualService: even"
        );
        assert_eq!(rejected.len(), 1, "{rejected:?}");
        assert_eq!(
            (rejected[0].object.as_str(), rejected[0].reason),
            ("VirtualService team-b/b-vs", "SubsetNotFound")
        );
        assert!(!rejected[0].last_good_stays);
        assert!(
            rejected[0].problems[0].contains("v9"),
            "{:?}",
            rejected[0].problems
        );
        // Fixed: it applies and becomes its last good version.
        let (v, rejected) = build_with(&cluster("v1", 30), &mut last_good);
        assert!(rejected.is_empty());
        assert_eq!(weights(&v, 2), [("v0".into(), 70), ("v1".into(), 30)]);
        // Broken again: the last good version (70/30) stays.
        let (v, rejected) = build_with(&cluster("v9", 50), &mut last_good);
        assert_eq!(weights(&v, 2), [("v0".into(), 70), ("v1".into(), 30)]);
        assert_eq!(
            (rejected.len(), rejected[0].last_good_stays),
            (1, true),
            "{rejected:?}"
        );
        // An object that does not even parse: the same.
        let mut objects = cluster("v1", 20);
        objects[5]["spec"]["htttp"] = serde_json::json!([]);
        let (v, rejected) = build_with(&objects, &mut last_good);
        assert_eq!(weights(&v, 2), [("v0".into(), 70), ("v1".into(), 30)]);
        assert_eq!(
            (rejected[0].object.as_str(), rejected[0].reason),
            ("VirtualService team-b/b-vs", "InvalidSchema")
        );
        assert!(rejected[0].problems[0].contains("htttp"), "{rejected:?}");
    }

    /// Objects handed over in runs (some shared with the reload before, some made
    /// anew, an object now and then gone or in another version) are remembered as a
    /// full list of them would be.
    #[test]
    fn last_good_follows_runs_as_a_full_list() {
        let mut rng = fastrand::Rng::with_seed(7);
        let object = |i: usize, v: usize| {
            let o = serde_json::json!({"apiVersion": "networking.istio.io/v1", "kind": "DestinationRule",
                "metadata": {"name": format!("d{i}"), "namespace": "n"}, "spec": {"host": format!("h{v}")}});
            Arc::new(crate::load::load_object(&o, &mut Vec::new()).expect("loads"))
        };
        let mut slots: Vec<Option<Arc<Loaded>>> = (0..12).map(|i| Some(object(i, 0))).collect();
        let mut runs: Vec<(Vec<usize>, Run)> = Vec::new();
        let mut last_good = LastGood::default();
        for step in 0..300 {
            for _ in 0..rng.usize(0..3) {
                let i = rng.usize(..slots.len());
                slots[i] = (rng.u8(..) > 60).then(|| object(i, step));
            }
            let mut docs = Docs::default();
            for (r, part) in slots.chunks(4).enumerate() {
                let part: Vec<Arc<Loaded>> = part.iter().flatten().cloned().collect();
                let ptrs: Vec<usize> = part.iter().map(|o| Arc::as_ptr(o) as usize).collect();
                if rng.u8(..) < 30 || runs.get(r).is_none_or(|(p, _)| *p != ptrs) {
                    runs.truncate(r);
                    runs.push((ptrs, part.into()));
                }
                docs.push(runs[r].1.clone());
            }
            last_good.accept(&docs);
            let want: Vec<(String, usize)> = {
                let mut v: Vec<_> = (slots.iter().flatten())
                    .map(|o| (key(o), Arc::as_ptr(o) as usize))
                    .collect();
                v.sort();
                v
            };
            let mut got: Vec<(String, usize)> = (last_good.by_name.iter())
                .map(|(k, o)| (k.clone(), Arc::as_ptr(o) as usize))
                .collect();
            got.sort();
            assert_eq!(got, want, "step {step}");
            assert_eq!(last_good.names.len(), want.len(), "step {step}");
        }
    }

    #[test]
    fn a_problem_in_the_files_rejects_the_whole_change() {
        let mut files = Vec::new();
        let mut diags = Vec::new();
        crate::load::load_text(
            std::path::Path::new("vs.yaml"),
            "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: f}\nspec:\n  hosts: [a.team-a.svc.cluster.local]\n  http:\n  - route: [{destination: {host: a.team-a.svc.cluster.local, subset: v7}}]\n",
            &mut files,
            &mut diags,
        );
        let result = build(
            Input {
                loaded: files.into_iter().map(Arc::new).collect(),
                diags,
            },
            input(&cluster("v1", 10)),
            &mut LastGood::default(),
            &mut Cache::default(),
            &Options::default(),
        );
        let Err(ModelError::Invalid { diagnostics }) = result else {
            panic!("a file's error rejects the change");
        };
        assert!(
            diagnostics
                .iter()
                .any(|d| d.to_string().starts_with("vs.yaml:"))
        );
    }
}

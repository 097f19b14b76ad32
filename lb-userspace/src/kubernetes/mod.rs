//! The Kubernetes source: `Service`, `EndpointSlice`, Pod labels (a metadata-only
//! watch) and Istio's `VirtualService`, `DestinationRule`, `ServiceEntry`, each
//! listed then watched by kube-runtime's watcher (relists after `410 Gone`,
//! bookmarks, backoff on errors) into a store of lb's own that keeps each object only
//! as lb reads it (store.rs, lean.rs, pod_labels.rs). Any change wakes the daemon,
//! which reads a [`Snapshot`] of the stores and feeds it to the same model → compile →
//! apply path as the files. While the API server cannot be reached the stores keep what they had,
//! so the running plan stays; [`Health`] says since when the source is stale.

pub mod burst;
pub mod catalog;
pub mod crds;
pub mod lasting;
mod lean;
pub mod pod_labels;
mod runs;
pub mod snapshot;
mod store;

use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::SystemTime;

use std::time::Duration;

use futures::StreamExt as _;
use k8s_openapi::api::core::v1::{Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{Api, ApiResource, DynamicObject};
use kube::core::PartialObjectMeta;
use kube::runtime::watcher;
use tokio::sync::Notify;

use crate::model::accept::Rejected;
pub use snapshot::Snapshot;
use snapshot::{Reader, Stores, Touched};

/// The Kubernetes source could not start.
#[derive(Debug, thiserror::Error)]
pub enum KubeError {
    /// No kubeconfig could be read and lb is not in a pod (or the one named is bad).
    #[error("Kubernetes client configuration: {0}")]
    Config(String),
    /// The API server did not answer the first request.
    #[error("the Kubernetes API server at {server}: {source}")]
    Api { server: String, source: kube::Error },
}

/// How to reach the cluster.
#[derive(Clone, Debug, Default)]
pub struct Options {
    /// A kubeconfig file; None: `KUBECONFIG`, `~/.kube/config`, else the pod's
    /// service account.
    pub kubeconfig: Option<PathBuf>,
    /// The cluster's DNS domain (`cluster.local`).
    pub domain: String,
}

/// The Istio kinds lb reads, with their plural names.
const ISTIO_KINDS: [(&str, &str); 3] = [
    ("VirtualService", "virtualservices"),
    ("DestinationRule", "destinationrules"),
    ("ServiceEntry", "serviceentries"),
];
const ISTIO_GROUP: &str = "networking.istio.io";
/// The versions Istio serves its networking API under, preferred first.
const ISTIO_VERSIONS: [&str; 3] = ["v1", "v1beta1", "v1alpha3"];

/// What the source has read and whether it is current, per kind.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct Health {
    pub kinds: Vec<KindHealth>,
    /// The Istio API version read (None: the cluster serves no networking.istio.io).
    pub istio_version: Option<String>,
}

#[derive(Clone, Debug, serde::Serialize)]
pub struct KindHealth {
    pub kind: &'static str,
    pub objects: usize,
    /// Unix ms of the last event or successful list.
    pub last_sync_ms: Option<u64>,
    /// Since when the watch fails (unix ms), and its last error: the store keeps what
    /// it had meanwhile.
    pub stale_since_ms: Option<u64>,
    pub error: Option<String>,
}

impl Health {
    /// Since when the oldest failing watch fails, if any does.
    pub fn stale_since_ms(&self) -> Option<u64> {
        self.kinds.iter().filter_map(|k| k.stale_since_ms).min()
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// The running watches and their stores.
pub struct KubeSource {
    stores: Stores,
    /// What the watches changed since the last snapshot.
    touched: Arc<Mutex<Touched>>,
    changed: Arc<Notify>,
    health: Arc<Mutex<Health>>,
    domain: String,
    /// Posts Events on rejected objects (needs `create` on events; a refusal is logged).
    recorder: kube::runtime::events::Recorder,
    /// What the last snapshot read.
    reader: Mutex<Reader>,
    /// Rejections not yet posted as Events.
    lasting: Mutex<lasting::Lasting>,
}

/// An Istio kind as the cluster serves it.
pub fn istio_resource(kind: &str, plural: &str, version: &str) -> ApiResource {
    ApiResource {
        group: ISTIO_GROUP.into(),
        version: version.into(),
        api_version: format!("{ISTIO_GROUP}/{version}"),
        kind: kind.into(),
        plural: plural.into(),
    }
}

impl KubeSource {
    /// Connects, finds which Istio version the cluster serves, and starts a watch per
    /// kind (each retrying with backoff on its own).
    pub async fn start(opts: &Options) -> Result<Self, KubeError> {
        let config = match &opts.kubeconfig {
            Some(path) => {
                let kc = kube::config::Kubeconfig::read_from(path)
                    .map_err(|e| KubeError::Config(format!("{}: {e}", path.display())))?;
                kube::Config::from_custom_kubeconfig(kc, &Default::default())
                    .await
                    .map_err(|e| KubeError::Config(format!("{}: {e}", path.display())))?
            }
            None => kube::Config::infer()
                .await
                .map_err(|e| KubeError::Config(e.to_string()))?,
        };
        let server = config.cluster_url.to_string();
        let client = kube::Client::try_from(config).map_err(|source| KubeError::Api {
            server: server.clone(),
            source,
        })?;
        let groups = client
            .list_api_groups()
            .await
            .map_err(|source| KubeError::Api { server, source })?;
        let istio_version = groups
            .groups
            .iter()
            .find(|g| g.name == ISTIO_GROUP)
            .and_then(|g| {
                ISTIO_VERSIONS
                    .into_iter()
                    .find(|v| g.versions.iter().any(|s| s.version == *v))
            });
        if istio_version.is_none() {
            tracing::warn!(
                "the cluster serves no {ISTIO_GROUP} API: no VirtualService, DestinationRule or ServiceEntry will be read (install Istio's CRDs, or `lb crds | kubectl apply -f -`, then restart lb)"
            );
        }
        let changed = Arc::new(Notify::new());
        let mut kinds = vec!["Service", "EndpointSlice", "Pod"];
        if istio_version.is_some() {
            kinds.extend(ISTIO_KINDS.iter().map(|(k, _)| *k));
        }
        let health = Arc::new(Mutex::new(Health {
            kinds: kinds
                .iter()
                .map(|kind| KindHealth {
                    kind,
                    objects: 0,
                    last_sync_ms: None,
                    stale_since_ms: None,
                    error: None,
                })
                .collect(),
            istio_version: istio_version.map(str::to_string),
        }));
        let touched = Arc::new(Mutex::new(Touched::default()));
        let watch = |kind: &'static str| Watch {
            kind,
            touched: touched.clone(),
            changed: changed.clone(),
            health: health.clone(),
        };
        let (services, w) = store::store(lean::service);
        let api: Api<Service> = Api::all(client.clone());
        watch("Service").spawn(w, move || watcher(api.clone(), Default::default()));
        let (slices, w) = store::store(lean::slice);
        let api: Api<EndpointSlice> = Api::all(client.clone());
        watch("EndpointSlice").spawn(w, move || watcher(api.clone(), Default::default()));
        let (pods, w) = pod_labels::store();
        // Labels only: a metadata-only list and watch.
        let api: Api<PartialObjectMeta<Pod>> = Api::all(client.clone());
        watch("Pod").spawn(w, move || watcher(api.clone(), Default::default()));
        let mut istio = Vec::new();
        if let Some(version) = istio_version {
            for (kind, plural) in ISTIO_KINDS {
                let resource = istio_resource(kind, plural, version);
                // Each object typed as it arrives (its JSON tree is not kept).
                let (store, w) = store::store(snapshot::Versioned::of);
                istio.push((kind, store));
                let api = Api::<DynamicObject>::all_with(client.clone(), &resource);
                watch(kind).spawn(w, move || watcher(api.clone(), Default::default()));
            }
        }
        let reporter = kube::runtime::events::Reporter {
            controller: "lb".into(),
            instance: std::env::var("NODE_NAME").ok(),
        };
        Ok(Self {
            stores: Stores {
                services,
                slices,
                pods,
                istio,
            },
            touched,
            changed,
            domain: opts.domain.clone(),
            recorder: kube::runtime::events::Recorder::new(client, reporter),
            health,
            reader: Mutex::default(),
            lasting: Mutex::default(),
        })
    }

    /// Returns once every kind has been listed (the first plan must not see services
    /// without their endpoints).
    pub async fn ready(&self) {
        let s = &self.stores;
        let _ = s.services.wait_until_ready().await;
        let _ = s.slices.wait_until_ready().await;
        let _ = s.pods.wait_until_ready().await;
        for (_, store) in &s.istio {
            let _ = store.wait_until_ready().await;
        }
    }

    /// Returns at the next change of any store.
    pub async fn changed(&self) {
        self.changed.notified().await;
    }

    pub fn health(&self) -> Health {
        let mut h = self.health.lock().map(|h| h.clone()).unwrap_or_default();
        let s = &self.stores;
        let counts = [s.services.len(), s.slices.len(), s.pods.len()]
            .into_iter()
            .chain(s.istio.iter().map(|(_, store)| store.len()));
        for (k, n) in h.kinds.iter_mut().zip(counts) {
            k.objects = n;
        }
        h
    }

    /// Whether the watches changed anything since the last snapshot (a wake-up can
    /// come for events a snapshot already took: they came while it was made).
    pub fn pending(&self) -> bool {
        !self
            .touched
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .is_empty()
    }

    /// The stores' objects now: Istio objects as they are, and a ServiceEntry per
    /// Service with its endpoints, read again where the watches changed something.
    pub fn snapshot(&self) -> Snapshot {
        let touched = self
            .touched
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        self.reader
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .snapshot(&self.stores, touched, &self.domain)
    }
}

impl KubeSource {
    /// Notes the objects a reload rejected (`before`: the last reload's); an Event
    /// is posted on each whose rejection holds ([`Self::post_lasting`]).
    pub fn report_rejected(&self, rejected: &[Rejected], before: &[Rejected]) {
        self.lasting
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .rejected(rejected, before, tokio::time::Instant::now());
    }

    /// Posts a Warning Event on each object whose rejection has held for
    /// [`lasting::AFTER`], so `kubectl describe` shows its owner why lb left it out:
    /// its reason names the problem (`SubsetNotFound`, ...), its note the lines.
    pub fn post_lasting(&self) {
        let due = self
            .lasting
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .due(tokio::time::Instant::now());
        if due.is_empty() {
            return;
        }
        let istio_version = self
            .health
            .lock()
            .ok()
            .and_then(|h| h.istio_version.clone())
            .unwrap_or_else(|| ISTIO_VERSIONS[0].into());
        for r in &due {
            let Some((kind, rest)) = r.object.split_once(' ') else {
                continue;
            };
            let Some((ns, name)) = rest.split_once('/') else {
                continue;
            };
            let api_version = if kind == "Service" {
                "v1".to_string()
            } else {
                format!("{ISTIO_GROUP}/{istio_version}")
            };
            let reference = k8s_openapi::api::core::v1::ObjectReference {
                api_version: Some(api_version),
                kind: Some(kind.into()),
                namespace: Some(ns.into()),
                name: Some(name.into()),
                ..Default::default()
            };
            let mut note = r.problems.join("; ");
            // The API's bound on a note.
            note.truncate(note.char_indices().nth(1000).map_or(note.len(), |(i, _)| i));
            let event = kube::runtime::events::Event {
                type_: kube::runtime::events::EventType::Warning,
                reason: r.reason.into(),
                note: Some(note),
                action: if r.last_good_stays {
                    "KeptLastGood".into()
                } else {
                    "LeftOut".into()
                },
                secondary: None,
            };
            let recorder = self.recorder.clone();
            let object = r.object.clone();
            tokio::spawn(async move {
                if let Err(e) = recorder.publish(&event, &reference).await {
                    tracing::warn!(%object, "posting an Event on the rejected object: {e}");
                }
            });
        }
    }
}

/// One kind's watch: runs its stream into its store, wakes the daemon on every event
/// and keeps the kind's health.
struct Watch {
    kind: &'static str,
    touched: Arc<Mutex<Touched>>,
    changed: Arc<Notify>,
    health: Arc<Mutex<Health>>,
}

/// The first wait after a watch fails, the longest, and how long a watch must have
/// listed successfully for the wait to start over (client-go's reflector's).
const BACKOFF_FIRST: Duration = Duration::from_millis(800);
const BACKOFF_MAX: Duration = Duration::from_secs(30);

impl Watch {
    /// Runs `watch()` (kube-runtime's list-then-watch, which relists by itself after
    /// `410 Gone`) into `store`. When it fails, it is started again — a fresh list —
    /// after a jittered, doubling wait, as client-go's reflector does: the store keeps
    /// what it had meanwhile, and the new list tells when the kind is current again.
    fn spawn<K, T, S>(self, mut store: store::Writer<K, T>, watch: impl Fn() -> S + Send + 'static)
    where
        K: kube::Resource + Send + 'static,
        T: Send + Sync + 'static,
        S: futures::Stream<Item = Result<watcher::Event<K>, watcher::Error>> + Send + 'static,
    {
        tokio::spawn(async move {
            let mut wait = BACKOFF_FIRST;
            loop {
                let stream = watch();
                futures::pin_mut!(stream);
                while let Some(event) = stream.next().await {
                    match event {
                        Ok(event) => {
                            store.apply_watcher_event(&event);
                            // After the store: a snapshot that takes this finds it there.
                            self.touched
                                .lock()
                                .unwrap_or_else(PoisonError::into_inner)
                                .event(self.kind, &event);
                            self.record(None);
                            // Init and InitApply only buffer (the store swaps at
                            // InitDone).
                            if matches!(
                                event,
                                watcher::Event::Apply(_)
                                    | watcher::Event::Delete(_)
                                    | watcher::Event::InitDone
                            ) {
                                self.changed.notify_one();
                            }
                            if matches!(event, watcher::Event::InitDone) {
                                wait = BACKOFF_FIRST;
                            }
                        }
                        Err(e) => {
                            self.record(Some(e.to_string()));
                            break;
                        }
                    }
                }
                // Up to half again, so a thousand nodes do not come back at once.
                let jitter = wait.mul_f64(fastrand::f64() * 0.5);
                tokio::time::sleep(wait + jitter).await;
                wait = (wait * 2).min(BACKOFF_MAX);
            }
        });
    }

    /// Records an event (`error` None) or a failure of the watch.
    fn record(&self, error: Option<String>) {
        let Ok(mut h) = self.health.lock() else {
            return;
        };
        let Some(k) = h.kinds.iter_mut().find(|k| k.kind == self.kind) else {
            return;
        };
        match error {
            None => {
                k.last_sync_ms = Some(now_ms());
                k.stale_since_ms = None;
                k.error = None;
            }
            Some(e) => {
                if k.stale_since_ms.is_none() {
                    tracing::warn!(
                        kind = self.kind,
                        "watch failing, the running plan stays: {e}"
                    );
                }
                k.stale_since_ms.get_or_insert_with(now_ms);
                k.error = Some(e);
            }
        }
    }
}

#[cfg(test)]
mod tests;

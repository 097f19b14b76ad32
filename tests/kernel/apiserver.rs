//! A fake Kubernetes API server on loopback, real HTTP, for lb's Kubernetes source:
//! API discovery (`/apis`), lists with a resourceVersion, `?watch=true` streams of
//! ADDED / MODIFIED / DELETED events with BOOKMARKs, `410 Gone` for a watch from a
//! compacted resourceVersion, Events posted by lb, and an outage on demand (every
//! connection dropped, the port closed, then served again).

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full, StreamBody};
use hyper::body::Frame;
use serde_json::{Value, json};
use tokio::sync::{broadcast, watch};

/// The collections lb reads: (API path prefix, kind).
const COLLECTIONS: [(&str, &str); 6] = [
    ("/api/v1/services", "Service"),
    ("/api/v1/pods", "Pod"),
    ("/apis/discovery.k8s.io/v1/endpointslices", "EndpointSlice"),
    (
        "/apis/networking.istio.io/v1/virtualservices",
        "VirtualService",
    ),
    (
        "/apis/networking.istio.io/v1/destinationrules",
        "DestinationRule",
    ),
    (
        "/apis/networking.istio.io/v1/serviceentries",
        "ServiceEntry",
    ),
];

fn collection_of(kind: &str) -> &'static str {
    COLLECTIONS
        .iter()
        .find(|(_, k)| *k == kind)
        .map(|(p, _)| *p)
        .unwrap_or_else(|| panic!("the fake API server does not serve {kind}"))
}

#[derive(Default)]
struct State {
    /// The last resourceVersion given out.
    rv: u64,
    /// (kind, namespace, name) -> object.
    objects: BTreeMap<(String, String, String), Value>,
    /// Every change: (resourceVersion, kind, type, object).
    history: Vec<(u64, String, &'static str, Value)>,
    /// Watches from a resourceVersion below this get 410 Gone.
    compacted: u64,
    /// Events lb created.
    events: Vec<Value>,
    /// Requests served, by path (lists and watches).
    requests: Vec<String>,
}

/// The server: its state, and the runtime it runs on (dropped with it).
pub struct FakeApi {
    pub addr: SocketAddr,
    state: Arc<Mutex<State>>,
    changes: broadcast::Sender<Arc<Change>>,
    up: watch::Sender<bool>,
    /// Tells open watch streams to end (a compaction: they must come back).
    restart_watches: watch::Sender<u64>,
    rt: tokio::runtime::Runtime,
}

impl FakeApi {
    /// Serves `objects` (Kubernetes objects as JSON) on a free loopback port.
    pub fn start(objects: &[Value]) -> FakeApi {
        Self::start_on(
            std::net::TcpListener::bind("127.0.0.1:0").expect("bind"),
            objects,
        )
    }

    /// Serves `objects` on `listener` (bound in another network namespace, say).
    pub fn start_on(listener: std::net::TcpListener, objects: &[Value]) -> FakeApi {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("runtime");
        listener.set_nonblocking(true).expect("nonblocking");
        let listener = {
            let _guard = rt.enter();
            tokio::net::TcpListener::from_std(listener).expect("listener")
        };
        let addr = listener.local_addr().expect("addr");
        let (changes, _) = broadcast::channel(4096);
        let (up, _) = watch::channel(true);
        let (restart_watches, _) = watch::channel(0);
        let api = FakeApi {
            addr,
            state: Default::default(),
            changes,
            up,
            restart_watches,
            rt,
        };
        for o in objects {
            api.apply(o.clone());
        }
        api.serve(listener);
        api
    }

    fn serve(&self, listener: tokio::net::TcpListener) {
        let server = Server {
            state: self.state.clone(),
            changes: self.changes.clone(),
            restart: self.restart_watches.subscribe(),
        };
        let mut up = self.up.subscribe();
        self.rt.spawn(async move {
            loop {
                let accepted = tokio::select! {
                    a = listener.accept() => a,
                    _ = up.wait_for(|u| !*u) => return,
                };
                let Ok((stream, _)) = accepted else { continue };
                let server = server.clone();
                let mut up = up.clone();
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |req| {
                        let server = server.clone();
                        async move { Ok::<_, Infallible>(server.answer(req).await) }
                    });
                    let conn = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), svc);
                    // An outage drops every connection, watches included.
                    tokio::select! {
                        _ = conn => {}
                        _ = up.wait_for(|u| !*u) => {}
                    }
                });
            }
        });
    }

    /// Creates or replaces an object (ADDED or MODIFIED to watchers).
    pub fn apply(&self, object: Value) {
        self.apply_all(vec![object]);
    }

    /// Creates or replaces objects together, as a burst of writes the API server's
    /// watch cache streams back to back.
    pub fn apply_all(&self, objects: Vec<Value>) {
        let mut s = self.state.lock().expect("state");
        let mut changes = Vec::with_capacity(objects.len());
        for mut object in objects {
            let kind = object["kind"].as_str().expect("kind").to_string();
            let ns = object["metadata"]["namespace"]
                .as_str()
                .unwrap_or("default")
                .to_string();
            let name = object["metadata"]["name"]
                .as_str()
                .expect("name")
                .to_string();
            s.rv += 1;
            let rv = s.rv;
            object["metadata"]["resourceVersion"] = rv.to_string().into();
            object["metadata"]["namespace"] = ns.clone().into();
            let key = (kind.clone(), ns, name);
            let kind_of_change = if s.objects.contains_key(&key) {
                "MODIFIED"
            } else {
                "ADDED"
            };
            changes.push(Change::new(rv, &kind, kind_of_change, &object));
            s.objects.insert(key, object.clone());
            s.history.push((rv, kind, kind_of_change, object));
        }
        // Sent together: each watch writes what waits as one.
        for c in changes {
            let _ = self.changes.send(c);
        }
    }

    /// Deletes an object (DELETED to watchers).
    pub fn delete(&self, kind: &str, ns: &str, name: &str) {
        let mut s = self.state.lock().expect("state");
        let Some(mut object) =
            s.objects
                .remove(&(kind.to_string(), ns.to_string(), name.to_string()))
        else {
            return;
        };
        s.rv += 1;
        let rv = s.rv;
        object["metadata"]["resourceVersion"] = rv.to_string().into();
        let _ = self.changes.send(Change::new(rv, kind, "DELETED", &object));
        s.history.push((rv, kind.to_string(), "DELETED", object));
    }

    /// The object of `kind` named `ns/name`, to edit and apply again.
    pub fn get(&self, kind: &str, ns: &str, name: &str) -> Value {
        self.state.lock().expect("state").objects
            [&(kind.to_string(), ns.to_string(), name.to_string())]
            .clone()
    }

    /// Forgets history (as etcd compaction does) and ends every watch: watchers that
    /// come back from their old resourceVersion get 410 Gone and must list again.
    pub fn compact(&self) {
        let rv = {
            let mut s = self.state.lock().expect("state");
            // A new revision (as any write would make) that every watcher is behind.
            s.rv += 1;
            s.compacted = s.rv;
            s.history.clear();
            s.rv
        };
        self.restart_watches.send_replace(rv);
    }

    /// An outage: the port closes and every connection drops.
    pub fn down(&self) {
        self.up.send_replace(false);
    }

    /// Back, on the same port.
    pub fn up(&self) {
        self.up.send_replace(true);
        let listener = self
            .rt
            .block_on(async {
                // The old listener's task may still hold the port a moment.
                for _ in 0..50 {
                    if let Ok(l) = tokio::net::TcpListener::bind(self.addr).await {
                        return Some(l);
                    }
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                None
            })
            .expect("rebinding the fake API server's port");
        self.serve(listener);
    }

    /// Events lb posted.
    pub fn events(&self) -> Vec<Value> {
        self.state.lock().expect("state").events.clone()
    }

    /// How many list requests lb made for `kind` (a relist shows here).
    pub fn lists_of(&self, kind: &str) -> usize {
        let path = collection_of(kind);
        self.state
            .lock()
            .expect("state")
            .requests
            .iter()
            .filter(|r| r.starts_with(path) && !r.contains("watch=true"))
            .count()
    }

    /// A kubeconfig that points at this server.
    pub fn kubeconfig(&self) -> String {
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: fake\n  cluster: {{server: \"http://{}\"}}\nusers:\n- name: fake\n  user: {{token: fake-token}}\ncontexts:\n- name: fake\n  context: {{cluster: fake, user: fake}}\ncurrent-context: fake\n",
            self.addr
        )
    }
}

type Body = http_body_util::combinators::BoxBody<Bytes, Infallible>;

#[derive(Clone)]
struct Server {
    state: Arc<Mutex<State>>,
    changes: broadcast::Sender<Arc<Change>>,
    restart: watch::Receiver<u64>,
}

/// A change as every watch of its kind sends it: written out once.
struct Change {
    rv: u64,
    kind: String,
    line: Bytes,
}

impl Change {
    fn new(rv: u64, kind: &str, t: &str, object: &Value) -> Arc<Change> {
        Arc::new(Change {
            rv,
            kind: kind.to_string(),
            line: watch_line(t, object),
        })
    }
}

/// A watch event: one line of JSON.
fn watch_line(t: &str, object: &Value) -> Bytes {
    #[derive(serde::Serialize)]
    struct Event<'a> {
        #[serde(rename = "type")]
        t: &'a str,
        object: &'a Value,
    }
    let mut line = serde_json::to_vec(&Event { t, object }).expect("json");
    line.push(b'\n');
    line.into()
}

fn json_response(status: u16, v: &Value) -> hyper::Response<Body> {
    json_body(status, v.to_string().into_bytes())
}

fn json_body(status: u16, body: Vec<u8>) -> hyper::Response<Body> {
    let mut r = hyper::Response::new(Full::new(Bytes::from(body)).boxed());
    *r.status_mut() = hyper::StatusCode::from_u16(status).expect("status");
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    r
}

fn query(uri: &http::Uri) -> BTreeMap<String, String> {
    uri.query()
        .unwrap_or("")
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

#[derive(serde::Serialize)]
#[serde(rename_all = "camelCase")]
struct List<'a> {
    api_version: &'static str,
    kind: String,
    metadata: ListMeta,
    items: Vec<&'a Value>,
}

#[derive(serde::Serialize)]
#[serde(rename_all = "camelCase")]
struct ListMeta {
    resource_version: String,
    #[serde(rename = "continue", skip_serializing_if = "String::is_empty")]
    continue_: String,
}

/// A `continue` token: the list's resourceVersion and the last key given, in hex
/// (a query string carries it as it is).
fn to_token(rv: u64, ns: &str, name: &str) -> String {
    let hex = |s: &str| s.bytes().map(|b| format!("{b:02x}")).collect::<String>();
    format!("{rv}-{}-{}", hex(ns), hex(name))
}

fn from_token(token: &str) -> Option<(u64, String, String)> {
    let mut parts = token.split('-');
    let rv = parts.next()?.parse().ok()?;
    let unhex = |h: &str| -> Option<String> {
        let bytes: Option<Vec<u8>> = (0..h.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(h.get(i..i + 2)?, 16).ok())
            .collect();
        String::from_utf8(bytes?).ok()
    };
    Some((rv, unhex(parts.next()?)?, unhex(parts.next()?)?))
}

fn gone() -> Value {
    json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
           "message": "too old resource version", "reason": "Expired", "code": 410})
}

impl Server {
    async fn answer(&self, req: hyper::Request<hyper::body::Incoming>) -> hyper::Response<Body> {
        let path = req.uri().path().to_string();
        self.state
            .lock()
            .expect("state")
            .requests
            .push(req.uri().to_string());
        if req.method() == hyper::Method::POST && path.ends_with("/events") {
            let body = req.into_body().collect().await.map(|b| b.to_bytes());
            let event: Value = body
                .ok()
                .and_then(|b| serde_json::from_slice(&b).ok())
                .unwrap_or_default();
            self.state.lock().expect("state").events.push(event.clone());
            return json_response(201, &event);
        }
        if path == "/apis" {
            return json_response(
                200,
                &json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": [
                    {"name": "discovery.k8s.io", "versions": [{"groupVersion": "discovery.k8s.io/v1", "version": "v1"}],
                     "preferredVersion": {"groupVersion": "discovery.k8s.io/v1", "version": "v1"}},
                    {"name": "networking.istio.io", "versions": [
                        {"groupVersion": "networking.istio.io/v1", "version": "v1"},
                        {"groupVersion": "networking.istio.io/v1beta1", "version": "v1beta1"}],
                     "preferredVersion": {"groupVersion": "networking.istio.io/v1", "version": "v1"}}]}),
            );
        }
        let Some((_, kind)) = COLLECTIONS.iter().find(|(p, _)| path == *p) else {
            return json_response(
                404,
                &json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "NotFound", "code": 404}),
            );
        };
        let q = query(req.uri());
        if q.get("watch").is_some_and(|w| w == "true" || w == "1") {
            let from: u64 = q
                .get("resourceVersion")
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
            return self.watch(kind, from);
        }
        self.list(kind, &q)
    }

    /// A list of `kind` as the API server pages it: at most `limit` objects (all if
    /// none), in key order from after the `continue` token's key, with a token for
    /// the rest. Every page carries the first page's resourceVersion (a change
    /// between pages comes again in the watch from it). Written out from the state as
    /// it is, copying no object.
    fn list(&self, kind: &str, q: &BTreeMap<String, String>) -> hyper::Response<Body> {
        let s = self.state.lock().expect("state");
        let (rv, after) = match q.get("continue").and_then(|t| from_token(t)) {
            Some((rv, ns, name)) => (rv, Some((kind.to_string(), ns, name))),
            None => (s.rv, None),
        };
        let start = match &after {
            Some(key) => std::ops::Bound::Excluded(key.clone()),
            None => std::ops::Bound::Included((kind.to_string(), String::new(), String::new())),
        };
        let limit = q
            .get("limit")
            .and_then(|l| l.parse().ok())
            .unwrap_or(usize::MAX);
        let mut page = s
            .objects
            .range((start, std::ops::Bound::Unbounded))
            .take_while(|((k, _, _), _)| k == kind);
        let entries: Vec<_> = page.by_ref().take(limit).collect();
        let token = match (page.next(), entries.last()) {
            (Some(_), Some(((_, ns, name), _))) => to_token(rv, ns, name),
            _ => String::new(),
        };
        let items = entries.into_iter().map(|(_, v)| v).collect();
        let list = List {
            api_version: "v1",
            kind: format!("{kind}List"),
            metadata: ListMeta {
                resource_version: rv.to_string(),
                continue_: token,
            },
            items,
        };
        json_body(200, serde_json::to_vec(&list).expect("a list serializes"))
    }

    /// A watch stream of `kind` from resourceVersion `from`: what happened since, then
    /// every change as it comes, with a BOOKMARK each second.
    fn watch(&self, kind: &str, from: u64) -> hyper::Response<Body> {
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, Infallible>>(64);
        let line = |t: &str, o: &Value| Ok(Frame::data(watch_line(t, o)));
        let (backlog, rv, compacted) = {
            let s = self.state.lock().expect("state");
            let backlog: Vec<(&'static str, Value)> = s
                .history
                .iter()
                .filter(|(rv, k, _, _)| *rv > from && k == kind)
                .map(|(_, _, t, o)| (*t, o.clone()))
                .collect();
            (backlog, s.rv, s.compacted)
        };
        let mut changes = self.changes.subscribe();
        let mut restart = self.restart.clone();
        restart.mark_unchanged();
        let kind = kind.to_string();
        tokio::spawn(async move {
            if from < compacted {
                let _ = tx.send(line("ERROR", &gone())).await;
                return;
            }
            for (t, o) in &backlog {
                if tx.send(line(t, o)).await.is_err() {
                    return;
                }
            }
            let mut last = rv;
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            loop {
                tokio::select! {
                    c = changes.recv() => {
                        // With what else is waiting: a burst goes out as one write.
                        let mut lines = Vec::new();
                        let mut next = c;
                        loop {
                            match next {
                                Ok(c) if c.kind == kind && c.rv > from => {
                                    last = c.rv;
                                    lines.extend_from_slice(&c.line);
                                }
                                Ok(_) => {}
                                Err(_) => return,
                            }
                            next = match changes.try_recv() {
                                Err(broadcast::error::TryRecvError::Empty) => break,
                                Ok(c) => Ok(c),
                                Err(_) => return,
                            };
                        }
                        if !lines.is_empty() && tx.send(Ok(Frame::data(lines.into()))).await.is_err() {
                            return;
                        }
                    }
                    _ = tick.tick() => {
                        let bookmark = json!({"kind": kind, "apiVersion": "v1",
                            "metadata": {"resourceVersion": last.to_string()}});
                        if tx.send(line("BOOKMARK", &bookmark)).await.is_err() { return; }
                    }
                    _ = restart.changed() => return,
                }
            }
        });
        let body = StreamBody::new(tokio_stream_from(rx));
        let mut r = hyper::Response::new(body.boxed());
        r.headers_mut().insert(
            http::header::CONTENT_TYPE,
            http::HeaderValue::from_static("application/json"),
        );
        r
    }
}

/// An mpsc receiver as a stream (what tokio-stream's wrapper does).
fn tokio_stream_from<T>(
    mut rx: tokio::sync::mpsc::Receiver<T>,
) -> impl futures::Stream<Item = T> + Send + Sync + 'static
where
    T: Send + 'static,
{
    futures::stream::poll_fn(move |cx| rx.poll_recv(cx))
}

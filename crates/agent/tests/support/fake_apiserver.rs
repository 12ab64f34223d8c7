//! A FAKE Kubernetes API server for tests: NOT a kube-apiserver, just enough of the Node API
//! for weftd's `kubernetes` datastore (no real kube-apiserver is installed here).
//!
//! Plain HTTP on 127.0.0.1, no authentication. It serves:
//! - `GET /api/v1/nodes` (list, with `metadata.resourceVersion`),
//! - `GET /api/v1/nodes?watch=true&resourceVersion=N...` (JSON lines `ADDED`/`MODIFIED`/
//!   `DELETED`, an `ERROR` 410 for a compacted version, one `BOOKMARK` after the backlog when
//!   `allowWatchBookmarks=true`, ends after `timeoutSeconds`),
//! - `GET /api/v1/nodes/{name}`, `PATCH /api/v1/nodes/{name}` (JSON merge patch only).
//!
//! Anything else gets a 404 and is recorded in [`FakeApiServer::unknown_requests`]. Tests
//! change nodes through the in-process methods (`put_node`, `patch_node`, `delete_node`).

use axum::body::{Body, Bytes};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::{json, Value};
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::broadcast;
use tokio::task::JoinHandle;

/// What watch streams receive.
#[derive(Clone, Debug)]
enum Msg {
    /// One JSON line.
    Event(String),
    /// End every open watch (like the server's `timeoutSeconds`, or a restart).
    Close,
}

#[derive(Default)]
struct Store {
    /// Last resource version handed out.
    rv: u64,
    nodes: BTreeMap<String, Value>,
    /// Every event after `compacted`, as (resource version, JSON line).
    history: Vec<(u64, String)>,
    /// Watches from a version older than this get 410 Gone.
    compacted: u64,
    /// Between `stop` and `restart`: requests still arriving on open connections get 503.
    stopped: bool,
    /// `GET /api/v1/nodes/{name}` answers 403 Forbidden for this user (RBAC taken away).
    forbidden_user: Option<String>,
}

struct Inner {
    store: Mutex<Store>,
    events: broadcast::Sender<Msg>,
    requests: Mutex<Vec<String>>,
    unknown: Mutex<Vec<String>>,
}

/// The FAKE API server; stopped on drop.
pub struct FakeApiServer {
    inner: Arc<Inner>,
    addr: SocketAddr,
    task: Option<JoinHandle<()>>,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
}

type Shared = Arc<Inner>;

impl FakeApiServer {
    /// Starts on a free port of 127.0.0.1.
    pub async fn start() -> FakeApiServer {
        let inner = Arc::new(Inner {
            store: Mutex::new(Store::default()),
            events: broadcast::channel(1024).0,
            requests: Mutex::new(Vec::new()),
            unknown: Mutex::new(Vec::new()),
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mut server = FakeApiServer {
            inner,
            addr,
            task: None,
            shutdown: None,
        };
        server.serve(listener);
        server
    }

    fn serve(&mut self, listener: tokio::net::TcpListener) {
        let app = Router::new()
            .route("/api/v1/nodes", get(list_or_watch))
            .route("/api/v1/nodes/{name}", get(get_node).patch(patch_node))
            .fallback(unknown)
            .with_state(self.inner.clone());
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        self.shutdown = Some(tx);
        self.task = Some(tokio::spawn(async move {
            axum::serve(listener, app)
                .with_graceful_shutdown(async {
                    let _ = rx.await;
                })
                .await
                .unwrap();
        }));
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// A kubeconfig for this server (no credentials).
    pub fn kubeconfig(&self) -> String {
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: fake\n  cluster:\n    server: {}\n\
             users:\n- name: fake\n  user: {{}}\ncontexts:\n- name: fake\n  context:\n    \
             cluster: fake\n    user: fake\ncurrent-context: fake\n",
            self.url()
        )
    }

    /// Stops answering: ends open watches, closes idle connections and the listener, and
    /// waits until the port is free. The nodes stay (and can be changed meanwhile).
    pub async fn stop(&mut self) {
        {
            // Under the store lock, like watch subscriptions: a watch either gets the Close
            // or sees `stopped`.
            let mut s = self.inner.store.lock().unwrap();
            s.stopped = true;
            let _ = self.inner.events.send(Msg::Close);
        }
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(task) = self.task.take() {
            if tokio::time::timeout(Duration::from_secs(5), task)
                .await
                .is_err()
            {
                panic!("FAKE apiserver did not shut down within 5s");
            }
        }
    }

    /// Serves again on the same port, with the same nodes.
    pub async fn restart(&mut self) {
        self.stop().await;
        let listener = tokio::net::TcpListener::bind(self.addr).await.unwrap();
        self.inner.store.lock().unwrap().stopped = false;
        self.serve(listener);
    }

    /// Creates or replaces a node (`ADDED` or `MODIFIED`).
    pub fn put_node(&self, node: Value) {
        let name = node["metadata"]["name"].as_str().unwrap().to_string();
        let mut s = self.inner.store.lock().unwrap();
        let kind = if s.nodes.contains_key(&name) {
            "MODIFIED"
        } else {
            "ADDED"
        };
        let mut node = node;
        node["apiVersion"] = json!("v1");
        node["kind"] = json!("Node");
        commit(&mut s, &self.inner.events, kind, &name, node);
    }

    /// Applies a JSON merge patch to a node, as `kubectl patch --type merge` would.
    pub fn patch_node(&self, name: &str, patch: Value) {
        let mut s = self.inner.store.lock().unwrap();
        let mut node = s.nodes.get(name).expect("node exists").clone();
        merge(&mut node, &patch);
        commit(&mut s, &self.inner.events, "MODIFIED", name, node);
    }

    pub fn delete_node(&self, name: &str) {
        let mut s = self.inner.store.lock().unwrap();
        let mut node = s.nodes.remove(name).expect("node exists");
        s.rv += 1;
        let rv = s.rv;
        node["metadata"]["resourceVersion"] = json!(rv.to_string());
        let line = event_line("DELETED", &node);
        s.history.push((rv, line.clone()));
        let _ = self.inner.events.send(Msg::Event(line));
    }

    pub fn node(&self, name: &str) -> Option<Value> {
        self.inner.store.lock().unwrap().nodes.get(name).cloned()
    }

    /// Forgets the event history: watches resuming from any version handed out so far get
    /// 410 Gone. (The version moves on by one, as changes to other resources would make it.)
    pub fn compact(&self) {
        let mut s = self.inner.store.lock().unwrap();
        s.rv += 1;
        s.compacted = s.rv;
        s.history.clear();
    }

    /// Ends every open watch, as the server's `timeoutSeconds` does.
    pub fn close_watches(&self) {
        let _s = self.inner.store.lock().unwrap();
        let _ = self.inner.events.send(Msg::Close);
    }

    /// Answers `GET` of a node with 403 Forbidden, worded as kube-apiserver words it, as if
    /// `user`'s ClusterRoleBinding had been removed (`None`: allowed again).
    pub fn forbid(&self, user: Option<&str>) {
        self.inner.store.lock().unwrap().forbidden_user = user.map(str::to_string);
    }

    /// Every request so far, as `METHOD /path?query`.
    pub fn requests(&self) -> Vec<String> {
        self.inner.requests.lock().unwrap().clone()
    }

    /// Requests this fake does not implement (answered with 404).
    pub fn unknown_requests(&self) -> Vec<String> {
        self.inner.unknown.lock().unwrap().clone()
    }
}

impl Drop for FakeApiServer {
    fn drop(&mut self) {
        let _ = self.inner.events.send(Msg::Close);
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

/// A Node object: `pod_cidrs` in `spec.podCIDRs` (and `spec.podCIDR`), `internal_ip` in
/// `status.addresses`, `annotations` in `metadata.annotations`.
pub fn node_json(
    name: &str,
    pod_cidrs: &[&str],
    internal_ip: Option<&str>,
    annotations: &[(&str, &str)],
) -> Value {
    let mut node = json!({
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": { "name": name, "labels": { "kubernetes.io/hostname": name } },
        "spec": {},
        "status": { "addresses": [ { "type": "Hostname", "address": name } ] },
    });
    if !pod_cidrs.is_empty() {
        node["spec"]["podCIDR"] = json!(pod_cidrs[0]);
        node["spec"]["podCIDRs"] = json!(pod_cidrs);
    }
    if let Some(ip) = internal_ip {
        node["status"]["addresses"]
            .as_array_mut()
            .unwrap()
            .insert(0, json!({ "type": "InternalIP", "address": ip }));
    }
    if !annotations.is_empty() {
        let ann: serde_json::Map<String, Value> = annotations
            .iter()
            .map(|(k, v)| (k.to_string(), json!(v)))
            .collect();
        node["metadata"]["annotations"] = Value::Object(ann);
    }
    node
}

/// Stores `node` under a new resource version and tells the watchers.
fn commit(s: &mut Store, events: &broadcast::Sender<Msg>, kind: &str, name: &str, mut node: Value) {
    s.rv += 1;
    let rv = s.rv;
    node["metadata"]["resourceVersion"] = json!(rv.to_string());
    if node["metadata"]["uid"].is_null() {
        node["metadata"]["uid"] = json!(format!("uid-{name}"));
    }
    let line = event_line(kind, &node);
    s.nodes.insert(name.to_string(), node);
    s.history.push((rv, line.clone()));
    let _ = events.send(Msg::Event(line));
}

fn event_line(kind: &str, object: &Value) -> String {
    format!("{}\n", json!({ "type": kind, "object": object }))
}

/// RFC 7386 JSON merge patch.
fn merge(target: &mut Value, patch: &Value) {
    let Value::Object(patch) = patch else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = json!({});
    }
    let t = target.as_object_mut().unwrap();
    for (k, v) in patch {
        if v.is_null() {
            t.remove(k);
        } else {
            merge(t.entry(k.clone()).or_insert(Value::Null), v);
        }
    }
}

fn status(code: StatusCode, reason: &str, message: String) -> Response {
    let body = json!({
        "kind": "Status", "apiVersion": "v1", "metadata": {},
        "status": "Failure", "message": message, "reason": reason, "code": code.as_u16(),
    });
    (code, Json(body)).into_response()
}

fn record(inner: &Inner, method: &Method, uri: &Uri) {
    inner
        .requests
        .lock()
        .unwrap()
        .push(format!("{method} {uri}"));
}

async fn unknown(State(inner): State<Shared>, method: Method, uri: Uri) -> Response {
    record(&inner, &method, &uri);
    inner
        .unknown
        .lock()
        .unwrap()
        .push(format!("{method} {uri}"));
    eprintln!("FAKE apiserver: unknown request {method} {uri}");
    status(
        StatusCode::NOT_FOUND,
        "NotFound",
        format!("the FAKE apiserver does not serve {method} {uri}"),
    )
}

async fn get_node(State(inner): State<Shared>, Path(name): Path<String>, uri: Uri) -> Response {
    record(&inner, &Method::GET, &uri);
    let store = inner.store.lock().unwrap();
    if let Some(user) = &store.forbidden_user {
        return status(
            StatusCode::FORBIDDEN,
            "Forbidden",
            format!(
                "nodes \"{name}\" is forbidden: User \"{user}\" cannot get resource \"nodes\" \
                 in API group \"\" at the cluster scope"
            ),
        );
    }
    match store.nodes.get(&name) {
        Some(node) => Json(node.clone()).into_response(),
        None => status(
            StatusCode::NOT_FOUND,
            "NotFound",
            format!("nodes \"{name}\" not found"),
        ),
    }
}

async fn patch_node(
    State(inner): State<Shared>,
    Path(name): Path<String>,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    record(&inner, &Method::PATCH, &uri);
    let ctype = headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if ctype != "application/merge-patch+json" {
        return status(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "UnsupportedMediaType",
            format!("the FAKE apiserver only does merge patches, not {ctype:?}"),
        );
    }
    let patch: Value = match serde_json::from_slice(&body) {
        Ok(p) => p,
        Err(e) => return status(StatusCode::BAD_REQUEST, "BadRequest", e.to_string()),
    };
    let mut s = inner.store.lock().unwrap();
    let Some(mut node) = s.nodes.get(&name).cloned() else {
        return status(
            StatusCode::NOT_FOUND,
            "NotFound",
            format!("nodes \"{name}\" not found"),
        );
    };
    merge(&mut node, &patch);
    commit(&mut s, &inner.events, "MODIFIED", &name, node);
    Json(s.nodes[&name].clone()).into_response()
}

async fn list_or_watch(
    State(inner): State<Shared>,
    Query(q): Query<HashMap<String, String>>,
    uri: Uri,
) -> Response {
    record(&inner, &Method::GET, &uri);
    if q.get("watch").map(String::as_str) == Some("true") {
        return watch(&inner, &q);
    }
    let s = inner.store.lock().unwrap();
    Json(json!({
        "apiVersion": "v1",
        "kind": "NodeList",
        "metadata": { "resourceVersion": s.rv.to_string() },
        "items": s.nodes.values().collect::<Vec<_>>(),
    }))
    .into_response()
}

fn watch(inner: &Inner, q: &HashMap<String, String>) -> Response {
    let timeout = q
        .get("timeoutSeconds")
        .and_then(|t| t.parse().ok())
        .unwrap_or(1800u64);
    let bookmarks = q.get("allowWatchBookmarks").map(String::as_str) == Some("true");
    let from = q.get("resourceVersion").cloned().unwrap_or_default();

    // Subscribe under the lock so that no event falls between backlog and live stream.
    let s = inner.store.lock().unwrap();
    if s.stopped {
        return status(
            StatusCode::SERVICE_UNAVAILABLE,
            "ServiceUnavailable",
            "the FAKE apiserver is stopping".to_string(),
        );
    }
    let rx = inner.events.subscribe();
    let mut backlog: VecDeque<String> = VecDeque::new();
    match from.as_str() {
        // Unset or "0": the current state as ADDED events, then changes.
        "" | "0" => {
            for node in s.nodes.values() {
                backlog.push_back(event_line("ADDED", node));
            }
        }
        v => {
            let Ok(v) = v.parse::<u64>() else {
                return status(
                    StatusCode::BAD_REQUEST,
                    "BadRequest",
                    format!("invalid resourceVersion {v:?}"),
                );
            };
            if v < s.compacted {
                let gone = json!({
                    "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                    "message": format!("too old resource version: {v} ({})", s.compacted),
                    "reason": "Expired", "code": 410,
                });
                backlog.push_back(event_line("ERROR", &gone));
            } else {
                backlog.extend(
                    s.history
                        .iter()
                        .filter(|(rv, _)| *rv > v)
                        .map(|(_, l)| l.clone()),
                );
            }
        }
    }
    if bookmarks {
        let mark = json!({ "kind": "Node", "apiVersion": "v1",
                           "metadata": { "resourceVersion": s.rv.to_string() } });
        backlog.push_back(event_line("BOOKMARK", &mark));
    }
    drop(s);

    let deadline = tokio::time::Instant::now() + Duration::from_secs(timeout);
    let stream =
        futures::stream::unfold((backlog, Some(rx)), move |(mut backlog, rx)| async move {
            if let Some(line) = backlog.pop_front() {
                return Some((Ok::<_, std::io::Error>(line), (backlog, rx)));
            }
            let mut rx = rx?;
            loop {
                let msg = tokio::time::timeout_at(deadline, rx.recv()).await;
                match msg {
                    Ok(Ok(Msg::Event(line))) => return Some((Ok(line), (backlog, Some(rx)))),
                    Ok(Err(broadcast::error::RecvError::Lagged(_))) => continue,
                    // Closed, timed out or told to close: end the response.
                    _ => return None,
                }
            }
        });
    Response::builder()
        .header("content-type", "application/json")
        .body(Body::from_stream(stream))
        .unwrap()
}

//! NetworkPolicy in weftd (kubernetes datastore): Namespaces, Pods and NetworkPolicies come
//! through kube-runtime's watchers, are kept as `weft_policy`'s model (stripped objects), and
//! after each burst of events the model is compiled into the desired `inet weft-policy` table
//! and applied as one nft transaction of the difference (the first apply replaces the table
//! atomically: a restarted weftd leaves the old table enforcing until then, so there is no
//! moment where an isolated pod is open).
//!
//! First packet: the table is compiled fail-closed for this node's pod CIDRs: an address in
//! them that no pod of the model holds can neither send nor be reached. A new pod is therefore
//! isolated from its first packet until weftd knows it (its labels from the watch, its IP
//! from the pod's status), never open.

use crate::agent::Shared;
use futures::{Stream, StreamExt};
use ipnet::IpNet;
use k8s_openapi::api::core::v1::{Namespace, Pod};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use kube::api::Api;
use kube::runtime::watcher::{self, Event};
use kube::runtime::WatchStreamExt;
use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;
use std::pin::Pin;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};
use tokio::sync::watch;
use weft_policy::{compile, Applier, CompileOptions, Key, Model};

/// Events arriving within this of each other are applied together (one transaction).
const SETTLE: Duration = Duration::from_millis(20);
const PAGE_SIZE: u32 = 200;

/// What `weftd status` shows about policy.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct PolicyStatus {
    /// All three watches have delivered a complete list (nothing is enforced before).
    pub synced: bool,
    pub policies: usize,
    pub pods: usize,
    pub local_pods: usize,
    /// The last apply succeeded: the kernel enforces the model as it is.
    pub programmed: bool,
    pub last_apply_ms: Option<f64>,
    pub last_error: Option<String>,
    /// Pods the plugin announced at CNI ADD (classified before ADD returned).
    pub announced_at_add: u64,
    /// Objects that could not be converted (named, with the field and the reason).
    pub invalid: Vec<String>,
}

enum Change {
    Namespace(Box<Event<Namespace>>),
    Pod(Box<Event<Pod>>),
    Policy(Box<Event<NetworkPolicy>>),
    Failed(String),
}

type Changes = Pin<Box<dyn Stream<Item = Change> + Send>>;

fn watch_kind<K>(api: Api<K>, wrap: fn(Box<Event<K>>) -> Change, kind: &'static str) -> Changes
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug + Send + 'static,
    K::DynamicType: Default,
{
    watcher::watcher(api, watcher::Config::default().page_size(PAGE_SIZE))
        .default_backoff()
        .map(move |r| match r {
            Ok(e) => wrap(Box::new(e)),
            Err(e) => Change::Failed(format!("watch {kind}: {}", crate::error::chain(&e))),
        })
        .boxed()
}

/// The model and what a re-list must reconcile.
struct State {
    node: String,
    /// Shared with the HTTP endpoint that answers policy verdicts (`weftd trace --port`).
    model: Arc<RwLock<Model>>,
    /// Per kind, the keys a re-list in progress has seen (removed at its end if unseen).
    listing_ns: Option<BTreeSet<String>>,
    listing_pods: Option<BTreeSet<Key>>,
    listing_policies: Option<BTreeSet<Key>>,
    /// Per kind, whether a complete list has arrived once.
    listed: [bool; 3],
    invalid: std::collections::BTreeMap<String, String>,
    /// Addresses the plugin announced at ADD, used until the pod's status carries them.
    announced: std::collections::HashMap<Key, Vec<std::net::IpAddr>>,
}

impl State {
    fn m(&self) -> std::sync::RwLockWriteGuard<'_, Model> {
        self.model.write().unwrap()
    }

    fn valid(&mut self, what: &str) {
        self.invalid.remove(what);
    }

    fn invalid(&mut self, what: String, err: impl std::fmt::Display) {
        tracing::warn!(object = %what, error = %err, "network policy: object ignored");
        self.invalid.insert(what, err.to_string());
    }

    /// Applies one change to the model; whether it may change the ruleset.
    fn change(&mut self, c: Change) -> bool {
        match c {
            Change::Failed(_) => false,
            Change::Namespace(e) => match *e {
                Event::Init => {
                    self.listing_ns = Some(BTreeSet::new());
                    false
                }
                Event::InitApply(ns) | Event::Apply(ns) => {
                    let name = ns.metadata.name.clone().unwrap_or_default();
                    if let Some(l) = self.listing_ns.as_mut() {
                        l.insert(name.clone());
                    }
                    match weft_policy::k8s::namespace(&ns) {
                        Ok(n) => {
                            self.valid(&format!("Namespace {name}"));
                            self.m().set_namespace(n)
                        }
                        Err(err) => self.invalid(format!("Namespace {name}"), err),
                    }
                    true
                }
                Event::Delete(ns) => {
                    let name = ns.metadata.name.unwrap_or_default();
                    self.m().remove_namespace(&name).is_some()
                }
                Event::InitDone => {
                    if let Some(seen) = self.listing_ns.take() {
                        self.m().namespaces.retain(|k, _| seen.contains(k));
                    }
                    self.listed[0] = true;
                    true
                }
            },
            Change::Pod(e) => match *e {
                Event::Init => {
                    self.listing_pods = Some(BTreeSet::new());
                    false
                }
                Event::InitApply(p) | Event::Apply(p) => {
                    let key = Key::new(
                        p.metadata.namespace.clone().unwrap_or_default(),
                        p.metadata.name.clone().unwrap_or_default(),
                    );
                    if let Some(l) = self.listing_pods.as_mut() {
                        l.insert(key.clone());
                    }
                    match weft_policy::k8s::pod(&p, &self.node) {
                        Ok(mut pod) => {
                            if pod.ips.is_empty() {
                                if let Some(ips) = self.announced.get(&key) {
                                    pod.ips = ips.clone();
                                }
                            }
                            self.valid(&format!("Pod {}/{}", key.namespace, key.name));
                            let changed = self.m().pods.get(&key) != Some(&pod);
                            self.m().set_pod(pod);
                            changed
                        }
                        Err(err) => {
                            self.invalid(format!("Pod {}/{}", key.namespace, key.name), err);
                            self.m().remove_pod(&key).is_some()
                        }
                    }
                }
                Event::Delete(p) => {
                    let key = Key::new(
                        p.metadata.namespace.unwrap_or_default(),
                        p.metadata.name.unwrap_or_default(),
                    );
                    self.announced.remove(&key);
                    self.m().remove_pod(&key).is_some()
                }
                Event::InitDone => {
                    if let Some(seen) = self.listing_pods.take() {
                        self.m().pods.retain(|k, _| seen.contains(k));
                    }
                    self.listed[1] = true;
                    true
                }
            },
            Change::Policy(e) => match *e {
                Event::Init => {
                    self.listing_policies = Some(BTreeSet::new());
                    false
                }
                Event::InitApply(np) | Event::Apply(np) => {
                    let key = Key::new(
                        np.metadata.namespace.clone().unwrap_or_default(),
                        np.metadata.name.clone().unwrap_or_default(),
                    );
                    if let Some(l) = self.listing_policies.as_mut() {
                        l.insert(key.clone());
                    }
                    match weft_policy::k8s::policy(&np) {
                        Ok(p) => {
                            self.valid(&format!("NetworkPolicy {}/{}", key.namespace, key.name));
                            self.m().set_policy(p)
                        }
                        Err(err) => {
                            // A policy weft cannot read must not open what it would isolate;
                            // it is left out and named in the status.
                            self.invalid(
                                format!("NetworkPolicy {}/{}", key.namespace, key.name),
                                err,
                            );
                            self.m().remove_policy(&key);
                        }
                    }
                    true
                }
                Event::Delete(np) => {
                    let key = Key::new(
                        np.metadata.namespace.unwrap_or_default(),
                        np.metadata.name.unwrap_or_default(),
                    );
                    self.m().remove_policy(&key).is_some()
                }
                Event::InitDone => {
                    if let Some(seen) = self.listing_policies.take() {
                        self.m().policies.retain(|k, _| seen.contains(k));
                    }
                    self.listed[2] = true;
                    true
                }
            },
        }
    }
}

/// Runs forever: watches, compiles, applies. `pod_cidrs` is this node's (for fail-closed).
pub async fn run(
    client: kube::Client,
    node: String,
    mut pod_cidrs: watch::Receiver<Vec<IpNet>>,
    cut_established: bool,
    socket: std::path::PathBuf,
    shared: Arc<Shared>,
) {
    let model = Arc::new(RwLock::new(Model::new()));
    let _ = shared.policy_model.set(model.clone());
    let mut changes = futures::stream::select_all([
        watch_kind(
            Api::<Namespace>::all(client.clone()),
            Change::Namespace,
            "namespaces",
        ),
        watch_kind(Api::<Pod>::all(client.clone()), Change::Pod, "pods"),
        watch_kind(
            Api::<NetworkPolicy>::all(client),
            Change::Policy,
            "networkpolicies",
        ),
    ]);
    let mut state = State {
        node,
        model: model.clone(),
        listing_ns: None,
        listing_pods: None,
        listing_policies: None,
        listed: [false; 3],
        invalid: Default::default(),
        announced: Default::default(),
    };
    // Announcements from the plugin, each answered once its pod is in the table.
    let (announce_tx, mut announcements) = tokio::sync::mpsc::channel::<Announcement>(64);
    tokio::spawn(serve_announcements(socket, announce_tx));
    let mut waiting: Vec<(Key, tokio::sync::oneshot::Sender<&'static str>)> = Vec::new();
    let applier = Arc::new(std::sync::Mutex::new(Applier::new()));
    let mut dirty = false;
    let mut status = PolicyStatus::default();
    loop {
        tokio::select! {
            c = changes.next() => {
                let Some(c) = c else { return };
                if let Change::Failed(why) = &c {
                    // E.g. 403 without the RBAC for pods/namespaces/networkpolicies: said in
                    // /status; what is enforced stays as it is.
                    tracing::warn!(error = %why, "network policy: watch failed, retrying");
                    status.last_error = Some(why.clone());
                    let st = status.clone();
                    shared.update(|s| s.policy = Some(st));
                }
                dirty |= state.change(c);
                // Take what else arrives right away into the same transaction.
                let until = tokio::time::Instant::now() + SETTLE;
                while let Ok(Some(c)) = tokio::time::timeout_at(until, changes.next()).await {
                    dirty |= state.change(c);
                }
            }
            changed = pod_cidrs.changed() => {
                if changed.is_err() {
                    return;
                }
                dirty = true;
            }
            Some(a) = announcements.recv() => {
                status.announced_at_add += 1;
                if !state.listed.iter().all(|l| *l) {
                    // Nothing is enforced yet (no table from this weftd): nothing to wait for.
                    let _ = a.reply.send("ok");
                    continue;
                }
                state.announced.insert(a.key.clone(), a.ips.clone());
                let in_table = {
                    let mut m = state.m();
                    match m.pods.get_mut(&a.key) {
                        Some(pod) if pod.ips.is_empty() => {
                            pod.ips = a.ips;
                            dirty = true;
                            false
                        }
                        Some(_) => true,
                        // The watch has not brought the Pod yet: answered when it does.
                        None => false,
                    }
                };
                if in_table && status.programmed {
                    let _ = a.reply.send("ok");
                    continue;
                }
                waiting.retain(|(_, r)| !r.is_closed());
                waiting.push((a.key, a.reply));
                if !dirty {
                    continue;
                }
            }
        }
        if !dirty || !state.listed.iter().all(|l| *l) {
            continue;
        }
        dirty = false;
        let opts = CompileOptions {
            sctp: true,
            fail_closed: pod_cidrs.borrow().clone(),
            cut_established,
            ..CompileOptions::default()
        };
        let desired = compile(&state.model.read().unwrap(), &opts);
        let a = applier.clone();
        let started = Instant::now();
        let result = tokio::task::spawn_blocking(move || a.lock().unwrap().apply(&desired))
            .await
            .expect("apply task");
        let took = started.elapsed().as_secs_f64() * 1000.0;
        status.last_error = match &result {
            Ok(stats) => {
                tracing::debug!(
                    commands = stats.commands,
                    full = stats.full,
                    took_ms = took,
                    "network policy applied"
                );
                None
            }
            Err(e) => {
                tracing::warn!(error = %e, "network policy: apply failed; the next change rebuilds");
                Some(e.to_string())
            }
        };
        status.synced = true;
        {
            let m = state.model.read().unwrap();
            status.policies = m.policies.len();
            status.pods = m.pods.len();
            status.local_pods = m.pods.values().filter(|p| p.local).count();
        }
        status.programmed = result.is_ok();
        status.last_apply_ms = Some(took);
        status.invalid = state
            .invalid
            .iter()
            .map(|(what, why)| format!("{what}: {why}"))
            .collect();
        let st = status.clone();
        shared.update(|s| s.policy = Some(st));
        // Announced pods now in the table: their ADD may return.
        if result.is_ok() {
            let m = state.model.read().unwrap();
            let mut still = Vec::new();
            for (key, reply) in waiting.drain(..) {
                if m.pods.get(&key).is_some_and(|p| !p.ips.is_empty()) {
                    let _ = reply.send("ok");
                } else if !reply.is_closed() {
                    still.push((key, reply));
                }
            }
            waiting = still;
        }
    }
}

/// A pod the plugin announced at CNI ADD.
struct Announcement {
    key: Key,
    ips: Vec<std::net::IpAddr>,
    reply: tokio::sync::oneshot::Sender<&'static str>,
}

/// How long an announcement may wait for its pod to be in the table (the plugin waits 3 s).
const ANNOUNCE_WAIT: Duration = Duration::from_millis(2500);

/// Listens on `socket` for the plugin's `{"namespace","name","ips"}` lines; answers "ok" once
/// the pod is in the table, "pending" if that takes too long (the pod stays closed until then).
async fn serve_announcements(
    socket: std::path::PathBuf,
    tx: tokio::sync::mpsc::Sender<Announcement>,
) {
    if let Some(dir) = socket.parent() {
        let _ = std::fs::create_dir_all(dir);
    }
    let _ = std::fs::remove_file(&socket);
    let listener = match tokio::net::UnixListener::bind(&socket) {
        Ok(l) => l,
        Err(e) => {
            tracing::warn!(socket = %socket.display(), error = %e, "network policy: no ADD handshake; new pods are classified when their IP reaches weftd");
            return;
        }
    };
    loop {
        let Ok((conn, _)) = listener.accept().await else {
            continue;
        };
        let tx = tx.clone();
        tokio::spawn(async move {
            use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
            let (read, mut write) = conn.into_split();
            let mut line = String::new();
            let mut reader = BufReader::new(read);
            let got = tokio::time::timeout(ANNOUNCE_WAIT, reader.read_line(&mut line)).await;
            if !matches!(got, Ok(Ok(n)) if n > 0) {
                return;
            }
            #[derive(Deserialize)]
            struct Req {
                namespace: String,
                name: String,
                ips: Vec<std::net::IpAddr>,
            }
            let answer = match serde_json::from_str::<Req>(&line) {
                Ok(r) => {
                    let (reply, answered) = tokio::sync::oneshot::channel();
                    let a = Announcement {
                        key: Key::new(r.namespace, r.name),
                        ips: r.ips,
                        reply,
                    };
                    if tx.send(a).await.is_err() {
                        return;
                    }
                    match tokio::time::timeout(ANNOUNCE_WAIT, answered).await {
                        Ok(Ok(a)) => a,
                        _ => "pending",
                    }
                }
                Err(_) => "bad request",
            };
            let _ = write.write_all(format!("{answer}\n").as_bytes()).await;
        });
    }
}

/// The verdict the current model gives a new connection from `src` to `dst`, with its reason
/// (what `weftd trace SRC DST --port P` prints). `local` are this node's own addresses.
pub fn verdict(
    model: &Model,
    local: &[std::net::IpAddr],
    src: std::net::IpAddr,
    dst: std::net::IpAddr,
    protocol: weft_policy::Protocol,
    port: u16,
) -> weft_policy::Verdict {
    let end = |ip| {
        if local.contains(&ip) {
            weft_policy::Endpoint::LocalNode(ip)
        } else {
            weft_policy::Endpoint::Ip(ip)
        }
    };
    weft_policy::evaluate(model, &end(src), &end(dst), protocol, port)
}

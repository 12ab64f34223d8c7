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
use futures::{FutureExt, Stream, StreamExt};
use ipnet::IpNet;
use k8s_openapi::api::core::v1::Namespace;
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
use weft_policy::k8s::SlimPod;
use weft_policy::{Applier, CompileOptions, Compiler, Key, Model};

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

/// A Pod as the watch decodes it: only what policy reads ([`SlimPod`], ~1.5 KiB decoded),
/// never the full object (~40 KiB decoded, mostly managed fields and statuses).
#[derive(Debug, Clone, Deserialize)]
#[serde(transparent)]
pub struct WatchedPod(pub SlimPod);

impl kube::Resource for WatchedPod {
    type DynamicType = ();
    type Scope = k8s_openapi::NamespaceResourceScope;
    fn kind(_: &()) -> std::borrow::Cow<'_, str> {
        "Pod".into()
    }
    fn group(_: &()) -> std::borrow::Cow<'_, str> {
        "".into()
    }
    fn version(_: &()) -> std::borrow::Cow<'_, str> {
        "v1".into()
    }
    fn plural(_: &()) -> std::borrow::Cow<'_, str> {
        "pods".into()
    }
    fn meta(&self) -> &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta {
        &self.0.metadata
    }
    fn meta_mut(&mut self) -> &mut k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta {
        &mut self.0.metadata
    }
}

enum Change {
    Namespace(Box<Event<Namespace>>),
    Pod(Box<Event<WatchedPod>>),
    Policy(Box<Event<NetworkPolicy>>),
    Failed(String),
}

type Changes = Pin<Box<dyn Stream<Item = Change> + Send>>;

fn watch_kind<K>(api: Api<K>, wrap: fn(Box<Event<K>>) -> Change) -> Changes
where
    K: Watched,
{
    watcher::watcher(api, watcher::Config::default().page_size(PAGE_SIZE))
        .default_backoff()
        .map(move |r| match r {
            Ok(e) => wrap(Box::new(e)),
            Err(e) => Change::Failed(format!("watch {}: {}", K::PLURAL, crate::error::chain(&e))),
        })
        .boxed()
}

/// One of the three watched kinds, as the model takes it (one generic event handler).
trait Watched:
    kube::Resource<DynamicType = ()>
    + Clone
    + serde::de::DeserializeOwned
    + std::fmt::Debug
    + Send
    + 'static
{
    const KIND: &'static str;
    const PLURAL: &'static str;
    /// Its slot in `State::listing` / `State::listed`.
    const SLOT: usize;
    /// Converts `obj` into the compiler's model (or takes it out when it cannot be read);
    /// whether the ruleset may have changed.
    fn put(obj: &Self, key: &Key, st: &mut State) -> Result<bool, String>;
    fn remove(key: &Key, st: &mut State) -> bool;
    fn keys(c: &Compiler) -> Vec<Key>;
}

fn key_of<K: kube::Resource>(obj: &K) -> Key {
    let m = obj.meta();
    Key::new(
        m.namespace.clone().unwrap_or_default(),
        m.name.clone().unwrap_or_default(),
    )
}

impl Watched for Namespace {
    const KIND: &'static str = "Namespace";
    const PLURAL: &'static str = "namespaces";
    const SLOT: usize = 0;
    fn put(ns: &Self, _: &Key, st: &mut State) -> Result<bool, String> {
        let n = weft_policy::k8s::namespace(ns).map_err(|e| e.to_string())?;
        Ok(st.c().set_namespace(n))
    }
    fn remove(key: &Key, st: &mut State) -> bool {
        st.c().remove_namespace(&key.name)
    }
    fn keys(c: &Compiler) -> Vec<Key> {
        c.model()
            .namespaces
            .keys()
            .map(|n| Key::new("", n.as_str()))
            .collect()
    }
}

impl Watched for WatchedPod {
    const KIND: &'static str = "Pod";
    const PLURAL: &'static str = "pods";
    const SLOT: usize = 1;
    fn put(p: &Self, key: &Key, st: &mut State) -> Result<bool, String> {
        let mut pod = weft_policy::k8s::slim_pod(&p.0, &st.node).map_err(|e| e.to_string())?;
        if pod.ips.is_empty() {
            if let Some(ips) = st.announced.get(key) {
                pod.ips = ips.clone();
            }
        }
        Ok(st.c().set_pod(pod))
    }
    fn remove(key: &Key, st: &mut State) -> bool {
        st.announced.remove(key);
        st.c().remove_pod(key)
    }
    fn keys(c: &Compiler) -> Vec<Key> {
        c.model().pods.keys().cloned().collect()
    }
}

impl Watched for NetworkPolicy {
    const KIND: &'static str = "NetworkPolicy";
    const PLURAL: &'static str = "networkpolicies";
    const SLOT: usize = 2;
    fn put(np: &Self, _: &Key, st: &mut State) -> Result<bool, String> {
        let p = weft_policy::k8s::policy(np).map_err(|e| e.to_string())?;
        Ok(st.c().set_policy(p))
    }
    fn remove(key: &Key, st: &mut State) -> bool {
        st.c().remove_policy(key)
    }
    fn keys(c: &Compiler) -> Vec<Key> {
        c.model().policies.keys().cloned().collect()
    }
}

/// The compiler (model and desired table) and what a re-list must reconcile.
struct State {
    node: String,
    /// Shared with the HTTP endpoint that answers policy verdicts (`weftd trace --port`).
    compiler: Arc<RwLock<Compiler>>,
    /// Per kind, the keys a re-list in progress has seen (removed at its end if unseen).
    listing: [Option<BTreeSet<Key>>; 3],
    /// Per kind, whether a complete list has arrived once.
    listed: [bool; 3],
    invalid: std::collections::BTreeMap<String, String>,
    /// Addresses the plugin announced at ADD, used until the pod's status carries them.
    announced: std::collections::HashMap<Key, Vec<std::net::IpAddr>>,
}

impl State {
    fn c(&self) -> std::sync::RwLockWriteGuard<'_, Compiler> {
        self.compiler.write().unwrap()
    }

    /// Applies one change to the model; whether it may change the ruleset.
    fn change(&mut self, c: Change) -> bool {
        match c {
            Change::Failed(_) => false,
            Change::Namespace(e) => self.event(*e),
            Change::Pod(e) => self.event(*e),
            Change::Policy(e) => self.event(*e),
        }
    }

    fn event<K: Watched>(&mut self, e: Event<K>) -> bool {
        match e {
            Event::Init => {
                self.listing[K::SLOT] = Some(BTreeSet::new());
                false
            }
            Event::InitApply(obj) | Event::Apply(obj) => {
                let key = key_of(&obj);
                if let Some(l) = self.listing[K::SLOT].as_mut() {
                    l.insert(key.clone());
                }
                let what = match key.namespace.as_str() {
                    "" => format!("{} {}", K::KIND, key.name),
                    ns => format!("{} {ns}/{}", K::KIND, key.name),
                };
                match K::put(&obj, &key, self) {
                    Ok(changed) => {
                        self.invalid.remove(&what);
                        changed
                    }
                    Err(err) => {
                        // An object weft cannot read must not open what it would isolate:
                        // it is left out and named in the status.
                        tracing::warn!(object = %what, error = %err, "network policy: object ignored");
                        self.invalid.insert(what, err);
                        K::remove(&key, self)
                    }
                }
            }
            Event::Delete(obj) => K::remove(&key_of(&obj), self),
            Event::InitDone => {
                let mut changed = false;
                if let Some(seen) = self.listing[K::SLOT].take() {
                    let gone: Vec<Key> = K::keys(&self.compiler.read().unwrap())
                        .into_iter()
                        .filter(|k| !seen.contains(k))
                        .collect();
                    for k in gone {
                        changed |= K::remove(&k, self);
                    }
                }
                let synced = self.listed.iter().all(|l| *l);
                self.listed[K::SLOT] = true;
                // The first complete list of all three kinds programs the table.
                changed || (!synced && self.listed.iter().all(|l| *l))
            }
        }
    }
}

/// weftd's policy options (flags).
#[derive(Debug, Clone, Copy, Default)]
pub struct Options {
    pub cut_established: bool,
    /// The deny log (crate::policy_log).
    pub log_denied: bool,
}

fn options(pod_cidrs: &[IpNet], o: Options) -> CompileOptions {
    CompileOptions {
        sctp: true,
        fail_closed: pod_cidrs.to_vec(),
        cut_established: o.cut_established,
        // For /metrics: read back at each scrape.
        counters: true,
        log_denied: o.log_denied.then_some(crate::policy_log::GROUP),
    }
}

/// Runs forever: watches, compiles, applies. `pod_cidrs` is this node's (for fail-closed).
pub async fn run(
    client: kube::Client,
    node: String,
    mut pod_cidrs: watch::Receiver<Vec<IpNet>>,
    o: Options,
    socket: std::path::PathBuf,
    shared: Arc<Shared>,
) {
    let opts = options(&pod_cidrs.borrow(), o);
    // Nothing is compiled before the first complete lists: a policy event only marks the
    // compiler stale, so the initial list costs one compile.
    let compiler = Arc::new(RwLock::new(Compiler::new(Model::new(), opts)));
    let _ = shared.policy.set(compiler.clone());
    if o.log_denied {
        // Bound before the first table with a log statement exists: nothing is missed.
        crate::policy_log::spawn(
            compiler.clone(),
            shared.metrics.policy_log_suppressed.clone(),
        );
    }
    let mut changes = futures::stream::select_all([
        watch_kind(Api::<Namespace>::all(client.clone()), Change::Namespace),
        watch_kind(Api::<WatchedPod>::all(client.clone()), Change::Pod),
        watch_kind(Api::<NetworkPolicy>::all(client), Change::Policy),
    ]);
    let mut state = State {
        node,
        compiler: compiler.clone(),
        listing: Default::default(),
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
                // Take what has already arrived into the same transaction, without waiting
                // for more: what arrives while it is applied makes the next one (a burst
                // batches itself; a lone change is not delayed).
                while let Some(Some(c)) = changes.next().now_or_never() {
                    dirty |= state.change(c);
                }
            }
            changed = pod_cidrs.changed() => {
                if changed.is_err() {
                    return;
                }
                let opts = options(&pod_cidrs.borrow(), o);
                dirty |= state.c().set_options(opts);
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
                    let mut c = state.c();
                    match c.model().pods.get(&a.key).cloned() {
                        Some(mut pod) if pod.ips.is_empty() => {
                            pod.ips = a.ips;
                            dirty |= c.set_pod(pod);
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
        let (c, a) = (compiler.clone(), applier.clone());
        let started = Instant::now();
        let result = tokio::task::spawn_blocking(move || {
            let mut c = c.write().unwrap();
            let changes = c.take_changes();
            let result = a.lock().unwrap().apply_changes(c.ruleset(), &changes);
            if changes.full {
                // A whole compile and its batch are transient (tens of MiB at 10,000 pods);
                // without this glibc keeps them in the RSS for the life of weftd.
                #[cfg(target_env = "gnu")]
                // SAFETY: malloc_trim only returns free memory to the kernel.
                unsafe {
                    libc::malloc_trim(0);
                }
            }
            result
        })
        .await
        .expect("apply task");
        let took = started.elapsed().as_secs_f64() * 1000.0;
        status.last_error = match &result {
            Ok(stats) => {
                tracing::debug!(
                    commands = stats.commands,
                    elements = stats.elements,
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
            let c = compiler.read().unwrap();
            let m = c.model();
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
            let c = compiler.read().unwrap();
            let mut still = Vec::new();
            for (key, reply) in waiting.drain(..) {
                if c.model().pods.get(&key).is_some_and(|p| !p.ips.is_empty()) {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn state() -> State {
        State {
            node: "n1".into(),
            compiler: Arc::new(RwLock::new(Compiler::new(
                Model::new(),
                options(&[], Options::default()),
            ))),
            listing: Default::default(),
            listed: [false; 3],
            invalid: Default::default(),
            announced: Default::default(),
        }
    }

    fn pod(name: &str, app: &str, ip: &str) -> WatchedPod {
        serde_json::from_value(serde_json::json!({
            "metadata": { "namespace": "x", "name": name, "labels": { "app": app } },
            "spec": { "nodeName": "n1", "containers": [] },
            "status": { "podIP": ip, "podIPs": [{ "ip": ip }] }
        }))
        .unwrap()
    }

    fn deny_all() -> NetworkPolicy {
        serde_json::from_value(serde_json::json!({
            "metadata": { "namespace": "x", "name": "deny" },
            "spec": { "podSelector": { "matchLabels": { "app": "web" } } }
        }))
        .unwrap()
    }

    impl State {
        /// A re-list of namespaces that finds them as they were.
        fn list_same_namespaces(&mut self) -> bool {
            let ns: Vec<Namespace> = self
                .c()
                .model()
                .namespaces
                .keys()
                .map(|n| {
                    serde_json::from_value(serde_json::json!({ "metadata": { "name": n } }))
                        .unwrap()
                })
                .collect();
            let mut changed = self.event::<Namespace>(Event::Init);
            for n in ns {
                changed |= self.event(Event::InitApply(n));
            }
            changed | self.event::<Namespace>(Event::InitDone)
        }
    }

    fn list<K: Watched>(st: &mut State, objs: Vec<K>) -> bool {
        let mut changed = st.event::<K>(Event::Init);
        for o in objs {
            changed |= st.event(Event::InitApply(o));
        }
        changed | st.event::<K>(Event::InitDone)
    }

    /// One generic handler for the three kinds: lists, re-lists that drop what is gone,
    /// unreadable objects left out and named; after the first sync a pod event reaches the
    /// kernel as its element changes only.
    #[test]
    fn events_of_every_kind_feed_the_incremental_compiler() {
        let mut st = state();
        assert!(!list::<Namespace>(&mut st, vec![]));
        // Pods change the model (the table waits for all three lists).
        assert!(list(
            &mut st,
            vec![pod("a", "web", "10.244.1.2"), pod("b", "db", "10.244.1.3")]
        ));
        // The third complete list programs the table, even with nothing changed by it.
        assert!(list(&mut st, vec![deny_all()]));
        assert!(st.c().take_changes().full);
        let c = st.c().ruleset().clone();
        assert_eq!(c.sets["in4"].elements.len(), 1, "a (web) is isolated");

        // A relabel out of the policy's selector: elements only.
        assert!(st.event(Event::Apply(pod("a", "cache", "10.244.1.2"))));
        let ch = st.c().take_changes();
        assert!(!ch.full && !ch.is_empty(), "{ch:?}");
        // The same object again costs nothing.
        assert!(!st.event(Event::Apply(pod("a", "cache", "10.244.1.2"))));
        assert!(st.c().take_changes().is_empty());

        // A re-list without b: b is removed at its end.
        assert!(list(&mut st, vec![pod("a", "cache", "10.244.1.2")]));
        assert_eq!(
            st.c().model().pods.keys().cloned().collect::<Vec<_>>(),
            [Key::new("x", "a")]
        );
        assert!(!st.c().take_changes().full);

        // An unreadable policy is left out (no half enforcement) and named.
        let mut bad = deny_all();
        bad.spec.as_mut().unwrap().policy_types = Some(vec!["Sideways".into()]);
        assert!(st.event(Event::Apply(bad)));
        assert!(st.c().model().policies.is_empty());
        assert!(
            st.invalid["NetworkPolicy x/deny"].contains("spec.policyTypes[0]"),
            "{:?}",
            st.invalid
        );
        assert!(st.event(Event::Apply(deny_all())));
        assert!(st.invalid.is_empty());
        // The same policy again (a re-list, a resync): no recompile, nothing to apply.
        st.c().take_changes();
        assert!(!st.event(Event::Apply(deny_all())));
        assert!(!st.list_same_namespaces());
        assert!(st.c().take_changes().is_empty());
        assert!(st.event(Event::Delete(deny_all())));
        assert!(st.c().take_changes().full, "a policy event recompiles");
    }
}

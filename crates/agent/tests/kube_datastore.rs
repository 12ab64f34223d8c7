//! The `kubernetes` datastore against a FAKE API server (tests/support/fake_apiserver.rs, plain
//! HTTP on 127.0.0.1), reached through a kubeconfig file written by each test. No root needed.

mod support;

use ipnet::IpNet;
use serde_json::json;
use std::future::Future;
use std::net::IpAddr;
use std::time::{Duration, Instant};
use support::fake_apiserver::{node_json, FakeApiServer};
use tempfile::TempDir;
use tokio::sync::watch;
use weft_agent::datastore::kube::{
    KubeConfig, KubeStore, ANNOTATION_UNDERLAY_IP, ANNOTATION_VTEP_MAC,
};
use weft_agent::datastore::{DatastoreError, Health, OwnState};
use weft_agent::node::{LocalIdentity, NodeRecord, Registration};

/// weftd's logs in the test output (`RUST_LOG=debug cargo test ... -- --nocapture`).
fn init_logs() {
    let _ = tracing_subscriber::fmt()
        .with_test_writer()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "weft_agent=info".into()),
        )
        .try_init();
}

fn net(s: &str) -> IpNet {
    s.parse().unwrap()
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

const MY_MAC: &str = "02:00:00:00:00:01";

fn me() -> LocalIdentity {
    LocalIdentity {
        name: "n1".to_string(),
        underlay_ip: ip("192.168.50.1"),
        vtep_mac: Some(MY_MAC.to_string()),
    }
}

/// A fake API server and a kubeconfig file pointing at it.
struct Setup {
    fake: FakeApiServer,
    _dir: TempDir,
    store: Option<KubeStore>,
    /// This node's own state as the running store reports it.
    own: Option<watch::Receiver<OwnState>>,
    /// What the agent tells the running store about this node (its underlay address).
    identity: Option<watch::Sender<LocalIdentity>>,
}

impl Setup {
    async fn new() -> Setup {
        init_logs();
        let fake = FakeApiServer::start().await;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("kubeconfig");
        std::fs::write(&path, fake.kubeconfig()).unwrap();
        let store = KubeStore::new(KubeConfig {
            kubeconfig: Some(path),
            node_name: "n1".to_string(),
            cluster_cidrs: vec![net("10.244.0.0/16"), net("fd00:10:244::/56")],
        });
        Setup {
            fake,
            _dir: dir,
            store: Some(store),
            own: None,
            identity: None,
        }
    }

    /// Registers in the background.
    fn register(
        &mut self,
        health: &Health,
    ) -> tokio::task::JoinHandle<(KubeStore, Result<Registration, DatastoreError>)> {
        let mut store = self.store.take().unwrap();
        let health = health.clone();
        tokio::spawn(async move {
            let r = store.register(&me(), &health).await;
            (store, r)
        })
    }

    /// Registers (the node must have pod CIDRs) and runs the store in the background.
    async fn run(&mut self, health: &Health) -> watch::Receiver<Option<Vec<NodeRecord>>> {
        let (store, reg) = within(Duration::from_secs(10), "register", self.register(health))
            .await
            .unwrap();
        let reg = reg.unwrap();
        let (tx, rx) = watch::channel(None);
        let (own_tx, own) = watch::channel(OwnState::Registered(reg.pod_cidrs.clone()));
        self.own = Some(own);
        let health = health.clone();
        let (identity_tx, identity) = watch::channel(me());
        self.identity = Some(identity_tx);
        tokio::spawn(async move { store.run(identity, tx, own_tx, health).await });
        rx
    }

    /// The underlay-ip annotation weftd keeps on n1.
    fn my_underlay_annotation(&self) -> Option<String> {
        self.fake
            .node("n1")
            .and_then(|n| annotation(&n, ANNOTATION_UNDERLAY_IP))
    }

    fn unknown_requests_are_none(&self) {
        let unknown = self.fake.unknown_requests();
        assert!(unknown.is_empty(), "unexpected requests: {unknown:?}");
    }
}

async fn within<T>(d: Duration, what: &str, fut: impl Future<Output = T>) -> T {
    tokio::time::timeout(d, fut)
        .await
        .unwrap_or_else(|_| panic!("{what}: not done within {d:?}"))
}

/// Polls `cond` until it holds.
async fn eventually(d: Duration, what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + d;
    while !cond() {
        assert!(Instant::now() < deadline, "{what}: not within {d:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits until the peer list satisfies `cond`, returning it.
async fn peers_until(
    rx: &mut watch::Receiver<Option<Vec<NodeRecord>>>,
    d: Duration,
    what: &str,
    cond: impl Fn(&[NodeRecord]) -> bool,
) -> Vec<NodeRecord> {
    let got = within(d, what, rx.wait_for(|p| p.as_deref().is_some_and(&cond)))
        .await
        .expect("datastore task alive");
    got.clone().unwrap()
}

fn names(peers: &[NodeRecord]) -> Vec<&str> {
    peers.iter().map(|p| p.name.as_str()).collect()
}

fn annotation(node: &serde_json::Value, key: &str) -> Option<String> {
    node["metadata"]["annotations"][key]
        .as_str()
        .map(str::to_string)
}

#[tokio::test]
async fn register_waits_for_node_and_pod_cidr_then_annotates() {
    let mut s = Setup::new().await;
    let health = Health::default();
    let task = s.register(&health);

    // No Node object yet.
    eventually(Duration::from_secs(5), "node-not-found message", || {
        health
            .get()
            .last_error
            .is_some_and(|e| e.contains("node n1 not found"))
    })
    .await;
    assert!(!health.get().connected);

    // The node exists but kube-controller-manager has not assigned a pod CIDR.
    s.fake
        .put_node(node_json("n1", &[], Some("192.168.50.1"), &[]));
    eventually(Duration::from_secs(5), "no-podCIDR message", || {
        health.get().last_error.is_some_and(|e| {
            e.contains("node n1 has no spec.podCIDRs yet") && e.contains("--allocate-node-cidrs")
        })
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!task.is_finished(), "register returned without a pod CIDR");
    assert!(!health.get().connected);
    assert_eq!(
        annotation(&s.fake.node("n1").unwrap(), ANNOTATION_UNDERLAY_IP),
        None
    );

    s.fake.patch_node(
        "n1",
        json!({ "spec": { "podCIDR": "10.244.1.0/24",
                          "podCIDRs": ["10.244.1.0/24", "fd00:10:244:1::/64"] } }),
    );
    let (_store, reg) = within(Duration::from_secs(5), "register", task)
        .await
        .unwrap();
    let reg = reg.unwrap();
    assert_eq!(
        reg,
        Registration {
            pod_cidrs: vec![net("10.244.1.0/24"), net("fd00:10:244:1::/64")],
            cluster_cidrs: vec![net("10.244.0.0/16"), net("fd00:10:244::/56")],
            vtep_mac: None,
        }
    );
    let h = health.get();
    assert!(h.connected && h.last_error.is_none(), "{h:?}");

    // Read back what weftd wrote on its Node.
    let node = s.fake.node("n1").unwrap();
    assert_eq!(
        annotation(&node, ANNOTATION_UNDERLAY_IP).as_deref(),
        Some("192.168.50.1")
    );
    assert_eq!(
        annotation(&node, ANNOTATION_VTEP_MAC).as_deref(),
        Some(MY_MAC)
    );
    assert!(s
        .fake
        .requests()
        .iter()
        .any(|r| r.starts_with("PATCH /api/v1/nodes/n1")));
    s.unknown_requests_are_none();
}

#[tokio::test]
async fn register_needs_cluster_cidr_and_a_readable_kubeconfig() {
    let mut store = KubeStore::new(KubeConfig {
        kubeconfig: Some("/nonexistent/kubeconfig".into()),
        node_name: "n1".to_string(),
        cluster_cidrs: vec![],
    });
    let err = store
        .register(&me(), &Health::default())
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("--cluster-cidr is required with --datastore kubernetes"),
        "{err}"
    );

    store.cfg.cluster_cidrs = vec![net("10.244.0.0/16")];
    let err = store
        .register(&me(), &Health::default())
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("kubeconfig /nonexistent/kubeconfig"), "{err}");
}

#[tokio::test]
async fn run_delivers_peers_and_follows_node_changes() {
    let mut s = Setup::new().await;
    let f = &s.fake;
    f.put_node(node_json(
        "n1",
        &["10.244.1.0/24"],
        Some("192.168.50.1"),
        &[],
    ));
    // InternalIP only (not running weftd yet): reached at its InternalIP.
    f.put_node(node_json(
        "n2",
        &["10.244.2.0/24"],
        Some("192.168.50.2"),
        &[],
    ));
    // Annotated: the annotation wins over the InternalIP.
    f.put_node(node_json(
        "n3",
        &["10.244.3.0/24", "fd00:10:244:3::/64"],
        Some("192.168.50.3"),
        &[
            (ANNOTATION_UNDERLAY_IP, "10.0.0.3"),
            (ANNOTATION_VTEP_MAC, "02:00:00:00:00:03"),
        ],
    ));
    // No pod CIDR yet, and no address at all: both skipped.
    f.put_node(node_json("n4", &[], Some("192.168.50.4"), &[]));
    f.put_node(node_json("n5", &["10.244.5.0/24"], None, &[]));

    let health = Health::default();
    let mut rx = s.run(&health).await;
    let peers = peers_until(&mut rx, Duration::from_secs(5), "first peer list", |_| true).await;
    assert_eq!(
        peers,
        vec![
            NodeRecord {
                name: "n2".into(),
                underlay_ip: ip("192.168.50.2"),
                pod_cidrs: vec![net("10.244.2.0/24")],
                vtep_mac: None,
            },
            NodeRecord {
                name: "n3".into(),
                underlay_ip: ip("10.0.0.3"),
                pod_cidrs: vec![net("10.244.3.0/24"), net("fd00:10:244:3::/64")],
                vtep_mac: Some("02:00:00:00:00:03".into()),
            },
        ]
    );
    assert!(health.get().connected);

    // A new node shows up within a second.
    let t = Instant::now();
    s.fake.put_node(node_json(
        "n6",
        &["10.244.6.0/24"],
        Some("192.168.50.6"),
        &[],
    ));
    peers_until(&mut rx, Duration::from_secs(1), "new node n6", |p| {
        names(p).contains(&"n6")
    })
    .await;
    eprintln!("new node seen after {:?}", t.elapsed());

    // A deleted node disappears.
    s.fake.delete_node("n2");
    let p = peers_until(&mut rx, Duration::from_secs(1), "n2 gone", |p| {
        !names(p).contains(&"n2")
    })
    .await;
    assert_eq!(names(&p), ["n3", "n6"]);

    // The node without pod CIDR gets one and becomes a peer.
    s.fake
        .patch_node("n4", json!({ "spec": { "podCIDRs": ["10.244.4.0/24"] } }));
    let p = peers_until(&mut rx, Duration::from_secs(1), "n4 with CIDR", |p| {
        names(p).contains(&"n4")
    })
    .await;
    assert_eq!(names(&p), ["n3", "n4", "n6"]);
    assert_eq!(p[1].underlay_ip, ip("192.168.50.4"));

    // A peer's weftd changes its annotations.
    s.fake.patch_node(
        "n6",
        json!({ "metadata": { "annotations": { ANNOTATION_UNDERLAY_IP: "10.0.0.6",
                                               ANNOTATION_VTEP_MAC: "02:00:00:00:00:06" } } }),
    );
    let p = peers_until(&mut rx, Duration::from_secs(1), "n6 annotated", |p| {
        p.iter()
            .any(|r| r.name == "n6" && r.underlay_ip == ip("10.0.0.6"))
    })
    .await;
    assert_eq!(p[2].vtep_mac.as_deref(), Some("02:00:00:00:00:06"));

    // Somebody strips our annotations: weftd puts them back.
    s.fake.patch_node(
        "n1",
        json!({ "metadata": { "annotations": { ANNOTATION_UNDERLAY_IP: null,
                                               ANNOTATION_VTEP_MAC: null } } }),
    );
    let fake = &s.fake;
    eventually(Duration::from_secs(2), "annotations restored", || {
        let n = fake.node("n1").unwrap();
        annotation(&n, ANNOTATION_UNDERLAY_IP).as_deref() == Some("192.168.50.1")
            && annotation(&n, ANNOTATION_VTEP_MAC).as_deref() == Some(MY_MAC)
    })
    .await;

    // Changes to our own node alone do not resend an unchanged peer list.
    assert!(!rx.has_changed().unwrap());
    assert_eq!(names(rx.borrow().as_ref().unwrap()), ["n3", "n4", "n6"]);

    let reqs = s.fake.requests();
    assert!(
        reqs.iter()
            .any(|r| r.starts_with("GET /api/v1/nodes?") && r.contains("watch=true")),
        "{reqs:?}"
    );
    s.unknown_requests_are_none();
}

#[tokio::test]
async fn run_recovers_from_api_server_outage_and_expired_versions() {
    let mut s = Setup::new().await;
    s.fake.put_node(node_json(
        "n1",
        &["10.244.1.0/24"],
        Some("192.168.50.1"),
        &[],
    ));
    s.fake.put_node(node_json(
        "n2",
        &["10.244.2.0/24"],
        Some("192.168.50.2"),
        &[],
    ));
    let health = Health::default();
    let mut rx = s.run(&health).await;
    peers_until(&mut rx, Duration::from_secs(5), "first list", |p| {
        names(p) == ["n2"]
    })
    .await;

    // API server down: health says so; a node is added meanwhile.
    s.fake.stop().await;
    eventually(Duration::from_secs(5), "health failed", || {
        !health.get().connected
    })
    .await;
    let err = health.get().last_error.unwrap();
    assert!(err.contains("watch nodes"), "{err}");
    s.fake.put_node(node_json(
        "n3",
        &["10.244.3.0/24"],
        Some("192.168.50.3"),
        &[],
    ));

    // Back: weftd lists again and catches up.
    s.fake.restart().await;
    peers_until(&mut rx, Duration::from_secs(8), "n3 after restart", |p| {
        names(p) == ["n2", "n3"]
    })
    .await;
    eventually(Duration::from_secs(2), "health ok", || {
        health.get().connected
    })
    .await;

    // History compacted: resuming gets 410 Gone, weftd lists again and carries on.
    let lists = |f: &FakeApiServer| {
        f.requests()
            .iter()
            .filter(|r| r.starts_with("GET /api/v1/nodes?") && !r.contains("watch=true"))
            .count()
    };
    let before = lists(&s.fake);
    s.fake.compact();
    s.fake.close_watches();
    let fake = &s.fake;
    eventually(Duration::from_secs(3), "relist after 410", || {
        lists(fake) > before
    })
    .await;
    s.fake.delete_node("n2");
    peers_until(
        &mut rx,
        Duration::from_secs(2),
        "n2 gone after relist",
        |p| names(p) == ["n3"],
    )
    .await;
    assert!(health.get().connected);
    s.unknown_requests_are_none();
}

/// Log output written into memory, for tests that read what an operator would see.
#[derive(Clone, Default)]
struct Captured(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Captured {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

/// Regression (issue 10): an unreachable API server read "list nodes: ServiceError: client
/// error (Connect)" (no address, no cause), and the kube client's own ERROR line repeated
/// every failure at the default log level.
#[tokio::test]
async fn unreachable_api_server_error_names_the_address_and_the_cause_once() {
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let server = format!("http://{}", closed.local_addr().unwrap());
    drop(closed);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("kubeconfig");
    std::fs::write(
        &path,
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster:\n    server: {server}\n\
             users:\n- name: u\n  user: {{}}\ncontexts:\n- name: x\n  context:\n    cluster: c\n    \
             user: u\ncurrent-context: x\n"
        ),
    )
    .unwrap();

    // weftd's own default log filter, writing into memory, on this (current-thread) runtime.
    let logs = Captured::default();
    let writer = logs.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(
            weft_agent::DEFAULT_LOG_FILTER,
        ))
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);

    let mut store = KubeStore::new(KubeConfig {
        kubeconfig: Some(path),
        node_name: "n1".to_string(),
        cluster_cidrs: vec![net("10.244.0.0/16")],
    });
    let health = Health::default();
    let h = health.clone();
    let task = tokio::spawn(async move { store.register(&me(), &h).await });
    eventually(Duration::from_secs(10), "a datastore error", || {
        health.get().last_error.is_some()
    })
    .await;
    task.abort();
    let err = health.get().last_error.unwrap();
    let address = server.trim_start_matches("http://");
    assert!(err.contains(address), "no server address in: {err}");
    assert!(
        err.to_lowercase().contains("connection refused"),
        "no cause in: {err}"
    );
    let logs = logs.text();
    assert!(
        !logs.contains("failed with error"),
        "the kube client's own ERROR lines are on by default:\n{logs}"
    );
    assert_eq!(
        logs.lines().filter(|l| l.contains(address)).count(),
        1,
        "one line per failure:\n{logs}"
    );
}

/// Regression (issue 10): a 403 ended in a Rust debug dump of the whole Status struct.
#[tokio::test]
async fn forbidden_reads_as_the_servers_message() {
    let mut s = Setup::new().await;
    s.fake.put_node(node_json(
        "n1",
        &["10.244.1.0/24"],
        Some("192.168.50.1"),
        &[],
    ));
    s.fake.forbid(Some("system:serviceaccount:weft:weft"));
    let health = Health::default();
    let task = s.register(&health);
    eventually(Duration::from_secs(5), "a forbidden error", || {
        health.get().last_error.is_some()
    })
    .await;
    let err = health.get().last_error.unwrap();
    assert_eq!(
        err,
        "get node n1: nodes \"n1\" is forbidden: User \"system:serviceaccount:weft:weft\" \
         cannot get resource \"nodes\" in API group \"\" at the cluster scope (HTTP 403 Forbidden)"
    );
    // Access given back: it registers.
    s.fake.forbid(None);
    let (_store, reg) = within(Duration::from_secs(10), "register", task)
        .await
        .unwrap();
    reg.unwrap();
}

/// Issue 11: a Node deleted and re-created gets a new podCIDR; the store reports the loss and
/// then the new CIDR (weftd used to log "restart weftd" and keep the old one).
#[tokio::test]
async fn own_node_deleted_and_recreated_reports_loss_then_the_new_cidr() {
    let mut s = Setup::new().await;
    s.fake.put_node(node_json(
        "n1",
        &["10.244.1.0/24"],
        Some("192.168.50.1"),
        &[],
    ));
    let health = Health::default();
    let _peers = s.run(&health).await;
    let mut own = s.own.take().unwrap();

    s.fake.delete_node("n1");
    let lost = within(
        Duration::from_secs(5),
        "loss reported",
        own.wait_for(|o| matches!(o, OwnState::Lost(_))),
    )
    .await
    .unwrap()
    .clone();
    assert_eq!(
        lost,
        OwnState::Lost("this node's Node object n1 was deleted".into())
    );

    // kubelet registers it again; no CIDR until kube-controller-manager assigns one.
    s.fake
        .put_node(node_json("n1", &[], Some("192.168.50.1"), &[]));
    let waiting = within(
        Duration::from_secs(5),
        "no-CIDR reported",
        own.wait_for(|o| matches!(o, OwnState::Lost(w) if w.contains("no spec.podCIDRs"))),
    )
    .await
    .unwrap()
    .clone();
    assert!(matches!(waiting, OwnState::Lost(_)));
    s.fake
        .patch_node("n1", json!({ "spec": { "podCIDRs": ["10.244.9.0/24"] } }));
    let now = within(
        Duration::from_secs(5),
        "new CIDR reported",
        own.wait_for(|o| matches!(o, OwnState::Registered(_))),
    )
    .await
    .unwrap()
    .clone();
    assert_eq!(now, OwnState::Registered(vec![net("10.244.9.0/24")]));
    // Our annotations are put back on the new object.
    eventually(Duration::from_secs(5), "annotations restored", || {
        s.my_underlay_annotation().is_some()
    })
    .await;
}

/// Issue 11: the node's underlay address changes while weftd runs; the store annotates the Node
/// with the new one (peers route to it).
#[tokio::test]
async fn a_new_underlay_address_is_published_on_the_node() {
    let mut s = Setup::new().await;
    s.fake.put_node(node_json(
        "n1",
        &["10.244.1.0/24"],
        Some("192.168.50.1"),
        &[],
    ));
    let health = Health::default();
    let _peers = s.run(&health).await;
    eventually(Duration::from_secs(5), "first annotation", || {
        s.my_underlay_annotation().as_deref() == Some("192.168.50.1")
    })
    .await;
    s.identity.as_ref().unwrap().send_modify(|me| {
        me.underlay_ip = ip("192.168.50.101");
    });
    eventually(Duration::from_secs(5), "new address annotated", || {
        s.my_underlay_annotation().as_deref() == Some("192.168.50.101")
    })
    .await;
}

//! The etcd datastore against a real etcd (Debian's etcd-server, `/usr/bin/etcd`): one etcd per
//! test on 127.0.0.1 with free ports and a temporary data directory.

use etcd_client::Client;
use ipnet::IpNet;
use std::net::{IpAddr, TcpListener};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use tempfile::TempDir;
use tokio::sync::watch;
use weft_agent::datastore::etcd::{
    list_nodes, read_cluster_config, subnet_key, write_cluster_config, ClusterConfig, EtcdConfig,
    EtcdStore, STATE_FILE,
};
use weft_agent::datastore::{Health, OwnState};
use weft_agent::node::{LocalIdentity, NodeRecord, Registration};

const PREFIX: &str = "/weft/network";

/// A single-member etcd, killed on drop.
struct Etcd {
    child: Option<Child>,
    dir: TempDir,
    client_port: u16,
    peer_port: u16,
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

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

impl Etcd {
    async fn start() -> Etcd {
        init_logs();
        let mut etcd = Etcd {
            child: None,
            dir: tempfile::tempdir().unwrap(),
            client_port: free_port(),
            peer_port: free_port(),
        };
        etcd.spawn().await;
        etcd
    }

    fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.client_port)
    }

    fn endpoints(&self) -> Vec<String> {
        vec![self.endpoint()]
    }

    /// Starts etcd on the same data directory and ports (again) and waits until it answers.
    async fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("etcd.log"))
            .unwrap();
        let client = self.endpoint();
        let peer = format!("http://127.0.0.1:{}", self.peer_port);
        let child = Command::new("/usr/bin/etcd")
            .arg("--name=default")
            .arg(format!(
                "--data-dir={}",
                self.dir.path().join("data").display()
            ))
            .arg(format!("--listen-client-urls={client}"))
            .arg(format!("--advertise-client-urls={client}"))
            .arg(format!("--listen-peer-urls={peer}"))
            .arg(format!("--initial-advertise-peer-urls={peer}"))
            .arg(format!("--initial-cluster=default={peer}"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start /usr/bin/etcd");
        self.child = Some(child);

        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let ready = async {
                let mut c = Client::connect(self.endpoints(), None).await.ok()?;
                c.get("ready-probe", None).await.ok()
            };
            if let Ok(Some(_)) = tokio::time::timeout(Duration::from_secs(1), ready).await {
                return;
            }
            if Instant::now() > deadline {
                let log = std::fs::read_to_string(self.dir.path().join("etcd.log")).unwrap();
                panic!("etcd did not become ready:\n{log}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    async fn client(&self) -> Client {
        Client::connect(self.endpoints(), None).await.unwrap()
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        self.stop();
    }
}

fn net(s: &str) -> IpNet {
    s.parse().unwrap()
}

fn v4_config() -> ClusterConfig {
    ClusterConfig {
        network: net("10.244.0.0/16"),
        subnet_len: 24,
        ipv6_network: None,
        ipv6_subnet_len: None,
    }
}

fn me(name: &str, ip: &str) -> LocalIdentity {
    LocalIdentity {
        name: name.to_string(),
        underlay_ip: ip.parse::<IpAddr>().unwrap(),
        vtep_mac: Some("02:00:00:00:00:01".to_string()),
    }
}

fn store(etcd: &Etcd, state_dir: &Path, ttl: Duration) -> EtcdStore {
    EtcdStore::new(EtcdConfig {
        endpoints: etcd.endpoints(),
        prefix: PREFIX.to_string(),
        lease_ttl: ttl,
        state_dir: state_dir.to_path_buf(),
    })
}

fn record(me: &LocalIdentity, reg: &Registration) -> NodeRecord {
    NodeRecord {
        name: me.name.clone(),
        underlay_ip: me.underlay_ip,
        pod_cidrs: reg.pod_cidrs.clone(),
        vtep_mac: me.vtep_mac.clone(),
    }
}

/// The record stored under `key` and the lease it is bound to.
async fn stored(etcd: &Etcd, key: &str) -> Option<(NodeRecord, i64)> {
    let resp = etcd.client().await.get(key, None).await.unwrap();
    resp.kvs()
        .first()
        .map(|kv| (serde_json::from_slice(kv.value()).unwrap(), kv.lease()))
}

/// Waits until `cond` holds on the peer list, returning how long it took.
async fn wait_peers(
    rx: &mut watch::Receiver<Option<Vec<NodeRecord>>>,
    within: Duration,
    what: &str,
    cond: impl Fn(&[NodeRecord]) -> bool,
) -> Duration {
    let start = Instant::now();
    let res = tokio::time::timeout(within, rx.wait_for(|p| p.as_deref().is_some_and(&cond))).await;
    let ok = matches!(res, Ok(Ok(_)));
    drop(res);
    assert!(
        ok,
        "{what}: not within {within:?}; last list {:?}",
        *rx.borrow()
    );
    start.elapsed()
}

async fn wait_until(within: Duration, what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !cond() {
        assert!(Instant::now() < deadline, "{what}: not within {within:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A registered node with its run() task.
struct Running {
    me: LocalIdentity,
    reg: Registration,
    health: Health,
    peers: watch::Receiver<Option<Vec<NodeRecord>>>,
    _own: watch::Receiver<OwnState>,
    task: tokio::task::JoinHandle<()>,
    _state: TempDir,
}

impl Running {
    async fn start(etcd: &Etcd, name: &str, ip: &str, ttl: Duration) -> Running {
        let state = tempfile::tempdir().unwrap();
        let me = me(name, ip);
        let health = Health::default();
        let mut s = store(etcd, state.path(), ttl);
        let reg = s.register(&me, &health).await.unwrap();
        let (tx, peers) = watch::channel(None);
        let (own_tx, own) = watch::channel(OwnState::Registered(reg.pod_cidrs.clone()));
        let (me2, health2) = (me.clone(), health.clone());
        let task = tokio::spawn(async move {
            s.run(watch::channel(me2).1, tx, own_tx, health2)
                .await
                .unwrap();
        });
        Running {
            me,
            reg,
            health,
            peers,
            _own: own,
            task,
            _state: state,
        }
    }

    fn record(&self) -> NodeRecord {
        record(&self.me, &self.reg)
    }

    fn key(&self) -> String {
        subnet_key(PREFIX, self.reg.pod_cidrs[0])
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_config_round_trip_and_register_waits_for_it() {
    let etcd = Etcd::start().await;
    let eps = etcd.endpoints();
    assert_eq!(read_cluster_config(&eps, PREFIX).await.unwrap(), None);

    let bad = ClusterConfig {
        subnet_len: 16,
        ..v4_config()
    };
    let err = write_cluster_config(&eps, PREFIX, &bad).await.unwrap_err();
    assert!(err.to_string().contains("subnetLen 16"), "{err}");
    assert_eq!(read_cluster_config(&eps, PREFIX).await.unwrap(), None);

    write_cluster_config(&eps, PREFIX, &v4_config())
        .await
        .unwrap();
    assert_eq!(
        read_cluster_config(&eps, PREFIX).await.unwrap(),
        Some(v4_config())
    );
    // The stored JSON uses the documented field names.
    let raw = etcd
        .client()
        .await
        .get(format!("{PREFIX}/config"), None)
        .await
        .unwrap();
    let json: serde_json::Value = serde_json::from_slice(raw.kvs()[0].value()).unwrap();
    assert_eq!(
        json,
        serde_json::json!({"network": "10.244.0.0/16", "subnetLen": 24})
    );

    // A dual-stack network under another prefix, written only after a node started waiting.
    let other = "/other/net";
    let state = tempfile::tempdir().unwrap();
    let health = Health::default();
    let mut s = EtcdStore::new(EtcdConfig {
        endpoints: eps.clone(),
        prefix: other.to_string(),
        lease_ttl: Duration::from_secs(30),
        state_dir: state.path().join("sub"),
    });
    let node = me("dual", "192.168.1.10");
    let (h2, node2) = (health.clone(), node.clone());
    let reg = tokio::spawn(async move { s.register(&node2, &h2).await });
    wait_until(
        Duration::from_secs(5),
        "health reports missing config",
        || {
            let h = health.get();
            !h.connected
                && h.last_error
                    .as_deref()
                    .is_some_and(|e| e.contains("/other/net/config"))
        },
    )
    .await;
    assert!(!reg.is_finished(), "register must wait for the config");

    let dual = ClusterConfig {
        network: net("10.100.0.0/16"),
        subnet_len: 24,
        ipv6_network: Some(net("fd00:10:100::/56")),
        ipv6_subnet_len: Some(64),
    };
    write_cluster_config(&eps, other, &dual).await.unwrap();
    let reg = tokio::time::timeout(Duration::from_secs(10), reg)
        .await
        .expect("register finishes once the config exists")
        .unwrap()
        .unwrap();
    assert_eq!(
        reg.pod_cidrs,
        vec![net("10.100.1.0/24"), net("fd00:10:100:1::/64")]
    );
    assert_eq!(
        reg.cluster_cidrs,
        vec![net("10.100.0.0/16"), net("fd00:10:100::/56")]
    );
    assert!(health.get().connected);
    let (rec, lease) = stored(&etcd, "/other/net/subnets/10.100.1.0-24")
        .await
        .expect("key named after the IPv4 subnet");
    assert_eq!(rec, record(&node, &reg));
    assert_ne!(lease, 0, "the key is bound to a lease");
    // The state directory was created and remembers the subnet, readable only by root.
    let path = state.path().join("sub").join(STATE_FILE);
    let meta = std::fs::metadata(&path).unwrap();
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    let remembered: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    assert_eq!(
        remembered["podCidrs"],
        serde_json::json!(["10.100.1.0/24", "fd00:10:100:1::/64"])
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_registrations_get_distinct_subnets() {
    let etcd = Etcd::start().await;
    write_cluster_config(&etcd.endpoints(), PREFIX, &v4_config())
        .await
        .unwrap();
    let n = 6;
    let dirs: Vec<TempDir> = (0..n).map(|_| tempfile::tempdir().unwrap()).collect();
    let tasks: Vec<_> = (0..n)
        .map(|i| {
            let mut s = store(&etcd, dirs[i].path(), Duration::from_secs(30));
            let me = me(&format!("node-{i}"), &format!("192.168.0.{}", i + 1));
            tokio::spawn(async move {
                let reg = s.register(&me, &Health::default()).await.unwrap();
                (me, reg)
            })
        })
        .collect();
    let mut got = Vec::new();
    for t in tasks {
        got.push(t.await.unwrap());
    }
    let mut subnets: Vec<IpNet> = got.iter().map(|(_, r)| r.pod_cidrs[0]).collect();
    subnets.sort();
    let want: Vec<IpNet> = (1..=n).map(|i| net(&format!("10.244.{i}.0/24"))).collect();
    assert_eq!(subnets, want, "distinct, lowest free, index 0 skipped");
    for (me, reg) in &got {
        assert_eq!(reg.pod_cidrs.len(), 1);
        assert_eq!(reg.cluster_cidrs, vec![net("10.244.0.0/16")]);
        let (rec, lease) = stored(&etcd, &subnet_key(PREFIX, reg.pod_cidrs[0]))
            .await
            .unwrap();
        assert_eq!(rec, record(me, reg));
        assert_ne!(lease, 0);
    }
    let listed = list_nodes(&etcd.endpoints(), PREFIX).await.unwrap();
    assert_eq!(listed.len(), n);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_reuses_subnet_and_remembers_it() {
    let etcd = Etcd::start().await;
    write_cluster_config(&etcd.endpoints(), PREFIX, &v4_config())
        .await
        .unwrap();
    let ttl = Duration::from_secs(30);
    let (dir_a, dir_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let a = me("a", "192.168.0.1");
    let b = me("b", "192.168.0.2");
    let reg_a = store(&etcd, dir_a.path(), ttl)
        .register(&a, &Health::default())
        .await
        .unwrap();
    let reg_b = store(&etcd, dir_b.path(), ttl)
        .register(&b, &Health::default())
        .await
        .unwrap();
    assert_eq!(reg_a.pod_cidrs, vec![net("10.244.1.0/24")]);
    assert_eq!(reg_b.pod_cidrs, vec![net("10.244.2.0/24")]);

    // Restart of "a" within the TTL, without its state directory and with a new address: the
    // key in etcd gives it back its subnet, and the record is updated.
    let fresh = tempfile::tempdir().unwrap();
    let a2 = me("a", "192.168.0.101");
    let reg_a2 = store(&etcd, fresh.path(), ttl)
        .register(&a2, &Health::default())
        .await
        .unwrap();
    assert_eq!(reg_a2, reg_a);
    let (rec, _) = stored(&etcd, &subnet_key(PREFIX, reg_a.pod_cidrs[0]))
        .await
        .unwrap();
    assert_eq!(rec, record(&a2, &reg_a2));
    assert_eq!(
        list_nodes(&etcd.endpoints(), PREFIX).await.unwrap().len(),
        2
    );

    // Every lease expired (simulated by deleting the keys): "b" asks for its remembered subnet
    // although a lower one is free; a newcomer gets the lowest free one.
    etcd.client()
        .await
        .delete(
            format!("{PREFIX}/subnets/"),
            Some(etcd_client::DeleteOptions::new().with_prefix()),
        )
        .await
        .unwrap();
    let reg_b2 = store(&etcd, dir_b.path(), ttl)
        .register(&b, &Health::default())
        .await
        .unwrap();
    assert_eq!(reg_b2.pod_cidrs, vec![net("10.244.2.0/24")]);
    let c = me("c", "192.168.0.3");
    let reg_c = store(&etcd, tempfile::tempdir().unwrap().path(), ttl)
        .register(&c, &Health::default())
        .await
        .unwrap();
    assert_eq!(reg_c.pod_cidrs, vec![net("10.244.1.0/24")]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_streams_peers_new_nodes_and_expired_ones() {
    let etcd = Etcd::start().await;
    write_cluster_config(&etcd.endpoints(), PREFIX, &v4_config())
        .await
        .unwrap();
    let ttl = Duration::from_secs(30);
    let mut a = Running::start(&etcd, "a", "192.168.0.1", ttl).await;
    let mut b = Running::start(&etcd, "b", "192.168.0.2", ttl).await;
    let (ra, rb) = (a.record(), b.record());
    wait_peers(&mut a.peers, Duration::from_secs(2), "a sees b", |p| {
        p == [rb.clone()]
    })
    .await;
    wait_peers(&mut b.peers, Duration::from_secs(2), "b sees a", |p| {
        p == [ra.clone()]
    })
    .await;
    assert!(a.health.get().connected);

    // A newcomer with a short lease appears within a second, in name order.
    let short = Duration::from_secs(2);
    let start = Instant::now();
    let c = Running::start(&etcd, "c", "192.168.0.3", short).await;
    let rc = c.record();
    wait_peers(&mut a.peers, Duration::from_secs(1), "a sees c", |p| {
        p == [rb.clone(), rc.clone()]
    })
    .await;
    println!(
        "new node seen {:?} after it started registering",
        start.elapsed()
    );
    wait_peers(&mut b.peers, Duration::from_secs(1), "b sees c", |p| {
        p == [ra.clone(), rc.clone()]
    })
    .await;

    // "c" stays alive beyond its TTL while its run() keeps the lease...
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(
        stored(&etcd, &c.key()).await.is_some(),
        "c's lease kept alive"
    );
    assert_eq!(a.peers.borrow().as_ref().unwrap().len(), 2);

    // ...and drops out once it stops.
    let c_key = c.key();
    drop(c);
    let took = wait_peers(
        &mut a.peers,
        Duration::from_secs(8),
        "c expires for a",
        |p| p == [rb.clone()],
    )
    .await;
    println!("expired node gone after {took:?}");
    wait_peers(
        &mut b.peers,
        Duration::from_secs(2),
        "c expires for b",
        |p| p == [ra.clone()],
    )
    .await;
    assert!(stored(&etcd, &c_key).await.is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lost_own_key_is_recreated_and_stolen_subnet_is_replaced() {
    let etcd = Etcd::start().await;
    write_cluster_config(&etcd.endpoints(), PREFIX, &v4_config())
        .await
        .unwrap();
    let ttl = Duration::from_secs(30);
    let a = Running::start(&etcd, "a", "192.168.0.1", ttl).await;
    let mut b = Running::start(&etcd, "b", "192.168.0.2", ttl).await;
    let ra = a.record();
    wait_peers(&mut b.peers, Duration::from_secs(2), "b sees a", |p| {
        p == [ra.clone()]
    })
    .await;

    // "a"'s lease is revoked (as if it expired): "a" re-creates the same key on a new lease.
    let (_, old_lease) = stored(&etcd, &a.key()).await.unwrap();
    etcd.client().await.lease_revoke(old_lease).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        if let Some((rec, lease)) = stored(&etcd, &a.key()).await {
            if lease != old_lease {
                assert_eq!(rec, ra);
                break;
            }
        }
        assert!(Instant::now() < deadline, "a's key was not re-created");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    wait_peers(
        &mut b.peers,
        Duration::from_secs(2),
        "b sees a again",
        |p| p == [ra.clone()],
    )
    .await;

    // A node whose subnet went to another node while its lease was lost claims another one
    // and says so (issue 11: it used to stop, and weftd exited).
    let state = tempfile::tempdir().unwrap();
    let d = me("d", "192.168.0.4");
    let mut s = store(&etcd, state.path(), ttl);
    let reg_d = s.register(&d, &Health::default()).await.unwrap();
    let key = subnet_key(PREFIX, reg_d.pod_cidrs[0]);
    let mut client = etcd.client().await;
    let (_, lease) = stored(&etcd, &key).await.unwrap();
    client.lease_revoke(lease).await.unwrap();
    let intruder = NodeRecord {
        name: "intruder".into(),
        ..record(&d, &reg_d)
    };
    client
        .put(key.as_str(), serde_json::to_vec(&intruder).unwrap(), None)
        .await
        .unwrap();
    let health = Health::default();
    let (tx, _rx) = watch::channel(None);
    let (own_tx, mut own) = watch::channel(OwnState::Registered(reg_d.pod_cidrs.clone()));
    let task = tokio::spawn(s.run(watch::channel(d.clone()).1, tx, own_tx, health.clone()));
    let lost = tokio::time::timeout(
        Duration::from_secs(10),
        own.wait_for(|o| matches!(o, OwnState::Lost(_))),
    )
    .await
    .expect("the loss is reported")
    .unwrap()
    .clone();
    let OwnState::Lost(why) = lost else {
        unreachable!()
    };
    assert!(why.contains("intruder"), "{why}");
    let now = tokio::time::timeout(
        Duration::from_secs(10),
        own.wait_for(|o| matches!(o, OwnState::Registered(_))),
    )
    .await
    .expect("a new subnet is claimed")
    .unwrap()
    .clone();
    let OwnState::Registered(new_cidrs) = now else {
        unreachable!()
    };
    assert_ne!(new_cidrs, reg_d.pod_cidrs);
    let (rec, _) = stored(&etcd, &subnet_key(PREFIX, new_cidrs[0]))
        .await
        .unwrap();
    assert_eq!(rec.name, "d");
    assert_eq!(stored(&etcd, &key).await.unwrap().0.name, "intruder");
    assert!(health.get().connected);
    task.abort();
    drop(a);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_outage_is_reported_and_recovered() {
    let mut etcd = Etcd::start().await;
    write_cluster_config(&etcd.endpoints(), PREFIX, &v4_config())
        .await
        .unwrap();
    let ttl = Duration::from_secs(30);
    let mut a = Running::start(&etcd, "a", "192.168.0.1", ttl).await;
    let b = Running::start(&etcd, "b", "192.168.0.2", ttl).await;
    let (ra, rb) = (a.record(), b.record());
    wait_peers(&mut a.peers, Duration::from_secs(2), "a sees b", |p| {
        p == [rb.clone()]
    })
    .await;

    etcd.stop();
    let ha = a.health.clone();
    wait_until(Duration::from_secs(5), "a reports the outage", || {
        let h = ha.get();
        !h.connected && h.last_error.is_some()
    })
    .await;
    println!("during outage: {:?}", a.health.get());
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(!a.health.get().connected);
    // The last known peers stay while etcd is away.
    assert_eq!(a.peers.borrow().clone(), Some(vec![rb.clone()]));

    let down_since = Instant::now();
    etcd.spawn().await;
    let (ha, hb) = (a.health.clone(), b.health.clone());
    wait_until(Duration::from_secs(15), "both reconnect", || {
        ha.get().connected && hb.get().connected
    })
    .await;
    println!("reconnected {:?} after restart", down_since.elapsed());
    assert_eq!(a.health.get().last_error, None);
    assert_eq!(a.peers.borrow().clone(), Some(vec![rb.clone()]));
    assert_eq!(b.peers.borrow().clone(), Some(vec![ra.clone()]));
    assert_eq!(stored(&etcd, &a.key()).await.unwrap().0, ra);
    assert_eq!(stored(&etcd, &b.key()).await.unwrap().0, rb);

    // The watch resumed: a newcomer shows up.
    let c = Running::start(&etcd, "c", "192.168.0.3", ttl).await;
    let rc = c.record();
    wait_peers(
        &mut a.peers,
        Duration::from_secs(1),
        "a sees c after outage",
        |p| p == [rb.clone(), rc.clone()],
    )
    .await;
}

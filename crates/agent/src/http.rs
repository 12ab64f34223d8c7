//! The agent's HTTP endpoints: /healthz, /readyz, /metrics (Prometheus text), /status
//! (JSON, what `weftd status` prints) and /policy/verdict (what `weftd trace --port` asks).
//! All read-only.

use crate::agent::Shared;
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Json, Router};
use std::io::{Read, Write};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

pub async fn serve(addr: SocketAddr, shared: Arc<Shared>) -> crate::error::Result<()> {
    let app = Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/status", get(status))
        .route("/policy/verdict", get(policy_verdict))
        .with_state(shared);
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| crate::error::Error::Listen { addr, source })?;
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::error!(error = %e, "http server stopped");
        }
    });
    Ok(())
}

#[derive(serde::Deserialize)]
struct VerdictQuery {
    src: std::net::IpAddr,
    dst: std::net::IpAddr,
    proto: String,
    port: u16,
}

/// The NetworkPolicy verdict for a new connection, from the model the table is compiled from.
async fn policy_verdict(
    State(shared): State<Arc<Shared>>,
    axum::extract::Query(q): axum::extract::Query<VerdictQuery>,
) -> impl IntoResponse {
    let Some(compiler) = shared.policy.get() else {
        return (
            StatusCode::NOT_FOUND,
            "NetworkPolicy is not enforced by this weftd\n".to_string(),
        );
    };
    let Some(proto) = weft_policy::Protocol::parse(&q.proto.to_uppercase()) else {
        return (
            StatusCode::BAD_REQUEST,
            format!("unknown protocol {:?} (tcp, udp, sctp)\n", q.proto),
        );
    };
    let local: Vec<std::net::IpAddr> = {
        let s = shared.snapshot();
        let mut ips: Vec<_> = s.underlay.iter().map(|u| u.address.addr()).collect();
        ips.extend(
            s.pod_cidrs
                .iter()
                .filter_map(crate::desired::pod_gateway)
                .map(|g| g.addr()),
        );
        ips
    };
    let v = {
        let c = compiler.read().unwrap();
        crate::policy::verdict(c.model(), &local, q.src, q.dst, proto, q.port)
    };
    (StatusCode::OK, format!("{v}\n"))
}

async fn readyz(State(shared): State<Arc<Shared>>) -> impl IntoResponse {
    match shared.snapshot().not_ready_reason() {
        None => (StatusCode::OK, "ready\n".to_string()),
        Some(why) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {why}\n"),
        ),
    }
}

async fn metrics(State(shared): State<Arc<Shared>>) -> impl IntoResponse {
    if let Some(compiler) = shared.policy.get() {
        // One `nft -j list counters` per scrape, joined with what the counters stand for.
        let meta = compiler.read().unwrap().counters().clone();
        let read =
            tokio::task::spawn_blocking(|| weft_policy::Applier::new().read_counters()).await;
        match read {
            Ok(Ok(values)) => shared
                .metrics
                .policy_packets
                .set(crate::metrics::PolicyPackets::join(&meta, &values)),
            Ok(Err(e)) => tracing::debug!(error = %e, "metrics: no policy counters"),
            Err(e) => tracing::warn!(error = %e, "metrics: policy counter task"),
        }
    }
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        shared.metrics.encode(),
    )
}

async fn status(State(shared): State<Arc<Shared>>) -> impl IntoResponse {
    Json(shared.snapshot())
}

/// A minimal blocking HTTP/1.0 GET for the CLI (`weftd status`): status code and body.
pub fn get_blocking(addr: SocketAddr, path: &str) -> std::io::Result<(u16, String)> {
    let mut s = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(3))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n")?;
    let mut raw = String::new();
    s.read_to_string(&mut raw)?;
    let (head, body) = raw.split_once("\r\n\r\n").unwrap_or((raw.as_str(), ""));
    let code = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("bad HTTP answer from {addr}")))?;
    Ok((code, body.to_string()))
}

//! The one HTTP server loop for every listener that speaks HTTP: each admin
//! port, and the broker's WebSocket listeners. axum's own `serve` waits
//! forever for a request that never completes and takes every connection
//! offered; this one caps connections and closes one whose request headers
//! have not arrived within a deadline, which is also how long an idle
//! keep-alive connection may wait for its next request (hyper starts the
//! header timer as soon as it waits for a request).

use std::net::SocketAddr;
use std::time::Duration;

use axum::Router;
use axum::extract::ConnectInfo;
use hyper_util::rt::{TokioIo, TokioTimer};
use prometheus_client::metrics::counter::Counter;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::debug;

use crate::admission::{Admission, AdmissionLimits};

/// What one HTTP listener allows.
#[derive(Debug, Clone)]
pub struct HttpLimits {
    /// Connections open at once; more are closed on arrival.
    pub max_connections: usize,
    /// Connections open at once from one source address, so one peer cannot
    /// take every slot (kubelet's probes come from the node's address).
    pub max_connections_per_address: usize,
    /// How long a connection may take to send a request's headers, or sit
    /// idle between requests.
    pub header_read_timeout: Duration,
    /// Counts connections closed on arrival by either cap.
    pub refused: Counter,
}

impl HttpLimits {
    /// An admin port: kubelet's probes and a Prometheus scrape or two.
    pub fn admin() -> Self {
        Self {
            max_connections: 256,
            max_connections_per_address: 16,
            header_read_timeout: Duration::from_secs(10),
            refused: Counter::default(),
        }
    }
}

/// Serves `router` on `listener` until `stop` completes, then lets the
/// requests in progress finish. Handlers see the peer as
/// `ConnectInfo<SocketAddr>`; upgrades (WebSockets) are supported, and an
/// upgraded connection lives on outside these limits.
pub async fn serve<L>(
    mut listener: L,
    router: Router,
    limits: HttpLimits,
    stop: impl Future<Output = ()> + Send + 'static,
) where
    L: axum::serve::Listener<Addr = SocketAddr>,
{
    let admission = Admission::new(AdmissionLimits {
        max_connections: limits.max_connections,
        max_connections_per_address: limits.max_connections_per_address,
        max_handshakes: limits.max_connections,
        max_handshakes_per_address: limits.max_connections_per_address,
    });
    let stopping = CancellationToken::new();
    let connections = TaskTracker::new();
    tokio::pin!(stop);
    loop {
        let (io, peer) = tokio::select! {
            accepted = listener.accept() => accepted,
            () = &mut stop => break,
        };
        let slot = match admission.admit(peer.ip()) {
            Ok(slot) => slot,
            Err(refusal) => {
                limits.refused.inc();
                debug!(%peer, reason = refusal.label(), "HTTP connection refused");
                continue;
            }
        };
        let router = router.clone();
        let stopping = stopping.clone();
        let header_read_timeout = limits.header_read_timeout;
        connections.spawn(async move {
            let service = hyper::service::service_fn(move |mut request: hyper::Request<_>| {
                request.extensions_mut().insert(ConnectInfo(peer));
                // A Router is always ready: `call` without `poll_ready`.
                tower_service::Service::call(&mut router.clone(), request)
            });
            let mut http = hyper::server::conn::http1::Builder::new();
            http.timer(TokioTimer::new())
                .header_read_timeout(header_read_timeout);
            let connection = http
                .serve_connection(TokioIo::new(io), service)
                .with_upgrades();
            tokio::pin!(connection);
            let result = tokio::select! {
                result = connection.as_mut() => result,
                () = stopping.cancelled() => {
                    connection.as_mut().graceful_shutdown();
                    connection.await
                }
            };
            if let Err(e) = result {
                debug!(%peer, "HTTP connection ended: {e}");
            }
            drop(slot);
        });
    }
    stopping.cancel();
    connections.close();
    connections.wait().await;
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};

    use axum::routing::get;

    use super::*;

    /// A connection that never finishes its request is closed after the
    /// header timeout; past the cap, a connection is closed on arrival; and
    /// requests still work.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn slow_requests_time_out_and_connections_are_capped() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let router = Router::new().route(
            "/peer",
            get(|ConnectInfo(peer): ConnectInfo<SocketAddr>| async move { peer.to_string() }),
        );
        let limits = HttpLimits {
            max_connections: 2,
            max_connections_per_address: 2,
            header_read_timeout: Duration::from_millis(300),
            refused: Counter::default(),
        };
        let refused = limits.refused.clone();
        tokio::spawn(serve(listener, router, limits, std::future::pending()));
        tokio::task::spawn_blocking(move || {
            let mut slow = std::net::TcpStream::connect(addr).unwrap();
            slow.write_all(b"GET /peer HTTP/1.1\r\nHost: x\r\n")
                .unwrap();
            let mut idle = std::net::TcpStream::connect(addr).unwrap();
            // Both slots are taken: the third is closed unanswered.
            let mut third = std::net::TcpStream::connect(addr).unwrap();
            third
                .set_read_timeout(Some(Duration::from_secs(5)))
                .unwrap();
            let mut buf = Vec::new();
            let _ = third.write_all(b"GET /peer HTTP/1.1\r\nHost: x\r\n\r\n");
            assert!(matches!(third.read_to_end(&mut buf), Ok(0) | Err(_)));
            assert_eq!(refused.get(), 1);
            // The slow and the idle one are closed by the header timeout.
            for stream in [&mut slow, &mut idle] {
                stream
                    .set_read_timeout(Some(Duration::from_secs(5)))
                    .unwrap();
                let mut answer = Vec::new();
                stream.read_to_end(&mut answer).unwrap();
                let answer = String::from_utf8_lossy(&answer);
                assert!(!answer.contains("200 OK"), "{answer}");
            }
            // Their slots are free again.
            let mut ok = std::net::TcpStream::connect(addr).unwrap();
            ok.write_all(b"GET /peer HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                .unwrap();
            let mut answer = String::new();
            ok.read_to_string(&mut answer).unwrap();
            assert!(answer.starts_with("HTTP/1.1 200 OK"), "{answer}");
            assert!(
                answer.ends_with(&ok.local_addr().unwrap().to_string()),
                "{answer}"
            );
        })
        .await
        .unwrap();
    }
}

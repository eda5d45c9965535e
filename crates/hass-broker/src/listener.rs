//! Accepting TCP connections and handing each to its own task.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hass_runtime::Fatal;
use hass_runtime::shutdown::Shutdown;
use tokio::net::TcpListener;
use tokio_util::task::TaskTracker;
use tracing::warn;

use crate::connection::{self, ConnectionContext, ParkingLot};

pub async fn bind(addr: SocketAddr, name: &str) -> Result<TcpListener, Fatal> {
    TcpListener::bind(addr)
        .await
        .map_err(|e| Fatal::runtime(format!("listeners.{name}: cannot listen on {addr}: {e}")))
}

/// Accepts until shutdown. Accept errors (out of file descriptors) are logged
/// and retried after a pause rather than ending the listener.
pub async fn accept_loop(
    listener: TcpListener,
    ctx: Arc<ConnectionContext>,
    connections: TaskTracker,
    shutdown: Shutdown,
) {
    // One parking lot for the broker's plain-TCP connections.
    ctx.parking.get_or_init(|| {
        ParkingLot::start(connections.clone(), ctx.metrics.connections_parked.clone())
            .inspect_err(|e| warn!("idle connections will not park: {e}"))
            .ok()
    });
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = shutdown.cancelled() => return,
        };
        match accepted {
            Ok((stream, peer)) => {
                // MQTT acks are small and latency-bound; Nagle only delays them.
                let _ = stream.set_nodelay(true);
                connections.spawn(connection::serve(stream, peer, ctx.clone()));
            }
            Err(e) => {
                warn!("accept failed: {e}; retrying in 100 ms");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

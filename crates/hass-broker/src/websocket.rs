//! MQTT over WebSockets (Home Assistant's frontend cards, browser tools,
//! Zigbee2MQTT's frontend): an HTTP upgrade on `/mqtt` or `/`, then the same
//! connection handling as TCP.
//!
//! WebSocket messages are pumped into an in-memory byte pipe, so
//! [`connection::serve`] sees an ordinary byte stream and MQTT packets may
//! span messages or share one, as the spec allows.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{ConnectInfo, State};
use axum::response::Response;
use axum::routing::get;
use futures_util::{SinkExt, StreamExt};
use hass_runtime::http_server::{self, HttpLimits};
use tokio::io::{AsyncRead, AsyncWriteExt, DuplexStream};
use tokio_util::task::TaskTracker;

use crate::connection::{self, ConnectionContext};

#[derive(Clone)]
struct WsState {
    ctx: Arc<ConnectionContext>,
    connections: TaskTracker,
}

/// Serves MQTT over WebSockets on `listener` (plain TCP for `ws`, TLS
/// streams for `wss`) until `stop` completes. The HTTP part (until the
/// upgrade) is hass-runtime's server: a connection that has not sent its
/// upgrade request within `limits.header_read_timeout` is closed, and at
/// most `limits.max_connections` are in that part at once.
pub async fn serve<L>(
    listener: L,
    ctx: Arc<ConnectionContext>,
    connections: TaskTracker,
    limits: HttpLimits,
    stop: impl std::future::Future<Output = ()> + Send + 'static,
) where
    L: axum::serve::Listener<Addr = SocketAddr>,
{
    let state = WsState { ctx, connections };
    let app = Router::new()
        .route("/mqtt", get(upgrade))
        .route("/", get(upgrade))
        .with_state(state);
    http_server::serve(listener, app, limits, stop).await;
}

async fn upgrade(
    ws: WebSocketUpgrade,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    State(state): State<WsState>,
) -> Response {
    let max = state.ctx.max_packet_size;
    // MQTT over WebSockets names its subprotocol "mqtt" (3.1.1 and 5).
    ws.protocols(["mqtt", "mqttv3.1"])
        // tungstenite zero-fills its whole read buffer (128 KiB by default)
        // on the first read and keeps it: that was 145 KB of every idle
        // WebSocket connection. Larger frames still grow it as they need.
        .read_buffer_size(READ_CHUNK)
        // Each frame goes out when sent, not once 128 KiB have gathered.
        .write_buffer_size(0)
        .max_message_size(max.saturating_add(8))
        .max_frame_size(max.saturating_add(8))
        .on_upgrade(move |socket| async move {
            let (broker_side, ws_side) = tokio::io::duplex(64 * 1024);
            let ctx = state.ctx.clone();
            state
                .connections
                .spawn(async move { connection::serve(broker_side, peer, ctx).await });
            pump(socket, ws_side).await;
        })
}

/// The most one read takes from the socket or the pipe.
const READ_CHUNK: usize = 4 * 1024;

/// Moves bytes between the WebSocket and the pipe until either side closes.
async fn pump(socket: WebSocket, mut pipe: DuplexStream) {
    let (mut ws_tx, mut ws_rx) = socket.split();
    loop {
        tokio::select! {
            incoming = ws_rx.next() => match incoming {
                Some(Ok(Message::Binary(data))) => {
                    if pipe.write_all(&data).await.is_err() {
                        break;
                    }
                }
                // Pings are answered by the WebSocket layer; text is not MQTT.
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
                Some(Ok(Message::Text(_) | Message::Close(_))) | Some(Err(_)) | None => break,
            },
            outgoing = read_chunk(&mut pipe) => match outgoing {
                Ok(data) if !data.is_empty() => {
                    if ws_tx.send(Message::Binary(data)).await.is_err() {
                        break;
                    }
                }
                _ => break,
            },
        }
    }
    let _ = ws_tx.close().await;
}

/// What the broker side has written, up to `READ_CHUNK` bytes (empty at
/// the end). The bytes land on the stack only while polled, so a pump
/// waiting for the broker holds no buffer.
async fn read_chunk(pipe: &mut DuplexStream) -> std::io::Result<bytes::Bytes> {
    std::future::poll_fn(|cx| {
        let mut stack = [std::mem::MaybeUninit::<u8>::uninit(); READ_CHUNK];
        let mut buf = tokio::io::ReadBuf::uninit(&mut stack);
        std::task::ready!(std::pin::Pin::new(&mut *pipe).poll_read(cx, &mut buf))?;
        std::task::Poll::Ready(Ok(bytes::Bytes::copy_from_slice(buf.filled())))
    })
    .await
}

//! A whole connection fed arbitrary bytes after a valid CONNECT: the session
//! state machine (acks, subscriptions, wills, aliases) must close or carry
//! on, never panic or hang.
#![no_main]

use std::sync::Arc;
use std::time::Duration;

use hass_broker::auth::{AccessPolicy, Authenticator};
use hass_broker::connection::{self, ConnectionContext};
use hass_broker::config::LimitsConfig;
use hass_broker::router::{Limits, Router};
use libfuzzer_sys::fuzz_target;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// CONNECT, MQTT 5, client id "f", no credentials.
const CONNECT_V5: &[u8] = &[0x10, 0x0e, 0, 4, b'M', b'Q', b'T', b'T', 5, 0x02, 0, 0, 0, 0, 1, b'f'];
/// CONNECT, MQTT 3.1.1, client id "f".
const CONNECT_V4: &[u8] = &[0x10, 0x0d, 0, 4, b'M', b'Q', b'T', b'T', 4, 0x02, 0, 0, 0, 1, b'f'];

fuzz_target!(|data: &[u8]| {
    let Some((&selector, rest)) = data.split_first() else {
        return;
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let mut limits = LimitsConfig::default();
        limits.max_packet_size = 64 * 1024;
        limits.connect_timeout = Duration::from_millis(100);
        let policy = AccessPolicy {
            authenticator: Authenticator {
                passwords: None,
                allow_anonymous: true,
            },
            acl: None,
        };
        let router = Arc::new(Router::new(Limits::default(), None));
        let ctx = Arc::new(ConnectionContext::new(router, policy, &limits, None));
        let (client, server) = tokio::io::duplex(256 * 1024);
        let serving = tokio::spawn(connection::serve(server, "127.0.0.1:1".parse().expect("addr"), ctx));
        let mut client = client;
        let connect = if selector & 1 == 0 { CONNECT_V5 } else { CONNECT_V4 };
        let _ = client.write_all(connect).await;
        let _ = client.write_all(rest).await;
        // Half-close: the broker reads EOF after the input but can still
        // write its answers, which this side drains.
        let _ = client.shutdown().await;
        let mut answers = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(5), client.read_to_end(&mut answers)).await;
        let finished = tokio::time::timeout(Duration::from_secs(5), serving).await;
        assert!(finished.is_ok(), "connection did not end after its peer closed");
    });
});


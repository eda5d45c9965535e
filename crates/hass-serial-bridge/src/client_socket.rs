//! Socket options for a served client: no Nagle delay, and keepalive plus
//! `TCP_USER_TIMEOUT` so a vanished client stops holding the stick.

use socket2::{SockRef, TcpKeepalive};
use tokio::net::TcpStream;

use crate::config::KeepaliveConfig;

/// Applies `TCP_NODELAY`, keepalive idle/interval/count and `TCP_USER_TIMEOUT`.
pub fn configure(stream: &TcpStream, keepalive: &KeepaliveConfig) -> std::io::Result<()> {
    stream.set_nodelay(true)?;
    let socket = SockRef::from(stream);
    socket.set_tcp_keepalive(
        &TcpKeepalive::new()
            .with_time(keepalive.idle)
            .with_interval(keepalive.interval)
            .with_retries(keepalive.count),
    )?;
    // Zero means the kernel default (about 15 minutes of retransmissions).
    let timeout = (!keepalive.user_timeout.is_zero()).then_some(keepalive.user_timeout);
    socket.set_tcp_user_timeout(timeout)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn the_kernel_reports_the_configured_values() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let _client = TcpStream::connect(addr).await.unwrap();
        let (served, _) = listener.accept().await.unwrap();
        let keepalive = KeepaliveConfig {
            idle: Duration::from_secs(7),
            interval: Duration::from_secs(2),
            count: 4,
            user_timeout: Duration::from_secs(15),
        };
        configure(&served, &keepalive).unwrap();
        let socket = SockRef::from(&served);
        assert!(served.nodelay().unwrap());
        assert!(socket.keepalive().unwrap());
        assert_eq!(socket.tcp_keepalive_time().unwrap(), Duration::from_secs(7));
        assert_eq!(
            socket.tcp_keepalive_interval().unwrap(),
            Duration::from_secs(2)
        );
        assert_eq!(socket.tcp_keepalive_retries().unwrap(), 4);
        assert_eq!(
            socket.tcp_user_timeout().unwrap(),
            Some(Duration::from_secs(15))
        );
    }
}

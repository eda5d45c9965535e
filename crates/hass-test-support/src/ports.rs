//! Free loopback ports for servers started by tests.

use std::net::{SocketAddr, TcpListener};

/// A port the kernel just handed out on 127.0.0.1. Another process could take
/// it before the test binds it; harnesses that start servers retry on
/// "address in use" for that reason.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("the kernel has no free loopback port")
}

/// `127.0.0.1:<free port>`.
pub fn free_addr() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], free_port()))
}

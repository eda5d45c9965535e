//! Free loopback ports for servers started by tests.

use std::collections::HashSet;
use std::net::{SocketAddr, TcpListener};
use std::sync::Mutex;

/// Ports already handed out in this process: the kernel may offer a released
/// port again at once, and tests run in parallel threads.
static HANDED_OUT: Mutex<Option<HashSet<u16>>> = Mutex::new(None);

/// A port the kernel just handed out on 127.0.0.1, never the same twice in
/// one test process. Another process could still take it before the test
/// binds it; harnesses that start servers retry on "address in use".
pub fn free_port() -> u16 {
    let mut handed_out = HANDED_OUT.lock().unwrap_or_else(|p| p.into_inner());
    let handed_out = handed_out.get_or_insert_with(HashSet::new);
    loop {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("the kernel has no free loopback port");
        if handed_out.insert(port) {
            return port;
        }
    }
}

/// `127.0.0.1:<free port>`.
pub fn free_addr() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], free_port()))
}

//! A device's ports: the raw one, and the RFC 2217 one when configured. One
//! client is served at a time across both.

use std::io;
use std::net::SocketAddr;

use tokio::net::{TcpListener, TcpStream};

use crate::config::DeviceSpec;

/// What a client on a port speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// Bytes as they are (ser2net's `raw`, socat).
    Raw,
    /// Telnet with COM-PORT-OPTION.
    Rfc2217,
}

/// The ports bound at start, before the device's own runtime takes them.
#[derive(Debug)]
pub struct BoundPorts {
    raw: std::net::TcpListener,
    rfc2217: Option<std::net::TcpListener>,
}

impl BoundPorts {
    /// Binds the device's ports; the error names the address.
    pub async fn bind(spec: &DeviceSpec) -> Result<Self, String> {
        let bind = |addr: SocketAddr| async move {
            let listener = TcpListener::bind(addr)
                .await
                .map_err(|e| format!("cannot listen on {addr}: {e}"))?;
            listener
                .into_std()
                .map_err(|e| format!("cannot hand the listener on {addr} over: {e}"))
        };
        let raw = bind(spec.listen).await?;
        let rfc2217 = match spec.rfc2217_listen {
            Some(addr) => Some(bind(addr).await?),
            None => None,
        };
        Ok(Self { raw, rfc2217 })
    }
}

/// The ports on the runtime that serves them.
#[derive(Debug)]
pub struct Listeners {
    raw: TcpListener,
    rfc2217: Option<TcpListener>,
}

impl Listeners {
    /// Registers the bound ports with the current runtime.
    pub fn register(bound: BoundPorts) -> io::Result<Self> {
        Ok(Self {
            raw: TcpListener::from_std(bound.raw)?,
            rfc2217: bound.rfc2217.map(TcpListener::from_std).transpose()?,
        })
    }

    /// The next client on either port. Cancel-safe, as `TcpListener::accept`.
    pub async fn accept(&self) -> io::Result<(TcpStream, SocketAddr, Protocol)> {
        let tag = |protocol| move |(stream, peer)| (stream, peer, protocol);
        match &self.rfc2217 {
            None => self.raw.accept().await.map(tag(Protocol::Raw)),
            Some(rfc2217) => tokio::select! {
                accepted = self.raw.accept() => accepted.map(tag(Protocol::Raw)),
                accepted = rfc2217.accept() => accepted.map(tag(Protocol::Rfc2217)),
            },
        }
    }
}

//! Which connections a server takes on: caps on connections in all and per
//! source address, and on connections still in their handshake (the
//! broker: no CONNECT read yet; an HTTP server: every connection), in all
//! and per address. A handshake holds a bounded buffer, so these caps bound
//! what unauthenticated peers can make a server hold, and the per-address
//! ones keep one peer from taking every slot.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

/// The caps.
#[derive(Debug, Clone, Copy)]
pub struct AdmissionLimits {
    pub max_connections: usize,
    pub max_connections_per_address: usize,
    pub max_handshakes: usize,
    pub max_handshakes_per_address: usize,
}

/// Why a connection was closed on arrival: the metric's `reason` label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    MaxConnections,
    MaxConnectionsPerAddress,
    MaxHandshakes,
    MaxHandshakesPerAddress,
}

impl Refusal {
    pub fn label(self) -> &'static str {
        match self {
            Self::MaxConnections => "max_connections",
            Self::MaxConnectionsPerAddress => "max_connections_per_address",
            Self::MaxHandshakes => "max_handshakes",
            Self::MaxHandshakesPerAddress => "max_handshakes_per_address",
        }
    }
}

#[derive(Debug, Default)]
struct Counts {
    connections: usize,
    handshakes: usize,
    by_address: HashMap<IpAddr, (usize, usize)>,
}

/// Counts connections as they come and go.
#[derive(Debug)]
pub struct Admission {
    limits: AdmissionLimits,
    counts: Mutex<Counts>,
}

/// A connection that was let in; dropping it lets the next one in.
#[derive(Debug)]
pub struct Admitted {
    admission: Arc<Admission>,
    address: IpAddr,
    in_handshake: bool,
}

impl Admission {
    pub fn new(limits: AdmissionLimits) -> Arc<Self> {
        Arc::new(Self {
            limits,
            counts: Mutex::new(Counts::default()),
        })
    }

    /// Lets a new connection from `address` in, in its handshake, or says
    /// which cap it hit.
    pub fn admit(self: &Arc<Self>, address: IpAddr) -> Result<Admitted, Refusal> {
        let mut counts = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        let limits = &self.limits;
        let (at_address, handshakes_at_address) =
            counts.by_address.get(&address).copied().unwrap_or_default();
        let refusal = if counts.connections >= limits.max_connections {
            Some(Refusal::MaxConnections)
        } else if at_address >= limits.max_connections_per_address {
            Some(Refusal::MaxConnectionsPerAddress)
        } else if counts.handshakes >= limits.max_handshakes {
            Some(Refusal::MaxHandshakes)
        } else if handshakes_at_address >= limits.max_handshakes_per_address {
            Some(Refusal::MaxHandshakesPerAddress)
        } else {
            None
        };
        if let Some(refusal) = refusal {
            return Err(refusal);
        }
        counts.connections += 1;
        counts.handshakes += 1;
        let entry = counts.by_address.entry(address).or_default();
        entry.0 += 1;
        entry.1 += 1;
        Ok(Admitted {
            admission: self.clone(),
            address,
            in_handshake: true,
        })
    }

    /// Connections now, and how many are in their handshake.
    pub fn counts(&self) -> (usize, usize) {
        let counts = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        (counts.connections, counts.handshakes)
    }

    fn release(&self, address: IpAddr, connection: bool, handshake: bool) {
        let mut counts = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        counts.connections -= usize::from(connection);
        counts.handshakes -= usize::from(handshake);
        if let Some(entry) = counts.by_address.get_mut(&address) {
            entry.0 -= usize::from(connection);
            entry.1 -= usize::from(handshake);
            if entry.0 == 0 {
                counts.by_address.remove(&address);
            }
        }
    }
}

impl Admitted {
    /// The handshake is over (CONNACK sent): the connection now counts only
    /// against the connection caps.
    pub fn handshake_done(&mut self) {
        if std::mem::take(&mut self.in_handshake) {
            self.admission.release(self.address, false, true);
        }
    }
}

impl Drop for Admitted {
    fn drop(&mut self) {
        self.admission
            .release(self.address, true, self.in_handshake);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caps_apply_in_order_and_release_on_drop() {
        let admission = Admission::new(AdmissionLimits {
            max_connections: 4,
            max_connections_per_address: 3,
            max_handshakes: 3,
            max_handshakes_per_address: 2,
        });
        let a: IpAddr = [10, 0, 0, 1].into();
        let b: IpAddr = [10, 0, 0, 2].into();
        let mut first = admission.admit(a).expect("first");
        let _second = admission.admit(a).expect("second");
        assert_eq!(
            admission.admit(a).unwrap_err(),
            Refusal::MaxHandshakesPerAddress
        );
        first.handshake_done();
        let _third = admission.admit(a).expect("a handshake slot came free");
        assert_eq!(
            admission.admit(a).unwrap_err(),
            Refusal::MaxConnectionsPerAddress
        );
        let _other = admission.admit(b).expect("another address");
        assert_eq!(admission.counts(), (4, 3));
        assert_eq!(admission.admit(b).unwrap_err(), Refusal::MaxConnections);
        drop(first);
        assert_eq!(admission.admit(b).unwrap_err(), Refusal::MaxHandshakes);
        assert_eq!(admission.counts(), (3, 3));
    }
}

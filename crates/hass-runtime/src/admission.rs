//! Which connections a server takes on: caps on connections in all and per
//! source address, and on connections still in their handshake (the
//! broker: no CONNECT read yet; an HTTP server: every connection), in all
//! and per address. A handshake holds a bounded buffer, so these caps bound
//! what unauthenticated peers can make a server hold, and the per-address
//! ones keep one peer from taking every slot.
//!
//! A connection over a handshake cap can also wait for a slot
//! ([`Admission::admit_patiently`]) instead of being closed: a burst of
//! devices behind one NAT address reconnecting at once then gets in, one
//! cap's worth at a time, and a waiting connection holds no buffer yet.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Notify;

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
    /// Connections waiting for a handshake slot: at most `max_handshakes`,
    /// so a flood cannot make every release wake thousands of tasks.
    waiting: usize,
    by_address: HashMap<IpAddr, (usize, usize)>,
}

/// Counts connections as they come and go.
#[derive(Debug)]
pub struct Admission {
    limits: AdmissionLimits,
    counts: Mutex<Counts>,
    /// Told whenever a handshake slot comes free.
    handshake_freed: Notify,
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
            handshake_freed: Notify::new(),
        })
    }

    /// Lets a new connection from `address` in, in its handshake, or says
    /// which cap it hit.
    pub fn admit(self: &Arc<Self>, address: IpAddr) -> Result<Admitted, Refusal> {
        let mut counts = self.lock();
        self.connection_cap(&counts, address)
            .or_else(|| self.handshake_cap(&counts, address))
            .map_or(Ok(()), Err)?;
        Ok(self.take(&mut counts, address))
    }

    /// Like [`Self::admit`], but a connection over a handshake cap waits up
    /// to `patience` for a slot instead of being refused at once, while at
    /// most `max_handshakes` others wait (so waiting sockets are bounded,
    /// though not counted as connections). The connection caps still
    /// refuse at once.
    pub async fn admit_patiently(
        self: &Arc<Self>,
        address: IpAddr,
        patience: Duration,
    ) -> Result<Admitted, Refusal> {
        let deadline = tokio::time::Instant::now() + patience;
        let mut waiting: Option<Waiting<'_>> = None;
        // Set once patience has run out: one last look, then the cap hit.
        let mut last_look = false;
        loop {
            let freed = self.handshake_freed.notified();
            tokio::pin!(freed);
            // Registered before the check, so a slot freed after it wakes us.
            freed.as_mut().enable();
            {
                let mut counts = self.lock();
                if let Some(refusal) = self.connection_cap(&counts, address) {
                    return Err(refusal);
                }
                let Some(refusal) = self.handshake_cap(&counts, address) else {
                    return Ok(self.take(&mut counts, address));
                };
                if last_look {
                    return Err(refusal);
                }
                if waiting.is_none() {
                    if counts.waiting >= self.limits.max_handshakes {
                        return Err(refusal);
                    }
                    counts.waiting += 1;
                    waiting = Some(Waiting(self));
                }
            }
            last_look = tokio::time::timeout_at(deadline, freed).await.is_err();
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Counts> {
        self.counts.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn connection_cap(&self, counts: &Counts, address: IpAddr) -> Option<Refusal> {
        let at_address = counts.by_address.get(&address).map_or(0, |e| e.0);
        if counts.connections >= self.limits.max_connections {
            Some(Refusal::MaxConnections)
        } else if at_address >= self.limits.max_connections_per_address {
            Some(Refusal::MaxConnectionsPerAddress)
        } else {
            None
        }
    }

    fn handshake_cap(&self, counts: &Counts, address: IpAddr) -> Option<Refusal> {
        let at_address = counts.by_address.get(&address).map_or(0, |e| e.1);
        if counts.handshakes >= self.limits.max_handshakes {
            Some(Refusal::MaxHandshakes)
        } else if at_address >= self.limits.max_handshakes_per_address {
            Some(Refusal::MaxHandshakesPerAddress)
        } else {
            None
        }
    }

    fn take(self: &Arc<Self>, counts: &mut Counts, address: IpAddr) -> Admitted {
        counts.connections += 1;
        counts.handshakes += 1;
        let entry = counts.by_address.entry(address).or_default();
        entry.0 += 1;
        entry.1 += 1;
        Admitted {
            admission: self.clone(),
            address,
            in_handshake: true,
        }
    }

    /// Connections now, and how many are in their handshake.
    pub fn counts(&self) -> (usize, usize) {
        let counts = self.lock();
        (counts.connections, counts.handshakes)
    }

    fn release(&self, address: IpAddr, connection: bool, handshake: bool) {
        let mut counts = self.lock();
        counts.connections -= usize::from(connection);
        counts.handshakes -= usize::from(handshake);
        if let Some(entry) = counts.by_address.get_mut(&address) {
            entry.0 -= usize::from(connection);
            entry.1 -= usize::from(handshake);
            if entry.0 == 0 {
                counts.by_address.remove(&address);
            }
        }
        if handshake && counts.waiting > 0 {
            drop(counts);
            self.handshake_freed.notify_waiters();
        }
    }
}

/// One connection counted as waiting for a handshake slot, until dropped
/// (admitted, refused, or its task cancelled).
struct Waiting<'a>(&'a Admission);

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.lock().waiting -= 1;
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

    #[tokio::test(start_paused = true)]
    async fn a_patient_connection_gets_the_next_handshake_slot() {
        let admission = Admission::new(AdmissionLimits {
            max_connections: 10,
            max_connections_per_address: 5,
            max_handshakes: 2,
            max_handshakes_per_address: 1,
        });
        let a: IpAddr = [10, 0, 0, 1].into();
        let mut first = admission.admit(a).expect("first");
        let waiter = tokio::spawn({
            let admission = admission.clone();
            async move { admission.admit_patiently(a, Duration::from_secs(10)).await }
        });
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished(), "waits while the slot is taken");
        first.handshake_done();
        let second = waiter
            .await
            .expect("task")
            .expect("admitted when the slot came free");
        assert_eq!(admission.counts(), (2, 1));
        // Nobody frees the slot: refused when patience runs out, and no
        // longer counted as waiting.
        let refused = admission.admit_patiently(a, Duration::from_secs(10)).await;
        assert_eq!(refused.unwrap_err(), Refusal::MaxHandshakesPerAddress);
        assert_eq!(admission.lock().waiting, 0);
        drop(second);
        drop(first);
        assert_eq!(admission.counts(), (0, 0));
    }

    #[tokio::test(start_paused = true)]
    async fn waiting_is_capped_and_connection_caps_refuse_at_once() {
        let admission = Admission::new(AdmissionLimits {
            max_connections: 10,
            max_connections_per_address: 2,
            max_handshakes: 1,
            max_handshakes_per_address: 1,
        });
        let a: IpAddr = [10, 0, 0, 1].into();
        let b: IpAddr = [10, 0, 0, 2].into();
        let mut b_connections = Vec::new();
        for _ in 0..2 {
            let mut connected = admission.admit(b).expect("b");
            connected.handshake_done();
            b_connections.push(connected);
        }
        let _first = admission.admit(a).expect("first");
        let waiter = tokio::spawn({
            let admission = admission.clone();
            async move { admission.admit_patiently(a, Duration::from_secs(10)).await }
        });
        tokio::task::yield_now().await;
        assert_eq!(admission.lock().waiting, 1);
        // max_handshakes (1) already wait: the next is refused at once.
        let c: IpAddr = [10, 0, 0, 3].into();
        let started = tokio::time::Instant::now();
        let refused = admission.admit_patiently(c, Duration::from_secs(10)).await;
        assert_eq!(refused.unwrap_err(), Refusal::MaxHandshakes);
        assert_eq!(started.elapsed(), Duration::ZERO);
        waiter.abort();
        let _ = waiter.await;
        assert_eq!(
            admission.lock().waiting,
            0,
            "a cancelled waiter stops counting"
        );
        // The connection caps never wait.
        let refused = admission.admit_patiently(b, Duration::from_secs(10)).await;
        assert_eq!(refused.unwrap_err(), Refusal::MaxConnectionsPerAddress);
        assert_eq!(started.elapsed(), Duration::ZERO);
    }
}

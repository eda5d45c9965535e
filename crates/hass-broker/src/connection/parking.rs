//! The parking lot: idle plain-TCP connections wait here without a task or
//! a tokio I/O registration, their sockets in one epoll set of our own that
//! tokio's reactor watches like any socket.
//!
//! A task and a registration are 768 bytes of an idle connection's heap (a
//! 512-byte task cell and a 256-byte registration, both 128-aligned); a
//! parked connection keeps one 104-byte record. A connection parks as soon
//! as it first has nothing to do after CONNACK (so a burst of clients
//! reuses one task's memory instead of raising the heap's high-water mark),
//! and later when the router's once-a-second sweep has asked it twice with
//! nothing happening in between (so one that keeps receiving never does).
//! It comes back as a task on whatever happens first: its socket is
//! readable or closed, or the router wakes its link to send or to close it
//! (Keep Alive, takeover, shutdown: the record is the link's waker).
//!
//! Invariants:
//! - A parked connection's record is in `parked` and its socket in the
//!   epoll set, or neither; whoever takes the connection out of the record
//!   (a socket event or a link wake, whichever comes first) removes both
//!   and spawns it, so it runs once.
//! - Packets keep their arrival order across connections, parked or not
//!   (Eclipse Paho's interoperability tests count on one client's
//!   SUBSCRIBE being applied before another's PUBLISH sent after it): the
//!   epoll set is ready in tokio's reactor when the first of its sockets
//!   is, and what a parked socket has received is read and handled in the
//!   lot's task, at once, before any task woken after it runs. A socket
//!   that received something while parking is handled at once as well.

use std::io::Read;
use std::os::fd::AsRawFd;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Wake, Waker};
use std::time::{Duration, Instant};

use hass_runtime::admission::Admitted;
use mio::unix::SourceFd;
use mio::{Interest, Token};
use slab::Slab;
use tokio::io::unix::AsyncFd;
use tokio_util::task::TaskTracker;
use tracing::{debug, warn};

use super::{Close, Connection, IdleConnection, READ_CHUNK, Stop, stopped};

/// The epoll set and the connections parked in it.
pub struct ParkingLot {
    /// Adds and removes sockets.
    registry: mio::Registry,
    /// Parked connections by their epoll token.
    parked: Mutex<Slab<Arc<Parked>>>,
    /// Connections come back as tasks here, where shutdown waits for them.
    tracker: TaskTracker,
    runtime: tokio::runtime::Handle,
    /// `hass_broker_clients_parked`.
    gauge: prometheus_client::metrics::gauge::Gauge,
}

impl std::fmt::Debug for ParkingLot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ParkingLot").finish_non_exhaustive()
    }
}

/// One parked connection, taken by whichever wake comes first; as a waker
/// it brings the connection back. 104 bytes, so that with `Arc`'s counts
/// it is a 128-byte chunk of malloc's: the lot is the connection's
/// context's, and the key fits beside the socket.
struct Parked {
    connection: Mutex<Option<ParkedConnection>>,
}

struct ParkedConnection {
    conn: IdleConnection,
    socket: std::net::TcpStream,
    /// Its token in the epoll set and its slot in `parked`.
    key: u32,
    admitted: Admitted,
}

impl ParkedConnection {
    fn lot(&self) -> Option<&Arc<ParkingLot>> {
        self.conn.ctx.parking.get().and_then(Option::as_ref)
    }
}

impl ParkingLot {
    /// Makes the epoll set and the task that watches it (inside a tokio
    /// runtime). Connections come back as tasks on `tracker`; when the
    /// runtime stops, those still parked are dropped.
    pub fn start(
        tracker: TaskTracker,
        gauge: prometheus_client::metrics::gauge::Gauge,
    ) -> std::io::Result<Arc<Self>> {
        let poll = mio::Poll::new()?;
        let registry = poll.registry().try_clone()?;
        // Deprecated because a `T` could hand out a file descriptor it does
        // not own; `mio::Poll` owns its epoll descriptor until dropped, and
        // the `AsyncFd` drops it only after deregistering it.
        #[expect(deprecated, reason = "sound for mio::Poll, which owns its fd")]
        let poll = AsyncFd::with_interest(poll, tokio::io::Interest::READABLE)?;
        let lot = Arc::new(Self {
            registry,
            parked: Mutex::new(Slab::new()),
            tracker,
            runtime: tokio::runtime::Handle::current(),
            gauge,
        });
        tokio::spawn(watch(lot.clone(), poll));
        Ok(lot)
    }

    /// Parks `conn`: its task ends, and it comes back on the first event.
    pub(super) fn park(
        self: Arc<Self>,
        conn: IdleConnection,
        socket: std::net::TcpStream,
        admitted: Admitted,
    ) {
        let fd = socket.as_raw_fd();
        let signal = conn.signal.clone();
        let (parked, key) = {
            let mut parked = lock(&self.parked);
            let slot = parked.vacant_entry();
            let Ok(key) = u32::try_from(slot.key()) else {
                // Four billion parked: this one stays a task.
                drop(parked);
                signal.forbid_parking();
                return spawn_back(&self, conn, socket, admitted);
            };
            let record = Arc::new(Parked {
                connection: Mutex::new(Some(ParkedConnection {
                    conn,
                    socket,
                    key,
                    admitted,
                })),
            });
            slot.insert(record.clone());
            (record, key)
        };
        self.gauge.inc();
        let watched =
            self.registry
                .register(&mut SourceFd(&fd), Token(key as usize), Interest::READABLE);
        if let Err(e) = watched {
            debug!("cannot park a connection: {e}");
            signal.forbid_parking();
            unpark(&parked, false);
            return;
        }
        if signal.park(&Waker::from(parked.clone())) {
            // A wake or a close came before the waker was in place.
            unpark(&parked, false);
        } else if received_while_parking(&parked) {
            // Bytes that came before the socket was in the set: handled
            // now, in their turn, not after the set reports them.
            unpark(&parked, true);
        }
    }
}

/// Brings a parked connection back as a task, unless already done; with
/// `readable`, what its socket holds is read and handled first, here.
fn unpark(parked: &Arc<Parked>, readable: bool) {
    let Some(back) = lock(&parked.connection).take() else {
        return;
    };
    let Some(lot) = back.lot().cloned() else {
        return;
    };
    {
        let mut all = lock(&lot.parked);
        let key = back.key as usize;
        if all.get(key).is_some_and(|p| Arc::ptr_eq(p, parked)) {
            all.remove(key);
        }
    }
    // Removing a socket from the set also drops any event of it not yet
    // fetched.
    let _ = lot
        .registry
        .deregister(&mut SourceFd(&back.socket.as_raw_fd()));
    lot.gauge.dec();
    let mut conn = Connection::from_idle(back.conn);
    conn.signal.unpark();
    let first = if readable {
        conn.read_parked(&back.socket)
    } else {
        None
    };
    lot.tracker.spawn_on(
        resume(conn, back.socket, back.admitted, first),
        &lot.runtime,
    );
}

/// A connection that could not park, back as a task at once.
fn spawn_back(
    lot: &ParkingLot,
    conn: IdleConnection,
    socket: std::net::TcpStream,
    admitted: Admitted,
) {
    let conn = Connection::from_idle(conn);
    lot.tracker
        .spawn_on(resume(conn, socket, admitted, None), &lot.runtime);
}

/// Whether the parked socket already holds bytes (or its end).
fn received_while_parking(parked: &Parked) -> bool {
    let guard = lock(&parked.connection);
    let Some(parked) = guard.as_ref() else {
        return false;
    };
    match parked.socket.peek(&mut [0u8; 1]) {
        Ok(_) => true,
        Err(e) => e.kind() != std::io::ErrorKind::WouldBlock,
    }
}

impl Wake for Parked {
    fn wake(self: Arc<Self>) {
        unpark(&self, false);
    }

    fn wake_by_ref(self: &Arc<Self>) {
        unpark(self, false);
    }
}

impl Connection {
    /// Reads what a parked socket holds, once, and handles it: the first
    /// turn of a connection coming back, in the lot's task. `Some`: the
    /// connection closes.
    fn read_parked(&mut self, socket: &std::net::TcpStream) -> Option<Close> {
        let mut stack = [0u8; READ_CHUNK];
        let n = match (&*socket).read(&mut stack) {
            Ok(0) => return Some(Close::Io(std::io::ErrorKind::UnexpectedEof.into())),
            Ok(n) => n,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::Interrupted
                ) =>
            {
                return None;
            }
            Err(e) => return Some(Close::Io(e)),
        };
        self.ctx.metrics.bytes_received.inc_by(n as u64);
        self.signal.heard_from(Instant::now());
        self.rbuf.extend_from_slice(&stack[..n]);
        self.count_partial(0);
        self.handle_packets()
    }
}

/// A parked connection's task, again: `first` is how its first turn,
/// already taken, ended.
async fn resume(
    mut conn: Connection,
    socket: std::net::TcpStream,
    admitted: Admitted,
    first: Option<Close>,
) {
    let mut stream = match tokio::net::TcpStream::from_std(socket) {
        Ok(stream) => stream,
        Err(e) => return stopped(conn, (), admitted, Stop::Close(Close::Io(e))),
    };
    // tokio learns a new registration's readiness at its next turn; until
    // then every write waits, and a close's DISCONNECT (which does not
    // wait) would be lost. Bounded: a client that neither reads nor sends
    // is served as it would have been.
    let _ = tokio::time::timeout(
        FIRST_READINESS,
        stream.ready(tokio::io::Interest::READABLE | tokio::io::Interest::WRITABLE),
    )
    .await;
    let stop = if let Some(close) = first {
        Stop::Close(conn.goodbye(&mut stream, close).await)
    } else {
        conn.release_acks();
        match conn.flush_queue(&mut stream).await {
            Ok(()) => conn.run(&mut stream).await,
            Err(close) => Stop::Close(close),
        }
    };
    stopped(conn, stream, admitted, stop);
}

/// How long a connection coming back waits for tokio to see its socket.
const FIRST_READINESS: Duration = Duration::from_millis(100);

/// Hands every socket event to the connection it belongs to. Runs until
/// the runtime stops; then the connections still parked are dropped (each
/// holds the broker's context, which holds this lot: a cycle otherwise).
async fn watch(lot: Arc<ParkingLot>, mut poll: AsyncFd<mio::Poll>) {
    let _release = ReleaseOnDrop(lot.clone());
    let mut events = mio::Events::with_capacity(256);
    loop {
        let Ok(mut ready) = poll.readable_mut().await else {
            warn!(
                "the parking lot's epoll set failed; parked connections wake only for their links"
            );
            return;
        };
        match ready
            .get_inner_mut()
            .poll(&mut events, Some(Duration::ZERO))
        {
            Ok(()) if events.is_empty() => ready.clear_ready(),
            Ok(()) => {
                for event in &events {
                    // A token whose record went (a link wake came first)
                    // may have been given to a new one since: that one
                    // comes back for nothing, and parks again later.
                    let parked = lock(&lot.parked).get(event.token().0).cloned();
                    if let Some(parked) = parked {
                        unpark(&parked, true);
                    }
                }
                // Up to 256 first turns were taken here: the tasks they
                // woke go next, then the rest of the set.
                tokio::task::yield_now().await;
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => {
                warn!("the parking lot's epoll set failed: {e}");
                ready.clear_ready();
            }
        }
    }
}

struct ReleaseOnDrop(Arc<ParkingLot>);

impl Drop for ReleaseOnDrop {
    fn drop(&mut self) {
        let parked: Vec<_> = lock(&self.0.parked).drain().collect();
        for record in parked {
            drop(lock(&record.connection).take());
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// With `Arc`'s two counts, a record of 104 bytes is a 120-byte
    /// request: malloc's 128-byte chunk, one per parked connection.
    #[test]
    fn a_parked_record_stays_small() {
        assert!(
            std::mem::size_of::<Parked>() <= 104,
            "{} bytes",
            std::mem::size_of::<Parked>()
        );
    }
}

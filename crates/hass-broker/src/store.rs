//! The durable state: retained messages, persistent sessions and their queued
//! QoS 1/2 messages, in a redb database under `data_dir`.
//!
//! Writes go to one writer thread that commits them in groups: every op sent
//! while the previous commit was running lands in the next transaction. A
//! commit's sequence number is published on a watch channel, and connections
//! hold a PUBACK/PUBREC back until the ops their PUBLISH caused are committed,
//! so nothing acknowledged is lost on SIGKILL. With `fsync: always` (the
//! default) every commit is fsynced; `fsync: periodic` fsyncs at most once per
//! interval, trading up to one interval of acknowledged messages on a crash
//! for fewer disk flushes.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::{Buf, BufMut, Bytes, BytesMut};
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use rumqttd::protocol::{Packet, QoS};
use tokio::sync::watch;
use tracing::{error, info, warn};

use crate::codec::{self, Version};
use crate::message::Message;

const RETAINED: TableDefinition<&str, &[u8]> = TableDefinition::new("retained");
const SESSIONS: TableDefinition<&str, &[u8]> = TableDefinition::new("sessions");
const QUEUED: TableDefinition<(&str, u64), &[u8]> = TableDefinition::new("queued");
/// When each retained message arrived (unix seconds), for the operator's
/// view. A table of its own rather than a field in the message's record, so
/// an older broker still reads every retained message after a rollback.
const RETAINED_AT: TableDefinition<&str, u64> = TableDefinition::new("retained_at");
/// A persistent session's subscriptions, one row each, keyed by (client id,
/// filter): a SUBSCRIBE writes one row, not the whole session (Home
/// Assistant subscribes hundreds of filters). Value: the options byte and
/// the subscription identifier. Session records written before this table
/// carry their subscriptions inline; `recover` moves them here.
const SUBSCRIPTIONS: TableDefinition<(&str, &str), (u8, u32)> =
    TableDefinition::new("subscriptions");
/// Facts about the store itself, such as a one-shot import having run.
const META: TableDefinition<&str, &str> = TableDefinition::new("meta");

/// How commits reach the disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    /// fsync every group commit before acknowledging: nothing acknowledged is
    /// lost on a crash or power loss.
    Always,
    /// Commit without fsync and fsync at most once per interval: faster, but
    /// a crash can lose up to one interval of acknowledged messages.
    Periodic(Duration),
}

/// One change to the durable state.
#[derive(Debug)]
pub enum Op {
    PutRetained(Arc<Message>),
    DeleteRetained(Arc<str>),
    PutSession {
        client_id: Arc<str>,
        record: SessionRecord,
    },
    /// Deletes the session, its subscriptions and every queued message of it.
    DeleteSession(Arc<str>),
    /// Adds or changes one subscription of a persistent session.
    PutSubscription {
        client_id: Arc<str>,
        subscription: StoredSubscription,
    },
    DeleteSubscription {
        client_id: Arc<str>,
        filter: String,
    },
    /// Records a fact about the store (`META`).
    PutMeta {
        key: &'static str,
        value: String,
    },
    PutQueued {
        client_id: Arc<str>,
        id: u64,
        queued: QueuedRecord,
    },
    DeleteQueued {
        client_id: Arc<str>,
        id: u64,
    },
}

/// A persistent session as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionRecord {
    pub expiry_interval: u32,
    /// Unix seconds when its client disconnected; 0 while connected.
    pub disconnected_at: u64,
    /// Empty when written: subscriptions live in their own table. Filled on
    /// recovery from that table (and from records of older versions).
    pub subscriptions: Vec<StoredSubscription>,
    /// The user that owns the session (`""`: anonymous); `None` in records
    /// written before owners were kept, which end at the subscriptions.
    pub owner: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredSubscription {
    pub filter: String,
    /// MQTT 5 subscription options byte: QoS, No Local, Retain As Published,
    /// Retain Handling, as on the wire.
    pub options: u8,
    pub identifier: u32,
}

/// A message waiting for (or in flight to) one persistent session.
#[derive(Debug, Clone)]
pub struct QueuedRecord {
    pub message: Arc<Message>,
    pub qos: QoS,
    pub retain: bool,
    pub subscription_ids: Vec<u32>,
}

/// What a restart finds.
#[derive(Debug, Default)]
pub struct Recovered {
    pub retained: Vec<Message>,
    pub sessions: Vec<(String, SessionRecord)>,
    /// Ordered by session, then by id (the order they were queued in).
    pub queued: Vec<(String, u64, QueuedRecord)>,
    /// Records that could not be decoded, skipped and counted.
    pub corrupt: usize,
    /// Facts recorded with [`Op::PutMeta`].
    pub meta: std::collections::BTreeMap<String, String>,
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot create data dir {}: {source}", path.display())]
    DataDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("store {}: {source}", path.display())]
    Database { path: PathBuf, source: redb::Error },
}

/// Handle to the writer thread. Cloning shares it.
#[derive(Debug, Clone)]
pub struct Store {
    inner: Arc<StoreInner>,
}

#[derive(Debug)]
struct StoreInner {
    tx: std::sync::Mutex<Option<mpsc::Sender<(u64, Op)>>>,
    next_seq: AtomicU64,
    next_queued_id: AtomicU64,
    committed: watch::Receiver<u64>,
    writer: std::sync::Mutex<Option<JoinHandle<()>>>,
    path: PathBuf,
}

/// What the writer measures, read by metrics.
#[derive(Debug)]
pub struct StoreStats {
    pub commits: AtomicU64,
    pub commit_failures: AtomicU64,
    pub ops: AtomicU64,
    /// Seconds per successful commit, fsync included: the latency every
    /// held-back PUBACK pays.
    pub commit_seconds: Histogram,
}

impl Default for StoreStats {
    fn default() -> Self {
        Self {
            commits: AtomicU64::new(0),
            commit_failures: AtomicU64::new(0),
            ops: AtomicU64::new(0),
            // 50 µs to ~3 s in factors of 2.
            commit_seconds: Histogram::new(exponential_buckets(0.000_05, 2.0, 17)),
        }
    }
}

impl Store {
    /// Opens (or creates) the database in `data_dir` and reads everything back.
    pub fn open(
        data_dir: &Path,
        durability: Durability,
        stats: Arc<StoreStats>,
    ) -> Result<(Self, Recovered), StoreError> {
        std::fs::create_dir_all(data_dir).map_err(|source| StoreError::DataDir {
            path: data_dir.to_owned(),
            source,
        })?;
        let path = data_dir.join("broker.redb");
        let db_error = |e: redb::Error| StoreError::Database {
            path: path.clone(),
            source: e,
        };
        let db = Database::create(&path).map_err(|e| db_error(e.into()))?;
        let recovered = recover(&db).map_err(db_error)?;
        let next_queued_id = recovered.queued.iter().map(|q| q.1).max().unwrap_or(0) + 1;

        let (tx, rx) = mpsc::channel();
        let (committed_tx, committed) = watch::channel(0);
        let writer = std::thread::Builder::new()
            .name("store-writer".into())
            .spawn(move || write_loop(db, rx, committed_tx, durability, &stats))
            .map_err(|e| StoreError::DataDir {
                path: data_dir.to_owned(),
                source: e,
            })?;
        Ok((
            Self {
                inner: Arc::new(StoreInner {
                    tx: std::sync::Mutex::new(Some(tx)),
                    next_seq: AtomicU64::new(1),
                    next_queued_id: AtomicU64::new(next_queued_id),
                    committed,
                    writer: std::sync::Mutex::new(Some(writer)),
                    path,
                }),
            },
            recovered,
        ))
    }

    /// Queues `op` for the next commit and returns its sequence number; the
    /// op is durable once `committed()` reaches it. Callers hold the router
    /// lock, so sequence order is the order of state changes.
    pub fn submit(&self, op: Op) -> u64 {
        let seq = self.inner.next_seq.fetch_add(1, Ordering::SeqCst);
        let tx = self.inner.tx.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(tx) = tx.as_ref() {
            // A send fails only after close(); late ops at shutdown are dropped.
            let _ = tx.send((seq, op));
        }
        seq
    }

    /// A fresh id for a queued message, unique across restarts.
    pub fn next_queued_id(&self) -> u64 {
        self.inner.next_queued_id.fetch_add(1, Ordering::SeqCst)
    }

    /// Watches the highest committed sequence number.
    pub fn committed(&self) -> watch::Receiver<u64> {
        self.inner.committed.clone()
    }

    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// Commits everything submitted so far, fsyncs, and stops the writer.
    pub fn close(&self) {
        self.inner
            .tx
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        let writer = self
            .inner
            .writer
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        if let Some(writer) = writer {
            let _ = writer.join();
        }
    }
}

fn recover(db: &Database) -> Result<Recovered, redb::Error> {
    let mut recovered = Recovered::default();
    // Create the tables so a fresh database reads as empty.
    let txn = db.begin_write()?;
    txn.open_table(RETAINED)?;
    txn.open_table(SESSIONS)?;
    txn.open_table(QUEUED)?;
    txn.open_table(RETAINED_AT)?;
    txn.open_table(SUBSCRIPTIONS)?;
    txn.open_table(META)?;
    txn.commit()?;
    move_inline_subscriptions(db)?;

    let txn = db.begin_read()?;
    for entry in txn.open_table(META)?.iter()? {
        let (key, value) = entry?;
        recovered
            .meta
            .insert(key.value().to_owned(), value.value().to_owned());
    }
    let received = txn.open_table(RETAINED_AT)?;
    for entry in txn.open_table(RETAINED)?.iter()? {
        let (key, value) = entry?;
        match decode_message(value.value()) {
            Some(mut message) => {
                message.received_at = received
                    .get(key.value())?
                    .and_then(|at| hass_runtime::clock::from_unix_seconds(at.value()));
                recovered.retained.push(message);
            }
            None => recovered.corrupt += 1,
        }
    }
    let mut subscriptions: std::collections::HashMap<String, Vec<StoredSubscription>> =
        std::collections::HashMap::new();
    for entry in txn.open_table(SUBSCRIPTIONS)?.iter()? {
        let (key, value) = entry?;
        let (client, filter) = key.value();
        let (options, identifier) = value.value();
        subscriptions
            .entry(client.to_owned())
            .or_default()
            .push(StoredSubscription {
                filter: filter.to_owned(),
                options,
                identifier,
            });
    }
    for entry in txn.open_table(SESSIONS)?.iter()? {
        let (key, value) = entry?;
        let client = key.value();
        let Some(mut record) = decode_session(value.value()) else {
            recovered.corrupt += 1;
            continue;
        };
        record
            .subscriptions
            .extend(subscriptions.remove(client).unwrap_or_default());
        recovered.sessions.push((client.to_owned(), record));
    }
    for entry in txn.open_table(QUEUED)?.iter()? {
        let (key, value) = entry?;
        let (client_id, id) = key.value();
        match decode_queued(value.value()) {
            Some(queued) => recovered.queued.push((client_id.to_owned(), id, queued)),
            None => recovered.corrupt += 1,
        }
    }
    Ok(recovered)
}

fn write_loop(
    db: Database,
    rx: mpsc::Receiver<(u64, Op)>,
    committed: watch::Sender<u64>,
    durability: Durability,
    stats: &StoreStats,
) {
    let mut last_fsync = Instant::now();
    let mut unsynced = false;
    loop {
        // Wait for work; in periodic mode wake up to fsync in time.
        let first = match durability {
            Durability::Periodic(interval) if unsynced => {
                match rx.recv_timeout(interval.saturating_sub(last_fsync.elapsed())) {
                    Ok(op) => Some(op),
                    Err(mpsc::RecvTimeoutError::Timeout) => None,
                    Err(mpsc::RecvTimeoutError::Disconnected) => break,
                }
            }
            _ => match rx.recv() {
                Ok(op) => Some(op),
                Err(_) => break,
            },
        };
        let mut batch: Vec<(u64, Op)> = first.into_iter().collect();
        while batch.len() < 50_000 {
            match rx.try_recv() {
                Ok(op) => batch.push(op),
                Err(_) => break,
            }
        }
        let fsync = match durability {
            Durability::Always => true,
            Durability::Periodic(interval) => last_fsync.elapsed() >= interval,
        };
        if batch.is_empty() && !(fsync && unsynced) {
            continue;
        }
        // A failed commit (disk full, I/O error) is retried: the acks that
        // wait on it stay held back until it succeeds.
        let mut attempt = 0u32;
        loop {
            let started = Instant::now();
            match commit(&db, &batch, fsync) {
                Ok(()) => {
                    stats.commits.fetch_add(1, Ordering::Relaxed);
                    stats.ops.fetch_add(batch.len() as u64, Ordering::Relaxed);
                    stats
                        .commit_seconds
                        .observe(started.elapsed().as_secs_f64());
                    if attempt > 0 {
                        info!(
                            attempts = attempt + 1,
                            "store commit succeeded after retrying"
                        );
                    }
                    break;
                }
                Err(e) => {
                    stats.commit_failures.fetch_add(1, Ordering::Relaxed);
                    attempt += 1;
                    error!(
                        attempt,
                        "store commit failed, acknowledgements held back: {e}"
                    );
                    std::thread::sleep(
                        Duration::from_millis(500)
                            .min(Duration::from_millis(50 * u64::from(attempt))),
                    );
                }
            }
        }
        if fsync {
            last_fsync = Instant::now();
            unsynced = false;
        } else {
            unsynced = true;
        }
        if let Some((seq, _)) = batch.last() {
            committed.send_replace(*seq);
        }
    }
    // Shutdown: make everything durable.
    if unsynced && let Err(e) = commit(&db, &[], true) {
        warn!("final store fsync failed: {e}");
    }
}

fn commit(db: &Database, batch: &[(u64, Op)], fsync: bool) -> Result<(), redb::Error> {
    let mut txn = db.begin_write()?;
    txn.set_durability(if fsync {
        redb::Durability::Immediate
    } else {
        redb::Durability::None
    })
    .map_err(|e| redb::Error::Corrupted(e.to_string()))?;
    {
        let mut retained = txn.open_table(RETAINED)?;
        let mut sessions = txn.open_table(SESSIONS)?;
        let mut queued = txn.open_table(QUEUED)?;
        let mut retained_at = txn.open_table(RETAINED_AT)?;
        let mut subscriptions = txn.open_table(SUBSCRIPTIONS)?;
        let mut meta = txn.open_table(META)?;
        for (_, op) in batch {
            match op {
                Op::PutRetained(message) => {
                    retained.insert(&*message.topic, &encode_message(message)[..])?;
                    match message.received_at {
                        Some(at) => retained_at.insert(&*message.topic, unix_secs(at))?,
                        None => retained_at.remove(&*message.topic)?,
                    };
                }
                Op::DeleteRetained(topic) => {
                    retained.remove(&**topic)?;
                    retained_at.remove(&**topic)?;
                }
                Op::PutSession { client_id, record } => {
                    sessions.insert(&**client_id, &encode_session(record)[..])?;
                }
                Op::DeleteSession(client_id) => {
                    sessions.remove(&**client_id)?;
                    let client: &str = client_id;
                    queued.retain_in((client, 0)..=(client, u64::MAX), |_, _| false)?;
                    remove_subscriptions(&mut subscriptions, client)?;
                }
                Op::PutSubscription {
                    client_id,
                    subscription,
                } => {
                    subscriptions.insert(
                        (&**client_id, subscription.filter.as_str()),
                        (subscription.options, subscription.identifier),
                    )?;
                }
                Op::DeleteSubscription { client_id, filter } => {
                    subscriptions.remove((&**client_id, filter.as_str()))?;
                }
                Op::PutMeta { key, value } => {
                    meta.insert(*key, value.as_str())?;
                }
                Op::PutQueued {
                    client_id,
                    id,
                    queued: record,
                } => {
                    queued.insert((&**client_id, *id), &encode_queued(record)[..])?;
                }
                Op::DeleteQueued { client_id, id } => {
                    queued.remove((&**client_id, *id))?;
                }
            }
        }
    }
    txn.commit()?;
    Ok(())
}

/// Removes every subscription row of `client`.
fn remove_subscriptions(
    table: &mut redb::Table<'_, (&'static str, &'static str), (u8, u32)>,
    client: &str,
) -> Result<(), redb::Error> {
    let filters: Vec<String> = table
        .range((client, "")..)?
        .map_while(|entry| {
            let (key, _) = entry.ok()?;
            let (owner, filter) = key.value();
            (owner == client).then(|| filter.to_owned())
        })
        .collect();
    for filter in filters {
        table.remove((client, filter.as_str()))?;
    }
    Ok(())
}

// Encodings. A message is stored as the MQTT 5 PUBLISH it would be sent as,
// after a small header: format byte, expiry (unix seconds, 0 = none), and the
// publisher's client id. The wire format is specified and already has a codec.

const FORMAT: u8 = 1;

fn unix_secs(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

fn encode_message(message: &Message) -> Bytes {
    let mut out = BytesMut::with_capacity(message.weight() + 32);
    out.put_u8(FORMAT);
    out.put_u64(message.expires_at.map_or(0, unix_secs));
    let publisher = message.publisher.as_deref().unwrap_or("").as_bytes();
    out.put_u16(u16::try_from(publisher.len()).unwrap_or(0));
    out.put_slice(&publisher[..publisher.len().min(usize::from(u16::MAX))]);
    let publish = codec::outgoing_publish(
        message.topic.as_bytes(),
        &message.payload,
        message.qos,
        1,
        false,
        message.retain,
    );
    // Encoding a message that was decoded from the wire cannot fail.
    let _ = codec::write(
        Version::V5,
        Packet::Publish(publish, message.properties.clone()),
        &mut out,
    );
    out.freeze()
}

fn decode_message(mut raw: &[u8]) -> Option<Message> {
    if raw.len() < 11 || raw.get_u8() != FORMAT {
        return None;
    }
    let expires = raw.get_u64();
    let publisher_len = usize::from(raw.get_u16());
    let publisher = std::str::from_utf8(raw.get(..publisher_len)?)
        .ok()?
        .to_owned();
    raw.advance(publisher_len);
    let mut packet = BytesMut::from(raw);
    let incoming = codec::read(Version::V5, &mut packet, usize::MAX).ok()??;
    let Packet::Publish(publish, properties) = incoming.packet else {
        return None;
    };
    Some(Message {
        topic: std::str::from_utf8(&publish.topic).ok()?.into(),
        payload: publish.payload,
        qos: incoming.publish?.qos,
        retain: publish.retain,
        properties,
        expires_at: (expires > 0)
            .then(|| hass_runtime::clock::from_unix_seconds(expires))
            .flatten(),
        publisher: (!publisher.is_empty()).then(|| publisher.into()),
        received_at: None,
    })
}

/// Moves subscriptions that session records of older versions carry inline
/// into the subscriptions table, once: such a record is rewritten without
/// them in the same transaction.
fn move_inline_subscriptions(db: &Database) -> Result<(), redb::Error> {
    let txn = db.begin_write()?;
    let mut moved = 0usize;
    {
        let mut sessions = txn.open_table(SESSIONS)?;
        let mut subscriptions = txn.open_table(SUBSCRIPTIONS)?;
        let mut inline = Vec::new();
        for entry in sessions.iter()? {
            let (key, value) = entry?;
            if let Some(record) = decode_session(value.value())
                && !record.subscriptions.is_empty()
            {
                inline.push((key.value().to_owned(), record));
            }
        }
        for (client, mut record) in inline {
            for sub in std::mem::take(&mut record.subscriptions) {
                subscriptions.insert(
                    (client.as_str(), sub.filter.as_str()),
                    (sub.options, sub.identifier),
                )?;
                moved += 1;
            }
            sessions.insert(client.as_str(), &encode_session(&record)[..])?;
        }
    }
    txn.commit()?;
    if moved > 0 {
        info!(
            subscriptions = moved,
            "moved subscriptions out of session records"
        );
    }
    Ok(())
}

fn encode_session(record: &SessionRecord) -> Vec<u8> {
    let mut out = Vec::with_capacity(16 + record.subscriptions.len() * 32);
    out.put_u8(FORMAT);
    out.put_u32(record.expiry_interval);
    out.put_u64(record.disconnected_at);
    out.put_u32(u32::try_from(record.subscriptions.len()).unwrap_or(u32::MAX));
    for sub in &record.subscriptions {
        out.put_u16(u16::try_from(sub.filter.len()).unwrap_or(0));
        out.put_slice(sub.filter.as_bytes());
        out.put_u8(sub.options);
        out.put_u32(sub.identifier);
    }
    if let Some(owner) = &record.owner {
        // Usernames are MQTT strings: at most 65 535 bytes.
        out.put_u16(u16::try_from(owner.len()).unwrap_or(0));
        out.put_slice(owner.as_bytes());
    }
    out
}

fn decode_session(mut raw: &[u8]) -> Option<SessionRecord> {
    if raw.len() < 17 || raw.get_u8() != FORMAT {
        return None;
    }
    let expiry_interval = raw.get_u32();
    let disconnected_at = raw.get_u64();
    let count = raw.get_u32();
    let mut subscriptions = Vec::new();
    for _ in 0..count {
        if raw.len() < 2 {
            return None;
        }
        let len = usize::from(raw.get_u16());
        if raw.len() < len + 5 {
            return None;
        }
        let filter = std::str::from_utf8(&raw[..len]).ok()?.to_owned();
        raw.advance(len);
        subscriptions.push(StoredSubscription {
            filter,
            options: raw.get_u8(),
            identifier: raw.get_u32(),
        });
    }
    let owner = if raw.len() >= 2 {
        let len = usize::from(raw.get_u16());
        Some(std::str::from_utf8(raw.get(..len)?).ok()?.to_owned())
    } else {
        None
    };
    Some(SessionRecord {
        expiry_interval,
        disconnected_at,
        subscriptions,
        owner,
    })
}

fn encode_queued(record: &QueuedRecord) -> Bytes {
    let mut out = BytesMut::new();
    out.put_u8(FORMAT);
    out.put_u8(record.qos as u8 | (u8::from(record.retain) << 2));
    out.put_u8(u8::try_from(record.subscription_ids.len()).unwrap_or(u8::MAX));
    for id in record.subscription_ids.iter().take(usize::from(u8::MAX)) {
        out.put_u32(*id);
    }
    out.put_slice(&encode_message(&record.message));
    out.freeze()
}

fn decode_queued(mut raw: &[u8]) -> Option<QueuedRecord> {
    if raw.len() < 3 || raw.get_u8() != FORMAT {
        return None;
    }
    let flags = raw.get_u8();
    let count = usize::from(raw.get_u8());
    if raw.len() < count * 4 {
        return None;
    }
    let subscription_ids = (0..count).map(|_| raw.get_u32()).collect();
    Some(QueuedRecord {
        qos: rumqttd::protocol::qos(flags & 0b11)?,
        retain: flags & 0b100 != 0,
        subscription_ids,
        message: Arc::new(decode_message(raw)?),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use rumqttd::protocol::PublishProperties;

    fn message(topic: &str, payload: &[u8]) -> Message {
        Message {
            topic: topic.into(),
            payload: Bytes::copy_from_slice(payload),
            qos: QoS::AtLeastOnce,
            retain: true,
            properties: Some(PublishProperties {
                content_type: Some("application/json".into()),
                user_properties: vec![("k".into(), "v".into())],
                ..Default::default()
            }),
            expires_at: Some(UNIX_EPOCH + Duration::from_secs(4_000_000_000)),
            publisher: Some("zigbee2mqtt".into()),
            received_at: Some(UNIX_EPOCH + Duration::from_secs(1_800_000_000)),
        }
    }

    #[test]
    fn messages_round_trip_through_the_encoding() {
        let m = message("homeassistant/light/x/config", &[0, 1, 2, 255]);
        let back = decode_message(&encode_message(&m)).unwrap();
        assert_eq!(&*back.topic, &*m.topic);
        assert_eq!(back.payload, m.payload);
        assert_eq!(back.qos, m.qos);
        assert!(back.retain);
        assert_eq!(back.properties, m.properties);
        assert_eq!(back.expires_at, m.expires_at);
        assert_eq!(back.publisher.as_deref(), Some("zigbee2mqtt"));
    }

    #[test]
    fn corrupt_records_decode_to_none() {
        assert!(decode_message(&[]).is_none());
        assert!(decode_message(&[FORMAT, 0, 0]).is_none());
        assert!(decode_session(&[FORMAT; 20]).is_none());
        // A record from before owners were kept ends at its subscriptions.
        let old = [FORMAT, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
        assert_eq!(decode_session(&old).map(|r| r.owner), Some(None));
        // An owner longer than what is left is a damaged record.
        let mut cut = old.to_vec();
        cut.extend_from_slice(&[0, 9, b'x']);
        assert!(decode_session(&cut).is_none());
        assert!(decode_queued(&[9, 9, 9]).is_none());
    }

    #[test]
    fn committed_state_survives_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let stats = Arc::new(StoreStats::default());
        let (store, recovered) =
            Store::open(dir.path(), Durability::Always, stats.clone()).unwrap();
        assert!(recovered.retained.is_empty());
        let client: Arc<str> = "ha".into();
        store.submit(Op::PutRetained(Arc::new(message("a/1", b"one"))));
        store.submit(Op::PutRetained(Arc::new(message("a/2", b"two"))));
        store.submit(Op::DeleteRetained("a/1".into()));
        store.submit(Op::PutSession {
            client_id: client.clone(),
            record: SessionRecord {
                expiry_interval: u32::MAX,
                disconnected_at: 5,
                subscriptions: vec![StoredSubscription {
                    filter: "a/#".into(),
                    options: 1,
                    identifier: 0,
                }],
                owner: Some("zigbee2mqtt".into()),
            },
        });
        let id = store.next_queued_id();
        let last = store.submit(Op::PutQueued {
            client_id: client.clone(),
            id,
            queued: QueuedRecord {
                message: Arc::new(message("a/2", b"two")),
                qos: QoS::AtLeastOnce,
                retain: false,
                subscription_ids: vec![7],
            },
        });
        let mut committed = store.committed();
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        rt.block_on(committed.wait_for(|c| *c >= last)).unwrap();
        store.close();

        let (store, recovered) = Store::open(dir.path(), Durability::Always, stats).unwrap();
        let topics: Vec<&str> = recovered.retained.iter().map(|m| &*m.topic).collect();
        assert_eq!(topics, ["a/2"]);
        assert_eq!(
            recovered.retained[0].received_at,
            message("a/2", b"").received_at,
            "when it arrived is kept beside it"
        );
        assert_eq!(recovered.sessions.len(), 1);
        assert_eq!(recovered.sessions[0].1.subscriptions[0].filter, "a/#");
        assert_eq!(
            recovered.sessions[0].1.owner.as_deref(),
            Some("zigbee2mqtt")
        );
        assert_eq!(recovered.queued.len(), 1);
        assert_eq!(recovered.queued[0].2.subscription_ids, [7]);
        assert!(
            store.next_queued_id() > id,
            "ids never repeat across restarts"
        );

        store.submit(Op::DeleteSession(client));
        store.close();
        let (_store, recovered) = Store::open(
            dir.path(),
            Durability::Always,
            Arc::new(StoreStats::default()),
        )
        .unwrap();
        assert!(recovered.sessions.is_empty());
        assert!(
            recovered.queued.is_empty(),
            "queued messages go with their session"
        );
    }

    fn reopen(dir: &Path) -> (Store, Recovered) {
        Store::open(dir, Durability::Always, Arc::new(StoreStats::default())).unwrap()
    }

    fn filters(recovered: &Recovered) -> Vec<(&str, Vec<&str>)> {
        recovered
            .sessions
            .iter()
            .map(|(client, record)| {
                let mut filters: Vec<&str> =
                    record.subscriptions.iter().map(|s| &*s.filter).collect();
                filters.sort_unstable();
                (client.as_str(), filters)
            })
            .collect()
    }

    #[test]
    fn subscriptions_are_stored_one_row_each_and_inline_ones_move_there() {
        let dir = tempfile::tempdir().unwrap();
        let (store, _) = reopen(dir.path());
        // A record as older versions wrote it, subscriptions inline.
        let subscription = |filter: &str| StoredSubscription {
            filter: filter.into(),
            options: 1,
            identifier: 0,
        };
        store.submit(Op::PutSession {
            client_id: "old".into(),
            record: SessionRecord {
                expiry_interval: u32::MAX,
                disconnected_at: 5,
                subscriptions: vec![subscription("a/#"), subscription("b/+")],
                owner: Some(String::new()),
            },
        });
        store.submit(Op::PutSession {
            client_id: "new".into(),
            record: SessionRecord {
                expiry_interval: 60,
                disconnected_at: 0,
                subscriptions: Vec::new(),
                owner: Some(String::new()),
            },
        });
        for filter in ["x/1", "x/2", "x/3"] {
            store.submit(Op::PutSubscription {
                client_id: "new".into(),
                subscription: subscription(filter),
            });
        }
        store.submit(Op::DeleteSubscription {
            client_id: "new".into(),
            filter: "x/2".into(),
        });
        store.close();

        let (store, recovered) = reopen(dir.path());
        assert_eq!(
            filters(&recovered),
            [("new", vec!["x/1", "x/3"]), ("old", vec!["a/#", "b/+"])]
        );
        // Moved: a later rewrite of the record without them keeps them.
        store.submit(Op::PutSession {
            client_id: "old".into(),
            record: SessionRecord {
                expiry_interval: u32::MAX,
                disconnected_at: 9,
                subscriptions: Vec::new(),
                owner: Some(String::new()),
            },
        });
        store.submit(Op::DeleteSession("new".into()));
        store.close();

        let (_store, recovered) = reopen(dir.path());
        assert_eq!(filters(&recovered), [("old", vec!["a/#", "b/+"])]);
    }
}

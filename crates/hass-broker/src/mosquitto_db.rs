//! Reads a `mosquitto.db` (Mosquitto 2.0's persistence file, format 5 or 6)
//! for the one-shot import `import_mosquitto_db` asks for: retained messages
//! and persistent sessions with their subscriptions, so a user leaving the
//! Mosquitto sidecar keeps Home Assistant's discovery topics.
//!
//! Written by hand: no crate reads this format. It is a header (magic,
//! CRC, version) and chunks, each a big-endian type and length and a C
//! struct written as is: big-endian fields beside host-order ones (message
//! ids and times), which are little-endian on every machine Mosquitto's
//! Home Assistant users run (amd64, arm64). The file is untrusted: every
//! length is checked against what is left, and nothing here panics.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::{BufMut, BytesMut};
use rumqttd::protocol::Packet;

use crate::codec::{self, Version};
use crate::message::Message;
use crate::store::{SessionRecord, StoredSubscription};

const MAGIC: [u8; 15] = *b"\x00\xb5\x00mosquitto db";
/// Sizes of the fixed parts, C padding included.
const MSG_STORE_LEN: usize = 32;
const CLIENT_V6_LEN: usize = 24;
const CLIENT_V5_LEN: usize = 16;
const SUB_LEN: usize = 12;

/// What the file holds that hass-broker keeps.
#[derive(Debug, Default)]
pub struct MosquittoDb {
    /// Retained messages, unexpired, `$` topics left out.
    pub retained: Vec<Message>,
    /// Persistent sessions with their subscriptions; disconnected now.
    pub sessions: Vec<(String, SessionRecord)>,
    /// Messages queued for sessions, which are not imported.
    pub queued_skipped: usize,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DbError {
    #[error("not a mosquitto.db (no Mosquitto magic at the start)")]
    NotMosquitto,
    #[error("mosquitto.db format {0}; only formats 5 and 6 (Mosquitto 1.6 and 2.0) are read")]
    Version(u32),
    #[error("mosquitto.db cut short in a chunk starting at byte {0}")]
    Truncated(usize),
    #[error("mosquitto.db chunk at byte {at} is malformed: {what}")]
    Malformed { at: usize, what: &'static str },
}

/// Big-endian and little-endian reads off a chunk, bounded by it.
struct Chunk<'a> {
    bytes: &'a [u8],
    /// Where the chunk starts in the file, for errors.
    at: usize,
}

impl<'a> Chunk<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], DbError> {
        if self.bytes.len() < n {
            return Err(DbError::Truncated(self.at));
        }
        let (head, rest) = self.bytes.split_at(n);
        self.bytes = rest;
        Ok(head)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], DbError> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N)?);
        Ok(out)
    }

    fn be16(&mut self) -> Result<u16, DbError> {
        Ok(u16::from_be_bytes(self.array()?))
    }

    fn be32(&mut self) -> Result<u32, DbError> {
        Ok(u32::from_be_bytes(self.array()?))
    }

    fn le64(&mut self) -> Result<u64, DbError> {
        Ok(u64::from_le_bytes(self.array()?))
    }

    fn text(&mut self, n: usize) -> Result<String, DbError> {
        let at = self.at;
        std::str::from_utf8(self.take(n)?)
            .map(str::to_owned)
            .map_err(|_| DbError::Malformed {
                at,
                what: "a string is not UTF-8",
            })
    }
}

/// Parses a whole `mosquitto.db`. Sessions are taken as disconnected at
/// `now`, keeping their expiry interval.
pub fn parse(file: &[u8], now: SystemTime) -> Result<MosquittoDb, DbError> {
    if file.len() < 23 || file[..15] != MAGIC {
        return Err(DbError::NotMosquitto);
    }
    // Bytes 15..19 are a CRC Mosquitto writes as 0 and never checks.
    let version = u32::from_be_bytes([file[19], file[20], file[21], file[22]]);
    if version != 5 && version != 6 {
        return Err(DbError::Version(version));
    }
    // Messages by Mosquitto's id, until RETAIN chunks say which are retained.
    let mut stored: HashMap<u64, Message> = HashMap::new();
    let mut retained_ids = Vec::new();
    let mut clients: Vec<(String, SessionRecord)> = Vec::new();
    let mut subscriptions: Vec<(String, StoredSubscription)> = Vec::new();
    let mut queued_skipped = 0;
    let mut at = 23;
    while at < file.len() {
        let header = file.get(at..at + 8).ok_or(DbError::Truncated(at))?;
        let kind = u32::from_be_bytes([header[0], header[1], header[2], header[3]]);
        let length = u32::from_be_bytes([header[4], header[5], header[6], header[7]]) as usize;
        let body_at = at + 8;
        let body = file
            .get(body_at..body_at.saturating_add(length))
            .ok_or(DbError::Truncated(at))?;
        let mut chunk = Chunk { bytes: body, at };
        match kind {
            // CFG: the next message id and how Mosquitto shut down.
            1 => {}
            2 => {
                let (id, message) = msg_store(&mut chunk, now)?;
                if let Some(message) = message {
                    stored.insert(id, message);
                }
            }
            3 => queued_skipped += 1,
            4 => retained_ids.push(chunk.le64()?),
            5 => subscriptions.push(sub(&mut chunk)?),
            6 => clients.push(client(&mut chunk, version, now)?),
            _ => {
                return Err(DbError::Malformed {
                    at,
                    what: "unknown chunk type",
                });
            }
        }
        at = body_at + length;
    }

    let mut seen = HashSet::new();
    let retained = retained_ids
        .into_iter()
        .filter_map(|id| stored.remove(&id))
        .filter(|m| m.retain && !m.payload.is_empty() && !m.topic.starts_with('$'))
        .filter(|m| seen.insert(m.topic.clone()))
        .collect();
    let mut by_client: HashMap<String, usize> = HashMap::new();
    for (i, (client_id, _)) in clients.iter().enumerate() {
        by_client.insert(client_id.clone(), i);
    }
    for (client_id, subscription) in subscriptions {
        if let Some(&i) = by_client.get(&client_id) {
            clients[i].1.subscriptions.push(subscription);
        }
    }
    Ok(MosquittoDb {
        retained,
        sessions: clients,
        queued_skipped,
    })
}

/// A MSG_STORE chunk: its id and the message, unless it has expired.
fn msg_store(chunk: &mut Chunk<'_>, now: SystemTime) -> Result<(u64, Option<Message>), DbError> {
    let at = chunk.at;
    if chunk.bytes.len() < MSG_STORE_LEN {
        return Err(DbError::Truncated(at));
    }
    let id = chunk.le64()?;
    let expiry = chunk.le64()?;
    let payload_len = chunk.be32()? as usize;
    let _source_mid = chunk.be16()?;
    let source_id_len = usize::from(chunk.be16()?);
    let username_len = usize::from(chunk.be16()?);
    let topic_len = usize::from(chunk.be16()?);
    let _source_port = chunk.be16()?;
    let [qos, retain] = chunk.array()?;
    let source = chunk.text(source_id_len)?;
    chunk.take(username_len)?;
    let topic = chunk.text(topic_len)?;
    let payload = chunk.take(payload_len)?;
    // What is left is the MQTT 5 property section, length included.
    let properties = chunk.bytes;
    // An expiry past what the clock holds is as good as none.
    let expires_at = (expiry > 0)
        .then(|| hass_runtime::clock::from_unix_seconds(expiry))
        .flatten();
    if expires_at.is_some_and(|t| t <= now) {
        return Ok((id, None));
    }
    let malformed = |what| DbError::Malformed { at, what };
    if crate::topic::validate_name(&topic).is_err() {
        return Err(malformed("a topic is not a valid topic name"));
    }
    let qos = rumqttd::protocol::qos(qos).ok_or_else(|| malformed("a QoS is not 0, 1 or 2"))?;
    // The message as a QoS 0 MQTT 5 PUBLISH, read back with the codec: the
    // properties are parsed and checked as any client's are.
    let mut variable = BytesMut::with_capacity(2 + topic.len() + properties.len() + payload.len());
    variable.put_u16(u16::try_from(topic.len()).map_err(|_| malformed("a topic is too long"))?);
    variable.put_slice(topic.as_bytes());
    if properties.is_empty() {
        variable.put_u8(0);
    } else {
        variable.put_slice(properties);
    }
    variable.put_slice(payload);
    let mut packet = BytesMut::with_capacity(variable.len() + 5);
    packet.put_u8(0x30);
    let mut remaining = variable.len();
    loop {
        let byte = (remaining % 128) as u8;
        remaining /= 128;
        packet.put_u8(if remaining > 0 { byte | 0x80 } else { byte });
        if remaining == 0 {
            break;
        }
    }
    packet.put_slice(&variable);
    let read = codec::read(Version::V5, &mut packet, usize::MAX)
        .ok()
        .flatten()
        .ok_or_else(|| malformed("a message's properties do not parse"))?;
    let Packet::Publish(publish, properties) = read.packet else {
        return Err(malformed("a message does not parse"));
    };
    Ok((
        id,
        Some(Message {
            topic: topic.as_str().into(),
            payload: publish.payload,
            qos,
            retain: retain != 0,
            properties,
            expires_at,
            publisher: (!source.is_empty()).then(|| Arc::from(source.as_str())),
            received_at: None,
        }),
    ))
}

fn sub(chunk: &mut Chunk<'_>) -> Result<(String, StoredSubscription), DbError> {
    if chunk.bytes.len() < SUB_LEN {
        return Err(DbError::Truncated(chunk.at));
    }
    let identifier = chunk.be32()?;
    let id_len = usize::from(chunk.be16()?);
    let topic_len = usize::from(chunk.be16()?);
    let [qos, options, _, _] = chunk.array()?;
    let client_id = chunk.text(id_len)?;
    let filter = chunk.text(topic_len)?;
    if crate::topic::parse_filter(&filter).is_err() || qos > 2 {
        return Err(DbError::Malformed {
            at: chunk.at,
            what: "a subscription is not a valid filter and QoS",
        });
    }
    Ok((
        client_id,
        StoredSubscription {
            filter,
            // No Local, Retain As Published and Retain Handling sit where
            // MQTT 5's options byte has them; the QoS beside them.
            options: (options & 0b0011_1100) | qos,
            identifier,
        },
    ))
}

fn client(
    chunk: &mut Chunk<'_>,
    version: u32,
    now: SystemTime,
) -> Result<(String, SessionRecord), DbError> {
    let fixed = if version == 6 {
        CLIENT_V6_LEN
    } else {
        CLIENT_V5_LEN
    };
    if chunk.bytes.len() < fixed {
        return Err(DbError::Truncated(chunk.at));
    }
    let _expiry_time = chunk.le64()?;
    let expiry_interval = chunk.be32()?;
    let _last_mid = chunk.be16()?;
    let id_len = usize::from(chunk.be16()?);
    let username_len = if version == 6 {
        let _listener_port = chunk.be16()?;
        let len = usize::from(chunk.be16()?);
        chunk.take(4)?;
        len
    } else {
        0
    };
    let client_id = chunk.text(id_len)?;
    let owner = chunk.text(username_len)?;
    let disconnected_at = now
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
        .max(1);
    Ok((
        client_id,
        SessionRecord {
            expiry_interval,
            disconnected_at,
            subscriptions: Vec::new(),
            owner: Some(owner),
        },
    ))
}

/// The `META` key an import leaves behind, so it runs once.
pub const IMPORTED: &str = "mosquitto_db_imported";

/// The largest `mosquitto.db` read: Home Assistant's discovery topics take
/// megabytes; a file far larger is not one to load into memory whole.
pub const MAX_FILE: u64 = 256 * 1024 * 1024;

/// What one import took.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Imported {
    pub retained: usize,
    pub sessions: usize,
    pub subscriptions: usize,
    /// Retained topics and client ids the store already had.
    pub kept: usize,
    pub queued_skipped: usize,
}

#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    #[error("cannot read {}: {source}", path.display())]
    Unreadable {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error("{} is over {} MiB", path.display(), MAX_FILE / (1024 * 1024))]
    TooLarge { path: std::path::PathBuf },
    #[error("{}: {source}", path.display())]
    Format {
        path: std::path::PathBuf,
        source: DbError,
    },
}

/// Imports `path` into `store` and into what it `recovered`, unless an
/// import already ran: `Ok(None)`. All or nothing: a file that does not
/// parse changes nothing, and the next start tries again.
pub fn import(
    path: &std::path::Path,
    store: &crate::store::Store,
    recovered: &mut crate::store::Recovered,
) -> Result<Option<Imported>, ImportError> {
    use std::io::Read;

    use crate::store::Op;

    if recovered.meta.contains_key(IMPORTED) {
        return Ok(None);
    }
    let unreadable = |source| ImportError::Unreadable {
        path: path.to_owned(),
        source,
    };
    let mut bytes = Vec::new();
    std::fs::File::open(path)
        .map_err(unreadable)?
        .take(MAX_FILE + 1)
        .read_to_end(&mut bytes)
        .map_err(unreadable)?;
    if bytes.len() as u64 > MAX_FILE {
        return Err(ImportError::TooLarge {
            path: path.to_owned(),
        });
    }
    let db = parse(&bytes, SystemTime::now()).map_err(|source| ImportError::Format {
        path: path.to_owned(),
        source,
    })?;
    let mut done = Imported {
        queued_skipped: db.queued_skipped,
        ..Imported::default()
    };
    let retained: HashSet<Arc<str>> = recovered.retained.iter().map(|m| m.topic.clone()).collect();
    for message in db.retained {
        if retained.contains(&message.topic) {
            done.kept += 1;
            continue;
        }
        store.submit(Op::PutRetained(Arc::new(message.clone())));
        recovered.retained.push(message);
        done.retained += 1;
    }
    let sessions: HashSet<String> = recovered
        .sessions
        .iter()
        .map(|(id, _)| id.clone())
        .collect();
    for (client_id, record) in db.sessions {
        if sessions.contains(&client_id) {
            done.kept += 1;
            continue;
        }
        let id: Arc<str> = client_id.as_str().into();
        store.submit(Op::PutSession {
            client_id: id.clone(),
            record: SessionRecord {
                subscriptions: Vec::new(),
                ..record.clone()
            },
        });
        for subscription in &record.subscriptions {
            store.submit(Op::PutSubscription {
                client_id: id.clone(),
                subscription: subscription.clone(),
            });
        }
        done.subscriptions += record.subscriptions.len();
        done.sessions += 1;
        recovered.sessions.push((client_id, record));
    }
    store.submit(Op::PutMeta {
        key: IMPORTED,
        value: format!(
            "{} retained, {} sessions from {} at {}",
            done.retained,
            done.sessions,
            path.display(),
            crate::inspect::timestamp(SystemTime::now())
        ),
    });
    Ok(Some(done))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_is_not_a_mosquitto_db_is_refused_without_panicking() {
        let now = SystemTime::now();
        assert_eq!(parse(b"", now).unwrap_err(), DbError::NotMosquitto);
        let mut file = MAGIC.to_vec();
        file.extend_from_slice(&[0, 0, 0, 0, 0, 0, 0, 4]);
        assert_eq!(parse(&file, now).unwrap_err(), DbError::Version(4));
        file[22] = 6;
        assert_eq!(parse(&file, now).unwrap().retained.len(), 0);
        // A chunk claiming more bytes than the file has.
        file.extend_from_slice(&[0, 0, 0, 2, 0xff, 0xff, 0xff, 0xff, 1, 2]);
        assert_eq!(parse(&file, now).unwrap_err(), DbError::Truncated(23));
        // A MSG_STORE whose lengths overrun its chunk.
        let mut short = MAGIC.to_vec();
        short.extend_from_slice(&[0, 0, 0, 0, 0, 0, 0, 6, 0, 0, 0, 2, 0, 0, 0, 32]);
        let mut body = [0u8; 32];
        body[16..20].copy_from_slice(&1000u32.to_be_bytes());
        short.extend_from_slice(&body);
        assert_eq!(parse(&short, now).unwrap_err(), DbError::Truncated(23));
    }
}

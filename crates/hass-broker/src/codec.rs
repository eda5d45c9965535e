//! MQTT framing on rumqttd's v4 and v5 codecs, made safe for a server that
//! reads untrusted bytes.
//!
//! rumqttd's codecs parse and encode every packet; what this module adds:
//! - one port for both versions: the protocol level in CONNECT picks the codec;
//! - a pre-check of the packet type, because rumqttd's v5 reader reaches an
//!   `unreachable!()` on packet types a client never sends (CONNACK, UNSUBACK),
//!   and a `catch_unwind` around the reader as a last line of defence;
//! - access to a PUBLISH's QoS, DUP and packet id, which rumqttd keeps
//!   crate-private, read from the frame itself;
//! - outgoing PUBLISH packets with a chosen QoS and packet id, built through
//!   rumqttd's own public serialization format.

use std::panic::{AssertUnwindSafe, catch_unwind};

use bytes::{BufMut, Bytes, BytesMut};
use rumqttd::protocol::v4::{self, V4};
use rumqttd::protocol::v5::V5;
use rumqttd::protocol::{
    self, Disconnect, DisconnectProperties, DisconnectReasonCode, Packet, Protocol, Publish, QoS,
};

/// The protocol version a connection speaks, fixed by its CONNECT.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    /// MQTT 3.1.1 (protocol level 4).
    V4,
    /// MQTT 5 (protocol level 5).
    V5,
}

/// Why bytes from a client could not be read as a packet.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CodecError {
    #[error("malformed packet: {0}")]
    Malformed(protocol::Error),
    #[error("packet of {size} bytes exceeds the {limit}-byte limit")]
    TooLarge { size: usize, limit: usize },
    #[error("packet type {0} is not one a client may send")]
    UnexpectedType(u8),
    #[error("first packet is not CONNECT")]
    NotConnect,
    #[error("protocol {name:?} level {level} is not MQTT 3.1.1 or 5")]
    UnsupportedProtocol { name: String, level: u8 },
    #[error("packet parser failed on malformed input")]
    ParserPanicked,
    #[error("packet type {packet_type} with reserved flags {flags:#06b}")]
    BadFlags { packet_type: u8, flags: u8 },
    #[error("{0}")]
    Property(#[from] crate::properties::PropertyError),
}

/// QoS, DUP and packet id of a PUBLISH, which rumqttd's `Publish` keeps private.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PublishHeader {
    pub qos: QoS,
    pub dup: bool,
    pub pkid: u16,
}

/// One packet read from a client.
#[derive(Debug)]
pub struct Incoming {
    pub packet: Packet,
    /// Present for PUBLISH.
    pub publish: Option<PublishHeader>,
    /// Bytes the packet took on the wire.
    pub size: usize,
}

/// Outcome of looking at the start of a connection's bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Detected {
    NeedMore,
    Version(Version),
}

/// Finds the protocol version from the CONNECT at the start of `buf`.
pub fn detect_version(buf: &[u8], max_packet: usize) -> Result<Detected, CodecError> {
    // Refuse a stream that does not start with CONNECT at its first byte,
    // rather than waiting for a frame its garbage length announces.
    if buf.first().is_some_and(|b| *b != 0x10) {
        return Err(CodecError::NotConnect);
    }
    let header = match frame(buf, max_packet)? {
        Some(header) => header,
        None => return Ok(Detected::NeedMore),
    };
    if header.byte1 != 0x10 {
        return Err(CodecError::NotConnect);
    }
    // Variable header: protocol name (u16 length + bytes), then the level.
    let body = &buf[header.fixed_header_len..header.frame_length()];
    let name_len = body
        .get(..2)
        .map(|b| usize::from(u16::from_be_bytes([b[0], b[1]])))
        .ok_or(CodecError::Malformed(protocol::Error::MalformedPacket))?;
    let name = body
        .get(2..2 + name_len)
        .ok_or(CodecError::Malformed(protocol::Error::MalformedPacket))?;
    let level = *body
        .get(2 + name_len)
        .ok_or(CodecError::Malformed(protocol::Error::MalformedPacket))?;
    match (name, level) {
        (b"MQTT", 4) => Ok(Detected::Version(Version::V4)),
        (b"MQTT", 5) => Ok(Detected::Version(Version::V5)),
        _ => Err(CodecError::UnsupportedProtocol {
            name: String::from_utf8_lossy(name).into_owned(),
            level,
        }),
    }
}

/// Reads one packet from `buf` if a whole one is there, consuming its bytes.
pub fn read(
    version: Version,
    buf: &mut BytesMut,
    max_packet: usize,
) -> Result<Option<Incoming>, CodecError> {
    let Some(header) = frame(buf, max_packet)? else {
        return Ok(None);
    };
    let packet_type = header.byte1 >> 4;
    // Only what a client may send reaches the parser (see module docs).
    if !matches!(packet_type, 1 | 3..=8 | 10 | 12 | 14) {
        return Err(CodecError::UnexpectedType(packet_type));
    }
    // MQTT 3.1.1 and 5 §2.1.3: the flags are fixed for every type but
    // PUBLISH; anything else is malformed and closes the connection.
    let flags = header.byte1 & 0x0f;
    let required = match packet_type {
        6 | 8 | 10 => Some(0b0010),
        3 => None,
        _ => Some(0),
    };
    if required.is_some_and(|r| r != flags) {
        return Err(CodecError::BadFlags { packet_type, flags });
    }
    let size = header.frame_length();
    let publish = if packet_type == 3 {
        Some(publish_header(&buf[..size], &header)?)
    } else {
        None
    };
    if version == Version::V5 {
        use crate::properties::{self, PropertyError};
        properties::check(packet_type, flags, &buf[header.fixed_header_len..size]).map_err(
            |e| match e {
                PropertyError::Malformed => CodecError::Malformed(protocol::Error::MalformedPacket),
                refused => CodecError::Property(refused),
            },
        )?;
    }
    let parsed = catch_unwind(AssertUnwindSafe(|| match version {
        Version::V4 => V4.read_mut(buf, max_packet),
        Version::V5 => V5.read_mut(buf, max_packet),
    }));
    match parsed {
        Ok(Ok(packet)) => Ok(Some(Incoming {
            packet,
            publish,
            size,
        })),
        Ok(Err(e)) => Err(CodecError::Malformed(e)),
        Err(_) => Err(CodecError::ParserPanicked),
    }
}

/// Encodes `packet` for `version`, appending to `out`.
pub fn write(
    version: Version,
    packet: Packet,
    out: &mut BytesMut,
) -> Result<usize, protocol::Error> {
    match version {
        Version::V4 => V4.write(strip_properties(packet), out),
        Version::V5 => V5.write(packet, out),
    }
}

/// A PUBLISH with the given QoS, packet id and flags. rumqttd's `Publish`
/// exposes these fields only through its own serialization format, so the
/// packet is built through it: header byte, packet id, topic, payload.
pub fn outgoing_publish(
    topic: &[u8],
    payload: &[u8],
    qos: QoS,
    pkid: u16,
    dup: bool,
    retain: bool,
) -> Publish {
    let mut raw = BytesMut::with_capacity(5 + topic.len() + payload.len());
    raw.put_u8(0x30 | u8::from(retain) | ((qos as u8) << 1) | (u8::from(dup) << 3));
    raw.put_u16(if qos == QoS::AtMostOnce { 0 } else { pkid });
    // Topics longer than u16 never get here: they could not have been read.
    raw.put_u16(u16::try_from(topic.len()).unwrap_or(u16::MAX));
    raw.extend_from_slice(topic);
    raw.extend_from_slice(payload);
    Publish::deserialize(raw.freeze())
}

fn frame(buf: &[u8], max_packet: usize) -> Result<Option<v4::FixedHeader>, CodecError> {
    match v4::check(buf.iter(), max_packet) {
        Ok(header) => Ok(Some(header)),
        Err(protocol::Error::InsufficientBytes(_)) => Ok(None),
        Err(protocol::Error::PayloadSizeLimitExceeded(size)) => Err(CodecError::TooLarge {
            size,
            limit: max_packet,
        }),
        Err(e) => Err(CodecError::Malformed(e)),
    }
}

fn publish_header(frame: &[u8], header: &v4::FixedHeader) -> Result<PublishHeader, CodecError> {
    let malformed = CodecError::Malformed(protocol::Error::MalformedPacket);
    let qos = protocol::qos((header.byte1 >> 1) & 0b11).ok_or(CodecError::Malformed(
        protocol::Error::InvalidQoS((header.byte1 >> 1) & 0b11),
    ))?;
    let dup = header.byte1 & 0b1000 != 0;
    let pkid = if qos == QoS::AtMostOnce {
        0
    } else {
        let at = header.fixed_header_len;
        let topic_len = frame
            .get(at..at + 2)
            .map(|b| usize::from(u16::from_be_bytes([b[0], b[1]])))
            .ok_or(malformed.clone())?;
        let at = at + 2 + topic_len;
        frame
            .get(at..at + 2)
            .map(|b| u16::from_be_bytes([b[0], b[1]]))
            .ok_or(malformed)?
    };
    Ok(PublishHeader { qos, dup, pkid })
}

/// v4 packets carry no properties; rumqttd's v4 writer refuses them.
fn strip_properties(packet: Packet) -> Packet {
    match packet {
        Packet::ConnAck(a, _) => Packet::ConnAck(a, None),
        Packet::Publish(p, _) => Packet::Publish(p, None),
        Packet::PubAck(p, _) => Packet::PubAck(p, None),
        Packet::PubRec(p, _) => Packet::PubRec(p, None),
        Packet::PubRel(p, _) => Packet::PubRel(p, None),
        Packet::PubComp(p, _) => Packet::PubComp(p, None),
        Packet::SubAck(s, _) => Packet::SubAck(s, None),
        Packet::UnsubAck(u, _) => Packet::UnsubAck(u, None),
        Packet::Disconnect(d, _) => Packet::Disconnect(d, None),
        other => other,
    }
}

/// A DISCONNECT with `reason` and a reason string saying it in words.
///
/// rumqttd's v5 writer mis-frames a DISCONNECT whose remaining length comes
/// to 1 or 2 bytes: without properties it announces 1 byte and writes 2, and
/// with empty properties it drops the reason code. A non-empty reason string
/// keeps it on its correct path, and tells the client why.
pub fn disconnect(reason: DisconnectReasonCode) -> Packet {
    let text = match reason {
        DisconnectReasonCode::MalformedPacket => "malformed packet",
        DisconnectReasonCode::ProtocolError => "protocol error",
        DisconnectReasonCode::ServerShuttingDown => "server shutting down",
        DisconnectReasonCode::KeepAliveTimeout => "keepalive timeout",
        DisconnectReasonCode::SessionTakenOver => "session taken over by a new connection",
        DisconnectReasonCode::TopicNameInvalid => "invalid topic name",
        DisconnectReasonCode::TopicAliasInvalid => "topic aliases are not accepted",
        DisconnectReasonCode::PacketTooLarge => "packet too large",
        DisconnectReasonCode::NotAuthorized => "not authorized",
        DisconnectReasonCode::QuotaExceeded => "too far behind: queue full",
        _ => "disconnecting",
    };
    Packet::Disconnect(
        Disconnect {
            reason_code: reason,
        },
        Some(DisconnectProperties {
            session_expiry_interval: None,
            reason_string: Some(text.to_owned()),
            user_properties: Vec::new(),
            server_reference: None,
        }),
    )
}

/// QoS of a delivery: the lower of the publish's and the subscription's.
pub fn min_qos(a: QoS, b: QoS) -> QoS {
    if (a as u8) <= (b as u8) { a } else { b }
}

/// Copies bytes into `Bytes` (for tests and small strings).
pub fn bytes_of(s: &str) -> Bytes {
    Bytes::copy_from_slice(s.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encode(version: Version, packet: Packet) -> BytesMut {
        let mut out = BytesMut::new();
        write(version, packet, &mut out).unwrap();
        out
    }

    #[test]
    fn outgoing_publish_round_trips_with_qos_and_pkid() {
        for version in [Version::V4, Version::V5] {
            let publish = outgoing_publish(b"a/b", b"payload", QoS::AtLeastOnce, 77, true, true);
            let mut wire = encode(version, Packet::Publish(publish, None));
            let incoming = read(version, &mut wire, 1024).unwrap().unwrap();
            assert_eq!(
                incoming.publish,
                Some(PublishHeader {
                    qos: QoS::AtLeastOnce,
                    dup: true,
                    pkid: 77
                })
            );
            let Packet::Publish(p, _) = incoming.packet else {
                panic!("not a publish")
            };
            assert_eq!(&p.topic[..], b"a/b");
            assert_eq!(&p.payload[..], b"payload");
            assert!(p.retain);
            assert!(wire.is_empty());
        }
    }

    #[test]
    fn disconnect_is_framed_exactly() {
        let mut wire = encode(
            Version::V5,
            disconnect(DisconnectReasonCode::MalformedPacket),
        );
        assert_eq!(wire[..3], [0xe0, 0x15, 0x81], "{wire:02x?}");
        assert_eq!(
            wire.len(),
            2 + 0x15,
            "remaining length matches what is written"
        );
        // And it reads back as what was sent.
        wire[0] = 0xe0;
        let back = read(Version::V5, &mut wire, 1024).unwrap().unwrap();
        let Packet::Disconnect(d, props) = back.packet else {
            panic!("not a disconnect")
        };
        assert_eq!(d.reason_code, DisconnectReasonCode::MalformedPacket);
        assert_eq!(
            props.and_then(|p| p.reason_string).as_deref(),
            Some("malformed packet")
        );
        let wire = encode(
            Version::V4,
            disconnect(DisconnectReasonCode::NormalDisconnection),
        );
        assert_eq!(&wire[..], [0xe0, 0x00]);
    }

    #[test]
    fn partial_packets_wait_for_more_bytes() {
        let publish = outgoing_publish(b"t", b"xyz", QoS::AtMostOnce, 0, false, false);
        let wire = encode(Version::V4, Packet::Publish(publish, None));
        for cut in 0..wire.len() {
            let mut partial = BytesMut::from(&wire[..cut]);
            assert!(read(Version::V4, &mut partial, 1024).unwrap().is_none());
        }
    }

    #[test]
    fn client_never_sends_connack_and_v5_must_not_panic_on_it() {
        // CONNACK and UNSUBACK reach unreachable!() in rumqttd's v5 reader.
        for bytes in [
            [0x20u8, 0x03, 0x00, 0x00, 0x00],
            [0xb0, 0x03, 0x00, 0x01, 0x00],
        ] {
            let mut buf = BytesMut::from(&bytes[..]);
            assert!(matches!(
                read(Version::V5, &mut buf, 1024),
                Err(CodecError::UnexpectedType(_))
            ));
        }
    }

    #[test]
    fn version_comes_from_connect() {
        let v4 = [0x10, 0x0c, 0, 4, b'M', b'Q', b'T', b'T', 4, 2, 0, 60, 0, 0];
        assert_eq!(
            detect_version(&v4, 1024),
            Ok(Detected::Version(Version::V4))
        );
        let mut v5 = v4;
        v5[8] = 5;
        assert_eq!(
            detect_version(&v5, 1024),
            Ok(Detected::Version(Version::V5))
        );
        let mut v3 = v4;
        v3[8] = 3;
        assert!(matches!(
            detect_version(&v3, 1024),
            Err(CodecError::UnsupportedProtocol { level: 3, .. })
        ));
        assert_eq!(detect_version(&v4[..5], 1024), Ok(Detected::NeedMore));
        assert_eq!(
            detect_version(&[0x30, 0x00], 1024),
            Err(CodecError::NotConnect)
        );
    }

    #[test]
    fn oversized_packets_are_refused_before_buffering() {
        // Remaining length 2 MiB announced in the header alone.
        let mut buf = BytesMut::from(&[0x30u8, 0x80, 0x80, 0x80, 0x01][..]);
        assert!(matches!(
            read(Version::V4, &mut buf, 1024 * 1024),
            Err(CodecError::TooLarge {
                size: 2_097_152,
                limit: 1_048_576
            })
        ));
    }

    #[test]
    fn random_bytes_never_panic() {
        // A cheap deterministic xorshift; the fuzz target goes much further.
        let mut state = 0x2545_f491_4f6c_dd1du64;
        for _ in 0..20_000 {
            let len = (state % 64) as usize;
            let mut bytes = Vec::with_capacity(len);
            for _ in 0..len {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                bytes.push(state as u8);
            }
            for version in [Version::V4, Version::V5] {
                let mut buf = BytesMut::from(&bytes[..]);
                let _ = detect_version(&buf, 1024);
                let result = read(version, &mut buf, 1024);
                assert!(
                    !matches!(result, Err(CodecError::ParserPanicked)),
                    "{bytes:02x?}"
                );
            }
        }
    }
}

//! MQTT 5 property sections of the packets a client sends, walked before
//! rumqttd parses them: its reader keeps the last of a property given twice,
//! where the spec makes that a protocol error (MQTT 5 §2.2.2.2: only User
//! Property may repeat), and it takes a Subscription Identifier in a
//! client's PUBLISH, which only the server may send (§3.3.4). No crate walks
//! property sections without parsing the whole packet into its own types,
//! so this is a small hand-written walk over the spec's table.

/// Why a property section was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PropertyError {
    #[error("property {0:#04x} appears more than once")]
    Duplicate(u8),
    #[error("property {0:#04x} is not allowed in this packet")]
    NotAllowed(u8),
    #[error("malformed property section")]
    Malformed,
}

/// How a property's value is encoded.
#[derive(Clone, Copy)]
enum Value {
    Byte,
    TwoBytes,
    FourBytes,
    Varint,
    /// A UTF-8 string or binary data: a 2-byte length, then the bytes.
    Counted,
    /// A string pair.
    TwoCounted,
}

fn value_of(id: u8) -> Option<Value> {
    Some(match id {
        0x01 | 0x17 | 0x19 | 0x24 | 0x25 | 0x28 | 0x29 | 0x2A => Value::Byte,
        0x13 | 0x21 | 0x22 | 0x23 => Value::TwoBytes,
        0x02 | 0x11 | 0x18 | 0x27 => Value::FourBytes,
        0x0B => Value::Varint,
        0x03 | 0x08 | 0x09 | 0x12 | 0x15 | 0x16 | 0x1A | 0x1C | 0x1F => Value::Counted,
        0x26 => Value::TwoCounted,
        _ => return None,
    })
}

/// A reading position in a packet's body.
struct Cursor<'a> {
    bytes: &'a [u8],
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], PropertyError> {
        if self.bytes.len() < n {
            return Err(PropertyError::Malformed);
        }
        let (head, rest) = self.bytes.split_at(n);
        self.bytes = rest;
        Ok(head)
    }

    fn u8(&mut self) -> Result<u8, PropertyError> {
        Ok(self.take(1)?[0])
    }

    fn u16(&mut self) -> Result<usize, PropertyError> {
        let b = self.take(2)?;
        Ok(usize::from(u16::from_be_bytes([b[0], b[1]])))
    }

    fn counted(&mut self) -> Result<&'a [u8], PropertyError> {
        let len = self.u16()?;
        self.take(len)
    }

    fn varint(&mut self) -> Result<usize, PropertyError> {
        let mut value = 0usize;
        for shift in [0, 7, 14, 21] {
            let byte = self.u8()?;
            value |= usize::from(byte & 0x7f) << shift;
            if byte & 0x80 == 0 {
                return Ok(value);
            }
        }
        Err(PropertyError::Malformed)
    }

    /// A property section: its length, then the properties.
    fn properties(&mut self, subscription_id_allowed: bool) -> Result<(), PropertyError> {
        let len = self.varint()?;
        let mut section = Cursor {
            bytes: self.take(len)?,
        };
        let mut seen = [false; 64];
        while !section.bytes.is_empty() {
            let id = section.u8()?;
            let value = value_of(id).ok_or(PropertyError::Malformed)?;
            if id == 0x0B && !subscription_id_allowed {
                return Err(PropertyError::NotAllowed(id));
            }
            if id != 0x26 {
                let slot = &mut seen[usize::from(id)];
                if *slot {
                    return Err(PropertyError::Duplicate(id));
                }
                *slot = true;
            }
            match value {
                Value::Byte => drop(section.take(1)?),
                Value::TwoBytes => drop(section.take(2)?),
                Value::FourBytes => drop(section.take(4)?),
                Value::Varint => drop(section.varint()?),
                Value::Counted => drop(section.counted()?),
                Value::TwoCounted => {
                    section.counted()?;
                    section.counted()?;
                }
            }
        }
        Ok(())
    }
}

/// Checks the property sections of an MQTT 5 packet from a client:
/// `packet_type` and `flags` from its fixed header, `body` after it.
pub fn check(packet_type: u8, flags: u8, body: &[u8]) -> Result<(), PropertyError> {
    let mut at = Cursor { bytes: body };
    match packet_type {
        // CONNECT: protocol name, level, flags, keep alive, properties; then
        // the client id and, with a will, the will's properties.
        1 => {
            at.counted()?;
            at.u8()?;
            let connect_flags = at.u8()?;
            at.take(2)?;
            at.properties(false)?;
            at.counted()?;
            if connect_flags & 0b100 != 0 {
                at.properties(false)?;
            }
        }
        // PUBLISH: topic, a packet id above QoS 0, properties.
        3 => {
            at.counted()?;
            if flags & 0b0110 != 0 {
                at.take(2)?;
            }
            at.properties(false)?;
        }
        // PUBACK, PUBREC, PUBREL, PUBCOMP: packet id, then an optional
        // reason code and optional properties.
        4..=7 => {
            at.take(2)?;
            if at.bytes.len() > 1 {
                at.u8()?;
                at.properties(false)?;
            }
        }
        // SUBSCRIBE (one Subscription Identifier allowed), UNSUBSCRIBE.
        8 | 10 => {
            at.take(2)?;
            at.properties(packet_type == 8)?;
        }
        // DISCONNECT: an optional reason code and optional properties.
        14 if at.bytes.len() > 1 => {
            at.u8()?;
            at.properties(false)?;
        }
        _ => {}
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A CONNECT body with `props` as its property section.
    fn connect(props: &[u8]) -> Vec<u8> {
        let mut body = vec![0, 4, b'M', b'Q', b'T', b'T', 5, 0b10, 0, 60];
        body.push(props.len() as u8);
        body.extend_from_slice(props);
        body.extend_from_slice(&[0, 1, b'c']);
        body
    }

    #[test]
    fn duplicates_are_refused_except_user_properties() {
        let receive_max = [0x21, 0, 10];
        assert_eq!(check(1, 0, &connect(&receive_max)), Ok(()));
        let twice = [receive_max, receive_max].concat();
        assert_eq!(
            check(1, 0, &connect(&twice)),
            Err(PropertyError::Duplicate(0x21))
        );
        let user = [0x26, 0, 1, b'k', 0, 1, b'v'];
        assert_eq!(check(1, 0, &connect(&[user, user].concat())), Ok(()));
    }

    #[test]
    fn a_client_publish_may_not_carry_a_subscription_identifier() {
        let mut body = vec![0, 1, b't', 0, 7];
        body.extend_from_slice(&[2, 0x0B, 5]);
        assert_eq!(
            check(3, 0b0010, &body),
            Err(PropertyError::NotAllowed(0x0B))
        );
        let mut subscribe = vec![0, 7, 2, 0x0B, 5];
        subscribe.extend_from_slice(&[0, 1, b't', 0]);
        assert_eq!(check(8, 0b0010, &subscribe), Ok(()));
    }

    #[test]
    fn truncated_and_unknown_properties_are_malformed() {
        assert_eq!(
            check(1, 0, &connect(&[0x21, 0])),
            Err(PropertyError::Malformed)
        );
        assert_eq!(
            check(1, 0, &connect(&[0x7f, 0])),
            Err(PropertyError::Malformed)
        );
        // Short acknowledgements have no property section at all.
        assert_eq!(check(4, 0, &[0, 7]), Ok(()));
        assert_eq!(check(14, 0, &[]), Ok(()));
    }
}

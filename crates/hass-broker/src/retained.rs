//! The retained messages: the last retained message per topic, which every new
//! subscription receives in full. Home Assistant's MQTT discovery and every
//! availability topic live here; losing or truncating them makes devices vanish.

use std::collections::BTreeMap;
use std::collections::btree_map::Entry;
use std::ops::Bound;
use std::sync::Arc;
use std::time::SystemTime;

use crate::message::Message;
use crate::topic;

const SYSTEM_PREFIX: &str = "$SYS/";

#[derive(Debug, Default)]
pub struct RetainedStore {
    by_topic: BTreeMap<Arc<str>, Arc<Message>>,
    bytes: usize,
    /// Entries under `$SYS/`, which the broker writes itself.
    system: usize,
}

impl RetainedStore {
    /// Stores `message` for its topic; an empty payload clears the topic.
    /// Returns whether anything changed.
    pub fn set(&mut self, message: Arc<Message>) -> bool {
        if message.payload.is_empty() {
            return self.remove(&message.topic);
        }
        self.set_within(message, usize::MAX)
    }

    /// Stores `message` (a non-empty payload) if retained messages stay
    /// within `budget` bytes, or it is no larger than the message it
    /// replaces; returns whether it was stored. One lookup of the topic.
    pub fn set_within(&mut self, message: Arc<Message>, budget: usize) -> bool {
        let weight = message.weight();
        let system = message.topic.starts_with(SYSTEM_PREFIX);
        match self.by_topic.entry(message.topic.clone()) {
            Entry::Occupied(mut slot) => {
                let old = slot.get().weight();
                if weight > old && self.bytes - old + weight > budget {
                    return false;
                }
                self.bytes = self.bytes - old + weight;
                slot.insert(message);
            }
            Entry::Vacant(slot) => {
                if self.bytes.saturating_add(weight) > budget {
                    return false;
                }
                self.bytes += weight;
                if system {
                    self.system += 1;
                }
                slot.insert(message);
            }
        }
        true
    }

    pub fn remove(&mut self, topic: &str) -> bool {
        match self.by_topic.remove(topic) {
            Some(old) => {
                self.bytes -= old.weight();
                if topic.starts_with(SYSTEM_PREFIX) {
                    self.system -= 1;
                }
                true
            }
            None => false,
        }
    }

    pub fn len(&self) -> usize {
        self.by_topic.len()
    }

    /// Retained messages published by clients (not the broker's `$SYS`).
    pub fn client_len(&self) -> usize {
        self.by_topic.len() - self.system
    }

    pub fn is_empty(&self) -> bool {
        self.by_topic.is_empty()
    }

    /// Memory held by retained messages, in bytes.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Every unexpired retained message matching `filter`, in topic order.
    /// Only the part of the tree under the filter's literal prefix is scanned.
    pub fn matching<'a>(
        &'a self,
        filter: &'a str,
        now: SystemTime,
    ) -> impl Iterator<Item = &'a Arc<Message>> + 'a {
        let literal_end = filter.find(['+', '#']).unwrap_or(filter.len());
        self.under(&filter[..literal_end])
            .filter(move |m| topic::matches(&m.topic, filter) && !m.is_expired(now))
    }

    /// Every retained message whose topic starts with `prefix`, in topic
    /// order, expired or not.
    pub fn under<'a>(&'a self, prefix: &'a str) -> impl Iterator<Item = &'a Arc<Message>> + 'a {
        self.by_topic
            .range::<str, _>((Bound::Included(prefix), Bound::Unbounded))
            .take_while(move |(t, _)| t.starts_with(prefix))
            .map(|(_, m)| m)
    }

    /// Drops expired messages; returns their topics so the store forgets them too.
    pub fn purge_expired(&mut self, now: SystemTime) -> Vec<Arc<str>> {
        let expired: Vec<Arc<str>> = self
            .by_topic
            .iter()
            .filter(|(_, m)| m.is_expired(now))
            .map(|(t, _)| t.clone())
            .collect();
        for t in &expired {
            self.remove(t);
        }
        expired
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use rumqttd::protocol::QoS;

    fn msg(topic: &str, payload: &str) -> Arc<Message> {
        Arc::new(Message {
            topic: topic.into(),
            payload: Bytes::copy_from_slice(payload.as_bytes()),
            qos: QoS::AtLeastOnce,
            retain: true,
            properties: None,
            expires_at: None,
            publisher: None,
            received_at: None,
        })
    }

    #[test]
    fn empty_payload_clears_and_filters_match_by_prefix() {
        let mut store = RetainedStore::default();
        for i in 0..500 {
            store.set(msg(&format!("homeassistant/sensor/dev{i}/config"), "{}"));
        }
        store.set(msg("zigbee2mqtt/bridge/state", "online"));
        store.set(msg("$SYS/broker/version", "x"));
        let now = SystemTime::now();
        assert_eq!(store.matching("homeassistant/#", now).count(), 500);
        assert_eq!(
            store.matching("homeassistant/sensor/+/config", now).count(),
            500
        );
        assert_eq!(store.matching("#", now).count(), 501, "# skips $SYS");
        assert_eq!(store.matching("$SYS/#", now).count(), 1);
        assert_eq!(store.matching("zigbee2mqtt/bridge/state", now).count(), 1);

        store.set(msg("zigbee2mqtt/bridge/state", ""));
        assert_eq!(store.matching("zigbee2mqtt/#", now).count(), 0);
        assert_eq!(store.len(), 501);
    }

    #[test]
    fn byte_accounting_follows_replacements() {
        let mut store = RetainedStore::default();
        store.set(msg("a", "12345"));
        let one = store.bytes();
        store.set(msg("a", "1234567890"));
        assert_eq!(store.bytes(), one + 5);
        store.remove("a");
        assert_eq!(store.bytes(), 0);
    }
}

//! MQTT 5 topic aliases of one connection, both ways: those the client sets
//! on its PUBLISHes (at most `limits.max_topic_alias`, told in CONNACK) and
//! those the broker assigns on the PUBLISHes it sends (at most what the
//! client's CONNECT allows, and the same limit), so a client receiving one
//! topic again and again gets a two-byte alias instead of the topic.

use std::collections::HashMap;
use std::sync::Arc;

/// The aliases a client has bound, alias → topic.
#[derive(Debug, Default)]
pub struct Incoming {
    by_alias: HashMap<u16, Arc<str>>,
}

impl Incoming {
    pub fn bind(&mut self, alias: u16, topic: Arc<str>) {
        self.by_alias.insert(alias, topic);
    }

    pub fn topic(&self, alias: u16) -> Option<&Arc<str>> {
        self.by_alias.get(&alias)
    }
}

/// The aliases the broker has bound towards the client, topic → alias.
/// Aliases 1..=`max` go to the first topics sent; later topics go without
/// one (a client's hot topics are its first: its subscriptions' replays and
/// the states that follow).
#[derive(Debug)]
pub struct Outgoing {
    max: u16,
    by_topic: HashMap<Arc<str>, u16>,
}

/// How one PUBLISH names its topic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Naming {
    /// The topic, no alias.
    Topic,
    /// The topic and a new alias for it: bind it once the packet is sent.
    Bind(u16),
    /// The alias alone, topic empty.
    Alias(u16),
}

impl Outgoing {
    /// `None` when no alias may be used: `max` 0.
    pub fn new(max: u16) -> Option<Self> {
        (max > 0).then(|| Self {
            max,
            by_topic: HashMap::new(),
        })
    }

    pub fn naming(&self, topic: &str) -> Naming {
        match self.by_topic.get(topic) {
            Some(alias) => Naming::Alias(*alias),
            None => match u16::try_from(self.by_topic.len() + 1) {
                Ok(next) if next <= self.max => Naming::Bind(next),
                _ => Naming::Topic,
            },
        }
    }

    /// Records a binding sent to the client ([`Naming::Bind`]).
    pub fn bound(&mut self, topic: Arc<str>, alias: u16) {
        self.by_topic.insert(topic, alias);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topics_get_aliases_up_to_the_maximum_and_keep_them() {
        let mut out = Outgoing::new(2).expect("aliases allowed");
        assert_eq!(out.naming("a"), Naming::Bind(1));
        // Not bound until sent: a dropped packet binds nothing.
        assert_eq!(out.naming("a"), Naming::Bind(1));
        out.bound("a".into(), 1);
        assert_eq!(out.naming("a"), Naming::Alias(1));
        assert_eq!(out.naming("b"), Naming::Bind(2));
        out.bound("b".into(), 2);
        assert_eq!(out.naming("c"), Naming::Topic);
        assert_eq!(out.naming("b"), Naming::Alias(2));
        assert!(Outgoing::new(0).is_none());
    }
}

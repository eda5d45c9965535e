//! Which sessions hold a filter matching a topic, found by walking the
//! topic's levels through a tree of filters instead of testing every
//! filter of every session: Home Assistant alone holds hundreds, and a
//! publish used to cost one `topic::matches` for each of them.
//!
//! Invariant: the tree holds exactly the non-shared filters of every
//! session in the router, each with the client ids holding it (shared
//! `$share/` filters are matched per group, elsewhere).

use std::collections::HashMap;
use std::sync::Arc;

/// Filters by level; `+` and `#` are children like any other level.
#[derive(Debug, Default)]
pub struct SubscriptionIndex {
    root: Node,
}

/// 32 bytes: a peer's deep filter is a chain of nodes, one a level.
#[derive(Debug, Default)]
struct Node {
    children: Children,
    /// Set when a filter ends at this node; boxed, since most nodes are
    /// levels on the way.
    end: Option<Box<FilterEnd>>,
}

/// A node's children: a list at its exact length while they are few (most
/// levels have one child), a hash table once they are many
/// (`zigbee2mqtt/<device>` for hundreds of devices). A table's smallest
/// allocation made every level of a chain cost ~480 bytes; a one-child list
/// costs ~100.
#[derive(Debug)]
enum Children {
    Few(Vec<(Box<str>, Node)>),
    // Boxed so that every node, most of which have a list, stays 32 bytes.
    #[expect(
        clippy::box_collection,
        reason = "a 48-byte table would make every node 56 bytes"
    )]
    Many(Box<HashMap<Box<str>, Node>>),
}

/// Children kept in a list before it becomes a table.
const FEW: usize = 8;

/// Bytes a filter may cost its holder beyond its text, an upper bound made
/// of what glibc's malloc hands out (16-byte steps, 32 at least): per level
/// a list or table slot of 48 bytes (a table's up to twice that) and the
/// level's own allocation; per filter the end of the path, the session's
/// entry and the filter's copies. Charged against the subscription budgets,
/// so what a peer's SUBSCRIBE makes the broker hold is bounded by them.
pub const BYTES_PER_LEVEL: usize = 144;
pub const BYTES_PER_FILTER: usize = 320;

/// What holding `filter` may cost, in bytes: an upper bound on what it adds
/// to the tree and to its session, whatever else is held.
pub fn cost(filter: &str) -> usize {
    let levels = filter.bytes().filter(|b| *b == b'/').count() + 1;
    BYTES_PER_FILTER + levels * BYTES_PER_LEVEL + 3 * filter.len()
}

#[derive(Debug)]
struct FilterEnd {
    filter: Arc<str>,
    clients: Vec<Arc<str>>,
}

impl Default for Children {
    fn default() -> Self {
        Self::Few(Vec::new())
    }
}

impl Children {
    fn get(&self, level: &str) -> Option<&Node> {
        match self {
            Self::Few(list) => list.iter().find(|(l, _)| **l == *level).map(|(_, n)| n),
            Self::Many(table) => table.get(level),
        }
    }

    fn get_mut(&mut self, level: &str) -> Option<&mut Node> {
        match self {
            Self::Few(list) => list.iter_mut().find(|(l, _)| **l == *level).map(|(_, n)| n),
            Self::Many(table) => table.get_mut(level),
        }
    }

    fn get_or_insert(&mut self, level: &str) -> &mut Node {
        if let Self::Few(list) = self
            && list.len() >= FEW
            && !list.iter().any(|(l, _)| **l == *level)
        {
            let table = std::mem::take(list).into_iter().collect();
            *self = Self::Many(Box::new(table));
        }
        match self {
            Self::Few(list) => {
                let at = match list.iter().position(|(l, _)| **l == *level) {
                    Some(at) => at,
                    None => {
                        // Exact: `push` alone would make room for four.
                        list.reserve_exact(1);
                        list.push((level.into(), Node::default()));
                        list.len() - 1
                    }
                };
                &mut list[at].1
            }
            Self::Many(table) => table.entry(level.into()).or_default(),
        }
    }

    fn remove(&mut self, level: &str) {
        match self {
            Self::Few(list) => {
                if let Some(at) = list.iter().position(|(l, _)| **l == *level) {
                    list.swap_remove(at);
                    list.shrink_to_fit();
                }
            }
            Self::Many(table) => {
                table.remove(level);
            }
        }
    }

    fn len(&self) -> usize {
        match self {
            Self::Few(list) => list.len(),
            Self::Many(table) => table.len(),
        }
    }

    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Moves every child into `out`, leaving none.
    fn drain_into(&mut self, out: &mut Vec<Node>) {
        match std::mem::take(self) {
            Self::Few(list) => out.extend(list.into_iter().map(|(_, node)| node)),
            Self::Many(table) => out.extend(table.into_values()),
        }
    }
}

impl SubscriptionIndex {
    /// Records that `client` holds `filter` (a valid, non-shared filter).
    /// Holding it twice records it once.
    pub fn insert(&mut self, filter: &str, client: &Arc<str>) {
        let mut node = &mut self.root;
        for level in filter.split('/') {
            node = node.children.get_or_insert(level);
        }
        let end = node.end.get_or_insert_with(|| {
            Box::new(FilterEnd {
                filter: filter.into(),
                clients: Vec::new(),
            })
        });
        if !end.clients.iter().any(|c| **c == **client) {
            end.clients.reserve_exact(1);
            end.clients.push(client.clone());
        }
    }

    /// Forgets that `client` holds `filter`; prunes what no filter uses.
    pub fn remove(&mut self, filter: &str, client: &str) {
        let levels: Vec<&str> = filter.split('/').collect();
        // The deepest node on the path that stays whatever happens below it
        // (the root, or one that ends a filter or branches): below it, the
        // path is a chain that only this filter uses.
        let mut keep = 0;
        let mut node = &self.root;
        for (depth, level) in levels.iter().enumerate() {
            if node.end.is_some() || node.children.len() > 1 {
                keep = depth;
            }
            match node.children.get(level) {
                Some(child) => node = child,
                None => return,
            }
        }
        let mut node = &mut self.root;
        for level in &levels {
            match node.children.get_mut(level) {
                Some(child) => node = child,
                None => return,
            }
        }
        if let Some(end) = &mut node.end {
            end.clients.retain(|c| &**c != client);
            if end.clients.is_empty() {
                node.end = None;
            }
        }
        if node.end.is_some() || !node.children.is_empty() {
            return;
        }
        let mut node = &mut self.root;
        for level in &levels[..keep] {
            match node.children.get_mut(level) {
                Some(child) => node = child,
                None => return,
            }
        }
        node.children.remove(levels[keep]);
    }

    /// Calls `found(client, filter)` for each client holding a filter that
    /// matches `topic` (a valid name), once per (client, filter), with the
    /// rules of `topic::matches`.
    pub fn for_each_match<'a>(&'a self, topic: &str, mut found: impl FnMut(&'a Arc<str>, &'a str)) {
        let levels: Vec<&str> = topic.split('/').collect();
        // Wildcards at the first level never match `$` topics.
        let dollar = topic.starts_with('$');
        // Nodes still to visit, with their depth: a stack of our own, not
        // the thread's, since a peer chooses how deep a topic goes. Each
        // node is reached from its parent by one key, so each is visited
        // once at most.
        let mut pending = vec![(&self.root, 0)];
        while let Some((node, depth)) = pending.pop() {
            let wildcards = !(dollar && depth == 0);
            // `a/#` matches `a` and everything under it.
            if wildcards && let Some(hash) = node.children.get("#") {
                emit(hash, &mut found);
            }
            let Some(level) = levels.get(depth) else {
                emit(node, &mut found);
                continue;
            };
            if wildcards && let Some(plus) = node.children.get("+") {
                pending.push((plus, depth + 1));
            }
            // A topic level of `+` or `#` cannot occur (names have no
            // wildcards), so the exact child is never a wildcard node.
            if let Some(exact) = node.children.get(level) {
                pending.push((exact, depth + 1));
            }
        }
    }

    /// Whether no filter is held.
    pub fn is_empty(&self) -> bool {
        self.root.children.is_empty()
    }
}

fn emit<'a>(node: &'a Node, found: &mut impl FnMut(&'a Arc<str>, &'a str)) {
    if let Some(end) = &node.end {
        for client in &end.clients {
            found(client, &end.filter);
        }
    }
}

/// Drops a subtree level by level: the derived drop would recurse once per
/// level, as deep as a peer's filter.
impl Drop for Node {
    fn drop(&mut self) {
        let mut below = Vec::new();
        self.children.drain_into(&mut below);
        while let Some(mut node) = below.pop() {
            node.children.drain_into(&mut below);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::topic;

    fn matches_of(index: &SubscriptionIndex, topic: &str) -> Vec<(String, String)> {
        let mut found = Vec::new();
        index.for_each_match(topic, |client, filter| {
            found.push((client.to_string(), filter.to_string()));
        });
        found.sort();
        found
    }

    const FILTERS: &[&str] = &[
        "#",
        "+",
        "+/+",
        "/+",
        "/#",
        "a",
        "a/",
        "a/#",
        "a/+",
        "a/b",
        "a/b/c",
        "a/+/c",
        "a/b/#",
        "+/b",
        "+/b/+",
        "+/+/+",
        "a//b",
        "a/+/+/#",
        "$SYS/#",
        "$SYS/+",
        "$SYS/broker/+",
        "+/broker",
        "sport/tennis/player1/#",
        "sport/+",
        "homeassistant/+/+/config",
        "homeassistant/#",
        // The root's children past `FEW`: a table, beside lists below.
        "b",
        "c/+",
        "d/#",
        "e/f",
    ];

    const TOPICS: &[&str] = &[
        "a",
        "a/",
        "/a",
        "/",
        "//",
        "a/b",
        "a/b/c",
        "a/x/c",
        "a/b/c/d",
        "a//b",
        "b",
        "x/b",
        "x/b/y",
        "$SYS",
        "$SYS/broker",
        "$SYS/broker/clients",
        "$other/broker",
        "sport",
        "sport/",
        "sport/tennis/player1",
        "sport/tennis/player1/ranking",
        "homeassistant/sensor/x/config",
        "homeassistant/status",
    ];

    /// The tree finds what testing every filter with `topic::matches` finds,
    /// for every pair of a set of filters and topics chosen at the rules'
    /// edges (empty levels, `#` on the parent level, `$` topics).
    #[test]
    fn finds_what_matching_every_filter_finds() {
        let mut index = SubscriptionIndex::default();
        let clients: Vec<Arc<str>> = ["c1", "c2"].into_iter().map(Arc::from).collect();
        for (i, filter) in FILTERS.iter().enumerate() {
            index.insert(filter, &clients[i % 2]);
            if i % 3 == 0 {
                index.insert(filter, &clients[(i + 1) % 2]);
            }
        }
        for topic in TOPICS {
            let mut want: Vec<(String, String)> = Vec::new();
            for (i, filter) in FILTERS.iter().enumerate() {
                if topic::matches(topic, filter) {
                    want.push((clients[i % 2].to_string(), filter.to_string()));
                    if i % 3 == 0 {
                        want.push((clients[(i + 1) % 2].to_string(), filter.to_string()));
                    }
                }
            }
            want.sort();
            assert_eq!(matches_of(&index, topic), want, "topic {topic:?}");
        }
    }

    /// A topic is up to 65 535 bytes, so a peer can send 32 767 levels. The
    /// walk and the removal hold no stack frame per level: this runs on a
    /// test thread's 2 MiB stack, which one frame per level overflowed.
    #[test]
    fn the_deepest_filter_a_peer_can_send_is_walked_without_recursion() {
        let deep = vec!["a"; 32_767].join("/");
        let mut index = SubscriptionIndex::default();
        let client: Arc<str> = "deep".into();
        index.insert(&deep, &client);
        index.insert(&format!("{deep}/#"), &client);
        assert_eq!(matches_of(&index, &deep).len(), 2);
        index.remove(&deep, "deep");
        index.remove(&format!("{deep}/#"), "deep");
        assert!(index.is_empty());
        // Dropped whole, as when the broker stops.
        index.insert(&deep, &client);
        drop(index);
    }

    /// What `cost` charges is a bound only while a level of a chain is a
    /// 32-byte node in a 48-byte slot.
    #[test]
    fn a_level_is_as_small_as_cost_assumes() {
        assert_eq!(std::mem::size_of::<Node>(), 32);
        assert_eq!(std::mem::size_of::<(Box<str>, Node)>(), 48);
        const { assert!(BYTES_PER_LEVEL >= 2 * 48 + 32) };
    }

    #[test]
    fn every_filter_removed_leaves_nothing() {
        let mut index = SubscriptionIndex::default();
        let client: Arc<str> = "c".into();
        for filter in FILTERS {
            index.insert(filter, &client);
        }
        assert!(matches!(index.root.children, Children::Many(_)));
        for filter in FILTERS {
            index.remove(filter, "c");
        }
        assert!(index.is_empty(), "{index:?}");
    }

    #[test]
    fn removal_forgets_one_client_and_prunes_unused_levels() {
        let mut index = SubscriptionIndex::default();
        let (a, b): (Arc<str>, Arc<str>) = ("a".into(), "b".into());
        index.insert("x/+/z", &a);
        index.insert("x/+/z", &a);
        index.insert("x/+/z", &b);
        index.insert("x/#", &a);
        assert_eq!(matches_of(&index, "x/y/z").len(), 3);
        index.remove("x/+/z", "a");
        assert_eq!(
            matches_of(&index, "x/y/z"),
            [("a".into(), "x/#".into()), ("b".into(), "x/+/z".into())]
        );
        index.remove("x/+/z", "b");
        index.remove("x/#", "a");
        // Removing what is not held changes nothing.
        index.remove("x/+/z", "b");
        index.remove("never/held", "a");
        assert!(index.is_empty());
    }
}

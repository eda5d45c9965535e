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

#[derive(Debug, Default)]
struct Node {
    children: HashMap<Box<str>, Node>,
    /// Set when a filter ends at this node.
    end: Option<FilterEnd>,
}

#[derive(Debug)]
struct FilterEnd {
    filter: Arc<str>,
    clients: Vec<Arc<str>>,
}

impl SubscriptionIndex {
    /// Records that `client` holds `filter` (a valid, non-shared filter).
    /// Holding it twice records it once.
    pub fn insert(&mut self, filter: &str, client: &Arc<str>) {
        let mut node = &mut self.root;
        for level in filter.split('/') {
            node = node.children.entry(level.into()).or_default();
        }
        let end = node.end.get_or_insert_with(|| FilterEnd {
            filter: filter.into(),
            clients: Vec::new(),
        });
        if !end.clients.iter().any(|c| **c == **client) {
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
            match node.children.get(*level) {
                Some(child) => node = child,
                None => return,
            }
        }
        let mut node = &mut self.root;
        for level in &levels {
            match node.children.get_mut(*level) {
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
            match node.children.get_mut(*level) {
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
            if let Some(exact) = node.children.get(*level) {
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
        let mut below: Vec<Node> = self.children.drain().map(|(_, child)| child).collect();
        while let Some(mut node) = below.pop() {
            below.extend(node.children.drain().map(|(_, child)| child));
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

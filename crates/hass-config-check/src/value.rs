//! The resolved config as a value tree: what Home Assistant's loader would hand to
//! the integrations, with the position each value came from.
//!
//! Equality follows Python, because that is what decides what Home Assistant sees as
//! the same config: positions are ignored, mappings compare without regard to key
//! order, and `1`, `1.0` and `true` are the same mapping key.

use std::collections::HashMap;
use std::fmt;
use std::path::Path;
use std::sync::Arc;

/// Where a value starts: file relative to the config root, 1-based line and column.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Origin {
    pub file: Arc<Path>,
    pub line: u32,
    pub column: u32,
}

/// A value and where it came from. Two nodes are equal when their values are,
/// wherever they were written.
#[derive(Clone, Debug)]
pub struct Node {
    pub value: Value,
    pub origin: Origin,
}

impl PartialEq for Node {
    fn eq(&self, other: &Self) -> bool {
        self.value == other.value
    }
}

impl Node {
    pub fn new(value: Value, origin: Origin) -> Self {
        Node { value, origin }
    }
}

/// A YAML 1.1 value as PyYAML's safe loader builds it, plus the loader's own objects.
#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    Null,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(String),
    /// A plain `2024-01-31` or `2024-01-31 10:00:00` scalar: Python builds a date or
    /// datetime from it, not a string. Kept as written.
    Timestamp(String),
    /// `!!binary`: Python builds bytes. Kept as written (base64).
    Binary(String),
    Seq(Vec<Node>),
    Map(Mapping),
    /// `!input name`, a placeholder only blueprints may contain.
    Input(String),
    /// A value from `!secret` or `!env_var`, redacted in Debug output.
    Secret(Secret),
}

impl Value {
    /// Python truthiness, which decides `value or {}` and `remove_falsy` in Home Assistant.
    pub fn is_truthy(&self) -> bool {
        match self {
            Value::Null => false,
            Value::Bool(b) => *b,
            Value::Int(i) => *i != 0,
            Value::Float(f) => *f != 0.0,
            Value::Str(s) | Value::Binary(s) => !s.is_empty(),
            Value::Timestamp(_) | Value::Input(_) => true,
            Value::Seq(items) => !items.is_empty(),
            Value::Map(map) => !map.is_empty(),
            Value::Secret(secret) => secret.expose().is_truthy(),
        }
    }

    /// The value behind a secret, for type checks that Home Assistant would make on it.
    pub fn exposed(&self) -> &Value {
        match self {
            Value::Secret(secret) => secret.expose().exposed(),
            other => other,
        }
    }

    pub fn as_map(&self) -> Option<&Mapping> {
        match self {
            Value::Map(map) => Some(map),
            _ => None,
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::Str(s) => Some(s),
            _ => None,
        }
    }

    /// What this kind of value is called, with its article, for messages.
    pub fn kind(&self) -> &'static str {
        match self {
            Value::Null => "null",
            Value::Bool(_) => "a boolean",
            Value::Int(_) => "an integer",
            Value::Float(_) => "a float",
            Value::Str(_) => "a string",
            Value::Timestamp(_) => "a timestamp",
            Value::Binary(_) => "a binary value",
            Value::Seq(_) => "a list",
            Value::Map(_) => "a mapping",
            Value::Input(_) => "an !input",
            Value::Secret(_) => "a secret",
        }
    }

    /// How Python's `str()` shows this value when it is a mapping key; secrets show
    /// their name only.
    pub fn key_text(&self) -> String {
        match self {
            Value::Null => "None".to_owned(),
            Value::Bool(true) => "True".to_owned(),
            Value::Bool(false) => "False".to_owned(),
            Value::Int(i) => i.to_string(),
            Value::Float(f) => python_float_text(*f),
            Value::Str(s) | Value::Timestamp(s) | Value::Binary(s) => s.clone(),
            Value::Seq(_) => "[...]".to_owned(),
            Value::Map(_) => "{...}".to_owned(),
            Value::Input(name) => format!("!input {name}"),
            Value::Secret(secret) => secret.to_string(),
        }
    }

    /// The identity of this value as a dict key, or None when Python cannot hash it.
    pub(crate) fn key_id(&self) -> Option<KeyId> {
        self.key_ref().map(KeyRef::to_owned)
    }

    /// `key_id` without copying the text: for comparisons.
    pub(crate) fn key_ref(&self) -> Option<KeyRef<'_>> {
        Some(match self {
            Value::Null => KeyRef::Null,
            Value::Bool(b) => KeyRef::Int(i64::from(*b)),
            Value::Int(i) => KeyRef::Int(*i),
            Value::Float(f) => {
                // Python: hash(1.0) == hash(1) and 1.0 == 1, so they are one key.
                if f.fract() == 0.0 && *f >= i64::MIN as f64 && *f < i64::MAX as f64 {
                    KeyRef::Int(*f as i64)
                } else {
                    KeyRef::Float(f.to_bits())
                }
            }
            Value::Str(s) => KeyRef::Str(s),
            Value::Timestamp(s) => KeyRef::Timestamp(s),
            Value::Binary(s) => KeyRef::Binary(s),
            Value::Input(name) => KeyRef::Input(name),
            Value::Secret(secret) => return secret.expose().key_ref(),
            Value::Seq(_) | Value::Map(_) => return None,
        })
    }
}

fn python_float_text(f: f64) -> String {
    if f.is_nan() {
        "nan".to_owned()
    } else if f.is_infinite() {
        if f > 0.0 { "inf" } else { "-inf" }.to_owned()
    } else if f.fract() == 0.0 && f.abs() < 1e16 {
        format!("{f:.1}")
    } else {
        f.to_string()
    }
}

/// Hashable identity of a mapping key, with Python's equalities.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(crate) enum KeyId {
    Null,
    Int(i64),
    Float(u64),
    Str(String),
    Timestamp(String),
    Binary(String),
    Input(String),
}

impl KeyId {
    pub(crate) fn as_ref(&self) -> KeyRef<'_> {
        match self {
            KeyId::Null => KeyRef::Null,
            KeyId::Int(i) => KeyRef::Int(*i),
            KeyId::Float(bits) => KeyRef::Float(*bits),
            KeyId::Str(s) => KeyRef::Str(s),
            KeyId::Timestamp(s) => KeyRef::Timestamp(s),
            KeyId::Binary(s) => KeyRef::Binary(s),
            KeyId::Input(s) => KeyRef::Input(s),
        }
    }
}

/// A [`KeyId`] borrowing its text.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) enum KeyRef<'a> {
    Null,
    Int(i64),
    Float(u64),
    Str(&'a str),
    Timestamp(&'a str),
    Binary(&'a str),
    Input(&'a str),
}

impl KeyRef<'_> {
    pub(crate) fn to_owned(self) -> KeyId {
        match self {
            KeyRef::Null => KeyId::Null,
            KeyRef::Int(i) => KeyId::Int(i),
            KeyRef::Float(bits) => KeyId::Float(bits),
            KeyRef::Str(s) => KeyId::Str(s.to_owned()),
            KeyRef::Timestamp(s) => KeyId::Timestamp(s.to_owned()),
            KeyRef::Binary(s) => KeyId::Binary(s.to_owned()),
            KeyRef::Input(s) => KeyId::Input(s.to_owned()),
        }
    }
}

/// From this many entries on, a mapping keeps a hash index; below it a scan is
/// cheaper than the index's allocations (most of a config's mappings have a
/// handful of keys).
const INDEXED_FROM: usize = 12;

/// An insertion-ordered mapping with Python dict semantics: assigning an existing key
/// keeps the key's first position and its first key node, and replaces the value.
#[derive(Clone, Debug, Default)]
pub struct Mapping {
    entries: Vec<(Node, Node)>,
    /// Once the mapping is large enough: the hash of each key (of its
    /// `KeyRef`, so lookups copy nothing) to its position.
    /// Boxed: most mappings have none, and every node is as large as the
    /// largest value.
    index: Option<Box<KeyIndex>>,
}

/// What `Mapping::set` did.
pub(crate) enum Set {
    Added,
    /// An equal key was there: its value is replaced, the first key stays (as
    /// in Python's dict), and the new key comes back.
    Replaced {
        position: usize,
        key: Node,
    },
    /// A key Python cannot hash, handed back; nothing was inserted.
    Unhashable(Node),
}

/// Key hashes to positions. Two keys with one hash keep the first in the
/// table; `collided` then sends lookups that miss to a scan.
#[derive(Clone, Debug, Default)]
struct KeyIndex {
    slots: HashMap<u64, usize>,
    collided: bool,
}

fn key_hash(key: KeyRef<'_>) -> u64 {
    use std::hash::{BuildHasher, BuildHasherDefault, DefaultHasher};
    BuildHasherDefault::<DefaultHasher>::default().hash_one(key)
}

impl PartialEq for Mapping {
    fn eq(&self, other: &Self) -> bool {
        self.entries.len() == other.entries.len()
            && self.entries.iter().all(|(key, value)| {
                key.value
                    .key_ref()
                    .and_then(|key| other.position(key))
                    .is_some_and(|j| *value == other.entries[j].1)
            })
    }
}

impl KeyIndex {
    fn add(&mut self, hash: u64, position: usize) {
        match self.slots.entry(hash) {
            std::collections::hash_map::Entry::Occupied(_) => self.collided = true,
            std::collections::hash_map::Entry::Vacant(slot) => {
                slot.insert(position);
            }
        }
    }
}

impl Mapping {
    pub fn new() -> Self {
        Mapping::default()
    }

    /// Room for `n` keys without growing.
    pub(crate) fn with_capacity(n: usize) -> Self {
        Mapping {
            entries: Vec::with_capacity(n),
            index: None,
        }
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn iter(&self) -> impl Iterator<Item = (&Node, &Node)> {
        self.entries.iter().map(|(k, v)| (k, v))
    }

    /// Where `key` is, if present.
    pub(crate) fn position(&self, key: KeyRef<'_>) -> Option<usize> {
        let scan = || {
            self.entries
                .iter()
                .position(|(k, _)| k.value.key_ref() == Some(key))
        };
        let Some(index) = &self.index else {
            return scan();
        };
        match index.slots.get(&key_hash(key)) {
            Some(&i) if self.entries[i].0.value.key_ref() == Some(key) => Some(i),
            _ if index.collided => scan(),
            _ => None,
        }
    }

    /// Builds the index from the entries.
    fn reindex(&mut self) {
        let mut index = Box::<KeyIndex>::default();
        for (i, (key, _)) in self.entries.iter().enumerate() {
            if let Some(key) = key.value.key_ref() {
                index.add(key_hash(key), i);
            }
        }
        self.index = Some(index);
    }

    /// The entry for a string key.
    pub fn get(&self, key: &str) -> Option<&Node> {
        self.position(KeyRef::Str(key)).map(|i| &self.entries[i].1)
    }

    pub(crate) fn get_entry(&self, id: &KeyId) -> Option<(&Node, &Node)> {
        self.position(id.as_ref())
            .map(|i| (&self.entries[i].0, &self.entries[i].1))
    }

    pub(crate) fn get_mut(&mut self, id: &KeyId) -> Option<&mut Node> {
        self.position(id.as_ref()).map(|i| &mut self.entries[i].1)
    }

    /// Python's `d[key] = value`. Returns the key node already present, if any.
    /// Keys Python cannot hash are not inserted; callers report them first.
    pub(crate) fn insert(&mut self, key: Node, value: Node) -> Option<Node> {
        match self.set(key, value) {
            Set::Replaced { position, .. } => Some(self.entries[position].0.clone()),
            Set::Added | Set::Unhashable(_) => None,
        }
    }

    /// `d[key] = value` with one lookup.
    pub(crate) fn set(&mut self, key: Node, value: Node) -> Set {
        let Some(id) = key.value.key_ref() else {
            return Set::Unhashable(key);
        };
        if let Some(position) = self.position(id) {
            self.entries[position].1 = value;
            return Set::Replaced { position, key };
        }
        let hash = self.index.as_ref().map(|_| key_hash(id));
        self.entries.push((key, value));
        match (&mut self.index, hash) {
            (Some(index), Some(hash)) => index.add(hash, self.entries.len() - 1),
            _ if self.entries.len() >= INDEXED_FROM => self.reindex(),
            _ => {}
        }
        Set::Added
    }

    /// Python's `d.pop(key)`.
    pub(crate) fn remove(&mut self, id: &KeyId) -> Option<(Node, Node)> {
        let i = self.position(id.as_ref())?;
        let entry = self.entries.remove(i);
        // Rare (a handful per load): rebuilding is simpler than fixing slots.
        if self.index.is_some() {
            self.reindex();
        }
        Some(entry)
    }

    pub(crate) fn values_mut(&mut self) -> impl Iterator<Item = &mut Node> {
        self.entries.iter_mut().map(|(_, v)| v)
    }
}

/// Where a redacted value came from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SecretSource {
    /// `!secret name`, from a `secrets.yaml`.
    SecretsFile(String),
    /// `!env_var NAME`, from the environment (or its default).
    EnvVar(String),
}

/// A value Home Assistant reads from `secrets.yaml` or the environment. Its Debug and
/// Display show where it came from, never the value.
/// One box for both halves keeps `Value` (and so every node) small.
#[derive(Clone, PartialEq)]
pub struct Secret(Box<(SecretSource, Value)>);

impl Secret {
    pub fn new(source: SecretSource, value: Value) -> Self {
        Secret(Box::new((source, value)))
    }

    pub fn source(&self) -> &SecretSource {
        &self.0.0
    }

    /// The secret value itself; keep it out of logs.
    pub fn expose(&self) -> &Value {
        &self.0.1
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.source() {
            SecretSource::SecretsFile(name) => write!(f, "!secret {name}"),
            SecretSource::EnvVar(name) => write!(f, "!env_var {name}"),
        }
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Secret({self})")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nodes_stay_small() {
        // A large config holds a few hundred thousand of these: a new variant
        // that grows `Value` costs memory on every node, so box it instead.
        assert_eq!(size_of::<Value>(), 32);
        assert_eq!(size_of::<Node>(), 56);
    }

    fn node(value: Value) -> Node {
        Node::new(
            value,
            Origin {
                file: Arc::from(Path::new("configuration.yaml")),
                line: 1,
                column: 1,
            },
        )
    }

    fn string(s: &str) -> Node {
        node(Value::Str(s.to_owned()))
    }

    /// Python dict semantics whether the mapping scans (small) or indexes (large).
    #[test]
    fn keys_follow_python_below_and_above_the_index_size() {
        for size in [3, INDEXED_FROM + 5] {
            let mut map = Mapping::new();
            for i in 0..size {
                assert!(
                    map.insert(string(&format!("k{i}")), node(Value::Int(i as i64)))
                        .is_none()
                );
            }
            // 1, 1.0 and true are one key; the first key node stays.
            assert!(map.insert(node(Value::Int(1)), string("int")).is_none());
            let first = map.insert(node(Value::Float(1.0)), string("float"));
            assert_eq!(first.map(|k| k.value), Some(Value::Int(1)));
            map.insert(node(Value::Bool(true)), string("bool"));
            assert_eq!(map.len(), size + 1);
            assert_eq!(
                map.get_entry(&KeyId::Int(1)).map(|(_, v)| v.value.clone()),
                Some(Value::Str("bool".to_owned()))
            );
            // A key's position survives re-assignment; removal shifts the rest.
            map.insert(string("k0"), node(Value::Null));
            assert_eq!(
                map.iter().next().map(|(k, _)| k.value.clone()),
                Some(Value::Str("k0".to_owned()))
            );
            let removed = map
                .remove(&KeyId::Str("k1".to_owned()))
                .map(|(k, _)| k.value);
            assert_eq!(removed, Some(Value::Str("k1".to_owned())));
            assert_eq!(map.get("k2").map(|v| v.value.clone()), Some(Value::Int(2)));
            assert!(map.get("k1").is_none());
            assert_eq!(map.len(), size);
        }
    }

    #[test]
    fn equality_ignores_order_and_index() {
        let mut forward = Mapping::new();
        let mut backward = Mapping::new();
        let n = INDEXED_FROM + 3;
        for i in 0..n {
            forward.insert(string(&format!("k{i}")), node(Value::Int(i as i64)));
            let j = n - 1 - i;
            backward.insert(string(&format!("k{j}")), node(Value::Int(j as i64)));
        }
        assert_eq!(forward, backward);
        let mut small = Mapping::new();
        small.insert(string("k0"), node(Value::Int(0)));
        assert_ne!(forward, small);
        backward.insert(string("k0"), node(Value::Int(99)));
        assert_ne!(forward, backward);
    }
}

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
            Value::Secret(secret) => secret.value.is_truthy(),
        }
    }

    /// The value behind a secret, for type checks that Home Assistant would make on it.
    pub fn exposed(&self) -> &Value {
        match self {
            Value::Secret(secret) => secret.value.exposed(),
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
        Some(match self {
            Value::Null => KeyId::Null,
            Value::Bool(b) => KeyId::Int(i64::from(*b)),
            Value::Int(i) => KeyId::Int(*i),
            Value::Float(f) => {
                // Python: hash(1.0) == hash(1) and 1.0 == 1, so they are one key.
                if f.fract() == 0.0 && *f >= i64::MIN as f64 && *f < i64::MAX as f64 {
                    KeyId::Int(*f as i64)
                } else {
                    KeyId::Float(f.to_bits())
                }
            }
            Value::Str(s) => KeyId::Str(s.clone()),
            Value::Timestamp(s) => KeyId::Timestamp(s.clone()),
            Value::Binary(s) => KeyId::Binary(s.clone()),
            Value::Input(name) => KeyId::Input(name.clone()),
            Value::Secret(secret) => return secret.value.key_id(),
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

/// An insertion-ordered mapping with Python dict semantics: assigning an existing key
/// keeps the key's first position and its first key node, and replaces the value.
#[derive(Clone, Debug, Default)]
pub struct Mapping {
    entries: Vec<(Node, Node)>,
    index: HashMap<KeyId, usize>,
}

impl PartialEq for Mapping {
    fn eq(&self, other: &Self) -> bool {
        self.entries.len() == other.entries.len()
            && self.index.iter().all(|(id, &i)| {
                other
                    .index
                    .get(id)
                    .is_some_and(|&j| self.entries[i].1 == other.entries[j].1)
            })
    }
}

impl Mapping {
    pub fn new() -> Self {
        Mapping::default()
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

    /// The entry for a string key.
    pub fn get(&self, key: &str) -> Option<&Node> {
        self.get_entry(&KeyId::Str(key.to_owned())).map(|(_, v)| v)
    }

    pub(crate) fn get_entry(&self, id: &KeyId) -> Option<(&Node, &Node)> {
        self.index
            .get(id)
            .map(|&i| (&self.entries[i].0, &self.entries[i].1))
    }

    pub(crate) fn get_mut(&mut self, id: &KeyId) -> Option<&mut Node> {
        self.index.get(id).map(|&i| &mut self.entries[i].1)
    }

    /// Python's `d[key] = value`. Returns the key node already present, if any.
    /// Keys Python cannot hash are not inserted; callers report them first.
    pub(crate) fn insert(&mut self, key: Node, value: Node) -> Option<Node> {
        let id = key.value.key_id()?;
        match self.index.get(&id) {
            Some(&i) => {
                self.entries[i].1 = value;
                Some(self.entries[i].0.clone())
            }
            None => {
                self.index.insert(id, self.entries.len());
                self.entries.push((key, value));
                None
            }
        }
    }

    /// Python's `d.pop(key)`.
    pub(crate) fn remove(&mut self, id: &KeyId) -> Option<(Node, Node)> {
        let i = self.index.remove(id)?;
        let entry = self.entries.remove(i);
        for slot in self.index.values_mut() {
            if *slot > i {
                *slot -= 1;
            }
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
#[derive(Clone, PartialEq)]
pub struct Secret {
    pub source: SecretSource,
    value: Box<Value>,
}

impl Secret {
    pub fn new(source: SecretSource, value: Value) -> Self {
        Secret {
            source,
            value: Box::new(value),
        }
    }

    /// The secret value itself; keep it out of logs.
    pub fn expose(&self) -> &Value {
        &self.value
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.source {
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

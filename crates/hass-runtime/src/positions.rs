//! Where each key of a YAML file is, so errors of the checks made after
//! parsing (a component's `prepare`, hass-manifests' `Values::check`) point
//! at a line and column like parse errors do.
//!
//! The text is read a second time into a map from key path
//! (`serial_bridge.devices[0].name`, as the checks name keys) to the 1-based
//! line and column of that key. A sequence item's position is that of its
//! first key. Only called when a check failed, so the second read costs
//! nothing on the good path.

use std::collections::BTreeMap;
use std::fmt;

use serde::Deserializer;
use serde::de::{DeserializeSeed, MapAccess, SeqAccess, Visitor};
use serde_saphyr::Spanned;

/// 1-based (line, column) by key path.
#[derive(Debug, Default)]
pub struct KeyPositions(BTreeMap<String, (u64, u64)>);

impl KeyPositions {
    /// Reads `text`; YAML that does not parse gives no positions.
    pub fn of(text: &str) -> Self {
        let mut positions = Self::default();
        let _ = serde_saphyr::with_deserializer_from_str(text, |de| {
            Collect {
                path: String::new(),
                out: &mut positions.0,
            }
            .deserialize(de)
        });
        positions
    }

    /// The position of `key`, or of its nearest written ancestor: a key that
    /// is absent (left to its default) is reported where its parent is.
    pub fn find(&self, key: &str) -> Option<(u64, u64)> {
        let mut key = key;
        loop {
            if let Some(position) = self.0.get(key) {
                return Some(*position);
            }
            let parent = key.rfind(['.', '[']).map(|i| &key[..i])?;
            key = parent;
        }
    }
}

/// Records the keys under `path`.
struct Collect<'a> {
    path: String,
    out: &'a mut BTreeMap<String, (u64, u64)>,
}

impl<'de> DeserializeSeed<'de> for Collect<'_> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, de: D) -> Result<(), D::Error> {
        de.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Collect<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any YAML value")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let mut first = true;
        while let Some(key) = map.next_key::<Spanned<String>>()? {
            let position = (key.referenced.line(), key.referenced.column());
            if first && !self.path.is_empty() {
                self.out.entry(self.path.clone()).or_insert(position);
            }
            first = false;
            let path = if self.path.is_empty() {
                key.value
            } else {
                format!("{}.{}", self.path, key.value)
            };
            self.out.insert(path.clone(), position);
            map.next_value_seed(Collect {
                path,
                out: &mut *self.out,
            })?;
        }
        Ok(())
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        let mut index = 0;
        while seq
            .next_element_seed(Collect {
                path: format!("{}[{index}]", self.path),
                out: &mut *self.out,
            })?
            .is_some()
        {
            index += 1;
        }
        Ok(())
    }

    fn visit_some<D: Deserializer<'de>>(self, de: D) -> Result<(), D::Error> {
        de.deserialize_any(self)
    }

    // Scalars hold no keys.
    fn visit_bool<E>(self, _: bool) -> Result<(), E> {
        Ok(())
    }
    fn visit_i64<E>(self, _: i64) -> Result<(), E> {
        Ok(())
    }
    fn visit_i128<E>(self, _: i128) -> Result<(), E> {
        Ok(())
    }
    fn visit_u64<E>(self, _: u64) -> Result<(), E> {
        Ok(())
    }
    fn visit_u128<E>(self, _: u128) -> Result<(), E> {
        Ok(())
    }
    fn visit_f64<E>(self, _: f64) -> Result<(), E> {
        Ok(())
    }
    fn visit_str<E>(self, _: &str) -> Result<(), E> {
        Ok(())
    }
    fn visit_bytes<E>(self, _: &[u8]) -> Result<(), E> {
        Ok(())
    }
    fn visit_none<E>(self) -> Result<(), E> {
        Ok(())
    }
    fn visit_unit<E>(self) -> Result<(), E> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_items_and_absent_keys() {
        let text = "name: ha\nserial_bridge:\n  enabled: true\n  devices:\n    - name: a\n      node: n1\n    - { name: b, node: \"\" }\n";
        let p = KeyPositions::of(text);
        assert_eq!(p.find("name"), Some((1, 1)));
        assert_eq!(p.find("serial_bridge.devices"), Some((4, 3)));
        assert_eq!(p.find("serial_bridge.devices[0].node"), Some((6, 7)));
        assert_eq!(p.find("serial_bridge.devices[1].node"), Some((7, 18)));
        // Absent: the item, which is where its first key is.
        assert_eq!(p.find("serial_bridge.devices[1].port"), Some((7, 9)));
        assert_eq!(p.find("postgres.external.host"), None);
    }
}

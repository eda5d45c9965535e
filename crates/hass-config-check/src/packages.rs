//! Packages (`homeassistant: packages:`), merged into the top-level config the way
//! `merge_packages_config` in `homeassistant/config.py` does it.
//!
//! Whether an integration's package config is appended to a list or merged into a
//! mapping depends on the integration's schema. `package_merge_modes.txt` records the
//! answer for every integration Home Assistant ships; for others (custom integrations)
//! we follow the shape of the config, which is what their schema must accept anyway.

use std::collections::HashMap;
use std::sync::OnceLock;

use crate::loader::Loader;
use crate::value::{Mapping, Node, Origin, Value};

const CORE: &str = "homeassistant";

#[derive(Clone, Copy, Debug, PartialEq)]
enum MergeMode {
    List,
    Dict,
}

fn known_merge_modes() -> &'static HashMap<&'static str, MergeMode> {
    static MODES: OnceLock<HashMap<&'static str, MergeMode>> = OnceLock::new();
    MODES.get_or_init(|| {
        let mut modes = HashMap::new();
        let mut mode = MergeMode::Dict;
        for line in include_str!("package_merge_modes.txt").lines() {
            match line.trim() {
                "" => {}
                l if l.starts_with('#') => {}
                "list:" => mode = MergeMode::List,
                "dict:" => mode = MergeMode::Dict,
                l => modes.extend(l.split_whitespace().map(|domain| (domain, mode))),
            }
        }
        modes
    })
}

/// Merges the packages under `homeassistant: packages:` into `config`, reporting
/// every problem Home Assistant would log while doing so.
pub(crate) fn merge_packages(config: &mut Mapping, loader: &mut Loader) {
    let Some(packages) = config
        .get(CORE)
        .and_then(|core| core.value.as_map())
        .and_then(|core| core.get("packages"))
        .cloned()
    else {
        return;
    };
    // PACKAGES_CONFIG_SCHEMA: a mapping of names to mappings or lists; otherwise no
    // package at all is merged.
    let Value::Map(packages) = &packages.value else {
        loader.error_at(
            &packages.origin,
            format!(
                "Invalid package configuration 'packages': expected a dictionary for dictionary value 'packages', got {}",
                packages.value.kind()
            ),
        );
        return;
    };
    let mut valid = true;
    for (name, package) in packages.iter() {
        if matches!(name.value, Value::Null) {
            loader.error_at(
                &name.origin,
                "Invalid package configuration 'packages': a package name cannot be null"
                    .to_owned(),
            );
            valid = false;
        } else if !matches!(package.value, Value::Map(_) | Value::Seq(_)) {
            loader.error_at(
                &package.origin,
                // Voluptuous' words, as Home Assistant prints them, but for
                // the value: it may be any file's content (an `!include` of a
                // token), so only its kind is named.
                format!(
                    "Invalid package configuration 'packages': expected dict for dictionary value 'packages->{}', got {}",
                    name.value.key_text(),
                    match package.value {
                        Value::Null => "None",
                        ref other => other.kind(),
                    }
                ),
            );
            valid = false;
        }
    }
    if !valid {
        return;
    }
    for (name, package) in packages.iter() {
        merge_package(config, &name.value.key_text(), name, package, loader);
    }
}

fn merge_package(
    config: &mut Mapping,
    name: &str,
    name_node: &Node,
    package: &Node,
    loader: &mut Loader,
) {
    let fail = |loader: &mut Loader, origin: &Origin, message: String| {
        loader.error_at(
            origin,
            format!("Setup of package '{name}' failed: {message}"),
        );
    };
    // _validate_package_definition: a slug name, and a mapping of integrations to a
    // mapping, a list or nothing.
    let slug = slugify(name);
    if slug != name {
        fail(
            loader,
            &name_node.origin,
            format!(
                "Invalid package definition '{name}': invalid slug {name} (try {slug}). Package will not be initialized"
            ),
        );
        return;
    }
    let Value::Map(package) = &package.value else {
        fail(
            loader,
            &package.origin,
            format!(
                "Invalid package definition '{name}': expected a dictionary. Package will not be initialized"
            ),
        );
        return;
    };
    for (component, component_conf) in package.iter() {
        let bad = match component_conf.value {
            Value::Map(_) | Value::Seq(_) | Value::Null => None,
            _ => Some(&component_conf.origin),
        };
        let bad = bad.or(matches!(component.value, Value::Null).then_some(&component.origin));
        if let Some(origin) = bad {
            fail(
                loader,
                origin,
                format!(
                    "Invalid package definition '{name}': expected dict for dictionary value @ data['{}']. Package will not be initialized",
                    component.value.key_text(),
                ),
            );
            return;
        }
    }

    for (component, component_conf) in package.iter() {
        let key_text = component.value.key_text();
        if key_text == CORE && matches!(component.value, Value::Str(_)) {
            continue;
        }
        let Some(domain) = domain_key(&component.value) else {
            fail(
                loader,
                &component.origin,
                format!("Invalid domain '{key_text}'"),
            );
            continue;
        };
        let Some(id) = component.value.key_id() else {
            continue;
        };
        let existing = config.get_entry(&id).map(|(_, v)| v);
        let mode = match known_merge_modes().get(domain) {
            Some(mode) => *mode,
            // Unknown integration: a list in either place can only be a list schema.
            None if matches!(component_conf.value, Value::Seq(_))
                || existing.is_some_and(|e| matches!(e.value, Value::Seq(_))) =>
            {
                MergeMode::List
            }
            None => MergeMode::Dict,
        };
        if mode == MergeMode::List {
            // Moved out, not cloned: fifty packages adding to one list would
            // otherwise copy the growing list fifty times.
            let existing = config.get_mut(&id).map(take_node);
            append_list(config, component, existing, component_conf);
            continue;
        }
        // Only its kind: a clone here copied each domain's growing mapping once
        // per package.
        let existing_is = existing.map(|e| match e.value {
            Value::Null => None,
            Value::Map(_) => Some(true),
            _ => Some(false),
        });
        let package_map = match &component_conf.value {
            Value::Map(map) => map.clone(),
            Value::Null => Mapping::new(),
            _ => {
                fail(
                    loader,
                    &component.origin,
                    format!("integration '{key_text}' cannot be merged, expected a dict"),
                );
                continue;
            }
        };
        match existing_is {
            // Absent or null: an empty mapping to merge into.
            None | Some(None) => {
                let empty = Node::new(Value::Map(Mapping::new()), component_conf.origin.clone());
                config.insert(component.clone(), empty);
            }
            Some(Some(true)) => {}
            Some(Some(false)) => {
                fail(
                    loader,
                    &component.origin,
                    format!(
                        "integration '{key_text}' cannot be merged, dict expected in main config"
                    ),
                );
                continue;
            }
        }
        let mut conflicts = Vec::new();
        if let Some(Node {
            value: Value::Map(target),
            ..
        }) = config.get_mut(&id)
        {
            recursive_merge(target, &package_map, &mut conflicts);
        }
        for key in conflicts {
            fail(
                loader,
                &key.origin,
                format!(
                    "integration '{key_text}' has duplicate key '{}'",
                    key.value.key_text()
                ),
            );
        }
    }
}

/// `_recursive_merge`. A scalar that is already set is a conflict, and (as in Home
/// Assistant) the rest of that mapping is not merged. Home Assistant only reports the
/// conflict when no later sibling mapping merges cleanly; we report every one, since
/// the package's value is dropped either way.
fn recursive_merge(target: &mut Mapping, package: &Mapping, conflicts: &mut Vec<Node>) {
    for (key, value) in package.iter() {
        let Some(id) = key.value.key_id() else {
            continue;
        };
        match &value.value {
            Value::Map(inner) => {
                if inner.is_empty() {
                    continue;
                }
                if target.get_entry(&id).is_none() {
                    target.insert(
                        key.clone(),
                        Node::new(Value::Map(Mapping::new()), value.origin.clone()),
                    );
                }
                match target.get_mut(&id) {
                    Some(Node {
                        value: Value::Map(nested),
                        ..
                    }) => recursive_merge(nested, inner, conflicts),
                    // Home Assistant fails outright here (it calls .get on a non-dict).
                    Some(_) => conflicts.push(key.clone()),
                    None => {}
                }
            }
            Value::Seq(_) => {
                let existing = target.get_mut(&id).map(take_node);
                append_list(target, key, existing, value);
            }
            _ => {
                if target
                    .get_entry(&id)
                    .is_some_and(|(_, v)| !matches!(v.value, Value::Null))
                {
                    conflicts.push(key.clone());
                    return;
                }
                target.insert(key.clone(), value.clone());
            }
        }
    }
}

/// The value of a mapping entry, moved out; a null stays in its place (the
/// entry keeps its position for the insert that follows).
fn take_node(slot: &mut Node) -> Node {
    let null = Node::new(Value::Null, slot.origin.clone());
    std::mem::replace(slot, null)
}

/// `target[key] = ensure_list(existing) + ensure_list(added)`, falsy items
/// dropped, at the existing entry's origin if there was one.
fn append_list(target: &mut Mapping, key: &Node, existing: Option<Node>, added: &Node) {
    let origin = existing
        .as_ref()
        .map_or_else(|| added.origin.clone(), |e| e.origin.clone());
    let mut items = ensure_list(existing);
    items.extend(ensure_list(Some(added.clone())));
    items.retain(|item| item.value.is_truthy());
    target.insert(key.clone(), Node::new(Value::Seq(items), origin));
}

/// `cv.ensure_list`: nothing is an empty list, a list is itself, anything else a
/// one-item list.
fn ensure_list(node: Option<Node>) -> Vec<Node> {
    match node {
        None
        | Some(Node {
            value: Value::Null, ..
        }) => Vec::new(),
        Some(Node {
            value: Value::Seq(items),
            ..
        }) => items,
        Some(other) => vec![other],
    }
}

/// `cv.domain_key`: a string, optionally followed by spaces and a label; returns the
/// domain part.
pub(crate) fn domain_key(key: &Value) -> Option<&str> {
    let Value::Str(key) = key else {
        return None;
    };
    let domain = match key.split_once(' ') {
        Some((domain, label)) if !label.trim_matches(' ').is_empty() => domain,
        _ => key.as_str(),
    };
    (!domain.is_empty() && domain.trim_matches(' ') == domain).then_some(domain)
}

/// Home Assistant's `slugify` for the ASCII names packages use: lower case, runs of
/// anything else than letters and digits become one `_`, none at either end.
fn slugify(text: &str) -> String {
    let mut slug = String::new();
    let mut pending_separator = false;
    for c in text.chars().flat_map(char::to_lowercase) {
        if c.is_ascii_alphanumeric() {
            if pending_separator && !slug.is_empty() {
                slug.push('_');
            }
            pending_separator = false;
            slug.push(c);
        } else {
            pending_separator = true;
        }
    }
    if slug.is_empty() {
        "unknown".to_owned()
    } else {
        slug
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn domain_keys() {
        assert_eq!(domain_key(&Value::Str("hue".into())), Some("hue"));
        assert_eq!(domain_key(&Value::Str("hue 1".into())), Some("hue"));
        assert_eq!(domain_key(&Value::Str("hue  1".into())), Some("hue"));
        assert_eq!(domain_key(&Value::Str("hue ".into())), None);
        assert_eq!(domain_key(&Value::Bool(true)), None);
    }

    #[test]
    fn slugs() {
        assert_eq!(slugify("lights_kitchen"), "lights_kitchen");
        assert_eq!(slugify("Lights Kitchen"), "lights_kitchen");
        assert_eq!(slugify("a__b"), "a_b");
        assert_eq!(slugify("_a"), "a");
    }

    #[test]
    fn merge_modes_table_is_read() {
        assert_eq!(known_merge_modes().get("sensor"), Some(&MergeMode::List));
        assert_eq!(
            known_merge_modes().get("automation"),
            Some(&MergeMode::List)
        );
        assert_eq!(
            known_merge_modes().get("input_boolean"),
            Some(&MergeMode::Dict)
        );
        assert_eq!(known_merge_modes().get("script"), Some(&MergeMode::Dict));
    }

    /// The table is today's Home Assistant's: between 2024.3 and 2026.11
    /// `scrape` became a list to concatenate and `folder_watcher` a mapping
    /// to merge (config entries only), and `amcrest` left the list.
    #[test]
    fn merge_modes_are_home_assistant_2026_11s() {
        assert!(
            include_str!("package_merge_modes.txt").contains("Home Assistant 2026.11.0:"),
            "regenerate with tools/package_merge_modes.py"
        );
        assert_eq!(known_merge_modes().get("scrape"), Some(&MergeMode::List));
        assert_eq!(
            known_merge_modes().get("folder_watcher"),
            Some(&MergeMode::Dict)
        );
        assert_ne!(known_merge_modes().get("amcrest"), Some(&MergeMode::List));
    }
}

//! The YAML writer (serde-saphyr's serializer) and the commented defaults file.
//!
//! serde-saphyr quotes every string a YAML 1.1 reader would take for
//! something else (`on`, `yes`, `no`, `12:30`, `0755`, `1e3`, `~`), which
//! Kubernetes' own YAML reader is; the tests check that PyYAML reads such
//! strings back as strings.

use serde::Serialize;
use serde_json::Value;

pub type YamlError = serde_saphyr::ser::Error;

/// One YAML document, ending in a newline.
pub fn to_yaml<T: Serialize>(value: &T) -> Result<String, YamlError> {
    let mut text = serde_saphyr::to_string(value)?;
    if !text.ends_with('\n') {
        text.push('\n');
    }
    Ok(text)
}

/// The defaults as YAML with each key's description (from the JSON Schema,
/// i.e. the doc comments) above it. Keys without a default are listed
/// commented out.
/// `preamble` (comment lines) follows the header.
pub fn commented(defaults: &Value, schema: &Value, preamble: &str) -> Result<String, YamlError> {
    let mut out = String::from(
        "# Default values of hass-manifests; every key is optional.\n\
         # `hass-manifests schema` prints the JSON Schema for editor completion.\n",
    );
    out.push_str(preamble);
    write_object(&mut out, defaults, schema, schema, 0)?;
    Ok(out)
}

/// Follows `$ref` (to `#/$defs/...`) and `allOf: [{$ref}]` wrappers.
fn resolve<'a>(root: &'a Value, node: &'a Value) -> &'a Value {
    if let Some(reference) = node.get("$ref").and_then(Value::as_str) {
        let name = reference.trim_start_matches("#/$defs/");
        if let Some(target) = root.get("$defs").and_then(|d| d.get(name)) {
            return resolve(root, target);
        }
    }
    if let Some(first) = node
        .get("allOf")
        .and_then(Value::as_array)
        .and_then(|a| a.first())
    {
        return resolve(root, first);
    }
    node
}

fn description(root: &Value, node: &Value) -> Option<String> {
    node.get("description")
        .or_else(|| resolve(root, node).get("description"))
        .and_then(Value::as_str)
        .map(str::to_owned)
}

fn write_comment(out: &mut String, text: &str, indent: usize) {
    for line in text.lines() {
        out.push_str(&" ".repeat(indent));
        let line = line.trim_end();
        // No trailing space on a comment's blank line.
        out.push_str(if line.is_empty() { "#" } else { "# " });
        out.push_str(line);
        out.push('\n');
    }
}

fn scalar(value: &Value) -> Result<String, YamlError> {
    Ok(match value {
        Value::Object(map) if map.is_empty() => "{}".to_owned(),
        Value::Array(list) if list.is_empty() => "[]".to_owned(),
        _ => serde_saphyr::to_string(value)?.trim_end().to_owned(),
    })
}

fn write_object(
    out: &mut String,
    value: &Value,
    schema: &Value,
    root: &Value,
    indent: usize,
) -> Result<(), YamlError> {
    let schema = resolve(root, schema);
    let properties = schema.get("properties").and_then(Value::as_object);
    let Some(map) = value.as_object() else {
        return Ok(());
    };
    let pad = " ".repeat(indent);
    // Schema order is the struct's field order; fall back to the value's keys.
    let keys: Vec<String> = match properties {
        Some(p) => p.keys().cloned().collect(),
        None => map.keys().cloned().collect(),
    };
    for key in keys {
        let prop = properties.and_then(|p| p.get(&key)).unwrap_or(&Value::Null);
        if let Some(text) = description(root, prop) {
            write_comment(out, &text, indent);
        }
        match map.get(&key) {
            None => out.push_str(&format!("{pad}# {key}:\n")),
            Some(v @ Value::Object(m))
                if !m.is_empty() && resolve(root, prop).get("properties").is_some() =>
            {
                out.push_str(&format!("{pad}{key}:\n"));
                write_object(out, v, prop, root, indent + 2)?;
            }
            Some(v @ Value::Object(m)) if !m.is_empty() => {
                // A free-form map (labels): plain YAML.
                out.push_str(&format!("{pad}{key}:\n"));
                for line in to_yaml(v)?.lines() {
                    out.push_str(&format!("{pad}  {line}\n"));
                }
            }
            Some(v @ Value::Array(list)) if !list.is_empty() => {
                out.push_str(&format!("{pad}{key}:\n"));
                for line in to_yaml(v)?.lines() {
                    out.push_str(&format!("{pad}  {line}\n"));
                }
            }
            Some(v) => out.push_str(&format!("{pad}{key}: {}\n", scalar(v)?)),
        }
    }
    Ok(())
}

//! Parses an OpenMetrics exposition with the reference parser from the Python
//! `prometheus_client` package, so tests check `/metrics` as a scraper reads
//! it instead of matching strings; [`sum`] reads one value quickly, for the
//! tests that poll a metric until it changes.

use std::collections::BTreeMap;
use std::io::Write;
use std::process::{Command, Stdio};

/// One metric family as the parser saw it.
#[derive(Debug, Clone, PartialEq)]
pub struct Family {
    pub name: String,
    pub kind: String,
    pub help: String,
    pub samples: Vec<Sample>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

const PARSER: &str = r#"
import json, sys
from prometheus_client.openmetrics.parser import text_string_to_metric_families
out = []
for fam in text_string_to_metric_families(sys.stdin.read()):
    out.append({
        "name": fam.name, "type": fam.type, "help": fam.documentation,
        "samples": [{"name": s.name, "labels": s.labels, "value": s.value} for s in fam.samples],
    })
json.dump(out, sys.stdout)
"#;

/// Parses `text`; `Err` carries the parser's complaint (a malformed
/// exposition, a missing `# EOF`) or says how to install it.
pub fn parse(text: &str) -> Result<Vec<Family>, String> {
    let mut child = Command::new("python3")
        .args(["-c", PARSER])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot run python3: {e}"))?;
    child
        .stdin
        .take()
        .expect("stdin is piped")
        .write_all(text.as_bytes())
        .map_err(|e| format!("writing to the parser: {e}"))?;
    let output = child
        .wait_with_output()
        .map_err(|e| format!("waiting for the parser: {e}"))?;
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        if stderr.contains("No module named 'prometheus_client'") {
            return Err(
                "python3 lacks prometheus_client: run the README's test command \
                        (it pip-installs tests/requirements.txt)"
                    .to_owned(),
            );
        }
        return Err(format!(
            "OpenMetrics parser rejected the exposition:\n{stderr}"
        ));
    }
    let json: serde_json::Value =
        serde_json::from_slice(&output.stdout).map_err(|e| format!("parser output: {e}"))?;
    Ok(json
        .as_array()
        .map(|families| families.iter().map(family).collect())
        .unwrap_or_default())
}

fn family(v: &serde_json::Value) -> Family {
    let text = |key: &str| v[key].as_str().unwrap_or_default().to_owned();
    Family {
        name: text("name"),
        kind: text("type"),
        help: text("help"),
        samples: v["samples"]
            .as_array()
            .map(|samples| samples.iter().map(sample).collect())
            .unwrap_or_default(),
    }
}

fn sample(v: &serde_json::Value) -> Sample {
    Sample {
        name: v["name"].as_str().unwrap_or_default().to_owned(),
        labels: v["labels"]
            .as_object()
            .map(|labels| {
                labels
                    .iter()
                    .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_owned()))
                    .collect()
            })
            .unwrap_or_default(),
        value: v["value"].as_f64().unwrap_or(f64::NAN),
    }
}

/// The family named `name`, for assertions.
pub fn find<'a>(families: &'a [Family], name: &str) -> Option<&'a Family> {
    families.iter().find(|f| f.name == name)
}

/// The sum of the samples `name{labels…}` in exposition text (`labels` may
/// be a subset of a sample's); `None` when no sample matches. A line scan,
/// not a parse: for polling, after [`parse`] has checked the format.
pub fn sum(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let mut found = None;
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let Some((series, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let (series_name, series_labels) = match series.split_once('{') {
            Some((n, rest)) => (n, rest.trim_end_matches('}')),
            None => (series, ""),
        };
        if series_name != name {
            continue;
        }
        if labels.iter().all(|(k, v)| {
            series_labels
                .split(',')
                .any(|l| l == format!("{k}=\"{v}\""))
        }) {
            *found.get_or_insert(0.0) += value.parse::<f64>().unwrap_or(f64::NAN);
        }
    }
    found
}

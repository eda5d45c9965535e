//! The PrometheusRule's alerts: valid for `promtool check rules`, firing
//! (in `promtool test rules`) exactly when their summary says ("for 5
//! minutes"), and the same as the rules crates/hass-exporter/README.md
//! recommends. promtool is Debian's `prometheus` package (scripts/test
//! installs it); a missing one fails the test with that hint.

// Helpers outside #[test] fns panic on setup failures too (clippy.toml only
// exempts test fns).
#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::process::Command;

use serde_json::{Value, json};

fn repo() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../.."))
}

fn example(name: &str) -> (hass_manifests::Values, Vec<(String, Value)>) {
    let values =
        hass_manifests::values::load(&repo().join(format!("examples/{name}.values.yaml"))).unwrap();
    let docs = hass_manifests::render(&values)
        .unwrap()
        .iter()
        .map(|m| (m.kind.clone(), serde_saphyr::from_str(&m.yaml).unwrap()))
        .collect();
    (values, docs)
}

/// The rule groups of the example's PrometheusRule, as a Prometheus rule file.
fn rule_file(docs: &[(String, Value)]) -> Value {
    let (_, rule) = docs
        .iter()
        .find(|(kind, _)| kind == "PrometheusRule")
        .expect("no PrometheusRule");
    json!({ "groups": rule["spec"]["groups"] })
}

fn alerts(rules: &Value) -> Vec<Value> {
    rules["groups"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|g| g["rules"].as_array().unwrap().clone())
        .collect()
}

fn promtool(args: &[&str], dir: &Path) -> String {
    let out = Command::new("promtool")
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap_or_else(|e| {
            panic!("cannot run promtool ({e}); install Debian's `prometheus` package")
        });
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "promtool {args:?}:\n{text}");
    text
}

/// "… for 5 minutes" in the summary: when the alert says it fires.
fn stated_minutes(alert: &Value) -> Option<u32> {
    let summary = alert["annotations"]["summary"].as_str().unwrap();
    let (_, tail) = summary.rsplit_once(" for ")?;
    let (n, unit) = tail.split_once(' ')?;
    assert!(unit.starts_with("minute"), "{summary}");
    Some(n.parse().unwrap())
}

/// Input series that make every alert's condition true from time 0 on,
/// for an example's values (the volume alert watches the PostgreSQL claim
/// the StatefulSet really creates).
fn failing_everything(values: &hass_manifests::Values, docs: &[(String, Value)]) -> Vec<Value> {
    let series = |s: &str, v: &str| json!({ "series": s, "values": v });
    let mut input = vec![
        series(r#"hass_exporter_ha_core_state{state="RUNNING"}"#, "0x60"),
        series("hass_exporter_ha_auth_rejected", "1x60"),
        // Nothing written since time 0: the age grows a minute per minute.
        series("hass_exporter_recorder_last_state_age_seconds", "0+60x60"),
        series("hass_exporter_postgres_up", "0x60"),
        series("hass_exporter_postgres_connections", "95x60"),
        series("hass_exporter_postgres_max_connections", "100x60"),
        series("hass_exporter_broker_up", "0x60"),
        series(
            r#"hass_exporter_bridge_device_up{bridge="b",device="d"}"#,
            "0x60",
        ),
        series(r#"hass_exporter_bridge_up{bridge="b"}"#, "0x60"),
        // One retained message refused a minute, from the start.
        series("hass_broker_retained_refused_total", "0+1x60"),
    ];
    if let Some(bytes) = values
        .postgres
        .external
        .volume_size
        .as_deref()
        .and_then(hass_manifests::values::quantity_bytes)
    {
        input.push(series(
            "hass_exporter_postgres_database_size_bytes",
            &format!("{bytes}x60"),
        ));
    }
    for (kind, doc) in docs {
        if kind != "StatefulSet"
            || doc["metadata"]["labels"]["app.kubernetes.io/component"] != "postgres"
        {
            continue;
        }
        let sts = doc["metadata"]["name"].as_str().unwrap();
        for template in doc["spec"]["volumeClaimTemplates"].as_array().unwrap() {
            let claim = format!("{}-{sts}-0", template["metadata"]["name"].as_str().unwrap());
            let labels = format!(
                r#"{{namespace="{}",persistentvolumeclaim="{claim}"}}"#,
                values.namespace
            );
            input.push(series(
                &format!("kubelet_volume_stats_available_bytes{labels}"),
                "5x60",
            ));
            input.push(series(
                &format!("kubelet_volume_stats_capacity_bytes{labels}"),
                "100x60",
            ));
        }
    }
    input
}

#[test]
fn every_rendered_rule_passes_promtool_check() {
    let mut checked = 0;
    for name in ["minimal", "homelab", "everything"] {
        let (_, docs) = example(name);
        if !docs.iter().any(|(k, _)| k == "PrometheusRule") {
            continue;
        }
        let rules = rule_file(&docs);
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("rules.yaml"), rules.to_string()).unwrap();
        let text = promtool(&["check", "rules", "rules.yaml"], dir.path());
        let count = alerts(&rules).len();
        assert!(
            text.contains(&format!("SUCCESS: {count} rules found")),
            "{name}: {text}"
        );
        checked += count;
    }
    assert!(checked > 10, "{checked}");
}

#[test]
fn each_alert_fires_when_its_summary_says_and_not_a_minute_before() {
    let mut tested = Vec::new();
    for name in ["homelab", "everything"] {
        let (values, docs) = example(name);
        let rules = rule_file(&docs);
        let mut expr_tests = Vec::new();
        for alert in alerts(&rules) {
            let alert_name = alert["alert"].as_str().unwrap().to_owned();
            let firing =
                format!(r#"count(ALERTS{{alertname="{alert_name}",alertstate="firing"}})"#);
            // No time stated: it fires on the first evaluation.
            let minutes = stated_minutes(&alert).unwrap_or(0);
            expr_tests.push(json!({
                "expr": firing, "eval_time": format!("{minutes}m"),
                "exp_samples": [{ "labels": "{}", "value": 1 }],
            }));
            if minutes > 0 {
                expr_tests.push(json!({
                    "expr": firing, "eval_time": format!("{}m", minutes - 1),
                    "exp_samples": [],
                }));
            }
            tested.push(alert_name);
        }
        let test = json!({
            "rule_files": ["rules.yaml"],
            "evaluation_interval": "1m",
            "tests": [{
                "interval": "1m",
                "input_series": failing_everything(&values, &docs),
                "promql_expr_test": expr_tests,
            }],
        });
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("rules.yaml"), rules.to_string()).unwrap();
        std::fs::write(dir.path().join("test.yaml"), test.to_string()).unwrap();
        promtool(&["test", "rules", "test.yaml"], dir.path());
    }
    // Between them the two examples render every alert there is.
    for alert in [
        "HomeAssistantRecorderNotWriting",
        "RecorderDatabaseVolumeNearFull",
        "RecorderDatabaseNearFull",
        "SerialStickUnplugged",
        "MqttBrokerAtItsLimits",
    ] {
        assert!(
            tested.iter().any(|a| a == alert),
            "{alert} untested: {tested:?}"
        );
    }
}

/// The README shows the rules rendered for the homelab example.
#[test]
fn exporter_readme_recommends_the_rendered_rules() {
    let readme = std::fs::read_to_string(repo().join("crates/hass-exporter/README.md")).unwrap();
    let section = readme
        .split_once("## Recommended alert rules")
        .expect("README has no `## Recommended alert rules`")
        .1;
    let block = section
        .split_once("```yaml\n")
        .and_then(|(_, rest)| rest.split_once("```"))
        .expect("no ```yaml block in the rules section")
        .0;
    let documented: Value = serde_saphyr::from_str(block).unwrap();
    let (_, docs) = example("homelab");
    let rendered = rule_file(&docs);
    assert!(
        documented == rendered,
        "crates/hass-exporter/README.md's rules differ from the homelab render; replace them with:\n{}",
        hass_manifests::yaml::to_yaml(&rendered).unwrap()
    );
}

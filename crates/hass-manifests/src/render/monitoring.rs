//! ServiceMonitors or PodMonitors for every admin port, and a PrometheusRule
//! with the exporter's recommended alerts (crates/hass-exporter/README.md).

use std::collections::BTreeMap;

use super::Objects;
use super::home_assistant;
use super::serial_bridge;
use crate::crd::{
    Endpoint, PodMonitor, PodMonitorSpec, PrometheusRule, PrometheusRuleSpec, Rule, RuleGroup,
    SafeAuthorization, SecretKeySelector, ServiceMonitor, ServiceMonitorSpec,
};
use crate::meta::{SERVICE_ROLE, labels, object_meta, selector, selector_labels};
use crate::values::{PostgresMode, ScrapeVia, Values, quantity_bytes};

pub(crate) fn render(values: &Values, objects: &mut Objects) {
    let m = &values.monitoring;
    let bridges = !serial_bridge::node_groups(values).is_empty();
    match m.scrape {
        ScrapeVia::None => {}
        ScrapeVia::ServiceMonitor => {
            objects.push_custom(ServiceMonitor {
                metadata: meta(values, &values.name, home_assistant::COMPONENT),
                spec: ServiceMonitorSpec {
                    selector: selector(admin_selector(values, home_assistant::COMPONENT)),
                    endpoints: pod_endpoints(values),
                },
            });
            if bridges {
                objects.push_custom(ServiceMonitor {
                    metadata: meta(
                        values,
                        &format!("{}-serial-bridge", values.name),
                        serial_bridge::COMPONENT,
                    ),
                    spec: ServiceMonitorSpec {
                        selector: selector(admin_selector(values, serial_bridge::COMPONENT)),
                        endpoints: vec![endpoint(values, "admin", "/metrics")],
                    },
                });
            }
        }
        ScrapeVia::PodMonitor => {
            objects.push_custom(PodMonitor {
                metadata: meta(values, &values.name, home_assistant::COMPONENT),
                spec: PodMonitorSpec {
                    selector: selector(selector_labels(values, home_assistant::COMPONENT)),
                    pod_metrics_endpoints: pod_endpoints(values),
                },
            });
            if bridges {
                objects.push_custom(PodMonitor {
                    metadata: meta(
                        values,
                        &format!("{}-serial-bridge", values.name),
                        serial_bridge::COMPONENT,
                    ),
                    spec: PodMonitorSpec {
                        selector: selector(selector_labels(values, serial_bridge::COMPONENT)),
                        pod_metrics_endpoints: vec![endpoint(values, "admin", "/metrics")],
                    },
                });
            }
        }
    }
    if m.prometheus_rule {
        objects.push_custom(PrometheusRule {
            metadata: meta(values, &values.name, home_assistant::COMPONENT),
            spec: PrometheusRuleSpec {
                groups: vec![RuleGroup {
                    name: "hass-exporter".to_owned(),
                    rules: rules(values),
                }],
            },
        });
    }
}

fn meta(
    values: &Values,
    name: &str,
    component: &str,
) -> k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta {
    let mut l = labels(values, component, "hass-sidecars");
    l.extend(values.monitoring.labels.clone());
    object_meta(values, name, l)
}

fn admin_selector(values: &Values, component: &str) -> BTreeMap<String, String> {
    let mut l = selector_labels(values, component);
    l.insert(SERVICE_ROLE.to_owned(), "admin".to_owned());
    l
}

fn endpoint(values: &Values, port: &str, path: &str) -> Endpoint {
    Endpoint {
        port: port.to_owned(),
        path: path.to_owned(),
        interval: values.monitoring.interval.clone(),
        authorization: None,
    }
}

/// The sidecars' admin ports, and Home Assistant's `/api/prometheus` when
/// Prometheus has a token for it.
fn pod_endpoints(values: &Values) -> Vec<Endpoint> {
    let mut endpoints: Vec<Endpoint> = home_assistant::admin_ports(values)
        .into_iter()
        .map(|(port, _)| endpoint(values, port, "/metrics"))
        .collect();
    if let Some(token) = &values.monitoring.home_assistant_token_secret {
        endpoints.push(Endpoint {
            authorization: Some(SafeAuthorization {
                r#type: "Bearer".to_owned(),
                credentials: SecretKeySelector {
                    name: token.name.clone(),
                    key: token.key.clone(),
                },
            }),
            ..endpoint(values, "http", "/api/prometheus")
        });
    }
    endpoints
}

struct AlertSpec<'a> {
    alert: &'a str,
    expr: String,
    for_: Option<&'a str>,
    severity: &'a str,
    summary: &'a str,
}

fn rules(values: &Values) -> Vec<Rule> {
    let mut specs = Vec::new();
    if values.exporter.enabled && values.home_assistant.token_secret.is_some() {
        specs.push(AlertSpec {
            alert: "HomeAssistantNotRunning",
            expr: r#"hass_exporter_ha_core_state{state="RUNNING"} != 1"#.to_owned(),
            for_: Some("10m"),
            severity: "critical",
            summary: "Home Assistant has not been RUNNING for 10 minutes",
        });
        specs.push(AlertSpec {
            alert: "HomeAssistantTokenRejected",
            expr: "hass_exporter_ha_auth_rejected == 1".to_owned(),
            for_: None,
            severity: "warning",
            summary: "Home Assistant rejects the exporter's token; /api/ calls are paused",
        });
    }
    if values.postgres.mode != PostgresMode::Disabled {
        // The age already counts the silence: a `for:` would add to it.
        specs.push(AlertSpec {
            alert: "HomeAssistantRecorderNotWriting",
            expr: "hass_exporter_recorder_last_state_age_seconds >= 300".to_owned(),
            for_: None,
            severity: "warning",
            summary: "Home Assistant's recorder has written no state for 5 minutes",
        });
        specs.push(AlertSpec {
            alert: "HomeAssistantRecorderDatabaseDown",
            expr: "hass_exporter_postgres_up == 0".to_owned(),
            for_: Some("5m"),
            severity: "critical",
            summary: "The recorder database has not answered the exporter for 5 minutes",
        });
        specs.push(AlertSpec {
            alert: "RecorderDatabaseConnectionsNearLimit",
            expr:
                "hass_exporter_postgres_connections / hass_exporter_postgres_max_connections > 0.9"
                    .to_owned(),
            for_: Some("10m"),
            severity: "warning",
            summary: "PostgreSQL has been above 90% of max_connections for 10 minutes",
        });
    }
    if values.postgres.mode == PostgresMode::Internal {
        specs.push(AlertSpec {
            alert: "RecorderDatabaseVolumeNearFull",
            expr: format!(
                "kubelet_volume_stats_available_bytes{{namespace=\"{ns}\",persistentvolumeclaim=\"data-{name}-postgres-0\"}} / kubelet_volume_stats_capacity_bytes{{namespace=\"{ns}\",persistentvolumeclaim=\"data-{name}-postgres-0\"}} < 0.1",
                ns = values.namespace,
                name = values.name
            ),
            for_: Some("15m"),
            severity: "warning",
            summary: "The recorder database volume has had less than 10% free for 15 minutes",
        });
    }
    // kubelet cannot see an external server's volume: compare the
    // database's size with the volume size the user states.
    if let (PostgresMode::External, Some(bytes)) = (
        values.postgres.mode,
        values
            .postgres
            .external
            .volume_size
            .as_deref()
            .and_then(quantity_bytes),
    ) {
        specs.push(AlertSpec {
            alert: "RecorderDatabaseNearFull",
            expr: format!(
                "hass_exporter_postgres_database_size_bytes > {}",
                bytes / 10 * 9
            ),
            for_: Some("15m"),
            severity: "warning",
            summary: "The recorder database has filled over 90% of postgres.external.volume_size for 15 minutes",
        });
    }
    if values.broker.enabled && values.broker.exporter_password.is_some() {
        specs.push(AlertSpec {
            alert: "MqttBrokerRoundTripFailing",
            expr: "hass_exporter_broker_up == 0".to_owned(),
            for_: Some("2m"),
            severity: "critical",
            summary: "No MQTT publish through hass-broker has come back for 2 minutes",
        });
    }
    if values.broker.enabled {
        // Over its budgets the broker stays up and refuses what does not
        // fit: a discovery topic not kept is a device gone at Home
        // Assistant's next start, so someone should look.
        specs.push(AlertSpec {
            alert: "MqttBrokerAtItsLimits",
            expr: "increase(hass_broker_retained_refused_total[5m]) > 0 \
                   or increase(hass_broker_subscriptions_refused_total[5m]) > 0 \
                   or increase(hass_broker_auth_failures_total{reason=\"too_many_sessions\"}[5m]) > 0"
                .to_owned(),
            for_: None,
            severity: "warning",
            summary: "hass-broker has been refusing retained messages, subscriptions or \
                      persistent sessions over its limits (limits.retained_budget, \
                      subscription_budget, max_persistent_sessions_per_user) for 1 minute",
        });
    }
    if !serial_bridge::node_groups(values).is_empty() {
        specs.push(AlertSpec {
            alert: "SerialStickUnplugged",
            expr: "hass_exporter_bridge_device_up == 0".to_owned(),
            for_: Some("1m"),
            severity: "critical",
            summary: "A Zigbee/Z-Wave stick has been missing on its bridge for 1 minute",
        });
        specs.push(AlertSpec {
            alert: "SerialBridgeUnreachable",
            expr: "hass_exporter_bridge_up == 0".to_owned(),
            for_: Some("5m"),
            severity: "critical",
            summary: "A serial bridge's admin port has not answered the exporter for 5 minutes",
        });
    }
    specs
        .into_iter()
        .map(|s| Rule {
            alert: s.alert.to_owned(),
            expr: s.expr,
            for_: s.for_.map(str::to_owned),
            labels: BTreeMap::from([("severity".to_owned(), s.severity.to_owned())]),
            annotations: BTreeMap::from([("summary".to_owned(), s.summary.to_owned())]),
        })
        .collect()
}

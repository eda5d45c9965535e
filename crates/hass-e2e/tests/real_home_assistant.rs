//! The suite against a real Home Assistant (the release `scripts/ha-rootfs`
//! installs, 2026.11): each test is one flow a user relies on, with Home
//! Assistant's own behaviour on the other side, not a stand-in's idea of it.

// Tests unwrap: a failure is a test failure.
#![allow(clippy::unwrap_used)]

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::{Broker, MQTT_PASSWORD, MQTT_USER};
use hass_test_support::home_assistant::{HomeAssistant, HomeAssistantApi, Supervised};
use hass_test_support::{GitRemote, wait_for};
use serde_json::{Value, json};

const DISCOVERY_TOPIC: &str = "homeassistant/sensor/e2e_kitchen/temperature/config";
const DISCOVERY: &str = r#"{"name":"Kitchen temperature","unique_id":"e2e_kitchen_temp","state_topic":"zigbee2mqtt/kitchen","value_template":"{{ value_json.temperature }}","device_class":"temperature","unit_of_measurement":"°C","device":{"identifiers":["e2e_kitchen"],"name":"Kitchen sensor"}}"#;
const STATE_TOPIC: &str = "zigbee2mqtt/kitchen";

/// `mosquitto_pub` of a retained QoS 1 message.
fn publish_retained(broker: &Broker, topic: &str, payload: &str) {
    let status = Command::new("mosquitto_pub")
        .args(["-h", "127.0.0.1", "-p", &broker.mqtt.port().to_string()])
        .args(["-u", MQTT_USER, "-P", MQTT_PASSWORD, "-q", "1", "-r"])
        .args(["-t", topic, "-m", payload])
        .status()
        .expect("mosquitto_pub (scripts/test installs mosquitto-clients)");
    assert!(status.success());
}

/// The entity Home Assistant made for the kitchen sensor's discovery config.
fn kitchen_entity(ha: &HomeAssistant) -> Option<Value> {
    let (status, states) = ha.get("/api/states").ok()?;
    assert_eq!(status, 200, "{states}");
    states.as_array()?.iter().find_map(|s| {
        (s["attributes"]["friendly_name"] == "Kitchen sensor Kitchen temperature")
            .then(|| s.clone())
    })
}

fn wait_state(ha: &HomeAssistant, want: &str, what: &str) -> Value {
    wait_for(Duration::from_secs(60), || {
        kitchen_entity(ha).filter(|e| e["state"] == want)
    })
    .unwrap_or_else(|| {
        panic!(
            "{what}: the kitchen sensor never read {want} (now {:?}); Home Assistant's log:\n{}",
            kitchen_entity(ha),
            ha.log()
        )
    })
}

/// Home Assistant's MQTT integration, set up through its own config flow as a
/// user would, talks to hass-broker with a password-file user: a retained
/// discovery config makes an entity, a state message sets it, and a SIGKILL
/// of the broker loses neither; after the restart new states arrive again.
#[test]
fn mqtt_discovery_through_hass_broker_survives_a_broker_kill() {
    let mut broker = Broker::start();
    let started = Instant::now();
    let ha = HomeAssistant::start("homeassistant:\n  name: e2e\n").unwrap();
    eprintln!(
        "Home Assistant answered after {:?}; onboarded after {:?}",
        ha.started_in,
        started.elapsed()
    );

    ha.add_mqtt_broker("127.0.0.1", broker.mqtt.port(), MQTT_USER, MQTT_PASSWORD)
        .unwrap();

    publish_retained(&broker, DISCOVERY_TOPIC, DISCOVERY);
    publish_retained(&broker, STATE_TOPIC, r#"{"temperature":21.5}"#);
    let entity = wait_state(&ha, "21.5", "after discovery");
    assert_eq!(entity["attributes"]["unit_of_measurement"], "°C");

    // An OOM kill of the broker: nothing flushed, nothing said.
    broker.sidecar.kill9();
    broker.sidecar.restart();
    // Home Assistant reconnects on its own and resubscribes; the retained
    // discovery config and state it finds are the ones it had.
    publish_retained(&broker, STATE_TOPIC, r#"{"temperature":22.0}"#);
    let after = wait_state(&ha, "22.0", "after the broker's restart");
    assert_eq!(after["entity_id"], entity["entity_id"], "the same entity");
    report_usage(&ha, &[&broker.sidecar]);
}

/// Prints Home Assistant's and the sidecars' memory and CPU so far, for
/// BENCHMARKS.md (a figure, not an assertion).
fn report_usage(ha: &HomeAssistant, sidecars: &[&common::Sidecar]) {
    let show = |name: &str, usage: Option<(u64, Duration)>| {
        if let Some((rss, cpu)) = usage {
            eprintln!(
                "{name:<20} RSS {:>6.1} MiB  CPU {cpu:>8.2?}",
                rss as f64 / 1048576.0
            );
        }
    };
    show("home-assistant", ha.usage());
    for sidecar in sidecars {
        show(&format!("hass-{}", sidecar.name), sidecar.usage());
    }
}

/// When each of the exporter's Home Assistant probes first answers `want`.
struct ProbeWatch<'a> {
    exporter: &'a common::Sidecar,
    since: Instant,
}

impl ProbeWatch<'_> {
    fn status(&self, probe: &str) -> u16 {
        hass_test_support::http::get(self.exporter.admin, &format!("/probe/ha/{probe}"))
            .map_or(0, |r| r.status)
    }

    /// Waits until `probe` answers `want`; the time since the watch began.
    fn until(&self, probe: &str, want: u16, limit: Duration, ha: &HomeAssistant) -> Duration {
        wait_for(limit, || (self.status(probe) == want).then(|| self.since.elapsed()))
            .unwrap_or_else(|| {
                panic!(
                    "/probe/ha/{probe} never answered {want} within {limit:?}\nexporter:\n{}\nHome Assistant:\n{}",
                    self.exporter.logs(),
                    ha.log()
                )
            })
    }
}

/// The exporter's startup, readiness and liveness probes follow a real Home
/// Assistant with its recorder on PostgreSQL through its start, a
/// `homeassistant.restart` and a stop, and the recorder's freshness metric
/// follows Home Assistant's real writes.
#[test]
fn exporter_probes_follow_a_real_home_assistant_through_restart_and_stop() {
    let pg = hass_test_support::TempPostgres::start().unwrap();
    let since = Instant::now();
    let mut ha = HomeAssistant::start(&format!(
        "recorder:\n  db_url: {}\n  commit_interval: 1\ninput_boolean:\n  heartbeat:\n",
        pg.url()
    ))
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("ha-token");
    std::fs::write(&token, ha.token()).unwrap();
    let config = dir.path().join("exporter.yaml");
    std::fs::write(
        &config,
        format!(
            "home_assistant:\n  url: {}\n  token: {{ file: {} }}\n  poll_interval: 1s\n  timeout: 2s\n  live_timeout: 5s\n\
             postgres:\n  connection: {}\n  interval: 1s\n  query_timeout: 2s\n  connect_timeout: 2s\n",
            ha.url(),
            token.display(),
            pg.connection_string()
        ),
    )
    .unwrap();
    let exporter = common::Sidecar::start("exporter", &["--config", config.to_str().unwrap()]);
    let watch = ProbeWatch {
        exporter: &exporter,
        since,
    };
    let mut timeline = Vec::new();
    let minute = Duration::from_secs(60);
    timeline.push(("startup 200", watch.until("startup", 200, minute, &ha)));
    timeline.push(("ready 200", watch.until("ready", 200, minute, &ha)));
    timeline.push(("live 200", watch.until("live", 200, minute, &ha)));

    // Home Assistant writes states; the newest is a second or two old.
    let toggle = |ha: &HomeAssistant| {
        let (status, body) = ha
            .post(
                "/api/services/input_boolean/toggle",
                &json!({ "entity_id": "input_boolean.heartbeat" }),
            )
            .unwrap();
        assert_eq!(status, 200, "{body}");
    };
    let age = || exporter.metric("hass_exporter_recorder_last_state_age_seconds", &[]);
    let fresh = wait_for(Duration::from_secs(30), || {
        toggle(&ha);
        std::thread::sleep(Duration::from_millis(500)); // one toggle per half second
        age().filter(|a| *a < 5.0)
    });
    assert!(
        fresh.is_some(),
        "recorder age {:?}\n{}",
        age(),
        exporter.logs()
    );

    // homeassistant.restart: Home Assistant stops, exits 100 for its
    // supervisor (here, the harness) to start it again.
    let (status, body) = ha
        .post("/api/services/homeassistant/restart", &json!({}))
        .unwrap();
    assert!(
        status == 200 || status == 502 || status == 504,
        "{status} {body}"
    );
    timeline.push(("restart: ready 503", watch.until("ready", 503, minute, &ha)));
    assert_eq!(ha.wait_exit(minute), Some(100), "{}", ha.log());
    timeline.push(("restart: exited 100", since.elapsed()));
    ha.start_again().unwrap();
    timeline.push(("restart: ready 200", watch.until("ready", 200, minute, &ha)));
    assert_eq!(watch.status("startup"), 200);
    assert_eq!(watch.status("live"), 200);

    // Stop: not ready at once, not live after live_timeout (5 s) of silence,
    // and the newest recorded state ages.
    report_usage(&ha, &[&exporter]);
    assert_eq!(ha.stop(), Some(0), "{}", ha.log());
    timeline.push(("stopped", since.elapsed()));
    timeline.push(("stop: ready 503", watch.until("ready", 503, minute, &ha)));
    timeline.push(("stop: live 503", watch.until("live", 503, minute, &ha)));
    let stale = wait_for(Duration::from_secs(30), || age().filter(|a| *a > 10.0));
    assert!(stale.is_some(), "recorder age {:?}", age());
    for (what, at) in &timeline {
        eprintln!("{at:>10.1?}  {what}");
    }
}

/// Writes `text` as the config file the way an editor does: a temp file
/// beside it, renamed over it.
fn replace_file(path: &std::path::Path, text: &str) {
    let temp = path.with_extension("yaml.tmp");
    std::fs::write(&temp, text).unwrap();
    std::fs::rename(&temp, path).unwrap();
}

/// Waits for `entity` to exist in Home Assistant; the time since `since`.
fn entity_appears(
    ha: &HomeAssistant,
    entity: &str,
    since: Instant,
    watcher: &common::Sidecar,
) -> Duration {
    let appeared = wait_for(Duration::from_secs(30), || {
        let (status, _) = ha.get(&format!("/api/states/{entity}")).unwrap();
        (status == 200).then(|| since.elapsed())
    });
    appeared.unwrap_or_else(|| panic!("no {entity}\n{}", watcher.logs()))
}

/// hass-config-watcher for the Home Assistant at `url` with config folder
/// `config_dir`, its token in `dir`, and `extra` YAML lines.
fn start_watcher(
    config_dir: &std::path::Path,
    url: &str,
    token: &str,
    dir: &std::path::Path,
    extra: &str,
) -> common::Sidecar {
    let token_file = dir.join("ha-token");
    std::fs::write(&token_file, token).unwrap();
    let config = dir.join("watcher.yaml");
    std::fs::write(
        &config,
        format!(
            "config_dir: {}\nhome_assistant:\n  url: {url}\n  token: {{ file: {} }}\nnotify_invalid: false\n{extra}",
            config_dir.display(),
            token_file.display()
        ),
    )
    .unwrap();
    common::Sidecar::start(
        "config-watcher",
        &["run", "--config", config.to_str().unwrap()],
    )
}

/// hass-config-watcher against a real Home Assistant: an edit of a domain
/// Home Assistant can reload is reloaded and the new entity appears; a
/// broken edit causes no reload and Home Assistant keeps running the old
/// config; an edit of a domain without a reload service is reported as
/// waiting for a restart.
#[test]
fn the_config_watcher_reloads_a_real_domain_and_never_a_broken_config() {
    let base = "input_boolean:\n  first:\n    name: First\n";
    let ha = HomeAssistant::start(base).unwrap();
    ha.wait_running(Duration::from_secs(120)).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let watcher = start_watcher(
        ha.config_dir(),
        &ha.url(),
        ha.token(),
        dir.path(),
        "debounce: 200ms\n",
    );
    let metric = |name: &str, labels: &[(&str, &str)]| watcher.metric(name, labels).unwrap_or(0.0);
    let file = ha.config_dir().join("configuration.yaml");
    let original = std::fs::read_to_string(&file).unwrap();

    // A new input_boolean: reloaded, and Home Assistant has it.
    let edited = Instant::now();
    replace_file(
        &file,
        &original.replace(base, &format!("{base}  second:\n    name: Second\n")),
    );
    let appeared = entity_appears(&ha, "input_boolean.second", edited, &watcher);
    eprintln!("edit to entity in Home Assistant: {appeared:?}");
    // The entity can be there before the reload's answer is: wait for the
    // count rather than read it.
    let counted = wait_for(Duration::from_secs(30), || {
        let reloads = metric(
            "hass_config_watcher_reloads_total",
            &[("domain", "input_boolean")],
        );
        (reloads == 1.0).then_some(())
    });
    assert!(counted.is_some(), "{}", watcher.logs());

    // A broken edit: found invalid, nothing reloaded, the old config runs.
    let runs = metric("hass_config_watcher_validation_runs_total", &[]);
    replace_file(
        &file,
        &original.replace(base, "input_boolean:\n  first: [unclosed\n"),
    );
    let judged = wait_for(Duration::from_secs(30), || {
        (metric("hass_config_watcher_validation_runs_total", &[]) > runs
            && metric("hass_config_watcher_config_valid", &[]) == 0.0)
            .then_some(())
    });
    assert!(judged.is_some(), "{}", watcher.logs());
    // Nothing happens for a while: no reload call follows (debounce is 200 ms).
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(
        metric("hass_config_watcher_reloads_total", &[]),
        1.0,
        "{}",
        watcher.logs()
    );
    assert_eq!(ha.core_state().as_deref(), Some("RUNNING"));
    let (status, _) = ha.get("/api/states/input_boolean.second").unwrap();
    assert_eq!(status, 200, "the last good config stays in force");

    // Valid YAML with a value input_boolean's schema refuses (`initial` is
    // a boolean): Home Assistant's own check_config finds it (as a warning:
    // the config stays "valid" for it), so no reload is sent (2026.11 would
    // answer it with a 400), and both entities stay.
    replace_file(
        &file,
        &original.replace(
            base,
            &format!("{base}  second:\n    name: Second\n    initial: sometimes\n"),
        ),
    );
    let refused = wait_for(Duration::from_secs(30), || {
        (metric(
            "hass_config_watcher_reloads_total",
            &[("domain", "input_boolean"), ("result", "refused")],
        ) == 1.0)
            .then_some(())
    });
    assert!(refused.is_some(), "{}", watcher.logs());
    for entity in ["input_boolean.first", "input_boolean.second"] {
        let (status, _) = ha.get(&format!("/api/states/{entity}")).unwrap();
        assert_eq!(status, 200, "{entity} after a rejected edit");
    }

    // A domain Home Assistant cannot reload (system_log): a restart is
    // reported as needed, nothing is reloaded.
    replace_file(
        &file,
        &format!(
            "{}system_log:\n  max_entries: 60\n",
            original.replace(base, &format!("{base}  second:\n    name: Second\n"))
        ),
    );
    let waiting = wait_for(Duration::from_secs(30), || {
        (metric("hass_config_watcher_restart_required", &[]) == 1.0).then_some(())
    });
    assert!(waiting.is_some(), "{}", watcher.logs());
}

/// The config watcher's Git source against a real Home Assistant: a push
/// becomes an entity; a push that Home Assistant's own check rejects is
/// rolled back, and the files it changed are reloaded as they were.
#[test]
fn the_git_source_applies_a_push_and_rolls_back_what_home_assistant_rejects() {
    let base = "input_boolean:\n  first:\n    name: First\n";
    let second = format!("{base}  second:\n    name: Second\n");
    let ha = HomeAssistant::start(base).unwrap();
    ha.wait_running(Duration::from_secs(120)).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let remote = GitRemote::new(dir.path(), "ha");
    let file = ha.config_dir().join("configuration.yaml");
    let original = std::fs::read_to_string(&file).unwrap();
    remote.push(
        &[("configuration.yaml", Some(&original))],
        "as Home Assistant runs it",
    );
    let source = format!(
        "debounce: 200ms\nsource:\n  git: file://{}\n  path: ha\n  interval: 200ms\n  rollback_window: 60s\n",
        remote.remote.display()
    );
    let watcher = start_watcher(ha.config_dir(), &ha.url(), ha.token(), dir.path(), &source);
    let metric = |name: &str, labels: &[(&str, &str)]| watcher.metric(name, labels).unwrap_or(0.0);
    let revisions = |result: &str| {
        metric(
            "hass_config_watcher_source_revisions_total",
            &[("result", result)],
        )
    };
    let first = wait_for(Duration::from_secs(30), || {
        (revisions("applied") == 1.0).then_some(())
    });
    assert!(first.is_some(), "{}", watcher.logs());

    // A push: the new switch is in Home Assistant.
    let pushed = Instant::now();
    remote.push(
        &[("configuration.yaml", Some(&original.replace(base, &second)))],
        "a second switch",
    );
    let appeared = entity_appears(&ha, "input_boolean.second", pushed, &watcher);
    eprintln!("push to entity in Home Assistant: {appeared:?}");

    // Valid YAML that input_boolean's schema refuses (`initial` is a
    // boolean): Home Assistant's check rejects it, nothing is reloaded, and
    // the revision is rolled back.
    let reloaded = || {
        metric(
            "hass_config_watcher_reloads_total",
            &[("domain", "input_boolean"), ("result", "ok")],
        )
    };
    let reloads_before = reloaded();
    let pushed = Instant::now();
    let bad = original.replace(base, &format!("{second}    initial: sometimes\n"));
    remote.push(&[("configuration.yaml", Some(&bad))], "a schema error");
    let rolled_back = wait_for(Duration::from_secs(60), || {
        (revisions("rolled_back") == 1.0).then(|| pushed.elapsed())
    });
    let rolled_back = rolled_back.unwrap_or_else(|| panic!("not rolled back\n{}", watcher.logs()));
    let healthy = wait_for(Duration::from_secs(30), || {
        (reloaded() > reloads_before).then(|| pushed.elapsed())
    });
    let healthy = healthy
        .unwrap_or_else(|| panic!("the restored files were not reloaded\n{}", watcher.logs()));
    eprintln!(
        "bad push to rolled back: {rolled_back:?}; to the restored files reloaded: {healthy:?}"
    );
    assert_eq!(
        std::fs::read_to_string(&file).unwrap(),
        original.replace(base, &second)
    );
    assert_eq!(ha.core_state().as_deref(), Some("RUNNING"));
    for entity in ["input_boolean.first", "input_boolean.second"] {
        let (status, _) = ha.get(&format!("/api/states/{entity}")).unwrap();
        assert_eq!(status, 200, "{entity} after the rollback");
    }
    assert!(
        watcher.logs().contains("revision rolled back"),
        "{}",
        watcher.logs()
    );
}

/// A request as the ingress controller sends it, from 127.0.0.1.
fn through_proxy(ha: &HomeAssistantApi) -> u16 {
    ha.get_with("/api/", &[("X-Forwarded-For", "203.0.113.7")])
        .unwrap()
        .0
}

/// Home Assistant's `http/config` answer.
fn http_config(ha: &HomeAssistantApi) -> Value {
    let answer = ha.websocket(json!({"type": "http/config"})).unwrap();
    assert_eq!(answer["success"], true, "{answer}");
    answer["result"].clone()
}

/// hass-config-watcher with `http_settings` (checked every second) for a
/// supervised Home Assistant.
fn watcher_with_http_settings(
    ha: &Supervised,
    dir: &std::path::Path,
    settings: &str,
) -> common::Sidecar {
    let extra = format!(
        "http_settings:\n  verify_forwarded_for: 203.0.113.7\n  interval: 1s\n  restart_timeout: 3m\n{settings}"
    );
    start_watcher(&ha.config_dir(), &ha.url(), ha.token(), dir, &extra)
}

/// Home Assistant 2026.8+ takes `trusted_proxies` only through its API: the
/// watcher stores them as pending, Home Assistant restarts on trial, the
/// watcher checks that a proxied request now gets through and promotes
/// them. Keys the watcher does not manage (the port) stay as they were.
#[test]
fn the_config_watcher_applies_http_settings_through_home_assistants_api() {
    let ha = HomeAssistant::start("homeassistant:\n  name: e2e\n")
        .unwrap()
        .supervised();
    ha.wait_running(Duration::from_secs(120)).unwrap();
    let before = http_config(&ha);
    assert_eq!(through_proxy(&ha), 400, "no proxy is trusted yet");

    let dir = tempfile::tempdir().unwrap();
    let started = Instant::now();
    let watcher = watcher_with_http_settings(
        &ha,
        dir.path(),
        "  use_x_forwarded_for: true\n  trusted_proxies: [127.0.0.1]\n",
    );
    watcher.wait_metric(
        "hass_config_watcher_http_settings_applies_total",
        &[("result", "promoted")],
        1.0,
        Duration::from_secs(240),
    );
    eprintln!(
        "watcher start to settings promoted: {:?} (Home Assistant restarted {} time)",
        started.elapsed(),
        ha.restarts()
    );
    let after = http_config(&ha);
    assert_eq!(after["pending"], Value::Null, "{after}");
    assert_eq!(after["stable"]["use_x_forwarded_for"], true, "{after}");
    assert_eq!(after["stable"]["trusted_proxies"], json!(["127.0.0.1/32"]));
    assert_eq!(
        after["stable"]["server_port"],
        before["stable"]["server_port"]
    );
    assert_eq!(ha.restarts(), 1);
    assert_eq!(through_proxy(&ha), 200, "the proxy is trusted now");
    assert_eq!(
        watcher.metric("hass_config_watcher_http_settings_in_sync", &[]),
        Some(1.0)
    );
}

/// Settings that break the path they are for (the proxy's requests get 400)
/// are not promoted: Home Assistant reverts them by itself five minutes
/// later, and the watcher does not try them again.
#[test]
fn http_settings_that_fail_their_check_are_reverted_by_home_assistant_and_not_retried() {
    let ha = HomeAssistant::start("homeassistant:\n  name: e2e\n")
        .unwrap()
        .supervised();
    ha.wait_running(Duration::from_secs(120)).unwrap();
    let before = http_config(&ha);
    let dir = tempfile::tempdir().unwrap();
    // The proxy is trusted, but not the address its requests come from.
    let watcher = watcher_with_http_settings(
        &ha,
        dir.path(),
        "  use_x_forwarded_for: true\n  trusted_proxies: [192.0.2.0/24]\n",
    );
    let started = Instant::now();
    watcher.wait_metric(
        "hass_config_watcher_http_settings_applies_total",
        &[("result", "not_promoted")],
        1.0,
        Duration::from_secs(240),
    );
    eprintln!("not promoted after {:?}", started.elapsed());
    let trial = http_config(&ha);
    assert_eq!(trial["active_config_type"], "pending", "{trial}");
    assert_eq!(trial["stable"], before["stable"], "stable untouched");
    assert!(trial["revert_at"].is_string(), "{trial}");
    let notifications = ha
        .websocket(json!({"type": "persistent_notification/get"}))
        .unwrap();
    assert!(
        notifications.to_string().contains("failed their check"),
        "{notifications}"
    );

    // Home Assistant's own revert, five minutes after the trial started.
    let reverted = wait_for(Duration::from_secs(420), || {
        let config = ha.websocket(json!({"type": "http/config"})).ok()?;
        let config = &config["result"];
        (config["active_config_type"] == "stable" && config["pending"]["error"] == "not_promoted")
            .then_some(())
    });
    assert!(reverted.is_some(), "{}", ha.log());
    ha.wait_running(Duration::from_secs(120)).unwrap();
    eprintln!("reverted by Home Assistant after {:?}", started.elapsed());
    // Nothing happens for a while (the watcher compares every second): the
    // failed settings are not sent again.
    std::thread::sleep(Duration::from_secs(5));
    assert_eq!(ha.restarts(), 2, "the trial and the revert, nothing more");
    assert_eq!(
        watcher.metric(
            "hass_config_watcher_http_settings_applies_total",
            &[("result", "not_promoted")]
        ),
        Some(1.0)
    );
    assert_eq!(http_config(&ha)["stable"], before["stable"]);
}

//! The watcher on real files in a temp folder, against a stand-in Home
//! Assistant: which changes lead to which service calls, and which never do.
//!
//! "Nothing else happened" is proven with a barrier: a later change to another
//! domain whose reload must arrive; everything the first change could have
//! caused would have been sent before it.

// Test helpers unwrap: a failure is a test failure.
#![allow(clippy::unwrap_used)]

mod common;

use std::fs;
use std::os::unix::fs::symlink;
use std::time::{Duration, Instant};

use common::{
    Fixture, Running, WAIT, automation, eventually, sample_config, watcher_yaml, write,
    write_atomic,
};
use hass_test_support::StandInHa;

/// Changes `scripts.yaml` and waits for `script.reload`: later calls from
/// earlier changes would have arrived before it.
async fn barrier(fx: &Fixture, ha: &StandInHa, n: usize) {
    let before = ha.count("script/reload");
    write(
        &fx.root,
        "scripts.yaml",
        &format!("hello:\n  sequence: []\nbarrier_{n}:\n  sequence: []\n"),
    );
    eventually("the barrier's script.reload", WAIT, || {
        ha.count("script/reload") == before + 1
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_edit_reloads_only_its_domain() {
    let fx = Fixture::new();
    sample_config(&fx.root);
    let ha = StandInHa::start();
    let w = Running::start(&watcher_yaml(&fx.root, &ha.url(), &fx.token_file, "")).await;

    let written = Instant::now();
    write(
        &fx.root,
        "input_boolean.yaml",
        "guest_mode:\n  name: Guests\n",
    );
    eventually("input_boolean.reload", WAIT, || {
        ha.count("input_boolean/reload") == 1
    })
    .await;
    let latency = ha.calls().last().unwrap().at - written;
    eprintln!("change-to-reload latency: {latency:?} (debounce 200ms)");

    barrier(&fx, &ha, 1).await;
    assert_eq!(ha.reloads(), ["input_boolean/reload", "script/reload"]);
    assert_eq!(
        w.metric(
            "hass_config_watcher_reloads_total",
            &[("domain", "input_boolean"), ("result", "ok")]
        ),
        1.0
    );
    assert!(
        w.metric(
            "hass_config_watcher_last_successful_reload_timestamp_seconds",
            &[]
        ) > 1.7e9
    );
    assert_eq!(
        w.metric(
            "hass_config_watcher_validation_runs_total",
            &[("result", "valid")]
        ),
        3.0
    );
    ha.assert_all_authorized();
    w.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn core_config_and_moves_between_files() {
    let fx = Fixture::new();
    sample_config(&fx.root);
    let ha = StandInHa::start();
    let w = Running::start(&watcher_yaml(&fx.root, &ha.url(), &fx.token_file, "")).await;

    // `homeassistant:` has its own service.
    let config = fs::read_to_string(fx.root.join("configuration.yaml")).unwrap();
    write(
        &fx.root,
        "configuration.yaml",
        &config.replace("name: Home", "name: Cottage"),
    );
    eventually("reload_core_config", WAIT, || {
        ha.count("homeassistant/reload_core_config") == 1
    })
    .await;

    // The same automations, now inline: Home Assistant sees no change.
    let config = fs::read_to_string(fx.root.join("configuration.yaml")).unwrap();
    let inline = config.replace(
        "automation: !include automations.yaml\n",
        "automation:\n  - id: first\n    alias: first\n    trigger: []\n    action: []\n",
    );
    write(&fx.root, "configuration.yaml", &inline);
    barrier(&fx, &ha, 1).await;
    assert_eq!(
        ha.reloads(),
        ["homeassistant/reload_core_config", "script/reload"]
    );
    assert!(!ha.service_calls().iter().any(|s| s.ends_with("reload_all")));
    w.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn atomic_rename_like_an_editor() {
    let fx = Fixture::new();
    sample_config(&fx.root);
    let ha = StandInHa::start();
    let w = Running::start(&watcher_yaml(&fx.root, &ha.url(), &fx.token_file, "")).await;

    write_atomic(&fx.root, "automations.yaml", &automation("renamed"));
    eventually("automation.reload", WAIT, || {
        ha.count("automation/reload") == 1
    })
    .await;
    barrier(&fx, &ha, 1).await;
    assert_eq!(ha.reloads(), ["automation/reload", "script/reload"]);
    w.stop().await;
}

/// Home Assistant's automation editor saves through a temp file and a rename,
/// then calls `automation.reload` itself; a user clicking save three times in
/// a row, while HA writes `.storage/` as always, costs one reload from us.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn automation_editor_saves_are_coalesced() {
    let fx = Fixture::new();
    sample_config(&fx.root);
    let ha = StandInHa::start();
    let w = Running::start(&watcher_yaml(&fx.root, &ha.url(), &fx.token_file, "")).await;

    for i in 0..3 {
        write_atomic(
            &fx.root,
            "automations.yaml",
            &automation(&format!("ui_{i}")),
        );
        write(
            &fx.root,
            ".storage/core.entity_registry",
            &format!("{{\"v\": {i}}}"),
        );
        write(&fx.root, "home-assistant.log", &format!("line {i}\n"));
    }
    eventually("automation.reload", WAIT, || {
        ha.count("automation/reload") == 1
    })
    .await;
    barrier(&fx, &ha, 1).await;
    assert_eq!(ha.reloads(), ["automation/reload", "script/reload"]);
    assert!(
        w.metric(
            "hass_config_watcher_watch_events_total",
            &[("kind", "ignored")]
        ) >= 6.0
    );
    w.stop().await;
}

/// kubelet's AtomicWriter: files live in `..<timestamp>/`, `..data` points at
/// it, and each visible file is a symlink through `..data`. An update writes a
/// new timestamped folder, points `..data_tmp` at it, renames that over
/// `..data` and deletes the old folder. The visible symlinks never change.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn configmap_data_swap() {
    let fx = Fixture::new();
    let root = &fx.root;
    let old = "..2026_01_01_10_00_00.111";
    write(
        root,
        &format!("{old}/configuration.yaml"),
        "automation: !include automations.yaml\nscript: !include scripts.yaml\n",
    );
    write(root, &format!("{old}/automations.yaml"), &automation("v1"));
    write(
        root,
        &format!("{old}/scripts.yaml"),
        "hello:\n  sequence: []\n",
    );
    symlink(old, root.join("..data")).unwrap();
    for name in ["configuration.yaml", "automations.yaml", "scripts.yaml"] {
        symlink(format!("..data/{name}"), root.join(name)).unwrap();
    }
    let ha = StandInHa::start();
    let w = Running::start(&watcher_yaml(root, &ha.url(), &fx.token_file, "")).await;

    let new = "..2026_01_01_10_05_00.222";
    write(
        root,
        &format!("{new}/configuration.yaml"),
        "automation: !include automations.yaml\nscript: !include scripts.yaml\n",
    );
    write(root, &format!("{new}/automations.yaml"), &automation("v2"));
    write(
        root,
        &format!("{new}/scripts.yaml"),
        "hello:\n  sequence: []\n",
    );
    symlink(new, root.join("..data_tmp")).unwrap();
    fs::rename(root.join("..data_tmp"), root.join("..data")).unwrap();
    fs::remove_dir_all(root.join(old)).unwrap();

    eventually("automation.reload", WAIT, || {
        ha.count("automation/reload") == 1
    })
    .await;
    // The barrier for a ConfigMap is another swap.
    let newer = "..2026_01_01_10_10_00.333";
    write(
        root,
        &format!("{newer}/configuration.yaml"),
        "automation: !include automations.yaml\nscript: !include scripts.yaml\n",
    );
    write(
        root,
        &format!("{newer}/automations.yaml"),
        &automation("v2"),
    );
    write(
        root,
        &format!("{newer}/scripts.yaml"),
        "hello:\n  sequence: [{delay: 1}]\n",
    );
    symlink(newer, root.join("..data_tmp")).unwrap();
    fs::rename(root.join("..data_tmp"), root.join("..data")).unwrap();
    fs::remove_dir_all(root.join(new)).unwrap();
    eventually("script.reload", WAIT, || ha.count("script/reload") == 1).await;
    assert_eq!(ha.reloads(), ["automation/reload", "script/reload"]);
    w.stop().await;
}

/// 1000 writes in a burst, all but the last broken, with the default 1s
/// debounce: only the final state is validated (no invalid run at all), and
/// it is reloaded once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn burst_of_1000_writes_validates_the_final_state_once() {
    let fx = Fixture::new();
    sample_config(&fx.root);
    let ha = StandInHa::start();
    let yaml =
        watcher_yaml(&fx.root, &ha.url(), &fx.token_file, "").replace("debounce: 200ms\n", "");
    let w = Running::start(&yaml).await;
    assert_eq!(
        w.metric(
            "hass_config_watcher_validation_runs_total",
            &[("result", "valid")]
        ),
        1.0
    );

    let started = Instant::now();
    for i in 0..999 {
        write(
            &fx.root,
            "automations.yaml",
            &format!("- id: broken_{i}\n  trigger: [\n"),
        );
    }
    write(&fx.root, "automations.yaml", &automation("final"));
    let burst = started.elapsed();
    eventually("automation.reload", WAIT, || {
        ha.count("automation/reload") == 1
    })
    .await;
    eprintln!(
        "1000 writes in {burst:?}; reload {:?} after the last write",
        ha.calls().last().unwrap().at - (started + burst)
    );
    barrier(&fx, &ha, 1).await;
    assert_eq!(ha.reloads(), ["automation/reload", "script/reload"]);
    assert_eq!(
        w.metric(
            "hass_config_watcher_validation_runs_total",
            &[("result", "invalid")]
        ),
        0.0
    );
    // The start, the burst, the barrier.
    assert_eq!(
        w.metric(
            "hass_config_watcher_validation_runs_total",
            &[("result", "valid")]
        ),
        3.0
    );
    assert!(
        w.metric(
            "hass_config_watcher_watch_events_total",
            &[("kind", "relevant")]
        ) >= 1000.0
    );
    w.stop().await;
}

/// A broken edit: no reload, a notification in Home Assistant naming the
/// place; fixing it reloads and dismisses the notification.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_edit_never_reloads() {
    let fx = Fixture::new();
    sample_config(&fx.root);
    let ha = StandInHa::start();
    let w = Running::start(&watcher_yaml(&fx.root, &ha.url(), &fx.token_file, "")).await;

    write(&fx.root, "automations.yaml", "- id: x\n  trigger: [\n");
    eventually("the notification", WAIT, || {
        ha.count("persistent_notification/create") == 1
    })
    .await;
    assert_eq!(w.metric("hass_config_watcher_config_valid", &[]), 0.0);
    assert_eq!(w.metric("hass_config_watcher_validation_errors", &[]), 1.0);
    let create = ha
        .calls()
        .into_iter()
        .find(|c| c.path.ends_with("/create"))
        .unwrap();
    let body: serde_json::Value = serde_json::from_str(&create.body).unwrap();
    assert_eq!(
        body["notification_id"],
        hass_config_watcher::NOTIFICATION_ID
    );
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains("automations.yaml:"),
        "{body}"
    );

    // A second broken file, then another change elsewhere: still nothing
    // reloads while the tree is invalid.
    write(
        &fx.root,
        "scripts.yaml",
        "hello:\n  sequence: []\nbye:\n  sequence: []\n",
    );
    eventually("the second invalid run", WAIT, || {
        w.metric(
            "hass_config_watcher_validation_runs_total",
            &[("result", "invalid")],
        ) == 2.0
    })
    .await;
    assert_eq!(ha.reloads(), Vec::<String>::new());

    // Fixed: both domains changed against the last valid config.
    write(&fx.root, "automations.yaml", &automation("fixed"));
    eventually("reloads after the fix", WAIT, || ha.reloads().len() == 2).await;
    let mut reloads = ha.reloads();
    reloads.sort();
    assert_eq!(reloads, ["automation/reload", "script/reload"]);
    eventually("dismiss", WAIT, || {
        ha.count("persistent_notification/dismiss") == 1
    })
    .await;
    assert_eq!(w.metric("hass_config_watcher_config_valid", &[]), 1.0);
    ha.assert_all_authorized();
    w.stop().await;
}

/// A reload that takes a while: changes meanwhile queue exactly one more
/// reload, never a second one in flight.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_reloads_are_coalesced_per_domain() {
    let fx = Fixture::new();
    sample_config(&fx.root);
    let ha = StandInHa::start();
    ha.set(|b| b.reload_delay = Duration::from_millis(1500));
    let w = Running::start(&watcher_yaml(&fx.root, &ha.url(), &fx.token_file, "")).await;

    write(&fx.root, "automations.yaml", &automation("a1"));
    eventually("the first reload in flight", WAIT, || {
        ha.in_flight("automation") == 1
    })
    .await;
    for i in 2..5 {
        let runs = w.metric(
            "hass_config_watcher_validation_runs_total",
            &[("result", "valid")],
        );
        write(&fx.root, "automations.yaml", &automation(&format!("a{i}")));
        eventually("the change validated", WAIT, || {
            w.metric(
                "hass_config_watcher_validation_runs_total",
                &[("result", "valid")],
            ) == runs + 1.0
        })
        .await;
    }
    eventually("the coalesced second reload", WAIT, || {
        ha.count("automation/reload") == 2 && ha.in_flight("automation") == 0
    })
    .await;
    ha.set(|b| b.reload_delay = Duration::ZERO);
    barrier(&fx, &ha, 1).await;
    assert_eq!(ha.count("automation/reload"), 2);
    assert_eq!(ha.max_in_flight("automation"), 1);
    w.stop().await;
}

/// Home Assistant is not up yet when the change comes: the watcher retries
/// with backoff and reloads once it answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn home_assistant_down_then_up() {
    let fx = Fixture::new();
    sample_config(&fx.root);
    let addr = hass_test_support::free_addr();
    let w = Running::start(&watcher_yaml(
        &fx.root,
        &format!("http://{addr}"),
        &fx.token_file,
        "",
    ))
    .await;

    write(&fx.root, "automations.yaml", &automation("while_down"));
    eventually("unreachable errors", WAIT, || {
        w.metric(
            "hass_config_watcher_ha_api_errors_total",
            &[("kind", "unreachable")],
        ) >= 3.0
    })
    .await;
    assert_eq!(w.metric("hass_config_watcher_ha_up", &[]), 0.0);
    let ha = StandInHa::start_on(addr);
    eventually("automation.reload once HA is up", WAIT, || {
        ha.count("automation/reload") == 1
    })
    .await;
    // The stand-in records the call before the watcher has its answer.
    eventually("ha_up back to 1", WAIT, || {
        w.metric("hass_config_watcher_ha_up", &[]) == 1.0
    })
    .await;
    ha.assert_all_authorized();
    w.stop().await;
}

/// A 401 is never retried: Home Assistant bans IPs after failed logins.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unauthorized_is_not_retried() {
    let fx = Fixture::new();
    sample_config(&fx.root);
    let ha = StandInHa::start();
    ha.set(|b| b.unauthorized = true);
    let w = Running::start(&watcher_yaml(&fx.root, &ha.url(), &fx.token_file, "")).await;
    eventually("the startup call", WAIT, || ha.calls().len() == 1).await;

    write(&fx.root, "automations.yaml", &automation("x"));
    eventually("the services call", WAIT, || ha.calls().len() == 2).await;
    // Long enough for several retries at 50-200ms, had there been any.
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(ha.calls().len(), 2, "{:?}", ha.calls());
    assert!(ha.calls().iter().all(|c| c.path == "/api/services"));
    assert_eq!(
        w.metric(
            "hass_config_watcher_ha_api_errors_total",
            &[("kind", "unauthorized")]
        ),
        2.0
    );
    w.stop().await;
}

/// 500 from a reload is retried a bounded number of times.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_errors_are_retried_a_few_times() {
    let fx = Fixture::new();
    sample_config(&fx.root);
    let ha = StandInHa::start();
    let w = Running::start(&watcher_yaml(&fx.root, &ha.url(), &fx.token_file, "")).await;

    ha.set(|b| b.server_errors = 2);
    write(&fx.root, "automations.yaml", &automation("x"));
    eventually("a successful reload", WAIT, || {
        w.metric(
            "hass_config_watcher_reloads_total",
            &[("domain", "automation"), ("result", "ok")],
        ) == 1.0
    })
    .await;
    assert_eq!(ha.count("automation/reload"), 3);

    ha.set(|b| b.server_errors = 100);
    write(&fx.root, "automations.yaml", &automation("y"));
    eventually("a failed reload", WAIT, || {
        w.metric(
            "hass_config_watcher_reloads_total",
            &[("domain", "automation"), ("result", "error")],
        ) == 1.0
    })
    .await;
    assert_eq!(ha.count("automation/reload"), 6);
    assert_eq!(
        w.metric(
            "hass_config_watcher_ha_api_errors_total",
            &[("kind", "server_error")]
        ),
        5.0
    );
    w.stop().await;
}

/// `mqtt` has no reload service: restart required, and without auto_restart
/// nothing is called.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_domain_without_reload_needs_a_restart() {
    let fx = Fixture::new();
    sample_config(&fx.root);
    let ha = StandInHa::start();
    let w = Running::start(&watcher_yaml(&fx.root, &ha.url(), &fx.token_file, "")).await;

    let config = fs::read_to_string(fx.root.join("configuration.yaml")).unwrap();
    write(
        &fx.root,
        "configuration.yaml",
        &config.replace("127.0.0.1", "10.0.0.1"),
    );
    eventually("restart required", WAIT, || {
        w.metric("hass_config_watcher_restart_required", &[]) == 1.0
    })
    .await;
    assert_eq!(
        w.metric(
            "hass_config_watcher_restart_required_events_total",
            &[("reason", "no_reload_service")]
        ),
        1.0
    );
    barrier(&fx, &ha, 1).await;
    assert_eq!(ha.reloads(), ["script/reload"]);
    w.stop().await;
}

/// A watcher with `auto_restart` over the sample config, its stand-in Home
/// Assistant, and the sample `configuration.yaml`'s text.
async fn auto_restarting() -> (Fixture, StandInHa, Running, String) {
    let fx = Fixture::new();
    sample_config(&fx.root);
    let ha = StandInHa::start();
    let w = Running::start(&watcher_yaml(
        &fx.root,
        &ha.url(),
        &fx.token_file,
        "auto_restart: true\n",
    ))
    .await;
    let config = fs::read_to_string(fx.root.join("configuration.yaml")).unwrap();
    (fx, ha, w, config)
}

/// One change that needs a restart (mqtt has no reload service) and a reload
/// (the core config) asks Home Assistant's check once, not once for each.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_change_asks_home_assistant_to_check_once() {
    let (fx, ha, w, config) = auto_restarting().await;
    ha.set(|b| b.check_config_valid = false);
    let checks = || {
        ha.calls()
            .iter()
            .filter(|c| c.path == "/api/config/core/check_config")
            .count()
    };
    let before = checks();
    write(
        &fx.root,
        "configuration.yaml",
        &config
            .replace("127.0.0.1", "10.0.0.1")
            .replace("name: Home", "name: Away"),
    );
    eventually("refused restart and reload", WAIT, || {
        w.metric(
            "hass_config_watcher_restarts_total",
            &[("result", "refused")],
        ) == 1.0
            && w.metric(
                "hass_config_watcher_reloads_total",
                &[("domain", "homeassistant"), ("result", "refused")],
            ) == 1.0
    })
    .await;
    assert_eq!(checks() - before, 1, "{:#?}", ha.calls());
    assert_eq!(ha.reloads(), [] as [&str; 0]);
    w.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auto_restart_only_when_home_assistant_agrees() {
    let (fx, ha, w, config) = auto_restarting().await;

    // HA's own check says invalid: no restart, and the reloadable domain
    // changed in the same edit is not reloaded either.
    ha.set(|b| b.check_config_valid = false);
    write(
        &fx.root,
        "configuration.yaml",
        &config.replace("127.0.0.1", "10.0.0.1"),
    );
    write(
        &fx.root,
        "input_boolean.yaml",
        "guest_mode:\n  name: Guests\n",
    );
    eventually("refused restart", WAIT, || {
        w.metric(
            "hass_config_watcher_restarts_total",
            &[("result", "refused")],
        ) == 1.0
    })
    .await;
    eventually("input_boolean.reload refused", WAIT, || {
        w.metric(
            "hass_config_watcher_reloads_total",
            &[("domain", "input_boolean"), ("result", "refused")],
        ) == 1.0
    })
    .await;
    assert_eq!(ha.count("input_boolean/reload"), 0);
    assert_eq!(ha.count("homeassistant/restart"), 0);

    // Now it agrees: check_config, then restart, and no reloads (the restart
    // loads everything).
    ha.set(|b| b.check_config_valid = true);
    let calls_before = ha.calls().len();
    write(
        &fx.root,
        "configuration.yaml",
        &config.replace("127.0.0.1", "10.0.0.2"),
    );
    eventually("homeassistant.restart", WAIT, || {
        ha.count("homeassistant/restart") == 1
    })
    .await;
    let paths: Vec<String> = ha.calls()[calls_before..]
        .iter()
        .map(|c| c.path.clone())
        .collect();
    assert_eq!(
        paths,
        [
            "/api/services",
            "/api/config/core/check_config",
            "/api/services/homeassistant/restart"
        ]
    );
    // The stand-in records the call before the watcher has its answer.
    eventually("restart no longer required", WAIT, || {
        w.metric("hass_config_watcher_restart_required", &[]) == 0.0
    })
    .await;
    ha.assert_all_authorized();
    w.stop().await;
}

/// Home Assistant 2026.11 calls a config "valid" while warning that an
/// integration's config fails its schema; after a restart that integration
/// would not be set up at all. A warning about a changed domain refuses the
/// restart; one about another domain does not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auto_restart_waits_while_home_assistant_warns_about_a_changed_domain() {
    let (fx, ha, w, config) = auto_restarting().await;

    ha.set(|b| {
        b.check_config_warnings = Some(
            "Invalid config for 'mqtt' at configuration.yaml, line 7: expected a dictionary"
                .to_owned(),
        )
    });
    write(
        &fx.root,
        "configuration.yaml",
        &config.replace("127.0.0.1", "10.0.0.1"),
    );
    eventually("refused restart", WAIT, || {
        w.metric(
            "hass_config_watcher_restarts_total",
            &[("result", "refused")],
        ) == 1.0
    })
    .await;
    assert_eq!(ha.count("homeassistant/restart"), 0);

    ha.set(|b| {
        b.check_config_warnings =
            Some("Invalid config for 'zone' at zones.yaml, line 2: expected a float".to_owned())
    });
    write(
        &fx.root,
        "configuration.yaml",
        &config.replace("127.0.0.1", "10.0.0.2"),
    );
    eventually("homeassistant.restart", WAIT, || {
        ha.count("homeassistant/restart") == 1
    })
    .await;
    w.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn custom_components_need_a_restart() {
    let fx = Fixture::new();
    sample_config(&fx.root);
    let ha = StandInHa::start();
    let w = Running::start(&watcher_yaml(&fx.root, &ha.url(), &fx.token_file, "")).await;

    write(
        &fx.root,
        "custom_components/foo/__init__.py",
        "DOMAIN = 'foo'\n",
    );
    eventually("restart required", WAIT, || {
        w.metric(
            "hass_config_watcher_restart_required_events_total",
            &[("reason", "custom_components")],
        ) == 1.0
    })
    .await;
    barrier(&fx, &ha, 1).await;
    assert_eq!(ha.reloads(), ["script/reload"]);
    w.stop().await;
}

/// A file behind a symlink that points out of the folder changes without an
/// event in it; the periodic rescan of the include graph finds it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn periodic_rescan_finds_unannounced_changes() {
    let fx = Fixture::new();
    sample_config(&fx.root);
    let outside = fx.dir.path().join("outside");
    fs::create_dir(&outside).unwrap();
    write(&outside, "automations.yaml", &automation("out1"));
    fs::remove_file(fx.root.join("automations.yaml")).unwrap();
    symlink(
        outside.join("automations.yaml"),
        fx.root.join("automations.yaml"),
    )
    .unwrap();
    let ha = StandInHa::start();
    let w = Running::start(&watcher_yaml(
        &fx.root,
        &ha.url(),
        &fx.token_file,
        "rescan_interval: 300ms\n",
    ))
    .await;

    write(&outside, "automations.yaml", &automation("out2"));
    eventually("automation.reload from a rescan", WAIT, || {
        ha.count("automation/reload") == 1
    })
    .await;
    assert!(
        w.metric(
            "hass_config_watcher_rescans_total",
            &[("reason", "periodic")]
        ) >= 1.0
    );
    w.stop().await;
}

/// Without a token the watcher validates but never calls Home Assistant.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_token_no_calls() {
    let fx = Fixture::new();
    sample_config(&fx.root);
    let ha = StandInHa::start();
    let yaml = format!(
        "config_dir: {}\nhome_assistant:\n  url: {}\ndebounce: 100ms\n",
        fx.root.display(),
        ha.url()
    );
    let w = Running::start(&yaml).await;
    write(&fx.root, "automations.yaml", &automation("x"));
    eventually("validated", WAIT, || {
        w.metric(
            "hass_config_watcher_validation_runs_total",
            &[("result", "valid")],
        ) == 2.0
    })
    .await;
    write(&fx.root, "automations.yaml", "- broken: [\n");
    eventually("validated", WAIT, || {
        w.metric(
            "hass_config_watcher_validation_runs_total",
            &[("result", "invalid")],
        ) == 1.0
    })
    .await;
    assert!(ha.calls().is_empty(), "{:?}", ha.calls());
    w.stop().await;
}

/// `rollback_local_edits`: an edit Home Assistant takes stays and becomes the
/// state to return to; an edit its check rejects is put back to it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_edits_home_assistant_rejects_are_put_back_when_asked() {
    let fx = Fixture::new();
    sample_config(&fx.root);
    let ha = StandInHa::start();
    let extra = "rollback_local_edits: true\nrollback_window: 5s\n";
    let w = Running::start(&watcher_yaml(&fx.root, &ha.url(), &fx.token_file, extra)).await;
    let taken = "guest_mode:\n  name: Guests\n";
    write(&fx.root, "input_boolean.yaml", taken);
    eventually("input_boolean.reload", WAIT, || {
        ha.count("input_boolean/reload") == 1
    })
    .await;

    ha.set(|b| {
        b.check_config_warnings = Some(
            "Invalid config for 'input_boolean' at input_boolean.yaml, line 2: expected str"
                .to_owned(),
        )
    });
    write(&fx.root, "input_boolean.yaml", "guest_mode:\n  name: [1]\n");
    eventually("the edit put back", WAIT, || {
        w.metric("hass_config_watcher_local_rollbacks_total", &[]) == 1.0
    })
    .await;
    ha.set(|b| b.check_config_warnings = None);
    assert_eq!(
        fs::read_to_string(fx.root.join("input_boolean.yaml")).unwrap(),
        taken
    );
    eventually("the notification", WAIT, || {
        ha.calls().iter().any(|c| {
            c.path == "/api/services/persistent_notification/create"
                && c.body.contains("input_boolean.yaml")
                && c.body.contains("put back")
        })
    })
    .await;
    // Untouched files stay as they are.
    assert_eq!(
        fs::read_to_string(fx.root.join("scripts.yaml")).unwrap(),
        "hello:\n  sequence: []\n"
    );
    w.stop().await;
}

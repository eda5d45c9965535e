//! The real `hass-config-watcher run` binary: started like kubelet starts it,
//! probed over its admin port, stopped with SIGTERM.

// Test helpers unwrap: a failure is a test failure.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::{Fixture, WAIT, automation, binary, run_command, sample_config, spawn_ready, write};
use hass_test_support::StandInHa;
use hass_test_support::{http, openmetrics};
use nix::sys::signal::Signal;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_reloads_serves_metrics_and_stops_on_sigterm() {
    let fx = Fixture::new();
    sample_config(&fx.root);
    let ha = StandInHa::start();
    let config = fx.dir.path().join("watcher.yaml");
    // The config folder comes from the env fallback of --config-dir.
    std::fs::write(
        &config,
        format!(
            "home_assistant:\n  url: {}\n  token: {{ file: {} }}\ndebounce: 200ms\n",
            ha.url(),
            fx.token_file.display()
        ),
    )
    .unwrap();
    let (mut watcher, admin) = tokio::task::block_in_place(|| {
        spawn_ready(|admin| {
            let mut command = run_command(&config, admin);
            command
                .env("HASS_CONFIG_WATCHER_CONFIG_DIR", &fx.root)
                .env("RUST_LOG", "debug");
            command
        })
    });

    write(&fx.root, "automations.yaml", &automation("from_the_binary"));
    let deadline = std::time::Instant::now() + WAIT;
    while ha.count("automation/reload") != 1 {
        assert!(
            std::time::Instant::now() < deadline,
            "no automation.reload; calls {:?}; stderr:\n{}",
            ha.calls(),
            watcher.stderr()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    ha.assert_all_authorized();

    let metrics = tokio::task::block_in_place(|| http::get(admin, "/metrics")).unwrap();
    let families = tokio::task::block_in_place(|| openmetrics::parse(&metrics.body)).unwrap();
    let reloads = families
        .iter()
        .find(|f| f.name == "hass_config_watcher_reloads")
        .unwrap();
    assert_eq!(reloads.kind, "counter");
    assert!(
        reloads
            .samples
            .iter()
            .any(
                |s| s.labels.get("domain").map(String::as_str) == Some("automation")
                    && s.labels.get("result").map(String::as_str) == Some("ok")
                    && s.value == 1.0
            )
    );
    let readyz = tokio::task::block_in_place(|| http::get(admin, "/readyz")).unwrap();
    assert!(readyz.body.contains("ok watch"), "{}", readyz.body);

    watcher.signal(Signal::SIGTERM);
    let status =
        tokio::task::block_in_place(|| watcher.wait_exit(Duration::from_secs(10))).unwrap();
    assert_eq!(status.code(), Some(0), "{}", watcher.stderr());
    let stderr = watcher.stderr();
    assert!(
        !stderr.contains(common::TOKEN),
        "the token leaked into the log"
    );
    assert!(stderr.contains("reloaded"), "{stderr}");
}

#[test]
fn run_check_config_reports_bad_keys_with_exit_2() {
    let fx = Fixture::new();
    sample_config(&fx.root);
    let config = fx.dir.path().join("watcher.yaml");
    std::fs::write(
        &config,
        format!(
            "config_dir: {}\ndebounce: 1s\nauto_restrat: true\n",
            fx.root.display()
        ),
    )
    .unwrap();
    let out = binary()
        .args(["run", "--check-config", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("watcher.yaml:3:1"), "{stderr}");
    assert!(stderr.contains("auto_restrat"), "{stderr}");

    std::fs::write(&config, format!("config_dir: {}\n", fx.root.display())).unwrap();
    let out = binary()
        .args(["run", "--check-config", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // A missing token file is bad config too, found before serving.
    std::fs::write(
        &config,
        format!(
            "config_dir: {}\nhome_assistant:\n  token: {{ file: /nonexistent/token }}\n",
            fx.root.display()
        ),
    )
    .unwrap();
    let out = binary()
        .args(["run", "--check-config", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/token"));
}

#[test]
fn run_help_and_usage_errors() {
    let out = binary().args(["run", "--help"]).output().unwrap();
    assert_eq!(out.status.code(), Some(0));
    let help = String::from_utf8_lossy(&out.stdout);
    assert!(help.contains("--config-dir"), "{help}");
    assert!(help.contains("HASS_CONFIG_WATCHER_CONFIG_DIR"), "{help}");
    let out = binary().args(["run", "--no-such-flag"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
}

/// The config file's `admin.listen` places the admin server, and the
/// `--admin-listen` flag, when given, wins over it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_section_places_the_admin_server_and_the_flag_wins() {
    let fx = Fixture::new();
    sample_config(&fx.root);
    let ha = StandInHa::start();
    let config = fx.dir.path().join("watcher.yaml");
    let from_file = hass_test_support::free_addr();
    std::fs::write(
        &config,
        format!(
            "{}admin:\n  listen: {from_file}\n",
            common::watcher_yaml(&fx.root, &ha.url(), &fx.token_file, "")
        ),
    )
    .unwrap();

    let mut command = binary();
    command.args(["run", "--config"]).arg(&config);
    let mut watcher = hass_test_support::SpawnedBinary::spawn(command).unwrap();
    tokio::task::block_in_place(|| watcher.wait_ready(from_file, Duration::from_secs(20))).unwrap();
    assert!(
        watcher.stderr().contains(&format!("admin={from_file}")),
        "{}",
        watcher.stderr()
    );
    watcher.signal(Signal::SIGTERM);
    let status = tokio::task::block_in_place(|| watcher.wait_exit(Duration::from_secs(10)));
    assert_eq!(
        status.and_then(|s| s.code()),
        Some(0),
        "{}",
        watcher.stderr()
    );

    let (watcher, from_flag) =
        tokio::task::block_in_place(|| spawn_ready(|admin| run_command(&config, admin)));
    assert_ne!(from_flag, from_file);
    assert!(
        tokio::task::block_in_place(|| http::get(from_file, "/readyz")).is_err(),
        "the file's address is served although the flag named another"
    );
    drop(watcher);
}

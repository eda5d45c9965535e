//! A real inotify queue overflow: the kernel drops events, the watcher notices
//! and rescans the folder instead of trusting what it saw.
//!
//! The queue length is `fs.inotify.max_queued_events` as it was when the
//! watcher's inotify instance was created, so the test lowers it for that
//! moment only. It is a test binary of its own because the setting is
//! machine-wide: no other watcher of this crate's tests starts meanwhile.
//!
//! The watcher runs as its own process and is stopped (SIGSTOP) while the
//! files are written, so the kernel's queue overflows however fast the machine
//! is: a reader that keeps up would otherwise leave nothing to lose.

// Test helpers unwrap: a failure is a test failure.
#![allow(clippy::unwrap_used)]

mod common;

use std::fs;
use std::net::SocketAddr;
use std::time::Duration;

use common::{Fixture, WAIT, automation, run_command, sample_config, spawn_ready, write};
use hass_test_support::StandInHa;
use hass_test_support::{http, wait_for};
use nix::sys::signal::Signal;

const MAX_QUEUED_EVENTS: &str = "/proc/sys/fs/inotify/max_queued_events";

/// Sets the machine's inotify queue length and puts the old one back on drop.
struct QueueLength {
    old: String,
}

impl QueueLength {
    fn set(events: u32) -> std::io::Result<Self> {
        let old = fs::read_to_string(MAX_QUEUED_EVENTS)?;
        fs::write(MAX_QUEUED_EVENTS, events.to_string())?;
        Ok(QueueLength { old })
    }
}

impl Drop for QueueLength {
    fn drop(&mut self) {
        let _ = fs::write(MAX_QUEUED_EVENTS, self.old.trim());
    }
}

fn metric(admin: SocketAddr, name: &str, labels: &[(&str, &str)]) -> f64 {
    http::get(admin, "/metrics")
        .map(|reply| hass_test_support::openmetrics::sum(&reply.body, name, labels).unwrap_or(0.0))
        .unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_queue_overflow_makes_the_watcher_rescan() {
    let fx = Fixture::new();
    sample_config(&fx.root);
    fs::create_dir(fx.root.join("notes")).unwrap();
    let ha = StandInHa::start();
    let config = fx.dir.path().join("watcher.yaml");
    fs::write(
        &config,
        common::watcher_yaml(&fx.root, &ha.url(), &fx.token_file, ""),
    )
    .unwrap();

    let queue = match QueueLength::set(16) {
        Ok(queue) => queue,
        Err(err) => {
            // Only root may change it; CI runs as root.
            eprintln!("skipped: cannot set {MAX_QUEUED_EVENTS}: {err}");
            return;
        }
    };
    let (mut watcher, admin) =
        tokio::task::block_in_place(|| spawn_ready(|admin| run_command(&config, admin)));
    drop(queue);

    // Far more events than 16 while nothing reads them.
    watcher.signal(Signal::SIGSTOP);
    let stopped = wait_for(Duration::from_secs(5), || {
        let stat = fs::read_to_string(format!("/proc/{}/stat", watcher.pid())).ok()?;
        // The state follows the parenthesised command name.
        let state = stat.rsplit_once(") ")?.1.chars().next()?;
        (state == 'T').then_some(())
    });
    assert!(stopped.is_some(), "the watcher did not stop on SIGSTOP");
    let notes = fx.root.join("notes");
    for i in 0..200 {
        fs::write(notes.join(format!("n{i}.txt")), "x").unwrap();
    }
    write(&fx.root, "automations.yaml", &automation("after_overflow"));
    watcher.signal(Signal::SIGCONT);

    let rescanned = tokio::task::block_in_place(|| {
        wait_for(WAIT, || {
            let rescans = metric(
                admin,
                "hass_config_watcher_rescans_total",
                &[("reason", "overflow")],
            );
            (rescans >= 1.0).then_some(())
        })
    });
    assert!(
        rescanned.is_some(),
        "no rescan for lost events; stderr:\n{}",
        watcher.stderr()
    );
    // Whatever was lost, the folder's final state is what got validated and
    // reloaded.
    common::eventually("automation.reload", WAIT, || {
        ha.count("automation/reload") >= 1
    })
    .await;
    let invalid = tokio::task::block_in_place(|| {
        metric(
            admin,
            "hass_config_watcher_validation_runs_total",
            &[("result", "invalid")],
        )
    });
    assert_eq!(invalid, 0.0);
    let stderr = watcher.stderr();
    assert!(stderr.contains("queue overflow"), "{stderr}");
    watcher.signal(Signal::SIGTERM);
    let status =
        tokio::task::block_in_place(|| watcher.wait_exit(Duration::from_secs(10))).unwrap();
    assert_eq!(status.code(), Some(0), "{}", watcher.stderr());
}

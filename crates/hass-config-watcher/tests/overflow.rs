//! A real inotify queue overflow: the kernel drops events, the watcher notices
//! and rescans the folder instead of trusting what it saw.
//!
//! The queue length is `fs.inotify.max_queued_events` as it was when the
//! watcher's inotify instance was created, so the test lowers it for that
//! moment only. It is a test binary of its own because the setting is
//! machine-wide: no other watcher of this crate's tests starts meanwhile.

// Test helpers unwrap: a failure is a test failure.
#![allow(clippy::unwrap_used)]

mod common;

use std::fs;

use common::{Fixture, Running, StandInHa, WAIT, automation, eventually, sample_config, write};

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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_queue_overflow_makes_the_watcher_rescan() {
    let fx = Fixture::new();
    sample_config(&fx.root);
    fs::create_dir(fx.root.join("notes")).unwrap();
    let ha = StandInHa::start().await;

    let queue = match QueueLength::set(16) {
        Ok(queue) => queue,
        Err(err) => {
            // Only root may change it; CI runs as root.
            eprintln!("skipped: cannot set {MAX_QUEUED_EVENTS}: {err}");
            return;
        }
    };
    let yaml = common::watcher_yaml(&fx.root, &ha.url(), &fx.token_file, "");
    let w = Running::start(&yaml).await;
    drop(queue);

    // Far more events than 16, faster than the watcher's thread reads them.
    let notes = fx.root.join("notes");
    for i in 0..3000 {
        fs::write(notes.join(format!("n{i}.txt")), "x").unwrap();
    }
    write(&fx.root, "automations.yaml", &automation("after_overflow"));

    eventually("a rescan for lost events", WAIT, || {
        w.metric(
            "hass_config_watcher_rescans_total",
            &[("reason", "overflow")],
        ) >= 1.0
    })
    .await;
    // Whatever was lost, the folder's final state is what got validated and
    // reloaded.
    eventually("automation.reload", WAIT, || {
        ha.count("automation/reload") >= 1
    })
    .await;
    assert_eq!(
        w.metric(
            "hass_config_watcher_validation_runs_total",
            &[("result", "invalid")]
        ),
        0.0
    );
    w.stop().await;
}

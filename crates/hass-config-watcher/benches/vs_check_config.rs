//! `hass-config-watcher check` against Home Assistant's own `check_config`,
//! side by side on the large benchmark tree (1000 automations in 200 files,
//! 50 packages, secrets): wall time of each whole command, process start
//! included, and peak RSS; then the ratio.
//!
//! Run as root: `cargo bench -p hass-config-watcher --bench vs_check_config [-- --rounds N]`.
//! Home Assistant is the release in the tests' root filesystem
//! (`scripts/ha-rootfs`, built on first use), run through `chroot`; the tree
//! is written inside it, so both tools read the same files. Each round runs
//! ours ten times and Home Assistant's once, so both see the same minutes of
//! a shared machine.

// A bench reports on stdout and stops on the first failure.
#![allow(clippy::print_stdout, clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use hass_test_support::home_assistant::{self, RootfsDir};
use nix::sys::resource::{UsageWho, getrusage};

#[path = "support/large_tree.rs"]
mod large_tree;

const OURS: &str = env!("CARGO_BIN_EXE_hass-config-watcher");
const OURS_PER_ROUND: usize = 10;

fn ours(dir: &Path) -> Command {
    let mut cmd = Command::new(OURS);
    cmd.arg("check").arg(dir);
    cmd
}

/// Runs the command to its end; its wall time, or None when it failed.
fn timed(mut cmd: Command) -> Option<Duration> {
    let start = Instant::now();
    let status = cmd
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .ok()?;
    let wall = start.elapsed();
    status.success().then_some(wall)
}

/// The largest peak RSS, in MiB, of the children waited for so far.
fn children_peak_rss_mib() -> f64 {
    let usage = getrusage(UsageWho::RUSAGE_CHILDREN).unwrap();
    usage.max_rss() as f64 / 1024.0
}

fn median(mut samples: Vec<Duration>) -> Duration {
    samples.sort();
    samples[samples.len() / 2]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn main() {
    // `cargo bench` passes --bench; `cargo test --all-targets` runs bench
    // binaries too, without it, and must not start Home Assistant.
    let args: Vec<String> = std::env::args().collect();
    if !args.iter().any(|a| a == "--bench") {
        return;
    }
    let rounds: usize = args
        .iter()
        .position(|a| a == "--rounds")
        .and_then(|i| args.get(i + 1))
        .map_or(5, |n| n.parse().expect("--rounds N"));
    let dir = RootfsDir::new("vs-check-config-").unwrap();
    large_tree::write_large_config(dir.path());

    // Peak RSS before the timed rounds: the children's maximum only grows, so
    // ours is read before Home Assistant has run.
    timed(ours(dir.path())).expect("hass-config-watcher check fails on the tree");
    let ours_rss = children_peak_rss_mib();
    timed(dir.check_config_command(&[])).expect("Home Assistant's check_config fails on the tree");
    let ha_rss = children_peak_rss_mib();
    let version = home_assistant::version().unwrap();

    let mut our_walls = Vec::new();
    let mut ha_walls = Vec::new();
    for _ in 0..rounds {
        for _ in 0..OURS_PER_ROUND {
            our_walls.push(timed(ours(dir.path())).unwrap());
        }
        ha_walls.push(timed(dir.check_config_command(&[])).expect("check_config failed"));
    }
    let our_median = median(our_walls.clone());
    println!(
        "hass-config-watcher check: median {:.1} ms, min {:.1} ms of {} runs; peak RSS {ours_rss:.1} MiB",
        ms(our_median),
        ms(*our_walls.iter().min().unwrap()),
        our_walls.len()
    );
    let ha_median = median(ha_walls.clone());
    println!(
        "Home Assistant {version} check_config: median {:.0} ms, min {:.0} ms of {} runs; peak RSS {ha_rss:.1} MiB",
        ms(ha_median),
        ms(*ha_walls.iter().min().unwrap()),
        ha_walls.len()
    );
    println!(
        "ratio (Home Assistant / ours): wall {:.0}×, peak RSS {:.1}×",
        ha_median.as_secs_f64() / our_median.as_secs_f64(),
        ha_rss / ours_rss
    );
}

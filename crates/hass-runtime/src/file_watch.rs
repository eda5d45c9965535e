//! Noticing that a few small files changed: their bytes read every
//! `interval` and compared with the last read. Polling, not inotify, because
//! Kubernetes swaps a mounted Secret or ConfigMap by renaming a folder two
//! symlinks away, which a watch on the file itself does not see.

use std::path::PathBuf;
use std::time::Duration;

use crate::shutdown::Shutdown;

/// How long a changed file must read the same before the change counts.
const SETTLE: Duration = Duration::from_millis(50);

/// Calls `changed` each time the content of any of `files` differs from the
/// last look (a file that cannot be read counts as empty of content), until
/// shutdown. A change counts once two looks `SETTLE` apart agree: a file
/// rewritten in place (as `mosquitto_passwd` does) reads half-written in
/// between, and a half-read password file would revoke every user left out.
pub async fn on_change(
    files: Vec<PathBuf>,
    interval: Duration,
    shutdown: Shutdown,
    changed: impl FnMut(),
) {
    let read = || -> Vec<Option<Vec<u8>>> { files.iter().map(|f| std::fs::read(f).ok()).collect() };
    watch(read, interval, &shutdown, changed).await;
}

async fn watch<T: PartialEq>(
    mut read: impl FnMut() -> T,
    interval: Duration,
    shutdown: &Shutdown,
    mut changed: impl FnMut(),
) {
    let mut seen = read();
    while shutdown.sleep(interval).await {
        let mut now = read();
        if now == seen {
            continue;
        }
        loop {
            if !shutdown.sleep(SETTLE).await {
                return;
            }
            let again = read();
            if again == now {
                break;
            }
            now = again;
        }
        // It may have settled back to what it was.
        if now != seen {
            seen = now;
            changed();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::RefCell;

    /// Reads come from a script; the change is reported once the full file
    /// reads the same twice, never for the half-written one between.
    #[tokio::test]
    async fn a_file_read_half_written_counts_only_once_it_settles() {
        let script = [
            "old", "old", "ha", "half", "full", "full", "full", "back", "old", "old",
        ];
        let at = RefCell::new(0usize);
        let reported = RefCell::new(Vec::new());
        let shutdown = Shutdown::new();
        let read = || {
            let mut i = at.borrow_mut();
            let snapshot = script[(*i).min(script.len() - 1)];
            *i += 1;
            if *i >= script.len() + 2 {
                shutdown.trigger();
            }
            snapshot
        };
        watch(read, Duration::from_millis(1), &shutdown, || {
            reported.borrow_mut().push(script[*at.borrow() - 1]);
        })
        .await;
        // "full" once settled; "back" never settles; "old" again does.
        assert_eq!(*reported.borrow(), ["full", "old"]);
    }

    #[tokio::test]
    async fn a_change_of_content_is_seen_once_and_a_rewrite_of_the_same_bytes_not() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("passwords");
        std::fs::write(&file, "a").unwrap();
        let shutdown = Shutdown::new();
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let watcher = tokio::spawn(on_change(
            vec![file.clone(), dir.path().join("absent")],
            Duration::from_millis(10),
            shutdown.clone(),
            move || {
                let _ = tx.send(());
            },
        ));
        // On this one-thread runtime the watcher runs up to its first sleep,
        // having read the files, before the test goes on.
        tokio::task::yield_now().await;
        std::fs::write(&file, "b").unwrap();
        rx.recv().await.unwrap();
        // The same bytes again, then a removal: one more change.
        std::fs::write(&file, "b").unwrap();
        std::fs::remove_file(&file).unwrap();
        rx.recv().await.unwrap();
        shutdown.trigger();
        watcher.await.unwrap();
        assert!(rx.try_recv().is_err(), "nothing else was reported");
    }
}

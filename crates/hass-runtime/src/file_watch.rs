//! Noticing that a few small files changed: their bytes read every
//! `interval` and compared with the last read. Polling, not inotify, because
//! Kubernetes swaps a mounted Secret or ConfigMap by renaming a folder two
//! symlinks away, which a watch on the file itself does not see.

use std::path::PathBuf;
use std::time::Duration;

use crate::shutdown::Shutdown;

/// Calls `changed` each time the content of any of `files` differs from the
/// last look (a file that cannot be read counts as empty of content), until
/// shutdown.
pub async fn on_change(
    files: Vec<PathBuf>,
    interval: Duration,
    shutdown: Shutdown,
    mut changed: impl FnMut(),
) {
    let read = || -> Vec<Option<Vec<u8>>> { files.iter().map(|f| std::fs::read(f).ok()).collect() };
    let mut seen = read();
    while shutdown.sleep(interval).await {
        let now = read();
        if now != seen {
            seen = now;
            changed();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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

//! Filesystem events under the config folder, boiled down to what the watch
//! loop needs: "something relevant changed", "something under
//! `custom_components/` changed", "events were lost, rescan".
//!
//! Events are not queued one by one: the notify callback folds them into one
//! pending summary and wakes the loop, so a storm of writes costs memory of a
//! few counters and can never overflow a queue of ours. The loop revalidates
//! the whole include graph anyway, so which file changed does not matter.
//!
//! Kubernetes ConfigMap and Secret volumes update by writing a new
//! `..<timestamp>` folder and renaming a `..data_tmp` symlink over `..data`;
//! the visible files are symlinks through `..data`, so their own entries never
//! change. Any event on `..data` is therefore a change of every file behind it,
//! which the full revalidation covers.

use std::path::{Component, Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use notify::event::{AccessKind, AccessMode};
use notify::{Event, EventKind as NotifyKind, RecommendedWatcher, RecursiveMode, Watcher};
use tokio::sync::Notify;
use tracing::{debug, warn};

use crate::ignore::IgnoreList;
use crate::watch_metrics::{EventKind, EventLabels, WatchMetrics};

const CUSTOM_COMPONENTS: &str = "custom_components";
const CONFIGMAP_DATA: &str = "..data";
const CONFIGMAP_DATA_TMP: &str = "..data_tmp";

/// What happened since the loop last looked.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Pending {
    /// Relevant events (not ignored, not mere reads).
    pub(crate) relevant: u64,
    /// One of them was under `custom_components/`: Python code needs a restart.
    pub(crate) custom_components: bool,
    /// One of them was a ConfigMap/Secret `..data` swap.
    pub(crate) data_swap: bool,
    /// The kernel dropped events (queue overflow) or a watch could not be set
    /// (inotify limits): only a full rescan can tell what changed.
    pub(crate) overflow: bool,
}

impl Pending {
    pub(crate) fn is_empty(&self) -> bool {
        self.relevant == 0 && !self.overflow
    }
}

/// The shared end the notify callback writes and the loop reads.
#[derive(Debug, Clone)]
pub(crate) struct FsChanges {
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    root: PathBuf,
    ignore: IgnoreList,
    metrics: WatchMetrics,
    pending: Mutex<Pending>,
    wake: Notify,
}

/// Starts a recursive watch of `root`. Dropping the returned watcher stops it.
/// Symlinks are not followed: Home Assistant's `!include_dir_*` does not follow
/// folder symlinks either, and a link to `/` must not make us watch the node.
pub(crate) fn watch(
    root: &Path,
    ignore: IgnoreList,
    metrics: WatchMetrics,
) -> Result<(RecommendedWatcher, FsChanges), notify::Error> {
    let changes = FsChanges {
        shared: Arc::new(Shared {
            root: root.to_owned(),
            ignore,
            metrics,
            pending: Mutex::new(Pending::default()),
            wake: Notify::new(),
        }),
    };
    let handler = changes.clone();
    let mut watcher = RecommendedWatcher::new(
        move |event| handler.handle(event),
        notify::Config::default().with_follow_symlinks(false),
    )?;
    watcher.watch(root, RecursiveMode::Recursive)?;
    Ok((watcher, changes))
}

impl FsChanges {
    /// Completes when something may have been added since the last `take`.
    /// A wake-up sent while nobody waits is kept, so none is lost.
    pub(crate) async fn changed(&self) {
        self.shared.wake.notified().await;
    }

    /// What happened since the last call, and start afresh.
    pub(crate) fn take(&self) -> Pending {
        std::mem::take(&mut *self.lock())
    }

    /// Folds one notify event (or error) into the pending summary.
    pub(crate) fn handle(&self, event: Result<Event, notify::Error>) {
        let event = match event {
            Ok(event) => event,
            Err(error) => {
                // A failed watch on a new folder (inotify's max_user_watches)
                // means events from it will be missing: rescan, and say why.
                warn!("filesystem watch: {error}; rescanning the config folder");
                self.lock().overflow = true;
                self.shared.wake.notify_one();
                return;
            }
        };
        if event.need_rescan() {
            warn!("filesystem events were lost (queue overflow); rescanning the config folder");
            self.lock().overflow = true;
            self.shared.wake.notify_one();
            return;
        }
        // Opening and reading files (our own loader does) changes nothing.
        if matches!(event.kind, NotifyKind::Access(kind) if kind != AccessKind::Close(AccessMode::Write))
        {
            return;
        }
        let mut relevant = false;
        for path in &event.paths {
            let Some(relative) = self.relative(path) else {
                continue;
            };
            if self.shared.ignore.is_ignored(relative) {
                self.count(EventKind::Ignored);
                continue;
            }
            self.count(EventKind::Relevant);
            relevant = true;
            let mut parts = relative.components().filter_map(|c| match c {
                Component::Normal(part) => Some(part),
                _ => None,
            });
            let mut pending = self.lock();
            pending.relevant += 1;
            if parts.clone().next().is_some_and(|p| p == CUSTOM_COMPONENTS) {
                pending.custom_components = true;
            }
            if parts.any(|p| p == CONFIGMAP_DATA || p == CONFIGMAP_DATA_TMP) {
                debug!(path = %relative.display(), "ConfigMap/Secret volume update: every file behind ..data changed");
                pending.data_swap = true;
            }
        }
        if relevant {
            self.shared.wake.notify_one();
        }
    }

    fn relative<'a>(&self, path: &'a Path) -> Option<&'a Path> {
        path.strip_prefix(&self.shared.root).ok()
    }

    fn count(&self, kind: EventKind) {
        self.shared
            .metrics
            .watch_events
            .get_or_create(&EventLabels { kind })
            .inc();
    }

    fn lock(&self) -> MutexGuard<'_, Pending> {
        self.shared
            .pending
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use notify::event::{CreateKind, Flag, ModifyKind, RenameMode};

    fn changes(root: &Path) -> FsChanges {
        let metrics = hass_runtime::metrics::Metrics::new(&hass_runtime::ComponentInfo {
            name: "config-watcher",
            version: "test",
            admin_port: 0,
        });
        FsChanges {
            shared: Arc::new(Shared {
                root: root.to_owned(),
                ignore: IgnoreList::new(&[]).unwrap_or_else(|e| panic!("{e}")),
                metrics: WatchMetrics::register(&metrics),
                pending: Mutex::new(Pending::default()),
                wake: Notify::new(),
            }),
        }
    }

    fn event(kind: NotifyKind, path: &str) -> Result<Event, notify::Error> {
        Ok(Event::new(kind).add_path(PathBuf::from("/config").join(path)))
    }

    #[test]
    fn folds_events_into_one_summary() {
        let c = changes(Path::new("/config"));
        c.handle(event(
            NotifyKind::Modify(ModifyKind::Any),
            "automations.yaml",
        ));
        c.handle(event(
            NotifyKind::Modify(ModifyKind::Any),
            ".storage/core.entity_registry",
        ));
        c.handle(event(
            NotifyKind::Access(AccessKind::Open(notify::event::AccessMode::Any)),
            "scripts.yaml",
        ));
        c.handle(event(
            NotifyKind::Access(AccessKind::Close(AccessMode::Write)),
            "scripts.yaml",
        ));
        assert_eq!(
            c.take(),
            Pending {
                relevant: 2,
                ..Pending::default()
            }
        );
        assert!(c.take().is_empty());
    }

    #[test]
    fn configmap_swap_and_custom_components_are_flagged() {
        let c = changes(Path::new("/config"));
        c.handle(event(NotifyKind::Create(CreateKind::File), "..data_tmp"));
        c.handle(event(
            NotifyKind::Modify(ModifyKind::Name(RenameMode::To)),
            "..data",
        ));
        let pending = c.take();
        assert!(pending.data_swap && !pending.custom_components);
        c.handle(event(
            NotifyKind::Modify(ModifyKind::Any),
            "custom_components/x/__init__.py",
        ));
        c.handle(event(
            NotifyKind::Modify(ModifyKind::Any),
            "custom_components/x/__pycache__/a.pyc",
        ));
        let pending = c.take();
        assert!(pending.custom_components);
        assert_eq!(pending.relevant, 1);
    }

    /// notify reports inotify's IN_Q_OVERFLOW as an event with the Rescan flag.
    #[test]
    fn lost_events_ask_for_a_rescan() {
        let c = changes(Path::new("/config"));
        c.handle(Ok(Event::new(NotifyKind::Other).set_flag(Flag::Rescan)));
        let pending = c.take();
        assert!(pending.overflow && !pending.is_empty());
        c.handle(Err(notify::Error::new(notify::ErrorKind::MaxFilesWatch)));
        assert!(c.take().overflow);
    }
}

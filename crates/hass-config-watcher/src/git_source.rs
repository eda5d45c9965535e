//! The Git source (`source:`): the config folder follows a branch of a Git
//! repository, and a revision reaches `/config` only when the validator finds
//! the folder valid with it.
//!
//! Each new tip of the branch is read from the repository (never checked
//! out), its allowlisted files (the history's allowlist, `secrets.yaml`
//! never) are laid over a copy of the config folder in a scratch folder, and
//! the copy is validated. Invalid: nothing is written, and the revision is
//! reported once with its diagnostics. Valid: each changed file is replaced
//! atomically, and the watcher's own loop sees the writes and reloads the
//! domains that changed, as for any edit.
//!
//! Three-way per file, against the revision applied last (`base`): a file
//! Git did not change is left alone; a file changed both in Git and in the
//! folder (an automation edited in Home Assistant's UI) keeps the folder's
//! version and is reported as a conflict. With no base yet (the first sync)
//! Git's version wins, except for the files Home Assistant's UI writes.
//!
//! The repository is read from a local path: a mirror kept by a fetcher,
//! or a volume. A tip that does not descend from the applied revision (a
//! force-push) is refused unless `allow_force_push`.

use std::collections::{BTreeMap, BTreeSet, HashSet, VecDeque};
use std::fs;
use std::path::{Component, Path, PathBuf};
use std::time::Duration;

use gix::ObjectId;
use gix::objs::tree::EntryKind;
use serde::Deserialize;
use tokio::sync::broadcast;

use hass_runtime::logging::Untrusted;
use hass_runtime::shutdown::Shutdown;
use tracing::{error, info, warn};

use crate::config_files::{self, MAX_FILE_BYTES, OnDisk, shown_paths};
use crate::ha_api::HaApi;
use crate::ignore::IgnoreList;
use crate::reloads::Verdict;
use crate::rollback::{Health, watch_over};
use crate::watch_metrics::{SourceLabels, SourceResult, WatchMetrics};
use crate::watcher::NOTIFICATION_LINES;
use hass_config_check::{Diagnostic, Severity};

/// The persistent notification for refused revisions and conflicts.
const NOTIFICATION_ID: &str = "hass_config_watcher_git_source";

/// Files Home Assistant's UI rewrites: kept when they differ on the first sync.
const UI_WRITTEN: &[&str] = &["automations.yaml", "scripts.yaml", "scenes.yaml"];
/// A revision with more allowlisted bytes than this is refused.
const MAX_REVISION_BYTES: u64 = 64 * 1024 * 1024;
const MAX_FILES: usize = 10_000;
const MAX_DEPTH: usize = 32;
/// How far back the force-push check looks for the applied revision.
const MAX_ANCESTORS: usize = 100_000;
/// The watcher's own state in the config folder (ignored by its watch).
pub(crate) const STATE_DIR: &str = ".hass-config-watcher";
const STATE_FILE: &str = "git-source";

/// `source:` in the watcher's config.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SourceConfig {
    /// The repository: a local path or a `file://` URL; bare or not.
    pub git: String,
    /// The branch to follow.
    #[serde(default = "default_branch")]
    pub branch: String,
    /// The folder inside the repository that holds `configuration.yaml`.
    #[serde(default)]
    pub path: PathBuf,
    /// How often the branch is read.
    #[serde(default = "default_interval", with = "hass_runtime::config::duration")]
    pub interval: Duration,
    /// Apply a tip that does not descend from the revision applied last.
    #[serde(default)]
    pub allow_force_push: bool,
    /// Watch Home Assistant after each revision written, and put back the
    /// files it changed when a reload fails, Home Assistant's check rejects
    /// it, or Home Assistant is not RUNNING within the window of a restart.
    #[serde(default = "yes")]
    pub rollback: bool,
    /// How long to watch; a revision is kept once every reload it caused
    /// succeeded, or when the window ends without a failure.
    #[serde(
        default = "default_rollback_window",
        with = "hass_runtime::config::duration"
    )]
    pub rollback_window: Duration,
}

fn yes() -> bool {
    true
}

fn default_rollback_window() -> Duration {
    Duration::from_secs(120)
}

fn default_branch() -> String {
    "main".to_owned()
}

fn default_interval() -> Duration {
    Duration::from_secs(60)
}

impl SourceConfig {
    /// The checked source, or what is wrong with the config.
    pub(crate) fn check(&self, config_dir: &Path) -> Result<GitSource, String> {
        let repo = match self.git.strip_prefix("file://") {
            Some(path) => PathBuf::from(path),
            None if self.git.contains("://") || self.git.contains('@') => {
                return Err(format!(
                    "git: {:?}: only a local repository (a path or a file:// URL) is read; keep a mirror of the remote there",
                    self.git
                ));
            }
            None => PathBuf::from(&self.git),
        };
        let repo =
            std::path::absolute(&repo).map_err(|e| format!("git: {}: {e}", repo.display()))?;
        if self.branch.is_empty()
            || gix::refs::FullName::try_from(format!("refs/heads/{}", self.branch)).is_err()
        {
            return Err(format!("branch: {:?} is not a branch name", self.branch));
        }
        let plain = self
            .path
            .components()
            .all(|c| matches!(c, Component::Normal(_) | Component::CurDir));
        if !plain {
            return Err(format!(
                "path: {} must be relative, inside the repository",
                self.path.display()
            ));
        }
        if self.interval.is_zero() {
            return Err("interval: must be more than 0s".to_owned());
        }
        if self.rollback && self.rollback_window.is_zero() {
            return Err("rollback_window: must be more than 0s".to_owned());
        }
        Ok(GitSource {
            repo,
            branch: self.branch.clone(),
            path: self
                .path
                .components()
                .filter(|c| matches!(c, Component::Normal(_)))
                .collect(),
            allow_force_push: self.allow_force_push,
            interval: self.interval,
            rollback_window: self.rollback.then_some(self.rollback_window),
            config_dir: config_dir.to_path_buf(),
            refused: None,
        })
    }
}

/// A checked source and what it remembers between polls.
#[derive(Debug)]
pub(crate) struct GitSource {
    repo: PathBuf,
    branch: String,
    path: PathBuf,
    allow_force_push: bool,
    interval: Duration,
    /// None: no rollback.
    rollback_window: Option<Duration>,
    config_dir: PathBuf,
    /// The last tip refused: reported once, not again at every poll.
    refused: Option<ObjectId>,
}

/// What one poll did.
#[derive(Debug)]
pub(crate) enum Outcome {
    /// The tip is the revision applied (or refused) last.
    Unchanged,
    Applied(Applied),
    Refused {
        commit: ObjectId,
        why: Refusal,
    },
}

#[derive(Debug, Default)]
pub(crate) struct Applied {
    pub(crate) commit: Option<ObjectId>,
    /// The revision applied before it.
    previous: Option<ObjectId>,
    pub(crate) written: Vec<PathBuf>,
    pub(crate) removed: Vec<PathBuf>,
    /// Changed on both sides, or not a plain file in the folder: kept.
    pub(crate) conflicts: Vec<PathBuf>,
    /// Each file changed: as it was before, and as the revision made it.
    undo: Vec<(PathBuf, OnDisk, OnDisk)>,
}

/// Why a revision was not applied.
#[derive(Debug)]
pub(crate) enum Refusal {
    /// The folder would not be valid with it: the validator's errors.
    Invalid(Vec<Diagnostic>),
    /// The tip does not descend from the applied revision.
    ForcePushed { applied: ObjectId },
    /// A link, a file too big, a name that is not a plain file name.
    Unsafe(String),
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Refusal::Invalid(diagnostics) => {
                let errors = diagnostics
                    .iter()
                    .filter(|d| d.severity == Severity::Error)
                    .count();
                write!(f, "the config would be invalid ({errors} errors)")
            }
            Refusal::ForcePushed { applied } => write!(
                f,
                "the branch was rewritten: the tip does not descend from the applied revision {applied} (set source.allow_force_push to follow it)"
            ),
            Refusal::Unsafe(why) => f.write_str(why),
        }
    }
}

/// The repository or the folder could not be read or written.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub(crate) struct SourceError(String);

fn fail(what: impl std::fmt::Display, e: impl std::fmt::Display) -> SourceError {
    SourceError(format!("{what}: {e}"))
}

/// One file's fate.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Step {
    Write(Vec<u8>),
    Remove,
    /// Left as it is in the folder, and reported.
    Conflict,
}

impl GitSource {
    /// Reads the branch and applies its tip if it is new and valid. Blocking.
    pub(crate) fn poll(&mut self, ignore: &IgnoreList) -> Result<Outcome, SourceError> {
        let repo = gix::open_opts(&self.repo, gix::open::Options::isolated())
            .map_err(|e| fail(format!("repository {}", self.repo.display()), e))?;
        let name = format!("refs/heads/{}", self.branch);
        let tip = repo
            .find_reference(name.as_str())
            .map_err(|e| fail(format!("branch {}", self.branch), e))?
            .peel_to_id()
            .map_err(|e| fail(format!("branch {}", self.branch), e))?
            .detach();
        let applied = read_state(&self.config_dir);
        let applied_before = applied;
        if Some(tip) == applied || Some(tip) == self.refused {
            return Ok(Outcome::Unchanged);
        }
        let refuse = |this: &mut Self, why: Refusal| {
            this.refused = Some(tip);
            Ok(Outcome::Refused { commit: tip, why })
        };
        if let Some(applied) = applied
            && !self.allow_force_push
            && !descends(&repo, tip, applied)
        {
            return refuse(self, Refusal::ForcePushed { applied });
        }
        let new = match self.files_at(&repo, tip) {
            Ok(files) => files,
            Err(why) => return refuse(self, Refusal::Unsafe(why)),
        };
        // The base may be gone (garbage-collected after a force-push): then
        // this is a first sync again.
        let base = applied.and_then(|id| self.files_at(&repo, id).ok());
        let steps = plan(&self.config_dir, base.as_ref(), &new);
        let diagnostics = self.validate_with(ignore, &steps)?;
        if diagnostics.iter().any(|d| d.severity == Severity::Error) {
            return refuse(self, Refusal::Invalid(diagnostics));
        }
        let mut applied = self.write(tip, steps)?;
        applied.previous = applied_before;
        self.refused = None;
        Ok(Outcome::Applied(applied))
    }

    /// The allowlisted files of `path` at `commit`, or why the revision is
    /// not taken.
    fn files_at(
        &self,
        repo: &gix::Repository,
        commit: ObjectId,
    ) -> Result<BTreeMap<PathBuf, Vec<u8>>, String> {
        let tree = repo
            .find_commit(commit)
            .and_then(|c| c.tree_id().map(gix::Id::detach))
            .map_err(|e| format!("commit {commit}: {e}"))?;
        let tree = if self.path.as_os_str().is_empty() {
            tree
        } else {
            let root = repo.find_tree(tree).map_err(|e| e.to_string())?;
            match root.lookup_entry_by_path(&self.path) {
                Ok(Some(entry)) if entry.mode().is_tree() => entry.object_id(),
                _ => {
                    return Err(format!(
                        "{} is not a folder in commit {commit}",
                        self.path.display()
                    ));
                }
            }
        };
        let mut files = BTreeMap::new();
        let mut total = 0;
        read_tree(repo, tree, Path::new(""), 0, &mut total, &mut files)?;
        Ok(files)
    }

    /// Lays `steps` over a copy of the folder and validates the copy. The
    /// copy is made in the watcher's state folder inside the config folder:
    /// writable whenever a Git source is (the container's root is not), and
    /// ignored by the watch.
    fn validate_with(
        &self,
        ignore: &IgnoreList,
        steps: &BTreeMap<PathBuf, Step>,
    ) -> Result<Vec<Diagnostic>, SourceError> {
        let state = self.config_dir.join(STATE_DIR);
        // Never through a link: the copy holds secrets.yaml.
        match fs::symlink_metadata(&state) {
            Ok(meta) if meta.is_dir() => {}
            Ok(_) => {
                return Err(SourceError(format!(
                    "{STATE_DIR} in the config folder is not a folder"
                )));
            }
            Err(_) => fs::create_dir(&state)
                .map_err(|e| fail(format!("creating {STATE_DIR}"), e.kind()))?,
        }
        // Without the random name in the text: an error said once stays one.
        let scratch = tempfile::Builder::new()
            .prefix("scratch-")
            .tempdir_in(&state)
            .map_err(|e| fail("a scratch folder in the state folder", e.kind()))?;
        let current =
            config_files::read_files(&self.config_dir, ignore, config_files::Keep::Readable)
                .map_err(SourceError)?;
        let copy = |rel: &Path, bytes: &[u8]| -> Result<(), SourceError> {
            let path = scratch.path().join(rel);
            if let Some(parent) = path.parent() {
                fs::create_dir_all(parent).map_err(|e| fail("the scratch copy", e.kind()))?;
            }
            fs::write(&path, bytes).map_err(|e| fail("the scratch copy", e.kind()))
        };
        for (rel, bytes) in &current {
            if !matches!(steps.get(rel), Some(Step::Write(_) | Step::Remove)) {
                copy(rel, bytes)?;
            }
        }
        for (rel, step) in steps {
            if let Step::Write(bytes) = step {
                copy(rel, bytes)?;
            }
        }
        Ok(hass_config_check::load(scratch.path()).diagnostics)
    }

    /// Writes the steps into the folder and records `tip` as applied. A
    /// failure part-way puts back what was already replaced.
    fn write(&self, tip: ObjectId, steps: BTreeMap<PathBuf, Step>) -> Result<Applied, SourceError> {
        let root = &self.config_dir;
        let mut applied = Applied {
            commit: Some(tip),
            ..Applied::default()
        };
        let mut failure = None;
        for (rel, step) in steps {
            let before = config_files::on_disk(root, &rel);
            let (done, after) = match step {
                Step::Write(bytes) => (
                    config_files::write_atomically(root, &rel, &bytes),
                    OnDisk::File(bytes),
                ),
                Step::Remove => (config_files::remove(root, &rel), OnDisk::Missing),
                Step::Conflict => {
                    applied.conflicts.push(rel);
                    continue;
                }
            };
            if let Err(e) = done {
                failure = Some(fail(rel.display(), e));
                break;
            }
            match after {
                OnDisk::File(_) => applied.written.push(rel.clone()),
                _ => applied.removed.push(rel.clone()),
            }
            applied.undo.push((rel, before, after));
        }
        if failure.is_none()
            && let Err(e) = write_state(root, tip)
        {
            failure = Some(e);
        }
        if let Some(failure) = failure {
            for (rel, before, _) in applied.undo.iter().rev() {
                let _ = match before {
                    OnDisk::File(bytes) => config_files::write_atomically(root, rel, bytes),
                    _ => config_files::remove(root, rel),
                };
            }
            return Err(failure);
        }
        Ok(applied)
    }
}

/// Polls the source every `interval` until shutdown, logging and counting
/// what each new revision came to, with a notification in Home Assistant
/// while a revision is refused or a file is in conflict.
pub(crate) async fn keep(
    mut source: GitSource,
    ignore: IgnoreList,
    api: Option<HaApi>,
    mut verdicts: broadcast::Receiver<Verdict>,
    metrics: WatchMetrics,
    shutdown: Shutdown,
) {
    let mut lasting = hass_runtime::logging::LastingError::default();
    loop {
        // Verdicts of changes before this poll are not this revision's.
        while !matches!(
            verdicts.try_recv(),
            Err(broadcast::error::TryRecvError::Empty | broadcast::error::TryRecvError::Closed)
        ) {}
        let ignore = ignore.clone();
        let started = std::time::Instant::now();
        let joined = tokio::task::spawn_blocking(move || {
            let polled = source.poll(&ignore);
            (source, polled)
        })
        .await;
        let polled = match joined {
            Ok((back, polled)) => {
                source = back;
                polled
            }
            Err(e) => {
                error!("git source: the poll task failed, the source is stopped: {e}");
                return;
            }
        };
        let count = |result| {
            metrics
                .source_revisions
                .get_or_create(&SourceLabels { result })
                .inc();
        };
        match polled {
            Ok(Outcome::Unchanged) => {}
            Ok(Outcome::Applied(applied)) => {
                count(SourceResult::Applied);
                metrics
                    .source_last_applied
                    .set(hass_runtime::clock::unix_seconds_f64());
                report_applied(&applied, started.elapsed(), api.as_ref(), &metrics).await;
                lasting.clear();
                if let (Some(window), Some(api)) = (source.rollback_window, &api)
                    && !applied.undo.is_empty()
                {
                    match watch_over(window, &mut verdicts, api, &shutdown).await {
                        Health::Healthy => {
                            info!(commit = ?applied.commit, took = ?started.elapsed(), "git source: Home Assistant took the revision");
                        }
                        Health::ShuttingDown => return,
                        Health::Unhealthy(why) => {
                            let Some(back) = roll_back(source, applied, &why, api, &metrics).await
                            else {
                                return;
                            };
                            source = back;
                        }
                    }
                }
            }
            Ok(Outcome::Refused { commit, why }) => {
                count(SourceResult::Refused);
                report_refused(commit, &why, api.as_ref()).await;
                lasting.clear();
            }
            Err(e) => {
                count(SourceResult::Failed);
                let text = e.to_string();
                if lasting.is_new(&text) {
                    error!("git source: {}", Untrusted(&text));
                }
            }
        }
        if !shutdown.sleep(source.interval).await {
            return;
        }
    }
}

/// Rolls `applied` back and reports it; None when the blocking task failed.
async fn roll_back(
    mut source: GitSource,
    applied: Applied,
    why: &str,
    api: &HaApi,
    metrics: &WatchMetrics,
) -> Option<GitSource> {
    let commit = applied.commit.map(|c| c.to_string()).unwrap_or_default();
    let started = std::time::Instant::now();
    let joined = tokio::task::spawn_blocking(move || {
        let done = source.roll_back(&applied);
        (source, done)
    })
    .await;
    let (source, done) = match joined {
        Ok(back) => back,
        Err(e) => {
            error!("git source: the rollback task failed, the source is stopped: {e}");
            return None;
        }
    };
    metrics
        .source_revisions
        .get_or_create(&SourceLabels {
            result: SourceResult::RolledBack,
        })
        .inc();
    let why = Untrusted(why).to_string();
    let message = match done {
        Ok(restored) => {
            let shown = shown_paths(&restored);
            error!(%commit, restored = ?shown, took = ?started.elapsed(), "git source: revision rolled back: {why}");
            format!(
                "Revision `{commit}` of the Git source was rolled back: {why}. The files it changed are back as they were ({}), and Home Assistant reloads them; the revision is not applied again until a new one is pushed.",
                shown.join(", ")
            )
        }
        Err(e) => {
            error!(%commit, "git source: revision {commit} failed ({why}) and could not be rolled back: {e}");
            format!(
                "Revision `{commit}` of the Git source failed ({why}), and rolling it back failed too: {e}. The config folder needs a look."
            )
        }
    };
    api.notify(
        NOTIFICATION_ID,
        "Git source: revision rolled back",
        &message,
    )
    .await;
    Some(source)
}

async fn report_applied(
    applied: &Applied,
    took: Duration,
    api: Option<&HaApi>,
    metrics: &WatchMetrics,
) {
    let commit = applied.commit.map(|c| c.to_string()).unwrap_or_default();
    info!(
        %commit,
        written = ?shown_paths(&applied.written),
        removed = ?shown_paths(&applied.removed),
        ?took,
        "git source: revision applied"
    );
    for path in shown_paths(&applied.conflicts) {
        metrics.source_conflicts.inc();
        warn!(%commit, "git source: {path} changed both in Git and in the folder (or is not a plain file there): the folder's version is kept");
    }
    let Some(api) = api else {
        return;
    };
    if applied.conflicts.is_empty() {
        api.dismiss(NOTIFICATION_ID).await;
        return;
    }
    let message = format!(
        "Revision `{commit}` of the Git source is applied, except for these files, which were changed both in Git and in the config folder (an edit in Home Assistant's UI, say). The folder's versions are kept and recorded in the history; bring Git in line with them to resolve this.\n\n{}",
        shown_paths(&applied.conflicts)
            .iter()
            .map(|p| format!("- `{p}`"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    api.notify(NOTIFICATION_ID, "Git source: files in conflict", &message)
        .await;
}

async fn report_refused(commit: ObjectId, why: &Refusal, api: Option<&HaApi>) {
    error!(%commit, "git source: revision refused, nothing written: {}", Untrusted(&why.to_string()));
    let mut lines = Vec::new();
    if let Refusal::Invalid(diagnostics) = why {
        for d in diagnostics.iter().filter(|d| d.severity == Severity::Error) {
            let shown = Untrusted(&d.to_string()).to_string();
            error!(%commit, "{shown}");
            if lines.len() < NOTIFICATION_LINES {
                lines.push(format!("- `{shown}`"));
            }
        }
    }
    let Some(api) = api else {
        return;
    };
    let message = format!(
        "Revision `{commit}` of the Git source was not applied and nothing in the config folder changed: {}.\n\n{}",
        Untrusted(&why.to_string()),
        lines.join("\n")
    );
    api.notify(NOTIFICATION_ID, "Git source: revision refused", &message)
        .await;
}

impl GitSource {
    /// Puts back the files `applied` changed, each only if it is still as
    /// the revision left it, and makes the revision before it the applied
    /// one again; the revision is not taken again. Returns the files put back.
    pub(crate) fn roll_back(&mut self, applied: &Applied) -> Result<Vec<PathBuf>, SourceError> {
        let root = &self.config_dir;
        let mut restored = Vec::new();
        for (rel, before, after) in applied.undo.iter().rev() {
            if config_files::on_disk(root, rel) != *after {
                // Changed since: someone else's now.
                continue;
            }
            match before {
                OnDisk::File(bytes) => config_files::write_atomically(root, rel, bytes),
                _ => config_files::remove(root, rel),
            }
            .map_err(|e| fail(rel.display(), e))?;
            restored.push(rel.clone());
        }
        match applied.previous {
            Some(previous) => write_state(root, previous)?,
            None => {
                let state = root.join(STATE_DIR).join(STATE_FILE);
                fs::remove_file(&state).map_err(|e| fail(state.display(), e))?;
            }
        }
        self.refused = applied.commit;
        Ok(restored)
    }
}

/// Adds the allowlisted blobs of `tree` under `rel`, refusing what cannot be
/// written safely as a plain file of bounded size.
fn read_tree(
    repo: &gix::Repository,
    tree: ObjectId,
    rel: &Path,
    depth: usize,
    total: &mut u64,
    files: &mut BTreeMap<PathBuf, Vec<u8>>,
) -> Result<(), String> {
    if depth > MAX_DEPTH {
        return Err(format!("{}: folders nested too deep", rel.display()));
    }
    let tree = repo.find_tree(tree).map_err(|e| e.to_string())?;
    let decoded = tree.decode().map_err(|e| e.to_string())?;
    for entry in &decoded.entries {
        let name = std::str::from_utf8(entry.filename)
            .ok()
            .filter(|n| plain_name(n))
            .ok_or_else(|| {
                format!(
                    "{}: a name that is not a plain file name ({:?})",
                    rel.display(),
                    entry.filename
                )
            })?;
        let path = rel.join(name);
        match entry.mode.kind() {
            EntryKind::Tree => {
                read_tree(repo, entry.oid.to_owned(), &path, depth + 1, total, files)?;
            }
            // Submodules are another repository's business.
            EntryKind::Commit => {}
            EntryKind::Link => {
                if config_files::is_allowlisted(&path, false) {
                    return Err(format!(
                        "{}: a symbolic link; the Git source writes only plain files",
                        path.display()
                    ));
                }
            }
            EntryKind::Blob | EntryKind::BlobExecutable => {
                if !config_files::is_allowlisted(&path, false) {
                    continue;
                }
                let size = repo
                    .find_header(entry.oid)
                    .map_err(|e| e.to_string())?
                    .size();
                if size > MAX_FILE_BYTES {
                    return Err(format!(
                        "{}: {size} bytes, more than the {MAX_FILE_BYTES} a config file may have",
                        path.display()
                    ));
                }
                *total += size;
                if *total > MAX_REVISION_BYTES || files.len() >= MAX_FILES {
                    return Err(format!(
                        "more than {MAX_FILES} files or {MAX_REVISION_BYTES} bytes of configuration"
                    ));
                }
                let blob = repo.find_blob(entry.oid).map_err(|e| e.to_string())?;
                files.insert(path, blob.data.clone());
            }
        }
    }
    Ok(())
}

/// A name that is one plain path part on every system Home Assistant runs on.
fn plain_name(name: &str) -> bool {
    !name.is_empty()
        && name != "."
        && name != ".."
        && !name.eq_ignore_ascii_case(".git")
        && !name.contains(['/', '\\'])
        && !name.chars().any(char::is_control)
}

/// Whether `ancestor` is `tip` or one of its ancestors (within
/// [`MAX_ANCESTORS`] commits).
fn descends(repo: &gix::Repository, tip: ObjectId, ancestor: ObjectId) -> bool {
    let mut seen = HashSet::new();
    let mut queue = VecDeque::from([tip]);
    while let Some(id) = queue.pop_front() {
        if id == ancestor {
            return true;
        }
        if !seen.insert(id) || seen.len() > MAX_ANCESTORS {
            continue;
        }
        if let Ok(commit) = repo.find_commit(id) {
            queue.extend(commit.parent_ids().map(gix::Id::detach));
        }
    }
    false
}

/// Each file's fate: `base` is the revision applied last (None: first sync),
/// `new` the tip's files, compared with the folder now.
fn plan(
    root: &Path,
    base: Option<&BTreeMap<PathBuf, Vec<u8>>>,
    new: &BTreeMap<PathBuf, Vec<u8>>,
) -> BTreeMap<PathBuf, Step> {
    let mut paths: BTreeSet<&PathBuf> = new.keys().collect();
    if let Some(base) = base {
        paths.extend(base.keys());
    }
    let mut steps = BTreeMap::new();
    for rel in paths {
        let local = config_files::on_disk(root, rel);
        let base_file = base.map(|b| b.get(rel).map(Vec::as_slice));
        let ui_written = UI_WRITTEN.iter().any(|f| Path::new(f) == rel);
        if let Some(step) = decide(
            base_file,
            new.get(rel).map(Vec::as_slice),
            &local,
            ui_written,
        ) {
            steps.insert(rel.clone(), step);
        }
    }
    steps
}

/// One file's three-way decision. `base`: None when there is no applied
/// revision, Some(None) when the applied revision did not have the file.
fn decide(
    base: Option<Option<&[u8]>>,
    new: Option<&[u8]>,
    local: &OnDisk,
    ui_written: bool,
) -> Option<Step> {
    if base == Some(new) {
        // Git did not change it: whatever the folder has stays.
        return None;
    }
    let local_is = |want: Option<&[u8]>| match (local, want) {
        (OnDisk::Missing, None) => true,
        (OnDisk::File(have), Some(want)) => have == want,
        _ => false,
    };
    if local_is(new) {
        return None;
    }
    let change = match new {
        Some(bytes) => Step::Write(bytes.to_vec()),
        None => Step::Remove,
    };
    match (base, local) {
        (_, OnDisk::Other) => Some(Step::Conflict),
        (Some(base), _) if local_is(base) => Some(change),
        (Some(_), _) => Some(Step::Conflict),
        // First sync: never delete what Git never had, keep the UI's files.
        (None, _) if new.is_none() => None,
        (None, OnDisk::File(_)) if ui_written => Some(Step::Conflict),
        (None, _) => Some(change),
    }
}

/// The revision applied last, from the state file.
fn read_state(config_dir: &Path) -> Option<ObjectId> {
    let text = fs::read_to_string(config_dir.join(STATE_DIR).join(STATE_FILE)).ok()?;
    let hex = text.strip_prefix("applied ")?.trim();
    ObjectId::from_hex(hex.as_bytes()).ok()
}

fn write_state(config_dir: &Path, commit: ObjectId) -> Result<(), SourceError> {
    let rel = Path::new(STATE_DIR).join(STATE_FILE);
    config_files::write_atomically(config_dir, &rel, format!("applied {commit}\n").as_bytes())
        .map_err(|e| fail(rel.display(), e))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// (base, new, local, ui_written) → step
    type Case = (
        Option<Option<&'static [u8]>>,
        Option<&'static [u8]>,
        OnDisk,
        bool,
        Option<Step>,
    );

    #[test]
    fn three_way_decisions() {
        let f = |s: &'static str| OnDisk::File(s.as_bytes().to_vec());
        let b = |s: &'static str| Some(s.as_bytes());
        let write = |s: &'static str| Some(Step::Write(s.as_bytes().to_vec()));
        let cases: Vec<Case> = vec![
            // Git unchanged: the folder's edit stays.
            (Some(b("a")), b("a"), f("edited"), false, None),
            // Git changed, folder as applied: written.
            (Some(b("a")), b("b"), f("a"), false, write("b")),
            // Git changed, folder changed too: conflict, folder kept.
            (
                Some(b("a")),
                b("b"),
                f("edited"),
                true,
                Some(Step::Conflict),
            ),
            // Both made the same change: nothing to do.
            (Some(b("a")), b("b"), f("b"), false, None),
            // Added in Git.
            (Some(None), b("new"), OnDisk::Missing, false, write("new")),
            // Deleted in Git, untouched in the folder: removed.
            (Some(b("a")), None, f("a"), false, Some(Step::Remove)),
            // Deleted in Git, edited in the folder: conflict.
            (Some(b("a")), None, f("edited"), false, Some(Step::Conflict)),
            // Deleted on both sides.
            (Some(b("a")), None, OnDisk::Missing, false, None),
            // A link or folder in the way is never replaced.
            (
                Some(b("a")),
                b("b"),
                OnDisk::Other,
                false,
                Some(Step::Conflict),
            ),
            // First sync: Git wins, except over the UI's own files.
            (None, b("git"), f("old"), false, write("git")),
            (None, b("git"), f("ui"), true, Some(Step::Conflict)),
            (None, b("git"), OnDisk::Missing, true, write("git")),
            (None, None, f("local only"), false, None),
        ];
        for (i, (base, new, local, ui, expected)) in cases.into_iter().enumerate() {
            assert_eq!(decide(base, new, &local, ui), expected, "case {i}");
        }
    }

    #[test]
    fn names() {
        for ok in ["configuration.yaml", ".hidden", "a b.yaml"] {
            assert!(plain_name(ok), "{ok}");
        }
        for bad in ["", ".", "..", ".git", ".GIT", "a\\b", "a\0b", "a\nb.yaml"] {
            assert!(!plain_name(bad), "{bad:?}");
        }
    }
}

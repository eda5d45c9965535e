//! One fetch of the branch into the bare mirror, blocking, watched by a
//! thread that abandons it past its time or its bytes.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use gix::ObjectId;
use gix::remote::Direction;
use secrecy::{ExposeSecret, SecretString};

/// What a fetch did to the mirror's branch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Fetched {
    Updated {
        from: Option<ObjectId>,
        to: ObjectId,
    },
    Unchanged(ObjectId),
}

/// Why a fetch failed; the text names no credential.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub(crate) struct FetchError(pub(crate) String);

/// `what: error: its source: …`, the whole chain: gix's top-level errors
/// ("Failed to list references") say little without their causes.
fn fail(what: &str, e: impl std::error::Error) -> FetchError {
    let mut text = format!("{what}: {e}");
    let mut source = e.source();
    while let Some(cause) = source {
        text.push_str(&format!(": {cause}"));
        source = cause.source();
    }
    FetchError(text)
}

/// One fetch's inputs.
pub(crate) struct Fetch<'a> {
    pub(crate) remote: &'a str,
    pub(crate) branch: &'a str,
    pub(crate) mirror: &'a Path,
    pub(crate) username: &'a str,
    pub(crate) token: Option<SecretString>,
    pub(crate) timeout: Duration,
    pub(crate) max_bytes: u64,
    /// Set at shutdown: the fetch stops at its next read.
    pub(crate) shutdown: &'a AtomicBool,
}

impl Fetch<'_> {
    /// Fetches `branch` into the mirror's `refs/heads/<branch>`, forced.
    pub(crate) fn run(&self) -> Result<Fetched, FetchError> {
        let repo = open_or_init(self.mirror)?;
        let name = format!("refs/heads/{}", self.branch);
        let before = tip(&repo, &name);
        let size_before = folder_bytes(&self.mirror.join("objects"));
        let interrupt = AtomicBool::new(false);
        let done = AtomicBool::new(false);
        let mut abandoned: Option<String> = None;
        let fetched = std::thread::scope(|scope| {
            let watchdog = scope.spawn(|| {
                let started = Instant::now();
                while !done.load(Ordering::Relaxed) {
                    std::thread::sleep(Duration::from_millis(100));
                    let why = if self.shutdown.load(Ordering::Relaxed) {
                        Some("shutting down".to_owned())
                    } else if started.elapsed() > self.timeout {
                        Some(format!(
                            "still running after {}",
                            humantime::format_duration(self.timeout)
                        ))
                    } else if folder_bytes(&self.mirror.join("objects")).saturating_sub(size_before)
                        > self.max_bytes
                    {
                        Some(format!("more than {} bytes received", self.max_bytes))
                    } else {
                        None
                    };
                    if why.is_some() {
                        interrupt.store(true, Ordering::Relaxed);
                        return why;
                    }
                }
                None
            });
            let fetched = self.receive(&repo, &name, &interrupt);
            done.store(true, Ordering::Relaxed);
            abandoned = watchdog.join().unwrap_or(None);
            fetched
        });
        if let Some(why) = abandoned {
            return Err(FetchError(format!("fetch abandoned: {why}")));
        }
        fetched?;
        let after = tip(&repo, &name)
            .ok_or_else(|| FetchError(format!("the remote has no branch {}", self.branch)))?;
        Ok(if before == Some(after) {
            Fetched::Unchanged(after)
        } else {
            Fetched::Updated {
                from: before,
                to: after,
            }
        })
    }

    fn receive(
        &self,
        repo: &gix::Repository,
        name: &str,
        interrupt: &AtomicBool,
    ) -> Result<(), FetchError> {
        let spec = format!("+{name}:{name}");
        let remote = repo
            .remote_at(self.remote)
            .map_err(|e| fail("remote", e))?
            .with_refspecs([spec.as_str()], Direction::Fetch)
            .map_err(|e| fail("refspec", e))?;
        let connection = remote
            .connect(Direction::Fetch)
            .map_err(|e| fail("connecting", e))?;
        let token = self.token.clone();
        let username = self.username.to_owned();
        // The token is offered for this remote only, and never stored.
        let connection = connection.with_credentials(move |action| match action {
            gix::credentials::helper::Action::Get(context) => {
                Ok(token
                    .as_ref()
                    .map(|token| gix::credentials::protocol::Outcome {
                        identity: gix::sec::identity::Account {
                            username: username.clone(),
                            password: token.expose_secret().to_owned(),
                            oauth_refresh_token: None,
                        },
                        next: context.into(),
                    }))
            }
            _ => Ok(None),
        });
        connection
            .prepare_fetch(gix::progress::Discard, Default::default())
            .map_err(|e| fail("fetching", e))?
            .receive(gix::progress::Discard, interrupt)
            .map_err(|e| fail("fetching", e))?;
        Ok(())
    }
}

/// Opens the mirror, creating it as a bare repository on first use; the
/// user's and the system's git config never apply.
fn open_or_init(mirror: &Path) -> Result<gix::Repository, FetchError> {
    let shown = mirror.display().to_string();
    if !mirror.join("HEAD").is_file() {
        std::fs::create_dir_all(mirror).map_err(|e| fail(&shown, e))?;
        gix::init_bare(mirror).map_err(|e| fail(&shown, e))?;
    }
    gix::open_opts(mirror, gix::open::Options::isolated()).map_err(|e| fail(&shown, e))
}

fn tip(repo: &gix::Repository, name: &str) -> Option<ObjectId> {
    let mut reference = repo.find_reference(name).ok()?;
    reference.peel_to_id().ok().map(gix::Id::detach)
}

/// Bytes in the files under `dir`, links not followed.
fn folder_bytes(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|entry| match entry.file_type() {
            Ok(kind) if kind.is_dir() => folder_bytes(&entry.path()),
            Ok(kind) if kind.is_file() => entry.metadata().map(|m| m.len()).unwrap_or(0),
            _ => 0,
        })
        .sum()
}

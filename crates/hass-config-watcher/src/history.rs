//! History: every valid config becomes a git commit, written with gitoxide
//! (the container has no git binary). The repository is either the config
//! folder itself (`/config/.git`, with an index so `git status` there is
//! clean) or a separate bare repository (`history.repo`), which keeps
//! `/config` free of a `.git` Home Assistant's own backups would then carry.
//!
//! What is committed is an allowlist, the same one the `.gitignore` written
//! beside it spells out for the git command line: YAML anywhere, everything
//! under `blueprints/` and `custom_templates/`; never Home Assistant's churn
//! (`.storage/`, databases, logs, `deps/`…), dot-entries (ConfigMap's
//! `..data` internals among them) or, unless configured, `secrets.yaml`.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use gix::ObjectId;
use gix::bstr::BString;
use gix::objs::tree::{Entry, EntryKind};

use crate::config_files::{Keep, read_files};
use crate::ignore::IgnoreList;

const GITIGNORE: &str = ".gitignore";
const AUTHOR: &str = "hass-config-watcher";
const EMAIL: &str = "hass-config-watcher@localhost";

/// Something went wrong reading the config folder or writing the repository.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct HistoryError(String);

fn fail(what: impl std::fmt::Display, e: impl std::fmt::Display) -> HistoryError {
    HistoryError(format!("{what}: {e}"))
}

/// The history repository of one config folder. It holds paths, not an open
/// `gix::Repository`: without gix's `parallel` feature (threads and locks this
/// tool does not need) that one is not `Send`, and opening it again for each
/// commit costs a few file reads.
#[derive(Debug)]
pub struct History {
    config_dir: PathBuf,
    /// The git dir of a separate repository; None: `config_dir/.git`.
    repo_dir: Option<PathBuf>,
    /// The repository is `config_dir/.git`: keep its index in step.
    in_place: bool,
    include_secrets: bool,
    ignore: IgnoreList,
}

/// What [`History::commit`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Committed {
    /// A new commit with this id.
    New(ObjectId),
    /// The allowlisted files are as the last commit has them.
    Unchanged,
}

impl History {
    /// Opens the repository, creating it on first use: `repo` is a bare
    /// repository of its own, `None` means `config_dir/.git`. Writes the
    /// allowlist `.gitignore` into `config_dir` when the repository lives
    /// there and the folder has none.
    pub fn open(
        config_dir: &Path,
        repo: Option<&Path>,
        include_secrets: bool,
    ) -> Result<Self, HistoryError> {
        let in_place = match repo {
            Some(dir) => {
                if dir.join("HEAD").is_file() {
                    gix::open(dir).map_err(|e| fail(dir.display(), e))?;
                } else {
                    fs::create_dir_all(dir).map_err(|e| fail(dir.display(), e))?;
                    gix::init_bare(dir).map_err(|e| fail(dir.display(), e))?;
                }
                false
            }
            None => {
                let git_dir = config_dir.join(".git");
                match fs::symlink_metadata(&git_dir) {
                    Ok(meta) if meta.file_type().is_symlink() => {
                        return Err(HistoryError(format!(
                            "{} is a link: the history repository must live in the config folder",
                            git_dir.display()
                        )));
                    }
                    Ok(_) => {
                        gix::open(config_dir).map_err(|e| fail(git_dir.display(), e))?;
                    }
                    Err(_) => {
                        gix::init(config_dir).map_err(|e| fail(git_dir.display(), e))?;
                    }
                }
                write_gitignore(&config_dir.join(GITIGNORE), include_secrets)?;
                true
            }
        };
        let ignore = IgnoreList::new(&[]).map_err(|e| fail("ignore list", e))?;
        Ok(Self {
            config_dir: config_dir.to_path_buf(),
            repo_dir: repo.map(Path::to_path_buf),
            in_place,
            include_secrets,
            ignore,
        })
    }

    /// Commits the allowlisted files as they are on disk now, unless they
    /// equal the last commit's.
    pub fn commit(&self, message: &str) -> Result<Committed, HistoryError> {
        let repo = self.repo()?;
        let keep = Keep::Allowlist {
            include_secrets: self.include_secrets,
            gitignore: self.in_place,
        };
        let mut files = read_files(&self.config_dir, &self.ignore, keep).map_err(HistoryError)?;
        if !self.in_place {
            // A bare repository has no folder to hold the allowlist: it is
            // committed so a clone explains itself.
            files.insert(
                PathBuf::from(GITIGNORE),
                gitignore_text(self.include_secrets).into_bytes(),
            );
        }
        let tree = write_tree(&repo, &files)?;
        let parent = match repo.head_id() {
            Ok(id) => Some(id.detach()),
            // No commit yet: an unborn HEAD.
            Err(_) => None,
        };
        if let Some(parent) = parent {
            let parent_tree = repo
                .find_commit(parent)
                .and_then(|c| c.tree_id().map(gix::Id::detach))
                .map_err(|e| fail("reading the last commit", e))?;
            if parent_tree == tree {
                return Ok(Committed::Unchanged);
            }
        }
        let time = format!("{} +0000", unix_now());
        let signature = gix::actor::SignatureRef {
            name: AUTHOR.into(),
            email: EMAIL.into(),
            time: &time,
        };
        let id = repo
            .commit_as(signature, signature, "HEAD", message, tree, parent)
            .map_err(|e| fail("writing the commit", e))?
            .detach();
        if self.in_place {
            let mut index = repo
                .index_from_tree(&tree)
                .map_err(|e| fail("building the index", e))?;
            index
                .write(gix::index::write::Options::default())
                .map_err(|e| fail("writing the index", e))?;
        }
        Ok(Committed::New(id))
    }

    /// Opens the repository.
    pub fn repo(&self) -> Result<gix::Repository, HistoryError> {
        let dir = self.repo_dir.as_deref().unwrap_or(&self.config_dir);
        gix::open(dir).map_err(|e| fail(dir.display(), e))
    }
}

/// Writes blobs and trees for `files` (paths relative to the config folder)
/// and returns the root tree's id.
fn write_tree(
    repo: &gix::Repository,
    files: &BTreeMap<PathBuf, Vec<u8>>,
) -> Result<ObjectId, HistoryError> {
    {
        #[derive(Default)]
        struct Folder {
            files: BTreeMap<BString, ObjectId>,
            folders: BTreeMap<BString, Folder>,
        }
        let mut root = Folder::default();
        for (path, bytes) in files {
            let blob = repo
                .write_blob(bytes)
                .map_err(|e| fail(path.display(), e))?
                .detach();
            let mut parts: Vec<BString> = path
                .iter()
                .map(|p| BString::from(p.as_encoded_bytes()))
                .collect();
            let Some(name) = parts.pop() else {
                continue;
            };
            let mut folder = &mut root;
            for part in parts {
                folder = folder.folders.entry(part).or_default();
            }
            folder.files.insert(name, blob);
        }
        fn write(repo: &gix::Repository, folder: Folder) -> Result<ObjectId, HistoryError> {
            let mut entries = Vec::new();
            for (name, sub) in folder.folders {
                let oid = write(repo, sub)?;
                entries.push(Entry {
                    mode: EntryKind::Tree.into(),
                    filename: name,
                    oid,
                });
            }
            for (name, oid) in folder.files {
                entries.push(Entry {
                    mode: EntryKind::Blob.into(),
                    filename: name,
                    oid,
                });
            }
            // Git's order: folders sort as if their name ended in '/'.
            entries.sort();
            let tree = gix::objs::Tree { entries };
            Ok(repo
                .write_object(&tree)
                .map_err(|e| fail("writing a tree", e))?
                .detach())
        }
        write(repo, root)
    }
}

/// Writes the allowlist `.gitignore` unless something is already there: a
/// file of the user's, or a link, dangling or not, which is never followed
/// (writing through `.gitignore -> /elsewhere` would create a file there).
fn write_gitignore(path: &Path, include_secrets: bool) -> Result<(), HistoryError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let created = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path);
    match created {
        Ok(mut file) => file
            .write_all(gitignore_text(include_secrets).as_bytes())
            .map_err(|e| fail(path.display(), e)),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(fail(path.display(), e)),
    }
}

/// The `.gitignore` that says, for the git command line, what [`History`]
/// commits.
pub fn gitignore_text(include_secrets: bool) -> String {
    let mut text = String::from(
        "# Written by hass-config-watcher: an allowlist. Everything is ignored\n\
         # except YAML, blueprints and custom templates.\n\
         *\n\
         !/.gitignore\n\
         !*/\n\
         !*.yaml\n\
         !/blueprints/**\n\
         !/custom_templates/**\n\
         # Home Assistant's own state, databases, logs and caches.\n\
         .*\n\
         !/.gitignore\n\
         /deps/\n\
         /tts/\n\
         /backups/\n\
         __pycache__/\n\
         *.db\n\
         *.db-*\n\
         *.log\n\
         *.log.*\n",
    );
    if !include_secrets {
        text.push_str("secrets.yaml\n");
    }
    text
}

fn unix_now() -> u64 {
    hass_runtime::clock::unix_seconds()
}

//! Loading a whole config folder as Home Assistant does at startup:
//! `configuration.yaml` with everything it includes, top-level values made mappings,
//! packages merged; blueprints checked on the side.

use std::fs;
use std::panic::{self, AssertUnwindSafe};
use std::path::{Path, PathBuf};

use crate::diagnostic::{Diagnostic, Severity};
use crate::loader::{Loaded, Loader, Rules};
use crate::packages::{self, domain_key};
use crate::value::{Mapping, Node, Value};
use crate::yaml::Pos;

pub const CONFIG_FILE: &str = "configuration.yaml";
const BLUEPRINT_FOLDER: &str = "blueprints";

/// The result of checking a config folder.
#[derive(Debug)]
pub struct Checked {
    /// The config Home Assistant would see, by top-level key (domain), packages
    /// merged in. None when there is any error.
    pub config: Option<Mapping>,
    /// Every problem, in the order Home Assistant's loader meets them.
    pub diagnostics: Vec<Diagnostic>,
    /// Every file read, as it was named when included (not resolved through symlinks).
    pub files: Vec<PathBuf>,
    /// Every folder listed by an `!include_dir_*` tag or the blueprint scan.
    pub dirs: Vec<PathBuf>,
}

impl Checked {
    pub fn has_errors(&self) -> bool {
        self.diagnostics
            .iter()
            .any(|d| d.severity == Severity::Error)
    }
}

/// The loader's stack: reserved address space, committed only as deep
/// includes and aliases use it.
const LOADER_STACK: usize = 256 * 1024 * 1024;

/// Loads and checks the config folder `root`. Never panics on what it reads.
pub fn load(root: &Path) -> Checked {
    let root = std::path::absolute(root).unwrap_or_else(|_| root.to_path_buf());
    // Includes and aliases nest the loader's recursion: it runs on a stack of its
    // own, whatever thread called us (test threads have small stacks). The same
    // thread, not a new one: a new thread's malloc arena grows a page at a time
    // (an mprotect each), which cost a fifth of a large check.
    let loaded = panic::catch_unwind(AssertUnwindSafe(|| {
        stacker::grow(LOADER_STACK, || load_on_this_thread(root))
    }));
    match loaded {
        Ok(checked) => checked,
        _ => Checked {
            config: None,
            diagnostics: vec![Diagnostic {
                file: PathBuf::from(CONFIG_FILE),
                line: 1,
                column: 1,
                severity: Severity::Error,
                message: "internal error: the config loader failed; please report this".to_owned(),
            }],
            files: Vec::new(),
            dirs: Vec::new(),
        },
    }
}

fn load_on_this_thread(root: PathBuf) -> Checked {
    let mut loader = Loader::new(root.clone());
    let config = load_configuration(&mut loader);
    check_blueprints(&mut loader);
    let has_errors = loader
        .diagnostics
        .iter()
        .any(|d| d.severity == Severity::Error);
    Checked {
        config: config.filter(|_| !has_errors),
        diagnostics: loader.diagnostics,
        files: loader.files,
        dirs: loader.dirs,
    }
}

fn load_configuration(loader: &mut Loader) -> Option<Mapping> {
    let path = loader.root().join(CONFIG_FILE);
    if !path.is_file() {
        let message = "File configuration.yaml not found.".to_owned();
        loader.report(Path::new(CONFIG_FILE), Pos::START, Severity::Error, message);
        return None;
    }
    let rules = Rules {
        secrets: true,
        inputs: false,
    };
    let mut config = match loader.load_file(&path, rules, None) {
        Loaded::Node(Node {
            value: Value::Map(config),
            ..
        }) => config,
        Loaded::Empty => Mapping::new(),
        Loaded::Node(node) => {
            loader.error_at(
                &node.origin,
                "The configuration file configuration.yaml does not contain a dictionary"
                    .to_owned(),
            );
            return None;
        }
        Loaded::Failed => return None,
    };
    // load_yaml_config_file: `conf_dict[key] = value or {}`.
    for value in config.values_mut() {
        if !value.value.is_truthy() {
            value.value = Value::Map(Mapping::new());
        }
    }
    let invalid: Vec<_> = config
        .iter()
        .filter(|(key, _)| domain_key(&key.value).is_none())
        .map(|(key, _)| key.clone())
        .collect();
    for key in invalid {
        let message = format!("Invalid domain '{}'", key.value.key_text());
        loader.error_at(&key.origin, message);
    }
    packages::merge_packages(&mut config, loader);
    Some(config)
}

/// Blueprints (`blueprints/<domain>/**/*.yaml`) are loaded without secrets, may use
/// `!input`, and must each be a mapping (`load_yaml_dict`).
fn check_blueprints(loader: &mut Loader) {
    let folder = loader.root().join(BLUEPRINT_FOLDER);
    if !folder.is_dir() {
        return;
    }
    let rules = Rules {
        secrets: false,
        inputs: true,
    };
    let mut pending = vec![folder];
    let mut files = Vec::new();
    while let Some(dir) = pending.pop() {
        let Ok(entries) = fs::read_dir(&dir) else {
            continue;
        };
        loader.dirs.push(dir.clone());
        let mut paths: Vec<PathBuf> = entries.filter_map(|e| e.ok().map(|e| e.path())).collect();
        paths.sort();
        for path in paths.into_iter().rev() {
            let hidden = path
                .file_name()
                .is_some_and(|n| n.as_encoded_bytes().starts_with(b"."));
            if hidden {
                continue;
            }
            if path.is_dir() {
                if !path.is_symlink() {
                    pending.push(path);
                }
            } else if path.as_os_str().as_encoded_bytes().ends_with(b".yaml") {
                files.push(path);
            }
        }
    }
    files.sort();
    for path in files {
        if let Loaded::Node(node) = loader.load_file(&path, rules, None)
            && !matches!(node.value, Value::Map(_))
        {
            let message = format!(
                "YAML file {} does not contain a dict",
                loader.display(&path).display()
            );
            loader.error_at(&node.origin, message);
        }
    }
}

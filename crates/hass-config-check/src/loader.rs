//! Reads YAML files the way `homeassistant/util/yaml/loader.py` does: the
//! `!include*`, `!secret`, `!env_var` and `!input` tags, merge keys, duplicate keys,
//! and what an empty or missing file becomes. Every problem becomes a diagnostic and
//! loading carries on, so one run reports all of them.

use std::collections::HashMap;
use std::fs;
use std::io::{self, Read};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::diagnostic::{Diagnostic, Severity};
use crate::parse_ahead::ParseAhead;
use crate::scalar::{self, CORE_TAG_PREFIX, Plain};
use crate::secrets::{self, SECRETS_FILE, SecretsCache, SecretsFile};
use crate::value::{KeyId, Mapping, Node, Origin, Secret, SecretSource, Set, Value};
use crate::yaml::{self, Pos, SyntaxError, YamlKind, YamlNode};

/// Config files are small; anything bigger is a mistake, not something to parse.
const MAX_FILE_BYTES: u64 = 32 * 1024 * 1024;
/// Bytes of values built in one load, aliases expanded (each value's text
/// plus [`VALUE_BYTES`]): stops "billion laughs" documents and a long string
/// aliased hundreds of times before they allocate, and lets through a large
/// plain config (a 31 MB automations file builds to about 100 MB).
const MAX_EXPANDED_BYTES: usize = 256 * 1024 * 1024;
/// What one built value costs besides its text.
const VALUE_BYTES: usize = 48;
/// Nesting across includes and aliases; Python's recursion limit stops HA sooner.
const MAX_NESTING: usize = 1000;

/// Which of the loader's tags a file may use.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Rules {
    /// False in `secrets.yaml` and blueprints, which Home Assistant loads without secrets.
    pub(crate) secrets: bool,
    /// Only blueprints may hold `!input` placeholders.
    pub(crate) inputs: bool,
}

/// The outcome of loading one file, as Home Assistant's `load_yaml` would return it.
#[derive(Debug)]
pub(crate) enum Loaded {
    Node(Node),
    /// An empty document: Python's None, which each caller turns into something else.
    Empty,
    /// The file could not be used; the reason was reported.
    Failed,
}

/// The file being built: its path as Home Assistant names it (never resolved through
/// symlinks, because includes and secrets are relative to that name).
#[derive(Debug)]
struct FileContext {
    path: PathBuf,
    display: Arc<Path>,
    rules: Rules,
    /// Nodes already built, by identity, so an alias is built (and reported) once,
    /// with the bytes its values hold.
    built: HashMap<*const YamlNode, (Node, usize)>,
    /// The `secrets.yaml` files a `!secret` here looks in, nearest first;
    /// worked out at the file's first `!secret`.
    secrets_files: Option<Vec<PathBuf>>,
}

#[derive(Debug)]
pub(crate) struct Loader {
    root: PathBuf,
    pub(crate) diagnostics: Vec<Diagnostic>,
    pub(crate) files: Vec<PathBuf>,
    pub(crate) dirs: Vec<PathBuf>,
    /// Files being loaded, outermost first, by device and inode (whatever links
    /// led to them): an include of one of these is a cycle.
    chain: Vec<(FileId, Arc<Path>)>,
    secrets: SecretsCache,
    nesting: usize,
    /// Bytes of values built so far (see [`MAX_EXPANDED_BYTES`]).
    expanded_bytes: usize,
    reported_too_many_values: bool,
}

impl Loader {
    pub(crate) fn new(root: PathBuf) -> Self {
        Loader {
            root,
            diagnostics: Vec::new(),
            files: Vec::new(),
            dirs: Vec::new(),
            chain: Vec::new(),
            secrets: SecretsCache::default(),
            nesting: 0,
            expanded_bytes: 0,
            reported_too_many_values: false,
        }
    }

    pub(crate) fn root(&self) -> &Path {
        &self.root
    }

    /// The path to show for a file: relative to the config root when inside it.
    pub(crate) fn display(&self, path: &Path) -> Arc<Path> {
        match path.strip_prefix(&self.root) {
            Ok(relative) if relative.as_os_str().is_empty() => Arc::from(Path::new(".")),
            Ok(relative) => Arc::from(relative),
            Err(_) => Arc::from(path),
        }
    }

    pub(crate) fn report(&mut self, file: &Path, pos: Pos, severity: Severity, message: String) {
        // Past the value limit everything built is a stand-in; what it would report is noise.
        if self.reported_too_many_values {
            return;
        }
        self.diagnostics.push(Diagnostic {
            file: file.to_path_buf(),
            line: pos.line,
            column: pos.column,
            severity,
            message,
        });
    }

    pub(crate) fn error_at(&mut self, origin: &Origin, message: String) {
        let pos = Pos {
            line: origin.line,
            column: origin.column,
        };
        self.report(&origin.file.clone(), pos, Severity::Error, message);
    }

    /// Loads one file. `referrer` is the tag that asked for it: problems finding or
    /// reading the file are reported there, problems inside it in the file itself.
    pub(crate) fn load_file(
        &mut self,
        path: &Path,
        rules: Rules,
        referrer: Option<&Origin>,
    ) -> Loaded {
        self.load_parsed(path, read_and_parse(path), rules, referrer)
    }

    /// Loads a file that was read and parsed already (perhaps on another thread).
    fn load_parsed(
        &mut self,
        path: &Path,
        parsed: Parsed,
        rules: Rules,
        referrer: Option<&Origin>,
    ) -> Loaded {
        let display = self.display(path);
        let here = Origin {
            file: display.clone(),
            line: 1,
            column: 1,
        };
        let at = referrer.cloned().unwrap_or_else(|| here.clone());
        let (identity, document) = match parsed {
            Ok(parsed) => parsed,
            Err(ReadError::Io(err)) => {
                self.error_at(&at, unreadable(&display, &err));
                return Loaded::Failed;
            }
            Err(ReadError::Other(message)) => {
                self.error_at(
                    &at,
                    format!("Unable to read file {}: {message}", display.display()),
                );
                return Loaded::Failed;
            }
            Err(ReadError::NotUtf8 { pos, byte }) => {
                self.files.push(path.to_path_buf());
                let message = format!("file is not valid UTF-8 (byte 0x{byte:02x})");
                self.report(&display, pos, Severity::Error, message);
                return Loaded::Failed;
            }
        };
        if let Some(start) = self.chain.iter().position(|(c, _)| *c == identity) {
            let cycle: Vec<String> = self.chain[start..]
                .iter()
                .map(|(_, d)| d.display().to_string())
                .chain([display.display().to_string()])
                .collect();
            self.error_at(&at, format!("include cycle: {}", cycle.join(" -> ")));
            return Loaded::Failed;
        }
        self.files.push(path.to_path_buf());
        let document = match document {
            Ok(Some(document)) => document,
            Ok(None) => return Loaded::Empty,
            Err(err) => {
                self.report(&display, err.pos, Severity::Error, err.message);
                return Loaded::Failed;
            }
        };
        let mut file = FileContext {
            path: path.to_path_buf(),
            display: display.clone(),
            rules,
            built: HashMap::new(),
            secrets_files: None,
        };
        self.chain.push((identity, display));
        let node = self.build(document, &mut file);
        self.chain.pop();
        Loaded::Node(node)
    }

    /// Builds a value from a node, applying its tag. A node only this tree holds
    /// is taken apart (its strings move into the values); one an alias also
    /// points to is copied a level at a time and its result cached.
    fn build(&mut self, node: Arc<YamlNode>, file: &mut FileContext) -> Node {
        let key = Arc::as_ptr(&node);
        let origin = self.origin(file, node.pos);
        if let Some((built, bytes)) = file.built.get(&key) {
            if !self.count_values(*bytes, &file.display, node.pos) {
                return Node::new(Value::Null, origin);
            }
            return built.clone();
        }
        if self.nesting >= MAX_NESTING {
            self.error_at(
                &origin,
                format!("nesting deeper than {MAX_NESTING} levels (through includes or aliases)"),
            );
            return Node::new(Value::Null, origin);
        }
        let before = self.expanded_bytes;
        let own = VALUE_BYTES
            + match &node.kind {
                YamlKind::Scalar { text, .. } => text.len(),
                YamlKind::Seq(_) | YamlKind::Map(_) => 0,
            };
        if !self.count_values(own, &file.display, node.pos) {
            return Node::new(Value::Null, origin);
        }
        // Only a node an alias also points to is met again; caching others would copy
        // every subtree once per level. (Every node of the file exists until the
        // file is built, so a cached address is never reused by another node.)
        let shared = Arc::strong_count(&node) > 1;
        self.nesting += 1;
        let value = self.build_value(Arc::unwrap_or_clone(node), file, &origin);
        self.nesting -= 1;
        let built = Node::new(value, origin);
        if shared {
            let bytes = self.expanded_bytes.saturating_sub(before);
            file.built.insert(key, (built.clone(), bytes));
        }
        built
    }

    /// Counts the bytes of values about to be built; false (reported once) when
    /// over the limit, checked before cloning so an alias bomb never gets to
    /// allocate.
    fn count_values(&mut self, bytes: usize, file: &Arc<Path>, pos: Pos) -> bool {
        self.expanded_bytes = self.expanded_bytes.saturating_add(bytes);
        if self.expanded_bytes <= MAX_EXPANDED_BYTES {
            return true;
        }
        if !self.reported_too_many_values {
            let message = format!(
                "the config expands to more than {} MiB with its aliases expanded",
                MAX_EXPANDED_BYTES >> 20
            );
            self.report(&file.clone(), pos, Severity::Error, message);
            self.reported_too_many_values = true;
        }
        false
    }

    fn origin(&self, file: &FileContext, pos: Pos) -> Origin {
        Origin {
            file: file.display.clone(),
            line: pos.line,
            column: pos.column,
        }
    }

    fn build_value(&mut self, node: YamlNode, file: &mut FileContext, origin: &Origin) -> Value {
        let YamlNode { tag, kind, .. } = node;
        let Some(tag) = tag else {
            return self.build_untagged(kind, file, origin);
        };
        if let Some(suffix) = tag.strip_prefix(CORE_TAG_PREFIX) {
            return self.build_core_tagged(suffix, kind, file, origin);
        }
        if tag == "!" {
            // The non-specific tag: a scalar stays a string, collections as usual.
            return match kind {
                YamlKind::Scalar { text, .. } => Value::Str(text),
                kind => self.build_untagged(kind, file, origin),
            };
        }
        let handler = match tag.as_str() {
            "!include"
            | "!include_dir_list"
            | "!include_dir_named"
            | "!include_dir_merge_list"
            | "!include_dir_merge_named"
            | "!secret"
            | "!env_var"
            | "!input" => tag.as_str(),
            _ => {
                self.error_at(
                    origin,
                    format!("could not determine a constructor for the tag '{tag}'"),
                );
                return Value::Null;
            }
        };
        let kind_name = kind.name();
        let YamlKind::Scalar { text, .. } = kind else {
            let what = if handler.starts_with("!include") {
                "a path"
            } else {
                "a name"
            };
            self.error_at(
                origin,
                format!("{handler} expects {what}, not a {kind_name}"),
            );
            return Value::Null;
        };
        match handler {
            "!include" => self.include(&text, file, origin),
            "!secret" => self.secret(&text, file, origin),
            "!env_var" => self.env_var(&text, origin),
            "!input" => {
                if !file.rules.inputs {
                    self.error_at(origin, "!input is only allowed in blueprints".to_owned());
                }
                Value::Input(text)
            }
            dir_tag => self.include_dir(dir_tag, &text, file, origin),
        }
    }

    fn build_untagged(&mut self, kind: YamlKind, file: &mut FileContext, origin: &Origin) -> Value {
        match kind {
            YamlKind::Scalar { text, plain: false } => Value::Str(text),
            YamlKind::Scalar { text, plain: true } => match scalar::resolve_plain(text) {
                Ok(Plain::Value(value)) => value,
                Ok(plain @ (Plain::Merge | Plain::ValueTag)) => {
                    let tag = if plain == Plain::Merge {
                        "merge"
                    } else {
                        "value"
                    };
                    self.error_at(
                        origin,
                        format!(
                            "could not determine a constructor for the tag '{CORE_TAG_PREFIX}{tag}'"
                        ),
                    );
                    Value::Null
                }
                Err(message) => {
                    self.error_at(origin, message);
                    Value::Null
                }
            },
            YamlKind::Seq(items) => Value::Seq(
                items
                    .into_iter()
                    .map(|item| self.build(item, file))
                    .collect(),
            ),
            map @ YamlKind::Map(_) => Value::Map(self.build_mapping(map, file)),
        }
    }

    fn build_core_tagged(
        &mut self,
        suffix: &str,
        kind: YamlKind,
        file: &mut FileContext,
        origin: &Origin,
    ) -> Value {
        let collection = matches!(
            (&kind, suffix),
            (YamlKind::Seq(_), "seq" | "omap" | "pairs") | (YamlKind::Map(_), "map" | "set")
        );
        if collection {
            return self.build_untagged(kind, file, origin);
        }
        if let YamlKind::Scalar { text, .. } = &kind
            && !matches!(suffix, "seq" | "omap" | "pairs" | "map" | "set")
        {
            return scalar::construct_tagged(suffix, text).unwrap_or_else(|message| {
                self.error_at(origin, message);
                Value::Null
            });
        }
        let expected = match suffix {
            "seq" | "omap" | "pairs" => "sequence",
            "map" | "set" => "mapping",
            _ => "scalar",
        };
        self.error_at(
            origin,
            format!(
                "expected a {expected} node for !!{suffix}, but found a {}",
                kind.name()
            ),
        );
        Value::Null
    }

    /// A mapping as `_handle_mapping_tag` builds it: merge keys flattened first, then
    /// pairs in order, the last value of a repeated key winning with a warning.
    fn build_mapping(&mut self, kind: YamlKind, file: &mut FileContext) -> Mapping {
        let pairs = self.flatten(kind, file);
        let mut mapping = Mapping::with_capacity(pairs.len());
        // The line each key was last written on, by position in `mapping`.
        let mut last_line: Vec<u32> = Vec::with_capacity(pairs.len());
        for (key_node, value_node) in pairs {
            // PyYAML turns a `=` key into the string "=".
            let equals_key = key_node.tag.is_none()
                && matches!(&key_node.kind, YamlKind::Scalar { text, plain: true } if text == "=");
            let key = if equals_key {
                Node::new(Value::Str("=".to_owned()), self.origin(file, key_node.pos))
            } else {
                self.build(key_node, file)
            };
            let value = self.build(value_node, file);
            let line = key.origin.line;
            match mapping.set(key, value) {
                Set::Added => last_line.push(line),
                Set::Replaced { position, key } => {
                    let first = std::mem::replace(&mut last_line[position], line);
                    let message = format!(
                        "duplicate key \"{}\" (also at line {first}); the last value is used",
                        key.value.key_text()
                    );
                    let pos = Pos {
                        line,
                        column: key.origin.column,
                    };
                    self.report(&file.display.clone(), pos, Severity::Warning, message);
                }
                Set::Unhashable(key) => self.error_at(
                    &key.origin,
                    format!("invalid key: {} cannot be a mapping key", key.value.kind()),
                ),
            }
        }
        mapping
    }

    /// PyYAML's `flatten_mapping`: pairs merged in by `<<` come first (a list of
    /// mappings merges the first one last, so it wins), then the mapping's own.
    fn flatten(
        &mut self,
        kind: YamlKind,
        file: &mut FileContext,
    ) -> Vec<(Arc<YamlNode>, Arc<YamlNode>)> {
        let YamlKind::Map(pairs) = kind else {
            return Vec::new();
        };
        if !pairs.iter().any(|(key, _)| is_merge_key(key)) {
            return pairs;
        }
        let mut merged = Vec::new();
        let mut own = Vec::new();
        for (key, value) in pairs {
            if !is_merge_key(&key) {
                own.push((key, value));
                continue;
            }
            match value.kind.name() {
                "mapping" => merged.extend(self.flatten(Arc::unwrap_or_clone(value).kind, file)),
                "sequence" => {
                    let YamlKind::Seq(items) = Arc::unwrap_or_clone(value).kind else {
                        continue;
                    };
                    let mut groups = Vec::new();
                    for item in items {
                        if matches!(item.kind, YamlKind::Map(_)) {
                            groups.push(self.flatten(Arc::unwrap_or_clone(item).kind, file));
                        } else {
                            let origin = self.origin(file, item.pos);
                            self.error_at(
                                &origin,
                                format!(
                                    "expected a mapping for merging, but found a {}",
                                    item.kind_name()
                                ),
                            );
                        }
                    }
                    for group in groups.into_iter().rev() {
                        merged.extend(group);
                    }
                }
                _ => {
                    let origin = self.origin(file, value.pos);
                    let message = match &value.tag {
                        Some(tag) => format!(
                            "expected a mapping or list of mappings for merging, but found a scalar ({tag} cannot be merged with <<)"
                        ),
                        None => {
                            "expected a mapping or list of mappings for merging, but found a scalar"
                                .to_owned()
                        }
                    };
                    self.error_at(&origin, message);
                }
            }
        }
        merged.extend(own);
        merged
    }

    fn include(&mut self, name: &str, file: &FileContext, origin: &Origin) -> Value {
        let path = sibling(&file.path, name);
        match self.load_file(&path, file.rules, Some(origin)) {
            Loaded::Node(node) => node.value,
            // An empty included file is an empty mapping (`_include_yaml`).
            Loaded::Empty => Value::Map(Mapping::new()),
            Loaded::Failed => Value::Null,
        }
    }

    fn include_dir(&mut self, tag: &str, name: &str, file: &FileContext, origin: &Origin) -> Value {
        let dir = sibling(&file.path, name);
        let files = self.find_yaml_files(&dir, tag, origin);
        ParseAhead::new(&files).run(|ahead| self.include_files(tag, &files, ahead, file, origin))
    }

    /// The value of a folder include from its files, loaded in order.
    fn include_files(
        &mut self,
        tag: &str,
        files: &[PathBuf],
        ahead: &ParseAhead<'_>,
        file: &FileContext,
        origin: &Origin,
    ) -> Value {
        let load = |loader: &mut Self, index: usize| {
            loader.load_parsed(&files[index], ahead.take(index), file.rules, Some(origin))
        };
        match tag {
            "!include_dir_list" => {
                let mut items = Vec::new();
                for index in 0..files.len() {
                    // Empty files are left out of the list.
                    if let Loaded::Node(node) = load(self, index) {
                        items.push(node);
                    }
                }
                Value::Seq(items)
            }
            "!include_dir_named" => {
                let mut mapping = Mapping::new();
                for (index, path) in files.iter().enumerate() {
                    let key_text = path
                        .file_name()
                        .map(|n| n.to_string_lossy())
                        .unwrap_or_default()
                        .trim_end_matches(".yaml")
                        .to_owned();
                    let file_origin = Origin {
                        file: self.display(path),
                        line: 1,
                        column: 1,
                    };
                    let value = match load(self, index) {
                        Loaded::Node(node) => node,
                        Loaded::Empty => Node::new(Value::Map(Mapping::new()), file_origin.clone()),
                        Loaded::Failed => Node::new(Value::Null, file_origin.clone()),
                    };
                    let key = Node::new(Value::Str(key_text.clone()), file_origin.clone());
                    if let Some(earlier) = mapping.insert(key, value) {
                        let message = format!(
                            "{tag} key \"{key_text}\" also comes from {}; Home Assistant uses this file's content",
                            earlier.origin.file.display()
                        );
                        self.warn_at(&file_origin, message);
                    }
                }
                Value::Map(mapping)
            }
            "!include_dir_merge_list" => {
                let mut items = Vec::new();
                for index in 0..files.len() {
                    match load(self, index) {
                        Loaded::Node(Node { value: Value::Seq(more), .. }) => items.extend(more),
                        Loaded::Node(node) => self.warn_at(
                            &node.origin,
                            format!(
                                "Home Assistant ignores this file: {tag} only merges files that contain a list, this one contains {}",
                                node.value.kind()
                            ),
                        ),
                        Loaded::Empty | Loaded::Failed => {}
                    }
                }
                Value::Seq(items)
            }
            _ => {
                let mut mapping = Mapping::new();
                for index in 0..files.len() {
                    match load(self, index) {
                        Loaded::Node(Node { value: Value::Map(more), .. }) => {
                            for (key, value) in more.iter() {
                                if let Some(earlier) = mapping.insert(key.clone(), value.clone()) {
                                    let message = format!(
                                        "key \"{}\" is also defined in {}:{}; Home Assistant uses the last one loaded",
                                        key.value.key_text(),
                                        earlier.origin.file.display(),
                                        earlier.origin.line
                                    );
                                    self.warn_at(&key.origin, message);
                                }
                            }
                        }
                        Loaded::Node(node) => self.warn_at(
                            &node.origin,
                            format!(
                                "Home Assistant ignores this file: {tag} only merges files that contain a mapping, this one contains {}",
                                node.value.kind()
                            ),
                        ),
                        Loaded::Empty | Loaded::Failed => {}
                    }
                }
                Value::Map(mapping)
            }
        }
    }

    fn warn_at(&mut self, origin: &Origin, message: String) {
        let pos = Pos {
            line: origin.line,
            column: origin.column,
        };
        self.report(&origin.file.clone(), pos, Severity::Warning, message);
    }

    /// The files a `!include_dir_*` tag loads, in Home Assistant's order (`_find_files`:
    /// `os.walk` top-down, each folder's files sorted, then its subfolders), skipping
    /// dot-entries and `secrets.yaml`, not descending into symlinked folders.
    fn find_yaml_files(&mut self, dir: &Path, tag: &str, origin: &Origin) -> Vec<PathBuf> {
        let shown = self.display(dir);
        match fs::metadata(dir) {
            Ok(meta) if meta.is_dir() => {}
            Ok(_) => {
                self.warn_at(
                    origin,
                    format!(
                        "{} is not a directory; Home Assistant's {tag} includes nothing",
                        shown.display()
                    ),
                );
                return Vec::new();
            }
            Err(_) => {
                self.warn_at(
                    origin,
                    format!(
                        "directory {} does not exist; Home Assistant's {tag} includes nothing",
                        shown.display()
                    ),
                );
                return Vec::new();
            }
        }
        let mut found = Vec::new();
        let mut pending = vec![dir.to_path_buf()];
        while let Some(current) = pending.pop() {
            self.dirs.push(current.clone());
            let entries = match fs::read_dir(&current) {
                Ok(entries) => entries,
                Err(err) => {
                    let shown = self.display(&current);
                    self.warn_at(
                        origin,
                        format!(
                            "cannot list {}: {err}; Home Assistant skips it",
                            shown.display()
                        ),
                    );
                    continue;
                }
            };
            // The entry's type comes with the listing (no stat per entry); only a
            // symlink needs one, to see what it points to.
            let mut names: Vec<_> = entries
                .filter_map(Result::ok)
                .map(|e| (e.file_name(), e.file_type().ok()))
                .collect();
            names.sort_unstable_by(|a, b| a.0.cmp(&b.0));
            let mut subdirs = Vec::new();
            for (name, file_type) in names {
                let bytes = name.as_encoded_bytes();
                if bytes.starts_with(b".") {
                    continue;
                }
                let path = current.join(&name);
                let is_link = file_type.is_some_and(|t| t.is_symlink());
                // `os.walk` sorts entries by `is_dir()`, which follows symlinks.
                let is_dir = match file_type {
                    Some(t) if !t.is_symlink() => t.is_dir(),
                    _ => fs::metadata(&path).is_ok_and(|m| m.is_dir()),
                };
                if is_dir {
                    if is_link {
                        let shown = self.display(&path);
                        self.warn_at(
                            origin,
                            format!("{} is a symlink to a directory; Home Assistant's {tag} does not follow it", shown.display()),
                        );
                    } else {
                        subdirs.push(path);
                    }
                    continue;
                }
                if bytes.ends_with(b".yaml") {
                    if bytes != SECRETS_FILE.as_bytes() {
                        found.push(path);
                    }
                } else if bytes.to_ascii_lowercase().ends_with(b".yml")
                    || bytes.to_ascii_lowercase().ends_with(b".yaml")
                {
                    let shown = self.display(&path);
                    self.report(
                        &shown,
                        Pos::START,
                        Severity::Warning,
                        format!(
                            "Home Assistant ignores this file: {tag} only reads files named *.yaml"
                        ),
                    );
                }
            }
            // Depth-first, in sorted order (`os.walk` itself visits subfolders in
            // directory order, which is not stable; sorting makes ours repeatable).
            pending.extend(subdirs.into_iter().rev());
        }
        found
    }

    fn secret(&mut self, name: &str, file: &mut FileContext, origin: &Origin) -> Value {
        if !file.rules.secrets {
            self.error_at(
                origin,
                "Secrets not supported in this YAML file (secrets.yaml, the files it includes and blueprints cannot use !secret)"
                    .to_owned(),
            );
            return Value::Null;
        }
        let root = &self.root;
        let paths = file.secrets_files.get_or_insert_with(|| {
            secrets::secret_dirs(&file.path, root)
                .into_iter()
                .map(|dir| dir.join(SECRETS_FILE))
                .collect()
        });
        for path in paths.iter() {
            if self.secrets.get(path).is_none() {
                let loaded = self.load_secrets_file(path);
                self.secrets.insert(path.clone(), loaded);
            }
            match self.secrets.get(path) {
                Some(SecretsFile::Loaded(mapping)) => {
                    if let Some(value) = mapping.get(name) {
                        let source = SecretSource::SecretsFile(name.to_owned());
                        return Value::Secret(Secret::new(source, value.value.clone()));
                    }
                }
                Some(SecretsFile::Invalid) => {
                    let shown = self.display(path);
                    self.error_at(
                        origin,
                        format!("Secret {name} not resolved: {} is invalid", shown.display()),
                    );
                    return Value::Null;
                }
                Some(SecretsFile::Missing) | None => {}
            }
        }
        self.error_at(origin, format!("Secret {name} not defined"));
        Value::Null
    }

    /// `Secrets._load_secret_yaml`: a missing file is empty, anything but a mapping is
    /// an error, and a `logger` key is taken out.
    fn load_secrets_file(&mut self, path: &Path) -> SecretsFile {
        match fs::metadata(path) {
            Err(err) if err.kind() == io::ErrorKind::NotFound => return SecretsFile::Missing,
            _ => {}
        }
        let rules = Rules {
            secrets: false,
            inputs: false,
        };
        let shown = self.display(path);
        let not_a_mapping =
            "Secrets is not a dictionary: secrets.yaml must be a mapping of names to values";
        match self.load_file(path, rules, None) {
            Loaded::Node(Node {
                value: Value::Map(mut mapping),
                ..
            }) => {
                let logger = KeyId::Str("logger".to_owned());
                if let Some((key, value)) = mapping.remove(&logger) {
                    let level = value.value.key_text().to_lowercase();
                    if level != "debug" {
                        self.warn_at(
                            &key.origin,
                            format!("Error in secrets.yaml: 'logger: debug' expected, but 'logger: {level}' found"),
                        );
                    }
                }
                SecretsFile::Loaded(mapping)
            }
            Loaded::Node(node) => {
                self.error_at(&node.origin, not_a_mapping.to_owned());
                SecretsFile::Invalid
            }
            Loaded::Empty => {
                self.report(
                    &shown,
                    Pos::START,
                    Severity::Error,
                    not_a_mapping.to_owned(),
                );
                SecretsFile::Invalid
            }
            Loaded::Failed => SecretsFile::Invalid,
        }
    }

    /// `_env_var_yaml`: `!env_var NAME [default words...]`.
    fn env_var(&mut self, text: &str, origin: &Origin) -> Value {
        let mut words = text.split_whitespace();
        let Some(name) = words.next() else {
            self.error_at(
                origin,
                "!env_var needs the name of an environment variable".to_owned(),
            );
            return Value::Null;
        };
        let default: Vec<&str> = words.collect();
        let value = match std::env::var_os(name) {
            Some(value) => value.to_string_lossy().into_owned(),
            None if !default.is_empty() => default.join(" "),
            None => {
                self.error_at(origin, format!("Environment variable {name} not defined"));
                return Value::Null;
            }
        };
        Value::Secret(Secret::new(
            SecretSource::EnvVar(name.to_owned()),
            Value::Str(value),
        ))
    }
}

/// `os.path.join(os.path.dirname(including_file), name)`.
fn sibling(including_file: &Path, name: &str) -> PathBuf {
    including_file.parent().unwrap_or(Path::new("")).join(name)
}

fn is_merge_key(key: &YamlNode) -> bool {
    match (&key.tag, &key.kind) {
        (None, YamlKind::Scalar { text, plain: true }) => text == "<<",
        (Some(tag), _) => tag == "tag:yaml.org,2002:merge",
        _ => false,
    }
}

fn unreadable(display: &Path, err: &io::Error) -> String {
    let reason = match err.kind() {
        io::ErrorKind::NotFound => "file not found".to_owned(),
        io::ErrorKind::PermissionDenied => "permission denied".to_owned(),
        _ => err.to_string(),
    };
    format!("Unable to read file {}: {reason}", display.display())
}

pub(crate) enum ReadError {
    Io(io::Error),
    Other(String),
    NotUtf8 { pos: Pos, byte: u8 },
}

/// A file's identity: device and inode.
type FileId = (u64, u64);

/// A file read and parsed: the part of loading that needs no loader state.
pub(crate) type Parsed = Result<(FileId, Result<Option<Arc<YamlNode>>, SyntaxError>), ReadError>;

pub(crate) fn read_and_parse(path: &Path) -> Parsed {
    let (text, identity) = read_text(path)?;
    Ok((identity, yaml::parse(&text)))
}

/// Reads a config file: one open, one fstat, the reads. Opened non-blocking so a
/// FIFO in the tree is refused instead of waiting for a writer.
fn read_text(path: &Path) -> Result<(String, FileId), ReadError> {
    let mut file = fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
        .map_err(ReadError::Io)?;
    let meta = file.metadata().map_err(ReadError::Io)?;
    if meta.is_dir() {
        return Err(ReadError::Other("it is a directory".to_owned()));
    }
    // A FIFO or device would block or never end.
    if !meta.is_file() {
        return Err(ReadError::Other("not a regular file".to_owned()));
    }
    if meta.len() > MAX_FILE_BYTES {
        return Err(ReadError::Other(format!(
            "larger than {} MiB",
            MAX_FILE_BYTES / 1024 / 1024
        )));
    }
    let identity = (meta.dev(), meta.ino());
    // Sized from fstat; the bound above keeps the cast in range.
    let mut bytes = Vec::with_capacity(usize::try_from(meta.len()).unwrap_or(0));
    file.read_to_end(&mut bytes).map_err(ReadError::Io)?;
    let text = String::from_utf8(bytes).map_err(|err| {
        let valid = err.utf8_error().valid_up_to();
        let bytes = err.as_bytes();
        let prefix = String::from_utf8_lossy(&bytes[..valid]);
        let line = prefix.matches('\n').count() + 1;
        let column = prefix.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
        ReadError::NotUtf8 {
            pos: Pos {
                line: u32::try_from(line).unwrap_or(u32::MAX),
                column: u32::try_from(column).unwrap_or(u32::MAX),
            },
            byte: bytes[valid],
        }
    })?;
    Ok((text, identity))
}

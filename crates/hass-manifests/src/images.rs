//! Image references: the `images:` list of `kustomization.yaml`, which
//! Renovate's kustomize manager bumps (tag and digest) without a re-render,
//! and the lock file `images/build --push` writes, which pins the
//! hass-sidecars images to the digests of the indexes it pushed.

use std::collections::BTreeMap;

use crate::values::SidecarImages;

/// One `repository[:tag][@digest]` reference, split.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reference {
    pub name: String,
    pub tag: Option<String>,
    pub digest: Option<String>,
}

impl Reference {
    /// Splits a reference; a registry's `:port` is not taken for a tag.
    pub fn parse(reference: &str) -> Self {
        let (rest, digest) = match reference.split_once('@') {
            Some((rest, digest)) => (rest, Some(digest.to_owned())),
            None => (reference, None),
        };
        let last_slash = rest.rfind('/').map_or(0, |i| i + 1);
        match rest[last_slash..].rfind(':') {
            Some(colon) => Self {
                name: rest[..last_slash + colon].to_owned(),
                tag: Some(rest[last_slash + colon + 1..].to_owned()),
                digest,
            },
            None => Self {
                name: rest.to_owned(),
                tag: None,
                digest,
            },
        }
    }
}

/// Whether `digest` is `sha256:` and 64 lowercase hex digits, the only form
/// the registries the suite is pulled from give.
pub fn is_digest(digest: &str) -> bool {
    digest.strip_prefix("sha256:").is_some_and(|hex| {
        hex.len() == 64
            && hex
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    })
}

/// The images of every container and init container below `object`, in
/// document order (a CronJob's are three levels down).
pub fn container_images(object: &serde_json::Value) -> Vec<String> {
    let mut images = Vec::new();
    collect(object, &mut images);
    images
}

fn collect(value: &serde_json::Value, images: &mut Vec<String>) {
    match value {
        serde_json::Value::Object(map) => {
            for (key, child) in map {
                if key == "containers" || key == "initContainers" {
                    for container in child.as_array().into_iter().flatten() {
                        if let Some(image) = container.get("image").and_then(|i| i.as_str()) {
                            images.push(image.to_owned());
                        }
                    }
                } else {
                    collect(child, images);
                }
            }
        }
        serde_json::Value::Array(items) => items.iter().for_each(|item| collect(item, images)),
        _ => {}
    }
}

/// The `images:` block of `kustomization.yaml`: one entry per image name
/// with its tag and digest, sorted by name. A name used with two different
/// references is left out: one entry would rewrite both.
pub fn kustomize_images<'a>(references: impl IntoIterator<Item = &'a str>) -> String {
    let mut by_name: BTreeMap<String, Option<Reference>> = BTreeMap::new();
    for reference in references {
        let parsed = Reference::parse(reference);
        by_name
            .entry(parsed.name.clone())
            .and_modify(|seen| {
                if seen.as_ref() != Some(&parsed) {
                    *seen = None;
                }
            })
            .or_insert(Some(parsed));
    }
    let mut out = String::new();
    for reference in by_name.into_values().flatten() {
        if out.is_empty() {
            out.push_str(
                "# The images in these files, for tools that bump them here (Renovate's\n\
                 # kustomize manager); kustomize applies them over the files.\n\
                 images:\n",
            );
        }
        out.push_str(&format!("  - name: {}\n", reference.name));
        if let Some(tag) = &reference.tag {
            out.push_str(&format!("    newTag: \"{tag}\"\n"));
        }
        if let Some(digest) = &reference.digest {
            out.push_str(&format!("    digest: {digest}\n"));
        }
    }
    out
}

/// Why a lock file was refused: `line N: message`.
#[derive(Debug, thiserror::Error)]
#[error("line {line}: {message}")]
pub struct LockError {
    pub line: usize,
    pub message: String,
}

/// What `images/build --push` wrote: one `<binary> <repository>:<tag>@<digest>`
/// a line, every image in one registry folder with one tag.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lock {
    pub registry: String,
    pub tag: String,
    pub digests: BTreeMap<String, String>,
}

impl Lock {
    pub fn parse(text: &str) -> Result<Self, LockError> {
        let mut lock: Option<Self> = None;
        for (index, line) in text.lines().enumerate() {
            let fail = |message: String| LockError {
                line: index + 1,
                message,
            };
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let Some((binary, reference)) = line.split_once(' ') else {
                return Err(fail(
                    "expected `<binary> <repository>:<tag>@<digest>`".to_owned(),
                ));
            };
            let parsed = Reference::parse(reference.trim());
            let (Some(tag), Some(digest)) = (parsed.tag, parsed.digest) else {
                return Err(fail(format!(
                    "{binary}: the reference needs a tag and a digest"
                )));
            };
            if !is_digest(&digest) {
                return Err(fail(format!(
                    "{binary}: the digest is not sha256:<64 hex digits>"
                )));
            }
            let Some(registry) = parsed.name.strip_suffix(&format!("/{binary}")) else {
                return Err(fail(format!(
                    "{binary}: the repository does not end in /{binary}"
                )));
            };
            let lock = lock.get_or_insert_with(|| Self {
                registry: registry.to_owned(),
                tag: tag.clone(),
                digests: BTreeMap::new(),
            });
            if lock.registry != registry || lock.tag != tag {
                return Err(fail(format!(
                    "{binary}: every image must share one registry folder and tag ({}:{})",
                    lock.registry, lock.tag
                )));
            }
            if lock.digests.insert(binary.to_owned(), digest).is_some() {
                return Err(fail(format!("{binary} is listed twice")));
            }
        }
        lock.ok_or(LockError {
            line: 0,
            message: "no image listed".to_owned(),
        })
    }

    /// The sidecar images pinned to the lock's registry, tag and digests.
    pub fn apply(&self, images: &mut SidecarImages) {
        images.registry = self.registry.clone();
        images.tag = self.tag.clone();
        images.digests = self.digests.clone();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DIGEST: &str = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    #[test]
    fn references_split_at_the_tag_not_the_port() {
        for (text, name, tag, digest) in [
            ("ghcr.io/a/b:1.0", "ghcr.io/a/b", Some("1.0"), None),
            ("127.0.0.1:5000/a/b", "127.0.0.1:5000/a/b", None, None),
            (
                "127.0.0.1:5000/a/b:2@sha256:x",
                "127.0.0.1:5000/a/b",
                Some("2"),
                Some("sha256:x"),
            ),
            ("postgres@sha256:x", "postgres", None, Some("sha256:x")),
        ] {
            let r = Reference::parse(text);
            assert_eq!(
                (r.name.as_str(), r.tag.as_deref(), r.digest.as_deref()),
                (name, tag, digest),
                "{text}"
            );
        }
    }

    #[test]
    fn an_image_used_with_two_references_is_not_listed() {
        let text = kustomize_images(["a/x:1", "a/y:1", "a/x:2", "a/y:1"]);
        assert!(text.contains("- name: a/y\n    newTag: \"1\"\n"), "{text}");
        assert!(!text.contains("a/x"), "{text}");
    }

    #[test]
    fn lock_files_are_checked_line_by_line() {
        let good = format!(
            "hass-broker r:5000/hs/hass-broker:0.1.0@{DIGEST}\nhass-exporter r:5000/hs/hass-exporter:0.1.0@{DIGEST}\n"
        );
        let lock = Lock::parse(&good).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            (lock.registry.as_str(), lock.tag.as_str()),
            ("r:5000/hs", "0.1.0")
        );
        assert_eq!(lock.digests.len(), 2);
        for (text, error) in [
            (
                "hass-broker r/hass-broker:1".to_owned(),
                "line 1: hass-broker: the reference needs a tag and a digest",
            ),
            (
                "hass-broker r/hass-broker:1@sha256:abc".to_owned(),
                "not sha256:<64 hex digits>",
            ),
            (
                format!("hass-broker r/other:1@{DIGEST}"),
                "does not end in /hass-broker",
            ),
            (
                format!(
                    "hass-broker r/hass-broker:1@{DIGEST}\nhass-exporter q/hass-exporter:1@{DIGEST}"
                ),
                "line 2: hass-exporter: every image must share one registry folder and tag (r:1)",
            ),
            (String::new(), "no image listed"),
        ] {
            let got = Lock::parse(&text).map(|_| ()).unwrap_err().to_string();
            assert!(got.contains(error), "{text:?}: {got}");
        }
    }
}

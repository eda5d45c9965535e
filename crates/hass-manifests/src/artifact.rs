//! The rendered tree as an OCI artifact (`render --push oci://…`), in the
//! form Flux's `OCIRepository` and `flux pull artifact` read: an empty JSON
//! config of type [`CONFIG_MEDIA_TYPE`] and one layer of type
//! [`LAYER_MEDIA_TYPE`], the tree's files as a gzipped tar.
//!
//! Invariant: the same files give the same layer, manifest and digest (no
//! times, owners or file order from the machine), so pushing an unchanged
//! tree changes nothing a GitOps tool watches.

use std::io::{self, Write};

use oci_client::client::{ClientConfig, ClientProtocol, Config, ImageLayer};
use oci_client::manifest::OciImageManifest;
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference};

pub const CONFIG_MEDIA_TYPE: &str = "application/vnd.cncf.flux.config.v1+json";
pub const LAYER_MEDIA_TYPE: &str = "application/vnd.cncf.flux.content.v1.tar+gzip";

/// Why a push failed.
#[derive(Debug, thiserror::Error)]
pub enum PushError {
    #[error("{0:?} is not oci://REGISTRY/REPOSITORY:TAG")]
    Target(String),
    #[error("cannot pack the tree: {0}")]
    Pack(#[from] io::Error),
    #[error("cannot push to {target}: {message}")]
    Registry { target: String, message: String },
}

/// Credentials for the registry; anonymous when none are given.
#[derive(Debug, Default)]
pub struct Credentials {
    pub username: Option<String>,
    pub password: Option<secrecy::SecretString>,
}

/// Parses `oci://host[:port]/path:tag`.
pub fn target(url: &str) -> Result<Reference, PushError> {
    let bad = || PushError::Target(url.to_owned());
    let rest = url.strip_prefix("oci://").ok_or_else(bad)?;
    let reference: Reference = rest.parse().map_err(|_| bad())?;
    // A bare name would be docker.io's, and a missing tag `latest`: neither
    // is what someone pinning a release means.
    let written = crate::images::Reference::parse(rest);
    if !rest.contains('/') || written.tag.is_none() || written.digest.is_some() {
        return Err(bad());
    }
    Ok(reference)
}

/// The layer: the files (name, content) sorted by name, mode 0644, owner
/// 0:0, time 0, gzipped without a name or time in the header.
pub fn pack(files: &[(String, String)]) -> io::Result<Vec<u8>> {
    let mut files: Vec<&(String, String)> = files.iter().collect();
    files.sort();
    let gzip = flate2::GzBuilder::new()
        .mtime(0)
        .write(Vec::new(), flate2::Compression::best());
    let mut tar = tar::Builder::new(gzip);
    for (name, content) in files {
        let mut header = tar::Header::new_ustar();
        header.set_size(content.len() as u64);
        header.set_mode(0o644);
        header.set_uid(0);
        header.set_gid(0);
        header.set_mtime(0);
        header.set_entry_type(tar::EntryType::Regular);
        tar.append_data(&mut header, name, content.as_bytes())?;
    }
    let mut gzip = tar.into_inner()?;
    gzip.flush()?;
    gzip.finish()
}

/// Loopback registries (a test's, a port-forward) are spoken to over plain
/// HTTP; every other over HTTPS.
fn is_loopback(registry: &str) -> bool {
    let host = registry
        .rsplit_once(':')
        .filter(|(_, port)| port.bytes().all(|b| b.is_ascii_digit()))
        .map_or(registry, |(host, _)| host);
    matches!(host, "localhost" | "127.0.0.1" | "[::1]")
}

/// Pushes `layer` as the artifact `reference`; returns the manifest digest.
pub async fn push(
    reference: &Reference,
    layer: Vec<u8>,
    credentials: &Credentials,
) -> Result<String, PushError> {
    use secrecy::ExposeSecret;
    let registry = reference.resolve_registry().to_owned();
    let fail = |message: String| PushError::Registry {
        target: reference.whole(),
        message,
    };
    let protocol = if is_loopback(&registry) {
        ClientProtocol::HttpsExcept(vec![registry])
    } else {
        ClientProtocol::Https
    };
    let client = Client::new(ClientConfig {
        protocol,
        connect_timeout: Some(std::time::Duration::from_secs(10)),
        read_timeout: Some(std::time::Duration::from_secs(60)),
        ..ClientConfig::default()
    });
    let auth = match (&credentials.username, &credentials.password) {
        (Some(user), Some(password)) => {
            RegistryAuth::Basic(user.clone(), password.expose_secret().to_owned())
        }
        (None, Some(token)) => RegistryAuth::Bearer(token.expose_secret().to_owned()),
        _ => RegistryAuth::Anonymous,
    };
    let layers = [ImageLayer::new(layer, LAYER_MEDIA_TYPE.to_owned(), None)];
    let config = Config::new(b"{}".to_vec(), CONFIG_MEDIA_TYPE.to_owned(), None);
    let manifest = OciImageManifest::build(&layers, &config, None);
    client
        .push(reference, &layers, config, &auth, Some(manifest))
        .await
        .map_err(|e| fail(e.to_string()))?;
    client
        .fetch_manifest_digest(reference, &auth)
        .await
        .map_err(|e| fail(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_need_a_registry_path_and_tag() {
        let ok = target("oci://127.0.0.1:5000/hass-sidecars/manifests:0.1.0").unwrap();
        assert_eq!(ok.resolve_registry(), "127.0.0.1:5000");
        assert_eq!(ok.repository(), "hass-sidecars/manifests");
        assert_eq!(ok.tag(), Some("0.1.0"));
        for bad in [
            "127.0.0.1:5000/a:1",
            "oci://manifests:1",
            "oci://r.example/a",
            "oci://r.example/a:1@sha256:0000000000000000000000000000000000000000000000000000000000000000",
        ] {
            assert!(target(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn only_loopback_registries_are_spoken_to_over_http() {
        for (registry, loopback) in [
            ("127.0.0.1:5000", true),
            ("localhost", true),
            ("[::1]:5000", true),
            ("ghcr.io", false),
            ("127.0.0.1.example.net:5000", false),
        ] {
            assert_eq!(is_loopback(registry), loopback, "{registry}");
        }
    }

    #[test]
    fn the_same_files_pack_to_the_same_bytes_whatever_their_order() {
        let file = |name: &str, text: &str| (name.to_owned(), text.to_owned());
        let a = pack(&[file("one.yaml", "a: 1\n"), file("two.yaml", "b: 2\n")]).unwrap();
        let b = pack(&[file("two.yaml", "b: 2\n"), file("one.yaml", "a: 1\n")]).unwrap();
        assert_eq!(a, b);
        let c = pack(&[file("two.yaml", "b: 2\n"), file("one.yaml", "a: 2\n")]).unwrap();
        assert_ne!(a, c);
        // What Flux unpacks: the files, at the top, as written.
        let mut unpacked = tar::Archive::new(flate2::read::GzDecoder::new(a.as_slice()));
        let mut names = Vec::new();
        for entry in unpacked.entries().unwrap() {
            let mut entry = entry.unwrap();
            let mut text = String::new();
            std::io::Read::read_to_string(&mut entry, &mut text).unwrap();
            names.push((entry.path().unwrap().display().to_string(), text));
        }
        assert_eq!(
            names,
            [file("one.yaml", "a: 1\n"), file("two.yaml", "b: 2\n")]
        );
    }
}

//! The config file, its flags, and the checks made before anything is fetched.

use std::path::PathBuf;
use std::time::Duration;

use hass_runtime::Fatal;
use hass_runtime::config::AdminConfig;
use hass_runtime::secret::SecretSource;
use serde::Deserialize;

/// `hass-git-mirror --config FILE`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MirrorConfig {
    /// The admin server; `--admin-listen` wins over it.
    pub admin: AdminConfig,
    /// The remote repository, `https://…`; `http://` only with
    /// `allow_plain_http`. Credentials go in `token`, never in the URL.
    pub remote: String,
    /// The branch mirrored.
    pub branch: String,
    /// The bare mirror, created on first use; only this binary writes it.
    pub mirror: PathBuf,
    #[serde(with = "hass_runtime::config::duration")]
    pub interval: Duration,
    /// A token (or password) for HTTP basic auth, `{file: …}` or `{env: …}`.
    pub token: Option<SecretSource>,
    /// The user name sent with `token` (GitHub takes any; Gitea and
    /// GitLab want the account's, or `oauth2` for GitLab tokens).
    pub username: String,
    /// A fetch still running after this is abandoned.
    #[serde(with = "hass_runtime::config::duration")]
    pub timeout: Duration,
    /// A fetch that grows the mirror past this many MiB is abandoned: a
    /// configuration repository is kilobytes, a hostile one need not be.
    pub max_mib: u64,
    /// Fetch over plain HTTP (a Git server inside the cluster).
    pub allow_plain_http: bool,
}

impl Default for MirrorConfig {
    fn default() -> Self {
        Self {
            admin: AdminConfig::default(),
            remote: String::new(),
            branch: "main".to_owned(),
            mirror: PathBuf::from("/var/lib/hass-git-mirror/repo.git"),
            interval: Duration::from_secs(60),
            token: None,
            username: "git".to_owned(),
            timeout: Duration::from_secs(120),
            max_mib: 256,
            allow_plain_http: false,
        }
    }
}

/// Flags beside the shared ones; each overrides its YAML key and has an env
/// fallback (`HASS_GIT_MIRROR_REMOTE`).
#[derive(Debug, Clone, Default, clap::Args)]
pub struct MirrorArgs {
    /// The remote repository (YAML `remote`).
    #[arg(long, value_name = "URL", env = "HASS_GIT_MIRROR_REMOTE")]
    pub remote: Option<String>,
    /// The branch (YAML `branch`).
    #[arg(long, value_name = "NAME", env = "HASS_GIT_MIRROR_BRANCH")]
    pub branch: Option<String>,
    /// The bare mirror (YAML `mirror`).
    #[arg(long, value_name = "DIR", env = "HASS_GIT_MIRROR_MIRROR")]
    pub mirror: Option<PathBuf>,
}

impl MirrorConfig {
    /// Applies the flags and checks the result; every error is bad config.
    pub(crate) fn checked(mut self, args: MirrorArgs) -> Result<Self, Fatal> {
        if let Some(remote) = args.remote {
            self.remote = remote;
        }
        if let Some(branch) = args.branch {
            self.branch = branch;
        }
        if let Some(mirror) = args.mirror {
            self.mirror = mirror;
        }
        let remote = &self.remote;
        let scheme_ok = remote.starts_with("https://")
            || (self.allow_plain_http && remote.starts_with("http://"));
        if !scheme_ok {
            return Err(Fatal::config(format!(
                "remote: {remote:?} is not an https:// URL (http:// needs allow_plain_http)"
            )));
        }
        let authority = remote
            .split_once("://")
            .map(|(_, rest)| rest.split('/').next().unwrap_or_default())
            .unwrap_or_default();
        if authority.contains('@') {
            return Err(Fatal::config(
                "remote: credentials in the URL would be logged and stored; put the token in `token`",
            ));
        }
        if authority.is_empty() {
            return Err(Fatal::config(format!("remote: {remote:?} has no host")));
        }
        if gix::refs::FullName::try_from(format!("refs/heads/{}", self.branch)).is_err() {
            return Err(Fatal::config(format!(
                "branch: {:?} is not a branch name",
                self.branch
            )));
        }
        self.mirror = std::path::absolute(&self.mirror)
            .map_err(|e| Fatal::config(format!("mirror: {}: {e}", self.mirror.display())))?;
        for (name, value) in [("interval", self.interval), ("timeout", self.timeout)] {
            if value.is_zero() {
                return Err(Fatal::config(format!("{name}: must be more than 0s")));
            }
        }
        if self.max_mib == 0 {
            return Err(Fatal::config("max_mib: must be more than 0"));
        }
        if let Some(token) = &self.token {
            token
                .load()
                .map_err(|e| Fatal::config(format!("token: {e}")))?;
        }
        Ok(self)
    }
}

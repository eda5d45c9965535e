//! Loading the access policy (password file, ACL file, anonymous switch) and
//! reloading it when the files change: new connections authenticate against
//! the new passwords, live ones get their ACL recomputed at once, and a live
//! one whose user left the password file or has a new hash is closed.
//!
//! The files are compared by content every couple of seconds rather than
//! watched: they are small, and Kubernetes updates a mounted Secret by
//! swapping a symlink, which content comparison sees whatever the mechanism.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use hass_runtime::file_watch;
use hass_runtime::shutdown::Shutdown;
use tracing::{error, info};

use crate::acl::AclFile;
use crate::auth::{AccessPolicy, Authenticator, PasswordFile};
use crate::connection::ConnectionContext;

/// Where the policy comes from.
#[derive(Debug, Clone)]
pub struct PolicySource {
    pub password_file: Option<PathBuf>,
    pub acl_file: Option<PathBuf>,
    pub allow_anonymous: bool,
}

impl PolicySource {
    /// Reads and parses both files; the error names file and line.
    pub fn load(&self) -> Result<AccessPolicy, String> {
        let passwords = self
            .password_file
            .as_deref()
            .map(PasswordFile::load)
            .transpose()
            .map_err(|e| format!("password_file: {e}"))?;
        let acl = self
            .acl_file
            .as_deref()
            .map(AclFile::load)
            .transpose()
            .map_err(|e| format!("acl_file: {e}"))?;
        Ok(AccessPolicy {
            authenticator: Authenticator {
                passwords,
                allow_anonymous: self.allow_anonymous,
            },
            acl,
        })
    }
}

/// Reloads the policy whenever a file's content changes. A file that no
/// longer parses keeps the previous policy in force and is reported.
pub async fn reload_on_change(
    source: PolicySource,
    ctx: Arc<ConnectionContext>,
    interval: Duration,
    shutdown: Shutdown,
) {
    let files = [&source.password_file, &source.acl_file]
        .into_iter()
        .flatten()
        .cloned()
        .collect();
    file_watch::on_change(files, interval, shutdown, || match source.load() {
        Ok(policy) => {
            let policy = Arc::new(policy);
            let before = std::mem::replace(
                &mut *ctx.policy.write().unwrap_or_else(|p| p.into_inner()),
                policy.clone(),
            );
            ctx.router
                .refresh_acls(|user, client_id| policy.client_acl(user, client_id));
            let revoked = ctx.router.close_revoked(|user| {
                policy
                    .authenticator
                    .still_admits(&before.authenticator, user)
            });
            ctx.metrics.policy_reloads.get_or_create(&"ok".into()).inc();
            info!(
                "password/ACL files changed: reloaded; {revoked} connections closed \
                     for revoked credentials, the rest kept"
            );
        }
        Err(e) => {
            ctx.metrics
                .policy_reloads
                .get_or_create(&"failed".into())
                .inc();
            error!("password/ACL files changed but cannot be used; keeping the previous ones: {e}");
        }
    })
    .await;
}

//! Client authentication from a Mosquitto `password_file`, so an existing
//! file made with `mosquitto_passwd` keeps working: `user:$7$iterations$salt$hash`
//! (PBKDF2-HMAC-SHA512, Mosquitto 2.x) and `user:$6$salt$hash` (salted SHA-512,
//! Mosquitto 1.x), salt and hash in base64.

use std::collections::HashMap;
use std::path::Path;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use sha2::{Digest, Sha512};

/// A parsed password file. Debug shows user names only.
#[derive(Clone, Default)]
pub struct PasswordFile {
    users: HashMap<String, PasswordHash>,
    /// Hashed for unknown users: the file's median-cost entry, so an unknown
    /// name takes as long as a typical known one and timing tells nothing.
    decoy: Option<PasswordHash>,
}

impl std::fmt::Debug for PasswordFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut users: Vec<&String> = self.users.keys().collect();
        users.sort();
        f.debug_struct("PasswordFile")
            .field("users", &users)
            .finish()
    }
}

#[derive(Clone, PartialEq, Eq)]
enum PasswordHash {
    Sha512 {
        salt: Vec<u8>,
        hash: Vec<u8>,
    },
    Pbkdf2Sha512 {
        iterations: u32,
        salt: Vec<u8>,
        hash: Vec<u8>,
    },
}

/// A line of the password file that could not be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{file}:{line}: {message}")]
pub struct PasswordFileError {
    pub file: String,
    pub line: usize,
    pub message: String,
}

impl PasswordFile {
    pub fn load(path: &Path) -> Result<Self, PasswordFileError> {
        let text = std::fs::read_to_string(path).map_err(|e| PasswordFileError {
            file: path.display().to_string(),
            line: 0,
            message: format!("cannot read password file: {e}"),
        })?;
        Self::parse(&text, &path.display().to_string())
    }

    /// Parses the file's text; `file` names it in errors. Blank lines and
    /// `#` comments are skipped, as Mosquitto does.
    pub fn parse(text: &str, file: &str) -> Result<Self, PasswordFileError> {
        let mut users = HashMap::new();
        for (index, raw) in text.lines().enumerate() {
            let line = raw.trim_end_matches('\r');
            if line.trim().is_empty() || line.starts_with('#') {
                continue;
            }
            let error = |message: String| PasswordFileError {
                file: file.to_owned(),
                line: index + 1,
                message,
            };
            let (user, hash) = line
                .split_once(':')
                .ok_or_else(|| error("expected `username:hash`".into()))?;
            if user.is_empty() {
                return Err(error("empty username".into()));
            }
            let hash = parse_hash(hash).map_err(|m| error(format!("user {user:?}: {m}")))?;
            users.insert(user.to_owned(), hash);
        }
        let mut by_cost: Vec<&PasswordHash> = users.values().collect();
        by_cost.sort_by_key(|h| h.cost());
        let decoy = by_cost.get(by_cost.len() / 2).map(|&h| h.clone());
        Ok(Self { users, decoy })
    }

    pub fn len(&self) -> usize {
        self.users.len()
    }

    pub fn is_empty(&self) -> bool {
        self.users.is_empty()
    }

    /// Whether `user` has the same hash here as in `before`: a password
    /// that was right then is right now.
    fn same_entry(&self, before: &Self, user: &str) -> bool {
        self.users
            .get(user)
            .is_some_and(|hash| before.users.get(user) == Some(hash))
    }

    /// Whether `password` is `user`'s. Unknown users cost the same as wrong
    /// passwords would, so timing does not reveal which names exist.
    pub fn verify(&self, user: &str, password: &[u8]) -> bool {
        match self.users.get(user) {
            Some(hash) => hash.verify(password),
            None => {
                self.decoy.as_ref().unwrap_or(&DECOY).verify(password);
                false
            }
        }
    }
}

/// Hashed on unknown users so they take as long as known ones.
static DECOY: PasswordHash = PasswordHash::Sha512 {
    salt: Vec::new(),
    hash: Vec::new(),
};

impl PasswordHash {
    /// PBKDF2 iterations; a salted SHA-512 is one.
    fn cost(&self) -> u32 {
        match self {
            Self::Sha512 { .. } => 1,
            Self::Pbkdf2Sha512 { iterations, .. } => *iterations,
        }
    }

    fn verify(&self, password: &[u8]) -> bool {
        let (computed, expected) = match self {
            Self::Sha512 { salt, hash } => {
                let mut digest = Sha512::new();
                digest.update(password);
                digest.update(salt);
                (digest.finalize().to_vec(), hash)
            }
            Self::Pbkdf2Sha512 {
                iterations,
                salt,
                hash,
            } => {
                let mut out = vec![0u8; hash.len().max(1)];
                pbkdf2::pbkdf2_hmac::<Sha512>(password, salt, *iterations, &mut out);
                (out, hash)
            }
        };
        constant_time_eq(&computed, expected)
    }
}

fn parse_hash(text: &str) -> Result<PasswordHash, String> {
    let parts: Vec<&str> = text.split('$').collect();
    let b64 = |s: &str, what: &str| {
        STANDARD
            .decode(s)
            .map_err(|e| format!("{what} is not base64: {e}"))
    };
    match parts.as_slice() {
        ["", "6", salt, hash] => Ok(PasswordHash::Sha512 {
            salt: b64(salt, "salt")?,
            hash: b64(hash, "hash")?,
        }),
        ["", "7", iterations, salt, hash] => {
            let iterations: u32 = iterations
                .parse()
                .ok()
                .filter(|n| *n > 0)
                .ok_or_else(|| format!("bad iteration count {iterations:?}"))?;
            Ok(PasswordHash::Pbkdf2Sha512 {
                iterations,
                salt: b64(salt, "salt")?,
                hash: b64(hash, "hash")?,
            })
        }
        _ => Err(
            "not a `$6$` or `$7$` hash (plain-text passwords must be hashed \
                  with mosquitto_passwd -U)"
                .into(),
        ),
    }
}

pub(crate) fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// What the broker decides about a CONNECT's credentials.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthDecision {
    /// Allowed, as this user (None: anonymous).
    Allowed(Option<String>),
    /// A username was given and the password does not match.
    BadCredentials,
    /// No credentials, and anonymous access is off.
    NotAuthorized,
}

/// The broker's authentication policy.
#[derive(Debug, Clone, Default)]
pub struct Authenticator {
    pub passwords: Option<PasswordFile>,
    pub allow_anonymous: bool,
}

impl Authenticator {
    /// Whether a client that `before` admitted as `user` would still be
    /// admitted: its password file entry is unchanged, or it needs none.
    /// Mosquitto disconnects such clients on reload too.
    pub fn still_admits(&self, before: &Self, user: Option<&str>) -> bool {
        match (user, &self.passwords, &before.passwords) {
            (Some(user), Some(now), Some(then)) => now.same_entry(then, user),
            // It came in without a password check; now one is asked for.
            (Some(_), Some(_), None) => false,
            (Some(_), None, _) | (None, _, _) => self.allow_anonymous,
        }
    }

    pub fn decide(&self, username: Option<&str>, password: Option<&[u8]>) -> AuthDecision {
        match (username, &self.passwords) {
            (Some(user), Some(file)) => {
                if file.verify(user, password.unwrap_or_default()) {
                    AuthDecision::Allowed(Some(user.to_owned()))
                } else {
                    AuthDecision::BadCredentials
                }
            }
            // A username with no password file: only anonymous access can admit it.
            (Some(user), None) if self.allow_anonymous => {
                AuthDecision::Allowed(Some(user.to_owned()))
            }
            (Some(_), None) => AuthDecision::BadCredentials,
            (None, _) if self.allow_anonymous => AuthDecision::Allowed(None),
            (None, _) => AuthDecision::NotAuthorized,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sha512_hashes_verify() {
        // salt "salt123456ab" (base64 c2FsdDEyMzQ1NmFi), hash = SHA-512("secret" || salt).
        let mut digest = Sha512::new();
        digest.update(b"secret");
        digest.update(b"salt123456ab");
        let hash = STANDARD.encode(digest.finalize());
        let file = PasswordFile::parse(&format!("ha:$6$c2FsdDEyMzQ1NmFi${hash}\n"), "pw").unwrap();
        assert!(file.verify("ha", b"secret"));
        assert!(!file.verify("ha", b"Secret"));
        assert!(!file.verify("nobody", b"secret"));
    }

    #[test]
    fn malformed_lines_name_file_and_line() {
        let e = PasswordFile::parse("# users\nha:$7$x$c2FsdA==$aGFzaA==\n", "/etc/pw").unwrap_err();
        assert_eq!(e.line, 2);
        assert!(
            e.to_string()
                .starts_with("/etc/pw:2: user \"ha\": bad iteration count"),
            "{e}"
        );
        let e = PasswordFile::parse("plainuser:plaintext\n", "pw").unwrap_err();
        assert!(e.message.contains("mosquitto_passwd -U"), "{e}");
        let e = PasswordFile::parse("no-colon-here\n", "pw").unwrap_err();
        assert_eq!(e.line, 1);
    }

    #[test]
    fn debug_lists_users_without_hashes() {
        let file = PasswordFile::parse("ha:$6$c2FsdA==$aGFzaA==\n", "pw").unwrap();
        let debug = format!("{file:?}");
        assert!(debug.contains("\"ha\""));
        assert!(!debug.contains("aGFzaA"));
    }

    #[test]
    fn anonymous_policy() {
        let closed = Authenticator::default();
        assert_eq!(closed.decide(None, None), AuthDecision::NotAuthorized);
        assert_eq!(
            closed.decide(Some("x"), Some(b"y")),
            AuthDecision::BadCredentials
        );
        let open = Authenticator {
            allow_anonymous: true,
            ..Default::default()
        };
        assert_eq!(open.decide(None, None), AuthDecision::Allowed(None));
    }
}

/// Who may connect and what they may touch: the password file, the anonymous
/// switch and the ACL file, swapped as a whole when the files change.
#[derive(Debug, Clone, Default)]
pub struct AccessPolicy {
    pub authenticator: Authenticator,
    pub acl: Option<crate::acl::AclFile>,
}

impl AccessPolicy {
    /// The client's ACL; `None` means no ACL file: everything is allowed.
    pub fn client_acl(
        &self,
        username: Option<&str>,
        client_id: &str,
    ) -> Option<std::sync::Arc<crate::acl::ClientAcl>> {
        self.acl
            .as_ref()
            .map(|acl| std::sync::Arc::new(acl.for_client(username, client_id)))
    }
}

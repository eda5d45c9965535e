//! Topic access control from a Mosquitto `acl_file`, so an existing file keeps
//! working. Lines before the first `user` apply to anonymous clients; `user
//! NAME` starts that user's rules; `pattern` rules apply to every client with
//! `%u` (username) and `%c` (client id) substituted; `topic [read|write|
//! readwrite|deny] TOPIC` grants or denies. With an ACL file, whatever is not
//! granted is denied, and a deny beats any grant.
//!
//! Checked on PUBLISH (write), on SUBSCRIBE (read, the filter must lie within
//! a readable topic), and on every delivery (read), as Mosquitto does.

use std::path::Path;

use crate::topic;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Access {
    Read,
    Write,
    ReadWrite,
    Deny,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Rule {
    access: Access,
    topic: String,
}

/// A parsed ACL file.
#[derive(Debug, Clone, Default)]
pub struct AclFile {
    anonymous: Vec<Rule>,
    users: Vec<(String, Vec<Rule>)>,
    patterns: Vec<Rule>,
}

/// A line of the ACL file that could not be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{file}:{line}: {message}")]
pub struct AclFileError {
    pub file: String,
    pub line: usize,
    pub message: String,
}

/// The rules that apply to one client, with patterns expanded.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClientAcl {
    rules: Vec<Rule>,
}

impl AclFile {
    pub fn load(path: &Path) -> Result<Self, AclFileError> {
        let text = std::fs::read_to_string(path).map_err(|e| AclFileError {
            file: path.display().to_string(),
            line: 0,
            message: format!("cannot read ACL file: {e}"),
        })?;
        Self::parse(&text, &path.display().to_string())
    }

    pub fn parse(text: &str, file: &str) -> Result<Self, AclFileError> {
        let mut acl = Self::default();
        let mut current_user: Option<usize> = None;
        for (index, raw) in text.lines().enumerate() {
            let line = raw.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let error = |message: String| AclFileError {
                file: file.to_owned(),
                line: index + 1,
                message,
            };
            let (keyword, rest) = line.split_once(char::is_whitespace).unwrap_or((line, ""));
            let rest = rest.trim();
            match keyword {
                "user" => {
                    if rest.is_empty() {
                        return Err(error("`user` needs a name".into()));
                    }
                    acl.users.push((rest.to_owned(), Vec::new()));
                    current_user = Some(acl.users.len() - 1);
                }
                "topic" | "pattern" => {
                    let rule = parse_rule(rest).map_err(error)?;
                    match (keyword, current_user) {
                        ("pattern", _) => acl.patterns.push(rule),
                        (_, Some(user)) => acl.users[user].1.push(rule),
                        (_, None) => acl.anonymous.push(rule),
                    }
                }
                other => return Err(error(format!("unknown keyword {other:?}"))),
            }
        }
        Ok(acl)
    }

    /// The rules for a client: its user's (or the anonymous ones) plus every
    /// pattern with `%u` and `%c` filled in.
    pub fn for_client(&self, username: Option<&str>, client_id: &str) -> ClientAcl {
        let mut rules = match username {
            Some(user) => self
                .users
                .iter()
                .filter(|(name, _)| name == user)
                .flat_map(|(_, rules)| rules.iter().cloned())
                .collect(),
            None => self.anonymous.clone(),
        };
        for pattern in &self.patterns {
            if let Some(topic) = substitute(&pattern.topic, username, client_id) {
                rules.push(Rule {
                    access: pattern.access,
                    topic,
                });
            }
        }
        ClientAcl { rules }
    }
}

/// A pattern's topic with `%u` and `%c` filled in, in one pass: a value is
/// inserted once and never read again as part of the pattern (a username
/// `%c` stays `%c`). `None` when the pattern needs a username the client has
/// not got, or a value holds a wildcard or a separator: that would widen the
/// pattern beyond what it names (Mosquitto skips such patterns too).
fn substitute(pattern: &str, username: Option<&str>, client_id: &str) -> Option<String> {
    let mut out = String::with_capacity(pattern.len());
    let mut rest = pattern;
    while let Some(at) = rest.find('%') {
        out.push_str(&rest[..at]);
        let after = &rest[at..];
        let value = if after.starts_with("%u") {
            username?
        } else if after.starts_with("%c") {
            client_id
        } else {
            out.push('%');
            rest = &after[1..];
            continue;
        };
        if value.contains(['+', '#', '/']) {
            return None;
        }
        out.push_str(value);
        rest = &after[2..];
    }
    out.push_str(rest);
    Some(out)
}

fn parse_rule(rest: &str) -> Result<Rule, String> {
    let (access, topic) = match rest.split_once(char::is_whitespace) {
        Some(("read", t)) => (Access::Read, t),
        Some(("write", t)) => (Access::Write, t),
        Some(("readwrite", t)) => (Access::ReadWrite, t),
        Some(("deny", t)) => (Access::Deny, t),
        // No access word: readwrite, as in Mosquitto.
        _ => (Access::ReadWrite, rest),
    };
    let topic = topic.trim();
    topic::validate_filter(topic).map_err(|e| format!("topic {topic:?}: {e}"))?;
    Ok(Rule {
        access,
        topic: topic.to_owned(),
    })
}

impl ClientAcl {
    /// May the client publish to `topic_name`?
    pub fn can_write(&self, topic_name: &str) -> bool {
        self.allowed(
            topic_name,
            |a| matches!(a, Access::Write | Access::ReadWrite),
            topic::matches,
        )
    }

    /// May the client receive a message on `topic_name`?
    pub fn can_read(&self, topic_name: &str) -> bool {
        self.allowed(
            topic_name,
            |a| matches!(a, Access::Read | Access::ReadWrite),
            topic::matches,
        )
    }

    /// May the client subscribe to `filter`? It must lie entirely within a
    /// readable topic (`a/#` is within `a/#` or `#`, not within `a/b`).
    pub fn can_subscribe(&self, filter: &str) -> bool {
        self.allowed(
            filter,
            |a| matches!(a, Access::Read | Access::ReadWrite),
            covers_reversed,
        )
    }

    fn allowed(
        &self,
        subject: &str,
        grants: impl Fn(Access) -> bool,
        within: impl Fn(&str, &str) -> bool,
    ) -> bool {
        let denied = self
            .rules
            .iter()
            .any(|r| r.access == Access::Deny && within(subject, &r.topic));
        !denied
            && self
                .rules
                .iter()
                .any(|r| grants(r.access) && within(subject, &r.topic))
    }
}

/// `covers(rule, filter)` with the arguments in `within` order.
fn covers_reversed(filter: &str, rule: &str) -> bool {
    covers(rule, filter)
}

/// Whether every topic `filter` can match is also matched by `rule`.
pub fn covers(rule: &str, filter: &str) -> bool {
    // Wildcards at a rule's first level never reach `$` topics.
    if filter.starts_with('$') && (rule.starts_with('+') || rule.starts_with('#')) {
        return false;
    }
    let mut rule_levels = rule.split('/');
    let mut filter_levels = filter.split('/');
    loop {
        match (rule_levels.next(), filter_levels.next()) {
            (Some("#"), _) => return true,
            (Some("+"), Some(f)) if f != "#" => {}
            (Some(r), Some(f)) if r == f && r != "+" => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FILE: &str = "\
# anonymous clients may only read the bridge state
topic read zigbee2mqtt/bridge/state

user homeassistant
topic readwrite homeassistant/#
topic read zigbee2mqtt/#
topic write zigbee2mqtt/+/set
topic deny zigbee2mqtt/secret/#

user zigbee2mqtt
topic zigbee2mqtt/#
topic write homeassistant/#

pattern readwrite devices/%u/#
pattern read clients/%c/status
";

    fn acl() -> AclFile {
        AclFile::parse(FILE, "acl").unwrap()
    }

    #[test]
    fn user_rules_grant_and_deny() {
        let ha = acl().for_client(Some("homeassistant"), "ha-1");
        assert!(ha.can_write("homeassistant/status"));
        assert!(ha.can_read("zigbee2mqtt/kitchen"));
        assert!(!ha.can_write("zigbee2mqtt/kitchen"));
        assert!(ha.can_write("zigbee2mqtt/kitchen/set"));
        assert!(!ha.can_read("zigbee2mqtt/secret/key"), "deny beats read");
        assert!(!ha.can_read("other/topic"), "not granted is denied");
    }

    #[test]
    fn subscriptions_must_lie_within_a_readable_topic() {
        let ha = acl().for_client(Some("homeassistant"), "ha-1");
        assert!(ha.can_subscribe("zigbee2mqtt/#"));
        assert!(ha.can_subscribe("zigbee2mqtt/+/availability"));
        assert!(ha.can_subscribe("homeassistant/+/+/config"));
        assert!(!ha.can_subscribe("#"), "wider than any grant");
        assert!(!ha.can_subscribe("zigbee2mqtt/secret/#"));
    }

    #[test]
    fn patterns_substitute_username_and_client_id() {
        let z = acl().for_client(Some("zigbee2mqtt"), "z2m");
        assert!(z.can_write("devices/zigbee2mqtt/x"));
        assert!(!z.can_write("devices/homeassistant/x"));
        assert!(z.can_read("clients/z2m/status"));
        assert!(!z.can_read("clients/other/status"));
        // A client id with wildcards must not widen the pattern.
        let sneaky = acl().for_client(Some("zigbee2mqtt"), "#");
        assert!(!sneaky.can_read("clients/anything/status"));
        // Nor a username that is itself a placeholder: `%c` filled in for
        // `%u` is not filled in again with the client id.
        let nested = acl().for_client(Some("%c"), "#");
        assert!(!nested.can_write("devices/anything/x"));
        assert!(!nested.can_subscribe("devices/#"));
        assert!(nested.can_write("devices/%c/x"));
    }

    #[test]
    fn anonymous_gets_the_rules_before_any_user() {
        let anon = acl().for_client(None, "anon");
        assert!(anon.can_read("zigbee2mqtt/bridge/state"));
        assert!(!anon.can_write("zigbee2mqtt/bridge/state"));
        assert!(!anon.can_read("homeassistant/status"));
    }

    #[test]
    fn malformed_lines_name_the_line() {
        let e = AclFile::parse("user ha\ntopic read a/#/b\n", "/etc/acl").unwrap_err();
        assert_eq!(e.line, 2);
        assert!(
            e.to_string().starts_with("/etc/acl:2: topic \"a/#/b\""),
            "{e}"
        );
        let e = AclFile::parse("topik read a\n", "acl").unwrap_err();
        assert!(e.message.contains("unknown keyword"));
    }

    #[test]
    fn covering() {
        assert!(covers("#", "a/b/#"));
        assert!(covers("a/#", "a"));
        assert!(covers("a/+/c", "a/b/c"));
        assert!(covers("a/+/c", "a/+/c"));
        assert!(!covers("a/+/c", "a/#"));
        assert!(!covers("a/b", "a/+"));
        assert!(!covers("#", "$SYS/broker"));
        assert!(covers("$SYS/#", "$SYS/broker/+"));
    }
}

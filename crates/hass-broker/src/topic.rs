//! Topic names and filters: validation and matching per MQTT 3.1.1 §4.7 and
//! MQTT 5 §4.7, including the rule that wildcards at the first level never
//! match `$`-topics (`#` must not deliver `$SYS/...`, but `$SYS/#` must).

/// Why a topic or filter is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TopicError {
    #[error("empty topic")]
    Empty,
    #[error("topic name contains a wildcard")]
    WildcardInName,
    #[error("topic contains a NUL character")]
    Nul,
    #[error("`#` must be the last level of a filter, on its own")]
    MisplacedHash,
    #[error("`+` must occupy a whole level of a filter")]
    MisplacedPlus,
    #[error("shared subscription needs `$share/<group>/<filter>` with a non-empty group")]
    BadShare,
    #[error("a filter has at most {MAX_FILTER_LEVELS} levels")]
    TooDeep,
}

/// The most levels a subscription filter may have: Mosquitto 2.0's limit
/// (201 levels; it disconnects a client that asks for 202). Each level of
/// a held filter is a node of the broker's subscription tree, so without
/// it one 65 535-byte filter was 32 767 nodes.
pub const MAX_FILTER_LEVELS: usize = 201;

/// Checks a topic name a client publishes to.
pub fn validate_name(topic: &str) -> Result<(), TopicError> {
    if topic.is_empty() {
        return Err(TopicError::Empty);
    }
    if topic.contains(['+', '#']) {
        return Err(TopicError::WildcardInName);
    }
    if topic.contains('\0') {
        return Err(TopicError::Nul);
    }
    Ok(())
}

/// Checks a subscription filter (without a `$share/` prefix).
pub fn validate_filter(filter: &str) -> Result<(), TopicError> {
    if filter.is_empty() {
        return Err(TopicError::Empty);
    }
    if filter.contains('\0') {
        return Err(TopicError::Nul);
    }
    if filter.split('/').count() > MAX_FILTER_LEVELS {
        return Err(TopicError::TooDeep);
    }
    let mut levels = filter.split('/').peekable();
    while let Some(level) = levels.next() {
        if level.contains('#') && (level != "#" || levels.peek().is_some()) {
            return Err(TopicError::MisplacedHash);
        }
        if level.contains('+') && level != "+" {
            return Err(TopicError::MisplacedPlus);
        }
    }
    Ok(())
}

/// A subscription filter split from an optional shared-subscription group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParsedFilter<'a> {
    pub share_group: Option<&'a str>,
    pub filter: &'a str,
}

/// Parses and validates a filter as it appears in SUBSCRIBE.
pub fn parse_filter(raw: &str) -> Result<ParsedFilter<'_>, TopicError> {
    if let Some(rest) = raw.strip_prefix("$share/") {
        let (group, filter) = rest.split_once('/').ok_or(TopicError::BadShare)?;
        if group.is_empty() || group.contains(['+', '#']) {
            return Err(TopicError::BadShare);
        }
        validate_filter(filter)?;
        return Ok(ParsedFilter {
            share_group: Some(group),
            filter,
        });
    }
    validate_filter(raw)?;
    Ok(ParsedFilter {
        share_group: None,
        filter: raw,
    })
}

/// Whether `topic` (a valid name) matches `filter` (a valid filter).
pub fn matches(topic: &str, filter: &str) -> bool {
    // Wildcards at the first level never match topics starting with `$`.
    if topic.starts_with('$') && (filter.starts_with('+') || filter.starts_with('#')) {
        return false;
    }
    let mut topic_levels = topic.split('/');
    let mut filter_levels = filter.split('/');
    loop {
        match (filter_levels.next(), topic_levels.next()) {
            // `a/#` also matches `a` itself: `#` covers the parent level.
            (Some("#"), _) => return true,
            (Some("+"), Some(_)) => {}
            (Some(f), Some(t)) if f == t => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matching_follows_the_spec_examples() {
        let cases = [
            ("sport/tennis/player1", "sport/tennis/player1/#", true),
            (
                "sport/tennis/player1/ranking",
                "sport/tennis/player1/#",
                true,
            ),
            ("sport/tennis/player1", "sport/#", true),
            ("sport", "sport/#", true),
            ("sport/tennis/player1", "sport/tennis/+", true),
            ("sport/tennis/player1/ranking", "sport/tennis/+", false),
            ("sport", "sport/+", false),
            ("sport/", "sport/+", true),
            ("/finance", "+/+", true),
            ("/finance", "/+", true),
            ("/finance", "+", false),
            ("homeassistant/sensor/x/config", "homeassistant/#", true),
            (
                "homeassistant/sensor/x/config",
                "homeassistant/+/+/config",
                true,
            ),
            ("$SYS/broker/clients", "#", false),
            ("$SYS/broker/clients", "+/broker/clients", false),
            ("$SYS/broker/clients", "$SYS/#", true),
            ("$SYS/broker/clients", "$SYS/+/clients", true),
            ("a/b", "a/b/c", false),
            ("a/b/c", "a/b", false),
        ];
        for (topic, filter, want) in cases {
            assert_eq!(matches(topic, filter), want, "{topic} ~ {filter}");
        }
    }

    #[test]
    fn invalid_filters_are_refused() {
        for bad in ["", "a/#/b", "a#", "a/b+", "+a", "a\0b"] {
            assert!(validate_filter(bad).is_err(), "{bad:?}");
        }
        for good in ["#", "+", "a/+/b", "a/#", "/", "+/+"] {
            assert!(validate_filter(good).is_ok(), "{good:?}");
        }
        let deepest = vec!["a"; MAX_FILTER_LEVELS].join("/");
        assert_eq!(validate_filter(&deepest), Ok(()));
        assert_eq!(
            validate_filter(&format!("{deepest}/#")),
            Err(TopicError::TooDeep)
        );
    }

    #[test]
    fn shared_subscriptions_parse() {
        assert_eq!(
            parse_filter("$share/workers/jobs/+").unwrap(),
            ParsedFilter {
                share_group: Some("workers"),
                filter: "jobs/+"
            }
        );
        assert_eq!(parse_filter("$share//jobs"), Err(TopicError::BadShare));
        assert_eq!(parse_filter("$share/g"), Err(TopicError::BadShare));
    }

    #[test]
    fn names_with_wildcards_are_refused() {
        assert_eq!(validate_name("a/+"), Err(TopicError::WildcardInName));
        assert_eq!(validate_name(""), Err(TopicError::Empty));
        assert!(validate_name("homeassistant/status").is_ok());
    }
}

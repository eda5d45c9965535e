//! YAML 1.1 scalars as PyYAML's safe loader reads them: `on`, `yes` and `off` are
//! booleans, `012` is octal, `1:20` is 80, `1e3` is a string (a float needs a dot),
//! `2024-01-31` is a date. Home Assistant uses PyYAML, so so do we.

use crate::value::Value;

/// What a plain (unquoted, untagged) scalar resolves to.
#[derive(Debug, PartialEq)]
pub(crate) enum Plain {
    Value(Value),
    /// `<<`, the merge key.
    Merge,
    /// `=`, PyYAML's `!!value` tag, for which the safe loader has no constructor.
    ValueTag,
}

pub(crate) const CORE_TAG_PREFIX: &str = "tag:yaml.org,2002:";

/// Resolves a plain scalar by PyYAML's implicit resolvers, in their order; a
/// string keeps the caller's buffer.
pub(crate) fn resolve_plain(text: String) -> Result<Plain, String> {
    resolve_non_string(&text).unwrap_or(Ok(Plain::Value(Value::Str(text))))
}

/// The resolution of a plain scalar, or None when it is a plain string.
fn resolve_non_string(text: &str) -> Option<Result<Plain, String>> {
    Some(if is_bool(text) {
        Ok(Plain::Value(Value::Bool(bool_value(text).unwrap_or(false))))
    } else if is_float(text) {
        construct_float(text).map(|f| Plain::Value(Value::Float(f)))
    } else if is_int(text) {
        construct_int(text).map(Plain::Value)
    } else {
        match text {
            "<<" => Ok(Plain::Merge),
            "" | "~" | "null" | "Null" | "NULL" => Ok(Plain::Value(Value::Null)),
            "=" => Ok(Plain::ValueTag),
            _ if is_timestamp(text) => {
                check_timestamp(text).map(|()| Plain::Value(Value::Timestamp(text.to_owned())))
            }
            _ => return None,
        }
    })
}

/// Builds a scalar with an explicit core tag (`!!int 12`), or says why it can't.
pub(crate) fn construct_tagged(suffix: &str, text: &str) -> Result<Value, String> {
    match suffix {
        "str" => Ok(Value::Str(text.to_owned())),
        "null" => Ok(Value::Null),
        "bool" => bool_value(text)
            .map(Value::Bool)
            .ok_or_else(|| format!("invalid boolean {text:?}")),
        "int" => {
            if is_int(text) {
                construct_int(text)
            } else {
                Err(format!("invalid literal for int(): {text:?}"))
            }
        }
        "float" => construct_float(text).map(Value::Float),
        "timestamp" => {
            if is_timestamp(text) {
                check_timestamp(text)?;
                Ok(Value::Timestamp(text.to_owned()))
            } else {
                Err(format!("invalid timestamp {text:?}"))
            }
        }
        "binary" => Ok(Value::Binary(text.to_owned())),
        _ => Err(format!(
            "could not determine a constructor for the tag '{CORE_TAG_PREFIX}{suffix}'"
        )),
    }
}

fn is_bool(text: &str) -> bool {
    matches!(
        text,
        "yes"
            | "Yes"
            | "YES"
            | "no"
            | "No"
            | "NO"
            | "true"
            | "True"
            | "TRUE"
            | "false"
            | "False"
            | "FALSE"
            | "on"
            | "On"
            | "ON"
            | "off"
            | "Off"
            | "OFF"
    )
}

/// PyYAML's `bool_values`, looked up in lower case.
fn bool_value(text: &str) -> Option<bool> {
    match text.to_lowercase().as_str() {
        "yes" | "true" | "on" => Some(true),
        "no" | "false" | "off" => Some(false),
        _ => None,
    }
}

fn strip_sign(text: &str) -> &str {
    text.strip_prefix(['-', '+']).unwrap_or(text)
}

/// `[0-9][0-9_]*` at the start; returns the rest, or None if no leading digit.
fn digits_underscores(text: &str) -> Option<&str> {
    let mut chars = text.char_indices();
    match chars.next() {
        Some((_, c)) if c.is_ascii_digit() => {}
        _ => return None,
    }
    let end = text
        .char_indices()
        .find(|&(_, c)| !(c.is_ascii_digit() || c == '_'))
        .map_or(text.len(), |(i, _)| i);
    Some(&text[end..])
}

fn all_match(text: &str, f: impl Fn(char) -> bool) -> bool {
    text.chars().all(f)
}

/// `(?::[0-5]?[0-9])+` consuming the whole of `text`.
fn sexagesimal_tail(mut text: &str) -> bool {
    if text.is_empty() {
        return false;
    }
    while !text.is_empty() {
        let Some(rest) = text.strip_prefix(':') else {
            return false;
        };
        let bytes = rest.as_bytes();
        let len = match bytes {
            [a, b, ..] if (b'0'..=b'5').contains(a) && b.is_ascii_digit() => 2,
            [a, ..] if a.is_ascii_digit() => 1,
            _ => return false,
        };
        text = &rest[len..];
    }
    true
}

/// Like `sexagesimal_tail`, but the last group may be followed by `\.[0-9_]*`.
fn sexagesimal_float_tail(text: &str) -> bool {
    match text.find('.') {
        Some(dot) => {
            sexagesimal_tail(&text[..dot])
                && all_match(&text[dot + 1..], |c| c.is_ascii_digit() || c == '_')
        }
        None => false,
    }
}

/// `(?:[eE][-+][0-9]+)?` consuming all of `text`.
fn exponent(text: &str) -> bool {
    if text.is_empty() {
        return true;
    }
    let Some(rest) = text.strip_prefix(['e', 'E']) else {
        return false;
    };
    let Some(rest) = rest.strip_prefix(['-', '+']) else {
        return false;
    };
    !rest.is_empty() && all_match(rest, |c| c.is_ascii_digit())
}

fn is_float(text: &str) -> bool {
    if matches!(text, ".nan" | ".NaN" | ".NAN") {
        return true;
    }
    if let Some(rest) = text.strip_prefix('.') {
        // `\.[0-9][0-9_]*(?:[eE][-+][0-9]+)?`, unsigned.
        if let Some(after) = digits_underscores(rest) {
            return exponent(after);
        }
    }
    let unsigned = strip_sign(text);
    if matches!(unsigned, ".inf" | ".Inf" | ".INF") {
        return true;
    }
    let Some(after_int) = digits_underscores(unsigned) else {
        return false;
    };
    if let Some(frac) = after_int.strip_prefix('.') {
        let end = frac
            .char_indices()
            .find(|&(_, c)| !(c.is_ascii_digit() || c == '_'))
            .map_or(frac.len(), |(i, _)| i);
        return exponent(&frac[end..]);
    }
    after_int.starts_with(':') && sexagesimal_float_tail(after_int)
}

fn is_int(text: &str) -> bool {
    let unsigned = strip_sign(text);
    if let Some(bin) = unsigned.strip_prefix("0b") {
        return !bin.is_empty() && all_match(bin, |c| c == '0' || c == '1' || c == '_');
    }
    if let Some(hex) = unsigned.strip_prefix("0x") {
        return !hex.is_empty() && all_match(hex, |c| c.is_ascii_hexdigit() || c == '_');
    }
    if unsigned == "0" {
        return true;
    }
    if let Some(oct) = unsigned.strip_prefix('0') {
        return all_match(oct, |c| ('0'..='7').contains(&c) || c == '_');
    }
    match unsigned.chars().next() {
        Some('1'..='9') => {}
        _ => return false,
    }
    let Some(rest) = digits_underscores(unsigned) else {
        return false;
    };
    rest.is_empty() || sexagesimal_tail(rest)
}

fn construct_int(text: &str) -> Result<Value, String> {
    let cleaned: String = text.chars().filter(|&c| c != '_').collect();
    let (negative, digits) = match cleaned.as_bytes().first() {
        Some(b'-') => (true, &cleaned[1..]),
        Some(b'+') => (false, &cleaned[1..]),
        _ => (false, &cleaned[..]),
    };
    let parsed = if digits == "0" {
        Ok(0)
    } else if let Some(bin) = digits.strip_prefix("0b") {
        i128::from_str_radix(bin, 2)
    } else if let Some(hex) = digits.strip_prefix("0x") {
        i128::from_str_radix(hex, 16)
    } else if let Some(oct) = digits.strip_prefix('0') {
        i128::from_str_radix(oct, 8)
    } else if digits.contains(':') {
        digits.split(':').try_fold(0i128, |acc, part| {
            part.parse::<i128>()
                .map(|p| acc.saturating_mul(60).saturating_add(p))
        })
    } else {
        digits.parse::<i128>()
    };
    let magnitude = parsed.map_err(|_| format!("invalid literal for int(): {text:?}"))?;
    let signed = if negative { -magnitude } else { magnitude };
    // Python ints are unbounded; beyond i64 we keep the nearest float.
    Ok(i64::try_from(signed).map_or(Value::Float(signed as f64), Value::Int))
}

fn construct_float(text: &str) -> Result<f64, String> {
    let cleaned: String = text
        .chars()
        .filter(|&c| c != '_')
        .collect::<String>()
        .to_lowercase();
    let (sign, body) = match cleaned.as_bytes().first() {
        Some(b'-') => (-1.0, &cleaned[1..]),
        Some(b'+') => (1.0, &cleaned[1..]),
        _ => (1.0, &cleaned[..]),
    };
    let invalid = || format!("could not convert string to float: {text:?}");
    if body == ".inf" {
        return Ok(sign * f64::INFINITY);
    }
    if body == ".nan" {
        return Ok(f64::NAN);
    }
    if body.contains(':') {
        let mut value = 0.0;
        for part in body.split(':') {
            value = value * 60.0 + part.parse::<f64>().map_err(|_| invalid())?;
        }
        return Ok(sign * value);
    }
    body.parse::<f64>().map(|f| sign * f).map_err(|_| invalid())
}

fn take_digits(text: &str, min: usize, max: usize) -> Option<(&str, &str)> {
    let n = text.bytes().take_while(u8::is_ascii_digit).count();
    (n >= min).then(|| {
        let n = n.min(max);
        (&text[..n], &text[n..])
    })
}

/// The parts of a timestamp PyYAML's regex accepts: (year, month, day, time part).
fn timestamp_parts(text: &str) -> Option<(&str, &str, &str, &str)> {
    let (year, rest) = take_digits(text, 4, 4)?;
    let rest = rest.strip_prefix('-')?;
    let (month, rest) = take_digits(rest, 1, 2)?;
    let rest = rest.strip_prefix('-')?;
    let (day, rest) = take_digits(rest, 1, 2)?;
    Some((year, month, day, rest))
}

fn is_timestamp(text: &str) -> bool {
    let Some((_, month, day, rest)) = timestamp_parts(text) else {
        return false;
    };
    if rest.is_empty() {
        return month.len() == 2 && day.len() == 2;
    }
    let rest = match rest.strip_prefix(['T', 't']) {
        Some(r) => r,
        None => {
            let trimmed = rest.trim_start_matches([' ', '\t']);
            if trimmed.len() == rest.len() {
                return false;
            }
            trimmed
        }
    };
    let Some((_, rest)) = take_digits(rest, 1, 2) else {
        return false;
    };
    let Some(rest) = rest.strip_prefix(':') else {
        return false;
    };
    let Some((_, rest)) = take_digits(rest, 2, 2) else {
        return false;
    };
    let Some(rest) = rest.strip_prefix(':') else {
        return false;
    };
    let Some((_, mut rest)) = take_digits(rest, 2, 2) else {
        return false;
    };
    if let Some(frac) = rest.strip_prefix('.') {
        rest = frac.trim_start_matches(|c: char| c.is_ascii_digit());
    }
    let rest = rest.trim_start_matches([' ', '\t']);
    if rest.is_empty() || rest == "Z" {
        return true;
    }
    let Some(tz) = rest.strip_prefix(['-', '+']) else {
        return false;
    };
    let Some((_, tz)) = take_digits(tz, 1, 2) else {
        return false;
    };
    if tz.is_empty() {
        return true;
    }
    tz.strip_prefix(':')
        .and_then(|m| take_digits(m, 2, 2))
        .is_some_and(|(_, end)| end.is_empty())
}

/// Python's `datetime` rejects impossible dates and times that the regex lets through.
fn check_timestamp(text: &str) -> Result<(), String> {
    let Some((year, month, day, rest)) = timestamp_parts(text) else {
        return Ok(());
    };
    let (year, month, day): (u32, u32, u32) = (
        year.parse().unwrap_or(0),
        month.parse().unwrap_or(0),
        day.parse().unwrap_or(0),
    );
    if year == 0 {
        return Err(format!("year 0 is out of range in {text:?}"));
    }
    if !(1..=12).contains(&month) {
        return Err(format!("month must be in 1..12 in {text:?}"));
    }
    let leap = year % 4 == 0 && (year % 100 != 0 || year % 400 == 0);
    let days = match month {
        2 if leap => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    };
    if day == 0 || day > days {
        return Err(format!("day is out of range for month in {text:?}"));
    }
    let time = rest.trim_start_matches(['T', 't', ' ', '\t']);
    let mut fields = time.split(':').map(|f| {
        f.bytes()
            .take_while(u8::is_ascii_digit)
            .fold(0u32, |acc, b| acc * 10 + u32::from(b - b'0'))
    });
    if !time.is_empty() {
        let (hour, minute, second) = (
            fields.next().unwrap_or(0),
            fields.next().unwrap_or(0),
            fields.next().unwrap_or(0),
        );
        if hour > 23 || minute > 59 || second > 59 {
            return Err(format!("time out of range in {text:?}"));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plain(text: &str) -> Value {
        match resolve_plain(text.to_owned()) {
            Ok(Plain::Value(v)) => v,
            other => panic!("{text:?} resolved to {other:?}"),
        }
    }

    #[test]
    fn yaml_1_1_booleans() {
        for t in ["on", "On", "ON", "yes", "Yes", "true", "TRUE"] {
            assert_eq!(plain(t), Value::Bool(true), "{t}");
        }
        for t in ["off", "no", "NO", "False"] {
            assert_eq!(plain(t), Value::Bool(false), "{t}");
        }
        assert_eq!(plain("oN"), Value::Str("oN".into()));
        assert_eq!(plain("y"), Value::Str("y".into()));
    }

    #[test]
    fn integers_like_pyyaml() {
        assert_eq!(plain("12"), Value::Int(12));
        assert_eq!(plain("-1_000"), Value::Int(-1000));
        assert_eq!(plain("012"), Value::Int(10));
        assert_eq!(plain("0x1F"), Value::Int(31));
        assert_eq!(plain("0b101"), Value::Int(5));
        assert_eq!(plain("1:20"), Value::Int(80));
        assert_eq!(plain("0"), Value::Int(0));
        assert_eq!(plain("09"), Value::Str("09".into()));
        assert_eq!(plain("1:60"), Value::Str("1:60".into()));
    }

    #[test]
    fn floats_need_a_dot() {
        assert_eq!(plain("1.5"), Value::Float(1.5));
        assert_eq!(plain("1."), Value::Float(1.0));
        assert_eq!(plain(".5"), Value::Float(0.5));
        assert_eq!(plain("1.5e+3"), Value::Float(1500.0));
        assert_eq!(plain("-.inf"), Value::Float(f64::NEG_INFINITY));
        assert_eq!(plain("1:30.5"), Value::Float(90.5));
        assert_eq!(plain("1e3"), Value::Str("1e3".into()));
        assert_eq!(plain("1.5e3"), Value::Str("1.5e3".into()));
        assert!(matches!(plain(".nan"), Value::Float(f) if f.is_nan()));
    }

    #[test]
    fn nulls_timestamps_and_specials() {
        assert_eq!(plain(""), Value::Null);
        assert_eq!(plain("~"), Value::Null);
        assert_eq!(plain("NULL"), Value::Null);
        assert_eq!(plain("nUll"), Value::Str("nUll".into()));
        assert_eq!(plain("2024-01-31"), Value::Timestamp("2024-01-31".into()));
        assert_eq!(
            plain("2024-1-3 10:00:00.5 +01:00"),
            Value::Timestamp("2024-1-3 10:00:00.5 +01:00".into())
        );
        assert_eq!(plain("2024-1-3"), Value::Str("2024-1-3".into()));
        assert!(resolve_plain("2024-02-30".to_owned()).is_err());
        assert_eq!(resolve_plain("<<".to_owned()), Ok(Plain::Merge));
        assert_eq!(resolve_plain("=".to_owned()), Ok(Plain::ValueTag));
        assert_eq!(plain("10:00"), Value::Int(600));
    }

    #[test]
    fn explicit_tags() {
        assert_eq!(construct_tagged("str", "12"), Ok(Value::Str("12".into())));
        assert_eq!(construct_tagged("float", "1e3"), Ok(Value::Float(1000.0)));
        assert_eq!(construct_tagged("bool", "ON"), Ok(Value::Bool(true)));
        assert!(construct_tagged("int", "abc").is_err());
        assert!(construct_tagged("python/name", "x").is_err());
    }
}

//! One YAML document as a tree of nodes that keep their tags and positions, built
//! from `saphyr-parser` events. Tags are not interpreted here: the loader does that.

use std::collections::HashMap;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;

use saphyr_parser::{Event, Marker, Parser, ScalarStyle, Span};

/// Deeper nesting is refused: PyYAML's recursive composer hits Python's recursion
/// limit well before this, and refusing it keeps our own recursion bounded.
pub(crate) const MAX_DEPTH: usize = 256;

/// A 1-based line and column, in characters.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Pos {
    pub(crate) line: u32,
    pub(crate) column: u32,
}

impl Pos {
    pub(crate) const START: Pos = Pos { line: 1, column: 1 };

    fn from_marker(marker: &Marker) -> Pos {
        Pos {
            line: u32::try_from(marker.line()).unwrap_or(u32::MAX).max(1),
            column: u32::try_from(marker.col() + 1).unwrap_or(u32::MAX),
        }
    }
}

#[derive(Clone, Debug)]
pub(crate) struct YamlNode {
    /// The full tag (`!include`, `tag:yaml.org,2002:str`), if one was written.
    pub(crate) tag: Option<String>,
    /// Where the node starts, its tag or anchor included.
    pub(crate) pos: Pos,
    pub(crate) kind: YamlKind,
}

#[derive(Clone, Debug)]
pub(crate) enum YamlKind {
    Scalar { text: String, plain: bool },
    Seq(Vec<Arc<YamlNode>>),
    Map(Vec<(Arc<YamlNode>, Arc<YamlNode>)>),
}

impl YamlNode {
    /// The node kind as PyYAML names it in its errors.
    pub(crate) fn kind_name(&self) -> &'static str {
        self.kind.name()
    }
}

impl YamlKind {
    /// As PyYAML names it in its errors.
    pub(crate) fn name(&self) -> &'static str {
        match self {
            YamlKind::Scalar { .. } => "scalar",
            YamlKind::Seq(_) => "sequence",
            YamlKind::Map(_) => "mapping",
        }
    }
}

/// Why a document could not be read, and where.
#[derive(Debug, PartialEq)]
pub(crate) struct SyntaxError {
    pub(crate) pos: Pos,
    pub(crate) message: String,
}

struct Frame {
    tag: Option<String>,
    pos: Pos,
    anchor: usize,
    is_map: bool,
    /// Where this collection's children start in the shared `items` stack.
    start: usize,
}

/// Parses one YAML stream. `Ok(None)` is an empty stream, which Python loads as None.
pub(crate) fn parse(text: &str) -> Result<Option<Arc<YamlNode>>, SyntaxError> {
    check_printable(text)?;
    // The parser is third-party code fed arbitrary bytes: a panic in it must become a
    // diagnostic, not take the process down.
    catch_unwind(AssertUnwindSafe(|| build(text))).unwrap_or_else(|_| {
        Err(SyntaxError {
            pos: Pos::START,
            message: "the YAML parser failed on this file".to_owned(),
        })
    })
}

fn build(text: &str) -> Result<Option<Arc<YamlNode>>, SyntaxError> {
    let mut stack: Vec<Frame> = Vec::new();
    // The children of every open collection, innermost last: each collection
    // takes its own off the end in one exact-size allocation, instead of
    // growing a vector of its own.
    let mut items: Vec<Arc<YamlNode>> = Vec::new();
    let mut anchors: HashMap<usize, Arc<YamlNode>> = HashMap::new();
    let mut root: Option<Arc<YamlNode>> = None;
    let mut documents = 0;
    for event in Parser::new_from_str(text) {
        let (event, span): (Event<'_>, Span) = event.map_err(|e| SyntaxError {
            pos: Pos::from_marker(e.marker()),
            message: e.info().to_owned(),
        })?;
        let pos = Pos::from_marker(&span.start);
        let is_map_start = matches!(event, Event::MappingStart(..));
        let node = match event {
            Event::DocumentStart(_) => {
                documents += 1;
                if documents > 1 {
                    return Err(SyntaxError {
                        pos,
                        message:
                            "expected a single document in the stream, but found another document"
                                .to_owned(),
                    });
                }
                continue;
            }
            Event::Scalar(value, style, anchor, tag) => {
                let mut text = value.into_owned();
                // The scanner sizes plain scalars for a long line (100+ bytes);
                // most are a word. The tree keeps them all, so give the rest back.
                if text.capacity() - text.len() >= 16 {
                    text.shrink_to_fit();
                }
                let node = Arc::new(YamlNode {
                    tag: tag.map(|t| format!("{}{}", t.handle, t.suffix)),
                    pos,
                    kind: YamlKind::Scalar {
                        text,
                        plain: style == ScalarStyle::Plain,
                    },
                });
                if anchor > 0 {
                    anchors.insert(anchor, Arc::clone(&node));
                }
                node
            }
            Event::SequenceStart(anchor, tag) | Event::MappingStart(anchor, tag) => {
                let is_map = is_map_start;
                if stack.len() >= MAX_DEPTH {
                    return Err(SyntaxError {
                        pos,
                        message: format!("nesting deeper than {MAX_DEPTH} levels"),
                    });
                }
                stack.push(Frame {
                    tag: tag.map(|t| format!("{}{}", t.handle, t.suffix)),
                    pos,
                    anchor,
                    is_map,
                    start: items.len(),
                });
                continue;
            }
            Event::SequenceEnd | Event::MappingEnd => {
                let Some(frame) = stack.pop() else {
                    continue;
                };
                let mut children = items.drain(frame.start..);
                let kind = if frame.is_map {
                    let mut pairs = Vec::with_capacity(children.len() / 2);
                    while let (Some(k), Some(v)) = (children.next(), children.next()) {
                        pairs.push((k, v));
                    }
                    YamlKind::Map(pairs)
                } else {
                    YamlKind::Seq(children.collect())
                };
                let node = Arc::new(YamlNode {
                    tag: frame.tag,
                    pos: frame.pos,
                    kind,
                });
                if frame.anchor > 0 {
                    anchors.insert(frame.anchor, Arc::clone(&node));
                }
                node
            }
            Event::Alias(id) => match anchors.get(&id) {
                Some(node) => Arc::clone(node),
                // The parser only rejects unknown anchors; one still being built is
                // a recursive structure, which we cannot represent.
                None => {
                    return Err(SyntaxError {
                        pos,
                        message: "found a recursive alias (an alias inside its own anchor)"
                            .to_owned(),
                    });
                }
            },
            Event::StreamStart | Event::StreamEnd | Event::DocumentEnd | Event::Nothing => continue,
        };
        if stack.is_empty() {
            root = Some(node);
        } else {
            items.push(node);
        }
    }
    Ok(root)
}

/// PyYAML's reader refuses control characters anywhere in the stream (even in
/// comments), before parsing starts.
fn check_printable(text: &str) -> Result<(), SyntaxError> {
    // Nearly every config is printable ASCII: check its bytes in one pass and
    // count lines and columns only when something is off.
    // Whole chunks without early exit, so the compiler can check many bytes
    // per instruction.
    let ascii_ok = |b: u8| matches!(b, b'\t' | b'\n' | b'\r' | 0x20..=0x7E);
    let all_ok = text
        .as_bytes()
        .chunks(64)
        .all(|chunk| chunk.iter().fold(true, |ok, &b| ok & ascii_ok(b)));
    if all_ok {
        return Ok(());
    }
    let mut line = 1u32;
    let mut column = 1u32;
    for c in text.chars() {
        let allowed = matches!(c, '\t' | '\n' | '\r' | '\u{20}'..='\u{7E}' | '\u{85}' | '\u{A0}'..='\u{D7FF}' | '\u{E000}'..='\u{FFFD}' | '\u{10000}'..);
        if !allowed {
            return Err(SyntaxError {
                pos: Pos { line, column },
                message: format!(
                    "unacceptable character #x{:04x}: special characters are not allowed",
                    u32::from(c)
                ),
            });
        }
        if c == '\n' {
            line += 1;
            column = 1;
        } else if c != '\u{FEFF}' || line > 1 || column > 1 {
            column += 1;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_point_at_tags_and_keys() {
        let root = parse("a: !include x.yaml\nb:\n  - 1\n").unwrap().unwrap();
        let YamlKind::Map(pairs) = &root.kind else {
            panic!("not a map")
        };
        assert_eq!(pairs[0].1.tag.as_deref(), Some("!include"));
        assert_eq!(pairs[0].1.pos, Pos { line: 1, column: 4 });
        assert_eq!(pairs[1].0.pos, Pos { line: 2, column: 1 });
    }

    #[test]
    fn empty_stream_is_none_and_errors_have_positions() {
        assert!(parse("# nothing\n").unwrap().is_none());
        let err = parse("a: b: c\n").unwrap_err();
        assert_eq!(err.pos, Pos { line: 1, column: 5 });
        let err = parse("a: 1\n---\nb: 2\n").unwrap_err();
        assert_eq!(err.pos.line, 2);
        let err = parse("a: 1\n\u{0}").unwrap_err();
        assert_eq!(err.pos, Pos { line: 2, column: 1 });
    }

    #[test]
    fn aliases_share_nodes_and_recursion_is_refused() {
        let root = parse("a: &x [1]\nb: *x\n").unwrap().unwrap();
        let YamlKind::Map(pairs) = &root.kind else {
            panic!("not a map")
        };
        assert!(Arc::ptr_eq(&pairs[0].1, &pairs[1].1));
        assert!(parse("a: &x [*x]\n").is_err());
        let deep = "[".repeat(10_000);
        assert!(parse(&deep).is_err());
    }
}

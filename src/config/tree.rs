//! The YAML document as a tree, read so that one mistake never hides the
//! next: duplicate keys are reported at their own line (the first value
//! wins), and [`collect`] deserializes a section reporting every bad key —
//! unknown, wrong type, bad value — instead of stopping at the first.

use std::collections::HashMap;

use serde::de::DeserializeOwned;
use serde_path_to_error::Segment;
use serde_yaml::{Mapping, Value};
use yaml_rust2::parser::{Event, MarkedEventReceiver, Parser};
use yaml_rust2::scanner::{Marker, TScalarStyle};

use super::Problem;

/// Builds `text` into a tree. A syntax error (nothing readable past it)
/// is the one problem returned; duplicate keys are problems beside a tree.
pub fn build(text: &str) -> Result<(Value, Vec<Problem>), Problem> {
    let mut builder = Builder::default();
    let mut parser = Parser::new_from_str(text);
    if let Err(e) = parser.load(&mut builder, false) {
        let mark = e.marker();
        let mut message = e.info().to_string();
        message.insert_str(0, "YAML syntax: ");
        return Err(Problem {
            path: String::new(),
            position: Some((mark.line(), mark.col() + 1)),
            message,
        });
    }
    Ok((builder.root.unwrap_or(Value::Null), builder.duplicates))
}

enum Node {
    Map {
        map: Mapping,
        path: String,
        /// The pending key; `None` means the next node is a key.
        key: Option<Value>,
        /// Where the pending key was written.
        key_at: (usize, usize),
        anchor: usize,
    },
    Seq {
        seq: Vec<Value>,
        path: String,
        anchor: usize,
    },
}

#[derive(Default)]
struct Builder {
    stack: Vec<Node>,
    root: Option<Value>,
    anchors: HashMap<usize, Value>,
    duplicates: Vec<Problem>,
}

fn key_text(key: &Value) -> String {
    match key {
        Value::String(s) => s.clone(),
        other => serde_yaml::to_string(other)
            .map(|s| s.trim_end().to_string())
            .unwrap_or_default(),
    }
}

fn join(prefix: &str, key: &str) -> String {
    if prefix.is_empty() {
        key.to_string()
    } else {
        format!("{prefix}.{key}")
    }
}

/// A plain scalar as YAML's core schema reads it (`~`, `true`, `12`, `1.5`
/// …); quoted ones are strings.
fn scalar(text: String, style: TScalarStyle) -> Value {
    if style != TScalarStyle::Plain {
        return Value::String(text);
    }
    match serde_yaml::from_str::<Value>(&text) {
        Ok(v @ (Value::Null | Value::Bool(_) | Value::Number(_))) => v,
        _ => Value::String(text),
    }
}

impl Builder {
    /// The path of the node that starts now (for a container).
    fn child_path(&self) -> String {
        match self.stack.last() {
            None => String::new(),
            Some(Node::Seq { seq, path, .. }) => format!("{path}[{}]", seq.len()),
            Some(Node::Map { path, key, .. }) => {
                join(path, &key.as_ref().map(key_text).unwrap_or_default())
            }
        }
    }

    /// Places a finished node in its parent (or as the root).
    fn finish(&mut self, value: Value, anchor: usize, mark: Marker) {
        if anchor > 0 {
            self.anchors.insert(anchor, value.clone());
        }
        match self.stack.last_mut() {
            None => self.root = Some(value),
            Some(Node::Seq { seq, .. }) => seq.push(value),
            Some(Node::Map {
                map,
                key,
                key_at,
                path,
                ..
            }) => match key.take() {
                None => {
                    *key = Some(value);
                    *key_at = (mark.line(), mark.col() + 1);
                }
                Some(k) => {
                    if map.contains_key(&k) {
                        let at = join(path, &key_text(&k));
                        self.duplicates.push(Problem {
                            path: at,
                            position: Some(*key_at),
                            message:
                                "duplicate key: it is already set above (the first value is used)"
                                    .into(),
                        });
                    } else {
                        map.insert(k, value);
                    }
                }
            },
        }
    }
}

impl MarkedEventReceiver for Builder {
    fn on_event(&mut self, event: Event, mark: Marker) {
        match event {
            Event::Scalar(text, style, anchor, _) => {
                let value = scalar(text, style);
                self.finish(value, anchor, mark);
            }
            Event::Alias(id) => {
                let value = self.anchors.get(&id).cloned().unwrap_or(Value::Null);
                self.finish(value, 0, mark);
            }
            Event::MappingStart(anchor, _) => {
                let path = self.child_path();
                self.stack.push(Node::Map {
                    map: Mapping::new(),
                    path,
                    key: None,
                    key_at: (mark.line(), mark.col() + 1),
                    anchor,
                });
            }
            Event::SequenceStart(anchor, _) => {
                let path = self.child_path();
                self.stack.push(Node::Seq {
                    seq: Vec::new(),
                    path,
                    anchor,
                });
            }
            Event::MappingEnd => {
                if let Some(Node::Map { map, anchor, .. }) = self.stack.pop() {
                    self.finish(Value::Mapping(map), anchor, mark);
                }
            }
            Event::SequenceEnd => {
                if let Some(Node::Seq { seq, anchor, .. }) = self.stack.pop() {
                    self.finish(Value::Sequence(seq), anchor, mark);
                }
            }
            _ => {}
        }
    }
}

/// At most this many mistakes are collected from one section (then the
/// section is given up): a config is not a million lines of errors.
const MAX_ROUNDS: usize = 1000;

/// Deserializes `T` from `value`, reporting every bad key instead of the
/// first: each one is recorded (key path and message), taken out, and the
/// rest tried again, so the default applies where it was and the next
/// mistake shows. `None` when what is left still cannot be read.
pub fn collect<T: DeserializeOwned>(mut value: Value, problems: &mut Vec<Problem>) -> Option<T> {
    for _ in 0..MAX_ROUNDS {
        let error = match serde_path_to_error::deserialize::<_, T>(value.clone()) {
            Ok(t) => return Some(t),
            Err(e) => e,
        };
        let segments: Vec<Segment> = error.path().iter().cloned().collect();
        let path = error.path().to_string();
        let message = error.into_inner().to_string();
        problems.push(Problem::new(
            if path == "." { String::new() } else { path },
            explain(&message),
        ));
        if !take_out(&mut value, &segments) {
            return None;
        }
    }
    None
}

/// serde's message, with the nearest known name suggested for an unknown
/// key or value (`listner` → `listeners`) and its long list left out.
fn explain(message: &str) -> String {
    // Our own type names mean nothing to whoever wrote the file.
    if let Some(cut) = message.find("expected struct ") {
        return format!("{}expected a mapping of keys", &message[..cut]);
    }
    let unknown = message.starts_with("unknown field") || message.starts_with("unknown variant");
    let Some((head, expected)) = message.split_once(", expected ").filter(|_| unknown) else {
        return message.to_string();
    };
    let given = head.split('`').nth(1).unwrap_or("");
    // "one of `a`, `b`", "`a` or `b`", "`a`": the names between backticks.
    let known: Vec<&str> = expected.split('`').skip(1).step_by(2).collect();
    match nearest(given, &known) {
        Some(best) => format!("{head}; did you mean `{best}`?"),
        None => format!("{head}; known: {}", known.join(", ")),
    }
}

/// The known word closest to `given`, if it is close enough to be a typo.
pub fn nearest<'a>(given: &str, known: &[&'a str]) -> Option<&'a str> {
    let best = known
        .iter()
        .map(|k| (distance(given, k), *k))
        .min_by_key(|(d, _)| *d)?;
    let allowed = match given.chars().count() {
        0..=4 => 1,
        5..=8 => 2,
        _ => 3,
    };
    (best.0 <= allowed).then_some(best.1)
}

/// Levenshtein distance.
fn distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut prev = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let cur = row[j + 1];
            row[j + 1] = if ca == *cb {
                prev
            } else {
                1 + prev.min(cur).min(row[j])
            };
            prev = cur;
        }
    }
    row[b.len()]
}

/// Takes the node at `path` out of the tree so the rest can be read: a key
/// is removed (its default applies), a list item that is not a mapping
/// becomes an empty one (so later items keep their index). `false` when
/// nothing could be taken out.
fn take_out(root: &mut Value, path: &[Segment]) -> bool {
    let Some((last, parents)) = path.split_last() else {
        return false;
    };
    let Some(parent) = walk(root, parents) else {
        return false;
    };
    match (last, parent) {
        (Segment::Map { key }, Value::Mapping(map)) => {
            map.remove(key.as_str()).is_some() || remove_number_key(map, key)
        }
        (Segment::Seq { index }, Value::Sequence(seq)) => match seq.get_mut(*index) {
            Some(item) if !item.is_mapping() => {
                *item = Value::Mapping(Mapping::new());
                true
            }
            // An item the reader cannot use even when empty: drop the
            // list's key rather than shift the items after it.
            _ => take_out_parent_key(root, parents),
        },
        _ => take_out_parent_key(root, parents),
    }
}

/// A key written as a number (`8080:`) is a number in the tree.
fn remove_number_key(map: &mut Mapping, key: &str) -> bool {
    let as_value = scalar(key.to_string(), TScalarStyle::Plain);
    map.remove(&as_value).is_some()
}

/// Removes the nearest enclosing mapping key of `path`.
fn take_out_parent_key(root: &mut Value, path: &[Segment]) -> bool {
    for cut in (0..path.len()).rev() {
        if let Segment::Map { .. } = path[cut] {
            return take_out(root, &path[..=cut]);
        }
    }
    false
}

fn walk<'v>(mut value: &'v mut Value, path: &[Segment]) -> Option<&'v mut Value> {
    for segment in path {
        value = match (segment, value) {
            (Segment::Map { key }, Value::Mapping(map)) => {
                if map.contains_key(key.as_str()) {
                    map.get_mut(key.as_str())?
                } else {
                    map.get_mut(scalar(key.clone(), TScalarStyle::Plain))?
                }
            }
            (Segment::Seq { index }, Value::Sequence(seq)) => seq.get_mut(*index)?,
            _ => return None,
        };
    }
    Some(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn duplicates_are_reported_at_their_own_line_and_the_first_wins() {
        let (tree, problems) =
            build("listeners:\n  - name: a\n    cluster: x\n    cluster: y\n").expect("parses");
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert_eq!(problems[0].path, "listeners[0].cluster");
        assert_eq!(problems[0].position, Some((4, 5)));
        assert_eq!(tree["listeners"][0]["cluster"], Value::String("x".into()));
    }

    #[test]
    fn scalars_keep_their_yaml_types() {
        let (tree, _) = build("a: 12\nb: '12'\nc: true\nd: ~\ne: 1.5\n").expect("parses");
        assert!(tree["a"].is_u64());
        assert!(tree["b"].is_string());
        assert!(tree["c"].is_bool());
        assert!(tree["d"].is_null());
        assert!(tree["e"].is_f64());
    }

    #[test]
    fn a_syntax_error_has_a_position() {
        let problem = build("a: [1, 2\nb: 3\n").expect_err("broken");
        assert!(problem.position.is_some());
        assert!(
            problem.message.starts_with("YAML syntax"),
            "{}",
            problem.message
        );
    }

    #[test]
    fn typos_get_the_nearest_name_and_others_none() {
        let known = ["listeners", "clusters", "admin", "control"];
        assert_eq!(nearest("listner", &known), Some("listeners"));
        assert_eq!(nearest("colour", &["name", "listen", "cluster"]), None);
        assert_eq!(
            nearest("max_conections", &["max_connections", "name"]),
            Some("max_connections")
        );
    }
}

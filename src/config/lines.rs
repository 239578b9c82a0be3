//! Where each key path of a YAML document starts, so that semantic errors can
//! name a line as well as a path.

use std::collections::HashMap;

use yaml_rust2::parser::{Event, MarkedEventReceiver, Parser};
use yaml_rust2::scanner::Marker;

/// Key path (`listeners[0].cluster`) → 1-based (line, column).
#[derive(Debug, Default)]
pub struct LineIndex {
    positions: HashMap<String, (usize, usize)>,
}

impl LineIndex {
    /// Indexes `text`; a document that does not parse gives an empty index
    /// (serde reports the syntax error itself).
    pub fn new(text: &str) -> LineIndex {
        let mut builder = Builder::default();
        let mut parser = Parser::new_from_str(text);
        if parser.load(&mut builder, false).is_err() {
            return LineIndex::default();
        }
        LineIndex {
            positions: builder.positions,
        }
    }

    /// The position of `path`, or of its nearest parent that has one.
    pub fn find(&self, path: &str) -> Option<(usize, usize)> {
        let mut path = path;
        loop {
            if let Some(pos) = self.positions.get(path) {
                return Some(*pos);
            }
            let cut = path.rfind(['.', '['])?;
            path = &path[..cut];
        }
    }
}

enum Frame {
    /// `key` is the pending key; `None` means the next scalar is a key.
    Map {
        prefix: String,
        key: Option<String>,
    },
    Seq {
        prefix: String,
        next: usize,
    },
}

#[derive(Default)]
struct Builder {
    stack: Vec<Frame>,
    positions: HashMap<String, (usize, usize)>,
}

impl Builder {
    /// The path of the node that starts now, advancing the parent's state.
    /// `None` when the node is a mapping key.
    fn node_path(&mut self, is_scalar: bool, mark: Marker) -> Option<String> {
        let pos = (mark.line(), mark.col() + 1);
        match self.stack.last_mut() {
            None => Some(String::new()),
            Some(Frame::Seq { prefix, next }) => {
                let path = format!("{prefix}[{next}]");
                *next += 1;
                self.positions.entry(path.clone()).or_insert(pos);
                Some(path)
            }
            Some(Frame::Map { prefix, key }) => match key.take() {
                Some(key) => Some(join(prefix, &key)),
                None if is_scalar => None,
                // A complex key: give it a placeholder so values still pair up.
                None => {
                    *key = Some(String::from("?"));
                    Some(join(prefix, "?"))
                }
            },
        }
    }
}

fn join(prefix: &str, key: &str) -> String {
    if prefix.is_empty() {
        key.to_string()
    } else {
        format!("{prefix}.{key}")
    }
}

impl MarkedEventReceiver for Builder {
    fn on_event(&mut self, event: Event, mark: Marker) {
        match event {
            Event::Scalar(value, ..) => {
                if self.node_path(true, mark).is_none()
                    && let Some(Frame::Map { prefix, key }) = self.stack.last_mut()
                {
                    let path = join(prefix, &value);
                    self.positions
                        .entry(path)
                        .or_insert((mark.line(), mark.col() + 1));
                    *key = Some(value);
                }
            }
            Event::Alias(_) => {
                self.node_path(true, mark);
            }
            Event::MappingStart(..) => {
                let prefix = self.node_path(false, mark).unwrap_or_default();
                self.stack.push(Frame::Map { prefix, key: None });
            }
            Event::SequenceStart(..) => {
                let prefix = self.node_path(false, mark).unwrap_or_default();
                self.stack.push(Frame::Seq { prefix, next: 0 });
            }
            Event::MappingEnd | Event::SequenceEnd => {
                self.stack.pop();
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_keys_and_sequence_items() {
        let text = "admin:\n  listen: 1.2.3.4:1\nlisteners:\n  - name: a\n    cluster: x\n  - name: b\n    cluster: y\n";
        let index = LineIndex::new(text);
        assert_eq!(index.find("admin.listen"), Some((2, 3)));
        assert_eq!(index.find("listeners[0].cluster"), Some((5, 5)));
        assert_eq!(index.find("listeners[1].name"), Some((6, 5)));
        assert_eq!(index.find("listeners[1]").map(|p| p.0), Some(6));
        // A missing key falls back to its parent.
        assert_eq!(index.find("listeners[1].tls").map(|p| p.0), Some(6));
        assert_eq!(index.find("nothing"), None);
    }

    #[test]
    fn flow_style_is_indexed() {
        let text = "clusters:\n  - name: app\n    backends:\n      - { address: 127.0.0.1:1, weight: 2 }\n";
        let index = LineIndex::new(text);
        assert_eq!(
            index.find("clusters[0].backends[0].weight").map(|p| p.0),
            Some(4)
        );
    }
}

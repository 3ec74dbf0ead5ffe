//! Line/column of every node in a YAML document, keyed by field path
//! (`spec.nodePools.controlPlane.count`, `spec.addons.metallb.pools[0].name`), so that
//! errors found after deserialization can still point at the file.

use std::collections::HashMap;
use yaml_rust2::parser::{Event, MarkedEventReceiver, Parser};
use yaml_rust2::scanner::Marker;

/// A 1-based line and column.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pos {
    pub line: usize,
    pub column: usize,
}

impl Pos {
    fn from_marker(m: &Marker) -> Pos {
        Pos {
            line: m.line(),
            column: m.col() + 1,
        }
    }
}

#[derive(Debug, Default, Clone)]
pub struct Positions {
    /// Where the key of a mapping entry stands (or the item, for sequence items).
    keys: HashMap<String, Pos>,
    /// Where the value stands.
    values: HashMap<String, Pos>,
}

impl Positions {
    /// Positions of every node of the first document in `text`. A document the YAML
    /// parser rejects gives an empty map (the syntax error is reported elsewhere).
    pub fn of(text: &str) -> Positions {
        let mut rx = Receiver::default();
        let mut parser = Parser::new_from_str(text);
        if parser.load(&mut rx, false).is_err() {
            return Positions::default();
        }
        rx.positions
    }

    /// The position of the field at `path`, or of its nearest ancestor that exists.
    pub fn find(&self, path: &str) -> Option<Pos> {
        let mut p = path.to_string();
        loop {
            if let Some(pos) = self.keys.get(&p) {
                return Some(*pos);
            }
            if p.is_empty() {
                return self.values.get("").copied();
            }
            p = parent(&p);
        }
    }

    /// Whether the document has a node at exactly `path`.
    pub fn contains(&self, path: &str) -> bool {
        self.keys.contains_key(path)
    }

    /// The position of the value at `path` (falls back to the key, then ancestors).
    pub fn find_value(&self, path: &str) -> Option<Pos> {
        self.values.get(path).copied().or_else(|| self.find(path))
    }
}

/// `a.b[2].c` -> `a.b[2]` -> `a.b` -> `a` -> ``.
pub fn parent(path: &str) -> String {
    if path.ends_with(']') {
        if let Some(i) = path.rfind('[') {
            return path[..i].to_string();
        }
    }
    match path.rfind('.') {
        Some(i) => path[..i].to_string(),
        None => String::new(),
    }
}

pub fn join(parent: &str, key: &str) -> String {
    if parent.is_empty() {
        key.to_string()
    } else {
        format!("{parent}.{key}")
    }
}

pub fn index(parent: &str, i: usize) -> String {
    format!("{parent}[{i}]")
}

enum Frame {
    Map {
        path: String,
        key: Option<String>,
        /// No key seen yet.
        first: bool,
    },
    Seq {
        path: String,
        next: usize,
    },
}

#[derive(Default)]
struct Receiver {
    stack: Vec<Frame>,
    positions: Positions,
    done: bool,
}

impl Receiver {
    /// Called for every node start (scalar, alias, mapping, sequence). Returns the
    /// node's path, or None when the node is a mapping key.
    fn node(&mut self, scalar: Option<&str>, mark: &Marker) -> Option<String> {
        let pos = Pos::from_marker(mark);
        match self.stack.last_mut() {
            None => {
                self.positions.values.insert(String::new(), pos);
                Some(String::new())
            }
            Some(Frame::Map { path, key, first }) => match key.take() {
                None => {
                    // A key. Complex keys (mappings as keys) get an unusable name.
                    let k = scalar.unwrap_or("?").to_string();
                    let full = join(path, &k);
                    self.positions.keys.entry(full).or_insert(pos);
                    // A mapping that is a list item stands where its first key stands
                    // (the parser marks block mappings late).
                    if *first && path.ends_with(']') {
                        self.positions.keys.insert(path.clone(), pos);
                    }
                    *first = false;
                    *key = Some(k);
                    None
                }
                Some(k) => {
                    let full = join(path, &k);
                    self.positions.values.entry(full.clone()).or_insert(pos);
                    Some(full)
                }
            },
            Some(Frame::Seq { path, next }) => {
                let full = index(path, *next);
                *next += 1;
                self.positions.keys.entry(full.clone()).or_insert(pos);
                self.positions.values.entry(full.clone()).or_insert(pos);
                Some(full)
            }
        }
    }
}

impl MarkedEventReceiver for Receiver {
    fn on_event(&mut self, ev: Event, mark: Marker) {
        if self.done {
            return;
        }
        match ev {
            Event::Scalar(value, ..) => {
                self.node(Some(&value), &mark);
            }
            Event::Alias(_) => {
                self.node(None, &mark);
            }
            Event::MappingStart(..) => {
                // A mapping used as a key is pushed under a throwaway path.
                let path = self.node(None, &mark).unwrap_or_else(|| "?".into());
                self.stack.push(Frame::Map {
                    path,
                    key: None,
                    first: true,
                });
            }
            Event::SequenceStart(..) => {
                let path = self.node(None, &mark).unwrap_or_else(|| "?".into());
                self.stack.push(Frame::Seq { path, next: 0 });
            }
            Event::MappingEnd | Event::SequenceEnd => {
                self.stack.pop();
            }
            Event::DocumentEnd => self.done = true,
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_and_positions() {
        let text = "a:\n  b: 1\n  list:\n    - name: x\n    - name: y\n      deep: [1, 2]\n";
        let p = Positions::of(text);
        assert_eq!(p.find("a"), Some(Pos { line: 1, column: 1 }));
        assert_eq!(p.find("a.b"), Some(Pos { line: 2, column: 3 }));
        assert_eq!(p.find("a.list[1].name"), Some(Pos { line: 5, column: 7 }));
        assert_eq!(
            p.find("a.list[1].deep[1]"),
            Some(Pos {
                line: 6,
                column: 17
            })
        );
        // Missing fields fall back to the nearest ancestor.
        assert_eq!(
            p.find("a.list[0].missing"),
            Some(Pos { line: 4, column: 7 })
        );
        assert_eq!(p.find_value("a.b"), Some(Pos { line: 2, column: 6 }));
    }

    #[test]
    fn parent_paths() {
        assert_eq!(parent("a.b[2].c"), "a.b[2]");
        assert_eq!(parent("a.b[2]"), "a.b");
        assert_eq!(parent("a"), "");
    }
}

//! Manifests read the way Kubernetes tooling reads them.
//!
//! kubectl and the API machinery decode YAML with go-yaml v2 (YAML 1.1) before turning
//! it into JSON, so an unquoted `defaultMode: 0644` is the octal number 420 and
//! `enabled: yes` is a boolean. A YAML 1.2 reader keeps `0644` as a string (or reads
//! 644), which the API server then rejects or, worse, accepts with another meaning. This
//! loader walks yaml-rust2's events and resolves plain scalars with YAML 1.1's rules;
//! quoted and block scalars stay strings, anchors/aliases and `<<` merge keys work.

use serde_json::{Map, Number, Value};
use std::collections::HashMap;
use yaml_rust2::parser::{Event, MarkedEventReceiver, Parser, Tag};
use yaml_rust2::scanner::{Marker, TScalarStyle};

/// Every document of `text` (empty documents are `Null`), or the first syntax error
/// with the number of the document it is in.
pub fn documents(text: &str) -> Result<Vec<Value>, (usize, String)> {
    let mut b = Builder::default();
    let mut parser = Parser::new_from_str(text);
    match parser.load(&mut b, true) {
        Ok(()) => match b.error {
            Some(e) => Err((b.docs.len() + 1, e)),
            None => Ok(b.docs),
        },
        Err(e) => Err((b.docs.len() + 1, e.to_string())),
    }
}

enum Frame {
    Map {
        map: Map<String, Value>,
        key: Option<String>,
        merges: Vec<Value>,
        anchor: usize,
    },
    Seq {
        items: Vec<Value>,
        anchor: usize,
    },
}

#[derive(Default)]
struct Builder {
    docs: Vec<Value>,
    stack: Vec<Frame>,
    anchors: HashMap<usize, Value>,
    error: Option<String>,
}

impl Builder {
    fn complete(&mut self, v: Value, anchor: usize) {
        if anchor > 0 {
            self.anchors.insert(anchor, v.clone());
        }
        match self.stack.last_mut() {
            None => self.docs.push(v),
            Some(Frame::Seq { items, .. }) => items.push(v),
            Some(Frame::Map {
                map, key, merges, ..
            }) => match key.take() {
                None => match key_text(&v) {
                    Some(k) => *key = Some(k),
                    None => {
                        self.error
                            .get_or_insert_with(|| "a mapping or sequence used as a key".into());
                    }
                },
                Some(k) if k == "<<" => merges.push(v),
                Some(k) => {
                    map.insert(k, v);
                }
            },
        }
    }
}

fn key_text(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Null => Some("null".into()),
        Value::Bool(b) => Some(b.to_string()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

impl MarkedEventReceiver for Builder {
    fn on_event(&mut self, ev: Event, _mark: Marker) {
        match ev {
            Event::Scalar(text, style, anchor, tag) => {
                // Keys stay their text (`y:`, `on:`, `0644:` are keys, not values).
                if let Some(Frame::Map {
                    key: key @ None, ..
                }) = self.stack.last_mut()
                {
                    if anchor > 0 {
                        self.anchors.insert(anchor, Value::String(text.clone()));
                    }
                    *key = Some(text);
                    return;
                }
                let v = resolve(&text, style, tag.as_ref());
                self.complete(v, anchor);
            }
            Event::Alias(id) => {
                let v = match self.anchors.get(&id) {
                    Some(v) => v.clone(),
                    None => {
                        self.error
                            .get_or_insert_with(|| "an alias to an unknown anchor".into());
                        Value::Null
                    }
                };
                self.complete(v, 0);
            }
            Event::MappingStart(anchor, _) => self.stack.push(Frame::Map {
                map: Map::new(),
                key: None,
                merges: Vec::new(),
                anchor,
            }),
            Event::SequenceStart(anchor, _) => self.stack.push(Frame::Seq {
                items: Vec::new(),
                anchor,
            }),
            Event::MappingEnd => {
                if let Some(Frame::Map {
                    mut map,
                    merges,
                    anchor,
                    ..
                }) = self.stack.pop()
                {
                    // Keys written in the mapping win over merged ones.
                    for m in merges {
                        let sources = match m {
                            Value::Array(a) => a,
                            other => vec![other],
                        };
                        for s in sources {
                            if let Value::Object(o) = s {
                                for (k, v) in o {
                                    map.entry(k).or_insert(v);
                                }
                            }
                        }
                    }
                    self.complete(Value::Object(map), anchor);
                }
            }
            Event::SequenceEnd => {
                if let Some(Frame::Seq { items, anchor }) = self.stack.pop() {
                    self.complete(Value::Array(items), anchor);
                }
            }
            Event::DocumentStart => self.anchors.clear(),
            _ => {}
        }
    }
}

/// A scalar as go-yaml v2 resolves it.
fn resolve(text: &str, style: TScalarStyle, tag: Option<&Tag>) -> Value {
    if let Some(t) = tag {
        if t.handle == "!!" {
            return match t.suffix.as_str() {
                "str" | "binary" | "timestamp" => Value::String(text.into()),
                "null" => Value::Null,
                "bool" => parse_bool(text).map_or(Value::String(text.into()), Value::Bool),
                "int" => parse_int(text).map_or(Value::String(text.into()), Value::from),
                "float" => parse_number(text).unwrap_or(Value::String(text.into())),
                _ => Value::String(text.into()),
            };
        }
        return Value::String(text.into());
    }
    if style != TScalarStyle::Plain {
        return Value::String(text.into());
    }
    if matches!(text, "" | "~" | "null" | "Null" | "NULL") {
        return Value::Null;
    }
    if let Some(b) = parse_bool(text) {
        return Value::Bool(b);
    }
    parse_number(text).unwrap_or_else(|| Value::String(text.into()))
}

fn parse_bool(s: &str) -> Option<bool> {
    match s {
        "y" | "Y" | "yes" | "Yes" | "YES" | "true" | "True" | "TRUE" | "on" | "On" | "ON" => {
            Some(true)
        }
        "n" | "N" | "no" | "No" | "NO" | "false" | "False" | "FALSE" | "off" | "Off" | "OFF" => {
            Some(false)
        }
        _ => None,
    }
}

/// YAML 1.1 integers: `0b1010`, `0644` (octal), `0x1F`, `-12`, `1_000`.
fn parse_int(s: &str) -> Option<i64> {
    let clean: String = s.chars().filter(|c| *c != '_').collect();
    let (neg, body) = match clean.strip_prefix('-') {
        Some(b) => (true, b),
        None => (false, clean.strip_prefix('+').unwrap_or(&clean)),
    };
    if body.is_empty() {
        return None;
    }
    let n = if let Some(b) = body.strip_prefix("0b") {
        i64::from_str_radix(b, 2).ok()?
    } else if let Some(h) = body.strip_prefix("0x") {
        i64::from_str_radix(h, 16).ok()?
    } else if body.len() > 1 && body.starts_with('0') {
        i64::from_str_radix(&body[1..], 8).ok()?
    } else if body.chars().all(|c| c.is_ascii_digit()) {
        body.parse().ok()?
    } else {
        return None;
    };
    Some(if neg { -n } else { n })
}

fn parse_number(s: &str) -> Option<Value> {
    if let Some(i) = parse_int(s) {
        return Some(Value::from(i));
    }
    // Floats: digits with a dot and/or an exponent; .inf/.nan have no JSON form.
    let clean: String = s.chars().filter(|c| *c != '_').collect();
    let body = clean.trim_start_matches(['-', '+']);
    let looks = !body.is_empty()
        && body
            .chars()
            .all(|c| c.is_ascii_digit() || matches!(c, '.' | 'e' | 'E' | '-' | '+'))
        && body
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_digit() || c == '.')
        && body.chars().any(|c| c.is_ascii_digit());
    if !looks {
        return None;
    }
    let f: f64 = clean.parse().ok()?;
    Number::from_f64(f).map(Value::Number)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn scalars_resolve_as_in_yaml_1_1() {
        let docs = documents(
            "a: 0644\nb: '0644'\nc: 0x1F\nd: yes\ne: \"on\"\nf: ~\ng: 1.5\nh: 1e3\ni: -12\nj: 1_000\nk: 08\nl: v1.20\nm: |\n  text\nn:\no: !!str 12\np: .5\n",
        )
        .unwrap();
        assert_eq!(
            docs[0],
            json!({"a": 420, "b": "0644", "c": 31, "d": true, "e": "on", "f": null, "g": 1.5,
                   "h": 1000.0, "i": -12, "j": 1000, "k": 8.0, "l": "v1.20", "m": "text\n",
                   "n": null, "o": "12", "p": 0.5})
        );
    }

    #[test]
    fn documents_anchors_and_merge_keys() {
        let docs = documents(
            "---\n# empty\n---\nbase: &b {x: 1, y: 2}\nlist: &l [a, b]\nuse:\n  <<: *b\n  y: 3\ncopy: *l\n---\n- 1\n",
        )
        .unwrap();
        assert_eq!(docs.len(), 3);
        assert_eq!(docs[0], Value::Null);
        assert_eq!(docs[1]["use"], json!({"x": 1, "y": 3}));
        assert_eq!(docs[1]["copy"], json!(["a", "b"]));
        assert_eq!(docs[2], json!([1]));
    }

    #[test]
    fn syntax_errors_name_the_document() {
        let (doc, msg) = documents("a: 1\n---\nb: [1, 2\n").unwrap_err();
        assert_eq!(doc, 2);
        assert!(msg.contains("line"), "{msg}");
    }
}

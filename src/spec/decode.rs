//! Typed decoding of a YAML document that reports every type error, unknown field and
//! missing field it can find, each at its line and column, instead of the first only.
//!
//! serde stops at the first error; we record it, remove the offending node from the
//! document and decode again, until it decodes or an error cannot be stepped over
//! (a required field is missing).

use super::error::{Reporter, SpecError};
use super::position::{index, join, Positions};
use serde::de::DeserializeOwned;
use serde_yaml_ng::Value;
use std::path::Path;

/// At most this many errors are reported from one document.
const MAX_ERRORS: usize = 50;

/// The largest cluster file or inventory read (4 MiB: a 5,000-host inventory in any of
/// the formats takes well under 1 MiB). Larger files are refused before parsing.
pub const MAX_INPUT_BYTES: u64 = 4 * 1024 * 1024;

/// Read an input file (`what`: "cluster file", "inventory"), refusing one larger than
/// `MAX_INPUT_BYTES` before reading it (and reading at most that much from anything
/// that is not a regular file).
pub fn read_input(path: &Path, what: &str) -> Result<String, SpecError> {
    use std::io::Read;
    let err = |message: String| SpecError {
        file: path.to_path_buf(),
        line: None,
        column: None,
        field: String::new(),
        message,
    };
    let too_big = |size: String| {
        err(format!(
            "the {what} is {size} bytes, more than the {MAX_INPUT_BYTES} bytes (4 MiB) kubeforge reads"
        ))
    };
    let file =
        std::fs::File::open(path).map_err(|e| err(format!("cannot read the {what}: {e}")))?;
    if let Ok(meta) = file.metadata() {
        if meta.is_file() && meta.len() > MAX_INPUT_BYTES {
            return Err(too_big(meta.len().to_string()));
        }
    }
    let mut bytes = Vec::new();
    file.take(MAX_INPUT_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| err(format!("cannot read the {what}: {e}")))?;
    if bytes.len() as u64 > MAX_INPUT_BYTES {
        return Err(too_big(format!("more than {MAX_INPUT_BYTES}")));
    }
    String::from_utf8(bytes).map_err(|e| {
        err(format!(
            "cannot read the {what}: not UTF-8 text (invalid byte at offset {})",
            e.utf8_error().valid_up_to()
        ))
    })
}

/// Parse YAML text into a value; a syntax error names the line and column.
pub fn parse_yaml(text: &str, file: &Path) -> Result<Value, SpecError> {
    serde_yaml_ng::from_str::<Value>(text).map_err(|e| {
        let loc = e.location();
        SpecError {
            file: file.to_path_buf(),
            line: loc.as_ref().map(|l| l.line()),
            column: loc.as_ref().map(|l| l.column()),
            field: String::new(),
            message: format!("not valid YAML: {}", strip_location(&e.to_string())),
        }
    })
}

/// serde_yaml_ng appends " at line L column C" to its messages; we print the position
/// ourselves.
fn strip_location(msg: &str) -> String {
    match msg.find(" at line ") {
        Some(i) => msg[..i].to_string(),
        None => msg.to_string(),
    }
}

/// Decode `value` as `T`, reporting every problem into `rep`. When there were errors
/// that could be stepped over, the value decoded without the offending nodes is still
/// returned (so later checks can report their problems too); `rep` holds the errors.
/// Returns `None` when it could not be decoded at all.
pub fn decode<T: DeserializeOwned>(mut value: Value, rep: &mut Reporter<'_>) -> Option<T> {
    let mut removed: Vec<String> = Vec::new();
    for _ in 0..MAX_ERRORS {
        match serde_path_to_error::deserialize::<_, T>(value.clone()) {
            Ok(t) => return Some(t),
            Err(e) => {
                let path = path_string(e.path());
                let raw = strip_location(&e.inner().to_string());
                let (field, message, removable) = classify(&path, &raw);
                // A required field we removed ourselves was reported already.
                if removed.contains(&field) {
                    return None;
                }
                rep.error(&field, message);
                if !removable || !remove(&mut value, &field) {
                    return None;
                }
                removed.push(field);
            }
        }
    }
    None
}

fn path_string(path: &serde_path_to_error::Path) -> String {
    use serde_path_to_error::Segment;
    let mut out = String::new();
    for seg in path.iter() {
        match seg {
            Segment::Seq { index: i } => out = index(&out, *i),
            Segment::Map { key } => out = join(&out, key),
            Segment::Enum { variant } => out = join(&out, variant),
            Segment::Unknown => out = join(&out, "?"),
        }
    }
    out
}

/// Turn serde's message into (field path, message for a person, whether the node can be
/// removed to look for further errors).
fn classify(path: &str, raw: &str) -> (String, String, bool) {
    if let Some(rest) = raw.strip_prefix("unknown field `") {
        let name = rest.split('`').next().unwrap_or("");
        let expected = expected_list(rest);
        // The path names the unknown key already, or (for some deserializers) its parent.
        let field = if path == name || path.ends_with(&format!(".{name}")) {
            path.to_string()
        } else {
            join(path, name)
        };
        return (field, format!("unknown field `{name}`{expected}"), true);
    }
    if let Some(rest) = raw.strip_prefix("missing field `") {
        let name = rest.split('`').next().unwrap_or("");
        return (join(path, name), "required field is missing".into(), false);
    }
    if let Some(rest) = raw.strip_prefix("unknown variant `") {
        let name = rest.split('`').next().unwrap_or("");
        let expected = expected_list(rest);
        return (
            path.to_string(),
            format!("unknown value `{name}`{expected}"),
            true,
        );
    }
    (path.to_string(), humanize(raw), true)
}

/// ", expected one of `a`, `b`" -> "; expected one of: a, b".
fn expected_list(rest: &str) -> String {
    match rest.find("expected ") {
        Some(i) => {
            let list = &rest[i + "expected ".len()..];
            let list = list.replace('`', "");
            format!(", expected {list}")
        }
        None => String::new(),
    }
}

/// Replace Rust type names in serde's messages by what a person would write.
fn humanize(raw: &str) -> String {
    let mut s = raw.to_string();
    for (from, to) in [
        ("expected u8", "expected a whole number from 0 to 255"),
        ("expected u16", "expected a whole number from 0 to 65535"),
        (
            "expected u32",
            "expected a whole number from 0 to 4294967295",
        ),
        ("expected a sequence", "expected a list"),
        ("expected a string", "expected a string"),
        ("expected a map", "expected a mapping"),
        ("expected struct ", "expected a mapping: "),
        ("expected enum ", "expected one value of "),
        ("sequence", "list"),
    ] {
        if s.contains(from) {
            s = s.replacen(from, to, 1);
        }
    }
    let scalar_found = ["floating point", "integer", "boolean"]
        .iter()
        .any(|t| s.starts_with(&format!("invalid type: {t}")));
    if scalar_found && s.ends_with("expected a string") {
        s.push_str(" (put the value in quotes)");
    }
    s
}

/// Remove the node at `path` from the document. Returns false when it cannot be found.
fn remove(value: &mut Value, path: &str) -> bool {
    let segs = split(path);
    let Some((last, parents)) = segs.split_last() else {
        return false;
    };
    let mut cur = value;
    for seg in parents {
        let next = match (seg, cur) {
            (Seg::Key(k), Value::Mapping(m)) => m.get_mut(k.as_str()),
            (Seg::Index(i), Value::Sequence(s)) => s.get_mut(*i),
            (Seg::Key(k), Value::Tagged(t)) => match &mut t.value {
                Value::Mapping(m) => m.get_mut(k.as_str()),
                _ => None,
            },
            _ => None,
        };
        match next {
            Some(n) => cur = n,
            None => return false,
        }
    }
    match (last, cur) {
        (Seg::Key(k), Value::Mapping(m)) => m.remove(k.as_str()).is_some(),
        (Seg::Index(i), Value::Sequence(s)) if *i < s.len() => {
            // Later items shift down by one; their errors may then name an index one
            // too low. Rare (a whole list item of the wrong type) and still on the line.
            s.remove(*i);
            true
        }
        _ => false,
    }
}

enum Seg {
    Key(String),
    Index(usize),
}

fn split(path: &str) -> Vec<Seg> {
    let mut out = Vec::new();
    for part in path.split('.') {
        let mut rest = part;
        if let Some(i) = rest.find('[') {
            if i > 0 {
                out.push(Seg::Key(rest[..i].to_string()));
            }
            rest = &rest[i..];
            while let Some(stripped) = rest.strip_prefix('[') {
                let end = stripped.find(']').unwrap_or(stripped.len());
                if let Ok(n) = stripped[..end].parse() {
                    out.push(Seg::Index(n));
                }
                rest = stripped.get(end + 1..).unwrap_or("");
            }
        } else if !rest.is_empty() {
            out.push(Seg::Key(rest.to_string()));
        }
    }
    out
}

/// Positions for a text, shared by callers that decode several documents.
pub fn positions(text: &str) -> Positions {
    Positions::of(text)
}

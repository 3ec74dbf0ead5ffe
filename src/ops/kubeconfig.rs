//! `kubeforge kubeconfig`: the admin kubeconfig out of the encrypted state, printed,
//! written to a file of its own (`--out`, mode 0600) or merged into the user's
//! kubeconfig (`--merge`), with its cluster, user and context named after the cluster
//! (or `--context`) and, with `--server`, another API server URL.

use crate::error::Error;
use crate::output::{print_json, OutputFormat};
use crate::spec;
use serde_yaml_ng::{Mapping, Value};
use std::io::Write;
use std::path::{Path, PathBuf};

/// What to do with the kubeconfig.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// Write it to this file (0600); an existing file only with `force`.
    pub out: Option<PathBuf>,
    pub force: bool,
    /// Merge it into `$KUBECONFIG`'s first file or `~/.kube/config`.
    pub merge: bool,
    /// Name of its cluster, user and context (default: the cluster's name when merging,
    /// kubeadm's names otherwise).
    pub context: Option<String>,
    /// API server URL replacing the one in the state (e.g. a DNS name in certSans).
    pub server: Option<String>,
}

pub async fn run(file: &Path, opts: Options, output: OutputFormat) -> Result<(), Error> {
    if let Some(s) = &opts.server {
        if !(s.starts_with("https://") || s.starts_with("http://"))
            || s.contains(char::is_whitespace)
        {
            return Err(Error::Usage(format!(
                "--server {s:?}: expected an API server URL such as https://api.example.com:6443"
            )));
        }
    }
    if opts.context.as_deref().is_some_and(|c| c.trim().is_empty()) {
        return Err(Error::Usage("--context: the name is empty".into()));
    }
    let loaded = spec::load_file(file)?;
    let store = crate::ops::session::open_store(&loaded)?;
    let Some((doc, _)) = store.load().await? else {
        return Err(Error::Usage(format!(
            "cluster `{}` has no state yet: run `kubeforge apply -f {}` first",
            loaded.name(),
            file.display()
        )));
    };
    let Some(conf) = doc.secrets.admin_kubeconfig else {
        return Err(Error::Usage(format!(
            "cluster `{}` has no admin kubeconfig yet: the kubeconfig phase has not run",
            loaded.name()
        )));
    };
    let name = match (&opts.context, opts.merge) {
        (Some(n), _) => Some(n.clone()),
        (None, true) => Some(loaded.name().to_string()),
        (None, false) => None,
    };
    let conf = if name.is_some() || opts.server.is_some() {
        let mut v = parse(&conf, "the admin kubeconfig in the state")?;
        adjust(&mut v, name.as_deref(), opts.server.as_deref())?;
        to_yaml(&v)?
    } else {
        conf
    };
    if opts.merge {
        let target = merge_target()?;
        let name = name.unwrap_or_default();
        let (created, replaced) = merge_into(&target, &conf)?;
        return report(
            output,
            serde_json::json!({
                "file": target.display().to_string(),
                "context": name,
                "created": created,
                "replaced": replaced,
            }),
            format!(
                "{} context `{name}` {} {}{}",
                if replaced { "replaced" } else { "added" },
                if created { "to new file" } else { "in" },
                target.display(),
                if replaced {
                    String::new()
                } else {
                    format!(" (use it: kubectl config use-context {name})")
                }
            ),
        );
    }
    if let Some(out) = &opts.out {
        write_new_private(out, conf.as_bytes(), opts.force)?;
        return report(
            output,
            serde_json::json!({ "file": out.display().to_string() }),
            format!("wrote {} (mode 0600)", out.display()),
        );
    }
    match output {
        OutputFormat::Json => print_json(&serde_json::json!({ "kubeconfig": conf }))?,
        OutputFormat::Text => print!("{conf}"),
    }
    Ok(())
}

fn report(output: OutputFormat, json: serde_json::Value, text: String) -> Result<(), Error> {
    match output {
        OutputFormat::Json => print_json(&json)?,
        OutputFormat::Text => println!("{text}"),
    }
    Ok(())
}

pub(crate) fn parse(text: &str, what: &str) -> Result<Value, Error> {
    let v: Value = serde_yaml_ng::from_str(text)
        .map_err(|e| Error::Usage(format!("{what} is not valid YAML: {e}")))?;
    match v {
        Value::Mapping(_) => Ok(v),
        // An empty file is an empty kubeconfig.
        Value::Null => Ok(Value::Mapping(Mapping::new())),
        _ => Err(Error::Usage(format!(
            "{what} is not a kubeconfig (not a mapping)"
        ))),
    }
}

pub(crate) fn to_yaml(v: &Value) -> Result<String, Error> {
    serde_yaml_ng::to_string(v)
        .map_err(|e| Error::Internal(format!("cannot write the kubeconfig as YAML: {e}")))
}

/// The entries of one list (`clusters`, `users`, `contexts`).
fn list<'a>(v: &'a mut Value, key: &str) -> Option<&'a mut Vec<Value>> {
    v.get_mut(key)?.as_sequence_mut()
}

/// Rename the (single) cluster, user and context of a kubeadm admin kubeconfig to
/// `name` and point its cluster at `server`.
pub(crate) fn adjust(v: &mut Value, name: Option<&str>, server: Option<&str>) -> Result<(), Error> {
    let bad = |what: &str| {
        Error::Internal(format!(
            "the admin kubeconfig in the state has no {what}: cannot rename or re-point it"
        ))
    };
    for key in ["clusters", "users", "contexts"] {
        let entries = list(v, key).ok_or_else(|| bad(key))?;
        if entries.len() != 1 {
            return Err(bad(&format!("single entry in {key}")));
        }
        if let (Some(n), Some(m)) = (name, entries[0].as_mapping_mut()) {
            m.insert("name".into(), n.into());
        }
    }
    if let Some(n) = name {
        let ctx = list(v, "contexts")
            .and_then(|c| c[0].get_mut("context"))
            .and_then(Value::as_mapping_mut)
            .ok_or_else(|| bad("context"))?;
        ctx.insert("cluster".into(), n.into());
        ctx.insert("user".into(), n.into());
        if let Some(m) = v.as_mapping_mut() {
            m.insert("current-context".into(), n.into());
        }
    }
    if let Some(s) = server {
        let cluster = list(v, "clusters")
            .and_then(|c| c[0].get_mut("cluster"))
            .and_then(Value::as_mapping_mut)
            .ok_or_else(|| bad("cluster"))?;
        cluster.insert("server".into(), s.into());
    }
    Ok(())
}

/// `$KUBECONFIG`'s first file (as kubectl writes new entries there), else
/// `~/.kube/config`.
pub fn merge_target() -> Result<PathBuf, Error> {
    if let Some(first) = std::env::var_os("KUBECONFIG")
        .as_ref()
        .and_then(|v| std::env::split_paths(v).find(|p| !p.as_os_str().is_empty()))
    {
        return Ok(first);
    }
    let home = std::env::var_os("HOME")
        .filter(|h| !h.is_empty())
        .ok_or_else(|| Error::Usage("--merge: neither KUBECONFIG nor HOME is set".into()))?;
    Ok(PathBuf::from(home).join(".kube").join("config"))
}

/// Merge the (renamed) admin kubeconfig `conf` into `target`: entries of the same name
/// are replaced, all others kept; current-context is set only when there is none.
/// Returns (file created, an entry replaced).
fn merge_into(target: &Path, conf: &str) -> Result<(bool, bool), Error> {
    let new = parse(conf, "the admin kubeconfig")?;
    let (mut v, created) = match std::fs::read_to_string(target) {
        Ok(text) => (parse(&text, &target.display().to_string())?, false),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => (Value::Null, true),
        Err(source) => {
            return Err(Error::Write {
                path: target.to_path_buf(),
                source,
            })
        }
    };
    if v.is_null() {
        v = Value::Mapping(Mapping::new());
    }
    let m = v
        .as_mapping_mut()
        .ok_or_else(|| Error::Usage(format!("{}: not a kubeconfig", target.display())))?;
    m.entry("apiVersion".into()).or_insert("v1".into());
    m.entry("kind".into()).or_insert("Config".into());
    let mut replaced = false;
    for key in ["clusters", "users", "contexts"] {
        let entry = m.entry(key.into()).or_insert(Value::Sequence(Vec::new()));
        if entry.is_null() {
            *entry = Value::Sequence(Vec::new());
        }
        let entries = entry
            .as_sequence_mut()
            .ok_or_else(|| Error::Usage(format!("{}: `{key}` is not a list", target.display())))?;
        for add in new
            .get(key)
            .and_then(Value::as_sequence)
            .into_iter()
            .flatten()
        {
            let name = add.get("name");
            let before = entries.len();
            entries.retain(|e| e.get("name") != name);
            replaced |= entries.len() != before;
            entries.push(add.clone());
        }
    }
    let current = m
        .get("current-context")
        .and_then(Value::as_str)
        .unwrap_or("");
    if current.is_empty() {
        if let Some(c) = new.get("current-context") {
            m.insert("current-context".into(), c.clone());
        }
    }
    write_replacing_private(target, to_yaml(&v)?.as_bytes())?;
    Ok((created, replaced))
}

/// Write a new file with mode 0600; an existing one is refused unless `force` (then it
/// is truncated and its mode tightened to 0600 first).
pub(crate) fn write_new_private(path: &Path, bytes: &[u8], force: bool) -> Result<(), Error> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let mut o = std::fs::OpenOptions::new();
    o.write(true).mode(0o600);
    if force {
        o.create(true).truncate(true);
    } else {
        o.create_new(true);
    }
    let io = |source| Error::Write {
        path: path.to_path_buf(),
        source,
    };
    let mut f = match o.open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            return Err(Error::Usage(format!(
                "{} exists: not overwritten (pass --force to replace it)",
                path.display()
            )))
        }
        Err(e) => return Err(io(e)),
    };
    f.set_permissions(std::fs::Permissions::from_mode(0o600))
        .map_err(io)?;
    f.write_all(bytes).map_err(io)?;
    f.sync_all().map_err(io)
}

/// Replace `path` atomically with `bytes` (a 0600 file renamed over it); its
/// directory is created (0700) when missing, as kubectl does for ~/.kube.
fn write_replacing_private(path: &Path, bytes: &[u8]) -> Result<(), Error> {
    use std::os::unix::fs::DirBuilderExt;
    let io = |source| Error::Write {
        path: path.to_path_buf(),
        source,
    };
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&dir)
        .map_err(io)?;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().to_string())
        .unwrap_or_else(|| "kubeconfig".into());
    let tmp = dir.join(format!(".{name}.kubeforge-{}", std::process::id()));
    let written = write_new_private(&tmp, bytes, true).and_then(|()| {
        std::fs::rename(&tmp, path).map_err(|source| Error::Write {
            path: path.to_path_buf(),
            source,
        })
    });
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written
}

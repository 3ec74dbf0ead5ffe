//! The OpenSSH client configuration operators already keep (`~/.ssh/config`), for the
//! static provider's hosts: `Host` blocks whose patterns match a host's inventory name
//! or address give its `User`, `Port`, `IdentityFile` and `ProxyJump`, where the
//! inventory does not. As in `ssh`, the first value found for a keyword wins, blocks are
//! read in file order, `*`/`?` are wildcards and `!pattern` excludes; `Include` reads
//! the files it names in place (`~/` expanded, relative paths from the including file's
//! directory, `*`/`?` in the file name, at most 8 deep); `Match` blocks are not read
//! (said in the warning list).

use std::path::{Path, PathBuf};
use std::sync::Arc;

/// What the configuration says for one host.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HostSettings {
    pub user: Option<String>,
    pub port: Option<u16>,
    pub identity_file: Option<String>,
    /// `ProxyJump` as written (`[user@]host[:port]`, or a comma-separated chain).
    pub proxy_jump: Option<String>,
    /// `HostName` (used for the jump host, whose name in `ProxyJump` is often an alias;
    /// the nodes are reached at their inventory address).
    pub host_name: Option<String>,
}

/// One `Host` block.
#[derive(Debug, Clone, Default)]
struct Block {
    patterns: Vec<String>,
    settings: Vec<(String, String, Origin)>,
}

/// Where a line is: its file (None: the text given to `parse`) and line number.
#[derive(Debug, Clone, Default)]
struct Origin {
    file: Option<Arc<PathBuf>>,
    line: usize,
}

/// A parsed configuration.
#[derive(Debug, Clone, Default)]
pub struct SshClientConfig {
    blocks: Vec<Block>,
    /// What was not read (`Match`, `Include`), with the line.
    pub skipped: Vec<String>,
}

/// A value that is not what it must be, with its line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// The file the line is in, when it is an included one.
    pub file: Option<PathBuf>,
    pub line: usize,
    pub message: String,
}

impl SshClientConfig {
    pub fn parse(text: &str) -> SshClientConfig {
        let lines: Vec<(Origin, String)> = text
            .lines()
            .enumerate()
            .map(|(i, l)| {
                (
                    Origin {
                        file: None,
                        line: i + 1,
                    },
                    l.to_string(),
                )
            })
            .collect();
        Self::parse_lines(&lines)
    }

    fn parse_lines(lines: &[(Origin, String)]) -> SshClientConfig {
        let mut c = SshClientConfig::default();
        // Lines before the first Host apply to every host.
        let mut current = Block {
            patterns: vec!["*".into()],
            settings: Vec::new(),
        };
        let mut in_match = false;
        for (origin, raw) in lines {
            let line = origin.line;
            let l = raw.trim();
            if l.is_empty() || l.starts_with('#') {
                continue;
            }
            let (key, value) = match l.split_once(|c: char| c.is_whitespace() || c == '=') {
                Some((k, v)) => (k.trim(), v.trim().trim_start_matches('=').trim()),
                None => (l, ""),
            };
            let key = key.to_ascii_lowercase();
            let value = value.trim_matches('"').to_string();
            match key.as_str() {
                "host" => {
                    c.blocks.push(std::mem::take(&mut current));
                    current = Block {
                        patterns: value.split_whitespace().map(String::from).collect(),
                        settings: Vec::new(),
                    };
                    in_match = false;
                }
                "match" => {
                    c.blocks.push(std::mem::take(&mut current));
                    c.skipped
                        .push(format!("line {line}: `Match` block (not read)"));
                    in_match = true;
                }
                "include" => c
                    .skipped
                    .push(format!("line {line}: `Include {value}` (not read)")),
                _ if in_match => {}
                _ => current.settings.push((key, value, origin.clone())),
            }
        }
        c.blocks.push(current);
        c
    }

    /// Read `path` and the files its `Include` lines name, spliced in place.
    pub fn load(path: &Path) -> Result<SshClientConfig, String> {
        let mut lines = Vec::new();
        include(path, 0, &mut lines)?;
        Ok(Self::parse_lines(&lines))
    }

    /// The settings for a host known as any of `names` (inventory name, address).
    pub fn lookup(&self, names: &[&str]) -> Result<HostSettings, ConfigError> {
        let mut s = HostSettings::default();
        for b in &self.blocks {
            if !names.iter().any(|n| block_matches(&b.patterns, n)) {
                continue;
            }
            for (k, v, origin) in &b.settings {
                let line = origin.line;
                match k.as_str() {
                    "user" if s.user.is_none() => s.user = Some(v.clone()),
                    "port" if s.port.is_none() => {
                        s.port =
                            Some(
                                v.parse()
                                    .ok()
                                    .filter(|p| *p > 0)
                                    .ok_or_else(|| ConfigError {
                                        file: origin.file.as_deref().cloned(),
                                        line,
                                        message: format!("Port `{v}` is not a port number"),
                                    })?,
                            )
                    }
                    "identityfile" if s.identity_file.is_none() => {
                        s.identity_file = Some(v.clone())
                    }
                    "proxyjump" if s.proxy_jump.is_none() => s.proxy_jump = Some(v.clone()),
                    "hostname" if s.host_name.is_none() => s.host_name = Some(v.clone()),
                    _ => {}
                }
            }
        }
        if s.proxy_jump
            .as_deref()
            .is_some_and(|p| p.eq_ignore_ascii_case("none"))
        {
            s.proxy_jump = None;
        }
        Ok(s)
    }
}

/// The lines of `path`, with each `Include` replaced by the lines of the files it names.
fn include(path: &Path, depth: usize, out: &mut Vec<(Origin, String)>) -> Result<(), String> {
    if depth > 8 {
        return Err(format!(
            "{}: Include nested more than 8 deep (a loop?)",
            path.display()
        ));
    }
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let file = Arc::new(path.to_path_buf());
    let dir = path.parent().unwrap_or(Path::new("."));
    for (i, raw) in text.lines().enumerate() {
        let l = raw.trim();
        let (key, value) = l
            .split_once(|c: char| c.is_whitespace() || c == '=')
            .unwrap_or((l, ""));
        if !key.eq_ignore_ascii_case("include") {
            out.push((
                Origin {
                    file: (depth > 0).then(|| file.clone()),
                    line: i + 1,
                },
                raw.to_string(),
            ));
            continue;
        }
        for pattern in value.trim_start_matches('=').split_whitespace() {
            let p = super::expand_home(pattern.trim_matches('"'));
            let p = if p.is_relative() { dir.join(p) } else { p };
            let name = p
                .file_name()
                .map(|n| n.to_string_lossy().to_string())
                .unwrap_or_default();
            let parent = p.parent().unwrap_or(Path::new("."));
            // As ssh: a file that does not exist is no error.
            let mut files: Vec<PathBuf> = if name.contains(['*', '?']) {
                std::fs::read_dir(parent)
                    .map(|rd| {
                        rd.filter_map(Result::ok)
                            .map(|e| e.path())
                            .filter(|f| {
                                f.is_file()
                                    && f.file_name().is_some_and(|n| {
                                        super::terraform::glob(&name, &n.to_string_lossy())
                                    })
                            })
                            .collect()
                    })
                    .unwrap_or_default()
            } else if p.is_file() {
                vec![p.clone()]
            } else {
                Vec::new()
            };
            files.sort();
            for f in files {
                include(&f, depth + 1, out)?;
            }
        }
    }
    Ok(())
}

fn block_matches(patterns: &[String], name: &str) -> bool {
    let mut hit = false;
    for p in patterns {
        if let Some(neg) = p.strip_prefix('!') {
            if super::terraform::glob(neg, name) {
                return false;
            }
        } else if super::terraform::glob(p, name) {
            hit = true;
        }
    }
    hit
}

/// One ProxyJump hop: user, host, port (as written).
pub type Jump = (Option<String>, String, Option<u16>);

/// The hops of a ProxyJump (`[user@]host[:port]`, comma-separated), in order.
pub fn parse_jumps(s: &str) -> Result<Vec<Jump>, String> {
    s.split(',').map(|hop| parse_jump(hop.trim())).collect()
}

/// `[user@]host[:port]` (or `ssh://[user@]host[:port]`) of one ProxyJump hop.
pub fn parse_jump(s: &str) -> Result<Jump, String> {
    let s = s.strip_prefix("ssh://").unwrap_or(s);
    let (user, rest) = match s.rsplit_once('@') {
        Some((u, r)) => (Some(u.to_string()), r),
        None => (None, s),
    };
    let (host, port) = match rest.rsplit_once(':') {
        Some((h, p)) if !h.contains(':') => (
            h.to_string(),
            Some(
                p.parse::<u16>()
                    .map_err(|_| format!("ProxyJump `{s}`: `{p}` is not a port"))?,
            ),
        ),
        _ => (rest.to_string(), None),
    };
    if host.is_empty() {
        return Err(format!("ProxyJump `{s}` names no host"));
    }
    Ok((user, host, port))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_value_wins_and_patterns_match_names_or_addresses() {
        let c = SshClientConfig::parse(
            "# ops laptop\nUser fallback\n\nHost prd-* !prd-bastion\n  User ubuntu\n  Port 2222\n  IdentityFile ~/.ssh/prd\n  ProxyJump ops@bastion.example:2200\n\nHost 10.0.1.?\n  User debian\n\nMatch host x\n  User never\n\nHost *\n  User last\n  Port 22\n",
        );
        let prd = c.lookup(&["prd-cp-1", "10.0.1.5"]).unwrap();
        assert_eq!(
            prd.user.as_deref(),
            Some("fallback"),
            "lines before any Host apply first"
        );
        assert_eq!(prd.port, Some(2222));
        assert_eq!(prd.identity_file.as_deref(), Some("~/.ssh/prd"));
        assert_eq!(prd.proxy_jump.as_deref(), Some("ops@bastion.example:2200"));
        let b = c.lookup(&["prd-bastion", "10.9.9.9"]).unwrap();
        assert_eq!(
            (b.port, b.proxy_jump.clone()),
            (Some(22), None),
            "excluded by !"
        );
        assert_eq!(c.skipped.len(), 1);
        assert_eq!(
            parse_jump("ops@bastion.example:2200").unwrap(),
            (Some("ops".into()), "bastion.example".into(), Some(2200))
        );
        assert_eq!(
            parse_jumps("a, ops@b:2200").unwrap(),
            vec![
                (None, "a".to_string(), None),
                (Some("ops".into()), "b".into(), Some(2200))
            ]
        );
        assert!(parse_jumps("a,").is_err());
        let bad = SshClientConfig::parse("Host x\n Port http\n");
        assert_eq!(bad.lookup(&["x"]).unwrap_err().line, 2);
    }

    #[test]
    fn includes_are_read_in_place_with_their_own_file_in_errors() {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir(d.path().join("config.d")).unwrap();
        std::fs::write(
            d.path().join("config"),
            "Include config.d/*.conf missing-file\nHost *\n  User fallback\n",
        )
        .unwrap();
        std::fs::write(
            d.path().join("config.d/10-prd.conf"),
            "Host prd-*\n  User ubuntu\n  ProxyJump jump\n",
        )
        .unwrap();
        std::fs::write(
            d.path().join("config.d/20-bad.conf"),
            "Host bad\n  Port nope\n",
        )
        .unwrap();
        std::fs::write(
            d.path().join("config.d/ignored.txt"),
            "Host prd-*\n  User no\n",
        )
        .unwrap();
        let c = SshClientConfig::load(&d.path().join("config")).unwrap();
        let s = c.lookup(&["prd-1"]).unwrap();
        assert_eq!(s.user.as_deref(), Some("ubuntu"));
        assert_eq!(s.proxy_jump.as_deref(), Some("jump"));
        assert_eq!(
            c.lookup(&["other"]).unwrap().user.as_deref(),
            Some("fallback")
        );
        let e = c.lookup(&["bad"]).unwrap_err();
        assert_eq!(e.line, 2);
        assert!(e.file.unwrap().ends_with("config.d/20-bad.conf"));
        // A file that includes itself ends with an error, not a hang.
        std::fs::write(d.path().join("loop"), "Include loop\n").unwrap();
        assert!(SshClientConfig::load(&d.path().join("loop"))
            .unwrap_err()
            .contains("8 deep"));
    }
}

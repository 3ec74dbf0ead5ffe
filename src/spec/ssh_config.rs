//! The OpenSSH client configuration operators already keep (`~/.ssh/config`), for the
//! static provider's hosts: `Host` blocks whose patterns match a host's inventory name
//! or address give its `User`, `Port`, `IdentityFile` and `ProxyJump`, where the
//! inventory does not. As in `ssh`, the first value found for a keyword wins, blocks are
//! read in file order, `*`/`?` are wildcards and `!pattern` excludes; `Match` blocks and
//! `Include` are not read (said in the warning list).

use std::path::Path;

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
    settings: Vec<(String, String, usize)>,
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
    pub line: usize,
    pub message: String,
}

impl SshClientConfig {
    pub fn parse(text: &str) -> SshClientConfig {
        let mut c = SshClientConfig::default();
        // Lines before the first Host apply to every host.
        let mut current = Block {
            patterns: vec!["*".into()],
            settings: Vec::new(),
        };
        let mut in_match = false;
        for (i, raw) in text.lines().enumerate() {
            let line = i + 1;
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
                _ => current.settings.push((key, value, line)),
            }
        }
        c.blocks.push(current);
        c
    }

    pub fn load(path: &Path) -> Result<SshClientConfig, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        Ok(Self::parse(&text))
    }

    /// The settings for a host known as any of `names` (inventory name, address).
    pub fn lookup(&self, names: &[&str]) -> Result<HostSettings, ConfigError> {
        let mut s = HostSettings::default();
        for b in &self.blocks {
            if !names.iter().any(|n| block_matches(&b.patterns, n)) {
                continue;
            }
            for (k, v, line) in &b.settings {
                let line = *line;
                match k.as_str() {
                    "user" if s.user.is_none() => s.user = Some(v.clone()),
                    "port" if s.port.is_none() => {
                        s.port =
                            Some(
                                v.parse()
                                    .ok()
                                    .filter(|p| *p > 0)
                                    .ok_or_else(|| ConfigError {
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
}

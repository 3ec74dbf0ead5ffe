//! POSIX shell quoting for commands sent over SSH (the protocol carries one string).

/// Quote `s` as one word for `sh`: wrapped in single quotes, embedded single quotes
/// written as `'\''`. Plain words made of safe characters are returned as they are.
pub fn quote(s: &str) -> String {
    let safe = !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_./:=@%+,".contains(&b));
    if safe {
        return s.to_string();
    }
    let mut out = String::with_capacity(s.len() + 2);
    out.push('\'');
    for c in s.chars() {
        if c == '\'' {
            out.push_str("'\\''");
        } else {
            out.push(c);
        }
    }
    out.push('\'');
    out
}

/// Shell function `kfeq FILE VALUE`: FILE holds the one line VALUE (its newline
/// optional; a missing file reads as empty, a second line makes it differ). Read by the shell
/// itself, where `[ "$(cat FILE)" = VALUE ]` costs a process start (2-3 ms on a busy
/// node) and a no-op run asks a dozen.
pub const FILE_EQUALS: &str = "kfeq() { kfe_l=; kfe_m=; { IFS= read -r kfe_l; \
IFS= read -r kfe_m || [ -n \"$kfe_m\" ] && return 1; } 2>/dev/null < \"$1\"; [ \"$kfe_l\" = \"$2\" ]; };";

/// Shell function `kfhas LIST WORD`: WORD is one of LIST's words (whitespace
/// separated; for lists of names without glob characters, such as image references):
/// `grep -qxF` without the process.
pub const HAS_WORD: &str =
    "kfhas() { for kfh_w in $1; do case $kfh_w in \"$2\") return 0;; esac; done; return 1; };";

/// Sets `$kfunits` to the active (or reloading) units among kubeforge's own, containerd,
/// kubelet, haproxy and keepalived, each between spaces; empty when systemctl cannot say.
pub const LIST_ACTIVE_UNITS: &str = "kfunits=$(systemctl list-units --state=active,reloading --plain --no-legend \
'kubeforge-*' containerd.service kubelet.service haproxy.service keepalived.service 2>/dev/null | \
while read -r kfu_u kfu_l kfu_a kfu_rest; do case $kfu_a in active|reloading) printf ' %s ' \"$kfu_u\";; esac; done);";

/// Shell function `kfup UNIT`: systemd says UNIT is active (`systemctl is-active`).
/// Found in `$kfunits` (listed by the facts earlier in the same script) it is asked no
/// more; anything else (not listed, an alias, no list) asks systemctl, so the list can
/// only save a question, never change an answer.
pub const UNIT_ACTIVE: &str = "kfup() { case $1 in *.*) kfu_n=$1;; *) kfu_n=$1.service;; esac; \
case \"${kfunits:-}\" in *\" $kfu_n \"*) return 0;; esac; systemctl is-active --quiet \"$1\"; };";

#[cfg(test)]
mod tests {
    use super::*;

    /// `script`'s stdout under `shell` (dash's `sh` and bash: the login shell of a
    /// host may be either), with `path` first on PATH.
    fn run_in(shell: &str, path: &std::path::Path, script: &str) -> String {
        let out = std::process::Command::new(shell)
            .arg("-c")
            .arg(script)
            .env("PATH", format!("{}:/usr/bin:/bin", path.display()))
            .output()
            .expect("shell runs");
        String::from_utf8(out.stdout).expect("utf-8")
    }

    #[test]
    fn file_equals_reads_one_line_like_cat_would() {
        let dir = tempfile::tempdir().expect("temp dir");
        let f = dir.path().join("marker");
        let f = f.to_str().expect("utf-8");
        let cases: &[(Option<&str>, &str, bool)] = &[
            (Some("abc\n"), "abc", true),
            (Some("abc"), "abc", true),
            (Some("abc\n"), "ab", false),
            (Some("abcd\n"), "abc", false),
            (Some(" abc\n"), "abc", false),
            (Some("abc\nmore\n"), "abc", false),
            (Some("abc\nmore"), "abc", false),
            (
                Some("KUBELET_EXTRA_ARGS=--cgroup-root=/a b\\c\n"),
                "KUBELET_EXTRA_ARGS=--cgroup-root=/a b\\c",
                true,
            ),
            (Some(""), "abc", false),
            (None, "abc", false),
        ];
        for shell in ["sh", "bash"] {
            for (content, value, equal) in cases {
                match content {
                    Some(c) => std::fs::write(f, c).expect("write"),
                    None => {
                        std::fs::remove_file(f).ok();
                    }
                }
                let got = run_in(
                    shell,
                    dir.path(),
                    &format!(
                        "{FILE_EQUALS} kfeq {f} {} && echo yes || echo no",
                        quote(value)
                    ),
                );
                assert_eq!(
                    got.trim() == "yes",
                    *equal,
                    "{shell}: {content:?} vs {value:?}"
                );
            }
        }
    }

    #[test]
    fn has_word_matches_whole_words_only() {
        let list = "k8s.gcr.io/pause:3.2\nk8s.gcr.io/etcd:3.4.13-0\n";
        for shell in ["sh", "bash"] {
            let dir = tempfile::tempdir().expect("temp dir");
            let ask = |word: &str| {
                run_in(
                    shell,
                    dir.path(),
                    &format!(
                        "{HAS_WORD} l=$(printf '{list}'); kfhas \"$l\" {} && echo yes || echo no",
                        quote(word)
                    ),
                )
                .trim()
                .to_string()
            };
            assert_eq!(ask("k8s.gcr.io/etcd:3.4.13-0"), "yes", "{shell}");
            assert_eq!(ask("k8s.gcr.io/pause:3.2"), "yes", "{shell}");
            assert_eq!(ask("k8s.gcr.io/pause:3"), "no", "{shell}");
            assert_eq!(ask("k8s.gcr.io/etcd:3.4.13-*"), "no", "{shell}");
            assert_eq!(ask("pause"), "no", "{shell}");
        }
    }

    /// A unit the facts listed active is not asked again; anything else is asked of
    /// systemctl (a fake here, recording its calls), with its answer.
    #[test]
    fn unit_active_asks_systemctl_only_for_what_the_list_lacks() {
        let dir = tempfile::tempdir().expect("temp dir");
        let calls = dir.path().join("calls");
        let fake = dir.path().join("systemctl");
        std::fs::write(
            &fake,
            format!(
                "#!/bin/sh\necho \"$*\" >> {}\n[ \"$3\" = kubelet ] && exit 0\n\
case \"$1\" in list-units) printf 'containerd.service loaded active running c\\nkubeforge-x.timer loaded active waiting t\\nold.service loaded inactive dead o\\n';; *) exit 3;; esac\n",
                calls.display()
            ),
        )
        .expect("fake");
        std::process::Command::new("chmod")
            .arg("+x")
            .arg(&fake)
            .status()
            .expect("chmod");
        for shell in ["sh", "bash"] {
            std::fs::remove_file(&calls).ok();
            let got = run_in(
                shell,
                dir.path(),
                &format!(
                    "{LIST_ACTIVE_UNITS} {UNIT_ACTIVE} for u in containerd kubeforge-x.timer old kubelet haproxy; do \
kfup $u && echo \"$u up\" || echo \"$u down\"; done"
                ),
            );
            assert_eq!(
                got, "containerd up\nkubeforge-x.timer up\nold down\nkubelet up\nhaproxy down\n",
                "{shell}"
            );
            let asked = std::fs::read_to_string(&calls).expect("calls");
            let asked: Vec<&str> = asked.lines().skip(1).collect();
            assert_eq!(
                asked,
                [
                    "is-active --quiet old",
                    "is-active --quiet kubelet",
                    "is-active --quiet haproxy"
                ],
                "{shell}"
            );
            // Without the list (a check sent on its own), every unit is asked.
            std::fs::remove_file(&calls).ok();
            let got = run_in(
                shell,
                dir.path(),
                &format!("{UNIT_ACTIVE} kfup containerd; echo $?"),
            );
            assert_eq!(got.trim(), "3", "{shell}");
        }
    }

    #[test]
    fn quotes_only_when_needed_and_survives_a_real_shell() {
        assert_eq!(
            quote("/etc/kubernetes/admin.conf"),
            "/etc/kubernetes/admin.conf"
        );
        assert_eq!(quote(""), "''");
        assert_eq!(quote("a b"), "'a b'");
        assert_eq!(quote("it's"), "'it'\\''s'");
        let tricky = "x'; rm -rf / #\" $HOME `id` \\ \n end";
        let out = std::process::Command::new("sh")
            .arg("-c")
            .arg(format!("printf %s {}", quote(tricky)))
            .output()
            .unwrap();
        assert_eq!(String::from_utf8(out.stdout).unwrap(), tricky);
    }
}

//! Carrying a phase plan out on hosts: upload files (skipped when the remote sha256
//! matches), run each command unless its check says its result exists, per host, in
//! parallel (bounded) or one host at a time. One host's failure never stops the others
//! of the same phase; the phase then fails and no later phase starts.

use super::{HostPlan, PhasePlan, Step};
use crate::playbook::Strategy;
use crate::render::{RenderedFile, Secrets};
use crate::spec::{Host, LoadedCluster};
pub use crate::transport::remote::{download, download_all, run, tail, CommandFailure, HostError};
use crate::transport::{
    fan_out, ExecOutput, FanOutOptions, ProgressMode, SshPool, SshSession, Transport, UploadTarget,
};
use std::collections::HashMap;
use std::sync::Arc;

/// What host execution needs from the run.
pub struct Runtime {
    pub pool: Arc<SshPool>,
    /// The pinned host keys the pool checks against (saved into the state).
    pub host_keys: Arc<crate::transport::MemoryHostKeyStore>,
    pub concurrency: usize,
    pub progress: ProgressMode,
    /// Print remote command output as it finishes (`--verbose`).
    pub verbose: bool,
    /// The SSH tunnel to the cluster's API, opened once on first use.
    pub api: crate::addons::ApiAccess,
    /// What `connect` (or a plan) found on the hosts; phases plan from it.
    pub facts: std::sync::Mutex<Option<std::sync::Arc<crate::facts::ClusterFacts>>>,
    /// When `facts` were gathered.
    pub facts_at: std::sync::Mutex<Option<std::time::Instant>>,
    /// Read-only commands asked ahead in the facts' round trip, (host, command) → what
    /// it printed: the files-and-checks script of the plan the run is expected to make
    /// (see [`resolve_hosts`]) and the phases' [`super::Phase::ask_ahead`] commands.
    pub ahead: std::sync::Mutex<HashMap<(String, String), String>>,
}

impl Runtime {
    /// The facts gathered in this run, if any.
    pub fn facts(&self) -> Option<std::sync::Arc<crate::facts::ClusterFacts>> {
        self.facts.lock().map(|f| f.clone()).unwrap_or_default()
    }

    /// The answer `host` gave to `command` in the facts' round trip, taken (asked once);
    /// none once the facts are older than [`super::FACTS_HOLD_FOR`].
    pub fn asked_ahead(&self, host: &str, command: &str) -> Option<String> {
        self.fresh_facts(super::FACTS_HOLD_FOR)?;
        self.ahead
            .lock()
            .ok()?
            .remove(&(host.to_string(), command.to_string()))
    }

    pub fn set_facts(&self, facts: crate::facts::ClusterFacts) {
        if let Ok(mut f) = self.facts.lock() {
            *f = Some(std::sync::Arc::new(facts));
        }
        if let Ok(mut at) = self.facts_at.lock() {
            *at = Some(std::time::Instant::now());
        }
    }

    /// The facts gathered in this run, if at most `max_age` old.
    pub fn fresh_facts(
        &self,
        max_age: std::time::Duration,
    ) -> Option<std::sync::Arc<crate::facts::ClusterFacts>> {
        let at = self.facts_at.lock().ok().and_then(|a| *a)?;
        (at.elapsed() <= max_age).then(|| self.facts()).flatten()
    }
}

/// The connection to a host (by its address).
pub async fn session(rt: &Runtime, host: &Host) -> Result<Arc<SshSession>, HostError> {
    rt.pool
        .session(&host.address.to_string())
        .await
        .map_err(|source| HostError::Transport {
            host: host.name.clone(),
            source,
        })
}

/// Whether a step's check says its result already exists.
pub async fn already_done(t: &dyn Transport, host: &str, step: &Step) -> Result<bool, HostError> {
    let Some(check) = &step.check else {
        return Ok(false);
    };
    let out = t.exec(check).await.map_err(|source| HostError::Transport {
        host: host.to_string(),
        source,
    })?;
    Ok(out.success())
}

/// Called for host steps without a shell command: the phase carries them out.
#[async_trait::async_trait]
pub trait SpecialSteps: Sync {
    async fn special(
        &self,
        _t: &dyn Transport,
        _host: &Host,
        _step: &Step,
    ) -> Result<(), HostError> {
        Ok(())
    }
}

/// No special steps.
pub struct NoSpecial;
impl SpecialSteps for NoSpecial {}

/// What happened on one host.
#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct HostReport {
    pub files_sent: usize,
    pub steps_run: usize,
    pub steps_skipped: usize,
}

async fn apply_host(
    rt: &Runtime,
    c: &LoadedCluster,
    files: &[(crate::render::FileGroup, RenderedFile)],
    secrets: &Secrets,
    hp: &HostPlan,
    special: &dyn SpecialSteps,
) -> Result<HostReport, HostError> {
    let host = c.topology.host(&hp.host).ok_or_else(|| HostError::Other {
        host: hp.host.clone(),
        message: "not in the cluster's topology".into(),
    })?;
    let s = session(rt, host).await?;
    let mut report = HostReport::default();
    // Every file of the host in one round trip (then only what differs is sent).
    let mut items = Vec::new();
    for pf in &hp.files {
        let f = files
            .iter()
            .map(|(_, f)| f)
            .find(|f| f.host == hp.host && f.path == pf.path)
            .ok_or_else(|| HostError::Other {
                host: hp.host.clone(),
                message: format!("no rendered content for {}", pf.path),
            })?;
        items.push((
            f.content.clone().into(),
            UploadTarget::new(f.path.clone(), f.mode),
        ));
    }
    let transport = |source| HostError::Transport {
        host: host.name.clone(),
        source,
    };
    let outcomes = s.upload_all(items).await.map_err(transport)?;
    report.files_sent = outcomes
        .iter()
        .filter(|o| o.sent || o.metadata_fixed)
        .count();
    // The steps' checks in one round trip too. Checks have no side effects, so their
    // answers hold until a step runs; after that each check is asked again before its
    // step, as the step may have changed what it looks at.
    let checks: Vec<String> = hp
        .commands
        .iter()
        .filter_map(|st| st.check.clone())
        .collect();
    let mut batched = s.checks(&checks).await.map_err(transport)?.into_iter();
    let mut fresh = true;
    for step in &hp.commands {
        let done = match &step.check {
            None => false,
            Some(_) => {
                let answer = batched.next().unwrap_or(false);
                if fresh {
                    answer
                } else {
                    already_done(s.as_ref(), &host.name, step).await?
                }
            }
        };
        if done {
            report.steps_skipped += 1;
            continue;
        }
        fresh = false;
        match &step.run {
            Some(cmd) => {
                run(s.as_ref(), &host.name, cmd, secrets, rt.verbose)
                    .await
                    .map_err(|e| match e {
                        // A wrapped command (e.g. detached kubeadm) is named as planned.
                        HostError::Command(mut f) if *cmd != step.action => {
                            f.command = secrets.redact(&step.action);
                            HostError::Command(f)
                        }
                        e => e,
                    })?;
            }
            None => special.special(s.as_ref(), host, step).await?,
        }
        report.steps_run += 1;
    }
    Ok(report)
}

/// Carry out every host plan of `plan`: in parallel up to the concurrency, or one at a
/// time for serial phases. Every host finishes (or fails) before this returns.
pub async fn apply_hosts(
    rt: &Runtime,
    c: &LoadedCluster,
    files: &[(crate::render::FileGroup, RenderedFile)],
    secrets: &Secrets,
    plan: &PhasePlan,
    special: &dyn SpecialSteps,
    unchanged: &std::collections::HashSet<String>,
) -> Result<Vec<(String, HostReport)>, Vec<HostError>> {
    let names: Vec<String> = plan.hosts.iter().map(|h| h.host.clone()).collect();
    if names.is_empty() {
        return Ok(Vec::new());
    }
    let opts = FanOutOptions {
        concurrency: match plan.strategy {
            Strategy::Serial => 1,
            Strategy::Parallel => rt.concurrency.max(1),
        },
        progress: rt.progress,
        label: plan.name.clone(),
        cancel_on_ctrl_c: true,
    };
    let results = fan_out(&names, &opts, |name| async move {
        let hp = plan
            .hosts
            .iter()
            .find(|h| h.host == name)
            .ok_or(HostError::Cancelled)?;
        if unchanged.contains(&name) {
            // Found done by the run's preview moments ago: every step skipped.
            return Ok(HostReport {
                steps_skipped: hp.commands.iter().filter(|s| s.check.is_some()).count(),
                ..Default::default()
            });
        }
        apply_host(rt, c, files, secrets, hp, special).await
    })
    .await;
    let mut ok = Vec::new();
    let mut failed = Vec::new();
    for r in results {
        match r.result {
            Ok(rep) => ok.push((r.host, rep)),
            Err(e) => failed.push(e),
        }
    }
    if failed.is_empty() {
        Ok(ok)
    } else {
        Err(failed)
    }
}

/// How a planned file compares with the host's copy.
#[derive(Debug, Clone, serde::Serialize)]
#[serde(rename_all = "kebab-case", tag = "change")]
pub enum FileChange {
    Create,
    /// `diff` is a unified diff (empty for files that hold secrets).
    Update {
        diff: String,
    },
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct ResolvedFile {
    pub path: String,
    #[serde(flatten)]
    pub change: FileChange,
}

/// What a host plan would change on the host as it is now.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct ResolvedHost {
    pub host: String,
    pub files: Vec<ResolvedFile>,
    /// The commands that would run (their checks did not find their result).
    pub commands: Vec<String>,
}

impl ResolvedHost {
    pub fn is_empty(&self) -> bool {
        self.files.is_empty() && self.commands.is_empty()
    }
}

/// Compare plans of one host (its part of every phase of a run) with the host: files by
/// sha256 (diffs for files without secrets), steps by their checks; every file's sha256
/// and every check in one round trip, whatever the number of phases.
/// Read-only, so each answer is what that phase would find when no earlier phase
/// changes the host. One [`ResolvedHost`] per plan, in order.
///
/// The host is not asked when it answered this very script in the facts' round trip
/// ([`Runtime::asked_ahead`]).
pub async fn resolve_hosts(
    rt: &Runtime,
    c: &LoadedCluster,
    files: &[(crate::render::FileGroup, RenderedFile)],
    secrets: &Secrets,
    hps: &[&HostPlan],
) -> Result<Vec<ResolvedHost>, HostError> {
    let Some(first) = hps.first() else {
        return Ok(Vec::new());
    };
    let host = c
        .topology
        .host(&first.host)
        .ok_or_else(|| HostError::Other {
            host: first.host.clone(),
            message: "not in the cluster's topology".into(),
        })?;
    if let Some(other) = hps.iter().find(|hp| hp.host != first.host) {
        return Err(HostError::Other {
            host: other.host.clone(),
            message: format!("resolved together with {}", first.host),
        });
    }
    let s = session(rt, host).await?;
    let (planned, steps) = planned_parts(files, hps);
    let (script, checks) = probe(&planned, &steps);
    let asked = std::time::Instant::now();
    let transport = |source| HostError::Transport {
        host: host.name.clone(),
        source,
    };
    let answer = match script {
        None => ExecOutput::default(),
        Some(script) => match rt.asked_ahead(&host.name, &script) {
            Some(stdout) => {
                tracing::debug!(host = %host.name, "files and checks answered in the facts' round trip");
                ExecOutput {
                    stdout,
                    ..Default::default()
                }
            }
            None => s.exec(&script).await.map_err(transport)?,
        },
    };
    let digests = parse_sha256sum(&answer.stdout);
    let mut answers = crate::transport::ssh::parse_checks(&host.name, &answer, checks.len())
        .map_err(transport)?
        .into_iter();
    tracing::debug!(host = %host.name, checks = checks.len(), seconds = asked.elapsed().as_secs_f64(), "files and checks answered");
    let mut out = Vec::new();
    for (hp, (planned, steps)) in hps.iter().zip(planned.into_iter().zip(steps)) {
        let mut r = ResolvedHost {
            host: hp.host.clone(),
            ..Default::default()
        };
        for f in planned {
            let remote = digests.get(f.path.as_str()).copied().unwrap_or_default();
            if remote == f.sha256() {
                continue;
            }
            let change = if remote.is_empty() {
                FileChange::Create
            } else if f.sensitive {
                FileChange::Update {
                    diff: String::new(),
                }
            } else {
                let old = download(s.as_ref(), &host.name, &f.path).await?;
                let old = String::from_utf8_lossy(&old);
                FileChange::Update {
                    diff: similar::TextDiff::from_lines(old.as_ref(), f.content.as_str())
                        .unified_diff()
                        .context_radius(2)
                        .header(
                            &format!("{} (on {})", f.path, host.name),
                            &format!("{} (planned)", f.path),
                        )
                        .to_string(),
                }
            };
            r.files.push(ResolvedFile {
                path: f.path.clone(),
                change,
            });
        }
        for step in steps {
            let done = step.check.is_some() && answers.next().unwrap_or(false);
            if !done {
                r.commands.push(secrets.redact(&step.action));
            }
        }
        out.push(r);
    }
    Ok(out)
}

/// Each plan's files, and each plan's steps (described steps the phase carries out
/// itself, e.g. "gather facts", are left out).
type PlannedParts<'a> = (Vec<Vec<&'a RenderedFile>>, Vec<Vec<&'a Step>>);

fn planned_parts<'a>(
    files: &'a [(crate::render::FileGroup, RenderedFile)],
    hps: &[&'a HostPlan],
) -> PlannedParts<'a> {
    let planned = hps
        .iter()
        .map(|hp| {
            hp.files
                .iter()
                .filter_map(|pf| {
                    files
                        .iter()
                        .map(|(_, f)| f)
                        .find(|f| f.host == hp.host && f.path == pf.path)
                })
                .collect()
        })
        .collect();
    let steps = hps
        .iter()
        .map(|hp| {
            hp.commands
                .iter()
                .filter(|st| st.run.is_some() || st.check.is_some())
                .collect()
        })
        .collect();
    (planned, steps)
}

/// Every file's sha256 (one process; a missing file is left out of the answer) and every
/// step's check, as one script (None: nothing to ask), and the checks in order.
/// Read-only, so each answer is what the host is now.
fn probe(planned: &[Vec<&RenderedFile>], steps: &[Vec<&Step>]) -> (Option<String>, Vec<String>) {
    let mut paths: Vec<&str> = planned.iter().flatten().map(|f| f.path.as_str()).collect();
    paths.sort_unstable();
    paths.dedup();
    let checks: Vec<String> = steps
        .iter()
        .flatten()
        .filter_map(|st| st.check.clone())
        .collect();
    if paths.is_empty() && checks.is_empty() {
        return (None, checks);
    }
    let mut script = String::new();
    if !paths.is_empty() {
        let quoted: Vec<String> = paths
            .iter()
            .map(|p| crate::transport::shell::quote(p))
            .collect();
        script.push_str(&format!("sha256sum -- {} 2>/dev/null; ", quoted.join(" ")));
    }
    script.push_str(&crate::transport::ssh::checks_script(&checks));
    (Some(script), checks)
}

/// The script [`resolve_hosts`] sends for these plans of one host (None: nothing to
/// ask); a caller may send it ahead, in the facts' round trip.
pub fn files_and_checks_script(
    files: &[(crate::render::FileGroup, RenderedFile)],
    hps: &[&HostPlan],
) -> Option<String> {
    let (planned, steps) = planned_parts(files, hps);
    probe(&planned, &steps).0
}

/// `sha256sum` of `paths`: read-only, asked ahead by phases that read files only to
/// learn whether they changed (see [`super::ApplyContext::files_unchanged_ahead`]).
pub fn digests_command(paths: &[&str]) -> String {
    let quoted: Vec<String> = paths
        .iter()
        .map(|p| crate::transport::shell::quote(p))
        .collect();
    format!("sha256sum -- {}", quoted.join(" "))
}

/// Whether `out` (what [`digests_command`] printed for `paths`) says each file holds
/// what `known` holds for it; an unknown content or a file not in `out` does not match.
pub fn digests_match(out: &str, paths: &[&str], known: &[Option<&str>]) -> bool {
    use sha2::{Digest, Sha256};
    let got = parse_sha256sum(out);
    paths.len() == known.len()
        && paths.iter().zip(known).all(|(p, k)| {
            k.is_some_and(|k| {
                got.get(p)
                    .is_some_and(|d| *d == hex::encode(Sha256::digest(k.as_bytes())))
            })
        })
}

/// `sha256sum` output (`<hex>  <path>` per line) as path → hex. Lines of names that
/// `sha256sum` escapes (a backslash or newline in them) are left out: such a file reads
/// as missing, and is written again.
pub(crate) fn parse_sha256sum(out: &str) -> std::collections::HashMap<&str, &str> {
    out.lines()
        .filter_map(|l| {
            let (hash, path) = l.split_once("  ")?;
            (hash.len() == 64 && hash.bytes().all(|b| b.is_ascii_hexdigit()))
                .then_some((path, hash))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What `sha256sum` prints on a host is compared with contents known here: equal
    /// content matches; another content, an unknown one or a missing file does not.
    #[test]
    fn digests_asked_on_a_host_match_only_the_same_contents() {
        let dir = tempfile::tempdir().expect("temp dir");
        let a = dir.path().join("ca.crt");
        let b = dir.path().join("sa key");
        std::fs::write(&a, "-----BEGIN CERTIFICATE-----\nx\n").expect("write");
        std::fs::write(&b, "key\n").expect("write");
        let (a, b) = (a.to_str().expect("utf-8"), b.to_str().expect("utf-8"));
        let missing = dir.path().join("missing");
        let missing = missing.to_str().expect("utf-8");
        let ask = |paths: &[&str]| {
            let out = std::process::Command::new("sh")
                .arg("-c")
                .arg(digests_command(paths))
                .output()
                .expect("sh");
            String::from_utf8(out.stdout).expect("utf-8")
        };
        let out = ask(&[a, b]);
        let cert = "-----BEGIN CERTIFICATE-----\nx\n";
        assert!(digests_match(&out, &[a, b], &[Some(cert), Some("key\n")]));
        assert!(!digests_match(&out, &[a, b], &[Some(cert), Some("key")]));
        assert!(!digests_match(&out, &[a, b], &[Some(cert), None]));
        assert!(!digests_match(&out, &[a, b], &[Some(cert)]));
        let out = ask(&[a, missing]);
        assert!(!digests_match(&out, &[a, missing], &[Some(cert), Some("")]));
    }

    #[test]
    fn sha256sum_output_maps_paths_to_digests() {
        let h = "a".repeat(64);
        let out = format!("{h}  /etc/a b.conf\n\\{h}  /etc/odd\\nname\nnot a line\n");
        let m = parse_sha256sum(&out);
        assert_eq!(m.get("/etc/a b.conf"), Some(&h.as_str()));
        assert_eq!(m.len(), 1, "{m:?}");
    }
}

//! `kubeforge apply`: take the state lock, show the plan, then plan and apply each phase
//! of the playbook in order, journalling every phase in the state. A re-run skips what
//! exists (files by sha256, steps by their checks); a failed or killed run resumes.

use crate::error::Error;
use crate::output::{print_json, OutputFormat};
use crate::phase::exec::Runtime;
use crate::phase::{self, ApplyContext, PhasePlan, StateHandle};
use crate::playbook;
use crate::provider::{DockerConfig, DockerProvider};
use crate::render::{self, Secrets};
use crate::spec::{self, LoadedCluster};
use crate::state::{JournalEntry, PhaseStatus, StateDocument, StateStore};
use crate::transport::{MemoryHostKeyStore, ProgressMode, SshAuth, SshConfig, SshPool};
use clap::Args;
use serde::Serialize;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(Debug, Args)]
pub struct ApplyArgs {
    #[command(flatten)]
    pub spec: crate::cli::SpecArgs,
    /// Apply without asking for confirmation.
    #[arg(long, short = 'y')]
    pub yes: bool,
    /// A playbook file replacing the embedded bootstrap playbook.
    #[arg(long)]
    pub playbook: Option<PathBuf>,
    /// Hosts worked on at once in parallel phases.
    #[arg(long, default_value_t = 10)]
    pub concurrency: usize,
    /// Re-pin the SSH host key of this host (address) on purpose, e.g. after a rebuild.
    #[arg(long = "accept-new-host-key", value_name = "HOST")]
    pub accept_new_host_key: Vec<String>,
    #[command(flatten)]
    pub addons: AddonArgs,
    /// Run only these phases of the playbook, in playbook order (comma-separated or
    /// repeated; `machines` is the provision phase).
    #[arg(long, value_delimiter = ',', value_name = "PHASE")]
    pub phases: Vec<String>,
}

/// How addons are applied (the `addons` phase and `kubeforge addons apply`).
#[derive(Debug, Clone, clap::Args)]
pub struct AddonArgs {
    /// Take over fields another field manager owns (server-side apply `force`);
    /// without it such conflicts are reported and nothing is forced.
    #[arg(long)]
    pub force_conflicts: bool,
    /// Wait until every addon's Deployments/DaemonSets are available and Ceph is healthy.
    #[arg(long)]
    pub wait: bool,
    /// Limit of each addon wait (CRDs Established, webhooks answering, --wait), e.g.
    /// `300s`, `5m`.
    #[arg(long, default_value = "5m", value_parser = parse_duration)]
    pub timeout: std::time::Duration,
}

impl AddonArgs {
    pub fn options(&self) -> crate::addons::AddonOptions {
        crate::addons::AddonOptions {
            force_conflicts: self.force_conflicts,
            wait: self.wait,
            timeout: self.timeout,
        }
    }
}

/// `90`, `90s`, `5m`, `1h`.
pub fn parse_duration(s: &str) -> Result<std::time::Duration, String> {
    let s = s.trim();
    let (num, unit) = match s.find(|c: char| !c.is_ascii_digit()) {
        Some(i) => s.split_at(i),
        None => (s, "s"),
    };
    let n: u64 = num
        .parse()
        .map_err(|_| format!("`{s}` is not a duration (examples: 90s, 5m, 1h)"))?;
    let secs = match unit {
        "s" => n,
        "m" => n * 60,
        "h" => n * 3600,
        _ => return Err(format!("`{s}` is not a duration (examples: 90s, 5m, 1h)")),
    };
    Ok(std::time::Duration::from_secs(secs))
}

/// Names `--phases` accepts besides the phase names.
const PHASE_ALIASES: &[(&str, &str)] = &[("machines", "provision")];

/// Keep the playbook phases `--phases` names (all when it is empty); an unknown name is
/// a usage error listing the known ones.
pub fn select_phases(pb: &mut playbook::Playbook, wanted: &[String]) -> Result<(), Error> {
    if wanted.is_empty() {
        return Ok(());
    }
    let mut names = Vec::new();
    for w in wanted {
        let w = w.trim();
        let name = PHASE_ALIASES
            .iter()
            .find(|(a, _)| *a == w)
            .map(|(_, n)| *n)
            .unwrap_or(w);
        if !pb.phases.iter().any(|p| p.name == name) {
            let known: Vec<&str> = pb.phases.iter().map(|p| p.name.as_str()).collect();
            return Err(Error::Usage(format!(
                "--phases: no phase `{w}` in playbook {} (phases: {}; `machines` = provision)",
                pb.name,
                known.join(", ")
            )));
        }
        names.push(name.to_string());
    }
    pb.phases.retain(|p| names.contains(&p.name));
    Ok(())
}

/// Names of the secrets kept in the state's `extra` map.
pub const SSH_KEY: &str = "ssh-private-key";

#[derive(Debug, Serialize)]
struct PhaseOutcome {
    phase: String,
    status: &'static str,
    seconds: f64,
    /// Files uploaded because the host's copy differed (or was missing).
    files_sent: usize,
    /// Host commands run; skipped ones found their result already there.
    steps_run: usize,
    steps_skipped: usize,
    /// What the phase reported for the operator (addon outcomes and readiness).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    notes: Vec<String>,
}

#[derive(Debug, Serialize)]
struct ApplyReport {
    cluster: String,
    generation: u64,
    phases: Vec<PhaseOutcome>,
}

fn expand_home(p: &str) -> PathBuf {
    match (p.strip_prefix("~/"), std::env::var_os("HOME")) {
        (Some(rest), Some(home)) => Path::new(&home).join(rest),
        _ => PathBuf::from(p),
    }
}

/// Open the cluster's state store.
pub fn open_store(c: &LoadedCluster) -> Result<StateStore, Error> {
    Ok(StateStore::open(
        &c.cluster.spec.state,
        c.name(),
        &c.base_dir,
    )?)
}

/// The render secrets of a state document.
pub fn render_secrets(doc: &StateDocument) -> Option<Secrets> {
    Some(Secrets {
        bootstrap_token: doc.secrets.join_tokens.first()?.clone(),
        certificate_key: doc.secrets.certificate_key.clone()?,
        ca_cert_hash: doc.secrets.extra.get(phase::CA_HASH_KEY).cloned(),
    })
}

fn command_line() -> String {
    std::env::args().collect::<Vec<_>>().join(" ")
}

pub async fn run(args: ApplyArgs, output: OutputFormat, verbose: bool) -> Result<(), Error> {
    let loaded = spec::load_file(&args.spec.file)?;
    crate::ops::validate::print_warnings(&loaded.warnings, output);
    let store = open_store(&loaded)?;
    let lock = store.lock(&command_line()).await?;
    // Ctrl-C drops the run (open SSH channels close) and still releases the lock; the
    // journal shows the phase that was interrupted, and the next run resumes.
    let result =
        crate::state::until_ctrl_c(run_locked(&loaded, store, &args, output, verbose, &lock)).await;
    let released = lock.release().await;
    let report = result??;
    released?;
    match output {
        OutputFormat::Json => print_json(&report)?,
        OutputFormat::Text => println!(
            "cluster `{}` applied ({} phases, state generation {})",
            report.cluster,
            report.phases.len(),
            report.generation
        ),
    }
    Ok(())
}

async fn run_locked(
    c: &LoadedCluster,
    store: StateStore,
    args: &ApplyArgs,
    output: OutputFormat,
    verbose: bool,
    lock: &crate::state::LockGuard,
) -> Result<ApplyReport, Error> {
    let (doc, version) = store.load_or_new().await?;
    if !store.has_key() {
        return Err(Error::Usage(
            "the state will hold secrets (join token, certificate key, kubeconfig): give it an encryption key \
(spec.state.encryption, or KUBEFORGE_STATE_KEY_FILE / KUBEFORGE_STATE_PASSPHRASE; \
`kubeforge state keygen --out FILE` makes one)"
                .into(),
        ));
    }
    let state = StateHandle::new(store, doc, version);
    ensure_secrets(c, &state).await?;
    let doc = state.get().await;
    let auth = ssh_auth(c, &doc)?;
    let provider = crate::ops::provider::open(c, &auth).await?;
    let host_keys = Arc::new(MemoryHostKeyStore::from_map(doc.host_keys.clone()));
    let pool = Arc::new(SshPool::new(
        ssh_config(c, auth, &args.accept_new_host_key)?,
        host_keys.clone(),
    ));
    let rt = Runtime {
        pool: pool.clone(),
        host_keys,
        concurrency: args.concurrency.max(1),
        progress: if output == OutputFormat::Json || !std::io::stderr().is_terminal() {
            ProgressMode::Hidden
        } else {
            ProgressMode::Auto
        },
        verbose,
    };
    let registry = phase::registry();
    let names: Vec<&str> = registry.iter().map(|p| p.name()).collect();
    let mut pb = playbook::load(args.playbook.as_deref(), &names)?;
    select_phases(&mut pb, &args.phases)?;
    // Phases that only talk to the provider and the state (no host): their plan needs
    // no connection to any machine.
    let operator_only = pb
        .phases
        .iter()
        .all(|p| p.hosts == playbook::Selector::None);

    // The whole plan first, for the operator to confirm.
    let secrets =
        render_secrets(&doc).ok_or_else(|| Error::Usage("internal: secrets missing".into()))?;
    if output == OutputFormat::Text {
        if let (Some(p), true) = (
            &provider,
            pb.phases.iter().any(|p| p.name == "provision") && c.cluster.spec.provider.is_cloud(),
        ) {
            let wanted = p.planned(&crate::phase::provision::machine_specs(c));
            let existing = p.resources().await?;
            eprint!(
                "{}",
                crate::ops::plan::resources_text(
                    p.kind(),
                    &crate::provider::diff_resources(&wanted, &existing)
                )
            );
        }
        if operator_only {
            let full = crate::ops::plan::build(c, &secrets, args.playbook.as_deref())?;
            let kept: Vec<_> = full
                .phases
                .iter()
                .filter(|ph| pb.phases.iter().any(|r| r.name == ph.name))
                .collect();
            for ph in kept {
                eprint!("{}", crate::ops::plan::phase_text(ph, false));
            }
        } else if doc.machines.is_empty() {
            let full = crate::ops::plan::build(c, &secrets, args.playbook.as_deref())?;
            eprint!("{}", crate::ops::plan::text(&full, c, false));
        } else {
            // Machines exist: show what would change on them, files as diffs.
            let (plan, unreachable) =
                crate::ops::plan::against_hosts(c, &doc, args.playbook.as_deref()).await?;
            eprint!("{}", crate::ops::plan::online_text(&plan));
            for e in &unreachable {
                eprintln!("warning: not planned, {e} (apply will try again)");
            }
        }
    }
    if !args.yes {
        crate::ops::confirm("Apply this plan?", "applying", "not applied")?;
    }

    let addon_opts = args.addons.options();
    let mut outcomes = Vec::new();
    let total = pb.phases.len();
    // An overall bar on a terminal; plain lines otherwise (logs, CI).
    let overall = (rt.progress != ProgressMode::Hidden).then(|| {
        let bar = indicatif::ProgressBar::new(total as u64);
        bar.set_style(
            indicatif::ProgressStyle::with_template(
                "{prefix:.bold} [{bar:30}] {pos}/{len} {msg} ({elapsed})",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
            .progress_chars("=> "),
        );
        bar.set_prefix(c.name().to_string());
        bar
    });
    for (i, r) in pb.phases.iter().enumerate() {
        let Some(ph) = registry.iter().find(|p| p.name() == r.name) else {
            continue;
        };
        // Someone broke our lock (`state unlock --force`): stop before changing more.
        lock.check()?;
        // Re-render with what earlier phases recorded (e.g. the CA hash for joins).
        let doc = state.get().await;
        let secrets =
            render_secrets(&doc).ok_or_else(|| Error::Usage("internal: secrets missing".into()))?;
        let files = render::render_all(c, &secrets)?;
        let plan = phase::plan_phase(ph.as_ref(), r, c, &files, &secrets);
        let digest = plan_digest(&plan);
        match &overall {
            Some(bar) => bar.set_message(plan.name.clone()),
            None if output == OutputFormat::Text => {
                eprintln!(
                    "==> phase {}/{total} {}: {}",
                    i + 1,
                    plan.name,
                    plan.description
                )
            }
            None => {}
        }
        let span = tracing::info_span!("phase", name = %plan.name);
        journal(&state, &plan.name, &digest, PhaseStatus::Started, None).await?;
        let started = Instant::now();
        let ctx = ApplyContext {
            cluster: c,
            files: &files,
            secrets: &secrets,
            rt: &rt,
            state: &state,
            provider: provider.as_deref(),
            done: Default::default(),
            addons: &addon_opts,
            notes: Default::default(),
        };
        let result = tracing::Instrument::instrument(ph.apply(&ctx, &plan), span).await;
        let seconds = started.elapsed().as_secs_f64();
        let changes = ctx.done.lock().map(|d| d.clone()).unwrap_or_default();
        let notes = ctx.notes.lock().map(|n| n.clone()).unwrap_or_default();
        for n in &notes {
            let line = format!("    {n}");
            match &overall {
                Some(bar) => bar.println(line),
                None if output == OutputFormat::Text => eprintln!("{line}"),
                None => {}
            }
        }
        match result {
            Ok(()) => {
                journal(&state, &plan.name, &digest, PhaseStatus::Done, None).await?;
                let line = format!(
                    "    {} done in {seconds:.1}s: {} files sent, {} commands run, {} already done",
                    plan.name, changes.files_sent, changes.steps_run, changes.steps_skipped
                );
                match &overall {
                    Some(bar) => {
                        bar.println(line);
                        bar.inc(1);
                    }
                    None if output == OutputFormat::Text => eprintln!("{line}"),
                    None => {}
                }
                outcomes.push(PhaseOutcome {
                    phase: plan.name.clone(),
                    status: "done",
                    seconds,
                    files_sent: changes.files_sent,
                    steps_run: changes.steps_run,
                    steps_skipped: changes.steps_skipped,
                    notes,
                });
            }
            Err(e) => {
                let text = secrets.redact(&e.to_string());
                // The failure is recorded; if even that fails, the phase error is the
                // one to show.
                let _ = journal(&state, &plan.name, &digest, PhaseStatus::Failed, Some(text)).await;
                if let Some(bar) = &overall {
                    bar.abandon_with_message(format!("{} failed", plan.name));
                }
                pool.close_all().await;
                return Err(Error::Phase(Box::new(e)));
            }
        }
    }
    pool.close_all().await;
    if let Some(bar) = &overall {
        bar.finish_with_message("done");
    }
    let doc = state.get().await;
    Ok(ApplyReport {
        cluster: c.name().to_string(),
        generation: doc.generation,
        phases: outcomes,
    })
}

fn plan_digest(p: &PhasePlan) -> String {
    use sha2::{Digest, Sha256};
    let json = serde_json::to_vec(p).unwrap_or_default();
    hex::encode(&Sha256::digest(&json)[..8])
}

async fn journal(
    state: &StateHandle,
    phase: &str,
    digest: &str,
    status: PhaseStatus,
    error: Option<String>,
) -> Result<(), Error> {
    let now = chrono::Utc::now();
    state
        .update(|doc| {
            // One entry per phase attempt: `started` opens it, done/failed closes it.
            match doc.journal.last_mut() {
                Some(last)
                    if status != PhaseStatus::Started
                        && last.phase == phase
                        && last.status == PhaseStatus::Started =>
                {
                    last.status = status;
                    last.finished = Some(now);
                    last.error = error;
                }
                _ => doc.journal.push(JournalEntry {
                    phase: phase.to_string(),
                    plan_digest: digest.to_string(),
                    status,
                    started: now,
                    finished: (status != PhaseStatus::Started).then_some(now),
                    host: None,
                    error,
                }),
            }
            // Keep the journal bounded.
            let excess = doc.journal.len().saturating_sub(500);
            doc.journal.drain(..excess);
        })
        .await?;
    Ok(())
}

/// Generate what the cluster needs once: the bootstrap token, the certificate key and,
/// for the docker provider without a key file, the cluster's SSH key.
async fn ensure_secrets(c: &LoadedCluster, state: &StateHandle) -> Result<(), Error> {
    let doc = state.get().await;
    let need_ssh = c.cluster.spec.provider.makes_machines()
        && c.cluster.spec.ssh.key_file.is_none()
        && !c.cluster.spec.ssh.agent
        && !doc.secrets.extra.contains_key(SSH_KEY);
    if render_secrets(&doc).is_some() && !need_ssh {
        return Ok(());
    }
    let fresh = Secrets::generate();
    let ssh = if need_ssh {
        let key = crate::transport::ssh::generate_ed25519_key();
        let (private, _) = crate::transport::ssh::encode_key(&key)
            .map_err(|e| Error::Usage(format!("cannot encode a new SSH key: {e}")))?;
        Some(private)
    } else {
        None
    };
    state
        .update(|doc| {
            if doc.secrets.join_tokens.is_empty() {
                doc.secrets.join_tokens.push(fresh.bootstrap_token.clone());
            }
            if doc.secrets.certificate_key.is_none() {
                doc.secrets.certificate_key = Some(fresh.certificate_key.clone());
            }
            if let Some(k) = ssh {
                doc.secrets.extra.insert(SSH_KEY.into(), k);
            }
        })
        .await?;
    Ok(())
}

pub fn ssh_auth(c: &LoadedCluster, doc: &StateDocument) -> Result<SshAuth, Error> {
    let ssh = &c.cluster.spec.ssh;
    if let Some(f) = &ssh.key_file {
        let path = expand_home(f);
        let path = if path.is_relative() {
            c.base_dir.join(path)
        } else {
            path
        };
        return Ok(SshAuth::key_file(&path)?);
    }
    if ssh.agent {
        return Ok(SshAuth::Agent);
    }
    let pem =
        doc.secrets.extra.get(SSH_KEY).ok_or_else(|| {
            Error::Usage("no SSH key: set spec.ssh.keyFile or spec.ssh.agent".into())
        })?;
    let key = russh::keys::decode_secret_key(pem, None)
        .map_err(|e| Error::Usage(format!("the SSH key in the state is unreadable: {e}")))?;
    Ok(SshAuth::Key(Arc::new(key)))
}

pub fn ssh_config(c: &LoadedCluster, auth: SshAuth, accept: &[String]) -> Result<SshConfig, Error> {
    let ssh = &c.cluster.spec.ssh;
    if let Some(h) = c
        .topology
        .hosts
        .iter()
        .find(|h| h.ssh_user != ssh.user || h.ssh_port != ssh.port)
    {
        return Err(Error::Usage(format!(
            "host `{}` uses SSH {}@:{} but the cluster uses {}@:{}: per-host SSH users and ports are not supported yet",
            h.name, h.ssh_user, h.ssh_port, ssh.user, ssh.port
        )));
    }
    let mut cfg = SshConfig::new(ssh.user.clone(), auth.clone());
    cfg.port = ssh.port;
    cfg.connect_timeout = Duration::from_secs(ssh.connect_timeout_seconds.into());
    let (ordinary, long) = ssh.command_timeouts();
    (cfg.command_timeout, cfg.long_command_timeout) = (Some(ordinary), Some(long));
    if c.cluster.spec.provider.makes_machines() {
        // Fresh machines get their authorized key a moment after sshd starts.
        cfg.retry.auth_window = Duration::from_secs(30);
    }
    if c.cluster.spec.provider.is_cloud() {
        // Fresh VMs: sshd answers a while after the instance runs, and cloud-init (or
        // the disk edit) installs the key at first boot.
        cfg.retry.window = Duration::from_secs(300);
        cfg.retry.auth_window = Duration::from_secs(180);
    }
    if let Some(b) = &ssh.bastion {
        let bauth = match &b.key_file {
            Some(f) => Some(SshAuth::key_file(expand_home(f))?),
            None => None,
        };
        cfg.bastion = Some(crate::transport::BastionConfig {
            host: b.host.clone(),
            port: b.port,
            user: b.user.clone().unwrap_or_else(|| ssh.user.clone()),
            auth: bauth,
        });
    }
    cfg.accept_new_host_keys = accept.iter().cloned().collect();
    Ok(cfg)
}

pub async fn docker_provider(
    c: &LoadedCluster,
    d: &spec::DockerProvider,
    auth: &SshAuth,
) -> Result<DockerProvider, Error> {
    // The machines get the public half of the key kubeforge logs in with (the cluster
    // key from the state, or the user's key file), already loaded by `ssh_auth`.
    let public = match auth {
        SshAuth::Key(key) => key
            .public_key()
            .to_openssh()
            .map_err(|e| Error::Usage(format!("cannot encode the SSH public key: {e}")))?,
        SshAuth::Agent => return Err(Error::Usage(
            "the docker provider installs the login key into its machines: set spec.ssh.keyFile, \
or leave both keyFile and agent unset for a cluster key kept in the state"
                .into(),
        )),
    };
    let cfg = DockerConfig {
        cluster: c.name().to_string(),
        network: d.network.clone().unwrap_or_else(|| c.name().to_string()),
        subnet: c
            .topology
            .node_subnet
            .ok_or_else(|| Error::Usage("internal: docker subnet missing".into()))?,
        image: d
            .image
            .clone()
            .unwrap_or_else(crate::provider::cli::node_image_tag),
        ssh_public_key: public,
    };
    Ok(DockerProvider::connect(cfg).await?)
}

//! `kubeforge state show|history|unlock|pull|push|keygen`.

use super::crypto::Keyring;
use super::lock::{LockOptions, Unlocked};
use super::{StateDocument, StateError, StateSpec, StateStore, StoreOptions};
use crate::error::Error;
use crate::output::{print_json, OutputFormat};
use chrono::{DateTime, Utc};
use clap::{Args, Subcommand};
use serde::Deserialize;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

#[derive(Debug, Args)]
pub struct StateArgs {
    #[command(flatten)]
    pub target: TargetArgs,
    #[command(subcommand)]
    pub command: StateCommand,
}

/// Which store: the cluster file's `spec.state`, or a URL given directly.
#[derive(Debug, Args)]
pub struct TargetArgs {
    /// The cluster file (its metadata.name and spec.state). Default: cluster.yaml.
    #[arg(short = 'f', long = "file", global = true)]
    pub file: Option<PathBuf>,
    /// The store URL (file://DIR, s3://bucket/prefix, gs://..., az://...); overrides
    /// the cluster file's spec.state.url.
    #[arg(long, global = true, value_name = "URL")]
    pub state_url: Option<String>,
    /// S3 endpoint (MinIO, any S3-compatible store).
    #[arg(long, global = true, value_name = "URL")]
    pub endpoint: Option<String>,
    #[arg(long, global = true)]
    pub region: Option<String>,
    /// Path-style S3 requests (needed by MinIO and most emulators).
    #[arg(long, global = true)]
    pub path_style: bool,
    /// Allow a plain http:// endpoint.
    #[arg(long, global = true)]
    pub allow_http: bool,
}

#[derive(Debug, Subcommand)]
pub enum StateCommand {
    /// Show the state (secrets are listed by name, never shown) and the lock.
    Show {
        /// Show a generation from history instead of the current state.
        #[arg(long)]
        generation: Option<u64>,
    },
    /// List the saved generations.
    History,
    /// List the stored (encrypted) snapshots.
    Snapshots,
    /// Remove the lock: an expired one, or with --force any one (prints what it breaks).
    Unlock {
        /// Break the lock even if its lease is live.
        #[arg(long)]
        force: bool,
    },
    /// Write a local copy of the state (mode 0600; secrets stay encrypted).
    Pull {
        /// Output file (`-` for stdout). Default: <cluster>.state.json.
        #[arg(long)]
        out: Option<PathBuf>,
        /// Pull a generation from history instead of the current state.
        #[arg(long)]
        generation: Option<u64>,
    },
    /// Replace the state with a (pulled and edited) copy; saved as a new generation.
    Push {
        /// The edited copy (from `state pull`).
        #[arg(value_name = "FILE")]
        copy: PathBuf,
        /// The generation the copy was pulled at; refused if the state moved since.
        #[arg(long)]
        generation: u64,
        /// Replace a corrupted state object (e.g. with the last good generation pulled
        /// from history). Refused when the state is intact.
        #[arg(long)]
        replace_corrupted: bool,
    },
    /// Adopt a state written before state authentication: check it with `state show`,
    /// then save it as a new generation authenticated with the state key.
    Migrate {
        /// The generation you checked (as `state show` prints it); refused if the
        /// state moved since.
        #[arg(long)]
        generation: u64,
    },
    /// Write a new age X25519 key file (mode 0600) for encrypting the state's secrets.
    Keygen {
        #[arg(long)]
        out: PathBuf,
    },
    /// Take the lock, hold it, release it (for tests and diagnostics).
    #[command(hide = true)]
    LockProbe {
        /// Lease in seconds.
        #[arg(long, default_value_t = 60.0)]
        lease_secs: f64,
        /// Refresh interval in seconds (default: a third of the lease).
        #[arg(long)]
        refresh_secs: Option<f64>,
        /// Hold until this file exists.
        #[arg(long)]
        hold_until_file: Option<PathBuf>,
        /// Hold at most this long (milliseconds).
        #[arg(long, default_value_t = 60_000)]
        hold_ms: u64,
        /// Take over a lock whose holder provably died on this host.
        #[arg(long)]
        break_stale_lock: bool,
    },
}

/// The two fields of a cluster file this module needs (the full loader lives in
/// `crate::spec`).
#[derive(Deserialize)]
struct ClusterHead {
    metadata: ClusterMeta,
    #[serde(default)]
    spec: Option<SpecHead>,
}

#[derive(Deserialize)]
struct ClusterMeta {
    name: String,
}

#[derive(Deserialize)]
struct SpecHead {
    #[serde(default)]
    state: Option<StateSpec>,
}

struct Target {
    spec: StateSpec,
    cluster: Option<String>,
    base_dir: PathBuf,
}

fn read_cluster_file(path: &Path) -> Result<Target, StateError> {
    let text = std::fs::read_to_string(path).map_err(|e| StateError::Io {
        what: format!("cannot read the cluster file {}", path.display()),
        source: e,
    })?;
    let head: ClusterHead = serde_yaml_ng::from_str(&text).map_err(|e| {
        StateError::Usage(format!(
            "{}: cannot read metadata.name and spec.state: {e}",
            path.display()
        ))
    })?;
    let base_dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    Ok(Target {
        spec: head.spec.and_then(|s| s.state).unwrap_or_default(),
        cluster: Some(head.metadata.name),
        base_dir,
    })
}

fn resolve_target(t: &TargetArgs) -> Result<Target, StateError> {
    let mut target = match (&t.file, &t.state_url) {
        (Some(f), _) => read_cluster_file(f)?,
        (None, Some(_)) => Target {
            spec: StateSpec::default(),
            cluster: None,
            base_dir: PathBuf::from("."),
        },
        (None, None) => {
            let default = Path::new("cluster.yaml");
            if !default.exists() {
                return Err(StateError::Usage(
                    "no cluster file: pass -f cluster.yaml or --state-url URL".into(),
                ));
            }
            read_cluster_file(default)?
        }
    };
    if let Some(u) = &t.state_url {
        target.spec.url = Some(u.clone());
    }
    if let Some(e) = &t.endpoint {
        target.spec.endpoint = Some(e.clone());
    }
    if let Some(r) = &t.region {
        target.spec.region = Some(r.clone());
    }
    target.spec.path_style |= t.path_style;
    target.spec.allow_http |= t.allow_http;
    Ok(target)
}

fn open_store(target: &Target, with_key: bool) -> Result<StateStore, StateError> {
    let url = match (&target.spec.url, &target.cluster) {
        (Some(u), _) => u.clone(),
        (None, Some(c)) => super::default_url(c),
        (None, None) => return Err(StateError::Usage("no state store URL".into())),
    };
    let options: StoreOptions = target.spec.options()?;
    let backend = StateStore::backend_for(&url, &options, &target.base_dir)?;
    let keyring = if with_key {
        Keyring::resolve(&target.spec.encryption, &target.base_dir)?
    } else {
        None
    };
    Ok(StateStore::with_backend(backend)
        .with_cluster(target.cluster.clone())
        .with_keyring(keyring))
}

fn ts(t: &DateTime<Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

pub async fn run(args: StateArgs, output: OutputFormat) -> Result<(), Error> {
    if let StateCommand::Keygen { out } = &args.command {
        return keygen(out, output);
    }
    let target = resolve_target(&args.target)?;
    match args.command {
        StateCommand::Show { generation } => {
            // With a key (when one resolves) the state is authenticated; without, or
            // when it does not verify, it is still shown, marked as such.
            let keyed = open_store(&target, true).ok().filter(StateStore::has_key);
            let plain = open_store(&target, false)?;
            show(keyed.as_ref(), &plain, generation, output).await
        }
        StateCommand::History => history(&open_store(&target, false)?, output).await,
        StateCommand::Snapshots => snapshots(&open_store(&target, false)?, output).await,
        StateCommand::Unlock { force } => unlock(&open_store(&target, false)?, force, output).await,
        StateCommand::Pull { out, generation } => {
            let store = open_store(&target, false)?;
            pull(&store, out, generation, target.cluster.as_deref(), output).await
        }
        StateCommand::Push {
            copy,
            generation,
            replace_corrupted,
        } => {
            let store = open_store(&target, true)?;
            push(&store, &copy, generation, replace_corrupted, output).await
        }
        StateCommand::Migrate { generation } => {
            let store = open_store(&target, true)?;
            migrate(&store, generation, output).await
        }
        StateCommand::LockProbe {
            lease_secs,
            refresh_secs,
            hold_until_file,
            hold_ms,
            break_stale_lock,
        } => {
            let store = open_store(&target, false)?;
            let opts = LockOptions {
                command: std::env::args().collect::<Vec<_>>().join(" "),
                lease: Duration::from_secs_f64(lease_secs.max(0.1)),
                refresh_every: refresh_secs.map(|s| Duration::from_secs_f64(s.max(0.05))),
                break_stale_lock,
            };
            lock_probe(&store, opts, hold_until_file, hold_ms).await
        }
        StateCommand::Keygen { .. } => unreachable!("handled above"),
    }
}

/// The document as JSON with the secrets replaced by their names.
fn redacted_json(doc: &StateDocument) -> serde_json::Value {
    let mut v = serde_json::to_value(doc).expect("state serializes");
    if let Some(obj) = v.as_object_mut() {
        match doc.sealed_secrets() {
            Some(s) => {
                obj.insert(
                    "secrets".into(),
                    serde_json::json!({
                        "names": s.names,
                        "encryption": s.scheme,
                        "recipient": s.recipient,
                        "values": "<redacted>",
                    }),
                );
            }
            None => {
                obj.insert("secrets".into(), serde_json::json!({ "names": [] }));
            }
        }
    }
    v
}

async fn load_for_show(
    store: &StateStore,
    generation: Option<u64>,
) -> Result<StateDocument, StateError> {
    match generation {
        Some(g) => store.load_generation(g).await,
        None => match store.load_sealed().await? {
            Some((doc, _)) => Ok(doc),
            None => Err(StateError::NoState { url: store.url() }),
        },
    }
}

async fn show(
    keyed: Option<&StateStore>,
    store: &StateStore,
    generation: Option<u64>,
    output: OutputFormat,
) -> Result<(), Error> {
    // (authenticated?, what to say about it)
    let (doc, authenticity) = match keyed {
        Some(k) => match load_for_show(k, generation).await {
            Ok(doc) => (doc, (Some(true), "verified with the state key".to_string())),
            Err(e @ (StateError::Unauthenticated { .. } | StateError::Rollback { .. })) => (
                load_for_show(store, generation).await?,
                (Some(false), format!("NOT AUTHENTICATED: {e}")),
            ),
            Err(e) => return Err(e.into()),
        },
        None => (
            load_for_show(store, generation).await?,
            (None, "not checked (no state key given)".to_string()),
        ),
    };
    let lock = if generation.is_none() {
        store.lock_status().await.ok().flatten()
    } else {
        None
    };
    if output == OutputFormat::Json {
        print_json(&serde_json::json!({
            "url": store.url(),
            "lock": lock,
            "authenticated": authenticity.0,
            "authenticity": authenticity.1,
            "state": redacted_json(&doc),
        }))?;
        return Ok(());
    }
    let mut out = String::new();
    let cluster = if doc.cluster.is_empty() {
        "?"
    } else {
        &doc.cluster
    };
    out.push_str(&format!("cluster:     {cluster}\n"));
    out.push_str(&format!("store:       {}\n", store.url()));
    let updated = match (&doc.updated, &doc.updated_by) {
        (Some(t), Some(by)) => format!(" (saved {} by {by})", ts(t)),
        (Some(t), None) => format!(" (saved {})", ts(t)),
        _ => String::new(),
    };
    out.push_str(&format!("generation:  {}{updated}\n", doc.generation));
    out.push_str(&format!("authentic:   {}\n", authenticity.1));
    if generation.is_none() {
        match &lock {
            None => out.push_str("lock:        free\n"),
            Some(l) => {
                let state = if l.is_expired(Utc::now()) {
                    format!("lease EXPIRED at {}", ts(&l.expires))
                } else {
                    format!("lease until {}", ts(&l.expires))
                };
                out.push_str(&format!("lock:        held by {}; {state}\n", l.describe()));
            }
        }
    }
    out.push_str(&format!("machines:    {}\n", doc.machines.len()));
    for m in doc.machines.values() {
        out.push_str(&format!(
            "  {:<16} {:<14} {:<28} {}\n",
            m.name,
            m.provider_id.as_deref().unwrap_or("-"),
            m.addresses.join(","),
            m.roles.join(",")
        ));
    }
    out.push_str(&format!("host keys:   {} pinned\n", doc.host_keys.len()));
    for (host, key) in &doc.host_keys {
        let kind = key.split_whitespace().next().unwrap_or("?");
        out.push_str(&format!("  {host:<16} {kind}\n"));
    }
    let mut versions = Vec::new();
    if let Some(k) = &doc.versions.kubernetes {
        versions.push(format!("kubernetes {k}"));
    }
    for (c, v) in &doc.versions.components {
        versions.push(format!("{c} {v}"));
    }
    if let Some(k) = &doc.versions.kubeforge {
        versions.push(format!("written by kubeforge {k}"));
    }
    out.push_str(&format!(
        "versions:    {}\n",
        if versions.is_empty() {
            "-".to_string()
        } else {
            versions.join(", ")
        }
    ));
    out.push_str(&format!("addons:      {}\n", doc.addons.len()));
    for (name, a) in &doc.addons {
        out.push_str(&format!(
            "  {name:<16} {:<20} {} objects applied{}\n",
            a.version,
            a.objects.len(),
            a.applied
                .map(|t| format!(" (last {})", ts(&t)))
                .unwrap_or_else(|| " (interrupted: not finished yet)".into())
        ));
    }
    match doc.sealed_secrets() {
        None => out.push_str("secrets:     none\n"),
        Some(s) => {
            let how = match &s.recipient {
                Some(r) => format!("{} for {r}", s.scheme),
                None => s.scheme.clone(),
            };
            out.push_str(&format!(
                "secrets:     {} (encrypted with {how}; values not shown)\n",
                s.names.join(", ")
            ));
        }
    }
    out.push_str(&format!("journal:     {} entries\n", doc.journal.len()));
    let skip = doc.journal.len().saturating_sub(10);
    for e in doc.journal.iter().skip(skip) {
        out.push_str(&format!(
            "  {} {:<24} {:<8} {:<12} {}{}\n",
            ts(&e.started),
            e.phase,
            e.status.to_string(),
            e.host.as_deref().unwrap_or("-"),
            e.plan_digest,
            e.error
                .as_ref()
                .map(|x| format!(" error: {x}"))
                .unwrap_or_default()
        ));
    }
    print!("{out}");
    Ok(())
}

async fn history(store: &StateStore, output: OutputFormat) -> Result<(), Error> {
    let entries = store.history().await?;
    if output == OutputFormat::Json {
        print_json(&serde_json::json!({ "url": store.url(), "generations": entries }))?;
        return Ok(());
    }
    if entries.is_empty() {
        println!("no saved generations at {}", store.url());
        return Ok(());
    }
    println!(
        "{:<11} {:<21} {:<24} {:>8}",
        "GENERATION", "SAVED", "BY", "BYTES"
    );
    for e in entries {
        println!(
            "{:<11} {:<21} {:<24} {:>8}{}",
            e.generation,
            e.updated.as_ref().map(ts).unwrap_or_else(|| "-".into()),
            e.updated_by.as_deref().unwrap_or("-"),
            e.size,
            e.problem
                .map(|p| format!("  DAMAGED: {p}"))
                .unwrap_or_default()
        );
    }
    Ok(())
}

async fn snapshots(store: &StateStore, output: OutputFormat) -> Result<(), Error> {
    let list = store.snapshots().await?;
    if output == OutputFormat::Json {
        print_json(&serde_json::json!({ "url": store.url(), "snapshots": list }))?;
        return Ok(());
    }
    if list.is_empty() {
        println!("no snapshots at {}", store.url());
        return Ok(());
    }
    println!("{:<40} {:<21} {:>12}", "NAME", "STORED", "BYTES");
    for s in list {
        println!(
            "{:<40} {:<21} {:>12}",
            s.name,
            s.last_modified
                .as_ref()
                .map(ts)
                .unwrap_or_else(|| "-".into()),
            s.size
        );
    }
    Ok(())
}

async fn unlock(store: &StateStore, force: bool, output: OutputFormat) -> Result<(), Error> {
    let broken = store.unlock(force).await?;
    if output == OutputFormat::Json {
        print_json(&serde_json::json!({ "url": store.url(), "removed": broken }))?;
        return Ok(());
    }
    match broken {
        None => println!("no lock at {}", store.url()),
        Some(Unlocked {
            lock,
            holder_gone: Some(why),
            ..
        }) => println!(
            "removed the lock held by {}: its process is dead ({why})",
            lock.describe()
        ),
        Some(u) if u.was_live => println!(
            "broke a LIVE lock held by {} (lease until {}): that command may still be running; it will stop at its next lock refresh or fail at its next save",
            u.lock.describe(),
            ts(&u.lock.expires)
        ),
        Some(u) => println!(
            "removed the lock held by {} (lease expired at {})",
            u.lock.describe(),
            ts(&u.lock.expires)
        ),
    }
    Ok(())
}

fn write_private(path: &Path, bytes: &[u8]) -> Result<(), StateError> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let io = |e| StateError::Io {
        what: format!("cannot write {}", path.display()),
        source: e,
    };
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .map_err(io)?;
    // An existing file keeps its mode on open: tighten it before writing.
    f.set_permissions(std::fs::Permissions::from_mode(0o600))
        .map_err(io)?;
    f.write_all(bytes).map_err(io)?;
    f.sync_all().map_err(io)
}

async fn pull(
    store: &StateStore,
    out: Option<PathBuf>,
    generation: Option<u64>,
    cluster: Option<&str>,
    output: OutputFormat,
) -> Result<(), Error> {
    let (bytes, doc) = store.pull(generation).await?;
    if out.as_deref() == Some(Path::new("-")) {
        std::io::stdout()
            .write_all(&bytes)
            .map_err(|e| StateError::Io {
                what: "cannot write to stdout".into(),
                source: e,
            })?;
        return Ok(());
    }
    let name = cluster
        .map(str::to_string)
        .or_else(|| (!doc.cluster.is_empty()).then(|| doc.cluster.clone()))
        .unwrap_or_else(|| "kubeforge".into());
    let path = out.unwrap_or_else(|| PathBuf::from(format!("{name}.state.json")));
    write_private(&path, &bytes)?;
    if output == OutputFormat::Json {
        print_json(&serde_json::json!({
            "url": store.url(),
            "generation": doc.generation,
            "file": path,
        }))?;
    } else {
        println!(
            "wrote generation {} of {} to {} (mode 0600; secrets stay encrypted); push it back with `kubeforge state push {} --generation {}`",
            doc.generation,
            store.url(),
            path.display(),
            path.display(),
            doc.generation
        );
    }
    Ok(())
}

async fn push(
    store: &StateStore,
    file: &Path,
    generation: u64,
    replace_corrupted: bool,
    output: OutputFormat,
) -> Result<(), Error> {
    let bytes = std::fs::read(file).map_err(|e| StateError::Io {
        what: format!("cannot read {}", file.display()),
        source: e,
    })?;
    let lock = store
        .lock(&format!("kubeforge state push {}", file.display()))
        .await?;
    let pushed = if replace_corrupted {
        store.push_replacing_corrupted(&bytes, generation).await
    } else {
        store.push(&bytes, generation).await
    };
    lock.release().await?;
    let v = pushed?;
    if output == OutputFormat::Json {
        print_json(&serde_json::json!({
            "url": store.url(),
            "previous": generation,
            "generation": v.generation,
        }))?;
    } else if replace_corrupted {
        println!(
            "replaced the corrupted state at {} with {} (pulled at generation {generation}) as generation {}",
            store.url(),
            file.display(),
            v.generation
        );
    } else {
        println!(
            "pushed {} to {} as generation {} (was {generation})",
            file.display(),
            store.url(),
            v.generation
        );
    }
    Ok(())
}

async fn migrate(store: &StateStore, generation: u64, output: OutputFormat) -> Result<(), Error> {
    let lock = store
        .lock(&format!(
            "kubeforge state migrate --generation {generation}"
        ))
        .await?;
    let migrated = store.migrate(generation).await;
    lock.release().await?;
    let (doc, v) = migrated?;
    if output == OutputFormat::Json {
        print_json(&serde_json::json!({
            "url": store.url(),
            "previous": generation,
            "generation": v.generation,
            "lineage": doc.lineage,
        }))?;
    } else {
        println!(
            "adopted the unauthenticated generation {generation} of {} ({} machines, {} pinned host keys, secrets: {}) as authenticated generation {}; from now on a state that does not verify with this key is refused",
            store.url(),
            doc.machines.len(),
            doc.host_keys.len(),
            {
                let n = doc.secret_names();
                if n.is_empty() { "none".to_string() } else { n.join(", ") }
            },
            v.generation
        );
    }
    Ok(())
}

fn keygen(out: &Path, output: OutputFormat) -> Result<(), Error> {
    if out.exists() {
        return Err(StateError::Usage(format!(
            "{} exists; refusing to overwrite a key",
            out.display()
        ))
        .into());
    }
    let (keyring, secret) = Keyring::generate();
    let public = keyring.recipient().unwrap_or_default();
    let text = format!(
        "# kubeforge state key, created {}\n# public key: {public}\n{secret}\n",
        ts(&Utc::now())
    );
    write_private(out, text.as_bytes())?;
    if output == OutputFormat::Json {
        print_json(&serde_json::json!({ "file": out, "publicKey": public }))?;
    } else {
        println!(
            "wrote {} (mode 0600), public key {public}; use it with KUBEFORGE_STATE_KEY_FILE={} or spec.state.encryption.keyFile",
            out.display(),
            out.display()
        );
    }
    Ok(())
}

async fn lock_probe(
    store: &StateStore,
    opts: LockOptions,
    hold_until_file: Option<PathBuf>,
    hold_ms: u64,
) -> Result<(), Error> {
    // Listen for Ctrl-C before announcing the lock, so a signal right after the
    // announcement is handled (released) rather than killing the process.
    let mut interrupt = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())
        .map_err(|e| StateError::Io {
        what: "cannot listen for Ctrl-C".into(),
        source: e,
    })?;
    let guard = store.lock_with(opts).await?;
    println!("acquired lock {} at {}", guard.info().id, store.url());
    let _ = std::io::stdout().flush();
    let wait = async {
        let deadline = tokio::time::Instant::now() + Duration::from_millis(hold_ms);
        loop {
            if tokio::time::Instant::now() >= deadline {
                break;
            }
            if let Some(f) = &hold_until_file {
                if f.exists() {
                    break;
                }
            }
            if guard.check().is_err() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    let interrupted = tokio::select! {
        _ = wait => false,
        _ = interrupt.recv() => true,
    };
    let lost = guard.check();
    guard.release().await?;
    lost?;
    if interrupted {
        println!("interrupted; released the lock");
        return Err(StateError::Interrupted.into());
    }
    println!("released the lock");
    Ok(())
}

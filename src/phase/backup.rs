//! The etcd snapshot timer on the control-plane nodes (`spec.backup`): its script and
//! units, enabled (or, with `intervalMinutes: 0`, disabled). The snapshots it takes are
//! collected into the state store by `kubeforge backup`.

use super::{
    exec, host_plan, new_plan, restart_step, ApplyContext, Phase, PhaseError, PhasePlan,
    PlanContext, Step,
};
use crate::backup::{ShipConfig, NODE_BINARY, SHIP_CA, SHIP_CONFIG};
use crate::render::views::{SNAPSHOT_TIMER_DIR, SNAPSHOT_UNIT};
use crate::render::FileGroup;
use crate::spec::{LoadedCluster, ShipSpec};
use crate::transport::remote::HostError;
use crate::transport::{Transport, UploadSource, UploadTarget};

pub struct EtcdBackupTimer;

#[async_trait::async_trait]
impl Phase for EtcdBackupTimer {
    fn name(&self) -> &'static str {
        "etcd-backup"
    }
    fn description(&self) -> &'static str {
        "the etcd snapshot timer on the control-plane nodes (the leader takes one per interval)"
    }
    fn plan(&self, ctx: &PlanContext<'_>) -> PhasePlan {
        let mut p = new_plan(self);
        let b = &ctx.cluster.cluster.spec.backup;
        for h in &ctx.hosts {
            let files = ctx.files_for(&h.name, FileGroup::Backup);
            let step = if b.interval_minutes == 0 {
                Step::cmd(format!(
                    "systemctl disable --now {SNAPSHOT_UNIT}.timer 2>/dev/null; true  # spec.backup.intervalMinutes: 0"
                ))
                .unless_check(
                    "the timer is off",
                    format!("! systemctl is-enabled --quiet {SNAPSHOT_UNIT}.timer 2>/dev/null"),
                )
            } else {
                let mut s = restart_step(
                    "etcd-snapshot-timer",
                    &format!(
                        "systemctl daemon-reload && systemctl enable {SNAPSHOT_UNIT}.timer && systemctl restart {SNAPSHOT_UNIT}.timer"
                    ),
                    &files,
                    Some(&format!("{SNAPSHOT_UNIT}.timer")),
                );
                s.action = format!(
                    "{}  # every {} min, leader only, {} kept in {SNAPSHOT_TIMER_DIR}{}",
                    s.action,
                    b.interval_minutes,
                    b.keep,
                    match (&b.ship, &ctx.cluster.cluster.spec.state.url) {
                        (Some(_), Some(url)) => format!(", each shipped to {url} by the node"),
                        _ => String::new(),
                    }
                );
                s
            };
            let mut steps = vec![step];
            let shipping = b.ship.is_some() && b.interval_minutes > 0;
            if !shipping {
                // Shipping turned off (or never on): no S3 key stays on the node.
                steps.push(
                    Step::cmd(format!(
                        "rm -f {SHIP_CONFIG} {SHIP_CA} {NODE_BINARY}  # spec.backup.ship is not set"
                    ))
                    .unless_check(
                        "no snapshot-shipping key or binary on the node",
                        format!("! test -e {SHIP_CONFIG} && ! test -e {SHIP_CA} && ! test -e {NODE_BINARY}"),
                    ),
                );
            }
            p.hosts.push(host_plan(ctx, h, &[FileGroup::Backup], steps));
        }
        p
    }

    fn ask_ahead(&self, c: &LoadedCluster) -> Vec<(String, String)> {
        c.topology
            .control_planes()
            .into_iter()
            .map(|h| (h.name.clone(), crate::backup::listing_command()))
            .collect()
    }

    /// The timer on every control plane, then what it took so far into the state store
    /// (verified, encrypted) and retention applied. Collecting is best effort: a
    /// snapshot that cannot be collected now stays on its node for the next run.
    async fn apply(&self, ctx: &ApplyContext<'_>, plan: &PhasePlan) -> Result<(), PhaseError> {
        let shipping = match &ctx.cluster.cluster.spec.backup.ship {
            Some(ship) if ctx.cluster.cluster.spec.backup.interval_minutes > 0 => {
                Some(ship_setup(ctx, ship).map_err(|message| PhaseError::Gate {
                    phase: self.name().into(),
                    message,
                })?)
            }
            _ => None,
        };
        if let Some(setup) = &shipping {
            install_shipping(ctx, plan, setup).await?;
        }
        ctx.hosts(plan, &exec::NoSpecial).await?;
        let store = &ctx.state.store;
        let ahead = ctx.standing_facts().is_some();
        match crate::backup::collect(self.name(), ctx.rt, ctx.cluster, store, ctx.secrets, ahead)
            .await
        {
            Ok((got, problems)) => {
                for m in &got {
                    ctx.note(format!(
                        "collected etcd snapshot {} from {} (revision {}, {} bytes)",
                        m.name, m.source, m.revision, m.db_bytes
                    ));
                }
                for p in problems {
                    ctx.note(format!("etcd snapshot not collected: {p}"));
                }
            }
            Err(e) => ctx.note(format!("etcd snapshots not collected: {e}")),
        }
        let keep = ctx.cluster.cluster.spec.backup.keep as usize;
        match crate::backup::prune(store, keep).await {
            Ok(gone) if !gone.is_empty() => ctx.note(format!(
                "retention (keep {keep}): removed {}",
                gone.join(", ")
            )),
            Ok(_) => {}
            Err(e) => ctx.note(format!("etcd snapshot retention not applied: {e}")),
        }
        Ok(())
    }
}

/// What every shipping control plane gets, read before anything is changed.
struct ShipSetup {
    binary: std::path::PathBuf,
    /// The configuration without the host (set per node).
    config: ShipConfig,
    ca_bundle: Option<Vec<u8>>,
}

/// `spec.backup.ship`: the node's configuration (the S3 key from the variables the
/// cluster file names, the state's public key and the snapshot MAC key) and the
/// kubeforge binary the node runs.
fn ship_setup(ctx: &ApplyContext<'_>, ship: &ShipSpec) -> Result<ShipSetup, String> {
    let c = ctx.cluster;
    let spec = &c.cluster.spec;
    let store = &ctx.state.store;
    let recipient = store.snapshot_recipient().ok_or(
        "spec.backup.ship: the control planes encrypt snapshots to the state's public key, which only an age X25519 state key has (spec.state.encryption.keyFile / keyEnv, KUBEFORGE_STATE_KEY_FILE); a passphrase cannot be given to the nodes without giving them the whole state",
    )?;
    let mac = store
        .snapshot_mac_key(None)
        .map_err(|e| e.to_string())?
        .ok_or("spec.backup.ship: the state has no encryption key")?;
    let read = |key: &str, var: &str| {
        std::env::var(var)
            .map_err(|_| format!("spec.backup.ship.{key} names {var}, which is not set"))
    };
    let url = spec
        .state
        .url
        .clone()
        .ok_or("spec.backup.ship: the state has no s3:// url")?;
    let options = spec.state.options().map_err(|e| e.to_string())?;
    let binary = match &ship.binary {
        Some(p) => c.path(&p.to_string_lossy()),
        None if cfg!(target_os = "linux") => std::env::current_exe()
            .map_err(|e| format!("spec.backup.ship: cannot find this kubeforge's binary: {e}"))?,
        None => {
            return Err(format!(
                "spec.backup.ship: this kubeforge runs on {}; the nodes need a Linux build: set spec.backup.ship.binary",
                std::env::consts::OS
            ))
        }
    };
    if !binary.is_file() {
        return Err(format!(
            "spec.backup.ship.binary: {} is not a file",
            binary.display()
        ));
    }
    let ca_bundle = match &options.ca_bundle {
        Some(p) => Some(
            std::fs::read(c.path(&p.to_string_lossy()))
                .map_err(|e| format!("spec.state.caBundle: cannot read {}: {e}", p.display()))?,
        ),
        None => None,
    };
    Ok(ShipSetup {
        binary,
        ca_bundle: ca_bundle.clone(),
        config: ShipConfig {
            cluster: c.name().to_string(),
            host: String::new(),
            url,
            endpoint: ship.endpoint.clone().or(options.endpoint),
            region: options.region,
            path_style: options.path_style,
            allow_http: options.allow_http,
            ca_bundle: ca_bundle.map(|_| SHIP_CA.to_string()),
            access_key_id: read("accessKeyIdEnv", &ship.access_key_id_env)?,
            secret_access_key: read("secretAccessKeyEnv", &ship.secret_access_key_env)?,
            session_token: match &ship.session_token_env {
                Some(v) => Some(read("sessionTokenEnv", v)?),
                None => None,
            },
            recipient,
            mac_key: hex::encode(mac),
            kubernetes_version: spec.kubernetes_version.clone(),
            keep: spec.backup.keep,
        },
    })
}

/// Put the binary and the configuration (0600) on every control plane of the plan, and
/// check that the binary runs there (a build for another platform or C library fails
/// here, not at the first snapshot).
async fn install_shipping(
    ctx: &ApplyContext<'_>,
    plan: &PhasePlan,
    setup: &ShipSetup,
) -> Result<(), PhaseError> {
    let phase = "etcd-backup";
    for hp in &plan.hosts {
        let Some(h) = ctx.cluster.topology.host(&hp.host) else {
            continue;
        };
        let t = exec::session(ctx.rt, h)
            .await
            .map_err(|e| PhaseError::host(phase, e))?;
        let config = ShipConfig {
            host: h.name.clone(),
            ..setup.config.clone()
        };
        let json = serde_json::to_vec_pretty(&config).map_err(|e| PhaseError::Gate {
            phase: phase.into(),
            message: format!("cannot write the shipping configuration: {e}"),
        })?;
        let mut items = vec![
            (
                UploadSource::File(setup.binary.clone()),
                UploadTarget::new(NODE_BINARY, 0o755),
            ),
            (
                UploadSource::from(json),
                UploadTarget::new(SHIP_CONFIG, 0o600),
            ),
        ];
        if let Some(ca) = &setup.ca_bundle {
            items.push((
                UploadSource::from(ca.clone()),
                UploadTarget::new(SHIP_CA, 0o644),
            ));
        }
        let err = |e: crate::transport::TransportError| {
            PhaseError::host(
                phase,
                HostError::Transport {
                    host: h.name.clone(),
                    source: e,
                },
            )
        };
        let sent = t.upload_all(items).await.map_err(err)?;
        let n = sent.iter().filter(|o| o.sent || o.metadata_fixed).count();
        if let Ok(mut d) = ctx.done.lock() {
            d.files_sent += n;
        }
        let out = t
            .exec(&format!("{NODE_BINARY} --version"))
            .await
            .map_err(err)?;
        if !out.success() {
            return Err(PhaseError::Gate {
                phase: phase.into(),
                message: format!(
                    "{}: the kubeforge binary for shipping snapshots does not run there ({}): set spec.backup.ship.binary to a build for the nodes' platform",
                    h.name,
                    out.stderr.trim()
                ),
            });
        }
    }
    Ok(())
}

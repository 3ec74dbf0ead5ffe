//! `kubeforge bench fanout`: push a file and run small commands on N local machines
//! (docker provider) with kubeforge's transport, and the same work in the same run with
//! parallel `scp`/`ssh` processes and with Ansible, reported as ratios.
//!
//! Everything stays on this machine: the machines live on an `--internal` docker
//! network created for the run and removed afterwards (unless `--keep`).

use crate::cli::{BenchArgs, BenchCommand, FanoutArgs};
use crate::error::Error;
use crate::output::{print_json, OutputFormat};
use crate::provider::{DockerConfig, DockerProvider, MachineRole, MachineSpec, Provider};
use crate::transport::ssh::{encode_key, generate_ed25519_key};
use crate::transport::{
    fan_out, FanOutOptions, MemoryHostKeyStore, ProgressMode, SshAuth, SshConfig, SshPool,
    Transport, TransportError, UploadSource, UploadTarget,
};
use serde::Serialize;
use std::io::Write;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// One measured way of doing one piece of work.
#[derive(Debug, Clone, Serialize)]
pub struct Measurement {
    pub work: String,
    pub tool: String,
    pub seconds: f64,
    /// seconds / kubeforge's seconds for the same work.
    pub ratio_to_kubeforge: f64,
}

#[derive(Debug, Serialize)]
pub struct BenchReport {
    pub machines: usize,
    pub file_mib: u64,
    pub commands_per_host: usize,
    pub boot_seconds: f64,
    pub measurements: Vec<Measurement>,
    pub notes: Vec<String>,
}

pub(super) fn usage(msg: impl Into<String>) -> Error {
    Error::Usage(msg.into())
}

pub async fn run(args: BenchArgs, output: OutputFormat) -> Result<(), Error> {
    match args.command {
        BenchCommand::Fanout(a) => {
            let report = fanout(&a).await?;
            match output {
                OutputFormat::Json => print_json(&report)?,
                OutputFormat::Text => print_text(&report),
            }
            Ok(())
        }
        BenchCommand::Plan(a) => {
            let report = super::bench_plan::run(&a)?;
            match output {
                OutputFormat::Json => print_json(&report)?,
                OutputFormat::Text => super::bench_plan::print_text(&report),
            }
            Ok(())
        }
        BenchCommand::Bootstrap(a) => {
            let report = super::bench_bootstrap::run(&a).await?;
            match output {
                OutputFormat::Json => print_json(&report)?,
                OutputFormat::Text => super::bench_bootstrap::print_text(&report),
            }
            Ok(())
        }
        BenchCommand::Converge(a) => {
            let report = super::bench_converge::run(&a).await?;
            match output {
                OutputFormat::Json => print_json(&report)?,
                OutputFormat::Text => super::bench_converge::print_text(&report),
            }
            Ok(())
        }
    }
}

fn print_text(r: &BenchReport) {
    println!(
        "fan-out benchmark: {} machines, {} MiB file, {} commands per host (machines up in {:.1} s)",
        r.machines, r.file_mib, r.commands_per_host, r.boot_seconds
    );
    println!(
        "{:<34} {:<40} {:>9} {:>12}",
        "work", "tool", "seconds", "x kubeforge"
    );
    for m in &r.measurements {
        println!(
            "{:<34} {:<40} {:>9.2} {:>12.2}",
            m.work, m.tool, m.seconds, m.ratio_to_kubeforge
        );
    }
    for n in &r.notes {
        println!("note: {n}");
    }
}

fn commands(n: usize) -> Vec<String> {
    (0..n)
        .map(|i| format!("test -d /etc && echo {i} >/dev/null && cat /etc/hostname"))
        .collect()
}

/// Machines for a benchmark: sshd-only systemd containers on an `--internal` docker
/// network, a key of their own, a scratch directory.
pub(super) struct BenchMachines {
    pub provider: DockerProvider,
    pub dir: PathBuf,
    pub key: Arc<russh::keys::PrivateKey>,
    pub key_path: PathBuf,
    /// Their addresses, in order.
    pub hosts: Vec<String>,
    pub boot: Duration,
}

impl BenchMachines {
    /// Make `n` machines `<cluster>-worker-N` at `.10` up of `subnet` and wait for sshd.
    pub(super) async fn start(
        cluster: &str,
        subnet: ipnet::IpNet,
        image: Option<String>,
        n: usize,
    ) -> Result<BenchMachines, Error> {
        let dir = tempdir()?;
        let key = generate_ed25519_key();
        let (private, public) =
            encode_key(&key).map_err(|e| usage(format!("cannot encode the bench key: {e}")))?;
        let key_path = dir.join("id_ed25519");
        write_private(&key_path, &private)?;
        let image = image.unwrap_or_else(crate::provider::image::node_image_tag);
        let provider = DockerProvider::connect(DockerConfig {
            cluster: cluster.into(),
            network: format!("{cluster}-net"),
            subnet,
            image,
            ssh_public_key: public,
        })
        .await?;
        provider.destroy().await?;
        let base = match subnet.network() {
            IpAddr::V4(v4) => u32::from(v4),
            IpAddr::V6(_) => return Err(usage("--subnet must be IPv4")),
        };
        let specs: Vec<MachineSpec> = (0..n)
            .map(|i| MachineSpec {
                name: format!("{cluster}-worker-{}", i + 1),
                role: MachineRole::Worker,
                ip: IpAddr::V4((base + 10 + i as u32).into()),
                extra_disks: vec![],
            })
            .collect();
        let t = Instant::now();
        let mut m = BenchMachines {
            provider,
            dir,
            key: Arc::new(key),
            key_path,
            hosts: specs.iter().map(|s| s.ip.to_string()).collect(),
            boot: Duration::ZERO,
        };
        let up = async {
            let machines = m.provider.ensure(&specs).await?;
            for machine in &machines {
                if let Some(ip) = machine.ip {
                    m.provider
                        .wait_for_ssh(ip, 22, Duration::from_secs(120))
                        .await
                        .map_err(|e| {
                            usage(format!("sshd on {} did not come up: {e}", machine.name))
                        })?;
                }
            }
            Ok::<_, Error>(())
        }
        .await;
        if let Err(e) = up {
            m.stop(false).await;
            return Err(e);
        }
        m.boot = t.elapsed();
        Ok(m)
    }

    /// Remove the machines (unless `keep`) and the scratch directory.
    pub(super) async fn stop(&self, keep: bool) {
        if !keep {
            if let Err(e) = self.provider.destroy().await {
                eprintln!("warning: removing the benchmark machines: {e}");
            }
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

async fn fanout(a: &FanoutArgs) -> Result<BenchReport, Error> {
    if a.machines == 0 || a.machines > 50 {
        return Err(usage("--machines must be between 1 and 50"));
    }
    let m = BenchMachines::start("kfbench", a.subnet, a.image.clone(), a.machines).await?;
    let result = measure(a, &m.dir, &m.key_path, m.key.clone(), &m.hosts, m.boot).await;
    m.stop(a.keep).await;
    result
}

pub(super) fn tempdir() -> Result<PathBuf, Error> {
    let dir = std::env::temp_dir().join(format!("kubeforge-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(|source| Error::Write {
        path: dir.clone(),
        source,
    })?;
    Ok(dir)
}

pub(super) fn write_private(path: &Path, text: &str) -> Result<(), Error> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .map_err(|source| Error::Write {
            path: path.to_path_buf(),
            source,
        })?;
    f.write_all(text.as_bytes()).map_err(|source| Error::Write {
        path: path.to_path_buf(),
        source,
    })
}

pub(super) fn write_file(path: &Path, size: u64) -> Result<(), Error> {
    let werr = |source| Error::Write {
        path: path.to_path_buf(),
        source,
    };
    let mut f = std::io::BufWriter::new(std::fs::File::create(path).map_err(werr)?);
    let mut x: u64 = 0x2545_F491_4F6C_DD1D;
    let mut buf = vec![0u8; 1 << 20];
    let mut left = size;
    while left > 0 {
        for chunk in buf.chunks_mut(8) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let n = chunk.len();
            chunk.copy_from_slice(&x.to_le_bytes()[..n]);
        }
        let n = left.min(buf.len() as u64) as usize;
        f.write_all(&buf[..n]).map_err(werr)?;
        left -= n as u64;
    }
    f.flush().map_err(werr)
}

async fn measure(
    a: &FanoutArgs,
    dir: &Path,
    key_path: &Path,
    key: Arc<russh::keys::PrivateKey>,
    hosts: &[String],
    boot: Duration,
) -> Result<BenchReport, Error> {
    let file = dir.join("payload.bin");
    write_file(&file, a.file_mib * 1024 * 1024)?;
    let cmds = commands(a.commands);
    let mut notes = Vec::new();
    let mut rows: Vec<(String, String, f64)> = Vec::new();

    // --- kubeforge -------------------------------------------------------------------
    let store = Arc::new(MemoryHostKeyStore::new());
    let mut cfg = SshConfig::new("root", SshAuth::Key(key));
    cfg.retry.window = Duration::from_secs(30);
    let pool = Arc::new(SshPool::new(cfg, store.clone()));
    let opts = FanOutOptions {
        concurrency: a.concurrency,
        progress: ProgressMode::Hidden,
        label: "bench".into(),
        cancel_on_ctrl_c: true,
    };
    let t = Instant::now();
    check(
        fan_out(hosts, &opts, |h| {
            let pool = pool.clone();
            async move { pool.session(&h).await.map(|_| ()) }
        })
        .await,
    )?;
    rows.push((
        "connect (one per host)".into(),
        "kubeforge".into(),
        t.elapsed().as_secs_f64(),
    ));

    let target = UploadTarget::new("/var/tmp/bench-kubeforge.bin", 0o644);
    let push = |target: UploadTarget| {
        let pool = pool.clone();
        let file = file.clone();
        let opts = opts.clone();
        async move {
            let t = Instant::now();
            let results = fan_out(hosts, &opts, |h| {
                let pool = pool.clone();
                let file = file.clone();
                let target = target.clone();
                async move {
                    let s = pool.session(&h).await?;
                    s.upload(UploadSource::File(file), &target).await
                }
            })
            .await;
            let took = t.elapsed().as_secs_f64();
            let sent = results
                .iter()
                .filter(|r| matches!(&r.result, Ok(o) if o.sent))
                .count();
            check(results).map(|_| (took, sent))
        }
    };
    let (took, sent) = push(target.clone()).await?;
    if sent != hosts.len() {
        notes.push(format!(
            "kubeforge sent the file to {sent} of {} hosts",
            hosts.len()
        ));
    }
    rows.push((format!("push {} MiB", a.file_mib), "kubeforge".into(), took));
    let (took, sent) = push(target).await?;
    if sent != 0 {
        notes.push(format!(
            "kubeforge re-sent an unchanged file to {sent} hosts"
        ));
    }
    rows.push((
        format!("push {} MiB again (unchanged)", a.file_mib),
        "kubeforge".into(),
        took,
    ));

    let t = Instant::now();
    check(
        fan_out(hosts, &opts, |h| {
            let pool = pool.clone();
            let cmds = cmds.clone();
            async move {
                let s = pool.session(&h).await?;
                for c in &cmds {
                    s.exec_checked(c).await?;
                }
                Ok::<_, TransportError>(())
            }
        })
        .await,
    )?;
    rows.push((
        format!("{} commands per host", a.commands),
        "kubeforge".into(),
        t.elapsed().as_secs_f64(),
    ));
    pool.close_all().await;

    // known_hosts from the keys kubeforge pinned: the peers verify host keys too.
    let known_hosts = dir.join("known_hosts");
    let lines: String = store
        .snapshot()
        .iter()
        .map(|(h, k)| format!("{h} {k}\n"))
        .collect();
    std::fs::write(&known_hosts, lines).map_err(|source| Error::Write {
        path: known_hosts.clone(),
        source,
    })?;
    let ssh_opts = vec![
        "-i".to_string(),
        key_path.display().to_string(),
        "-o".into(),
        format!("UserKnownHostsFile={}", known_hosts.display()),
        "-o".into(),
        "StrictHostKeyChecking=yes".into(),
        "-o".into(),
        "BatchMode=yes".into(),
        "-o".into(),
        "ConnectTimeout=10".into(),
    ];

    // --- parallel scp / ssh processes ------------------------------------------------
    let t = Instant::now();
    run_parallel(hosts, a.concurrency, |h| {
        let mut c = tokio::process::Command::new("scp");
        c.args(&ssh_opts)
            .arg("-q")
            .arg(&file)
            .arg(format!("root@{h}:/var/tmp/bench-scp.bin"));
        vec![c]
    })
    .await?;
    rows.push((
        format!("push {} MiB", a.file_mib),
        "parallel scp".into(),
        t.elapsed().as_secs_f64(),
    ));

    let t = Instant::now();
    run_parallel(hosts, a.concurrency, |h| {
        cmds.iter()
            .map(|cmd| {
                let mut c = tokio::process::Command::new("ssh");
                c.args(&ssh_opts).arg(format!("root@{h}")).arg(cmd);
                c
            })
            .collect()
    })
    .await?;
    rows.push((
        format!("{} commands per host", a.commands),
        "parallel ssh (new connection each)".into(),
        t.elapsed().as_secs_f64(),
    ));

    let control = dir.join("cm-%h");
    let mut mux_opts = ssh_opts.clone();
    mux_opts.extend([
        "-o".into(),
        "ControlMaster=auto".into(),
        "-o".into(),
        format!("ControlPath={}", control.display()),
        "-o".into(),
        "ControlPersist=60".into(),
    ]);
    let t = Instant::now();
    run_parallel(hosts, a.concurrency, |h| {
        cmds.iter()
            .map(|cmd| {
                let mut c = tokio::process::Command::new("ssh");
                c.args(&mux_opts).arg(format!("root@{h}")).arg(cmd);
                c
            })
            .collect()
    })
    .await?;
    rows.push((
        format!("{} commands per host", a.commands),
        "parallel ssh (ControlMaster)".into(),
        t.elapsed().as_secs_f64(),
    ));
    for h in hosts {
        let _ = tokio::process::Command::new("ssh")
            .args(&mux_opts)
            .args(["-O", "exit"])
            .arg(format!("root@{h}"))
            .stderr(Stdio::null())
            .status()
            .await;
    }

    // --- Ansible ----------------------------------------------------------------------
    if a.no_ansible {
        notes.push("Ansible skipped (--no-ansible)".into());
    } else if which("ansible-playbook").is_none() {
        notes.push("Ansible skipped: ansible-playbook not found (pip install ansible-core)".into());
    } else {
        let inv = dir.join("inventory.ini");
        let mut text = String::from("[bench]\n");
        for h in hosts {
            text.push_str(&format!("{h}\n"));
        }
        text.push_str(&format!(
            "[bench:vars]\nansible_user=root\nansible_ssh_private_key_file={}\nansible_ssh_common_args='-o UserKnownHostsFile={} -o StrictHostKeyChecking=yes'\nansible_python_interpreter=/usr/bin/python3\n",
            key_path.display(),
            known_hosts.display()
        ));
        std::fs::write(&inv, text).map_err(|source| Error::Write {
            path: inv.clone(),
            source,
        })?;
        let copy = dir.join("copy.yaml");
        let copy_text = format!(
            "- hosts: bench\n  gather_facts: false\n  tasks:\n    - copy:\n        src: {}\n        dest: /var/tmp/bench-ansible.bin\n        mode: '0644'\n",
            file.display()
        );
        std::fs::write(&copy, copy_text).map_err(|source| Error::Write {
            path: copy.clone(),
            source,
        })?;
        let mut cmd_text = String::from("- hosts: bench\n  gather_facts: false\n  tasks:\n");
        for c in &cmds {
            cmd_text.push_str(&format!("    - shell: {}\n", serde_json::to_string(c)?));
        }
        let cmdbook = dir.join("commands.yaml");
        std::fs::write(&cmdbook, cmd_text).map_err(|source| Error::Write {
            path: cmdbook.clone(),
            source,
        })?;
        let play = |book: PathBuf| {
            let inv = inv.clone();
            let forks = a.concurrency.to_string();
            async move {
                let t = Instant::now();
                let out = tokio::process::Command::new("ansible-playbook")
                    .arg("-i")
                    .arg(&inv)
                    .arg("-f")
                    .arg(&forks)
                    .arg(&book)
                    .env("ANSIBLE_HOST_KEY_CHECKING", "True")
                    .env("ANSIBLE_PIPELINING", "False")
                    .env("ANSIBLE_NOCOLOR", "1")
                    .output()
                    .await
                    .map_err(|e| usage(format!("cannot run ansible-playbook: {e}")))?;
                if !out.status.success() {
                    return Err(usage(format!(
                        "ansible-playbook {} failed: {}",
                        book.display(),
                        String::from_utf8_lossy(&out.stdout)
                            .lines()
                            .rev()
                            .take(15)
                            .collect::<Vec<_>>()
                            .join("\n")
                    )));
                }
                Ok::<_, Error>(t.elapsed().as_secs_f64())
            }
        };
        let took = play(copy.clone()).await?;
        rows.push((
            format!("push {} MiB", a.file_mib),
            "ansible copy".into(),
            took,
        ));
        let took = play(copy).await?;
        rows.push((
            format!("push {} MiB again (unchanged)", a.file_mib),
            "ansible copy".into(),
            took,
        ));
        let took = play(cmdbook).await?;
        rows.push((
            format!("{} commands per host", a.commands),
            "ansible shell tasks".into(),
            took,
        ));
    }

    let measurements = measurements(&rows);
    Ok(BenchReport {
        machines: hosts.len(),
        file_mib: a.file_mib,
        commands_per_host: a.commands,
        boot_seconds: boot.as_secs_f64(),
        measurements,
        notes,
    })
}

/// Each row `(work, tool, seconds)` with its ratio to kubeforge's row for the same work.
pub(super) fn measurements(rows: &[(String, String, f64)]) -> Vec<Measurement> {
    let base = |work: &str| {
        rows.iter()
            .find(|(w, tool, _)| w == work && tool == "kubeforge")
            .map(|r| r.2)
    };
    rows.iter()
        .map(|(work, tool, secs)| Measurement {
            work: work.clone(),
            tool: tool.clone(),
            seconds: *secs,
            ratio_to_kubeforge: base(work).map(|b| secs / b.max(1e-9)).unwrap_or(f64::NAN),
        })
        .collect()
}

pub(super) fn check<T>(
    results: Vec<crate::transport::HostResult<T, TransportError>>,
) -> Result<Vec<T>, Error> {
    let mut out = Vec::new();
    for r in results {
        out.push(r.result?);
    }
    Ok(out)
}

pub(super) fn which(cmd: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .map(|d| Path::new(d).join(cmd))
        .find(|p| p.is_file())
}

/// Run each host's commands one after the other, hosts in parallel (bounded).
pub(super) async fn run_parallel<F>(
    hosts: &[String],
    concurrency: usize,
    make: F,
) -> Result<(), Error>
where
    F: Fn(&str) -> Vec<tokio::process::Command>,
{
    use futures::stream::{self, StreamExt};
    let jobs: Vec<(String, Vec<tokio::process::Command>)> =
        hosts.iter().map(|h| (h.clone(), make(h))).collect();
    let results: Vec<Result<(), Error>> = stream::iter(jobs)
        .map(|(h, cmds)| async move {
            for mut c in cmds {
                let out = c
                    .stdin(Stdio::null())
                    .output()
                    .await
                    .map_err(|e| usage(format!("cannot start a peer process: {e}")))?;
                if !out.status.success() {
                    return Err(usage(format!(
                        "peer command failed on {h}: {}",
                        String::from_utf8_lossy(&out.stderr).trim()
                    )));
                }
            }
            Ok(())
        })
        .buffer_unordered(concurrency.max(1))
        .collect()
        .await;
    results.into_iter().collect()
}

//! Command-line types. Each command converts its arguments and calls one `ops` function.

use crate::output::OutputFormat;
use clap::{Args, Parser, Subcommand};
use std::path::PathBuf;

#[derive(Debug, Parser)]
#[command(
    name = "kubeforge",
    version,
    about = "Build and operate highly-available Kubernetes clusters",
    propagate_version = true,
    after_help = "Examples:\n  kubeforge validate -f cluster.yaml && kubeforge plan -f cluster.yaml\n  kubeforge apply -f cluster.yaml --yes && kubeforge kubeconfig -f cluster.yaml --merge\n\nExit codes: 1 internal, 2 bad input, 3 lock held, 4 SSH, 5 remote command, 6 provider, 7 state store."
)]
pub struct Cli {
    /// More log output (-v info, -vv debug, -vvv trace). RUST_LOG overrides.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
    /// Output format for results.
    #[arg(long, short = 'o', global = true, value_enum, default_value_t = OutputFormat::Text)]
    pub output: OutputFormat,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Validate a cluster file (and its inventory) and report every problem found.
    #[command(
        after_help = "Examples:\n  kubeforge validate -f cluster.yaml\n  kubeforge validate -f examples/baremetal.yaml -o json"
    )]
    Validate(SpecArgs),
    /// Show what a bootstrap would do, without touching anything (works offline).
    #[command(
        after_help = "Examples:\n  kubeforge plan -f cluster.yaml\n  kubeforge plan -f cluster.yaml --offline --show-content\n  kubeforge plan -f cluster.yaml --detailed-exitcode   # 0 no changes, 2 changes pending"
    )]
    Plan(PlanArgs),
    /// Write every rendered file to DIR/<host>/<remote path>.
    #[command(
        after_help = "Examples:\n  kubeforge render -f examples/baremetal.yaml --out /tmp/rendered"
    )]
    Render(RenderArgs),
    /// Bootstrap or converge the cluster: plan, confirm, then apply phase by phase.
    #[command(
        after_help = "Examples:\n  kubeforge apply -f cluster.yaml --yes\n  kubeforge apply -f examples/aws.yaml --phases machines"
    )]
    Apply(ApplyArgs),
    /// Bring lost control-plane and worker machines back (etcd quorum intact): re-create,
    /// remove stale etcd members and Nodes, join again; plan first, confirm (--yes skips).
    #[command(
        after_help = "Examples:\n  kubeforge recover -f cluster.yaml\n  kubeforge recover -f cluster.yaml --yes --accept-new-host-key 10.10.0.12\n  kubeforge recover -f cluster.yaml --watch --yes --interval 1m -o json"
    )]
    Recover(RecoverArgs),
    /// Rolling upgrade to the cluster file's kubernetesVersion (or --to): etcd snapshot
    /// first, control-plane nodes one at a time out of the load balancers and gated, then
    /// the workers; plan first, confirm (--yes skips). A killed run resumes.
    #[command(
        after_help = "Examples:\n  kubeforge upgrade -f cluster.yaml --to v1.20.3 --yes\n  kubeforge upgrade -f cluster.yaml --max-unavailable 2 --drain-timeout 10m"
    )]
    Upgrade(UpgradeArgs),
    /// Take an etcd snapshot now (verified, encrypted into the state store), collect the
    /// control-plane timer's snapshots, list what is stored.
    #[command(
        after_help = "Examples:\n  kubeforge backup -f cluster.yaml\n  kubeforge backup list -f cluster.yaml -o json\n  kubeforge backup collect -f cluster.yaml"
    )]
    Backup(BackupArgs),
    /// How the cluster is: hosts, nodes, etcd members (health, leader, size), every
    /// apiserver and the endpoint, the VIP holder, certificate expiry, the newest etcd
    /// snapshot. Exit 0 healthy, 8 degraded.
    #[command(
        after_help = "Examples:\n  kubeforge status -f cluster.yaml\n  kubeforge status -f cluster.yaml -o json\n  kubeforge status -f cluster.yaml --wait --timeout 10m   # until healthy (CI gates)"
    )]
    Status(StatusArgs),
    /// Control-plane certificates: when each expires; renew them with the API up.
    #[command(
        after_help = "Examples:\n  kubeforge certs check -f cluster.yaml\n  kubeforge certs renew -f cluster.yaml --yes"
    )]
    Certs(CertsArgs),
    /// Rebuild etcd from a stored snapshot after quorum is lost: plan first (which
    /// snapshot, its age, what is lost), confirm (--yes skips). A killed run resumes.
    #[command(
        after_help = "Examples:\n  kubeforge restore -f cluster.yaml\n  kubeforge restore -f cluster.yaml --snapshot backup-20261129T071500Z --yes"
    )]
    Restore(RestoreArgs),
    /// Plan, apply or check the cluster's addons (MetalLB, ingress, Rook-Ceph) on their own.
    #[command(
        after_help = "Examples:\n  kubeforge addons plan -f cluster.yaml\n  kubeforge addons apply -f cluster.yaml --yes --wait"
    )]
    Addons(AddonsArgs),
    /// Delete every machine and cloud resource of the cluster (asks first; --yes skips).
    #[command(
        after_help = "Examples:\n  kubeforge destroy -f examples/aws.yaml\n  kubeforge destroy -f cluster.yaml --yes"
    )]
    Destroy(DestroyArgs),
    /// Take the cluster off its hosts and keep the hosts (bare metal's counterpart of
    /// destroy): kubeadm reset, etcd and kubelet data, pod network, kubeforge's files;
    /// plan first, confirm (--yes skips).
    #[command(
        after_help = "Examples:\n  kubeforge reset -f cluster.yaml\n  kubeforge reset -f cluster.yaml --yes && kubeforge apply -f cluster.yaml --yes"
    )]
    Reset(ResetArgs),
    /// Print the admin kubeconfig kept (encrypted) in the state, write it to a file, or
    /// merge it into your kubeconfig.
    #[command(
        after_help = "Examples:\n  kubeforge kubeconfig -f cluster.yaml --merge && kubectl config use-context <cluster>\n  kubeforge kubeconfig -f cluster.yaml --out admin.conf --server https://api.example.com:6443"
    )]
    Kubeconfig(KubeconfigArgs),
    /// Serve the cluster's API on a local port through SSH to the control-plane nodes
    /// (when the VIP cannot be reached from here); runs until Ctrl-C.
    #[command(
        after_help = "Examples:\n  kubeforge proxy -f cluster.yaml --kubeconfig-out proxy.conf   # then, in another shell: KUBECONFIG=proxy.conf kubectl get nodes\n  kubeforge proxy -f cluster.yaml --port 16443 --kubeconfig-out proxy.conf --force"
    )]
    Proxy(ProxyArgs),
    /// What a Kubernetes version needs (binaries, images, host packages) and fetching it.
    #[command(
        after_help = "Examples:\n  kubeforge artifacts list --version v1.20.2\n  kubeforge artifacts fetch -f cluster.yaml"
    )]
    Artifacts(ArtifactsArgs),
    /// Inspect and manage the remote state: show, history, unlock, pull, push.
    #[command(
        after_help = "Examples:\n  kubeforge state show -f cluster.yaml\n  kubeforge state history --state-url s3://bucket/prd --endpoint https://minio:9000 --path-style"
    )]
    State(StateArgs),
    /// Build or inspect the local node image used by the docker provider.
    #[command(after_help = "Examples:\n  kubeforge image build\n  kubeforge image tag")]
    Image(ImageArgs),
    /// Measure fan-out performance against peers (parallel ssh/scp, Ansible).
    #[command(after_help = "Examples:\n  kubeforge bench fanout --machines 10 --file-mib 100")]
    Bench(BenchArgs),
    /// What kubeforge runs on the cluster's own nodes (installed there by `apply`).
    #[command(hide = true, subcommand)]
    Node(NodeCommand),
    /// Print a shell completion script (bash, zsh, fish, powershell, elvish).
    #[command(
        after_help = "Examples:\n  kubeforge completion bash > /etc/bash_completion.d/kubeforge\n  kubeforge completion zsh > \"${fpath[1]}/_kubeforge\""
    )]
    Completion(CompletionArgs),
    /// Write the man pages of kubeforge and every subcommand (roff); without --out,
    /// print kubeforge(1) on stdout.
    #[command(
        after_help = "Examples:\n  kubeforge man --out /usr/local/share/man/man1 && man kubeforge-apply\n  kubeforge man | man -l -"
    )]
    Man(ManArgs),
    /// Print the JSON Schema of the cluster file (for editors and CI; unknown fields are
    /// refused, as kubeforge refuses them).
    #[command(
        after_help = "Examples:\n  kubeforge schema > cluster.schema.json\n  # first line of cluster.yaml, for yaml-language-server:
  # yaml-language-server: $schema=cluster.schema.json"
    )]
    Schema,
    /// The hosts as an Ansible dynamic inventory (JSON, the inventory-script contract;
    /// Kubespray's group names). Reads the cluster file and, for providers that make
    /// their machines, the state's machine records; no lock, no SSH.
    #[command(
        after_help = "Examples:\n  kubeforge inventory -f cluster.yaml --list\n  ansible-inventory -i ./inventory.sh --graph   # inventory.sh: exec kubeforge inventory -f cluster.yaml \"$@\""
    )]
    Inventory(InventoryArgs),
    /// The clusters whose states are kept under one store prefix, with generation, last
    /// change, last writer and lock holder (read-only; no state key needed).
    #[command(
        after_help = "Examples:\n  kubeforge clusters --state-url file://.kubeforge\n  kubeforge clusters --state-url s3://kubeforge-state --endpoint https://minio:9000 --path-style -o json"
    )]
    Clusters(ClustersArgs),
    /// Keep SSH connections open between runs (started by the runs themselves, reads
    /// its configuration on stdin; see `spec.ssh.persistSeconds`).
    #[command(hide = true)]
    SshMux {
        /// The control socket to serve.
        #[arg(long)]
        socket: PathBuf,
    },
}

#[derive(Debug, Args)]
pub struct ClustersArgs {
    /// The prefix holding the clusters' stores (file://DIR, s3://bucket/prefix, gs://,
    /// az://); every prefix below it with a state or a lock is a cluster.
    #[arg(long, value_name = "URL")]
    pub state_url: String,
    /// S3 endpoint (MinIO, any S3-compatible store).
    #[arg(long, value_name = "URL")]
    pub endpoint: Option<String>,
    #[arg(long)]
    pub region: Option<String>,
    /// Path-style S3 requests (needed by MinIO and most emulators).
    #[arg(long)]
    pub path_style: bool,
    /// Allow a plain http:// endpoint.
    #[arg(long)]
    pub allow_http: bool,
}

#[derive(Debug, Args)]
pub struct KubeconfigArgs {
    #[command(flatten)]
    pub spec: SpecArgs,
    /// Write it to FILE (mode 0600) instead of printing it; an existing file is refused
    /// unless --force.
    #[arg(long, value_name = "FILE", conflicts_with = "merge")]
    pub out: Option<PathBuf>,
    /// Replace an existing --out file.
    #[arg(long, requires = "out")]
    pub force: bool,
    /// Merge it into $KUBECONFIG's first file or ~/.kube/config (created 0600 when
    /// missing): its cluster, user and context are named after the cluster (or
    /// --context) and replace entries of that name; all other entries are kept.
    #[arg(long)]
    pub merge: bool,
    /// Name of the cluster, user and context (default with --merge: the cluster's name).
    #[arg(long, value_name = "NAME")]
    pub context: Option<String>,
    /// API server URL to use instead of the control-plane endpoint recorded (e.g. a DNS
    /// name listed in certSans).
    #[arg(long, value_name = "URL")]
    pub server: Option<String>,
}

#[derive(Debug, Args)]
pub struct ResetArgs {
    #[command(flatten)]
    pub spec: SpecArgs,
    /// Reset without asking for confirmation.
    #[arg(long, short = 'y')]
    pub yes: bool,
    /// Hosts worked on at once.
    #[arg(long, default_value_t = 10)]
    pub concurrency: usize,
    /// Re-pin the SSH host key of this host (address) on purpose.
    #[arg(long = "accept-new-host-key", value_name = "HOST")]
    pub accept_new_host_key: Vec<String>,
}

#[derive(Debug, Args)]
pub struct ProxyArgs {
    #[command(flatten)]
    pub spec: SpecArgs,
    /// Local port to listen on (0: any free port, printed).
    #[arg(long, default_value_t = 16443)]
    pub port: u16,
    /// Local address to listen on.
    #[arg(long, default_value = "127.0.0.1")]
    pub address: std::net::IpAddr,
    /// Listen on an address other than loopback (anyone who reaches it reaches the API;
    /// TLS and the cluster's authentication still apply).
    #[arg(long)]
    pub allow_non_loopback: bool,
    /// Write a kubeconfig (mode 0600) that uses the proxy: the admin credentials, the
    /// local URL, and the certificate checked for the control-plane endpoint's name.
    #[arg(long, value_name = "FILE")]
    pub kubeconfig_out: Option<PathBuf>,
    /// Replace an existing --kubeconfig-out file.
    #[arg(long, requires = "kubeconfig_out")]
    pub force: bool,
}

#[derive(Debug, Args)]
pub struct InventoryArgs {
    #[command(flatten)]
    pub spec: SpecArgs,
    /// Every group and host with `_meta.hostvars` (the default).
    #[arg(long, conflicts_with = "host")]
    pub list: bool,
    /// One host's variables.
    #[arg(long, value_name = "HOST")]
    pub host: Option<String>,
}

#[derive(Debug, Args)]
pub struct CompletionArgs {
    /// The shell the script is for.
    #[arg(value_enum)]
    pub shell: clap_complete::Shell,
}

#[derive(Debug, Args)]
pub struct ManArgs {
    /// Directory to write kubeforge.1 and kubeforge-<command>.1 into (created if missing).
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct SpecArgs {
    /// The cluster file.
    #[arg(short = 'f', long = "file", default_value = "cluster.yaml")]
    pub file: PathBuf,
}

#[derive(Debug, Args)]
pub struct PlanArgs {
    #[command(flatten)]
    pub spec: SpecArgs,
    /// Also print the (redacted) content of every file (offline plans).
    #[arg(long)]
    pub show_content: bool,
    /// Plan for fresh hosts without reading the state or contacting any host. Without
    /// it, a cluster with machines in its state is planned against the hosts: only
    /// what would change is shown, files as diffs.
    #[arg(long)]
    pub offline: bool,
    /// A playbook file replacing the embedded bootstrap playbook.
    #[arg(long)]
    pub playbook: Option<PathBuf>,
    /// Exit 0 when there are no changes, 2 when changes are pending (terraform's
    /// convention); errors keep their exit codes, except bad input, which exits 1 so
    /// that 2 only ever means "changes".
    #[arg(long)]
    pub detailed_exitcode: bool,
}

#[derive(Debug, Args)]
pub struct RenderArgs {
    #[command(flatten)]
    pub spec: SpecArgs,
    /// Output directory (created if missing).
    #[arg(long = "out")]
    pub out: PathBuf,
}

#[derive(Debug, Args)]
pub struct ImageArgs {
    #[command(subcommand)]
    pub command: ImageCommand,
}

#[derive(Debug, Subcommand)]
pub enum ImageCommand {
    /// Build the node image (debootstrap + docker import) unless it already exists.
    #[command(after_help = "Examples:\n  kubeforge image build\n  kubeforge image build --force")]
    Build {
        /// Rebuild the root filesystem and re-import even if the image exists.
        #[arg(long)]
        force: bool,
    },
    /// Print the tag the current recipe builds (`kubeforge/node:<recipe-hash>`).
    #[command(
        after_help = "Examples:\n  kubeforge image tag\n  docker image inspect \"$(kubeforge image tag)\""
    )]
    Tag,
}

#[derive(Debug, Args)]
pub struct ApplyArgs {
    #[command(flatten)]
    pub spec: SpecArgs,
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
    /// How long draining a node that leaves the cluster (no longer in the cluster file)
    /// may wait for its pods to be evicted (PodDisruptionBudgets are respected), e.g. 5m.
    #[arg(long, default_value = "5m", value_parser = humantime::parse_duration)]
    pub drain_timeout: std::time::Duration,
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

#[derive(Debug, Args)]
pub struct AddonsArgs {
    #[command(subcommand)]
    pub command: AddonsCommand,
}

#[derive(Debug, Args)]
pub struct Target {
    #[command(flatten)]
    pub spec: SpecArgs,
    /// Talk to the API server of this kubeconfig instead of the cluster's (the admin
    /// kubeconfig in the state, reached through SSH to a control-plane node).
    #[arg(long)]
    pub kubeconfig: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
pub enum AddonsCommand {
    /// Show what applying the addons would change, object by object (server-side dry
    /// run; diffs for updates). Changes nothing.
    #[command(
        after_help = "Examples:\n  kubeforge addons plan -f examples/ingress-contour.yaml\n  kubeforge addons plan -f cluster.yaml --kubeconfig admin.conf -o json"
    )]
    Plan(Target),
    /// Apply the addons of the cluster file; addons removed from it are deleted (only
    /// objects kubeforge applied and labelled).
    #[command(
        after_help = "Examples:\n  kubeforge addons apply -f cluster.yaml --wait --timeout 10m\n  kubeforge addons apply -f cluster.yaml --yes --force-conflicts"
    )]
    Apply {
        #[command(flatten)]
        target: Target,
        /// Apply without asking for confirmation.
        #[arg(long, short = 'y')]
        yes: bool,
        #[command(flatten)]
        addons: AddonArgs,
    },
    /// The compatibility matrix: every release kubeforge knows of each addon and the
    /// Kubernetes versions it supports; with -f, which release the cluster file gets.
    /// Offline: reads no state and contacts nothing.
    #[command(
        after_help = "Examples:\n  kubeforge addons versions\n  kubeforge addons versions -f cluster.yaml -o json"
    )]
    Versions {
        /// A cluster file: mark the default for its Kubernetes version and the release
        /// each configured addon uses.
        #[arg(short = 'f', long = "file")]
        file: Option<std::path::PathBuf>,
    },
    /// Rollout status of every addon (Deployments/DaemonSets available, Ceph health).
    #[command(
        after_help = "Examples:\n  kubeforge addons status -f cluster.yaml\n  kubeforge addons status -f cluster.yaml --wait --timeout 5m"
    )]
    Status {
        #[command(flatten)]
        target: Target,
        /// Wait until every addon is ready (see --timeout).
        #[arg(long)]
        wait: bool,
        #[arg(long, default_value = "5m", value_parser = parse_duration)]
        timeout: std::time::Duration,
    },
}

#[derive(Debug, Args)]
pub struct DestroyArgs {
    #[command(flatten)]
    pub spec: SpecArgs,
    /// Delete without asking for confirmation.
    #[arg(long, short = 'y')]
    pub yes: bool,
}

#[derive(Debug, Args)]
pub struct BenchArgs {
    #[command(subcommand)]
    pub command: BenchCommand,
}

#[derive(Debug, Subcommand)]
pub enum BenchCommand {
    /// Push a file and run small commands on N local machines; compare with scp/ssh
    /// and Ansible.
    #[command(
        after_help = "Examples:\n  kubeforge bench fanout --machines 10\n  kubeforge bench fanout --machines 30 --file-mib 10 --no-ansible -o json"
    )]
    Fanout(FanoutArgs),
    /// Converge N local machines to a file set and checks (the transport calls `apply`
    /// and `plan` make), then again with nothing to change; the same with Ansible.
    #[command(
        after_help = "Examples:\n  kubeforge bench converge --machines 100\n  kubeforge bench converge --machines 20 --binary-mib 10 --no-ansible -o json"
    )]
    Converge(ConvergeArgs),
    /// `validate` and `plan --offline` of a large static cluster (no host touched):
    /// time and peak memory, against Ansible listing the same inventory and plays.
    #[command(
        after_help = "Examples:\n  kubeforge bench plan --hosts 1000\n  kubeforge bench plan --hosts 5000 --rounds 5 -o json"
    )]
    Plan(PlanBenchArgs),
    /// Bootstrap a cluster of local machines twice: once with the bare kubeadm commands
    /// run back to back, once with `kubeforge apply`; where the time goes, phase by phase.
    #[command(
        after_help = "Examples:\n  kubeforge bench bootstrap\n  kubeforge bench bootstrap --workers 2 --mirror .kubeforge/mirror -o json"
    )]
    Bootstrap(BootstrapBenchArgs),
}

#[derive(Debug, Args)]
pub struct BootstrapBenchArgs {
    /// Control-plane nodes (1 or 3).
    #[arg(long, default_value_t = 3)]
    pub control_planes: usize,
    /// Worker nodes.
    #[arg(long, default_value_t = 1)]
    pub workers: usize,
    /// Load balancers (HAProxy + keepalived in front of the control planes).
    #[arg(long, default_value_t = 1)]
    pub load_balancers: usize,
    /// Kubernetes binaries and images (the directory scripts/up.sh links at
    /// .kubeforge/mirror).
    #[arg(long, default_value = ".kubeforge/mirror")]
    pub mirror: PathBuf,
    /// Kubernetes version (the mirror must hold it).
    #[arg(long, default_value = "v1.20.2")]
    pub kubernetes_version: String,
    /// Subnet of the benchmark's internal network (the VIP is its .254).
    #[arg(long, default_value = "10.250.7.0/24")]
    pub subnet: ipnet::IpNet,
    /// Keep the last round's machines and the scratch directory (cluster file, state).
    #[arg(long)]
    pub keep: bool,
}

#[derive(Debug, Args)]
pub struct PlanBenchArgs {
    /// Hosts in the inventory (3 control planes, 3 load balancers, the rest workers).
    #[arg(long, default_value_t = 1000)]
    pub hosts: usize,
    /// Rounds per command (the median time and the largest peak memory are reported).
    #[arg(long, default_value_t = 3)]
    pub rounds: usize,
    /// Skip the Ansible comparison.
    #[arg(long)]
    pub no_ansible: bool,
    /// Keep the generated inputs.
    #[arg(long)]
    pub keep: bool,
}

#[derive(Debug, Args)]
pub struct ConvergeArgs {
    /// Number of machines (sshd-only systemd containers).
    #[arg(long, default_value_t = 100)]
    pub machines: usize,
    /// Small configuration files per host (4 KiB each).
    #[arg(long, default_value_t = 10)]
    pub files: usize,
    /// Size of the one large file per host (a kubelet-sized binary), in MiB.
    #[arg(long, default_value_t = 50)]
    pub binary_mib: u64,
    /// Checked steps per host (a check, and the command that fixes what it finds).
    #[arg(long, default_value_t = 5)]
    pub checks: usize,
    /// No-op rounds measured (the median is reported).
    #[arg(long, default_value_t = 3)]
    pub rounds: usize,
    /// Hosts worked on at once (also Ansible's forks).
    #[arg(long, default_value_t = 20)]
    pub concurrency: usize,
    /// Node image (default: the current recipe's tag).
    #[arg(long)]
    pub image: Option<String>,
    /// Subnet of the benchmark's internal network.
    #[arg(long, default_value = "10.252.0.0/24")]
    pub subnet: ipnet::IpNet,
    /// Skip the Ansible comparison.
    #[arg(long)]
    pub no_ansible: bool,
    /// Keep the machines afterwards.
    #[arg(long)]
    pub keep: bool,
}

#[derive(Debug, Args)]
pub struct FanoutArgs {
    /// Number of machines.
    #[arg(long, default_value_t = 10)]
    pub machines: usize,
    /// Size of the pushed file in MiB.
    #[arg(long, default_value_t = 100)]
    pub file_mib: u64,
    /// Small commands per host.
    #[arg(long, default_value_t = 20)]
    pub commands: usize,
    /// Hosts worked on at once (also Ansible's forks).
    #[arg(long, default_value_t = 10)]
    pub concurrency: usize,
    /// Node image (default: the current recipe's tag).
    #[arg(long)]
    pub image: Option<String>,
    /// Subnet of the benchmark's internal network.
    #[arg(long, default_value = "10.253.0.0/24")]
    pub subnet: ipnet::IpNet,
    /// Skip the Ansible comparison.
    #[arg(long)]
    pub no_ansible: bool,
    /// Keep the machines afterwards.
    #[arg(long)]
    pub keep: bool,
}

#[derive(Debug, Args)]
pub struct ArtifactsArgs {
    #[command(subcommand)]
    pub command: ArtifactsCommand,
}

#[derive(Debug, Subcommand)]
pub enum ArtifactsCommand {
    /// Print exactly what a Kubernetes version needs: binaries, images, host packages,
    /// each with its source (upstream URL, mirror path or registry).
    #[command(disable_version_flag = true)]
    #[command(
        after_help = "Examples:\n  kubeforge artifacts list --version v1.20.2\n  kubeforge artifacts list -f cluster.yaml --skip-image coredns -o json"
    )]
    List(SelectArgs),
    /// Download everything into the local cache, verifying every sha256.
    #[command(disable_version_flag = true)]
    #[command(
        after_help = "Examples:\n  kubeforge artifacts fetch -f cluster.yaml\n  kubeforge artifacts fetch --version v1.20.2 --mirror https://mirror.example/k8s --cache /var/cache/kf"
    )]
    Fetch(FetchArgs),
}

#[derive(Debug, Args)]
pub struct SelectArgs {
    /// The cluster file: its kubernetesVersion, artifacts.mirror and
    /// artifacts.imageRepository are used (default cluster.yaml unless --version).
    #[arg(short = 'f', long = "file", conflicts_with = "version")]
    pub file: Option<PathBuf>,
    /// A Kubernetes version (v1.20.2) instead of a cluster file.
    #[arg(long)]
    pub version: Option<String>,
    /// Mirror (http(s) URL or directory) replacing the upstream release site; overrides
    /// the cluster file's artifacts.mirror.
    #[arg(long)]
    pub mirror: Option<String>,
    /// Registry for the control-plane images (kubeadm's imageRepository).
    #[arg(long)]
    pub image_repository: Option<String>,
    /// Host architecture.
    #[arg(long, default_value = "amd64")]
    pub arch: String,
    /// Leave an image out (e.g. coredns when that addon is not deployed); repeatable.
    #[arg(long = "skip-image", value_name = "NAME")]
    pub skip_images: Vec<String>,
}

#[derive(Debug, Args)]
pub struct FetchArgs {
    #[command(flatten)]
    pub select: SelectArgs,
    /// Cache directory (default $KUBEFORGE_CACHE, else ~/.cache/kubeforge).
    #[arg(long)]
    pub cache: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct RecoverArgs {
    #[command(flatten)]
    pub spec: SpecArgs,
    /// Recover without asking for confirmation.
    #[arg(long, short = 'y')]
    pub yes: bool,
    /// Hosts worked on at once in parallel phases.
    #[arg(long, default_value_t = 10)]
    pub concurrency: usize,
    /// Re-pin the SSH host key of this host (address) on purpose, e.g. a bare-metal host
    /// reinstalled by hand (machines the provider re-creates are re-pinned without it).
    #[arg(long = "accept-new-host-key", value_name = "HOST")]
    pub accept_new_host_key: Vec<String>,
    /// Keep checking every --interval and repair what is lost, within the same quorum
    /// rules (auto-repair; needs --yes). Each round takes the lock only while it works
    /// and prints one line (`-o json`: one JSON object per line). Ctrl-C stops it.
    #[arg(long, requires = "yes")]
    pub watch: bool,
    /// How long --watch waits between rounds, e.g. 30s, 5m.
    #[arg(long, default_value = "1m", value_parser = parse_duration, requires = "watch")]
    pub interval: std::time::Duration,
}

#[derive(Debug, Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct BackupArgs {
    #[command(subcommand)]
    pub command: Option<BackupCommand>,
    #[command(flatten)]
    pub spec: SpecArgs,
}

#[derive(Debug, Subcommand)]
pub enum BackupCommand {
    /// Take a snapshot now (the default of `kubeforge backup`), after collecting.
    #[command(after_help = "Examples:\n  kubeforge backup create -f cluster.yaml -o json")]
    Create(SpecArgs),
    /// Bring the timer's snapshots from the control-plane nodes into the state store.
    #[command(after_help = "Examples:\n  kubeforge backup collect -f cluster.yaml")]
    Collect(SpecArgs),
    /// The stored snapshots, oldest first, with their age, source and revision.
    #[command(
        after_help = "Examples:\n  kubeforge backup list -f cluster.yaml\n  kubeforge backup list -f cluster.yaml -o json"
    )]
    List(SpecArgs),
}

#[derive(Debug, Args)]
pub struct CertsArgs {
    #[command(subcommand)]
    pub command: CertsCommand,
}

#[derive(Debug, Subcommand)]
pub enum CertsCommand {
    /// Every certificate of every control plane and when it expires, read from the
    /// certificates themselves. Exit 8 when one expires within 30 days.
    #[command(
        after_help = "Examples:\n  kubeforge certs check -f cluster.yaml\n  kubeforge certs check -f cluster.yaml -o json"
    )]
    Check(SpecArgs),
    /// `kubeadm certs renew all` on each control plane, one at a time, out of the load
    /// balancers, its control plane restarted behind health gates (CAs unchanged).
    #[command(
        after_help = "Examples:\n  kubeforge certs renew -f cluster.yaml\n  kubeforge certs renew -f cluster.yaml --yes -o json"
    )]
    Renew(CertsRenewArgs),
}

#[derive(Debug, Args)]
pub struct CertsRenewArgs {
    #[command(flatten)]
    pub spec: SpecArgs,
    /// Renew without asking for confirmation.
    #[arg(long, short = 'y')]
    pub yes: bool,
}

#[derive(Debug, Args)]
pub struct StatusArgs {
    #[command(flatten)]
    pub spec: SpecArgs,
    /// Check again every 5 s until the cluster is healthy (or --timeout passes).
    #[arg(long)]
    pub wait: bool,
    /// How long --wait waits, e.g. 10m, 90s.
    #[arg(long, default_value = "10m", value_parser = humantime::parse_duration)]
    pub timeout: std::time::Duration,
    /// Skip the drift check (the plan against the hosts, as `kubeforge plan` makes it).
    #[arg(long)]
    pub no_drift: bool,
}

#[derive(Debug, Args)]
pub struct RestoreArgs {
    #[command(flatten)]
    pub spec: SpecArgs,
    /// The snapshot to restore (default: the newest stored; `kubeforge backup list`).
    #[arg(long, value_name = "NAME")]
    pub snapshot: Option<String>,
    /// Restore without asking for confirmation.
    #[arg(long, short = 'y')]
    pub yes: bool,
    /// Hosts worked on at once in parallel phases.
    #[arg(long, default_value_t = 10)]
    pub concurrency: usize,
    /// Re-pin the SSH host key of this host (address) on purpose.
    #[arg(long = "accept-new-host-key", value_name = "HOST")]
    pub accept_new_host_key: Vec<String>,
}

#[derive(Debug, Args)]
pub struct UpgradeArgs {
    #[command(flatten)]
    pub spec: SpecArgs,
    /// The version to upgrade to (default: the cluster file's spec.kubernetesVersion).
    #[arg(long, value_name = "VERSION")]
    pub to: Option<String>,
    /// Upgrade without asking for confirmation.
    #[arg(long, short = 'y')]
    pub yes: bool,
    /// Workers upgraded at once.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..))]
    pub max_unavailable: u16,
    /// How long draining one node may wait for its pods to be evicted (PodDisruptionBudgets
    /// are respected), e.g. 5m, 90s.
    #[arg(long, default_value = "5m", value_parser = humantime::parse_duration)]
    pub drain_timeout: std::time::Duration,
    /// Hosts worked on at once in parallel phases.
    #[arg(long, default_value_t = 10)]
    pub concurrency: usize,
}

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
    #[command(
        after_help = "Examples:\n  kubeforge state show -f cluster.yaml\n  kubeforge state show -f cluster.yaml --generation 12 -o json"
    )]
    Show {
        /// Show a generation from history instead of the current state.
        #[arg(long)]
        generation: Option<u64>,
    },
    /// List the saved generations.
    #[command(after_help = "Examples:\n  kubeforge state history -f cluster.yaml")]
    History,
    /// List the stored (encrypted) snapshots.
    #[command(after_help = "Examples:\n  kubeforge state snapshots -f cluster.yaml -o json")]
    Snapshots,
    /// Remove the lock: an expired one, or with --force any one (prints what it breaks).
    #[command(
        after_help = "Examples:\n  kubeforge state unlock -f cluster.yaml\n  kubeforge state unlock -f cluster.yaml --force"
    )]
    Unlock {
        /// Break the lock even if its lease is live.
        #[arg(long)]
        force: bool,
    },
    /// Write a local copy of the state (mode 0600; secrets stay encrypted).
    #[command(
        after_help = "Examples:\n  kubeforge state pull -f cluster.yaml --out prd.state.json\n  kubeforge state pull -f cluster.yaml --generation 11 --out -"
    )]
    Pull {
        /// Output file (`-` for stdout). Default: <cluster>.state.json.
        #[arg(long)]
        out: Option<PathBuf>,
        /// Pull a generation from history instead of the current state.
        #[arg(long)]
        generation: Option<u64>,
    },
    /// Replace the state with a (pulled and edited) copy; saved as a new generation.
    #[command(
        after_help = "Examples:\n  kubeforge state push prd.state.json -f cluster.yaml --generation 12"
    )]
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
    #[command(
        after_help = "Examples:\n  kubeforge state show -f cluster.yaml && kubeforge state migrate -f cluster.yaml --generation 12"
    )]
    Migrate {
        /// The generation you checked (as `state show` prints it); refused if the
        /// state moved since.
        #[arg(long)]
        generation: u64,
    },
    /// Write a new age X25519 key file (mode 0600) for encrypting the state's secrets.
    #[command(
        after_help = "Examples:\n  kubeforge state keygen --out ~/.config/kubeforge/prd.agekey"
    )]
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
pub fn init_tracing(verbose: u8) {
    use tracing_subscriber::EnvFilter;
    // kube-client logs every API error it returns to us (404 while probing discovery,
    // 409 conflicts); we report those ourselves, so its own lines only show at -vv.
    let default = match verbose {
        0 => "warn,kube_client=off",
        1 => "info,kube_client=off",
        2 => "debug",
        _ => "trace",
    };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .try_init();
}

/// Commands kubeforge runs on a node, never by hand.
#[derive(Debug, clap::Subcommand)]
pub enum NodeCommand {
    /// Verify a snapshot the node's timer took (etcd's own restore into a scratch
    /// directory), encrypt it to the state's public key and put it into the state
    /// bucket with authenticated metadata, then apply retention.
    ShipSnapshot {
        /// The shipping configuration `apply` wrote (0600).
        #[arg(long, default_value = "/etc/kubeforge/snapshot-ship.json")]
        config: std::path::PathBuf,
        /// The snapshot stream the timer took (`auto-<node>-<time>.stream`).
        stream: std::path::PathBuf,
    },
}

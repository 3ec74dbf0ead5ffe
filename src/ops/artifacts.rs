//! `kubeforge artifacts list|fetch`: what a Kubernetes version needs and where it comes
//! from; fetch it into the local cache with every sha256 verified.

use crate::artifacts::{self, Arch, Cache, Catalogue, Source};
use crate::cli::{ArtifactsArgs, ArtifactsCommand, SelectArgs};
use crate::error::Error;
use crate::output::{print_json, OutputFormat};
use serde::Serialize;
use std::path::{Path, PathBuf};

/// A resolved selection: catalogue + source.
pub struct Selection {
    pub catalogue: Catalogue,
    pub source: Source,
}

fn parse_version(s: &str) -> Result<semver::Version, Error> {
    semver::Version::parse(s.trim().trim_start_matches('v'))
        .map_err(|e| Error::Usage(format!("invalid Kubernetes version {s:?}: {e}")))
}

pub fn select(args: &SelectArgs) -> Result<Selection, Error> {
    let arch = Arch::parse(&args.arch).ok_or_else(|| {
        Error::Usage(format!(
            "unknown architecture {:?} (amd64 or arm64)",
            args.arch
        ))
    })?;
    let (version, mirror, registry, base_dir) = match &args.version {
        Some(v) => (
            parse_version(v)?,
            None,
            None,
            std::env::current_dir().unwrap_or_else(|_| PathBuf::from(".")),
        ),
        None => {
            let file = args
                .file
                .clone()
                .unwrap_or_else(|| PathBuf::from("cluster.yaml"));
            let c = crate::spec::load_file(&file)?;
            let base = file
                .parent()
                .filter(|p| !p.as_os_str().is_empty())
                .map(Path::to_path_buf)
                .unwrap_or_else(|| PathBuf::from("."));
            let a = &c.cluster.spec.artifacts;
            (
                c.version(),
                a.mirror.clone(),
                a.image_repository.clone(),
                base,
            )
        }
    };
    let mirror = args.mirror.clone().or(mirror);
    let registry = args.image_repository.clone().or(registry);
    let mut catalogue = Catalogue::for_version_arch(&version, arch).map_err(boxed)?;
    if let Some(r) = registry {
        catalogue = catalogue.with_image_repository(&r);
    }
    let skip: Vec<&str> = args.skip_images.iter().map(String::as_str).collect();
    catalogue = catalogue.without_images(&skip).map_err(boxed)?;
    let source = Source::from_spec(mirror.as_deref(), &base_dir).map_err(boxed)?;
    Ok(Selection { catalogue, source })
}

fn boxed(e: artifacts::ArtifactsError) -> Error {
    Error::from(e)
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct ListedBinary {
    name: String,
    remote_path: String,
    mode: String,
    from: String,
    checksum: String,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct ListedImage {
    name: String,
    reference: String,
    /// The mirror tarball (and its checksum), when the source is a mirror.
    tarball: Option<String>,
    checksum: Option<String>,
    /// How the host gets it.
    delivery: String,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct Listing {
    version: String,
    arch: Arch,
    source: String,
    image_repository: String,
    binaries: Vec<ListedBinary>,
    images: Vec<ListedImage>,
    host_packages: Vec<artifacts::HostRequirement>,
}

fn listing(sel: &Selection) -> Listing {
    let c = &sel.catalogue;
    let s = &sel.source;
    let binaries = c
        .binaries
        .iter()
        .map(|b| ListedBinary {
            name: b.name.clone(),
            remote_path: b.remote_path.clone(),
            mode: format!("{:04o}", b.mode),
            from: s.location(&b.path).to_string(),
            checksum: s.checksum_location(&b.path).to_string(),
        })
        .collect();
    let images = c
        .images
        .iter()
        .map(|i| {
            if s.provides_images() {
                ListedImage {
                    name: i.name.clone(),
                    reference: i.reference(),
                    tarball: Some(s.location(&i.tarball).to_string()),
                    checksum: Some(s.checksum_location(&i.tarball).to_string()),
                    delivery: format!(
                        "pushed to {} and imported with `ctr -n k8s.io images import`",
                        artifacts::REMOTE_IMAGE_DIR
                    ),
                }
            } else {
                ListedImage {
                    name: i.name.clone(),
                    reference: i.reference(),
                    tarball: None,
                    checksum: None,
                    delivery: format!("pulled by containerd on each host from {}", i.registry),
                }
            }
        })
        .collect();
    Listing {
        version: c.version.clone(),
        arch: c.arch,
        source: s.describe(),
        image_repository: c
            .images
            .first()
            .map(|i| i.registry.clone())
            .unwrap_or_else(|| c.default_registry.clone()),
        binaries,
        images,
        host_packages: c.host_packages.clone(),
    }
}

fn print_listing(l: &Listing) {
    println!(
        "Kubernetes {} (linux/{}) from {}",
        l.version, l.arch, l.source
    );
    println!("\nbinaries (sha256 from <file>.sha256, installed on every node):");
    for b in &l.binaries {
        println!("  {:<8} -> {} ({})", b.name, b.remote_path, b.mode);
        println!("           {}", b.from);
    }
    println!("\nimages (kubeadm imageRepository {}):", l.image_repository);
    for i in &l.images {
        println!("  {}", i.reference);
        match &i.tarball {
            Some(t) => println!("      {t}"),
            None => println!("      {}", i.delivery),
        }
    }
    println!("\nhost packages (from the distribution):");
    for p in &l.host_packages {
        let min = p
            .min_version
            .map(|m| format!(" >= {m}"))
            .unwrap_or_default();
        println!(
            "  {}{min} (Debian: {}): {}",
            p.name, p.debian_package, p.why
        );
    }
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct FetchResult {
    version: String,
    source: String,
    cache: PathBuf,
    artifacts: Vec<artifacts::LocalArtifact>,
}

pub async fn run(args: ArtifactsArgs, output: OutputFormat) -> Result<(), Error> {
    match args.command {
        ArtifactsCommand::List(sel) => {
            let sel = select(&sel)?;
            let l = listing(&sel);
            match output {
                OutputFormat::Json => print_json(&l)?,
                OutputFormat::Text => print_listing(&l),
            }
            Ok(())
        }
        ArtifactsCommand::Fetch(f) => {
            let sel = select(&f.select)?;
            let cache = f
                .cache
                .map(Cache::new)
                .unwrap_or_else(Cache::default_location);
            let started = std::time::Instant::now();
            let fetched = artifacts::fetch_all(&sel.source, &sel.catalogue, &cache)
                .await
                .map_err(boxed)?;
            let result = FetchResult {
                version: sel.catalogue.version.clone(),
                source: sel.source.describe(),
                cache: cache.root().to_path_buf(),
                artifacts: fetched,
            };
            match output {
                OutputFormat::Json => print_json(&result)?,
                OutputFormat::Text => {
                    println!(
                        "Kubernetes {} from {} into {} ({:.1} s), every sha256 verified:",
                        result.version,
                        result.source,
                        result.cache.display(),
                        started.elapsed().as_secs_f64()
                    );
                    for a in &result.artifacts {
                        println!(
                            "  {:<24} {:>8.1} MiB  sha256:{}  {}",
                            a.name,
                            a.size as f64 / 1048576.0,
                            a.sha256,
                            if a.cached { "cached" } else { "fetched" }
                        );
                    }
                }
            }
            Ok(())
        }
    }
}

//! Finding the test bed's Kubernetes mirror (scripts/k8s-mirror/build.sh, run by
//! scripts/testbed/50-k8s-mirror.sh). The mirror is REQUIRED: when it is missing the
//! tests fail with a message naming the script that builds it (never skip).
#![allow(dead_code)]

use std::path::PathBuf;

/// The mirror directory: $KUBEFORGE_K8S_MIRROR, else what the current recipe builds.
pub fn mirror_dir() -> PathBuf {
    let dir = match std::env::var_os("KUBEFORGE_K8S_MIRROR") {
        Some(d) => PathBuf::from(d),
        None => {
            let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/k8s-mirror/build.sh");
            let out = std::process::Command::new("bash")
                .arg(script)
                .arg("--print-dir")
                .output()
                .unwrap_or_else(|e| panic!("cannot run {script} --print-dir: {e}"));
            assert!(out.status.success(), "{script} --print-dir failed");
            PathBuf::from(String::from_utf8_lossy(&out.stdout).trim())
        }
    };
    if !dir.join(".complete").exists() {
        panic!(
            "the Kubernetes v1.20.2 mirror is missing at {} (no .complete marker). Build it with \
             `bash scripts/testbed/50-k8s-mirror.sh` (about 6 minutes cold, seconds when cached).",
            dir.display()
        );
    }
    dir
}

/// A tiny static HTTP/1.1 file server on 127.0.0.1 (GET only, one request per
/// connection), serving `root`. Returns the base URL; the server lives as long as the
/// runtime. Counts requests so tests can tell a cache hit from a download.
pub struct FileServer {
    pub base: String,
    pub requests: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

pub async fn serve_dir(root: PathBuf) -> FileServer {
    serve_dir_on("127.0.0.1", root).await
}

/// The same on another local address (e.g. the gateway of a test's own internal docker
/// network, so machines on it can download from the host).
pub async fn serve_dir_on(ip: &str, root: PathBuf) -> FileServer {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
    let listener = tokio::net::TcpListener::bind((ip, 0))
        .await
        .unwrap_or_else(|e| panic!("cannot listen on {ip}: {e}"));
    let addr = listener.local_addr().unwrap();
    let requests = std::sync::Arc::new(AtomicUsize::new(0));
    let counter = requests.clone();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let root = root.clone();
            let counter = counter.clone();
            tokio::spawn(async move {
                let (r, mut w) = stream.into_split();
                let mut lines = BufReader::new(r);
                let mut first = String::new();
                if lines.read_line(&mut first).await.is_err() {
                    return;
                }
                loop {
                    let mut l = String::new();
                    match lines.read_line(&mut l).await {
                        Ok(0) | Err(_) => break,
                        Ok(_) if l == "\r\n" || l == "\n" => break,
                        Ok(_) => {}
                    }
                }
                counter.fetch_add(1, Ordering::SeqCst);
                let path = first.split_whitespace().nth(1).unwrap_or("/").to_string();
                let rel = path.trim_start_matches('/');
                let file = root.join(rel);
                if rel.split('/').any(|c| c == "..") || !file.is_file() {
                    let _ = w
                        .write_all(b"HTTP/1.1 404 Not Found\r\ncontent-length: 9\r\nconnection: close\r\n\r\nnot found")
                        .await;
                    return;
                }
                let mut f = tokio::fs::File::open(&file).await.unwrap();
                let len = f.metadata().await.unwrap().len();
                let head = format!(
                    "HTTP/1.1 200 OK\r\ncontent-length: {len}\r\ncontent-type: application/octet-stream\r\nconnection: close\r\n\r\n"
                );
                if w.write_all(head.as_bytes()).await.is_err() {
                    return;
                }
                let _ = tokio::io::copy(&mut f, &mut w).await;
                let _ = w.shutdown().await;
            });
        }
    });
    FileServer {
        base: format!("http://{addr}"),
        requests,
    }
}

//! The API server through SSH: a local listener on 127.0.0.1 whose connections are
//! carried to a control-plane node's API port over the existing SSH session (like
//! `ssh -L`). The API server is reachable wherever kubeforge can SSH (bastions,
//! internal networks), and TLS is still verified end to end against the cluster CA
//! with the endpoint's name.

use crate::transport::SshSession;
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

/// An open forward; closed when dropped.
pub struct Tunnel {
    pub local: SocketAddr,
    task: JoinHandle<()>,
}

impl Drop for Tunnel {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Forward `127.0.0.1:<free port>` to `target:port` as seen from `session`'s host.
pub async fn open(session: Arc<SshSession>, target: String, port: u16) -> std::io::Result<Tunnel> {
    let listener = TcpListener::bind(("127.0.0.1", 0)).await?;
    let local = listener.local_addr()?;
    let task = tokio::spawn(async move {
        loop {
            let Ok((mut tcp, _)) = listener.accept().await else {
                break;
            };
            let session = session.clone();
            let target = target.clone();
            tokio::spawn(async move {
                match session.direct_tcpip(&target, port).await {
                    Ok(mut remote) => {
                        let _ = tcp.set_nodelay(true);
                        if let Err(e) = tokio::io::copy_bidirectional(&mut tcp, &mut remote).await {
                            tracing::debug!("API tunnel connection ended: {e}");
                        }
                    }
                    Err(e) => tracing::warn!("API tunnel: {e}"),
                }
            });
        }
    });
    Ok(Tunnel { local, task })
}

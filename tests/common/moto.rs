//! A moto S3 server for the tests: started once per test binary on a free loopback
//! port, killed when the test process exits (PR_SET_PDEATHSIG from a thread that lives
//! as long as the process). A missing moto_server is a test FAILURE, not a skip.
//! See [`SERIAL_MOTO`] for why requests are serialised.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

pub struct Moto {
    pub port: u16,
    pub bucket: String,
    pid: u32,
}

impl Moto {
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn pid(&self) -> u32 {
        self.pid
    }
}

pub fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

fn which(name: &str) -> bool {
    std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join(name).is_file()))
        .unwrap_or(false)
}

/// Send one small HTTP/1.1 request, return the status code.
pub fn http(port: u16, method: &str, path: &str) -> std::io::Result<u16> {
    let mut s = TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    )?;
    let mut buf = [0u8; 64];
    let n = s.read(&mut buf)?;
    let head = String::from_utf8_lossy(&buf[..n]);
    head.split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("bad response {head:?}")))
}

/// moto's own server application (what `moto_server` runs), with one change: requests
/// are handled one at a time. moto checks `If-None-Match` / `If-Match` and then writes,
/// without a lock; in its threaded server two racing conditional PUTs can both pass
/// the check under CPU load (seen: 2 winners of 16 in 2 of ~50 trials). Real S3 is
/// atomic here, and so is moto with requests serialised.
const SERIAL_MOTO: &str = r#"
import os, sys, threading
from werkzeug.serving import run_simple
from moto.moto_server.werkzeug_app import DomainDispatcherApplication, create_backend_app
host, port = sys.argv[1], int(sys.argv[2])
os.environ.setdefault("MOTO_PORT", str(port))
app = DomainDispatcherApplication(create_backend_app)
lock = threading.Lock()
def serial(environ, start_response):
    with lock:
        return list(app(environ, start_response))
tls = (sys.argv[3], sys.argv[4]) if len(sys.argv) > 4 else None
run_simple(host, port, serial, threaded=True, ssl_context=tls)
"#;

/// Start moto's server (S3, EC2, ...) on a free port and wait until it answers.
pub fn start() -> (Child, u16) {
    start_with_env(&[])
}

/// Start a moto server with extra environment, e.g. `INITIAL_NO_AUTH_ACTION_COUNT=0`
/// to make it check credentials.
pub fn start_with_env(env: &[(&str, &str)]) -> (Child, u16) {
    start_inner(env, None, "127.0.0.1")
}

/// Start a moto server listening on every address of this machine (also answering on
/// 127.0.0.1): for machines of the test's own networks that reach it through their
/// network's gateway address.
pub fn start_on_all_addresses() -> (Child, u16) {
    start_inner(&[], None, "0.0.0.0")
}

/// Start a moto server that speaks https with `cert` and `key` (PEM files), e.g. a
/// certificate from a CA of the test's own, as a MinIO with its own CA would.
pub fn start_tls(cert: &std::path::Path, key: &std::path::Path) -> (Child, u16) {
    start_inner(&[], Some((cert, key)), "127.0.0.1")
}

fn start_inner(
    env: &[(&str, &str)],
    tls: Option<(&std::path::Path, &std::path::Path)>,
    bind: &str,
) -> (Child, u16) {
    assert!(
        which("moto_server"),
        "moto_server is not on PATH: the S3 tests need it. Install it with \
         `python3 -m pip install 'moto[server]'` (scripts/testbed/20-moto.sh does)."
    );
    for _attempt in 0..3 {
        let port = free_port();
        let mut cmd = Command::new("python3");
        cmd.args(["-c", SERIAL_MOTO, bind, &port.to_string()])
            .envs(env.iter().copied())
            .args(tls.iter().flat_map(|(c, k)| [c.as_os_str(), k.as_os_str()]))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        // SAFETY: prctl is async-signal-safe; the child dies with the thread that made it.
        unsafe {
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        let mut child = cmd.spawn().expect("cannot start moto_server");
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Ok(Some(status)) = child.try_wait() {
                panic!(
                    "moto's server exited early with {status} (is moto[server] installed \
                     for this python3? scripts/testbed/20-moto.sh installs it)"
                );
            }
            let up = match tls {
                None => http(port, "GET", "/").is_ok(),
                // The TLS handshake is the client's business; listening is enough.
                Some(_) => TcpStream::connect(("127.0.0.1", port)).is_ok(),
            };
            if up {
                return (child, port);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = child.kill();
        let _ = child.wait();
    }
    panic!("moto_server did not answer on 127.0.0.1 within 30 s (3 attempts)");
}

/// The moto server shared by all tests of this binary, with bucket `kubeforge-test`.
pub fn shared() -> &'static Moto {
    static MOTO: OnceLock<Moto> = OnceLock::new();
    MOTO.get_or_init(|| {
        let (tx, rx) = std::sync::mpsc::channel();
        // The server is a child of this thread, which never ends: PDEATHSIG fires
        // only when the whole test process exits.
        std::thread::spawn(move || {
            let (mut child, port) = start();
            let code = http(port, "PUT", "/kubeforge-test").expect("create bucket");
            assert!(code == 200, "creating the bucket answered HTTP {code}");
            tx.send((port, child.id())).unwrap();
            let _ = child.wait();
        });
        let (port, pid) = rx.recv().expect("moto_server start");
        Moto {
            port,
            bucket: "kubeforge-test".into(),
            pid,
        }
    })
}

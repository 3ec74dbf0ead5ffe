//! Top-level error type. Every module has its own error enum; this one only wraps them
//! and maps each kind to a distinct process exit code.

use std::error::Error as StdError;
use std::path::PathBuf;

/// Process exit codes, one per error kind, so scripts can tell failures apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum ExitKind {
    /// Anything not classified below (a bug, an unexpected local failure).
    Internal = 1,
    /// Bad input: cluster file, inventory, command-line arguments.
    Input = 2,
    /// The state lock is held by someone else.
    Lock = 3,
    /// A host could not be reached or authenticated over SSH.
    Ssh = 4,
    /// A command on a host failed.
    Remote = 5,
    /// The machine provider (docker, cloud API) failed.
    Provider = 6,
    /// The state store failed (unreachable, conflict, corrupted, wrong key).
    State = 7,
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Spec(#[from] crate::spec::SpecErrors),
    #[error(transparent)]
    Render(#[from] crate::render::RenderError),
    #[error(transparent)]
    State(Box<crate::state::StateError>),
    #[error("cannot write {path}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}")]
    Usage(String),
    /// A bug in kubeforge (exit 1), not a problem with the input.
    #[error("internal: {0}")]
    Internal(String),
    #[error("cannot print the result as JSON")]
    Json(#[from] serde_json::Error),
    #[error(transparent)]
    Phase(Box<crate::phase::PhaseError>),
    #[error(transparent)]
    Artifacts(Box<crate::artifacts::ArtifactsError>),
    #[error(transparent)]
    Provider(Box<crate::provider::ProviderError>),
    #[error(transparent)]
    Transport(Box<crate::transport::TransportError>),
    #[error(transparent)]
    Addons(Box<crate::addons::AddonsError>),
}

// The module errors are large (they carry hosts, paths and sources); boxed here so that
// every `Result<_, Error>` stays small.
macro_rules! boxed_from {
    ($($variant:ident($ty:ty)),*) => {$(
        impl From<$ty> for Error {
            fn from(e: $ty) -> Self {
                Error::$variant(Box::new(e))
            }
        }
    )*};
}
boxed_from!(
    State(crate::state::StateError),
    Artifacts(crate::artifacts::ArtifactsError),
    Provider(crate::provider::ProviderError),
    Transport(crate::transport::TransportError),
    Addons(crate::addons::AddonsError)
);

impl Error {
    pub fn kind(&self) -> ExitKind {
        match self {
            Error::Spec(_) | Error::Usage(_) => ExitKind::Input,
            Error::Render(_) | Error::Write { .. } | Error::Json(_) | Error::Internal(_) => {
                ExitKind::Internal
            }
            Error::State(e) => e.exit_kind(),
            Error::Artifacts(e) => e.exit_kind(),
            Error::Provider(_) => ExitKind::Provider,
            Error::Phase(e) => e.exit_kind(),
            Error::Transport(_) => ExitKind::Ssh,
            Error::Addons(e) => e.exit_kind(),
        }
    }

    pub fn exit_code(&self) -> u8 {
        self.kind() as u8
    }
}

/// `error: top` followed by `  caused by: ...` lines for each source, printed once at
/// the top level (modules never repeat their source's text in their own message).
pub fn render_chain(err: &(dyn StdError + 'static)) -> String {
    let mut out = format!("error: {err}");
    let mut source = err.source();
    while let Some(s) = source {
        out.push_str(&format!("\n  caused by: {s}"));
        source = s.source();
    }
    out
}

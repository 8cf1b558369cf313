//! Choosing a backend at run time, as vLLM's platform detection does.
//!
//! Hot paths are generic over `B: Backend`; an engine picks the backend once at start-up and
//! enters its generic code through a [`BackendVisitor`] (for code that needs only this crate's
//! traits) or `ascend_kernels::EngineVisitor` (for code that runs kernels and collectives: `B:
//! KernelOps + CollectiveBackend`). `ascend-hal` does not know the CPU
//! backend (it lives above, in `hal-mock`), so the fallback is passed in; `hal_mock::discover()`
//! is the one-call version.
//!
//! The choice can be forced with the environment variable [`BACKEND_ENV`]
//! (`ASCEND_HAL_BACKEND=cpu|acl|auto`).

use std::fmt;

use crate::acl::AclBackend;
use crate::error::{Error, Result};
use crate::traits::Backend;

/// The environment variable that forces a backend: `cpu`, `acl`, or `auto` (the default).
pub const BACKEND_ENV: &str = "ASCEND_HAL_BACKEND";

/// Which backend the caller wants.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum BackendPreference {
    /// The ACL backend when the CANN runtime loads and reports devices, else the CPU backend.
    #[default]
    Auto,
    /// The CPU backend, always.
    Cpu,
    /// The ACL backend, or an error saying why it is unavailable.
    Acl,
}

impl BackendPreference {
    /// Reads [`BACKEND_ENV`]; unset or empty means [`BackendPreference::Auto`].
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] for a value other than `auto`, `cpu` or `acl`.
    pub fn from_env() -> Result<Self> {
        match std::env::var(BACKEND_ENV) {
            Ok(v) => v.parse(),
            Err(std::env::VarError::NotPresent) => Ok(BackendPreference::Auto),
            Err(std::env::VarError::NotUnicode(v)) => Err(Error::InvalidArgument {
                op: "BackendPreference::from_env",
                message: format!("{BACKEND_ENV}={v:?} is not valid UTF-8"),
            }),
        }
    }
}

impl std::str::FromStr for BackendPreference {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        match s.trim().to_ascii_lowercase().as_str() {
            "" | "auto" => Ok(BackendPreference::Auto),
            "cpu" => Ok(BackendPreference::Cpu),
            "acl" | "npu" => Ok(BackendPreference::Acl),
            other => Err(Error::InvalidArgument {
                op: "BackendPreference",
                message: format!(
                    "{BACKEND_ENV}={other:?} is not a backend; use `cpu`, `acl` or `auto` \
                     (or leave it unset)"
                ),
            }),
        }
    }
}

/// Generic code to run on whichever backend was discovered (Rust has no generic closures).
///
/// ```
/// use ascend_hal::{Backend, BackendVisitor};
/// struct PrintName;
/// impl BackendVisitor for PrintName {
///     type Output = String;
///     fn visit<B: Backend>(self, backend: B) -> String {
///         backend.name().to_string()
///     }
/// }
/// ```
pub trait BackendVisitor {
    /// What the visit returns.
    type Output;
    /// Runs with the concrete backend.
    fn visit<B: Backend>(self, backend: B) -> Self::Output;
}

/// The backend [`discover`] picked. Exhaustive on purpose: a visitor over the discovered
/// backend (this crate's [`BackendVisitor`], or a crate's own with a stronger bound, such as
/// `ascend_kernels::EngineVisitor`) matches every variant.
#[derive(Debug, Clone)]
pub enum Discovered<F: Backend> {
    /// The ACL backend: the CANN runtime loaded and reported devices.
    Acl(AclBackend),
    /// The fallback backend passed to [`discover`] (the CPU backend).
    Fallback(F),
}

/// The outcome of [`discover`]: the backend and why it was chosen.
#[derive(Debug, Clone)]
pub struct Discovery<F: Backend> {
    /// The chosen backend.
    pub backend: Discovered<F>,
    /// Why it was chosen, in a sentence fit for a log line.
    pub reason: String,
}

impl<F: Backend> Discovery<F> {
    /// The chosen backend's name.
    pub fn name(&self) -> &'static str {
        match &self.backend {
            Discovered::Acl(b) => b.name(),
            Discovered::Fallback(f) => f.name(),
        }
    }

    /// Runs `visitor` with the chosen backend.
    pub fn run<V: BackendVisitor>(self, visitor: V) -> V::Output {
        match self.backend {
            Discovered::Acl(b) => visitor.visit(b),
            Discovered::Fallback(f) => visitor.visit(f),
        }
    }
}

impl<F: Backend> fmt::Display for Discovery<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "backend {}: {}", self.name(), self.reason)
    }
}

/// Picks the best available backend, honouring [`BACKEND_ENV`]: the ACL backend when the CANN
/// runtime loads and reports at least one device, else `fallback` (the CPU backend).
pub fn discover<F: Backend>(fallback: impl FnOnce() -> Result<F>) -> Result<Discovery<F>> {
    discover_with(BackendPreference::from_env()?, fallback)
}

/// [`discover`] with an explicit preference instead of the environment.
pub fn discover_with<F: Backend>(
    preference: BackendPreference,
    fallback: impl FnOnce() -> Result<F>,
) -> Result<Discovery<F>> {
    discover_using(preference, AclBackend::load, fallback)
}

/// [`discover_with`] with the ACL loader passed in (tests point it at the fake runtime).
pub fn discover_using<F: Backend>(
    preference: BackendPreference,
    load_acl: impl FnOnce() -> Result<AclBackend>,
    fallback: impl FnOnce() -> Result<F>,
) -> Result<Discovery<F>> {
    let fall_back = |reason: String| -> Result<Discovery<F>> {
        Ok(Discovery {
            backend: Discovered::Fallback(fallback()?),
            reason,
        })
    };
    if preference == BackendPreference::Cpu {
        return fall_back(format!("{BACKEND_ENV}=cpu forces the CPU backend"));
    }
    let acl = load_acl().and_then(|b| {
        let count = b.device_count()?;
        Ok((b, count))
    });
    match (preference, acl) {
        (_, Ok((backend, count))) if count > 0 => {
            let reason = format!(
                "the CANN runtime at {} loaded and reports {count} device(s)",
                backend.library_path()
            );
            Ok(Discovery {
                backend: Discovered::Acl(backend),
                reason,
            })
        }
        (BackendPreference::Acl, Ok((backend, _))) => Err(Error::BackendUnavailable(format!(
            "{BACKEND_ENV}=acl was requested; the CANN runtime at {} loaded but reports no \
             device (check `npu-smi info` and the device nodes; `cargo run --example npu_info` \
             diagnoses it)",
            backend.library_path()
        ))),
        (BackendPreference::Acl, Err(e)) => Err(Error::BackendUnavailable(format!(
            "{BACKEND_ENV}=acl was requested, but the ACL backend is unavailable: {e}"
        ))),
        (_, Ok((backend, _))) => fall_back(format!(
            "the CANN runtime at {} loaded but reports no device, so the CPU backend is used",
            backend.library_path()
        )),
        (_, Err(e)) => fall_back(format!(
            "the ACL backend is unavailable, so the CPU backend is used ({})",
            summarize(&e)
        )),
    }
}

/// A one-line reason for a log, from a possibly long loader error.
fn summarize(e: &Error) -> String {
    match e {
        Error::LibraryNotFound { tried } => format!(
            "libascendcl.so not found in {} place(s); `cargo run --example npu_info` lists them",
            tried.len()
        ),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn preference_parses_and_rejects_with_a_hint() {
        assert_eq!(
            "CPU".parse::<BackendPreference>().unwrap(),
            BackendPreference::Cpu
        );
        assert_eq!(
            "".parse::<BackendPreference>().unwrap(),
            BackendPreference::Auto
        );
        assert_eq!(
            "acl".parse::<BackendPreference>().unwrap(),
            BackendPreference::Acl
        );
        let err = "cuda".parse::<BackendPreference>().unwrap_err();
        let msg = err.to_string();
        assert!(matches!(err, Error::InvalidArgument { .. }));
        assert!(
            msg.contains("\"cuda\"") && msg.contains("`cpu`, `acl` or `auto`"),
            "{msg}"
        );
    }
}

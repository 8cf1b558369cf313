//! The loaded ACL runtime of this process: the function table, and `aclInit`/`aclFinalize`
//! done once however many backends, devices and threads use it.
//!
//! ACL is initialised per process, so there is at most one live [`Runtime`]; every
//! [`AclBackend`](super::AclBackend) (and through it every device, stream, event and allocation)
//! holds it. The first `load` calls `aclInit`; when the last holder is dropped, `aclFinalize`
//! runs, unless another library in the process had initialised ACL first (`aclInit` answered
//! `ACL_ERROR_REPEAT_INITIALIZE`), in which case finalising is its business, as torch_npu does.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};

use super::loader::{self, LoadOptions};
use super::result;
use super::sys::AclApi;
use crate::error::{Error, Result};

/// Which ACL API this crate needs at least; named by the missing-symbol error.
const NEEDS: &str = "the ACL runtime API of CANN 7.0 or later";

/// The loaded library and its function table.
pub(crate) struct Runtime {
    pub(crate) api: AclApi,
    /// The library's path, as loaded.
    pub(crate) path: String,
    /// Whether this runtime owes the process an `aclFinalize`.
    finalize_on_drop: AtomicBool,
}

static CURRENT: Mutex<Weak<Runtime>> = Mutex::new(Weak::new());

impl Runtime {
    /// The live runtime, if a backend holds one.
    pub(crate) fn current() -> Option<Arc<Runtime>> {
        CURRENT.lock().unwrap_or_else(|p| p.into_inner()).upgrade()
    }

    /// The live runtime, or a new one loaded from the first candidate of `options` that loads.
    pub(crate) fn acquire(
        options: &LoadOptions,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Arc<Runtime>> {
        let mut current = CURRENT.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(rt) = current.upgrade() {
            return Ok(rt);
        }
        let candidates = loader::candidates(options, env, std::path::Path::new("/"));
        let (lib, path) =
            loader::open(&candidates).map_err(|tried| Error::LibraryNotFound { tried })?;
        // SAFETY: `lib` is the ACL runtime (or its fake) found by the loader; its exported
        // symbols of these names have the signatures declared in `sys.rs`, written from the
        // CANN headers.
        let api = unsafe { AclApi::resolve(lib) }.map_err(|symbol| Error::MissingSymbol {
            library: path.clone(),
            symbol,
            needs: NEEDS,
        })?;
        let finalize_on_drop = result::init(&api)?;
        let rt = Arc::new(Runtime {
            api,
            path,
            finalize_on_drop: AtomicBool::new(finalize_on_drop),
        });
        *current = Arc::downgrade(&rt);
        Ok(rt)
    }
}

impl Drop for Runtime {
    fn drop(&mut self) {
        // Under the lock, so that an `acquire` racing with this drop either sees ACL finalised
        // and initialises it again, or has already initialised a successor, which then takes
        // over the duty to finalise (its own `aclInit` saw ACL still initialised).
        let current = CURRENT.lock().unwrap_or_else(|p| p.into_inner());
        let owed = self.finalize_on_drop.load(Ordering::Acquire);
        match current.upgrade() {
            Some(successor) => successor.finalize_on_drop.fetch_or(owed, Ordering::AcqRel),
            None if owed => {
                // Nothing is left to report to: every ACL object of this runtime is gone.
                let _ = result::finalize(&self.api);
                false
            }
            None => false,
        };
    }
}

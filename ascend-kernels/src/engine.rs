//! Entering an engine's generic code from a discovered backend.
//!
//! `ascend_hal::discover` (or `hal_mock::discover`) picks a backend at start-up; an engine's
//! code is generic over what it needs of it. [`EngineBackend`] is that bound for an inference
//! engine: the kernels ([`KernelOps`]) and communicator groups
//! ([`CollectiveBackend`](ascend_hal::comm::CollectiveBackend)), which both the ACL backend and
//! the CPU backend have. An [`EngineVisitor`] is the generic body; [`RunEngine::run_engine`]
//! calls it with whichever backend was discovered.
//!
//! ```
//! use ascend_hal::prelude::*;
//! use ascend_kernels::{EngineBackend, EngineVisitor, RunEngine, RmsNorm};
//!
//! /// An engine's generic code: here, one RMSNorm on device 0.
//! struct Normalise(Vec<f32>);
//!
//! impl EngineVisitor for Normalise {
//!     type Output = ascend_hal::Result<Vec<f32>>;
//!     fn visit<B: EngineBackend>(self, backend: B) -> Self::Output {
//!         let stream = backend.device(0)?.new_stream()?;
//!         let p = RmsNorm { num_tokens: 1, hidden: self.0.len(), eps: 1e-6 };
//!         let x = DeviceBuffer::<B, f32>::from_slice(&stream, &self.0)?;
//!         let w = DeviceBuffer::<B, f32>::from_slice(&stream, &vec![1.0; self.0.len()])?;
//!         let mut y = DeviceBuffer::<B, f32>::zeros(&stream, self.0.len())?;
//!         B::rms_norm(&stream, &p, y.view_mut(), x.view(), w.view())?;
//!         stream.clone_to_host(&y)
//!     }
//! }
//!
//! # fn main() -> ascend_hal::Result<()> {
//! // hal_mock::discover() in an engine; the CPU backend here.
//! let discovery = ascend_hal::discover_with(ascend_hal::BackendPreference::Cpu, || {
//!     Ok(hal_mock::CpuBackend::new())
//! })?;
//! let y = discovery.run_engine(Normalise(vec![3.0, 4.0]))?;
//! assert!((y[0] - 3.0 / 12.5f32.sqrt()).abs() < 1e-5);
//! # Ok(()) }
//! ```

use ascend_hal::comm::CollectiveBackend;
use ascend_hal::{Discovered, Discovery};

use crate::KernelOps;

/// What an inference engine needs of a backend: kernels on its streams and communicator
/// groups across its devices. Every backend with both is one.
pub trait EngineBackend: KernelOps + CollectiveBackend {}

impl<B: KernelOps + CollectiveBackend> EngineBackend for B {}

/// An engine's code, generic over the backend (Rust has no generic closures).
pub trait EngineVisitor {
    /// What the visit returns.
    type Output;
    /// Runs with the concrete backend.
    fn visit<B: EngineBackend>(self, backend: B) -> Self::Output;
}

/// Runs an [`EngineVisitor`] on a discovered backend.
pub trait RunEngine {
    /// Calls `visitor` with the discovered backend.
    fn run_engine<V: EngineVisitor>(self, visitor: V) -> V::Output;
}

impl<F: EngineBackend> RunEngine for Discovery<F> {
    fn run_engine<V: EngineVisitor>(self, visitor: V) -> V::Output {
        match self.backend {
            Discovered::Acl(b) => visitor.visit(b),
            Discovered::Fallback(f) => visitor.visit(f),
        }
    }
}

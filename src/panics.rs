//! Containing panics (docs/DESIGN.md, "Panics"): a panic in one request or one round of
//! upkeep is caught where that unit of work began, so the thread goes on with the next.

use std::panic::{catch_unwind, AssertUnwindSafe};

/// Run `f`; if it panics, the panic's message instead of its result. Locks are
/// `parking_lot`'s and do not poison, so what the panic held is free again.
pub fn catch<T>(f: impl FnOnce() -> T) -> Result<T, String> {
    catch_unwind(AssertUnwindSafe(f)).map_err(|p| {
        p.downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| p.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "a panic without a message".into())
    })
}

//! Fault injection for the tests of the panic policy (docs/DESIGN.md, "Panics").
//!
//! `DECOFS_INJECT_PANIC=NAME` in a daemon's environment makes every record update of a
//! node whose name hint is NAME panic while it holds that node's stripe lock, the worst
//! place a bug could panic. Read once; unset (always, outside the tests) it costs one
//! load of an initialised `OnceLock` per update.

use std::sync::OnceLock;

use super::NodeRecord;

const ENV: &str = "DECOFS_INJECT_PANIC";

fn armed() -> Option<&'static [u8]> {
    static NAME: OnceLock<Option<Vec<u8>>> = OnceLock::new();
    NAME.get_or_init(|| {
        use std::os::unix::ffi::OsStringExt;
        std::env::var_os(ENV).map(|v| v.into_vec())
    })
    .as_deref()
}

/// Panic if a panic is injected for this record's node.
pub(crate) fn update_point(rec: &NodeRecord) {
    if let Some(name) = armed() {
        if rec.name == name {
            panic!(
                "{ENV}: injected panic updating {:?}",
                String::from_utf8_lossy(name)
            );
        }
    }
}

//! What this host's kernel says about mounts and processes: `/proc/self/mountinfo` and
//! `/proc/PID/stat`. Used by the daemon (mountpoint checks, unmount) and by the control
//! client (which store a path on the command line lives in); depends on nothing else in
//! the crate.

use std::fs;
use std::path::{Path, PathBuf};

/// One mount as /proc/self/mountinfo lists it.
#[derive(Debug)]
pub struct MountEntry {
    pub mountpoint: PathBuf,
    pub fstype: String,
    pub source: String,
    /// "major:minor" of the mounted filesystem (names its /sys/class/bdi entry).
    pub dev: String,
    /// Mounted read-only (the kernel's per-mount `ro`).
    pub ro: bool,
}

/// mountinfo escapes space, tab, newline and backslash as `\ooo` (octal).
pub(crate) fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            out.push(u8::from_str_radix(&s[i + 1..i + 4], 8).unwrap_or(b'?'));
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Every mount this process sees, in mount order.
pub fn mounts() -> Vec<MountEntry> {
    let text = fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    text.lines()
        .filter_map(|l| {
            let (a, b) = l.split_once(" - ")?;
            let mut fields = a.split(' ');
            let dev = fields.nth(2)?.to_string();
            let mp = fields.nth(1)?;
            let ro = fields.next()?.split(',').any(|o| o == "ro");
            let mut rest = b.split(' ');
            Some(MountEntry {
                dev,
                ro,
                mountpoint: PathBuf::from(unescape(mp)),
                fstype: rest.next()?.to_string(),
                source: unescape(rest.next()?),
            })
        })
        .collect()
}

/// The topmost mount on `p` (a canonical path), if any.
pub fn mount_at(p: &Path) -> Option<MountEntry> {
    mounts().into_iter().rev().find(|m| m.mountpoint == p)
}

/// The start time of a process (clock ticks since boot), which with its pid names it
/// uniquely even after the pid is reused. None for a process that is gone or a zombie.
pub fn proc_starttime(pid: i32) -> Option<u64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = stat.rsplit_once(')')?.1;
    let mut f = after.split_whitespace();
    if f.next()? == "Z" {
        return None;
    }
    f.nth(18)?.parse().ok()
}

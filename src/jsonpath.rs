//! Paths in JSON messages (the control protocol, `--json` output, `decofs status`).
//!
//! A path is a JSON string when it is UTF-8, else `{"hex": "..."}` of its bytes, so
//! names that are not UTF-8 survive the trip. This module depends on nothing else in
//! the crate, so every layer (the index included) may use it.

use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};

use serde::de::Error as _;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::{json, Value};

/// A path as JSON: a string, or `{"hex": "..."}` for a path that is not UTF-8.
pub fn path_to_json(p: &Path) -> Value {
    match p.to_str() {
        Some(s) => json!(s),
        None => {
            json!({"hex": p.as_os_str().as_bytes().iter().map(|b| format!("{b:02x}")).collect::<String>()})
        }
    }
}

/// The inverse of `path_to_json` (None for null or malformed values).
pub fn json_to_path(v: &Value) -> Option<PathBuf> {
    if let Some(s) = v.as_str() {
        return Some(PathBuf::from(s));
    }
    let hex = v.get("hex")?.as_str()?;
    let bytes: Option<Vec<u8>> = (0..hex.len())
        .step_by(2)
        .map(|i| {
            hex.get(i..i + 2)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
        })
        .collect();
    Some(PathBuf::from(OsString::from_vec(bytes?)))
}

/// A JSON path for people: lossy where it is not UTF-8.
pub fn show_path(v: &Value) -> Option<String> {
    json_to_path(v).map(|p| p.to_string_lossy().into_owned())
}

/// A path field of a typed message, encoded as `path_to_json` does.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct WirePath(pub PathBuf);

impl WirePath {
    pub fn new(p: impl Into<PathBuf>) -> WirePath {
        WirePath(p.into())
    }

    /// A path given as raw bytes (names inside the store are bytes).
    pub fn from_bytes(b: &[u8]) -> WirePath {
        WirePath(PathBuf::from(OsStr::from_bytes(b)))
    }

    pub fn as_bytes(&self) -> &[u8] {
        self.0.as_os_str().as_bytes()
    }

    /// For people: lossy where it is not UTF-8.
    pub fn show(&self) -> String {
        self.0.to_string_lossy().into_owned()
    }
}

impl Serialize for WirePath {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        path_to_json(&self.0).serialize(s)
    }
}

impl<'de> Deserialize<'de> for WirePath {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<WirePath, D::Error> {
        let v = Value::deserialize(d)?;
        json_to_path(&v).map(WirePath).ok_or_else(|| {
            D::Error::custom(format!("a path is a string or {{\"hex\": ...}}, not {v}"))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_that_are_not_utf8_survive() {
        let p = WirePath::from_bytes(b"a/\xff\x00b");
        let v = serde_json::to_value(&p).unwrap();
        assert_eq!(v, json!({"hex": "612fff0062"}));
        assert_eq!(serde_json::from_value::<WirePath>(v).unwrap(), p);
        let s = serde_json::to_value(WirePath::new("x/y")).unwrap();
        assert_eq!(s, json!("x/y"));
        assert!(serde_json::from_value::<WirePath>(json!(3)).is_err());
        assert_eq!(
            serde_json::from_value::<Option<WirePath>>(Value::Null).unwrap(),
            None
        );
    }
}

//! Ground-floor helpers every domain of the daemon may use, and that import nothing of the daemon:
//! content hashes, the canonical JSON that record and report hashes are taken over, durable file writes,
//! the one text form of an address that the database and the reports store, and the parsing of the
//! integers, addresses and hashes that requests carry as text.

use std::path::Path;
use std::str::FromStr;

use alloy::primitives::{Address, B256, U256};
use openledger_model::ModelError;
use serde_json::Value;
use sha2::{Digest, Sha256};

/// SHA-256 of `bytes`.
pub fn sha256(bytes: &[u8]) -> B256 {
    B256::from_slice(&Sha256::digest(bytes))
}

/// SHA-256 of `bytes` as 0x-prefixed lowercase hex.
pub fn sha256_hex(bytes: &[u8]) -> String {
    sha256(bytes).to_string()
}

/// `v` with object keys sorted at every level, whatever order its maps keep (serde_json's `preserve_order`,
/// which the grammar engine's crates turn on for the whole build, keeps insertion order): for files whose
/// bytes are hashed.
pub fn sorted_keys(v: Value) -> Value {
    match v {
        Value::Object(m) => {
            let mut entries: Vec<(String, Value)> = m.into_iter().collect();
            entries.sort_by(|a, b| a.0.cmp(&b.0));
            Value::Object(
                entries
                    .into_iter()
                    .map(|(k, v)| (k, sorted_keys(v)))
                    .collect(),
            )
        }
        Value::Array(a) => Value::Array(a.into_iter().map(sorted_keys).collect()),
        other => other,
    }
}

/// JSON with object keys sorted at every level and no whitespace: what record hashes are taken over.
pub fn canonical_json(v: &Value) -> String {
    fn write(v: &Value, out: &mut String) {
        match v {
            Value::Object(m) => {
                let mut keys: Vec<&String> = m.keys().collect();
                keys.sort();
                out.push('{');
                for (i, k) in keys.into_iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    out.push_str(&Value::String(k.clone()).to_string());
                    out.push(':');
                    write(&m[k], out);
                }
                out.push('}');
            }
            Value::Array(a) => {
                out.push('[');
                for (i, x) in a.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    write(x, out);
                }
                out.push(']');
            }
            other => out.push_str(&other.to_string()),
        }
    }
    let mut s = String::new();
    write(v, &mut s);
    s
}

/// Writes `bytes` to `path` and flushes them to disk.
pub fn write_synced(path: &Path, bytes: &[u8]) -> Result<(), ModelError> {
    use std::io::Write;
    let mut f = std::fs::File::create(path).map_err(|e| ModelError::io(path, e))?;
    f.write_all(bytes).map_err(|e| ModelError::io(path, e))?;
    f.sync_all().map_err(|e| ModelError::io(path, e))
}

/// An address as 0x-prefixed lowercase hex: how the database, the reports and the API store and show it.
pub fn hex_addr(a: Address) -> String {
    format!("{a:#x}")
}

/// A uint256 written in decimal, as on-chain integers travel in requests; the error names `what`.
pub fn parse_u256(what: &str, s: &str) -> Result<U256, String> {
    if s.is_empty() || s.len() > 78 || !s.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!("{what} must be a decimal integer, got {s:?}"));
    }
    U256::from_str_radix(s, 10).map_err(|_| format!("{what} is out of the uint256 range"))
}

/// A 0x-prefixed 20-byte address; the error names `what`.
pub fn parse_address(what: &str, s: &str) -> Result<Address, String> {
    if !(s.len() == 42 && s.starts_with("0x")) {
        return Err(format!(
            "{what} must be a 0x-prefixed 20-byte hex address, got {s:?}"
        ));
    }
    Address::from_str(s).map_err(|e| format!("{what}: {e}"))
}

/// A 0x-prefixed 32-byte hash; the error names `what`.
pub fn parse_hash(what: &str, s: &str) -> Result<B256, String> {
    if !(s.len() == 66 && s.starts_with("0x")) {
        return Err(format!(
            "{what} must be a 0x-prefixed 32-byte hex hash, got {s:?}"
        ));
    }
    B256::from_str(s).map_err(|e| format!("{what}: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn sorted_keys_sorts_every_level_whatever_the_insertion_order() {
        let mut inner = serde_json::Map::new();
        inner.insert("z".into(), Value::from(1));
        inner.insert("a".into(), Value::from(2));
        let mut outer = serde_json::Map::new();
        outer.insert("y".into(), Value::Array(vec![Value::Object(inner)]));
        outer.insert("b".into(), Value::Null);
        let text = serde_json::to_string(&sorted_keys(Value::Object(outer))).unwrap();
        assert_eq!(text, r#"{"b":null,"y":[{"a":2,"z":1}]}"#);
    }

    #[test]
    fn canonical_json_sorts_keys_at_every_level_and_drops_whitespace() {
        let v = json!({ "b": [ { "z": 1, "a": "x y" } ], "a": null });
        assert_eq!(canonical_json(&v), r#"{"a":null,"b":[{"a":"x y","z":1}]}"#);
    }

    #[test]
    fn the_hex_forms_agree() {
        assert_eq!(
            sha256_hex(b"abc"),
            "0xba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_eq!(sha256(b"abc").to_string(), sha256_hex(b"abc"));
        let a: Address = "0x5FbDB2315678afecb367f032d93F642f64180aa3"
            .parse()
            .unwrap();
        assert_eq!(hex_addr(a), "0x5fbdb2315678afecb367f032d93f642f64180aa3");
        assert_eq!(parse_address("payer", &hex_addr(a)), Ok(a));
    }

    #[test]
    fn bad_text_is_refused_with_its_name() {
        assert!(
            parse_u256("amount", "-1")
                .unwrap_err()
                .starts_with("amount must be")
        );
        assert!(
            parse_u256("amount", &"9".repeat(78))
                .unwrap_err()
                .contains("uint256 range")
        );
        assert_eq!(parse_u256("amount", "42"), Ok(U256::from(42)));
        assert!(
            parse_address("payer", "0x12")
                .unwrap_err()
                .starts_with("payer must be")
        );
        assert!(
            parse_hash("request_id", &format!("0x{}", "zz".repeat(32)))
                .unwrap_err()
                .starts_with("request_id: ")
        );
    }
}

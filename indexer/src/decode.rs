//! Logs -> named, JSON-typed events, using the committed ABIs of the deployment's contracts.

use std::collections::HashMap;
use std::sync::Arc;

use alloy::dyn_abi::{DynSolEvent, DynSolValue, Specifier};
use alloy::json_abi::{Event, JsonAbi};
use alloy::primitives::{Address, B256, hex};
use alloy::rpc::types::Log;
use openledger_chain::{ContractKind, Deployment};
use serde_json::{Map, Value};

use crate::IndexerError;

/// One decoded event, ready for `chain_events`.
#[derive(Debug, Clone, PartialEq)]
pub struct DecodedEvent {
    pub block_number: u64,
    pub block_hash: B256,
    pub tx_hash: B256,
    pub tx_index: u64,
    pub log_index: u64,
    pub address: Address,
    pub contract: &'static str,
    pub event: Arc<str>,
    /// Arguments by ABI name: addresses and hashes as lowercase 0x-hex, integers as decimal strings.
    pub args: Value,
}

/// Why a log was not turned into an event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Skip {
    /// Emitted by an address that is not part of the deployment.
    ForeignAddress,
    /// A topic the contract's ABI does not know (e.g. a contract upgraded past the committed ABIs).
    UnknownEvent { topic0: Option<B256> },
    /// The log does not match its event's ABI.
    Undecodable(String),
}

struct EventSpec {
    kind: ContractKind,
    name: Arc<str>,
    /// (name, indexed) in declaration order
    params: Vec<(String, bool)>,
    resolved: DynSolEvent,
}

/// Decodes the logs of one deployment.
pub struct EventDecoder {
    by_topic: HashMap<(Address, B256), EventSpec>,
    addresses: Vec<Address>,
}

impl std::fmt::Debug for EventDecoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventDecoder")
            .field("addresses", &self.addresses)
            .field("events", &self.by_topic.len())
            .finish()
    }
}

impl EventDecoder {
    pub fn new(deployment: &Deployment) -> Result<Self, IndexerError> {
        let mut by_topic = HashMap::new();
        let mut addresses = Vec::new();
        for kind in ContractKind::ALL {
            let address = deployment.address(kind)?;
            addresses.push(address);
            let abi: JsonAbi = serde_json::from_str(kind.abi_json())
                .map_err(|e| IndexerError::Abi(format!("{}: {e}", kind.name())))?;
            for event in abi.events() {
                if event.anonymous {
                    continue;
                }
                by_topic.insert((address, event.selector()), spec(kind, event)?);
            }
        }
        Ok(Self {
            by_topic,
            addresses,
        })
    }

    /// The deployment's contract addresses (the log filter).
    pub fn addresses(&self) -> &[Address] {
        &self.addresses
    }

    /// Number of (contract, event) pairs known.
    pub fn event_count(&self) -> usize {
        self.by_topic.len()
    }

    pub fn decode(&self, log: &Log) -> Result<DecodedEvent, Skip> {
        let address = log.address();
        if !self.addresses.contains(&address) {
            return Err(Skip::ForeignAddress);
        }
        let topic0 = log.topic0().copied();
        let spec = topic0
            .and_then(|t| self.by_topic.get(&(address, t)))
            .ok_or(Skip::UnknownEvent { topic0 })?;
        let decoded = spec
            .resolved
            .decode_log_data(log.data())
            .map_err(|e| Skip::Undecodable(e.to_string()))?;
        let mut indexed = decoded.indexed.into_iter();
        let mut body = decoded.body.into_iter();
        let mut args = Map::with_capacity(spec.params.len());
        for (name, is_indexed) in &spec.params {
            let value = if *is_indexed {
                indexed.next()
            } else {
                body.next()
            };
            let value =
                value.ok_or_else(|| Skip::Undecodable(format!("missing argument {name}")))?;
            args.insert(name.clone(), to_json(&value));
        }
        let missing =
            |what: &str| Skip::Undecodable(format!("log without {what} (a pending log?)"));
        Ok(DecodedEvent {
            block_number: log.block_number.ok_or_else(|| missing("block number"))?,
            block_hash: log.block_hash.ok_or_else(|| missing("block hash"))?,
            tx_hash: log
                .transaction_hash
                .ok_or_else(|| missing("transaction hash"))?,
            tx_index: log
                .transaction_index
                .ok_or_else(|| missing("transaction index"))?,
            log_index: log.log_index.ok_or_else(|| missing("log index"))?,
            address,
            contract: spec.kind.name(),
            event: spec.name.clone(),
            args: Value::Object(args),
        })
    }
}

fn spec(kind: ContractKind, event: &Event) -> Result<EventSpec, IndexerError> {
    let resolved = event
        .resolve()
        .map_err(|e| IndexerError::Abi(format!("{}.{}: {e}", kind.name(), event.name)))?;
    let params = event
        .inputs
        .iter()
        .enumerate()
        .map(|(i, p)| {
            let name = if p.name.is_empty() {
                format!("arg{i}")
            } else {
                p.name.clone()
            };
            (name, p.indexed)
        })
        .collect();
    Ok(EventSpec {
        kind,
        name: Arc::from(event.name.as_str()),
        params,
        resolved,
    })
}

/// ABI value -> JSON in the fixed forms of the schema.
pub fn to_json(value: &DynSolValue) -> Value {
    match value {
        DynSolValue::Bool(b) => Value::Bool(*b),
        DynSolValue::Int(i, _) => Value::String(i.to_string()),
        DynSolValue::Uint(u, _) => Value::String(u.to_string()),
        DynSolValue::FixedBytes(word, size) => Value::String(hex::encode_prefixed(&word[..*size])),
        DynSolValue::Address(a) => Value::String(format!("{a:#x}")),
        DynSolValue::Function(f) => Value::String(hex::encode_prefixed(f.as_slice())),
        DynSolValue::Bytes(b) => Value::String(hex::encode_prefixed(b)),
        DynSolValue::String(s) => Value::String(s.clone()),
        DynSolValue::Array(items) | DynSolValue::FixedArray(items) | DynSolValue::Tuple(items) => {
            Value::Array(items.iter().map(to_json).collect())
        }
        #[allow(unreachable_patterns)]
        other => Value::String(format!("{other:?}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloy::primitives::{U256, address, b256};

    #[test]
    fn json_forms_are_fixed() {
        assert_eq!(
            to_json(&DynSolValue::Uint(U256::MAX, 256)),
            Value::String(U256::MAX.to_string())
        );
        assert_eq!(
            to_json(&DynSolValue::Address(address!(
                "0xF39Fd6e51aad88F6F4ce6aB8827279cffFb92266"
            ))),
            Value::String("0xf39fd6e51aad88f6f4ce6ab8827279cfffb92266".into())
        );
        let h = b256!("0x00000000000000000000000000000000000000000000000000000000000000ff");
        assert_eq!(
            to_json(&DynSolValue::FixedBytes(h, 32))
                .as_str()
                .map(str::len),
            Some(66)
        );
        assert_eq!(
            to_json(&DynSolValue::Array(vec![
                DynSolValue::Bool(true),
                DynSolValue::String("x".into())
            ])),
            serde_json::json!([true, "x"])
        );
    }
}

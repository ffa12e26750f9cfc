//! `deployments/<chainId>.json`, as written by `scripts/deploy.sh`.

use std::collections::BTreeMap;
use std::path::Path;

use alloy::primitives::{Address, B256};
use serde::{Deserialize, Serialize};

use crate::ContractKind;

#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    #[error("cannot read deployment manifest {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("deployment manifest {path} is not valid: {source}")]
    Parse {
        path: String,
        source: serde_json::Error,
    },
    #[error("deployment manifest lacks contract {0}")]
    MissingContract(&'static str),
}

/// One deployed contract.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContractInfo {
    pub address: Address,
    /// Block of the deployment transaction: nothing of this contract exists before it.
    pub block: u64,
    #[serde(rename = "txHash")]
    pub tx_hash: B256,
}

/// Role holders as wired by the deployment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Roles {
    pub admin: Address,
    pub treasury: Address,
    pub governor: Address,
    pub settlers: Vec<Address>,
    pub revokers: Vec<Address>,
    pub slashers: Vec<Address>,
}

/// A deployment of the whole suite on one chain.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Deployment {
    #[serde(rename = "chainId")]
    pub chain_id: u64,
    pub deployer: Address,
    pub config: String,
    /// The first block holding any of the suite's contracts.
    #[serde(rename = "startBlock")]
    pub start_block: u64,
    pub contracts: BTreeMap<String, ContractInfo>,
    pub roles: Roles,
}

impl Deployment {
    pub fn load(path: impl AsRef<Path>) -> Result<Self, ManifestError> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|source| ManifestError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Self::parse(&text).map_err(|source| ManifestError::Parse {
            path: path.display().to_string(),
            source,
        })
    }

    pub fn parse(text: &str) -> Result<Self, serde_json::Error> {
        serde_json::from_str(text)
    }

    /// Every contract of the suite must be present.
    pub fn validate(&self) -> Result<(), ManifestError> {
        for kind in ContractKind::ALL {
            if !self.contracts.contains_key(kind.name()) {
                return Err(ManifestError::MissingContract(kind.name()));
            }
        }
        Ok(())
    }

    pub fn contract(&self, kind: ContractKind) -> Result<&ContractInfo, ManifestError> {
        self.contracts
            .get(kind.name())
            .ok_or(ManifestError::MissingContract(kind.name()))
    }

    pub fn address(&self, kind: ContractKind) -> Result<Address, ManifestError> {
        Ok(self.contract(kind)?.address)
    }

    /// A stable identity of the contract set: the lowercase address of its token. Checkpoints are kept per
    /// chain and per contract set, so two deployments on one chain index independently.
    pub fn key(&self) -> Result<String, ManifestError> {
        Ok(format!("{:#x}", self.address(ContractKind::OpenToken)?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = r#"{
      "chainId": 7331, "deployer": "0xf39fd6e51aad88f6f4ce6ab8827279cfffb92266", "config": "local.json",
      "startBlock": 1,
      "contracts": {
        "TimelockController": {"address": "0x5fbdb2315678afecb367f032d93f642f64180aa3", "block": 1, "txHash": "0xcf6acda5663de5fdc348cde2c1e3082ffa01e8b45ac98c0e65f07a5ac8ef18da"},
        "OpenToken": {"address": "0xe7f1725e7734ce288f8367e1bb143e90bb3f0512", "block": 2, "txHash": "0xb473838acea28ced0d5f3e7b352549afadd1c5212cce5190d496e9b8097f339e"}
      },
      "roles": {"admin": "0x5fbdb2315678afecb367f032d93f642f64180aa3", "treasury": "0x5fbdb2315678afecb367f032d93f642f64180aa3",
        "governor": "0x9fe46736679d2d9a65f0992f2272de9f3c7fa6e0", "settlers": [], "revokers": [], "slashers": []}
    }"#;

    #[test]
    fn parses_and_reports_missing_contracts() {
        let d = Deployment::parse(SAMPLE).unwrap();
        assert_eq!(d.chain_id, 7331);
        assert_eq!(d.contract(ContractKind::OpenToken).unwrap().block, 2);
        assert_eq!(
            d.key().unwrap(),
            "0xe7f1725e7734ce288f8367e1bb143e90bb3f0512"
        );
        assert!(matches!(
            d.validate(),
            Err(ManifestError::MissingContract("OpenGovernor"))
        ));
    }

    #[test]
    fn every_abi_parses() {
        for kind in ContractKind::ALL {
            let abi: alloy::json_abi::JsonAbi = serde_json::from_str(kind.abi_json()).unwrap();
            assert!(abi.events().count() > 0, "{} has events", kind.name());
            assert_eq!(ContractKind::from_name(kind.name()), Some(kind));
        }
    }
}

//! Contract bindings generated from the committed ABIs (`contracts/abi/*.json`), the raw ABIs for dynamic
//! decoding, and the deployment manifest written by `scripts/deploy.sh`.

pub mod bindings;
pub mod manifest;
pub mod merkle;
pub mod revert;

pub use manifest::{ContractInfo, Deployment, ManifestError, Roles};

/// The contracts of one deployment, in deployment order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ContractKind {
    TimelockController,
    OpenToken,
    OpenGovernor,
    Registry,
    RewardDistributor,
    FeeRouter,
    Staking,
}

impl ContractKind {
    pub const ALL: [ContractKind; 7] = [
        ContractKind::TimelockController,
        ContractKind::OpenToken,
        ContractKind::OpenGovernor,
        ContractKind::Registry,
        ContractKind::RewardDistributor,
        ContractKind::FeeRouter,
        ContractKind::Staking,
    ];

    /// The contract's name, as in the manifest and the `contract` column of `chain_events`.
    pub fn name(self) -> &'static str {
        match self {
            ContractKind::TimelockController => "TimelockController",
            ContractKind::OpenToken => "OpenToken",
            ContractKind::OpenGovernor => "OpenGovernor",
            ContractKind::Registry => "Registry",
            ContractKind::RewardDistributor => "RewardDistributor",
            ContractKind::FeeRouter => "FeeRouter",
            ContractKind::Staking => "Staking",
        }
    }

    /// The committed ABI (JSON array), compiled in so no file is read at run time.
    pub fn abi_json(self) -> &'static str {
        match self {
            ContractKind::TimelockController => {
                include_str!("../../../contracts/abi/TimelockController.json")
            }
            ContractKind::OpenToken => include_str!("../../../contracts/abi/OpenToken.json"),
            ContractKind::OpenGovernor => include_str!("../../../contracts/abi/OpenGovernor.json"),
            ContractKind::Registry => include_str!("../../../contracts/abi/Registry.json"),
            ContractKind::RewardDistributor => {
                include_str!("../../../contracts/abi/RewardDistributor.json")
            }
            ContractKind::FeeRouter => include_str!("../../../contracts/abi/FeeRouter.json"),
            ContractKind::Staking => include_str!("../../../contracts/abi/Staking.json"),
        }
    }

    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.name() == name)
    }
}

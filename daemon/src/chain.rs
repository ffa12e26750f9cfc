//! The daemon's side of the chain: reads it needs at request time (contributor nonces), the EIP-712 payload
//! contributors sign, the daemon's own funded key that relays and publishes, and the one way it sends a
//! transaction (`Chain::send` then `Chain::confirm`: simulate, sign, record, broadcast, follow until mined,
//! re-sent with higher fees while it waits; a revert is final; see `sends`).

use std::path::PathBuf;
use std::time::Duration;

use alloy::network::{Ethereum, EthereumWallet};
use alloy::primitives::{Address, B256, U256};
use alloy::providers::{DynProvider, PendingTransactionBuilder, Provider, ProviderBuilder};
use alloy::rpc::types::TransactionReceipt;
use alloy::signers::local::PrivateKeySigner;
use alloy::sol_types::{SolStruct, eip712_domain};
use openledger_chain::bindings::Registry;
use openledger_chain::{ContractKind, Deployment};
use serde_json::{Value, json};

mod sends;
pub use sends::{DEFAULT_BUMP_AFTER_SECS, DEFAULT_BUMP_PERCENT, NonceLease, SendPolicy, Sent};

alloy::sol! {
    /// Mirrors `Registry.CONTRIBUTE_TYPEHASH`.
    #[derive(Debug)]
    struct Contribute {
        address contributor;
        uint256 datanetId;
        bytes32 contentHash;
        string metadataURI;
        uint256 nonce;
        uint256 deadline;
    }
}

alloy::sol! {
    /// ERC-1271: how a contract wallet says a signature is its own.
    #[sol(rpc)]
    interface IERC1271 {
        function isValidSignature(bytes32 hash, bytes signature) external view returns (bytes4 magicValue);
    }
}

/// What `isValidSignature` returns for a valid signature (its own selector).
const ERC1271_MAGIC: [u8; 4] = [0x16, 0x26, 0xba, 0x7e];

/// The EIP-712 domain of the Registry (`EIP712("OpenLedger Registry", "1")`).
pub const DOMAIN_NAME: &str = "OpenLedger Registry";
pub const DOMAIN_VERSION: &str = "1";

#[derive(Debug, thiserror::Error)]
pub enum ChainError {
    #[error("no JSON-RPC node at {url}: {detail}")]
    Connect { url: String, detail: String },
    #[error("the node at {url} is chain {node}, the deployment is chain {manifest}")]
    WrongChain {
        url: String,
        node: u64,
        manifest: u64,
    },
    #[error(transparent)]
    Manifest(#[from] openledger_chain::ManifestError),
    #[error("RPC: {0}")]
    Rpc(String),
    #[error("this daemon has no connection to the chain")]
    NotConnected,
    #[error("the daemon has no key (set OPENLEDGER_PRIVATE_KEY or --keystore)")]
    NoKey,
    #[error("bad key: {0}")]
    Key(String),
}

/// Where the key a command sends from comes from (`serve`: the daemon's own; `claim`, `settle`: yours):
/// never a CLI argument, never logged.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct KeyArgs {
    /// An encrypted JSON keystore (Web3 Secret Storage) holding the key this command sends from (for
    /// `serve`, the daemon's); its password comes from OPENLEDGER_KEYSTORE_PASSWORD or
    /// --keystore-password-file. Alternatively put the hex key in OPENLEDGER_PRIVATE_KEY. Without a key
    /// `serve` serves and indexes but does not relay or publish.
    #[arg(long, env = "OPENLEDGER_KEYSTORE")]
    pub keystore: Option<PathBuf>,
    /// File holding the keystore's password.
    #[arg(long, env = "OPENLEDGER_KEYSTORE_PASSWORD_FILE")]
    pub keystore_password_file: Option<PathBuf>,
}

impl KeyArgs {
    /// Loads the key, if one is configured.
    pub fn load(&self) -> Result<Option<PrivateKeySigner>, ChainError> {
        load_signer(
            self.keystore.as_deref(),
            self.keystore_password_file.as_deref(),
            "OPENLEDGER_PRIVATE_KEY",
            "OPENLEDGER_KEYSTORE_PASSWORD",
        )
    }
}

/// The settler's key for `serve --settle-every-secs`: it proposes and accepts reward roots and nothing else.
/// Outside a local devnet it must be given and must not be the daemon's own key (which relays and sponsors
/// from an internet-facing host); on a devnet the daemon's key settles when none is given.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct SettlerKeyArgs {
    /// An encrypted JSON keystore holding the settler's key; its password comes from
    /// OPENLEDGER_SETTLER_KEYSTORE_PASSWORD or --settler-keystore-password-file. Alternatively put the hex
    /// key in OPENLEDGER_SETTLER_PRIVATE_KEY.
    #[arg(long, env = "OPENLEDGER_SETTLER_KEYSTORE")]
    pub settler_keystore: Option<PathBuf>,
    /// File holding the settler keystore's password.
    #[arg(long, env = "OPENLEDGER_SETTLER_KEYSTORE_PASSWORD_FILE")]
    pub settler_keystore_password_file: Option<PathBuf>,
}

impl SettlerKeyArgs {
    /// Loads the settler's key, if one is configured.
    pub fn load(&self) -> Result<Option<PrivateKeySigner>, ChainError> {
        load_signer(
            self.settler_keystore.as_deref(),
            self.settler_keystore_password_file.as_deref(),
            "OPENLEDGER_SETTLER_PRIVATE_KEY",
            "OPENLEDGER_SETTLER_KEYSTORE_PASSWORD",
        )
    }
}

/// A key from a keystore (its password from `password_file` or the `password_env` variable) or from the hex
/// in the `key_env` variable; `None` when neither is configured.
fn load_signer(
    keystore: Option<&std::path::Path>,
    password_file: Option<&std::path::Path>,
    key_env: &str,
    password_env: &str,
) -> Result<Option<PrivateKeySigner>, ChainError> {
    if let Some(path) = keystore {
        let password = match (password_file, std::env::var(password_env)) {
            (Some(f), _) => std::fs::read_to_string(f)
                .map_err(|e| ChainError::Key(format!("reading {}: {e}", f.display())))?
                .trim_end_matches(['\n', '\r'])
                .to_owned(),
            (None, Ok(p)) => p,
            (None, Err(_)) => {
                return Err(ChainError::Key(format!(
                    "a keystore needs {password_env} or a password file"
                )));
            }
        };
        let signer = PrivateKeySigner::decrypt_keystore(path, password)
            .map_err(|e| ChainError::Key(format!("{}: {e}", path.display())))?;
        return Ok(Some(signer));
    }
    match std::env::var(key_env) {
        Ok(k) if !k.trim().is_empty() => k
            .trim()
            .parse::<PrivateKeySigner>()
            // the parse error never echoes the key
            .map(Some)
            .map_err(|_| ChainError::Key(format!("{key_env} is not a 32-byte hex key"))),
        _ => Ok(None),
    }
}

/// A connection to the deployment's chain, with the daemon's key when it has one.
#[derive(Debug, Clone)]
pub struct Chain {
    provider: DynProvider,
    signer: Option<Address>,
    /// The key again, for transactions signed ahead of sending (settlement stores them before broadcast).
    wallet: Option<EthereumWallet>,
    registry: Address,
    chain_id: u64,
    url: String,
    /// Where the key's sends are recorded and its nonces handed out, shared by every process on the
    /// database (`with_send_lock`); without it a send takes the node's pending nonce and is not re-sent.
    sends: Option<sends::Sends>,
}

/// Whether a node's `web3_clientVersion` names a local devnet (anvil, hardhat, ganache).
pub fn is_devnet_client(version: &str) -> bool {
    let v = version.to_ascii_lowercase();
    ["anvil", "hardhat", "ganache"]
        .iter()
        .any(|d| v.starts_with(d))
}

impl Chain {
    pub async fn connect(
        url: &str,
        deployment: &Deployment,
        key: Option<PrivateKeySigner>,
        timeout: Duration,
    ) -> Result<Self, ChainError> {
        let connect_err = |detail: String| ChainError::Connect {
            url: url.to_owned(),
            detail,
        };
        let signer = key.as_ref().map(|k| k.address());
        let wallet = key.map(EthereumWallet::from);
        let provider = match wallet.clone() {
            Some(w) => {
                // nonces asked of the node (pending) for every transaction, not counted in this process:
                // the settler signs its proposals ahead of sending with the same key, and an operator may
                // use it elsewhere; a cached count would go stale and every later send fail
                let p = ProviderBuilder::new()
                    .disable_recommended_fillers()
                    .with_gas_estimation()
                    .with_simple_nonce_management()
                    .fetch_chain_id()
                    .wallet(w);
                tokio::time::timeout(timeout, p.connect(url))
                    .await
                    .map_err(|_| connect_err("timed out".into()))?
                    .map_err(|e| connect_err(e.to_string()))?
                    .erased()
            }
            None => tokio::time::timeout(timeout, ProviderBuilder::new().connect(url))
                .await
                .map_err(|_| connect_err("timed out".into()))?
                .map_err(|e| connect_err(e.to_string()))?
                .erased(),
        };
        let node = tokio::time::timeout(timeout, provider.get_chain_id())
            .await
            .map_err(|_| connect_err("timed out".into()))?
            .map_err(|e| connect_err(e.to_string()))?;
        if node != deployment.chain_id {
            return Err(ChainError::WrongChain {
                url: url.to_owned(),
                node,
                manifest: deployment.chain_id,
            });
        }
        Ok(Self {
            provider,
            signer,
            wallet,
            registry: deployment.address(ContractKind::Registry)?,
            chain_id: deployment.chain_id,
            url: url.to_owned(),
            sends: None,
        })
    }

    pub fn provider(&self) -> &DynProvider {
        &self.provider
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    pub fn chain_id(&self) -> u64 {
        self.chain_id
    }

    pub fn registry_address(&self) -> Address {
        self.registry
    }

    /// The daemon's own address (the relayer), if it has a key.
    pub fn signer(&self) -> Option<Address> {
        self.signer
    }

    /// The daemon's key as a wallet, if it has one.
    pub fn wallet(&self) -> Option<&EthereumWallet> {
        self.wallet.as_ref()
    }

    /// The chain's clock: the latest block's timestamp. Deadlines the contracts check (`block.timestamp`)
    /// are set and compared with this, never the wall clock: a devnet's clock can be moved forward.
    pub async fn now(&self) -> Result<u64, ChainError> {
        let block = self
            .provider
            .get_block_by_number(alloy::eips::BlockNumberOrTag::Latest)
            .await
            .map_err(|e| ChainError::Rpc(e.to_string()))?
            .ok_or_else(|| ChainError::Rpc("the node has no latest block".into()))?;
        Ok(block.header.timestamp)
    }

    pub fn registry(&self) -> Registry::RegistryInstance<DynProvider> {
        Registry::new(self.registry, self.provider.clone())
    }

    /// Whether the node is a local devnet (anvil, hardhat or ganache, by its `web3_clientVersion`): where
    /// OPEN is play money, payments are served at once and the daemon may sponsor without asking.
    pub async fn is_devnet(&self) -> Result<bool, ChainError> {
        let v = self
            .provider
            .get_client_version()
            .await
            .map_err(|e| ChainError::Rpc(e.to_string()))?;
        Ok(is_devnet_client(&v))
    }

    pub async fn head(&self) -> Result<u64, ChainError> {
        self.provider
            .get_block_number()
            .await
            .map_err(|e| ChainError::Rpc(e.to_string()))
    }

    /// Whether the contract at `wallet` accepts `signature` over `hash` (ERC-1271); `false` for an address
    /// without code and for a wallet that refuses or reverts.
    pub async fn is_valid_signature(
        &self,
        wallet: Address,
        hash: B256,
        signature: &[u8],
    ) -> Result<bool, ChainError> {
        let code = self
            .provider
            .get_code_at(wallet)
            .await
            .map_err(|e| ChainError::Rpc(e.to_string()))?;
        if code.is_empty() {
            return Ok(false);
        }
        let call = IERC1271::new(wallet, &self.provider)
            .isValidSignature(hash, signature.to_vec().into())
            .call()
            .await;
        match call {
            Ok(magic) => Ok(magic.0 == ERC1271_MAGIC),
            // a wallet that reverts (or answers nothing decodable) does not accept it
            Err(e)
                if e.as_revert_data().is_some()
                    || matches!(
                        e,
                        alloy::contract::Error::AbiError(_) | alloy::contract::Error::ZeroData(..)
                    ) =>
            {
                Ok(false)
            }
            Err(e) => Err(ChainError::Rpc(e.to_string())),
        }
    }

    /// The contributor's next `contributeWithSig` nonce.
    pub async fn contribute_nonce(&self, contributor: Address) -> Result<U256, ChainError> {
        self.registry()
            .nonces(contributor)
            .call()
            .await
            .map_err(|e| ChainError::Rpc(e.to_string()))
    }
}

/// A contract call the daemon sends from its own key.
pub type Call<'a, D> = alloy::contract::CallBuilder<&'a DynProvider, D>;

/// Why a transaction the daemon sent did not land.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    /// The call reverts, in simulation or once mined: final, sending it again reverts again.
    #[error("{what} {reason}")]
    Reverted { what: String, reason: String },
    /// The node or the network failed (or the receipt did not come in time): worth retrying.
    #[error("{what}: {detail}")]
    Node { what: String, detail: String },
    /// The transaction's nonce went to another transaction of the key: none of its attempts can be mined,
    /// so it never happened (sending it again is safe).
    #[error(
        "{what}: nonce {nonce} of the key went to another transaction; this one was never mined"
    )]
    Dropped { what: String, nonce: u64 },
}

impl SendError {
    /// The node or the network failed doing `what`.
    fn node(what: &str, detail: impl std::fmt::Display) -> Self {
        SendError::Node {
            what: what.to_owned(),
            detail: detail.to_string(),
        }
    }

    fn of(what: &str, e: alloy::contract::Error) -> Self {
        if e.as_revert_data().is_some() {
            SendError::Reverted {
                what: what.to_owned(),
                reason: revert_reason(&e),
            }
        } else {
            SendError::Node {
                what: what.to_owned(),
                detail: e.to_string(),
            }
        }
    }
}

/// Why a call reverted, in words (the contracts' custom errors decoded against their ABIs).
pub fn revert_reason(e: &alloy::contract::Error) -> String {
    match e.as_revert_data() {
        Some(data) => format!("reverted: {}", openledger_chain::revert::describe(&data)),
        None => e.to_string(),
    }
}

/// Simulates `call` (a revert is final and costs no gas), then sends it; the transaction's hash is
/// `pending.tx_hash()`, to record or log before waiting with [`confirm`].
pub async fn send_checked<D: alloy::contract::CallDecoder>(
    what: &str,
    call: &Call<'_, D>,
) -> Result<PendingTransactionBuilder<Ethereum>, SendError> {
    call.call().await.map_err(|e| SendError::of(what, e))?;
    call.send().await.map_err(|e| SendError::of(what, e))
}

/// Waits up to `timeout` for the receipt of a sent transaction; a mined revert is final.
pub async fn confirm(
    what: &str,
    pending: PendingTransactionBuilder<Ethereum>,
    timeout: Duration,
) -> Result<TransactionReceipt, SendError> {
    let tx = *pending.tx_hash();
    let receipt = pending
        .with_timeout(Some(timeout))
        .get_receipt()
        .await
        .map_err(|e| SendError::Node {
            what: what.to_owned(),
            detail: format!("waiting for {tx}: {e}"),
        })?;
    if !receipt.status() {
        return Err(SendError::Reverted {
            what: what.to_owned(),
            reason: format!("{tx} reverted"),
        });
    }
    Ok(receipt)
}

/// [`send_checked`] then [`confirm`]: the successful receipt.
pub async fn send_confirmed<D: alloy::contract::CallDecoder>(
    what: &str,
    call: Call<'_, D>,
    timeout: Duration,
) -> Result<TransactionReceipt, SendError> {
    let pending = send_checked(what, &call).await?;
    confirm(what, pending, timeout).await
}

/// What the contributor signs, both as the digest and as `eth_signTypedData_v4` JSON (which `cast wallet
/// sign --data` and wallets take as is).
#[derive(Debug, Clone)]
pub struct ContributePayload {
    pub message: Contribute,
    pub digest: B256,
    pub typed_data: Value,
}

pub fn contribute_payload(
    chain_id: u64,
    registry: Address,
    message: Contribute,
) -> ContributePayload {
    let domain = eip712_domain! {
        name: DOMAIN_NAME,
        version: DOMAIN_VERSION,
        chain_id: chain_id,
        verifying_contract: registry,
    };
    let digest = message.eip712_signing_hash(&domain);
    let typed_data = json!({
        "types": {
            "EIP712Domain": [
                {"name": "name", "type": "string"},
                {"name": "version", "type": "string"},
                {"name": "chainId", "type": "uint256"},
                {"name": "verifyingContract", "type": "address"},
            ],
            "Contribute": [
                {"name": "contributor", "type": "address"},
                {"name": "datanetId", "type": "uint256"},
                {"name": "contentHash", "type": "bytes32"},
                {"name": "metadataURI", "type": "string"},
                {"name": "nonce", "type": "uint256"},
                {"name": "deadline", "type": "uint256"},
            ],
        },
        "primaryType": "Contribute",
        "domain": {
            "name": DOMAIN_NAME,
            "version": DOMAIN_VERSION,
            "chainId": chain_id,
            "verifyingContract": registry.to_checksum(None),
        },
        "message": {
            "contributor": message.contributor.to_checksum(None),
            "datanetId": message.datanetId.to_string(),
            "contentHash": message.contentHash.to_string(),
            "metadataURI": message.metadataURI,
            "nonce": message.nonce.to_string(),
            "deadline": message.deadline.to_string(),
        },
    });
    ContributePayload {
        message,
        digest,
        typed_data,
    }
}

impl crate::auth::ContractWallets for Chain {
    fn is_valid_signature<'a>(
        &'a self,
        wallet: Address,
        hash: B256,
        signature: &'a [u8],
    ) -> futures::future::BoxFuture<'a, Result<bool, String>> {
        Box::pin(async move {
            Chain::is_valid_signature(self, wallet, hash, signature)
                .await
                .map_err(|e| e.to_string())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloy::dyn_abi::TypedData;
    use alloy::primitives::address;

    #[test]
    fn devnets_are_known_by_their_client_version() {
        assert!(is_devnet_client("anvil/v1.7.1"));
        assert!(is_devnet_client(
            "HardhatNetwork/2.22.0/@ethereumjs/vm/7.0.0"
        ));
        assert!(is_devnet_client(
            "Ganache/v7.9.2/EthereumJS TestRPC/v7.9.2/ethereum-js"
        ));
        assert!(!is_devnet_client(
            "Geth/v1.14.11-stable/linux-amd64/go1.22.5"
        ));
        assert!(!is_devnet_client("op-geth/v1.101408.0"));
        assert!(!is_devnet_client(""));
    }

    #[test]
    fn the_json_payload_hashes_to_the_struct_digest() {
        let p = contribute_payload(
            7331,
            address!("5FbDB2315678afecb367f032d93F642f64180aa3"),
            Contribute {
                contributor: address!("3C44CdDdB6a900fa2b585dd299e03d12FA4293BC"),
                datanetId: U256::from(3),
                contentHash: B256::repeat_byte(0xab),
                metadataURI: "openledger://content/0xab".into(),
                nonce: U256::from(1),
                deadline: U256::from(1_900_000_000u64),
            },
        );
        let td: TypedData = serde_json::from_value(p.typed_data.clone()).unwrap();
        assert_eq!(td.eip712_signing_hash().unwrap(), p.digest);
        let mut other = p.message.clone();
        other.nonce = U256::from(2);
        assert_ne!(
            contribute_payload(
                7331,
                address!("5FbDB2315678afecb367f032d93F642f64180aa3"),
                other
            )
            .digest,
            p.digest
        );
    }
}

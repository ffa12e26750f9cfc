//! `openledger claim`: claim an address's OPEN rewards with the proof a running `serve` gives
//! (`GET /api/rewards/{address}`), sent from the caller's own key. No database needed: a contributor
//! runs it against any daemon and any node of the chain.

use std::time::Duration;

use alloy::network::EthereumWallet;
use alloy::primitives::{Address, B256, U256};
use alloy::providers::{Provider, ProviderBuilder};
use anyhow::{Context, bail};
use openledger_chain::bindings::{OpenToken, RewardDistributor};
use serde_json::{Value, json};

use super::GlobalArgs;
use crate::chain::KeyArgs;

#[derive(Debug, clap::Args)]
pub struct ClaimArgs {
    /// Whose rewards to claim [default: the key's own address]. Anyone may send a claim; the OPEN goes to
    /// this address.
    #[arg(long)]
    pub account: Option<Address>,
    /// The daemon to ask for the proof [default: the running dev stack's, else http://127.0.0.1:8080].
    #[arg(long, env = "OPENLEDGER_URL")]
    pub url: Option<String>,
    /// JSON-RPC endpoint of the chain [default: the running dev stack's, else http://127.0.0.1:8545].
    #[arg(long, env = "OPENLEDGER_RPC_URL")]
    pub rpc_url: Option<String>,
    /// Print what would be claimed; send nothing.
    #[arg(long)]
    pub dry_run: bool,
    #[command(flatten)]
    pub key: KeyArgs,
}

pub async fn run(global: &GlobalArgs, args: ClaimArgs) -> anyhow::Result<()> {
    let key = args
        .key
        .load()?
        .context("claiming needs a key to send from (OPENLEDGER_PRIVATE_KEY or --keystore)")?;
    let account = args.account.unwrap_or(key.address());
    let url = super::devstack::api_url(args.url.as_deref());
    let rpc_url = super::devstack::rpc_url(args.rpc_url.as_deref());
    let offer = Offer::ask(&url, account).await?;
    if args.dry_run {
        println!(
            "{}",
            json!({"account": account, "cumulative": offer.cumulative.to_string(),
                   "claimable": offer.claimable.to_string(), "distributor": offer.distributor,
                   "proof": offer.proof})
        );
        return Ok(());
    }
    let provider = ProviderBuilder::new()
        .wallet(EthereumWallet::from(key))
        .connect(&rpc_url)
        .await
        .with_context(|| format!("no JSON-RPC node at {rpc_url}"))?;
    let chain_id = provider.get_chain_id().await?;
    if Some(chain_id) != offer.chain_id {
        bail!(
            "the node at {rpc_url} is chain {chain_id}; the daemon settles chain {}",
            offer.answer["chain_id"]
        );
    }
    let claimed = offer.claim(&provider, account).await?;
    if global.json {
        println!(
            "{}",
            json!({"account": account, "claimed": claimed.amount.to_string(),
                   "cumulative": offer.cumulative.to_string(), "balance": claimed.balance.to_string(),
                   "tx_hash": claimed.tx_hash})
        );
    } else {
        println!(
            "claimed {} wei for {account:#x} (tx {}); OPEN balance {} -> {}",
            claimed.amount,
            claimed.tx_hash,
            claimed.balance - claimed.amount,
            claimed.balance
        );
    }
    Ok(())
}

/// What the daemon says an account may claim, with the proof.
struct Offer {
    cumulative: U256,
    claimable: U256,
    proof: Vec<B256>,
    distributor: Address,
    chain_id: Option<u64>,
    /// The daemon's whole answer (`GET /api/rewards/{address}`).
    answer: Value,
}

/// A claim made: what it paid, the account's OPEN balance after it, and its transaction.
struct Claimed {
    amount: U256,
    balance: U256,
    tx_hash: B256,
}

impl Offer {
    /// Asks the daemon at `url`; refuses (with what the daemon knows) when nothing is claimable.
    async fn ask(url: &str, account: Address) -> anyhow::Result<Offer> {
        let res = reqwest::Client::new()
            .get(format!(
                "{}/api/rewards/{account:#x}",
                url.trim_end_matches('/')
            ))
            .timeout(Duration::from_secs(30))
            .send()
            .await
            .with_context(|| format!("no daemon at {url}"))?;
        let status = res.status();
        let text = res.text().await.unwrap_or_default();
        let v: Value = serde_json::from_str(&text).unwrap_or(Value::String(text));
        if !status.is_success() {
            bail!(
                "{status}: {}",
                v["detail"].as_str().unwrap_or(&v.to_string())
            );
        }
        let parse = |k: &str| -> anyhow::Result<U256> {
            v[k].as_str()
                .and_then(|s| s.parse().ok())
                .with_context(|| format!("the daemon's answer has no {k}: {v}"))
        };
        let cumulative = parse("cumulative")?;
        let claimable = parse("claimable")?;
        if claimable.is_zero() {
            bail!(
                "nothing to claim for {account:#x}: cumulative {cumulative} wei as of epoch {}, claimed {} (pending: {})",
                v["epoch"],
                v["claimed"].as_str().unwrap_or("0"),
                v["pending"]
            );
        }
        let proof: Vec<B256> = v["proof"]
            .as_array()
            .context("no proof in the answer")?
            .iter()
            .map(|h| h.as_str().and_then(|s| s.parse().ok()))
            .collect::<Option<_>>()
            .context("a proof node does not parse")?;
        let distributor: Address = v["distributor"]
            .as_str()
            .and_then(|s| s.parse().ok())
            .context("no distributor in the answer")?;
        Ok(Offer {
            cumulative,
            claimable,
            proof,
            distributor,
            chain_id: v["chain_id"].as_u64(),
            answer: v,
        })
    }

    /// Claims for `account` through `provider`'s wallet: simulated first, so that a stale or wrong proof
    /// is refused with the contract's reason at no cost.
    async fn claim<P: Provider>(&self, provider: &P, account: Address) -> anyhow::Result<Claimed> {
        let d = RewardDistributor::new(self.distributor, provider);
        // the chain's own count: the daemon's index may not have seen a claim just made
        let already = d.claimed(account).call().await?;
        if already >= self.cumulative {
            bail!(
                "nothing to claim for {account:#x}: {already} wei of its cumulative {} are already claimed (on chain)",
                self.cumulative
            );
        }
        let token = OpenToken::new(d.open().call().await?, provider);
        let before = token.balanceOf(account).call().await?;
        let call = d.claim(account, self.cumulative, self.proof.clone());
        if let Err(e) = call.call().await {
            match e.as_revert_data() {
                Some(data) => bail!(
                    "the distributor refuses this claim: {}",
                    openledger_chain::revert::describe(&data)
                ),
                None => bail!("the claim would fail: {e}"),
            }
        }
        let receipt = call
            .send()
            .await?
            .with_timeout(Some(Duration::from_secs(120)))
            .get_receipt()
            .await?;
        if !receipt.status() {
            bail!("claim {} reverted", receipt.transaction_hash);
        }
        let balance = token.balanceOf(account).call().await?;
        Ok(Claimed {
            amount: balance - before,
            balance,
            tx_hash: receipt.transaction_hash,
        })
    }
}

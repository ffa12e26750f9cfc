//! The settler: builds the next epoch, proposes its root exactly once, follows the proposal until the
//! indexer has it, and accepts roots whose challenge delay has passed.

use std::time::Duration;

use alloy::eips::eip2718::Encodable2718;
use alloy::network::{EthereumWallet, NetworkTransactionBuilder, TransactionBuilder};
use alloy::primitives::{Address, B256, U256};
use alloy::providers::{DynProvider, Provider};
use openledger_chain::bindings::{OpenToken, RewardDistributor};
use serde_json::Value;

use super::build;
use super::context::{Context, proposal_log};
use super::epoch::Build;
use super::store::{self, EpochRow};
use super::{SettleError, failpoint, u256};
use crate::common::hex_addr;

/// A build `sync` may move, with what the index has of its root.
#[derive(Debug, sqlx::FromRow)]
struct Tracked {
    id: i64,
    epoch: i64,
    state: String,
    root: String,
    proposed_tx: Option<String>,
    /// The block of the indexed `RootProposed`.
    proposed_at: Option<i64>,
    /// accepted, superseded or revoked, once indexed.
    outcome: Option<String>,
}

/// What one `settle` did.
#[derive(Debug)]
pub enum Outcome {
    /// `--dry-run`: the epoch as it would be proposed; nothing stored or sent.
    DryRun(Value),
    /// The epoch's stored build, in whatever state it reached (`final` on success).
    Epoch(Value),
    /// The epoch was already settled: its build as it stands.
    Already(Value),
}

impl Outcome {
    pub fn json(&self) -> &Value {
        match self {
            Outcome::DryRun(v) | Outcome::Epoch(v) | Outcome::Already(v) => v,
        }
    }
}

/// Proposes and follows this deployment's reward roots from the daemon's key (see the module's caption).
#[derive(Debug, Clone)]
pub struct Settler {
    ctx: Context,
}

/// How many times in a row a build may be discarded (its range reorganised, its base revoked) and derived
/// again before `settle` gives up.
const REDERIVE_ATTEMPTS: usize = 3;

enum Proposed {
    Mined,
    /// The build was discarded; derive the epoch again.
    Discarded,
}

impl Settler {
    pub fn new(ctx: Context) -> Self {
        Self { ctx }
    }

    /// What building and verifying epochs take.
    pub fn context(&self) -> &Context {
        &self.ctx
    }

    pub fn provider(&self) -> &DynProvider {
        self.ctx.provider()
    }

    pub fn distributor_address(&self) -> Address {
        self.ctx.distributor
    }

    fn distributor(&self) -> RewardDistributor::RewardDistributorInstance<&DynProvider> {
        RewardDistributor::new(self.ctx.distributor, self.ctx.chain.provider())
    }

    fn key(&self) -> Result<(Address, &EthereumWallet), SettleError> {
        match (self.ctx.chain.signer(), self.ctx.chain.wallet()) {
            (Some(a), Some(w)) => Ok((a, w)),
            _ => Err(SettleError::NoKey),
        }
    }

    /// Holds the settlement lock of this distributor while `f` runs: one settler at a time (the lock is
    /// on a connection of its own, so it goes with the process if the process dies).
    async fn locked<T>(
        &self,
        f: impl std::future::Future<Output = Result<T, SettleError>>,
    ) -> Result<T, SettleError> {
        let mut conn = self.ctx.pool.acquire().await?.detach();
        let key = i64::from_be_bytes(self.ctx.distributor.0[..8].try_into().unwrap_or_default())
            ^ self.ctx.chain_id as i64;
        let got: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock($1)")
            .bind(key)
            .fetch_one(&mut conn)
            .await?;
        if !got {
            return Err(SettleError::Locked);
        }
        let r = f.await;
        let _ = sqlx::query("SELECT pg_advisory_unlock($1)")
            .bind(key)
            .execute(&mut conn)
            .await;
        r
    }

    /// Builds and proposes the next epoch (or resumes the one in flight) and follows it until final.
    /// `epoch`: the number the caller expects (an error if another is next; the build as it stands if it
    /// is already settled).
    pub async fn settle(
        &self,
        epoch: Option<u64>,
        dry_run: bool,
        progress: &indicatif::ProgressBar,
    ) -> Result<Outcome, SettleError> {
        self.locked(async {
            for _ in 0..REDERIVE_ATTEMPTS {
                match self.settle_once(epoch, dry_run, progress).await {
                    Ok(Some(o)) => return Ok(o),
                    Ok(None) => continue,
                    Err(SettleError::Moving(why)) => {
                        tracing::warn!("{why}; deriving the epoch again");
                        tokio::time::sleep(self.ctx.cfg.poll_interval).await;
                        continue;
                    }
                    Err(e) => return Err(e),
                }
            }
            Err(SettleError::Timeout(format!(
                "the epoch had to be re-derived {REDERIVE_ATTEMPTS} times in a row (reorgs?); try again"
            )))
        })
        .await
    }

    /// `None`: the build was discarded (reorg, revoked base) and must be derived again.
    async fn settle_once(
        &self,
        epoch: Option<u64>,
        dry_run: bool,
        progress: &indicatif::ProgressBar,
    ) -> Result<Option<Outcome>, SettleError> {
        self.sync().await?;
        let epochs = store::epochs(&self.ctx.pool, self.ctx.chain_id, self.ctx.distributor).await?;
        if let Some(f) = epochs
            .iter()
            .find(|e| matches!(e.state.as_str(), "built" | "submitted" | "confirmed"))
        {
            if epoch.is_some_and(|n| n != f.epoch as u64) {
                return Err(SettleError::InFlight {
                    epoch: f.epoch as u64,
                    state: f.state.clone(),
                });
            }
            if dry_run {
                return Ok(Some(Outcome::Already(f.json())));
            }
            progress.set_message(format!("resuming epoch {} ({})", f.epoch, f.state));
            return self
                .drive(f.clone(), progress)
                .await
                .map(|o| o.map(Outcome::Epoch));
        }
        let next = match self.next_epoch(&epochs, epoch).await? {
            Ok(next) => next,
            Err(settled) => return Ok(Some(Outcome::Already(settled))),
        };
        let base = epochs.iter().rev().find(|e| e.state != "revoked");
        progress.set_message(format!("building epoch {next}"));
        let b = build::build(&self.ctx, next, base.map(EpochRow::as_previous), progress).await?;
        self.preflight(&b).await?;
        if dry_run {
            return Ok(Some(Outcome::DryRun(b.summary())));
        }
        progress.set_message(format!("computing {} proofs", b.tree.entries.len()));
        let proofs = b.tree.proofs();
        let id = store::save(
            &self.ctx.pool,
            self.ctx.chain_id,
            self.ctx.distributor,
            &b,
            &proofs,
            progress,
        )
        .await?;
        tracing::info!(
            epoch = next,
            root = %b.root(),
            total = %b.total(),
            included = b.included.len(),
            held = b.held.len(),
            "epoch built"
        );
        failpoint("after-build");
        let row = store::by_id(&self.ctx.pool, id).await?;
        self.drive(row, progress)
            .await
            .map(|o| o.map(Outcome::Epoch))
    }

    /// The epoch to build next (after the last stored one; the chain must not be ahead), or, when `asked`
    /// names an epoch already settled, its report as it stands (`Err`).
    async fn next_epoch(
        &self,
        epochs: &[EpochRow],
        asked: Option<u64>,
    ) -> Result<Result<u64, serde_json::Value>, SettleError> {
        let chain_latest = self
            .distributor()
            .latestEpoch()
            .call()
            .await
            .map_err(SettleError::rpc)?;
        let db_latest = epochs.last().map_or(0, |e| e.epoch as u64);
        if chain_latest > db_latest {
            return Err(SettleError::ChainAhead {
                chain: chain_latest,
                db: db_latest,
            });
        }
        let next = db_latest + 1;
        match asked {
            Some(n) if n < next => match epochs.iter().find(|e| e.epoch as u64 == n) {
                Some(r) => Ok(Err(r.json())),
                None => Err(SettleError::OutOfOrder { asked: n, next }),
            },
            Some(n) if n > next => Err(SettleError::OutOfOrder { asked: n, next }),
            _ => Ok(Ok(next)),
        }
    }

    /// What the chain would refuse, refused here first with the reason in numbers: the role, the epoch
    /// order, a shrinking total and a root the pool cannot pay.
    async fn preflight(&self, b: &Build) -> Result<(), SettleError> {
        let (me, _) = self.key()?;
        let d = self.distributor();
        let role = d.SETTLER_ROLE().call().await.map_err(SettleError::rpc)?;
        if !d.hasRole(role, me).call().await.map_err(SettleError::rpc)? {
            return Err(SettleError::NotSettler {
                account: me,
                distributor: self.ctx.distributor,
            });
        }
        let claimed = d.totalClaimed().call().await.map_err(SettleError::rpc)?;
        let open = d.open().call().await.map_err(SettleError::rpc)?;
        let balance = OpenToken::new(open, self.provider())
            .balanceOf(self.ctx.distributor)
            .call()
            .await
            .map_err(SettleError::rpc)?;
        let total = b.total();
        let owed = total.saturating_sub(claimed);
        if owed > balance {
            return Err(SettleError::InsufficientPool {
                owed: owed.to_string(),
                balance: balance.to_string(),
                total: total.to_string(),
                claimed: claimed.to_string(),
            });
        }
        self.simulate(b.epoch, b.root(), total, &b.uri).await
    }

    /// `proposeRoot` as an `eth_call` from the settler: the contract's own refusal, decoded.
    async fn simulate(
        &self,
        epoch: u64,
        root: B256,
        total: U256,
        uri: &str,
    ) -> Result<(), SettleError> {
        let (me, _) = self.key()?;
        match self
            .distributor()
            .proposeRoot(epoch, root, total, uri.to_owned())
            .from(me)
            .call()
            .await
        {
            Ok(_) => Ok(()),
            Err(e) => {
                match e.as_decoded_interface_error::<RewardDistributor::RewardDistributorErrors>() {
                    Some(err) => Err(SettleError::Rejected {
                        epoch,
                        reason: format!("{err:?}"),
                    }),
                    None if e.as_revert_data().is_some() => Err(SettleError::Rejected {
                        epoch,
                        reason: crate::chain::revert_reason(&e),
                    }),
                    None => Err(SettleError::rpc(e)),
                }
            }
        }
    }

    /// Takes a stored build from wherever it stands to `final`. `None`: discarded, derive again.
    async fn drive(
        &self,
        mut row: EpochRow,
        progress: &indicatif::ProgressBar,
    ) -> Result<Option<Value>, SettleError> {
        // (the proposal loop checks the range and the base before anything is sent)
        // a reorg can take a mined proposal back out (confirmed -> submitted): a bounded number of rounds
        for _ in 0..8 {
            match row.state.as_str() {
                "built" | "submitted" => {
                    if let Proposed::Discarded = self.propose(&row, progress).await? {
                        return Ok(None);
                    }
                }
                "confirmed" => self.wait_final(&row, progress).await?,
                _ => break,
            }
            row = store::by_id(&self.ctx.pool, row.id).await?;
        }
        Ok(Some(row.json()))
    }

    /// The chain's proposal of `epoch`, if it has one: (root, tx hash, block).
    async fn onchain_proposal(
        &self,
        epoch: u64,
        from: u64,
    ) -> Result<Option<(B256, B256, u64)>, SettleError> {
        let latest = self
            .distributor()
            .latestEpoch()
            .call()
            .await
            .map_err(SettleError::rpc)?;
        if latest < epoch {
            return Ok(None);
        }
        Ok(proposal_log(&self.ctx, epoch, from)
            .await?
            .map(|p| (p.root, p.tx_hash, p.block)))
    }

    /// Sends (or re-sends, or bumps) the proposal until one of its transactions is mined; discards the
    /// build if its range is reorganised first (taking the nonce with a cancel if one was sent).
    async fn propose(
        &self,
        row: &EpochRow,
        progress: &indicatif::ProgressBar,
    ) -> Result<Proposed, SettleError> {
        let (me, _) = self.key()?;
        let epoch = row.epoch as u64;
        let root: B256 = row
            .root
            .parse()
            .map_err(|_| SettleError::Stored(format!("root {:?}", row.root)))?;
        let deadline = tokio::time::Instant::now() + self.ctx.cfg.confirm_timeout;
        loop {
            // the chain's word first: a proposal of this epoch is there, ours or not
            if let Some(done) = self.found_on_chain(row, root).await? {
                return Ok(done);
            }
            let live: Vec<store::TxRow> = store::txs(&self.ctx.pool, row.id, "propose")
                .await?
                .into_iter()
                .filter(|t| t.state == "sent")
                .collect();
            if let Some(done) = self.receipt_of_ours(row, root, &live).await? {
                return Ok(done);
            }
            if let Some(done) = self.still_valid(row, &live).await? {
                return Ok(done);
            }
            if !self.send_or_wait(row, me, &live, progress).await? {
                continue;
            }
            if tokio::time::Instant::now() > deadline {
                return Err(SettleError::Timeout(format!(
                    "epoch {epoch}: the proposal is not mined after {:?}; run `openledger settle` again to resume (it re-sends or bumps the same transaction)",
                    self.ctx.cfg.confirm_timeout
                )));
            }
            tokio::time::sleep(self.ctx.cfg.poll_interval).await;
        }
    }

    /// A proposal of the epoch on chain: ours (confirmed now), or another root (a conflict).
    async fn found_on_chain(
        &self,
        row: &EpochRow,
        root: B256,
    ) -> Result<Option<Proposed>, SettleError> {
        let epoch = row.epoch as u64;
        let Some((onchain, tx, block)) = self.onchain_proposal(epoch, row.to_block as u64).await?
        else {
            return Ok(None);
        };
        if onchain != root {
            return Err(SettleError::Conflict {
                epoch,
                ours: row.root.clone(),
                onchain: onchain.to_string(),
            });
        }
        failpoint("after-receipt");
        if build::block_hash(&self.ctx, row.to_block as u64)
            .await?
            .to_string()
            != row.to_block_hash
        {
            tracing::error!(epoch, %tx, "the proposal was mined but the epoch's range was reorganised since it was built; `settle verify` shows what it covers, and a revoker can revoke it");
        }
        store::confirmed(&self.ctx.pool, row.id, &tx.to_string(), block).await?;
        tracing::info!(epoch, %tx, block, "proposal mined");
        Ok(Some(Proposed::Mined))
    }

    /// A receipt of one of our sent attempts: mined (confirmed now), or reverted (the build fails with the
    /// reason, unless the epoch is on chain after all).
    async fn receipt_of_ours(
        &self,
        row: &EpochRow,
        root: B256,
        live: &[store::TxRow],
    ) -> Result<Option<Proposed>, SettleError> {
        let epoch = row.epoch as u64;
        for t in live {
            let hash: B256 = t
                .tx_hash
                .parse()
                .map_err(|_| SettleError::Stored(format!("tx hash {:?}", t.tx_hash)))?;
            let Some(r) = self
                .provider()
                .get_transaction_receipt(hash)
                .await
                .map_err(SettleError::rpc)?
            else {
                continue;
            };
            if r.status() {
                failpoint("after-receipt");
                let block = r.block_number.unwrap_or_default();
                store::confirmed(&self.ctx.pool, row.id, &t.tx_hash, block).await?;
                tracing::info!(epoch, tx = %t.tx_hash, block, "proposal mined");
                return Ok(Some(Proposed::Mined));
            }
            store::set_tx_state(&self.ctx.pool, &t.tx_hash, "reverted").await?;
            // e.g. a re-sent twin of a proposal that was mined first: the epoch is on chain
            if self
                .onchain_proposal(epoch, row.to_block as u64)
                .await?
                .is_some()
            {
                continue;
            }
            let total = u256(&row.total)?;
            let reason = match self.simulate(epoch, root, total, &row.uri).await {
                Err(SettleError::Rejected { reason, .. }) => reason,
                _ => format!("transaction {} reverted", t.tx_hash),
            };
            store::fail(&self.ctx.pool, row.id, &reason).await?;
            return Err(SettleError::Rejected { epoch, reason });
        }
        Ok(None)
    }

    /// Nothing of ours is mined: the range must still be the chain's (a reorg deeper than the finality
    /// depth, or a depth of 0, can move it), and the build it extends still live (a revoked or failed base
    /// would put its amounts back on chain); otherwise the build is discarded.
    async fn still_valid(
        &self,
        row: &EpochRow,
        live: &[store::TxRow],
    ) -> Result<Option<Proposed>, SettleError> {
        let epoch = row.epoch as u64;
        let now = build::block_hash(&self.ctx, row.to_block as u64).await?;
        if now.to_string() != row.to_block_hash {
            let why = format!(
                "block {} was reorganised ({} -> {now}) before the proposal was mined; the epoch is derived again",
                row.to_block, row.to_block_hash
            );
            tracing::warn!(epoch, "{why}");
            return self.discard(row, live, &why).await.map(Some);
        }
        if let Some(p) = row.previous_id
            && let Some((base, state)) = store::dead_base(&self.ctx.pool, p).await?
        {
            let why = format!(
                "its base epoch {base} was {state} before its proposal was mined; the epoch is derived again"
            );
            tracing::warn!(epoch, "{why}");
            return self.discard(row, live, &why).await.map(Some);
        }
        Ok(None)
    }

    /// Sends the first attempt, bumps a stale one, re-broadcasts a waiting one, or drops attempts whose
    /// nonce another transaction took; `false` when it should look again at once (nothing was sent).
    async fn send_or_wait(
        &self,
        row: &EpochRow,
        me: Address,
        live: &[store::TxRow],
        progress: &indicatif::ProgressBar,
    ) -> Result<bool, SettleError> {
        let epoch = row.epoch as u64;
        let mined_nonce = self
            .provider()
            .get_transaction_count(me)
            .latest()
            .await
            .map_err(SettleError::rpc)?;
        match live.last() {
            None => {
                progress.set_message(format!("epoch {epoch}: sending the proposal"));
                self.send(row, None).await?;
            }
            Some(last) if mined_nonce > last.nonce as u64 => {
                // its nonce went to a transaction that is not one of ours (checked above, and the
                // chain has no proposal of this epoch): those attempts can never be mined
                for t in live.iter().filter(|t| t.nonce == last.nonce) {
                    store::set_tx_state(&self.ctx.pool, &t.tx_hash, "dropped").await?;
                }
                tracing::warn!(
                    epoch,
                    nonce = last.nonce,
                    "nonce taken by another transaction; re-sending"
                );
                return Ok(false);
            }
            Some(last) if last.sent_age_secs >= self.ctx.cfg.bump_after.as_secs_f64() => {
                progress.set_message(format!("epoch {epoch}: bumping fees of {}", last.tx_hash));
                self.send(row, Some(last)).await?;
            }
            Some(last) => {
                // after a restart the node may never have had it: the same bytes again
                if let Err(e) = self.provider().send_raw_transaction(&last.raw).await {
                    tracing::debug!(error = %e, "re-broadcast (usually: already known)");
                }
                progress.set_message(format!("epoch {epoch}: waiting for {}", last.tx_hash));
            }
        }
        Ok(true)
    }

    /// Gives the build up before its proposal is mined: takes the nonce of a sent attempt with a cancel,
    /// then fails the build. `Mined`: the proposal won the race after all (it is confirmed).
    async fn discard(
        &self,
        row: &EpochRow,
        live: &[store::TxRow],
        why: &str,
    ) -> Result<Proposed, SettleError> {
        if let Some(last) = live.last() {
            let (me, _) = self.key()?;
            let used = self
                .provider()
                .get_transaction_count(me)
                .latest()
                .await
                .map_err(SettleError::rpc)?
                > last.nonce as u64;
            if !used && self.cancel(row, last).await? {
                return Ok(Proposed::Mined);
            }
            // the nonce went elsewhere (a cancel of an earlier run, or another transaction): ours is
            // mined only if the chain has the proposal
            if used
                && let Some((_, tx, block)) = self
                    .onchain_proposal(row.epoch as u64, row.to_block as u64)
                    .await?
            {
                store::confirmed(&self.ctx.pool, row.id, &tx.to_string(), block).await?;
                return Ok(Proposed::Mined);
            }
        }
        store::fail(&self.ctx.pool, row.id, why).await?;
        Ok(Proposed::Discarded)
    }

    /// Takes `last`'s nonce with a self-transfer at higher fees, so the stale proposal can never be mined,
    /// and waits for the nonce to be used. `true`: the proposal won the race after all (it is confirmed).
    async fn cancel(&self, row: &EpochRow, last: &store::TxRow) -> Result<bool, SettleError> {
        let (me, _) = self.key()?;
        let (max_fee, priority) = self.bumped(last).await?;
        let request = alloy::rpc::types::TransactionRequest::default()
            .with_from(me)
            .with_to(me)
            .with_value(U256::ZERO)
            .with_gas_limit(21_000);
        let hash = self
            .sign_store_send(row, "cancel", request, last.nonce as u64, max_fee, priority)
            .await?;
        let deadline = tokio::time::Instant::now() + self.ctx.cfg.confirm_timeout;
        loop {
            let used = self
                .provider()
                .get_transaction_count(me)
                .latest()
                .await
                .map_err(SettleError::rpc)?;
            if used > last.nonce as u64 {
                break;
            }
            if tokio::time::Instant::now() > deadline {
                return Err(SettleError::Timeout(format!(
                    "epoch {}: the cancel {hash} of a proposal over a reorganised range is not mined; run `openledger settle` again",
                    row.epoch
                )));
            }
            tokio::time::sleep(self.ctx.cfg.poll_interval).await;
        }
        match self
            .onchain_proposal(row.epoch as u64, row.to_block as u64)
            .await?
        {
            Some((_, tx, block)) => {
                tracing::error!(epoch = row.epoch, %tx, "a proposal over a reorganised range was mined before its cancel; `settle verify` will show what it covers, and a revoker can revoke it");
                store::confirmed(&self.ctx.pool, row.id, &tx.to_string(), block).await?;
                Ok(true)
            }
            None => Ok(false),
        }
    }

    /// Signs a proposal (a fresh nonce, or `bump`'s with higher fees), stores it, then broadcasts it.
    async fn send(&self, row: &EpochRow, bump: Option<&store::TxRow>) -> Result<(), SettleError> {
        let (me, _) = self.key()?;
        let epoch = row.epoch as u64;
        let root: B256 = row
            .root
            .parse()
            .map_err(|_| SettleError::Stored(format!("root {:?}", row.root)))?;
        let total = u256(&row.total)?;
        // a revert is final and costs nothing
        if let Err(e) = self.simulate(epoch, root, total, &row.uri).await {
            // an earlier attempt was mined meanwhile: the loop confirms it
            if self
                .onchain_proposal(epoch, row.to_block as u64)
                .await?
                .is_some()
            {
                return Ok(());
            }
            tracing::warn!(error = %e, "the proposal would revert");
            // the chain refuses this build for good: free a pending attempt's nonce, fail the build (the
            // epoch is built again next time)
            if let SettleError::Rejected { reason, .. } = &e {
                if let Some(prev) = bump
                    && self.cancel(row, prev).await?
                {
                    return Ok(());
                }
                store::fail(&self.ctx.pool, row.id, reason).await?;
            }
            return Err(e);
        }
        let d = self.distributor();
        let call = d.proposeRoot(epoch, root, total, row.uri.clone()).from(me);
        let gas = call.estimate_gas().await.map_err(SettleError::rpc)?;
        let (nonce, max_fee, priority, lease) = match bump {
            Some(prev) => {
                let (max_fee, priority) = self.bumped(prev).await?;
                (prev.nonce as u64, max_fee, priority, None)
            }
            None => {
                let fees = self
                    .provider()
                    .estimate_eip1559_fees()
                    .await
                    .map_err(SettleError::rpc)?;
                // the key's next nonce, held until the node has the proposal: relays, payments and
                // publishing of every process send from the same key
                let lease = self
                    .ctx
                    .chain
                    .lease_nonce("proposeRoot")
                    .await
                    .map_err(|e| SettleError::Rpc(e.to_string()))?;
                (
                    lease.nonce,
                    fees.max_fee_per_gas,
                    fees.max_priority_fee_per_gas,
                    Some(lease),
                )
            }
        };
        let request = call
            .into_transaction_request()
            .with_gas_limit(gas + gas / 4);
        let hash = self
            .sign_store_send(row, "propose", request, nonce, max_fee, priority)
            .await;
        if let Some(lease) = lease {
            lease.release().await;
        }
        let hash = hash?;
        tracing::info!(epoch, tx = %hash, nonce, max_fee, bump = bump.is_some(), "proposal sent");
        Ok(())
    }

    /// Fees for re-sending `prev`'s nonce: `--bump-percent` above what it paid, and at least what the
    /// node asks now.
    async fn bumped(&self, prev: &store::TxRow) -> Result<(u128, u128), SettleError> {
        let fees = self
            .provider()
            .estimate_eip1559_fees()
            .await
            .map_err(SettleError::rpc)?;
        let up = |s: &str| -> Result<u128, SettleError> {
            let v: u128 = s
                .parse()
                .map_err(|_| SettleError::Stored(format!("fee {s:?}")))?;
            Ok(v.saturating_mul(100 + u128::from(self.ctx.cfg.bump_percent)) / 100 + 1)
        };
        let priority = up(&prev.priority_fee)?.max(fees.max_priority_fee_per_gas);
        let max_fee = up(&prev.max_fee)?.max(fees.max_fee_per_gas).max(priority);
        Ok((max_fee, priority))
    }

    /// Signs `request` with `nonce` and fees, stores it as a `kind` transaction of the build, and only
    /// then broadcasts it: a crash between the steps leaves bytes the next run re-sends or finds mined.
    async fn sign_store_send(
        &self,
        row: &EpochRow,
        kind: &str,
        request: alloy::rpc::types::TransactionRequest,
        nonce: u64,
        max_fee: u128,
        priority: u128,
    ) -> Result<String, SettleError> {
        let (_, wallet) = self.key()?;
        let envelope = request
            .with_nonce(nonce)
            .with_chain_id(self.ctx.chain_id)
            .with_max_fee_per_gas(max_fee)
            .with_max_priority_fee_per_gas(priority)
            .build(wallet)
            .await
            .map_err(|e| SettleError::Rpc(format!("signing the {kind} transaction: {e}")))?;
        let raw = envelope.encoded_2718();
        let hash = envelope.tx_hash().to_string();
        store::insert_tx(
            &self.ctx.pool,
            row.id,
            &store::NewTx {
                kind,
                tx_hash: &hash,
                nonce,
                raw: &raw,
                max_fee,
                priority_fee: priority,
            },
        )
        .await?;
        failpoint("before-send");
        if let Err(e) = self.provider().send_raw_transaction(&raw).await {
            // stored: the loop re-sends it, or finds its nonce taken and signs anew
            tracing::warn!(error = %e, tx = %hash, "broadcast of the {kind} transaction failed");
        }
        failpoint("after-send");
        Ok(hash)
    }

    /// Waits until the indexer has the proposal in a final block.
    async fn wait_final(
        &self,
        row: &EpochRow,
        progress: &indicatif::ProgressBar,
    ) -> Result<(), SettleError> {
        progress.set_message(format!("epoch {}: waiting for the indexer", row.epoch));
        let deadline = tokio::time::Instant::now() + self.ctx.cfg.confirm_timeout;
        loop {
            self.sync().await?;
            let now = store::by_id(&self.ctx.pool, row.id).await?;
            if now.state != "confirmed" {
                return Ok(());
            }
            if let Some(tx) = now
                .proposed_tx
                .as_deref()
                .and_then(|t| t.parse::<B256>().ok())
                && self
                    .provider()
                    .get_transaction_receipt(tx)
                    .await
                    .map_err(SettleError::rpc)?
                    .is_none()
            {
                tracing::warn!(epoch = row.epoch, %tx, "the mined proposal left the chain (reorg); following it again");
                store::reopen(&self.ctx.pool, row.id, &tx.to_string()).await?;
                return Ok(());
            }
            if tokio::time::Instant::now() > deadline {
                return Err(SettleError::Timeout(format!(
                    "epoch {}: proposal {} is mined but the indexer has not seen it final after {:?}; is `serve` (or `index`) running?",
                    row.epoch,
                    row.proposed_tx.as_deref().unwrap_or("?"),
                    self.ctx.cfg.confirm_timeout
                )));
            }
            tokio::time::sleep(self.ctx.cfg.poll_interval).await;
        }
    }

    /// Moves stored builds along what the index says: confirmed -> final (RootProposed indexed and final),
    /// final -> accepted / superseded / revoked; a final one whose event a reorg removed goes back to
    /// submitted (its stored transaction is re-sent or found mined again).
    pub async fn sync(&self) -> Result<(), SettleError> {
        // the builds a chain event can move, with what the index has of their root
        let rows: Vec<Tracked> =
            sqlx::query_as(
                "SELECT e.id, e.epoch, e.state, e.root, e.proposed_tx, rr.block_number AS proposed_at, o.outcome
                 FROM settlement_epochs e
                 LEFT JOIN reward_roots rr ON rr.chain_id = e.chain_id AND rr.contract_address = e.distributor
                                          AND rr.epoch = e.epoch AND rr.root = e.root
                 LEFT JOIN reward_root_outcomes o ON o.chain_id = e.chain_id AND o.contract_address = e.distributor
                                                 AND o.epoch = e.epoch AND o.root = e.root
                 WHERE e.chain_id = $1 AND e.distributor = $2 AND e.state IN ('confirmed', 'final')
                 ORDER BY e.epoch",
            )
            .bind(self.ctx.chain_id as i64)
            .bind(hex_addr(self.ctx.distributor))
            .fetch_all(&self.ctx.pool)
            .await?;
        if rows.is_empty() {
            return Ok(());
        }
        let (final_block, _, _) = build::final_block(&self.ctx).await?;
        for Tracked {
            id,
            epoch,
            state,
            root,
            proposed_tx,
            proposed_at,
            outcome,
        } in rows
        {
            match (state.as_str(), proposed_at, outcome.as_deref()) {
                ("confirmed", Some(block), _) if block as u64 <= final_block => {
                    store::set_state(&self.ctx.pool, id, "final").await?;
                    tracing::info!(epoch, root = %root, "epoch final");
                }
                ("final", None, _) => {
                    tracing::warn!(
                        epoch,
                        "the proposal left the index (reorg); following it again"
                    );
                    match &proposed_tx {
                        Some(tx) => store::reopen(&self.ctx.pool, id, tx).await?,
                        None => store::set_state(&self.ctx.pool, id, "submitted").await?,
                    }
                }
                ("final", Some(_), Some("accepted")) => {
                    store::set_state(&self.ctx.pool, id, "accepted").await?;
                }
                ("final", Some(_), Some("superseded")) => {
                    store::set_state(&self.ctx.pool, id, "superseded").await?;
                }
                ("final", Some(_), Some("revoked")) => {
                    store::revoked(&self.ctx.pool, id).await?;
                    tracing::warn!(epoch, "root revoked: its payments go to the next epoch");
                }
                _ => {}
            }
        }
        Ok(())
    }

    /// Sends `acceptRoot` for the pending root once its challenge delay has passed (anyone may; the
    /// settler does it so roots do not wait for a volunteer). `None`: nothing pending or not due yet.
    pub async fn accept(&self) -> Result<Option<Value>, SettleError> {
        self.sync().await?;
        let d = self.distributor();
        let pending = d.pendingRoot().call().await.map_err(SettleError::rpc)?;
        if pending.root == B256::ZERO {
            return Ok(None);
        }
        let Some(row) = store::epoch(
            &self.ctx.pool,
            self.ctx.chain_id,
            self.ctx.distributor,
            pending.epoch,
        )
        .await?
        else {
            tracing::warn!(
                epoch = pending.epoch,
                "the pending root is not one this daemon built; not accepting it"
            );
            return Ok(None);
        };
        if row.root != pending.root.to_string() {
            return Err(SettleError::Conflict {
                epoch: pending.epoch,
                ours: row.root,
                onchain: pending.root.to_string(),
            });
        }
        let now = self.ctx.chain.now().await.map_err(SettleError::rpc)?;
        if now < pending.validAt {
            tracing::info!(
                epoch = pending.epoch,
                valid_at = pending.validAt,
                now,
                "challenge period still running"
            );
            return Ok(None);
        }
        // an instance over the provider itself: what the key's sender takes
        let owned = RewardDistributor::new(self.ctx.distributor, self.provider().clone());
        let call = owned.acceptRoot();
        if let Err(e) = call.call().await {
            return Err(SettleError::Rejected {
                epoch: pending.epoch,
                reason: crate::chain::revert_reason(&e),
            });
        }
        // through the key's nonce manager: relays and payments may be sending from the same key
        let receipt = self
            .ctx
            .chain
            .send_confirmed("acceptRoot", call, self.ctx.cfg.confirm_timeout)
            .await
            .map_err(|e| match e {
                crate::chain::SendError::Reverted { reason, .. } => SettleError::Rejected {
                    epoch: pending.epoch,
                    reason,
                },
                e => SettleError::Rpc(e.to_string()),
            })?;
        tracing::info!(epoch = pending.epoch, tx = %receipt.transaction_hash, "root accepted");
        // the indexer's RootAccepted moves the build to accepted
        let deadline = tokio::time::Instant::now() + self.ctx.cfg.confirm_timeout;
        loop {
            self.sync().await?;
            let now = store::by_id(&self.ctx.pool, row.id).await?;
            if matches!(now.state.as_str(), "accepted" | "revoked" | "superseded")
                || tokio::time::Instant::now() > deadline
            {
                return Ok(Some(now.json()));
            }
            tokio::time::sleep(self.ctx.cfg.poll_interval).await;
        }
    }

    /// One scheduled round (`serve --settle-every-secs`): finish a build in flight, accept the pending root
    /// once its challenge delay has passed, and only then propose the next epoch. A root in its challenge
    /// period is never superseded by the schedule: a new proposal would restart the delay, and with
    /// payments arriving steadily no root would ever be accepted. "Nothing to settle" and "not final yet"
    /// are not errors here.
    pub async fn tick(&self) -> Result<(), SettleError> {
        let quiet = indicatif::ProgressBar::hidden();
        self.sync().await?;
        let epochs = store::epochs(&self.ctx.pool, self.ctx.chain_id, self.ctx.distributor).await?;
        if epochs
            .iter()
            .any(|e| matches!(e.state.as_str(), "built" | "submitted" | "confirmed"))
        {
            let o = self.settle(None, false, &quiet).await?;
            tracing::info!(epoch = %o.json()["epoch"], state = %o.json()["state"], "settlement round: resumed");
        }
        self.accept().await?;
        let pending = self
            .distributor()
            .pendingRoot()
            .call()
            .await
            .map_err(SettleError::rpc)?;
        if pending.root != B256::ZERO {
            tracing::debug!(
                epoch = pending.epoch,
                valid_at = pending.validAt,
                "a root is in its challenge period; not proposing"
            );
            return Ok(());
        }
        match self.settle(None, false, &quiet).await {
            Ok(o) => {
                tracing::info!(epoch = %o.json()["epoch"], state = %o.json()["state"], "settlement round")
            }
            Err(SettleError::NothingToSettle { held, .. }) => {
                tracing::debug!(held, "settlement round: nothing payable")
            }
            Err(SettleError::NotFinal { .. }) => tracing::debug!("settlement round: not final yet"),
            Err(e) => return Err(e),
        }
        Ok(())
    }
}

/// Waits `every` between rounds until `stop` fires; errors are logged and the next round tries again.
pub async fn run_schedule(
    settler: Settler,
    every: Duration,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    loop {
        if let Err(e) = settler.tick().await {
            tracing::warn!(error = %e, "settlement round failed; trying again next round");
        }
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = crate::jobs::worker::stopped(&mut stop) => return,
        }
    }
}

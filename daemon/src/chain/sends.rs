//! One sender per key. Relays, sponsored payments, publishing and settlement send from the daemon's one key,
//! possibly from several `serve` processes on one database. Every transaction sent through [`Chain::send`]
//! is signed here, stored in `key_sends` before it is broadcast, and followed until one of its attempts is
//! mined:
//! - the key's next nonce is the node's pending count or one past the highest live stored nonce, whichever is
//!   higher, taken under a Postgres advisory lock per chain and key that every process takes (settlement's
//!   proposals take it too, through [`Chain::lease_nonce`]), so no two senders take one nonce;
//! - a transaction without a receipt for [`SendPolicy::bump_after`] is signed again at its nonce with fees
//!   [`SendPolicy::bump_percent`] higher (and at least what the node asks now), a new attempt; the first
//!   attempt mined wins, the others are `replaced`;
//! - a nonce the chain used for none of the attempts (for `DROPPED_AFTER`, no receipt of any attempt) is
//!   `dropped`: that transaction never happened;
//! - a node that lost its pool (a restart) gets the stored bytes again.
//!
//! A waiter ([`Chain::confirm`]) does this for its own transaction; [`Chain::tend_sends`] (a `serve` task)
//! does it for every live transaction of the key, so one whose waiter stopped (a timeout, a killed process)
//! still lands or is replaced instead of holding every later nonce back.

use std::time::Duration;

use alloy::consensus::TxEnvelope;
use alloy::eips::BlockId;
use alloy::eips::eip2718::{Decodable2718, Encodable2718};
use alloy::network::{EthereumWallet, NetworkTransactionBuilder, TransactionBuilder};
use alloy::primitives::{Address, B256};
use alloy::providers::Provider;
use alloy::rpc::types::{TransactionReceipt, TransactionRequest};
use sqlx::PgPool;

use super::{Call, Chain, SendError};

/// Seconds without a receipt before a transaction of the key is re-sent with higher fees, by default.
pub const DEFAULT_BUMP_AFTER_SECS: u64 = 60;
/// How much higher each re-send's fees are, in percent, by default (nodes replace a pending transaction for
/// 10% or more).
pub const DEFAULT_BUMP_PERCENT: u64 = 25;
/// How often a waiter looks for its receipt.
const CONFIRM_POLL: Duration = Duration::from_millis(250);
/// Every this many looks, a waiter makes sure the node still has its transaction.
const REBROADCAST_EVERY: u32 = 20;
/// How long a nonce must stay used with no receipt for any attempt at it before the attempts are `dropped`
/// (a node may count a mined transaction in the key's nonce a moment before it serves the receipt).
const DROPPED_AFTER: Duration = Duration::from_secs(10);

/// How the key's transactions are followed until mined.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SendPolicy {
    /// A transaction without a receipt for this long is signed again with higher fees.
    pub bump_after: Duration,
    /// Fee increase of each re-send, percent.
    pub bump_percent: u64,
}

impl Default for SendPolicy {
    fn default() -> Self {
        SendPolicy {
            bump_after: Duration::from_secs(DEFAULT_BUMP_AFTER_SECS),
            bump_percent: DEFAULT_BUMP_PERCENT,
        }
    }
}

/// Where the key's sends are recorded, and how they are followed.
#[derive(Debug, Clone)]
pub(super) struct Sends {
    pool: PgPool,
    policy: SendPolicy,
    /// One task of this process at a time goes for the database lock, so waiters hold no connection.
    local: std::sync::Arc<tokio::sync::Mutex<()>>,
}

/// The key's lock in Postgres: a session advisory lock on a connection of its own, which also carries every
/// statement made under it (waiters elsewhere hold a connection each; the holder needs no second one).
/// Dropped without [`KeyLock::release`] (a cancelled future), the connection is closed, which frees the lock.
#[derive(Debug)]
struct KeyLock {
    conn: Option<sqlx::pool::PoolConnection<sqlx::Postgres>>,
    name: String,
}

impl KeyLock {
    async fn take(pool: &PgPool, name: String) -> Result<Self, sqlx::Error> {
        let mut conn = pool.acquire().await?;
        sqlx::query("SELECT pg_advisory_lock(hashtextextended($1, 0))")
            .bind(&name)
            .execute(&mut *conn)
            .await?;
        Ok(KeyLock {
            conn: Some(conn),
            name,
        })
    }

    fn conn(&mut self) -> Result<&mut sqlx::PgConnection, sqlx::Error> {
        self.conn.as_deref_mut().ok_or(sqlx::Error::PoolClosed)
    }

    async fn release(mut self) {
        if let Some(mut conn) = self.conn.take() {
            let unlocked = sqlx::query("SELECT pg_advisory_unlock(hashtextextended($1, 0))")
                .bind(&self.name)
                .execute(&mut *conn)
                .await;
            if unlocked.is_err() {
                // a connection that may still hold the lock never goes back to the pool
                drop(conn.detach());
            }
        }
    }
}

impl Drop for KeyLock {
    fn drop(&mut self) {
        if let Some(conn) = self.conn.take() {
            drop(conn.detach());
        }
    }
}

/// A transaction the daemon sent: the hash of its first attempt, and its nonce where the send is recorded
/// (a later attempt, re-sent with higher fees, has another hash: [`Chain::confirm`] follows them all).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sent {
    pub tx_hash: B256,
    pub nonce: Option<u64>,
}

/// The key's next nonce, held for one sender until [`NonceLease::release`] (or drop): the transaction signed
/// with it must reach the node first.
#[derive(Debug)]
pub struct NonceLease {
    lock: Option<KeyLock>,
    _local: Option<tokio::sync::OwnedMutexGuard<()>>,
    pub nonce: u64,
}

impl NonceLease {
    /// Lets the next sender take a nonce (it reads the node's count after this one's transaction).
    pub async fn release(self) {
        if let Some(lock) = self.lock {
            lock.release().await;
        }
    }

    fn conn(&mut self) -> Result<&mut sqlx::PgConnection, sqlx::Error> {
        self.lock.as_mut().ok_or(sqlx::Error::PoolClosed)?.conn()
    }
}

/// One stored attempt at a nonce.
#[derive(Debug, Clone, sqlx::FromRow)]
struct Attempt {
    id: i64,
    what: String,
    reference: Option<String>,
    tx_hash: String,
    raw: Vec<u8>,
    max_fee: String,
    priority_fee: String,
    state: String,
    age_secs: f64,
}

/// Where the transactions at one nonce stand.
enum Followed {
    Mined(Box<TransactionReceipt>),
    Dropped,
    /// Not mined yet; the newest attempt.
    Waiting(Box<Attempt>),
    /// The nonce is used but no attempt's receipt is seen (yet): mined a moment ago, or dropped.
    Used,
}

/// What [`Chain::tend_sends`] did in one pass.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Tended {
    /// Nonces whose transaction was found mined.
    pub mined: usize,
    /// Nonces whose transaction was found dropped.
    pub dropped: usize,
    /// Transactions re-sent with higher fees.
    pub bumped: usize,
    /// Transactions still waiting.
    pub waiting: usize,
}

impl Chain {
    /// Records this key's sends in `pool` and hands its nonces out from there ([`Chain::send`]), shared with
    /// every process on the database; its transactions are re-sent with higher fees by `SendPolicy::default()`
    /// unless [`Chain::with_send_policy`] says otherwise.
    pub fn with_send_lock(mut self, pool: PgPool) -> Self {
        let policy = self.sends.as_ref().map(|s| s.policy).unwrap_or_default();
        self.sends = Some(Sends {
            pool,
            policy,
            local: Default::default(),
        });
        self
    }

    /// How this key's transactions are re-sent while they wait (with [`Chain::with_send_lock`]).
    pub fn with_send_policy(mut self, policy: SendPolicy) -> Self {
        if let Some(s) = &mut self.sends {
            s.policy = policy;
        }
        self
    }

    fn lock_name(&self, me: Address) -> String {
        format!("openledger-sender:{}:{me:#x}", self.chain_id)
    }

    /// Simulates `call` (a revert is final and costs no gas), then sends it from the daemon's key: signed,
    /// recorded and broadcast under the key's lock (with [`Chain::with_send_lock`]); follow it with
    /// [`Chain::confirm`].
    pub async fn send<D: alloy::contract::CallDecoder + Clone>(
        &self,
        what: &str,
        call: &Call<'_, D>,
    ) -> Result<Sent, SendError> {
        self.send_for(what, None, call).await
    }

    /// [`Chain::send`], the record naming what the transaction is for (`reference`: a payment's request id),
    /// so that whoever reconciles it finds it even when the sender stopped before it heard back.
    pub async fn send_for<D: alloy::contract::CallDecoder + Clone>(
        &self,
        what: &str,
        reference: Option<&str>,
        call: &Call<'_, D>,
    ) -> Result<Sent, SendError> {
        let (Some(s), Some(me), Some(wallet)) = (&self.sends, self.signer, &self.wallet) else {
            let pending = super::send_checked(what, call).await?;
            return Ok(Sent {
                tx_hash: *pending.tx_hash(),
                nonce: None,
            });
        };
        let node = |detail: String| SendError::node(what, detail);
        // a revert is final and costs nothing; simulated on the pending block, where the transaction will
        // run (a block mined meanwhile by another sender is under it, not over it)
        call.clone()
            .block(BlockId::pending())
            .call()
            .await
            .map_err(|e| SendError::of(what, e))?;
        let request = call.clone().from(me).into_transaction_request();
        let gas = self
            .provider
            .estimate_gas(request.clone())
            .block(BlockId::pending())
            .await
            .map_err(|e| node(format!("estimating gas: {e}")))?;
        let fees = self
            .provider
            .estimate_eip1559_fees()
            .await
            .map_err(|e| node(format!("estimating fees: {e}")))?;
        let mut lease = self.lease(s, me, what).await?;
        let signed = Signing {
            what,
            reference,
            nonce: lease.nonce,
            max_fee: fees.max_fee_per_gas,
            priority: fees.max_priority_fee_per_gas,
        };
        let request = request.with_gas_limit(gas + gas / 5);
        let sent = self
            .sign_store_broadcast(&mut lease, me, wallet, &signed, request)
            .await;
        lease.release().await;
        let tx_hash = sent?;
        tracing::debug!(what, tx = %tx_hash, nonce = signed.nonce, "sent");
        Ok(Sent {
            tx_hash,
            nonce: Some(signed.nonce),
        })
    }

    /// [`Chain::send`] then [`Chain::confirm`]: the successful receipt.
    pub async fn send_confirmed<D: alloy::contract::CallDecoder + Clone>(
        &self,
        what: &str,
        call: Call<'_, D>,
        timeout: Duration,
    ) -> Result<TransactionReceipt, SendError> {
        let sent = self.send(what, &call).await?;
        self.confirm(what, &sent, timeout).await
    }

    /// The key's next nonce for a transaction signed elsewhere (settlement stores its own): held, under the
    /// key's lock, until the lease is released.
    pub async fn lease_nonce(&self, what: &str) -> Result<NonceLease, SendError> {
        let me = self
            .signer
            .ok_or_else(|| SendError::node(what, "this daemon has no key"))?;
        match &self.sends {
            Some(s) => self.lease(s, me, what).await,
            None => Ok(NonceLease {
                lock: None,
                _local: None,
                nonce: self
                    .provider
                    .get_transaction_count(me)
                    .pending()
                    .await
                    .map_err(|e| SendError::node(what, format!("reading the key's nonce: {e}")))?,
            }),
        }
    }

    /// Takes the key's lock and its next nonce: the node's pending count, or past the live stored
    /// transactions the node does not count (it lost them: they are broadcast again).
    async fn lease(&self, s: &Sends, me: Address, what: &str) -> Result<NonceLease, SendError> {
        let node = |detail: String| SendError::node(what, detail);
        let mut lease = self.lock(s, me, what).await?;
        let pending = self
            .provider
            .get_transaction_count(me)
            .pending()
            .await
            .map_err(|e| node(format!("reading the key's nonce: {e}")))?;
        let conn = lease
            .conn()
            .map_err(|e| node(format!("reading the key's sends: {e}")))?;
        let stored: Option<i64> = sqlx::query_scalar(
            "SELECT max(nonce) FROM key_sends WHERE chain_id = $1 AND sender = $2 AND state = 'sent'",
        )
        .bind(self.chain_id as i64)
        .bind(format!("{me:#x}"))
        .fetch_one(&mut *conn)
        .await
        .map_err(|e| node(format!("reading the key's sends: {e}")))?;
        lease.nonce = match stored {
            Some(n) if n as u64 >= pending => {
                self.rebroadcast_from(conn, me, pending).await;
                n as u64 + 1
            }
            _ => pending,
        };
        Ok(lease)
    }

    /// Takes the key's lock (this process's, then the database's) without choosing a nonce: the lease's
    /// `nonce` is 0 until [`Chain::lease`] sets it.
    async fn lock(&self, s: &Sends, me: Address, what: &str) -> Result<NonceLease, SendError> {
        let local = s.local.clone().lock_owned().await;
        let lock = KeyLock::take(&s.pool, self.lock_name(me))
            .await
            .map_err(|e| SendError::node(what, format!("taking the key's send lock: {e}")))?;
        Ok(NonceLease {
            lock: Some(lock),
            _local: Some(local),
            nonce: 0,
        })
    }

    /// Broadcasts again the newest attempt at every live nonce from `from` on (the node forgot them).
    async fn rebroadcast_from(&self, conn: &mut sqlx::PgConnection, me: Address, from: u64) {
        let raws: Result<Vec<Vec<u8>>, _> = sqlx::query_scalar(
            "SELECT DISTINCT ON (nonce) raw FROM key_sends
             WHERE chain_id = $1 AND sender = $2 AND state = 'sent' AND nonce >= $3
             ORDER BY nonce, id DESC",
        )
        .bind(self.chain_id as i64)
        .bind(format!("{me:#x}"))
        .bind(from as i64)
        .fetch_all(&mut *conn)
        .await;
        for raw in raws.unwrap_or_default() {
            if let Err(e) = self.provider.send_raw_transaction(&raw).await {
                tracing::debug!(error = %e, "re-broadcast of a stored transaction");
            }
        }
    }

    /// Signs `request` as `signing` says, stores it, then broadcasts it. A node that refuses it leaves no
    /// record (its nonce is free); a broadcast lost on the way leaves the record, and its waiter or
    /// [`Chain::tend_sends`] sends the bytes again.
    async fn sign_store_broadcast(
        &self,
        lease: &mut NonceLease,
        me: Address,
        wallet: &EthereumWallet,
        signing: &Signing<'_>,
        request: TransactionRequest,
    ) -> Result<B256, SendError> {
        let what = signing.what;
        let node = |detail: String| SendError::node(what, detail);
        let envelope = request
            .with_from(me)
            .with_nonce(signing.nonce)
            .with_chain_id(self.chain_id)
            .with_max_fee_per_gas(signing.max_fee)
            .with_max_priority_fee_per_gas(signing.priority)
            .build(wallet)
            .await
            .map_err(|e| node(format!("signing: {e}")))?;
        let raw = envelope.encoded_2718();
        let hash = *envelope.tx_hash();
        let conn = lease
            .conn()
            .map_err(|e| node(format!("recording the transaction: {e}")))?;
        let id: i64 = sqlx::query_scalar(
            "INSERT INTO key_sends (chain_id, sender, nonce, what, reference, tx_hash, raw, max_fee, priority_fee)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8::numeric, $9::numeric) RETURNING id",
        )
        .bind(self.chain_id as i64)
        .bind(format!("{me:#x}"))
        .bind(signing.nonce as i64)
        .bind(what)
        .bind(signing.reference)
        .bind(format!("{hash:#x}"))
        .bind(&raw)
        .bind(signing.max_fee.to_string())
        .bind(signing.priority.to_string())
        .fetch_one(&mut *conn)
        .await
        .map_err(|e| node(format!("recording the transaction: {e}")))?;
        match self.provider.send_raw_transaction(&raw).await {
            Ok(_) => Ok(hash),
            Err(e) if e.to_string().contains("already known") => Ok(hash),
            Err(e) if e.as_error_resp().is_some() => {
                // the node answered no: the transaction does not exist, its nonce is free
                let _ = sqlx::query("DELETE FROM key_sends WHERE id = $1")
                    .bind(id)
                    .execute(&mut *conn)
                    .await;
                Err(node(format!("the node refused it: {e}")))
            }
            Err(e) => {
                tracing::warn!(error = %e, tx = %hash, what, "broadcast failed; the stored transaction is sent again");
                Ok(hash)
            }
        }
    }

    /// Waits up to `timeout` for `sent` to be mined (any of its attempts), re-sending it with higher fees
    /// while it waits and to a node that lost it. A mined revert is final; a nonce taken by another
    /// transaction is [`SendError::Dropped`]; past the timeout the transaction stays live (re-sent by
    /// [`Chain::tend_sends`]) and the error says so.
    pub async fn confirm(
        &self,
        what: &str,
        sent: &Sent,
        timeout: Duration,
    ) -> Result<TransactionReceipt, SendError> {
        let (Some(s), Some(me), Some(wallet), Some(nonce)) =
            (&self.sends, self.signer, &self.wallet, sent.nonce)
        else {
            return self.confirm_untracked(what, sent.tx_hash, timeout).await;
        };
        let deadline = tokio::time::Instant::now() + timeout;
        let mut looks = 0u32;
        loop {
            match self.follow(s, me, nonce).await {
                Ok(Followed::Mined(r)) => return mined(what, *r),
                Ok(Followed::Dropped) => {
                    return Err(SendError::Dropped {
                        what: what.to_owned(),
                        nonce,
                    });
                }
                Ok(Followed::Waiting(newest)) => {
                    if newest.age_secs >= s.policy.bump_after.as_secs_f64() {
                        if let Err(e) = self.bump(s, me, wallet, &newest, nonce).await {
                            tracing::warn!(error = %e, what, nonce, "re-sending with higher fees");
                        }
                    } else if looks % REBROADCAST_EVERY == REBROADCAST_EVERY - 1 {
                        self.rebroadcast_if_unknown(&newest).await;
                    }
                }
                Ok(Followed::Used) => {}
                // the node or the database away for a moment: keep looking until the deadline
                Err(e) => tracing::debug!(error = %e, what, nonce, "following a transaction"),
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(SendError::Node {
                    what: what.to_owned(),
                    detail: format!(
                        "{} (nonce {nonce}) has no receipt after {} s; it stays pending and is re-sent with \
                         higher fees until it is mined",
                        sent.tx_hash,
                        timeout.as_secs()
                    ),
                });
            }
            looks = looks.wrapping_add(1);
            tokio::time::sleep(CONFIRM_POLL).await;
        }
    }

    /// Waits for one transaction's receipt (a send that was not recorded).
    async fn confirm_untracked(
        &self,
        what: &str,
        tx: B256,
        timeout: Duration,
    ) -> Result<TransactionReceipt, SendError> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            match self.provider.get_transaction_receipt(tx).await {
                Ok(Some(r)) => return mined(what, r),
                Ok(None) => {}
                Err(e) => tracing::debug!(error = %e, what, %tx, "waiting for a receipt"),
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(SendError::Node {
                    what: what.to_owned(),
                    detail: format!("waiting for {tx}: no receipt after {} s", timeout.as_secs()),
                });
            }
            tokio::time::sleep(CONFIRM_POLL).await;
        }
    }

    /// Where the transactions at `nonce` stand; settles their records once the nonce is used.
    async fn follow(&self, s: &Sends, me: Address, nonce: u64) -> Result<Followed, SendError> {
        let node = |detail: String| SendError::node("following the key's transactions", detail);
        let rows: Vec<Attempt> = sqlx::query_as(
            "SELECT id, what, reference, tx_hash, raw, max_fee::text AS max_fee, priority_fee::text AS priority_fee,
                    state, extract(epoch FROM now() - sent_at)::float8 AS age_secs
             FROM key_sends WHERE chain_id = $1 AND sender = $2 AND nonce = $3 ORDER BY id",
        )
        .bind(self.chain_id as i64)
        .bind(format!("{me:#x}"))
        .bind(nonce as i64)
        .fetch_all(&s.pool)
        .await
        .map_err(|e| node(format!("reading the key's sends: {e}")))?;
        let receipt = |hash: &str| {
            let hash = hash.parse::<B256>();
            async move {
                match hash {
                    Ok(h) => self
                        .provider
                        .get_transaction_receipt(h)
                        .await
                        .map_err(|e| node(format!("reading a receipt: {e}"))),
                    Err(_) => Ok(None),
                }
            }
        };
        if let Some(m) = rows.iter().find(|r| r.state == "mined")
            && let Some(r) = receipt(&m.tx_hash).await?
        {
            return Ok(Followed::Mined(Box::new(r)));
        }
        let live: Vec<&Attempt> = rows.iter().filter(|r| r.state == "sent").collect();
        let Some(newest) = live.last() else {
            return Ok(Followed::Dropped);
        };
        for a in &live {
            if let Some(r) = receipt(&a.tx_hash).await? {
                self.settle_nonce(s, me, nonce, Some(a.id)).await?;
                return Ok(Followed::Mined(Box::new(r)));
            }
        }
        let used = self
            .provider
            .get_transaction_count(me)
            .latest()
            .await
            .map_err(|e| node(format!("reading the key's nonce: {e}")))?
            > nonce;
        if !used {
            return Ok(Followed::Waiting(Box::new((*newest).clone())));
        }
        // mined between the two reads, or a node that counts a transaction before it serves its receipt:
        // dropped only once the nonce has been used with no receipt of ours for a while
        for a in &live {
            if let Some(r) = receipt(&a.tx_hash).await? {
                self.settle_nonce(s, me, nonce, Some(a.id)).await?;
                return Ok(Followed::Mined(Box::new(r)));
            }
        }
        let unreceipted: Option<f64> = sqlx::query_scalar(
            "UPDATE key_sends SET unreceipted_since = COALESCE(unreceipted_since, now())
             WHERE chain_id = $1 AND sender = $2 AND nonce = $3 AND state = 'sent'
             RETURNING extract(epoch FROM now() - unreceipted_since)::float8",
        )
        .bind(self.chain_id as i64)
        .bind(format!("{me:#x}"))
        .bind(nonce as i64)
        .fetch_optional(&s.pool)
        .await
        .map_err(|e| node(format!("recording the key's sends: {e}")))?;
        if unreceipted.is_some_and(|secs| secs < DROPPED_AFTER.as_secs_f64()) {
            return Ok(Followed::Used);
        }
        tracing::warn!(
            nonce,
            what = newest.what,
            reference = newest.reference,
            "the key's nonce went to another transaction; this one was never mined"
        );
        self.settle_nonce(s, me, nonce, None).await?;
        Ok(Followed::Dropped)
    }

    /// Marks the live attempts at `nonce`: `mined` the one mined (the others `replaced`), or all `dropped`.
    async fn settle_nonce(
        &self,
        s: &Sends,
        me: Address,
        nonce: u64,
        mined: Option<i64>,
    ) -> Result<(), SendError> {
        sqlx::query(
            "UPDATE key_sends SET settled_at = now(),
                    state = CASE WHEN $4::bigint IS NULL THEN 'dropped'
                                 WHEN id = $4 THEN 'mined' ELSE 'replaced' END
             WHERE chain_id = $1 AND sender = $2 AND nonce = $3 AND state = 'sent'",
        )
        .bind(self.chain_id as i64)
        .bind(format!("{me:#x}"))
        .bind(nonce as i64)
        .bind(mined)
        .execute(&s.pool)
        .await
        .map_err(|e| SendError::node("recording a mined transaction", e))?;
        Ok(())
    }

    /// Signs `newest` again at its nonce with higher fees, unless another process did it first (the key's
    /// lock, then the newest attempt is read again).
    async fn bump(
        &self,
        s: &Sends,
        me: Address,
        wallet: &EthereumWallet,
        newest: &Attempt,
        nonce: u64,
    ) -> Result<B256, SendError> {
        let what = newest.what.as_str();
        let node = |detail: String| SendError::node(what, detail);
        // the nonce is the attempt's own: the lock only, no new nonce
        let mut lease = self.lock(s, me, what).await?;
        let conn = lease
            .conn()
            .map_err(|e| node(format!("reading the key's sends: {e}")))?;
        let still: Option<i64> = sqlx::query_scalar(
            "SELECT max(id) FROM key_sends WHERE chain_id = $1 AND sender = $2 AND nonce = $3 AND state = 'sent'",
        )
        .bind(self.chain_id as i64)
        .bind(format!("{me:#x}"))
        .bind(nonce as i64)
        .fetch_one(&mut *conn)
        .await
        .map_err(|e| node(format!("reading the key's sends: {e}")))?;
        if still != Some(newest.id) {
            lease.release().await;
            return newest
                .tx_hash
                .parse()
                .map_err(|_| node(format!("stored hash {:?}", newest.tx_hash)));
        }
        let envelope = TxEnvelope::decode_2718(&mut newest.raw.as_slice())
            .map_err(|e| node(format!("decoding the stored transaction: {e}")))?;
        let fees = self
            .provider
            .estimate_eip1559_fees()
            .await
            .map_err(|e| node(format!("estimating fees: {e}")))?;
        let up = |v: &str| -> Result<u128, SendError> {
            let v: u128 = v.parse().map_err(|_| node(format!("stored fee {v:?}")))?;
            Ok(v.saturating_mul(100 + u128::from(s.policy.bump_percent)) / 100 + 1)
        };
        let priority = up(&newest.priority_fee)?.max(fees.max_priority_fee_per_gas);
        let max_fee = up(&newest.max_fee)?.max(fees.max_fee_per_gas).max(priority);
        let signing = Signing {
            what,
            reference: newest.reference.as_deref(),
            nonce,
            max_fee,
            priority,
        };
        let request: TransactionRequest = envelope.into();
        let sent = self
            .sign_store_broadcast(&mut lease, me, wallet, &signing, request)
            .await;
        lease.release().await;
        let hash = sent?;
        tracing::info!(
            what,
            nonce,
            tx = %hash,
            was = newest.tx_hash,
            max_fee,
            "no receipt for {:.0} s: re-sent with higher fees",
            newest.age_secs
        );
        Ok(hash)
    }

    /// Sends `a`'s bytes again if the node does not know the transaction.
    async fn rebroadcast_if_unknown(&self, a: &Attempt) {
        let Ok(hash) = a.tx_hash.parse::<B256>() else {
            return;
        };
        if matches!(self.provider.get_transaction_by_hash(hash).await, Ok(None))
            && let Err(e) = self.provider.send_raw_transaction(&a.raw).await
        {
            tracing::debug!(error = %e, tx = %hash, "re-broadcast");
        }
    }

    /// Follows every live transaction of the key once: settles the mined and the dropped, re-sends with
    /// higher fees those waiting past the policy, and gives the node back those it lost. Run periodically
    /// by `serve`, so a transaction whose waiter stopped still lands or is replaced.
    pub async fn tend_sends(&self) -> Result<Tended, SendError> {
        let (Some(s), Some(me), Some(wallet)) = (&self.sends, self.signer, &self.wallet) else {
            return Ok(Tended::default());
        };
        let nonces: Vec<i64> = sqlx::query_scalar(
            "SELECT DISTINCT nonce FROM key_sends WHERE chain_id = $1 AND sender = $2 AND state = 'sent'
             ORDER BY nonce",
        )
        .bind(self.chain_id as i64)
        .bind(format!("{me:#x}"))
        .fetch_all(&s.pool)
        .await
        .map_err(|e| SendError::node("tending the key's transactions", e))?;
        let mut t = Tended::default();
        for n in nonces {
            let n = n as u64;
            match self.follow(s, me, n).await? {
                Followed::Mined(_) => t.mined += 1,
                Followed::Dropped => t.dropped += 1,
                Followed::Used => t.waiting += 1,
                Followed::Waiting(newest) => {
                    t.waiting += 1;
                    if newest.age_secs >= s.policy.bump_after.as_secs_f64() {
                        self.bump(s, me, wallet, &newest, n).await?;
                        t.bumped += 1;
                    } else {
                        self.rebroadcast_if_unknown(&newest).await;
                    }
                }
            }
        }
        Ok(t)
    }
}

/// What one attempt is signed with.
struct Signing<'a> {
    what: &'a str,
    reference: Option<&'a str>,
    nonce: u64,
    max_fee: u128,
    priority: u128,
}

/// A mined transaction's receipt, or its revert (final).
fn mined(what: &str, r: TransactionReceipt) -> Result<TransactionReceipt, SendError> {
    if r.status() {
        Ok(r)
    } else {
        Err(SendError::Reverted {
            what: what.to_owned(),
            reason: format!("{} reverted", r.transaction_hash),
        })
    }
}

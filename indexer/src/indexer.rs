//! The indexing loop: backfill from the deployment block in adaptive ranges, then follow the head; repair
//! reorgs; survive node and database outages.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use alloy::primitives::B256;
use futures::StreamExt;
use openledger_chain::{ContractKind, Deployment};
use sqlx::PgPool;
use tokio::sync::watch;

use crate::IndexerError;
use crate::config::IndexerConfig;
use crate::decode::{DecodedEvent, EventDecoder, Skip};
use crate::source::{BlockRef, ChainSource, RpcError};
use crate::store::{RangeWrite, Store};

/// Progress, for status displays and metrics.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IndexerStatus {
    pub chain_id: u64,
    /// Latest head seen on the node.
    pub head: u64,
    /// Every block up to here is in the database.
    pub indexed_through: u64,
    /// Events written by this process.
    pub events_written: u64,
    /// Reorgs repaired by this process.
    pub reorgs: u64,
}

/// What one step did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Indexed blocks up to `through` (after repairing a reorg if `reorg` is set).
    Indexed {
        through: u64,
        events: usize,
        reorg: bool,
    },
    /// Nothing to do: caught up with `head - confirmations`.
    Idle { head: u64 },
}

/// Whether `run` returns once caught up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Keep following the head until dropped.
    Follow,
    /// Return once every block up to `head - confirmations` (as seen then) is indexed.
    UntilHead,
}

/// One chain, one deployment, one database.
#[derive(Debug)]
pub struct Indexer {
    cfg: IndexerConfig,
    deployment: Deployment,
    source: ChainSource,
    fetcher: Fetcher,
    store: Store,
    /// The next range, being read while the current one is written (backfill).
    prefetch: Option<(u64, tokio::task::JoinHandle<Result<Fetched, IndexerError>>)>,
    through: u64,
    /// Remembered (number -> hash) inside the reorg window; mirrors indexer_blocks.
    recent: BTreeMap<u64, B256>,
    range: u64,
    warned_topics: HashSet<Option<B256>>,
    status: watch::Sender<IndexerStatus>,
}

impl Indexer {
    /// Check the node and the manifest against each other, and load the checkpoint.
    pub async fn new(
        cfg: IndexerConfig,
        deployment: Deployment,
        pool: PgPool,
    ) -> Result<Self, IndexerError> {
        cfg.validate()?;
        deployment.validate()?;
        let source = connect_with_retry(&cfg).await?;
        let chain_id = source.chain_id().await?;
        if chain_id != deployment.chain_id {
            return Err(IndexerError::WrongChain {
                manifest: deployment.chain_id,
                node: chain_id,
                url: cfg.rpc_url,
            });
        }
        let head = source.head().await?;
        for kind in ContractKind::ALL {
            let info = deployment.contract(kind)?;
            if info.block > head {
                return Err(IndexerError::NotDeployed {
                    contract: kind.name(),
                    address: info.address,
                    chain_id,
                    detail: format!(
                        "its deployment block {} is above the node's head {head}",
                        info.block
                    ),
                });
            }
            if source.code_size(info.address).await? == 0 {
                return Err(IndexerError::NotDeployed {
                    contract: kind.name(),
                    address: info.address,
                    chain_id,
                    detail: "no code at that address (a reset devnet, or the wrong manifest?)"
                        .into(),
                });
            }
        }
        let decoder = Arc::new(EventDecoder::new(&deployment)?);
        let addresses = decoder
            .addresses()
            .iter()
            .map(|a| format!("{a:#x}"))
            .collect();
        let store = Store::new(pool, chain_id, deployment.key()?, addresses);
        let through = store.checkpoint(deployment.start_block).await?;
        let recent = store.recent_blocks().await?.into_iter().collect();
        tracing::info!(chain_id, head, indexed_through = through, url = %cfg.rpc_url, events = decoder.event_count(), "indexer ready");
        let (status, _) = watch::channel(IndexerStatus {
            chain_id,
            head,
            indexed_through: through,
            ..Default::default()
        });
        let range = cfg.initial_range;
        let fetcher = Fetcher {
            source: source.clone(),
            decoder,
            reorg_window: cfg.reorg_window,
            min_range: cfg.min_range,
        };
        Ok(Self {
            cfg,
            deployment,
            source,
            fetcher,
            store,
            prefetch: None,
            through,
            recent,
            range,
            warned_topics: HashSet::new(),
            status,
        })
    }

    pub fn status(&self) -> watch::Receiver<IndexerStatus> {
        self.status.subscribe()
    }

    pub fn deployment(&self) -> &Deployment {
        &self.deployment
    }

    pub fn indexed_through(&self) -> u64 {
        self.through
    }

    /// Index until caught up (`Mode::UntilHead`) or forever (`Mode::Follow`). Transient failures (node or
    /// database unreachable, the chain moving under a read) are logged and retried with backoff. Dropping the
    /// future at any point is safe: each range is one transaction.
    pub async fn run(&mut self, mode: Mode) -> Result<(), IndexerError> {
        let mut heads = if self.source.is_pubsub() && mode == Mode::Follow {
            match self.source.new_heads().await {
                Ok(s) => Some(Box::pin(s)),
                Err(e) => {
                    tracing::warn!(error = %e, "no newHeads subscription; polling instead");
                    None
                }
            }
        } else {
            None
        };
        let mut backoff = Backoff::default();
        loop {
            match self.step().await {
                Ok(Step::Indexed { .. }) => backoff.reset(),
                Ok(Step::Idle { .. }) => {
                    backoff.reset();
                    if mode == Mode::UntilHead {
                        return Ok(());
                    }
                    match heads.as_mut() {
                        Some(stream) => {
                            // the subscription wakes us; the timeout covers a silent or dropped one
                            if let Ok(None) =
                                tokio::time::timeout(self.cfg.poll_interval * 10, stream.next())
                                    .await
                            {
                                tracing::warn!("newHeads subscription ended; polling instead");
                                heads = None;
                            }
                        }
                        None => tokio::time::sleep(self.cfg.poll_interval).await,
                    }
                }
                Err(e) if e.is_transient() => {
                    let delay = backoff.next();
                    tracing::warn!(error = %e, "indexer step failed; retrying in {delay:?}");
                    if let IndexerError::Conflict { .. } = e {
                        self.reload().await?;
                    }
                    tokio::time::sleep(delay).await;
                }
                Err(e) => return Err(e),
            }
        }
    }

    async fn reload(&mut self) -> Result<(), IndexerError> {
        self.through = self.store.checkpoint(self.deployment.start_block).await?;
        self.recent = self.store.recent_blocks().await?.into_iter().collect();
        Ok(())
    }

    /// One unit of work: repair a reorg, or index the next range, or report that there is nothing to do.
    pub async fn step(&mut self) -> Result<Step, IndexerError> {
        let head = self.source.head().await?;
        self.status.send_modify(|s| s.head = head);
        let target = head.saturating_sub(self.cfg.confirmations);

        if let Some(ancestor) = self.find_fork(head).await? {
            self.cancel_prefetch();
            let to = target.min(ancestor + self.range).max(ancestor);
            let fetched = if to > ancestor {
                Some(
                    self.fetcher
                        .fetch(ancestor + 1, to, head, self.recent.get(&ancestor).copied())
                        .await?,
                )
            } else {
                None
            };
            let (events, blocks, to) = match &fetched {
                Some(f) => (&f.events[..], &f.blocks[..], f.to),
                None => (&[][..], &[][..], ancestor),
            };
            let n = events.len();
            self.commit(Some(ancestor), events, blocks, to, head)
                .await?;
            self.status.send_modify(|s| s.reorgs += 1);
            tracing::warn!(ancestor, through = to, events = n, "reorg repaired");
            return Ok(Step::Indexed {
                through: to,
                events: n,
                reorg: true,
            });
        }
        if self.through >= target {
            self.cancel_prefetch();
            return Ok(Step::Idle { head });
        }
        let from = self.through + 1;
        let fetched = match self.prefetch.take() {
            Some((start, handle)) if start == from => match handle.await {
                Ok(r) => r?,
                Err(e) => {
                    return Err(IndexerError::ChainMoved(format!(
                        "prefetch task failed: {e}"
                    )));
                }
            },
            other => {
                if let Some((_, h)) = other {
                    h.abort();
                }
                let to = target.min(self.through + self.range);
                self.fetcher
                    .fetch(from, to, head, self.recent.get(&self.through).copied())
                    .await?
            }
        };
        self.adapt(&fetched);
        // Read the next range while this one is written.
        if fetched.to < target {
            let (next_from, next_to) = (fetched.to + 1, target.min(fetched.to + self.range));
            let prev = fetched.blocks.last().map(|b| b.1);
            let fetcher = self.fetcher.clone();
            let handle =
                tokio::spawn(async move { fetcher.fetch(next_from, next_to, head, prev).await });
            self.prefetch = Some((next_from, handle));
        }
        let t0 = Instant::now();
        let n = fetched.events.len();
        self.commit(None, &fetched.events, &fetched.blocks, fetched.to, head)
            .await?;
        tracing::debug!(
            from,
            to = fetched.to,
            events = n,
            range = self.range,
            fetch_ms = fetched.elapsed.as_millis() as u64,
            write_ms = t0.elapsed().as_millis() as u64,
            "indexed range"
        );
        Ok(Step::Indexed {
            through: fetched.to,
            events: n,
            reorg: false,
        })
    }

    fn cancel_prefetch(&mut self) {
        if let Some((_, h)) = self.prefetch.take() {
            h.abort();
        }
    }

    /// Size the next range: shrink after a refusal, aim at `target_logs_per_range` logs, grow while small.
    fn adapt(&mut self, f: &Fetched) {
        for (address, topic0, block, why) in &f.skipped {
            if self.warned_topics.insert(*topic0) {
                tracing::warn!(%address, ?topic0, ?block, why, "skipping a log");
            }
        }
        let span = f.to - f.from + 1;
        let target = self.cfg.target_logs_per_range as u64;
        self.range = if let Some(shrunk) = f.shrunk_to {
            shrunk
        } else if f.logs as u64 > target {
            (span * target / f.logs as u64).max(1)
        } else if (f.logs as u64) < target / 2 && f.elapsed < self.cfg.rpc_timeout / 4 {
            (self.range * 2).min(self.cfg.max_range)
        } else {
            self.range
        }
        .clamp(self.cfg.min_range, self.cfg.max_range);
    }

    async fn commit(
        &mut self,
        rollback_above: Option<u64>,
        events: &[DecodedEvent],
        blocks: &[(u64, B256)],
        through: u64,
        head: u64,
    ) -> Result<(), IndexerError> {
        let forget_below = head.saturating_sub(self.cfg.reorg_window);
        self.store
            .write(RangeWrite {
                rollback_above,
                events,
                blocks,
                expected_through: self.through,
                new_through: through,
                forget_below,
            })
            .await?;
        if let Some(above) = rollback_above {
            self.recent.retain(|n, _| *n <= above);
        }
        self.recent.extend(blocks.iter().copied());
        self.recent.retain(|n, _| *n >= forget_below);
        self.through = through;
        self.status.send_modify(|s| {
            s.indexed_through = through;
            s.events_written += events.len() as u64;
        });
        Ok(())
    }

    /// If the newest remembered block is no longer canonical, the newest remembered block that still is.
    async fn find_fork(&mut self, head: u64) -> Result<Option<u64>, IndexerError> {
        let Some((&tip, &tip_hash)) = self.recent.iter().next_back() else {
            return Ok(None);
        };
        if tip <= head
            && let Some(b) = self.source.block(tip).await?
            && b.hash == tip_hash
        {
            return Ok(None);
        }
        tracing::warn!(
            block = tip,
            "indexed block is no longer canonical: looking for the common ancestor"
        );
        for (&n, &hash) in self.recent.iter().rev() {
            if n > head {
                continue;
            }
            if let Some(b) = self.source.block(n).await?
                && b.hash == hash
            {
                return Ok(Some(n));
            }
        }
        let oldest = self.recent.keys().next().copied().unwrap_or(tip);
        Err(IndexerError::ReorgTooDeep {
            oldest_known: oldest,
            window: self.cfg.reorg_window,
        })
    }
}

/// What one eth_getLogs range produced.
#[derive(Debug)]
struct Fetched {
    from: u64,
    /// The range actually covered (the node may have made us shrink it).
    to: u64,
    events: Vec<DecodedEvent>,
    /// (number, hash) of the blocks to remember, the last being `to`.
    blocks: Vec<(u64, B256)>,
    logs: usize,
    elapsed: Duration,
    /// Set when the node refused a larger range.
    shrunk_to: Option<u64>,
    skipped: Vec<(
        alloy::primitives::Address,
        Option<B256>,
        Option<u64>,
        String,
    )>,
}

/// Reads ranges; cheap to clone, so the next range can be read while the current one is written.
#[derive(Debug, Clone)]
struct Fetcher {
    source: ChainSource,
    decoder: Arc<EventDecoder>,
    reorg_window: u64,
    min_range: u64,
}

impl Fetcher {
    /// Logs and block hashes of `[from, to]`, shrinking `to` while the node refuses the range. `prev` is the
    /// indexed hash of block `from - 1`, if known: the range must build on it.
    async fn fetch(
        &self,
        from: u64,
        to: u64,
        head: u64,
        prev: Option<B256>,
    ) -> Result<Fetched, IndexerError> {
        let mut to = to;
        let mut shrunk_to = None;
        let started = Instant::now();
        let logs = loop {
            match self.source.logs(self.decoder.addresses(), from, to).await {
                Ok(logs) => break logs,
                Err(RpcError::TooLarge(msg)) if to > from => {
                    let span = (to - from)
                        .div_ceil(2)
                        .max(1)
                        .max(self.min_range.min(to - from));
                    to = from + span - 1;
                    shrunk_to = Some(span);
                    tracing::info!(from, to, reason = %msg, "node refused the range; shrinking it");
                }
                Err(e) => return Err(e.into()),
            }
        };
        // Inside the reorg window every block's hash is checked against its logs and its parent;
        // below it, only the range's end is remembered.
        let window_start = head.saturating_sub(self.reorg_window).max(from);
        let mut headers: Vec<BlockRef> = Vec::new();
        for n in window_start..=to {
            headers.push(
                self.source
                    .block(n)
                    .await?
                    .ok_or_else(|| IndexerError::ChainMoved(format!("block {n} vanished")))?,
            );
        }
        if headers.is_empty() {
            headers.push(
                self.source
                    .block(to)
                    .await?
                    .ok_or_else(|| IndexerError::ChainMoved(format!("block {to} vanished")))?,
            );
        }
        for pair in headers.windows(2) {
            if pair[1].number == pair[0].number + 1 && pair[1].parent_hash != pair[0].hash {
                return Err(IndexerError::ChainMoved(format!(
                    "block {} changed while reading",
                    pair[1].number
                )));
            }
        }
        if let (Some(first), Some(prev)) = (headers.first(), prev)
            && first.number == from
            && first.parent_hash != prev
        {
            return Err(IndexerError::ChainMoved(format!(
                "block {from} no longer builds on the indexed chain"
            )));
        }
        let checked: BTreeMap<u64, B256> = headers.iter().map(|h| (h.number, h.hash)).collect();
        let mut events = Vec::with_capacity(logs.len());
        let mut skipped = Vec::new();
        for log in &logs {
            if let (Some(n), Some(h)) = (log.block_number, log.block_hash)
                && checked.get(&n).is_some_and(|expected| *expected != h)
            {
                return Err(IndexerError::ChainMoved(format!(
                    "logs of block {n} came from a replaced block"
                )));
            }
            match self.decoder.decode(log) {
                Ok(e) => events.push(e),
                Err(Skip::UnknownEvent { topic0 }) => skipped.push((
                    log.address(),
                    topic0,
                    log.block_number,
                    "event not in the committed ABIs".into(),
                )),
                Err(other) => skipped.push((
                    log.address(),
                    log.topic0().copied(),
                    log.block_number,
                    format!("{other:?}"),
                )),
            }
        }
        let blocks = headers.iter().map(|h| (h.number, h.hash)).collect();
        Ok(Fetched {
            from,
            to,
            events,
            blocks,
            logs: logs.len(),
            elapsed: started.elapsed(),
            shrunk_to,
            skipped,
        })
    }
}

async fn connect_with_retry(cfg: &IndexerConfig) -> Result<ChainSource, IndexerError> {
    let deadline = Instant::now() + cfg.startup_timeout;
    let mut backoff = Backoff::default();
    loop {
        let attempt = async {
            let s = ChainSource::connect(&cfg.rpc_url, cfg.rpc_timeout).await?;
            s.chain_id().await?;
            Ok::<_, RpcError>(s)
        };
        match attempt.await {
            Ok(s) => return Ok(s),
            Err(e) if Instant::now() >= deadline => {
                return Err(IndexerError::NoNode {
                    url: cfg.rpc_url.clone(),
                    waited: cfg.startup_timeout,
                    detail: e.to_string(),
                });
            }
            Err(e) => {
                let delay = backoff.next();
                tracing::warn!(error = %e, "node not answering yet; retrying in {delay:?}");
                tokio::time::sleep(delay).await;
            }
        }
    }
}

#[derive(Debug)]
struct Backoff(Duration);

impl Default for Backoff {
    fn default() -> Self {
        Self(Duration::from_millis(200))
    }
}

impl Backoff {
    fn next(&mut self) -> Duration {
        let d = self.0;
        self.0 = (self.0 * 2).min(Duration::from_secs(30));
        d
    }

    fn reset(&mut self) {
        *self = Self::default();
    }
}

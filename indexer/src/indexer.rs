//! The indexing loop: backfill from the deployment block in adaptive ranges, then follow the head; repair
//! reorgs; survive node and database outages.

use std::collections::{BTreeMap, HashSet};
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
    decoder: EventDecoder,
    store: Store,
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
        let decoder = EventDecoder::new(&deployment)?;
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
        Ok(Self {
            cfg,
            deployment,
            source,
            decoder,
            store,
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
            let to = target.min(ancestor + self.range).max(ancestor);
            let (events, blocks) = if to > ancestor {
                self.fetch(ancestor + 1, to, head).await?
            } else {
                (vec![], vec![])
            };
            let to = blocks.last().map(|b| b.0).unwrap_or(to);
            let n = events.len();
            self.commit(Some(ancestor), &events, &blocks, to, head)
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
            return Ok(Step::Idle { head });
        }
        let from = self.through + 1;
        let to = target.min(self.through + self.range);
        let (events, blocks) = self.fetch(from, to, head).await?;
        let to = blocks.last().map(|b| b.0).unwrap_or(to);
        let n = events.len();
        self.commit(None, &events, &blocks, to, head).await?;
        tracing::debug!(from, to, events = n, range = self.range, "indexed range");
        Ok(Step::Indexed {
            through: to,
            events: n,
            reorg: false,
        })
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

    /// Logs and block hashes of `[from, to]`, shrinking `to` while the node refuses the range. Returns the
    /// decoded events and the (number, hash) of blocks to remember, the last being the range's end.
    async fn fetch(
        &mut self,
        from: u64,
        to: u64,
        head: u64,
    ) -> Result<(Vec<DecodedEvent>, Vec<(u64, B256)>), IndexerError> {
        let mut to = to;
        let started = Instant::now();
        let logs = loop {
            match self.source.logs(self.decoder.addresses(), from, to).await {
                Ok(logs) => break logs,
                Err(RpcError::TooLarge(msg)) if to > from => {
                    let span = (to - from).div_ceil(2).max(1);
                    self.range = span.max(self.cfg.min_range);
                    to = from + span - 1;
                    tracing::info!(from, to, reason = %msg, "node refused the range; shrinking it");
                }
                Err(e) => return Err(e.into()),
            }
        };
        // Inside the reorg window every block's hash is checked against its logs and its parent;
        // below it, only the range's end is remembered.
        let window_start = head.saturating_sub(self.cfg.reorg_window).max(from);
        let mut headers: Vec<BlockRef> = Vec::new();
        for n in window_start..=to {
            headers.push(
                self.source
                    .block(n)
                    .await?
                    .ok_or(IndexerError::ChainMoved(format!("block {n} vanished")))?,
            );
        }
        if window_start > to || headers.is_empty() {
            headers.push(
                self.source
                    .block(to)
                    .await?
                    .ok_or(IndexerError::ChainMoved(format!("block {to} vanished")))?,
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
        if let (Some(first), Some(prev)) = (
            headers.first(),
            from.checked_sub(1).and_then(|p| self.recent.get(&p)),
        ) && first.number == from
            && first.parent_hash != *prev
        {
            return Err(IndexerError::ChainMoved(format!(
                "block {from} no longer builds on the indexed chain"
            )));
        }
        let checked: BTreeMap<u64, B256> = headers.iter().map(|h| (h.number, h.hash)).collect();
        let mut events = Vec::with_capacity(logs.len());
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
                Err(Skip::UnknownEvent { topic0 }) => {
                    if self.warned_topics.insert(topic0) {
                        tracing::warn!(address = %log.address(), ?topic0, block = ?log.block_number, "skipping a log whose event is not in the committed ABIs");
                    }
                }
                Err(skip) => {
                    tracing::warn!(address = %log.address(), block = ?log.block_number, ?skip, "skipping a log")
                }
            }
        }
        // adapt: grow while responses stay small and quick
        if logs.len() < self.cfg.target_logs_per_range / 2
            && started.elapsed() < self.cfg.rpc_timeout / 4
        {
            self.range = (self.range * 2).min(self.cfg.max_range);
        }
        let blocks = headers.iter().map(|h| (h.number, h.hash)).collect();
        Ok((events, blocks))
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

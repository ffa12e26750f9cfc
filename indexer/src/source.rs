//! The chain side: JSON-RPC over HTTP or WebSocket, with per-call timeouts and errors sorted into "the node
//! refused this range" (shrink it), and "try again later".

use std::time::Duration;

use alloy::eips::BlockNumberOrTag;
use alloy::network::AnyNetwork;
use alloy::primitives::{Address, B256};
use alloy::providers::{DynProvider, Provider, RootProvider};
use alloy::rpc::client::ClientBuilder;
use alloy::rpc::types::{Filter, Log};
use alloy::transports::ws::{WebSocketConfig, WsConnect};
use futures::{Stream, StreamExt};

/// An RPC failure, sorted by what the indexer should do about it.
#[derive(Debug, thiserror::Error)]
pub enum RpcError {
    /// The node will not answer a query this big (range or response-size limit, or it timed out on it).
    #[error("node refused the query as too large: {0}")]
    TooLarge(String),
    /// Anything else: connection refused, a timeout, a server error. Retried with backoff.
    #[error("{0}")]
    Transient(String),
}

/// A block's identity.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlockRef {
    pub number: u64,
    pub hash: B256,
    pub parent_hash: B256,
}

/// One JSON-RPC endpoint.
#[derive(Debug, Clone)]
pub struct ChainSource {
    provider: DynProvider<AnyNetwork>,
    url: String,
    timeout: Duration,
}

impl ChainSource {
    /// Connect (HTTP, or WebSocket for `ws://` / `wss://` URLs). Fails fast: the caller decides how long to retry.
    pub async fn connect(url: &str, timeout: Duration) -> Result<Self, RpcError> {
        let connect = async {
            if is_ws(url) {
                // Backfill responses can be tens of MB; tungstenite's default cap is 16 MiB per message.
                let config = WebSocketConfig::default()
                    .max_message_size(Some(MAX_WS_MESSAGE))
                    .max_frame_size(Some(MAX_WS_MESSAGE));
                let client = ClientBuilder::default()
                    .ws(WsConnect::new(url).with_config(config))
                    .await?;
                Ok(RootProvider::<AnyNetwork>::new(client))
            } else {
                RootProvider::<AnyNetwork>::connect(url).await
            }
        };
        let provider = tokio::time::timeout(timeout, connect)
            .await
            .map_err(|_| RpcError::Transient(format!("connecting to {url} timed out")))?
            .map_err(|e| RpcError::Transient(format!("cannot connect to {url}: {e}")))?;
        Ok(Self {
            provider: provider.erased(),
            url: url.to_string(),
            timeout,
        })
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    pub fn is_pubsub(&self) -> bool {
        is_ws(&self.url)
    }

    pub fn provider(&self) -> &DynProvider<AnyNetwork> {
        &self.provider
    }

    async fn call<T, E: std::fmt::Display>(
        &self,
        what: &str,
        fut: impl IntoFuture<Output = Result<T, E>>,
    ) -> Result<T, RpcError> {
        match tokio::time::timeout(self.timeout, fut.into_future()).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(classify(what, &e.to_string())),
            Err(_) => Err(RpcError::Transient(format!(
                "{what}: no answer within {:?}",
                self.timeout
            ))),
        }
    }

    pub async fn chain_id(&self) -> Result<u64, RpcError> {
        self.call("eth_chainId", self.provider.get_chain_id()).await
    }

    pub async fn head(&self) -> Result<u64, RpcError> {
        self.call("eth_blockNumber", self.provider.get_block_number())
            .await
    }

    pub async fn code_size(&self, address: Address) -> Result<usize, RpcError> {
        Ok(self
            .call("eth_getCode", self.provider.get_code_at(address))
            .await?
            .len())
    }

    /// The block at `number`, or None past the head.
    pub async fn block(&self, number: u64) -> Result<Option<BlockRef>, RpcError> {
        let block = self
            .call(
                "eth_getBlockByNumber",
                self.provider
                    .get_block_by_number(BlockNumberOrTag::Number(number)),
            )
            .await?;
        Ok(block.map(|b| BlockRef {
            number,
            hash: b.header.hash,
            parent_hash: b.header.inner.parent_hash,
        }))
    }

    /// Logs of `addresses` in `[from, to]`. A timeout here counts as "too large": a node that cannot
    /// answer a range in time is asked for a smaller one.
    pub async fn logs(
        &self,
        addresses: &[Address],
        from: u64,
        to: u64,
    ) -> Result<Vec<Log>, RpcError> {
        let filter = Filter::new()
            .address(addresses.to_vec())
            .from_block(from)
            .to_block(to);
        match tokio::time::timeout(self.timeout, self.provider.get_logs(&filter)).await {
            Ok(Ok(logs)) => Ok(logs),
            // Over a WebSocket an oversized response kills the connection instead of returning an error:
            // a transport failure here is answered with a smaller range (it grows back once things work).
            Ok(Err(e))
                if self.is_pubsub() && !matches!(e, alloy::transports::RpcError::ErrorResp(_)) =>
            {
                Err(RpcError::TooLarge(format!(
                    "eth_getLogs [{from}, {to}] over WebSocket: {e}"
                )))
            }
            Ok(Err(e)) => Err(classify("eth_getLogs", &e.to_string())),
            Err(_) => Err(RpcError::TooLarge(format!(
                "eth_getLogs [{from}, {to}] timed out after {:?}",
                self.timeout
            ))),
        }
    }

    /// New block numbers as they are announced (WebSocket only).
    pub async fn new_heads(&self) -> Result<impl Stream<Item = u64> + Send + 'static, RpcError> {
        let sub = self
            .call("eth_subscribe(newHeads)", self.provider.subscribe_blocks())
            .await?;
        Ok(sub.into_stream().map(|h| h.inner.number))
    }
}

/// Largest WebSocket message accepted (a big eth_getLogs response).
const MAX_WS_MESSAGE: usize = 1 << 30;

fn is_ws(url: &str) -> bool {
    url.starts_with("ws://") || url.starts_with("wss://")
}

/// Sort an error message: the phrases nodes and providers use for range and size limits.
pub fn classify(what: &str, message: &str) -> RpcError {
    const TOO_LARGE: [&str; 14] = [
        "message too long",
        "space limit",
        "range",
        "too many",
        "too large",
        "limit exceeded",
        "exceeds",
        "exceeded",
        "response size",
        "more than",
        "max results",
        "payload too large",
        "413",
        "query timeout",
    ];
    let lower = message.to_ascii_lowercase();
    if TOO_LARGE.iter().any(|p| lower.contains(p)) {
        RpcError::TooLarge(format!("{what}: {message}"))
    } else {
        RpcError::Transient(format!("{what}: {message}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sorts_limit_errors_from_transient_ones() {
        for m in [
            "query returned more than 10000 results",
            "block range is too wide",
            "eth_getLogs is limited to a 1000 range",
            "HTTP error 413 with body: Payload Too Large",
            "Log response size exceeded",
        ] {
            assert!(
                matches!(classify("eth_getLogs", m), RpcError::TooLarge(_)),
                "{m}"
            );
        }
        for m in [
            "error sending request: Connection refused (os error 111)",
            "internal error",
        ] {
            assert!(
                matches!(classify("eth_getLogs", m), RpcError::Transient(_)),
                "{m}"
            );
        }
    }
}

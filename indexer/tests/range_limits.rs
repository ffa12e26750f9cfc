//! A node with an eth_getLogs range limit (as hosted RPC providers have): the indexer shrinks its ranges
//! until the node answers, and indexes everything. The "node" is a real anvil behind a small JSON-RPC proxy
//! that refuses ranges wider than a limit with the error message such providers use.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use openledger_testkit as common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use alloy::providers::{Provider, ProviderBuilder};
use common::{TestChain, dump, fresh_database};
use openledger_indexer::{Indexer, Mode};
use serde_json::{Value, json};
use sqlx::PgPool;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;

const MAX_RANGE: u64 = 3;

fn hex_u64(v: &Value) -> Option<u64> {
    u64::from_str_radix(v.as_str()?.trim_start_matches("0x"), 16).ok()
}

/// Serve JSON-RPC on a free port, forwarding to `upstream` but refusing eth_getLogs over `MAX_RANGE` blocks.
async fn limited_proxy(upstream: String, refused: Arc<AtomicUsize>) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let client = ProviderBuilder::new().connect_http(upstream.parse().unwrap());
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let (client, refused) = (client.clone(), refused.clone());
            tokio::spawn(async move {
                let mut reader = BufReader::new(stream);
                loop {
                    // one HTTP/1.1 request: headers, then Content-Length bytes of JSON
                    let mut len = 0usize;
                    loop {
                        let mut line = String::new();
                        if reader.read_line(&mut line).await.unwrap_or(0) == 0 {
                            return;
                        }
                        let lower = line.to_ascii_lowercase();
                        if let Some(v) = lower.strip_prefix("content-length:") {
                            len = v.trim().parse().unwrap_or(0);
                        }
                        if line == "\r\n" {
                            break;
                        }
                    }
                    let mut body = vec![0u8; len];
                    reader.read_exact(&mut body).await.unwrap();
                    let req: Value = serde_json::from_slice(&body).unwrap();
                    let method = req["method"].as_str().unwrap_or_default().to_string();
                    let params = req["params"].clone();
                    let too_wide = method == "eth_getLogs"
                        && match (
                            hex_u64(&params[0]["fromBlock"]),
                            hex_u64(&params[0]["toBlock"]),
                        ) {
                            (Some(from), Some(to)) => to - from + 1 > MAX_RANGE,
                            _ => true,
                        };
                    let resp = if too_wide {
                        refused.fetch_add(1, Ordering::SeqCst);
                        json!({"jsonrpc": "2.0", "id": req["id"],
                               "error": {"code": -32005, "message": format!("query exceeds max block range {MAX_RANGE}")}})
                    } else {
                        match client
                            .raw_request_dyn(
                                method.into(),
                                &serde_json::value::to_raw_value(&params).unwrap(),
                            )
                            .await
                        {
                            Ok(result) => {
                                json!({"jsonrpc": "2.0", "id": req["id"], "result": serde_json::from_str::<Value>(result.get()).unwrap()})
                            }
                            Err(e) => {
                                json!({"jsonrpc": "2.0", "id": req["id"], "error": {"code": -32000, "message": e.to_string()}})
                            }
                        }
                    };
                    let out = resp.to_string();
                    let head = format!(
                        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
                        out.len()
                    );
                    let stream = reader.get_mut();
                    if stream.write_all(head.as_bytes()).await.is_err()
                        || stream.write_all(out.as_bytes()).await.is_err()
                    {
                        return;
                    }
                }
            });
        }
    });
    url
}

#[sqlx::test(migrator = "openledger_db::MIGRATOR")]
async fn shrinks_ranges_the_node_refuses(pool: PgPool) {
    let chain = TestChain::start().await;
    let refused = Arc::new(AtomicUsize::new(0));
    let proxy = limited_proxy(chain.url.clone(), refused.clone()).await;
    let mut cfg = chain.config();
    cfg.rpc_url = proxy;
    cfg.initial_range = 64; // far wider than the node allows
    let mut indexer = Indexer::new(cfg, chain.deployment.clone(), pool.clone())
        .await
        .unwrap();
    indexer.run(Mode::UntilHead).await.unwrap();
    assert_eq!(indexer.indexed_through(), chain.head().await);
    assert!(
        refused.load(Ordering::SeqCst) > 0,
        "the node refused at least one range"
    );

    // the same database content as an index through the unlimited node
    let fresh = fresh_database(&pool).await;
    chain.index(&fresh, chain.config()).await;
    assert_eq!(dump(&pool).await, dump(&fresh).await);
    common::drop_fresh(fresh).await;
}

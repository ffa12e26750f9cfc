//! The Rust reward tree against `@openzeppelin/merkle-tree` (npm, installed by scripts/setup.sh): the same
//! random (account, cumulative) values, 1 to 10,000 leaves, give the same root and the same proofs.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;
use std::process::Command;

use alloy::primitives::{Address, B256, U256};
use openledger_settlement::{Entry, RewardTree};
use rand::{Rng, SeedableRng};
use serde_json::{Value, json};

fn root_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn random_entries(rng: &mut rand_chacha::ChaCha8Rng, n: usize) -> Vec<Entry> {
    let mut seen = std::collections::HashSet::new();
    let mut out = Vec::with_capacity(n);
    while out.len() < n {
        let account = Address::from(rng.random::<[u8; 20]>());
        if !seen.insert(account) {
            continue;
        }
        // amounts of every size: 1 wei, ordinary OPEN amounts, near uint128
        let cumulative = match rng.random_range(0..3) {
            0 => U256::from(rng.random_range(1u64..1000)),
            1 => U256::from(rng.random::<u64>()) * U256::from(1_000_000_000u64),
            _ => U256::from(rng.random::<u128>() | 1),
        };
        out.push(Entry {
            account,
            cumulative,
            amount: cumulative,
        });
    }
    out
}

#[test]
fn roots_and_proofs_match_openzeppelin_merkle_tree_for_1_to_10000_leaves() {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(20261203);
    let mut sizes = vec![1, 2, 3, 4, 5, 7, 8, 9, 16, 17, 100, 255, 1000, 4097, 10_000];
    sizes.extend((0..5).map(|_| rng.random_range(1..10_000)));
    let trees: Vec<RewardTree> = sizes
        .iter()
        .map(|&n| RewardTree::build(random_entries(&mut rng, n)).unwrap())
        .collect();
    let cases: Vec<Value> = trees
        .iter()
        .map(|t| {
            let n = t.entries.len();
            let probe: Vec<usize> = [0, n / 2, n - 1].into_iter().collect();
            json!({
                "values": t.entries.iter()
                    .map(|e| json!([e.account.to_checksum(None), e.cumulative.to_string()]))
                    .collect::<Vec<_>>(),
                "probe": probe,
            })
        })
        .collect();
    let dir = std::env::temp_dir().join(format!("ol-merkle-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let input = dir.join("cases.json");
    std::fs::write(&input, serde_json::to_vec(&cases).unwrap()).unwrap();
    let out = Command::new("node")
        .arg(root_dir().join("scripts/merkle-oz.js"))
        .arg(&input)
        .current_dir(root_dir())
        .output()
        .expect("node (scripts/setup.sh installs it and @openzeppelin/merkle-tree)");
    assert!(
        out.status.success(),
        "scripts/merkle-oz.js failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let reference: Vec<Value> = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(reference.len(), trees.len());
    for ((t, r), case) in trees.iter().zip(&reference).zip(&cases) {
        let n = t.entries.len();
        assert_eq!(
            r["root"].as_str().unwrap(),
            t.root().to_string(),
            "root of {n} leaves"
        );
        for (k, j) in case["probe"].as_array().unwrap().iter().enumerate() {
            let j = j.as_u64().unwrap() as usize;
            let want: Vec<B256> = r["proofs"][k]
                .as_array()
                .unwrap()
                .iter()
                .map(|h| h.as_str().unwrap().parse().unwrap())
                .collect();
            assert_eq!(t.proof(j), want, "proof of leaf {j} of {n}");
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
}

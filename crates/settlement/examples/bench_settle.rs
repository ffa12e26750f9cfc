//! Settlement at scale (scripts/bench-settle.sh): an epoch of `--payments` payments, each split over
//! `--shares` of `--accounts` contributors, on top of a previous epoch holding half of them: the split,
//! the cumulative leaves, the tree and every proof, timed, with the peak memory of the process. Writes the
//! root, total and two leaves' proofs to `--out` for the on-chain gas measurement.

use std::time::Instant;

use alloy::primitives::{Address, U256};
use anyhow::Context;
use openledger_chain::merkle::StandardMerkleTree;
use openledger_settlement::{RewardTree, Share, cumulate, leaf, split};
use rand::{Rng, SeedableRng};
use serde_json::json;

struct Args {
    accounts: usize,
    payments: usize,
    shares: usize,
    out: Option<String>,
    /// Accounts that must be leaves (for the claim measurement), comma-separated.
    include: Vec<Address>,
    /// Added to each included account's amount: a later root over the same accounts, for a returning
    /// claim.
    extra_wei: u64,
}

fn args() -> anyhow::Result<Args> {
    let mut a = Args {
        accounts: 1_000_000,
        payments: 1_000_000,
        shares: 3,
        out: None,
        include: Vec::new(),
        extra_wei: 0,
    };
    let mut it = std::env::args().skip(1);
    while let Some(k) = it.next() {
        let mut v = || it.next().with_context(|| format!("{k} needs a value"));
        match k.as_str() {
            "--accounts" => a.accounts = v()?.parse()?,
            "--payments" => a.payments = v()?.parse()?,
            "--shares" => a.shares = v()?.parse()?,
            "--out" => a.out = Some(v()?),
            "--extra-wei" => a.extra_wei = v()?.parse()?,
            "--include" => {
                a.include = v()?
                    .split(',')
                    .map(|s| s.parse().context("--include takes addresses"))
                    .collect::<anyhow::Result<_>>()?
            }
            other => anyhow::bail!("unknown argument {other}"),
        }
    }
    anyhow::ensure!(
        a.accounts >= a.include.len().max(1) && a.shares >= 1,
        "bad sizes"
    );
    Ok(a)
}

/// Peak resident memory of this process (Linux `VmHWM`), in MiB.
fn peak_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<f64>().ok())
        })
        .map_or(f64::NAN, |kb| kb / 1024.0)
}

fn main() -> anyhow::Result<()> {
    let a = args()?;
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(8);
    let mut accounts: Vec<Address> = a.include.clone();
    while accounts.len() < a.accounts {
        accounts.push(Address::from(rng.random::<[u8; 20]>()));
    }
    // the previous epoch: every other account, sorted, with some OPEN owed
    let mut previous: Vec<(Address, U256)> = accounts
        .iter()
        .skip(a.include.len())
        .step_by(2)
        .map(|&x| (x, U256::from(rng.random_range(1u64..1_000_000))))
        .collect();
    previous.sort_unstable_by_key(|p| p.0);
    previous.dedup_by_key(|p| p.0);
    // the payments: 40% of a 0.001-1 OPEN fee each, split over `shares` contributors with 10% unattributed
    let ppm = (900_000 / a.shares) as u32;
    let mut shares: Vec<Share> = Vec::with_capacity(a.payments * a.shares);
    let mut pools: Vec<U256> = Vec::with_capacity(a.payments);
    for i in 0..a.payments {
        pools.push(U256::from(
            rng.random_range(400_000_000_000_000u64..400_000_000_000_000_000),
        ));
        for k in 0..a.shares {
            // every account is paid at least once when payments*shares >= accounts
            let who = if i * a.shares + k < accounts.len() {
                accounts[i * a.shares + k]
            } else {
                accounts[rng.random_range(0..accounts.len())]
            };
            shares.push(Share { account: who, ppm });
        }
    }
    let protocol = Address::repeat_byte(0x7e);
    eprintln!(
        "bench-settle: {} accounts ({} with earlier leaves), {} payments x {} shares, {} threads",
        accounts.len(),
        previous.len(),
        a.payments,
        a.shares,
        rayon::current_num_threads()
    );

    let t0 = Instant::now();
    let mut s = split(
        pools
            .iter()
            .zip(shares.chunks(a.shares))
            .map(|(p, sh)| (*p, sh)),
        protocol,
    )?;
    let mut extra = U256::ZERO;
    for acc in &a.include {
        if let Ok(i) = s.amounts.binary_search_by_key(acc, |x| x.0) {
            s.amounts[i].1 += U256::from(a.extra_wei);
            extra += U256::from(a.extra_wei);
        }
    }
    let t_split = t0.elapsed().as_secs_f64();
    let entries = cumulate(&previous, &s.amounts)?;
    let t_cumulate = t0.elapsed().as_secs_f64() - t_split;
    let tree = RewardTree::build(entries)?;
    let t_tree = t0.elapsed().as_secs_f64() - t_split - t_cumulate;
    let proofs = tree.proofs();
    let total_s = t0.elapsed().as_secs_f64();
    let t_proofs = total_s - t_split - t_cumulate - t_tree;
    let proof_bytes: usize = proofs.iter().map(Vec::len).sum();
    let peak = peak_mib();

    // every number checks out: the split conserves the pool, proofs verify
    let paid = s.amounts.iter().fold(U256::ZERO, |x, (_, v)| x + *v);
    anyhow::ensure!(paid == s.pool + extra, "the split lost or made wei");
    let before = previous.iter().fold(U256::ZERO, |x, (_, v)| x + *v);
    anyhow::ensure!(
        tree.total() == before + s.pool + extra,
        "cumulative total is off"
    );
    for j in (0..tree.entries.len()).step_by((tree.entries.len() / 1000).max(1)) {
        let e = tree.entries[j];
        let p = openledger_settlement::proof_from_bytes(&proofs[j]).context("proof bytes")?;
        anyhow::ensure!(
            StandardMerkleTree::verify(tree.root(), leaf(e.account, e.cumulative), &p),
            "proof {j} does not verify"
        );
    }
    println!(
        "leaves {}  split {:.3} s  cumulate {:.3} s  tree {:.3} s  proofs {:.3} s  total {:.3} s",
        tree.entries.len(),
        t_split,
        t_cumulate,
        t_tree,
        t_proofs,
        total_s
    );
    println!(
        "proofs {:.1} MiB (depth {})  peak RSS {:.0} MiB (inputs included)",
        proof_bytes as f64 / (1 << 20) as f64,
        proofs.first().map_or(0, |p| p.len() / 32),
        peak
    );
    if let Some(out) = &a.out {
        let leaves: Vec<_> = a
            .include
            .iter()
            .map(|acc| {
                let j = tree
                    .entries
                    .iter()
                    .position(|e| e.account == *acc)
                    .context("an included account has no leaf")?;
                let e = tree.entries[j];
                Ok(
                    json!({"account": acc, "cumulative": e.cumulative.to_string(),
                          "proof": tree.proof(j)}),
                )
            })
            .collect::<anyhow::Result<_>>()?;
        std::fs::write(
            out,
            serde_json::to_vec(
                &json!({"root": tree.root(), "total": tree.total().to_string(), "leaves": leaves}),
            )?,
        )?;
    }
    println!("RESULT settle_1m_seconds {total_s:.3} s");
    println!("RESULT settle_1m_peak_rss {peak:.0} MiB");
    Ok(())
}

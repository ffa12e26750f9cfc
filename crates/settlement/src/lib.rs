//! What a settlement epoch owes, and the tree that lets each account claim it.
//!
//! The rule (`ol-settle/1`), applied to the payments an epoch includes:
//! - each payment's contributor-pool part `pool` is shared by its inference's attribution weights
//!   (parts per million, summing with the record's "no attribution" part to 1,000,000);
//! - per account, `amount = floor(Σ_payments pool · weight / 1,000,000)` (summed before the one rounding,
//!   so an account loses less than one wei per epoch, not per payment);
//! - the protocol (the FeeRouter's treasury) gets the rest: every "no attribution" part and the rounding
//!   dust, so the epoch's amounts sum to exactly the pool it includes; no wei is created or lost;
//! - leaves are cumulative: `(account, previous cumulative + amount)`, one per account ever paid, in the
//!   OpenZeppelin `StandardMerkleTree` (`openledger_chain::merkle`) that `RewardDistributor.claim` checks.

use std::collections::HashMap;

use alloy::primitives::{Address, B256, U256};
use openledger_chain::merkle::{self, StandardMerkleTree};
use rayon::prelude::*;

/// The name of the rule above, recorded in every epoch report.
pub const RULE: &str = "ol-settle/1";
/// Attribution weights are parts of this.
pub const PPM: u64 = 1_000_000;

/// One account's part of one payment's pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Share {
    pub account: Address,
    /// Parts per million of the payment's pool.
    pub ppm: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SettleError {
    #[error("payment {payment}'s weights sum to {sum} ppm, more than 1,000,000")]
    WeightsExceed { payment: usize, sum: u64 },
    #[error("amounts overflow 256 bits")]
    Overflow,
    #[error("the previous leaves are not sorted by account or repeat one ({0})")]
    PreviousUnsorted(Address),
    #[error("nothing to settle: no account has a positive cumulative amount")]
    Empty,
}

/// One epoch's split of its payments.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Split {
    /// What each account gets this epoch (the protocol's part included), sorted by account, all positive.
    pub amounts: Vec<(Address, U256)>,
    /// The pools of all included payments.
    pub pool: U256,
    /// The protocol's part: "no attribution" shares plus rounding dust.
    pub protocol: U256,
}

/// Splits `payments` (each: its pool amount and its shares) by the rule above; `protocol` takes the rest.
pub fn split<'a, I>(payments: I, protocol: Address) -> Result<Split, SettleError>
where
    I: IntoIterator<Item = (U256, &'a [Share])>,
{
    let ppm = U256::from(PPM);
    let mut pool = U256::ZERO;
    // Σ pool · weight per account, before the one division
    let mut scaled: HashMap<Address, U256> = HashMap::new();
    for (i, (amount, shares)) in payments.into_iter().enumerate() {
        let sum: u64 = shares.iter().map(|s| u64::from(s.ppm)).sum();
        if sum > PPM {
            return Err(SettleError::WeightsExceed { payment: i, sum });
        }
        pool = pool.checked_add(amount).ok_or(SettleError::Overflow)?;
        for s in shares.iter().filter(|s| s.ppm > 0) {
            let part = amount
                .checked_mul(U256::from(s.ppm))
                .ok_or(SettleError::Overflow)?;
            let e = scaled.entry(s.account).or_default();
            *e = e.checked_add(part).ok_or(SettleError::Overflow)?;
        }
    }
    let mut amounts: Vec<(Address, U256)> = scaled
        .into_iter()
        .map(|(a, v)| (a, v / ppm))
        .filter(|(_, v)| !v.is_zero())
        .collect();
    // Σ floor(x_a / ppm) <= floor(Σ x_a / ppm) <= pool, so this never underflows
    let paid = amounts.iter().fold(U256::ZERO, |acc, (_, v)| acc + *v);
    let rest = pool - paid;
    if !rest.is_zero() {
        match amounts.iter_mut().find(|(a, _)| *a == protocol) {
            Some((_, v)) => *v += rest,
            None => amounts.push((protocol, rest)),
        }
    }
    amounts.par_sort_unstable_by_key(|(a, _)| *a);
    Ok(Split {
        amounts,
        pool,
        protocol: rest,
    })
}

/// One account's leaf.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Entry {
    pub account: Address,
    /// All this account was ever owed, through this epoch.
    pub cumulative: U256,
    /// This epoch's part of it.
    pub amount: U256,
}

/// Adds this epoch's `amounts` to the `previous` cumulative leaves (both sorted by account).
pub fn cumulate(
    previous: &[(Address, U256)],
    amounts: &[(Address, U256)],
) -> Result<Vec<Entry>, SettleError> {
    if let Some(w) = previous.windows(2).find(|w| w[0].0 >= w[1].0) {
        return Err(SettleError::PreviousUnsorted(w[1].0));
    }
    let mut out = Vec::with_capacity(previous.len() + amounts.len());
    let (mut i, mut j) = (0, 0);
    while i < previous.len() || j < amounts.len() {
        let take_prev = j == amounts.len() || (i < previous.len() && previous[i].0 < amounts[j].0);
        let take_both = i < previous.len() && j < amounts.len() && previous[i].0 == amounts[j].0;
        if take_both {
            let (a, c) = previous[i];
            let amount = amounts[j].1;
            let cumulative = c.checked_add(amount).ok_or(SettleError::Overflow)?;
            out.push(Entry {
                account: a,
                cumulative,
                amount,
            });
            i += 1;
            j += 1;
        } else if take_prev {
            let (a, c) = previous[i];
            out.push(Entry {
                account: a,
                cumulative: c,
                amount: U256::ZERO,
            });
            i += 1;
        } else {
            let (a, v) = amounts[j];
            out.push(Entry {
                account: a,
                cumulative: v,
                amount: v,
            });
            j += 1;
        }
    }
    out.retain(|e| !e.cumulative.is_zero());
    Ok(out)
}

/// The leaf `RewardDistributor.claim` checks: keccak256(keccak256(abi.encode(account, cumulative))).
pub fn leaf(account: Address, cumulative: U256) -> B256 {
    merkle::leaf(&(account, cumulative))
}

/// The cumulative leaves of an epoch and their tree.
#[derive(Debug, Clone)]
pub struct RewardTree {
    pub entries: Vec<Entry>,
    tree: StandardMerkleTree,
    positions: Vec<usize>,
}

impl RewardTree {
    /// Builds the tree over `entries` (leaves hashed on all cores).
    pub fn build(entries: Vec<Entry>) -> Result<Self, SettleError> {
        let leaves: Vec<B256> = entries
            .par_iter()
            .map(|e| leaf(e.account, e.cumulative))
            .collect();
        let (tree, positions) =
            StandardMerkleTree::with_positions(&leaves).ok_or(SettleError::Empty)?;
        Ok(Self {
            entries,
            tree,
            positions,
        })
    }

    pub fn root(&self) -> B256 {
        self.tree.root()
    }

    /// Σ cumulative: the `total` the root is proposed with.
    pub fn total(&self) -> U256 {
        self.entries
            .iter()
            .fold(U256::ZERO, |a, e| a + e.cumulative)
    }

    /// The proof of `entries[j]`.
    pub fn proof(&self, j: usize) -> Vec<B256> {
        self.tree.proof_at(self.positions[j])
    }

    /// Every proof, as the concatenated 32-byte nodes stored per leaf (computed on all cores).
    pub fn proofs(&self) -> Vec<Vec<u8>> {
        (0..self.entries.len())
            .into_par_iter()
            .map(|j| self.proof(j).iter().flat_map(|h| h.0).collect())
            .collect()
    }
}

/// Splits the nodes of a stored proof.
pub fn proof_from_bytes(bytes: &[u8]) -> Option<Vec<B256>> {
    if !bytes.len().is_multiple_of(32) {
        return None;
    }
    Some(bytes.chunks_exact(32).map(B256::from_slice).collect())
}

/// `split`, then `cumulate` onto `previous`, then the tree: one epoch, start to end.
pub fn settle<'a, I>(
    previous: &[(Address, U256)],
    payments: I,
    protocol: Address,
) -> Result<(Split, RewardTree), SettleError>
where
    I: IntoIterator<Item = (U256, &'a [Share])>,
{
    let s = split(payments, protocol)?;
    let entries = cumulate(previous, &s.amounts)?;
    let tree = RewardTree::build(entries)?;
    Ok((s, tree))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn a(n: u8) -> Address {
        Address::repeat_byte(n)
    }

    #[test]
    fn shares_floor_once_per_account_and_the_protocol_takes_the_rest() {
        let p1 = [
            Share {
                account: a(1),
                ppm: 333_333,
            },
            Share {
                account: a(2),
                ppm: 333_333,
            },
        ];
        let p2 = [Share {
            account: a(1),
            ppm: 500_000,
        }];
        let s = split([(U256::from(10), &p1[..]), (U256::from(3), &p2[..])], a(9)).unwrap();
        // a1: (10*333333 + 3*500000) / 1e6 = 4.83 -> 4; a2: 3.33 -> 3; protocol: 13 - 7
        assert_eq!(
            s.amounts,
            vec![
                (a(1), U256::from(4)),
                (a(2), U256::from(3)),
                (a(9), U256::from(6))
            ]
        );
        assert_eq!(s.pool, U256::from(13));
        assert_eq!(s.protocol, U256::from(6));
        let sum = s.amounts.iter().fold(U256::ZERO, |x, (_, v)| x + *v);
        assert_eq!(sum, s.pool);
    }

    #[test]
    fn a_treasury_that_also_contributed_gets_one_leaf() {
        let p = [Share {
            account: a(9),
            ppm: 600_000,
        }];
        let s = split([(U256::from(100), &p[..])], a(9)).unwrap();
        assert_eq!(s.amounts, vec![(a(9), U256::from(100))]);
        assert_eq!(s.protocol, U256::from(40));
    }

    #[test]
    fn weights_over_a_million_are_refused() {
        let p = [
            Share {
                account: a(1),
                ppm: 600_000,
            },
            Share {
                account: a(2),
                ppm: 400_001,
            },
        ];
        assert_eq!(
            split([(U256::from(1), &p[..])], a(9)),
            Err(SettleError::WeightsExceed {
                payment: 0,
                sum: 1_000_001
            })
        );
    }

    #[test]
    fn cumulate_merges_and_keeps_untouched_accounts() {
        let prev = [(a(1), U256::from(5)), (a(3), U256::from(7))];
        let now = [(a(2), U256::from(1)), (a(3), U256::from(2))];
        let e = cumulate(&prev, &now).unwrap();
        let got: Vec<_> = e
            .iter()
            .map(|e| (e.account, e.cumulative, e.amount))
            .collect();
        assert_eq!(
            got,
            vec![
                (a(1), U256::from(5), U256::ZERO),
                (a(2), U256::from(1), U256::from(1)),
                (a(3), U256::from(9), U256::from(2)),
            ]
        );
        assert!(matches!(
            cumulate(&[(a(2), U256::from(1)), (a(1), U256::from(1))], &now),
            Err(SettleError::PreviousUnsorted(_))
        ));
    }

    #[test]
    fn every_proof_verifies_and_a_changed_amount_does_not() {
        let entries: Vec<Entry> = (1..=37u8)
            .map(|i| Entry {
                account: a(i),
                cumulative: U256::from(i as u64 * 1000),
                amount: U256::from(i),
            })
            .collect();
        let t = RewardTree::build(entries.clone()).unwrap();
        assert_eq!(t.total(), U256::from(1000 * 37 * 38 / 2));
        for (j, (e, bytes)) in entries.iter().zip(t.proofs()).enumerate() {
            let proof = proof_from_bytes(&bytes).unwrap();
            assert_eq!(proof, t.proof(j));
            assert!(StandardMerkleTree::verify(
                t.root(),
                leaf(e.account, e.cumulative),
                &proof
            ));
            assert!(!StandardMerkleTree::verify(
                t.root(),
                leaf(e.account, e.cumulative + U256::from(1)),
                &proof
            ));
        }
        assert!(RewardTree::build(vec![]).is_err());
    }
}

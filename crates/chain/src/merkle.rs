//! OpenZeppelin's `StandardMerkleTree`, bit for bit: the contracts verify proofs with `MerkleProof`, and
//! dApps build the same trees with `@openzeppelin/merkle-tree`.
//!
//! leaf = keccak256(keccak256(abi.encode(values...))); node = keccak256(min(a, b) ++ max(a, b));
//! leaves sorted ascending and laid out at the end of a 2n-1 array, parents filled from the back.

use alloy::primitives::{B256, keccak256};
use alloy::sol_types::abi::TokenSeq;
use alloy::sol_types::{SolType, SolValue};

/// The double-hashed leaf of ABI-encoded `values` (a tuple, e.g. `(address, U256)`).
pub fn leaf<T>(values: &T) -> B256
where
    T: SolValue,
    for<'a> <T::SolType as SolType>::Token<'a>: TokenSeq<'a>,
{
    keccak256(keccak256(values.abi_encode_params()))
}

fn node(a: B256, b: B256) -> B256 {
    let (lo, hi) = if a <= b { (a, b) } else { (b, a) };
    let mut buf = [0u8; 64];
    buf[..32].copy_from_slice(lo.as_slice());
    buf[32..].copy_from_slice(hi.as_slice());
    keccak256(buf)
}

/// A complete tree over already-hashed leaves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StandardMerkleTree {
    tree: Vec<B256>,
}

impl StandardMerkleTree {
    /// Builds the tree; `None` for no leaves (the contracts reject an empty root anyway).
    pub fn new(leaves: Vec<B256>) -> Option<Self> {
        Self::with_positions(&leaves).map(|(t, _)| t)
    }

    /// Builds the tree and says where each leaf went: `positions[j]` is the tree index of `leaves[j]`, for
    /// [`Self::proof_at`] (finding a leaf by value is a scan; a settlement needs a proof for every leaf).
    pub fn with_positions(leaves: &[B256]) -> Option<(Self, Vec<usize>)> {
        if leaves.is_empty() {
            return None;
        }
        let n = leaves.len();
        let mut order: Vec<u32> = (0..n as u32).collect();
        order.sort_unstable_by_key(|&j| leaves[j as usize]);
        let mut tree = vec![B256::ZERO; 2 * n - 1];
        let mut positions = vec![0usize; n];
        for (i, &j) in order.iter().enumerate() {
            tree[2 * n - 2 - i] = leaves[j as usize];
            positions[j as usize] = 2 * n - 2 - i;
        }
        for i in (0..n - 1).rev() {
            tree[i] = node(tree[2 * i + 1], tree[2 * i + 2]);
        }
        Some((Self { tree }, positions))
    }

    pub fn root(&self) -> B256 {
        self.tree[0]
    }

    pub fn len(&self) -> usize {
        self.tree.len().div_ceil(2)
    }

    pub fn is_empty(&self) -> bool {
        self.tree.is_empty()
    }

    /// The proof for `leaf`, or `None` if it is not in the tree.
    pub fn proof(&self, leaf: B256) -> Option<Vec<B256>> {
        let n = self.len();
        let i = (n - 1..2 * n - 1).find(|&i| self.tree[i] == leaf)?;
        Some(self.proof_at(i))
    }

    /// The proof for the leaf at tree index `index` (from [`Self::with_positions`]), leaf to root.
    pub fn proof_at(&self, mut index: usize) -> Vec<B256> {
        let mut proof =
            Vec::with_capacity(usize::BITS as usize - self.tree.len().leading_zeros() as usize);
        while index > 0 {
            let sibling = if index % 2 == 1 { index + 1 } else { index - 1 };
            proof.push(self.tree[sibling]);
            index = (index - 1) / 2;
        }
        proof
    }

    /// What `MerkleProof.verify` computes on chain.
    pub fn verify(root: B256, leaf: B256, proof: &[B256]) -> bool {
        proof.iter().fold(leaf, |acc, p| node(acc, *p)) == root
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloy::primitives::{Address, U256, address, b256};

    // Generated with @openzeppelin/merkle-tree 1.0.8, types ["address", "uint256"] (shared/NOTES.md).
    #[test]
    fn matches_the_openzeppelin_vector() {
        let values: [(Address, U256); 3] = [
            (
                address!("1111111111111111111111111111111111111111"),
                U256::from(5_000_000_000_000_000_000u128),
            ),
            (
                address!("2222222222222222222222222222222222222222"),
                U256::from(2_500_000_000_000_000_000u128),
            ),
            (
                address!("3333333333333333333333333333333333333333"),
                U256::from(1),
            ),
        ];
        let leaves: Vec<B256> = values.iter().map(leaf).collect();
        assert_eq!(
            leaves[0],
            b256!("eb02c421cfa48976e66dfb29120745909ea3a0f843456c263cf8f1253483e283")
        );
        let tree = StandardMerkleTree::new(leaves.clone()).unwrap();
        assert_eq!(
            tree.root(),
            b256!("d673f832e8ae578ea16450035956e30f27212b91d6cd26edbef07c90546302ff")
        );
        assert_eq!(
            tree.proof(leaves[0]).unwrap(),
            vec![b256!(
                "8d00bd8d33bd92e6ade0ba2d87958d59727515200df528502b93c99dd3fa0256"
            )]
        );
        for l in &leaves {
            assert!(StandardMerkleTree::verify(
                tree.root(),
                *l,
                &tree.proof(*l).unwrap()
            ));
        }
        let mut tampered = leaves[1];
        tampered.0[0] ^= 1;
        assert!(!StandardMerkleTree::verify(
            tree.root(),
            tampered,
            &tree.proof(leaves[1]).unwrap()
        ));
        assert!(tree.proof(tampered).is_none());
    }

    #[test]
    fn single_leaf_and_empty() {
        let l = leaf(&(U256::from(7), B256::repeat_byte(1)));
        let tree = StandardMerkleTree::new(vec![l]).unwrap();
        assert_eq!(tree.root(), l);
        assert!(tree.proof(l).unwrap().is_empty());
        assert!(StandardMerkleTree::new(vec![]).is_none());
    }

    #[test]
    fn every_proof_verifies_for_odd_sizes() {
        for n in 1..20u64 {
            let leaves: Vec<B256> = (0..n).map(|i| leaf(&(U256::from(i),))).collect();
            let tree = StandardMerkleTree::new(leaves.clone()).unwrap();
            assert_eq!(tree.len(), n as usize);
            let (same, positions) = StandardMerkleTree::with_positions(&leaves).unwrap();
            assert_eq!(same, tree);
            for (j, l) in leaves.iter().enumerate() {
                let proof = tree.proof(*l).unwrap();
                assert_eq!(tree.proof_at(positions[j]), proof);
                assert!(StandardMerkleTree::verify(tree.root(), *l, &proof));
            }
        }
    }
}

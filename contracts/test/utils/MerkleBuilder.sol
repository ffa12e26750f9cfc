// SPDX-License-Identifier: Apache-2.0
pragma solidity 0.8.30;

/// @notice OpenZeppelin StandardMerkleTree for `(address, uint256)` leaves, rebuilt in Solidity for tests:
/// leaves double-hashed and sorted, tree[2n-2-i] = sorted[i], parents hash their sorted pair.
/// Checked against the OpenZeppelin merkle-tree package vector in RewardDistributor.t.sol.
library MerkleBuilder {
    function leaf(address account, uint256 amount) internal pure returns (bytes32) {
        return keccak256(bytes.concat(keccak256(abi.encode(account, amount))));
    }

    function _pair(bytes32 a, bytes32 b) private pure returns (bytes32) {
        return a < b ? keccak256(abi.encodePacked(a, b)) : keccak256(abi.encodePacked(b, a));
    }

    /// @return tree the flat tree; tree[0] is the root
    function build(bytes32[] memory leaves) internal pure returns (bytes32[] memory tree) {
        uint256 n = leaves.length;
        require(n > 0, "empty tree");
        bytes32[] memory sorted = new bytes32[](n);
        for (uint256 i; i < n; ++i) {
            sorted[i] = leaves[i];
        }
        for (uint256 i = 1; i < n; ++i) {
            bytes32 x = sorted[i];
            uint256 j = i;
            while (j > 0 && sorted[j - 1] > x) {
                sorted[j] = sorted[j - 1];
                --j;
            }
            sorted[j] = x;
        }
        tree = new bytes32[](2 * n - 1);
        for (uint256 i; i < n; ++i) {
            tree[2 * n - 2 - i] = sorted[i];
        }
        for (uint256 i = n - 1; i > 0; --i) {
            tree[i - 1] = _pair(tree[2 * (i - 1) + 1], tree[2 * (i - 1) + 2]);
        }
    }

    function proof(bytes32[] memory tree, bytes32 leaf_) internal pure returns (bytes32[] memory p) {
        uint256 idx = type(uint256).max;
        for (uint256 i; i < tree.length; ++i) {
            if (tree[i] == leaf_ && 2 * i + 1 >= tree.length) {
                idx = i;
                break;
            }
        }
        require(idx != type(uint256).max, "leaf not in tree");
        uint256 depth;
        for (uint256 j = idx; j > 0; j = (j - 1) / 2) {
            ++depth;
        }
        p = new bytes32[](depth);
        for (uint256 k; idx > 0; ++k) {
            p[k] = tree[idx % 2 == 1 ? idx + 1 : idx - 1];
            idx = (idx - 1) / 2;
        }
    }
}

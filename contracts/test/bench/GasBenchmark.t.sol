// SPDX-License-Identifier: Apache-2.0
pragma solidity 0.8.30;

import {Registry} from "../../src/Registry.sol";
import {Console} from "../utils/Console.sol";
import {Fixture} from "../utils/Fixture.sol";
import {MerkleBuilder} from "../utils/MerkleBuilder.sol";
import {vm} from "../utils/Vm.sol";

/// @notice Execution gas of the hot paths, each measured in a test of its own so storage starts cold, as in a
/// real transaction (add 21,000 + calldata for what a sender pays; scripts/bench-gas.sh reports both).
/// Run: scripts/bench-gas.sh (or forge test --match-contract GasBenchmark -vv).
contract GasBenchmark is Fixture {
    uint256 internal constant DEPTH = 20; // a tree of ~1M contributors

    uint256 internal modelId;
    uint256 internal datanetId;
    address internal payer;
    address internal fresh; // never held OPEN, never claimed
    address internal holder; // holds OPEN, never claimed
    address internal returning; // holds OPEN and claimed before
    bytes32[] internal freshProof;
    bytes32[] internal holderProof;
    bytes32[] internal returningProof;

    /// @dev A proof of `DEPTH` pseudo-random siblings for `leaf`, and the root it leads to.
    function _path(bytes32 leaf, bytes32 seed) internal pure returns (bytes32 root, bytes32[] memory proof) {
        proof = new bytes32[](DEPTH);
        root = leaf;
        for (uint256 i; i < DEPTH; ++i) {
            proof[i] = keccak256(abi.encode(seed, i));
            root = root < proof[i]
                ? keccak256(abi.encodePacked(root, proof[i]))
                : keccak256(abi.encodePacked(proof[i], root));
        }
    }

    function setUp() public override {
        super.setUp();
        (modelId, datanetId) = _model(makeAddr("developer"));
        payer = makeAddr("payer");
        _fund(payer, 1_000 ether);
        vm.prank(payer);
        token.approve(address(feeRouter), type(uint256).max);
        vm.prank(payer); // a first payment, so the payer's state is as in steady use
        feeRouter.payInference(modelId, keccak256("warm-up"), 1 ether);

        fresh = makeAddr("fresh");
        holder = makeAddr("holder");
        _fund(holder, 1 ether);
        returning = makeAddr("returning");
        _fund(address(distributor), 100 ether);
        // epoch 1: `returning` earns 1 OPEN and claims it
        (bytes32 r1, bytes32[] memory p1) = _path(MerkleBuilder.leaf(returning, 1 ether), "e1");
        _propose(1, r1, 50 ether);
        distributor.claim(returning, 1 ether, p1);
        // epoch 2: all three are owed; fresh and returning are siblings at the bottom of a deep tree, holder's
        // leaf is their parent's sibling: proofs of DEPTH + 1 and DEPTH hashes (a tree of 1M-2M contributors)
        bytes32 lf = MerkleBuilder.leaf(fresh, 5 ether);
        bytes32 lr = MerkleBuilder.leaf(returning, 3 ether);
        bytes32 lh = MerkleBuilder.leaf(holder, 2 ether);
        bytes32 bottom = _hashPair(lf, lr);
        (bytes32 r2, bytes32[] memory upper) = _path(_hashPair(bottom, lh), "e2");
        _propose(2, r2, 60 ether);
        freshProof.push(lr);
        freshProof.push(lh);
        returningProof.push(lf);
        returningProof.push(lh);
        holderProof.push(bottom);
        for (uint256 i; i < DEPTH; ++i) {
            freshProof.push(upper[i]);
            returningProof.push(upper[i]);
            holderProof.push(upper[i]);
        }
    }

    function _hashPair(bytes32 a, bytes32 b) internal pure returns (bytes32) {
        return a < b ? keccak256(abi.encodePacked(a, b)) : keccak256(abi.encodePacked(b, a));
    }

    function _propose(uint64 epoch, bytes32 root, uint256 total) internal {
        vm.prank(SETTLER);
        distributor.proposeRoot(epoch, root, total, "ipfs://tree");
        vm.warp(block.timestamp + distributor.challengeDelay());
        distributor.acceptRoot();
    }

    function test_gas_claimFirstTime() public {
        bytes32[] memory proof = freshProof; // read before measuring: only the claim is timed
        uint256 g = gasleft();
        distributor.claim(fresh, 5 ether, proof);
        g -= gasleft();
        Console.log("RESULT gas_claim_first_time_no_balance_depth22", g);
        vm.assertEq(token.balanceOf(fresh), 5 ether, "paid");
        // two zero-to-nonzero writes (claimed[fresh] and its first OPEN balance) are 40k of this by themselves
        vm.assertLt(g, 88_000, "regression guard");
    }

    function test_gas_claimFirstTimeHolder() public {
        bytes32[] memory proof = holderProof;
        uint256 g = gasleft();
        distributor.claim(holder, 2 ether, proof);
        g -= gasleft();
        Console.log("RESULT gas_claim_first_time_holder_depth21", g);
        vm.assertEq(token.balanceOf(holder), 3 ether, "paid");
        vm.assertLt(g, 80_000, "claim under 80k execution gas");
    }

    function test_gas_claimReturning() public {
        bytes32[] memory proof = returningProof;
        uint256 g = gasleft();
        distributor.claim(returning, 3 ether, proof);
        g -= gasleft();
        Console.log("RESULT gas_claim_returning_depth22", g);
        vm.assertEq(token.balanceOf(returning), 3 ether, "paid");
        vm.assertLt(g, 80_000, "claim under 80k execution gas");
    }

    /// @dev The proposal carries only (epoch, root, total, uri), whatever the tree's size: these two tests
    /// differ only in the root's value (2 contributors vs 2^20) and must report the same gas.
    function test_gas_proposeRoot2Contributors() public {
        bytes32[] memory two = new bytes32[](2);
        two[0] = MerkleBuilder.leaf(alice, 1);
        two[1] = MerkleBuilder.leaf(bob, 1);
        _measurePropose(MerkleBuilder.build(two)[0], "RESULT gas_propose_root_2_contributors");
    }

    function test_gas_proposeRoot1MContributors() public {
        (bytes32 bigRoot,) = _path(MerkleBuilder.leaf(carol, 1), "big");
        _measurePropose(bigRoot, "RESULT gas_propose_root_1M_contributors");
    }

    function _measurePropose(bytes32 root, string memory label) internal {
        vm.prank(SETTLER);
        uint256 g = gasleft();
        distributor.proposeRoot(3, root, 61 ether, "ipfs://tree");
        g -= gasleft();
        Console.log(label, g);
        vm.assertEq(distributor.pendingRoot().root, root, "pending");
    }

    function test_gas_payInference() public {
        vm.prank(payer);
        uint256 g = gasleft();
        feeRouter.payInference(modelId, keccak256("bench"), 10 ether);
        g -= gasleft();
        Console.log("RESULT gas_pay_inference", g);
        vm.assertEq(token.balanceOf(address(distributor)), 100 ether + 0.4 ether + 4 ether - 1 ether, "pool share");
    }

    function test_gas_contribute() public {
        vm.prank(alice);
        uint256 g = gasleft();
        registry.contribute(datanetId, keccak256("bench row"), "ipfs://bench-row");
        g -= gasleft();
        Console.log("RESULT gas_contribute", g);
        vm.assertEq(uint256(registry.contribution(registry.contributionCount()).status), 1, "pending");
    }

    function test_gas_reviewBatchOf50() public {
        uint256[] memory ids = new uint256[](50);
        vm.startPrank(alice);
        for (uint256 i; i < 50; ++i) {
            ids[i] = registry.contribute(datanetId, keccak256(abi.encode("batch", i)), "ipfs://row");
        }
        vm.stopPrank();
        vm.prank(carol);
        uint256 g = gasleft();
        registry.reviewContributions(datanetId, ids, true);
        g -= gasleft();
        Console.log("RESULT gas_accept_per_contribution_batch50", g / 50);
        vm.assertEq(uint256(registry.contribution(ids[49]).status), uint256(Registry.ContributionStatus.Accepted), "ok");
    }
}

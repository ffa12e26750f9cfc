// SPDX-License-Identifier: Apache-2.0
pragma solidity 0.8.30;

import {IAccessControl} from "@openzeppelin/contracts/access/IAccessControl.sol";
import {RewardDistributor} from "../src/RewardDistributor.sol";
import {Fixture} from "./utils/Fixture.sol";
import {MerkleBuilder} from "./utils/MerkleBuilder.sol";
import {vm} from "./utils/Vm.sol";

contract RewardDistributorTest is Fixture {
    // The @openzeppelin/merkle-tree 1.0.8 vector from shared/NOTES.md.
    address internal constant A1 = 0x1111111111111111111111111111111111111111;
    address internal constant A2 = 0x2222222222222222222222222222222222222222;
    address internal constant A3 = 0x3333333333333333333333333333333333333333;
    bytes32 internal constant OZ_ROOT = 0xd673f832e8ae578ea16450035956e30f27212b91d6cd26edbef07c90546302ff;
    bytes32 internal constant OZ_LEAF1 = 0xeb02c421cfa48976e66dfb29120745909ea3a0f843456c263cf8f1253483e283;
    bytes32 internal constant OZ_PROOF1 = 0x8d00bd8d33bd92e6ade0ba2d87958d59727515200df528502b93c99dd3fa0256;
    uint256 internal constant OZ_TOTAL = 5e18 + 2.5e18 + 1;

    function _fundPool(uint256 amount) internal {
        _fund(address(distributor), amount);
    }

    function _proposeAndAccept(uint64 epoch, bytes32 root, uint256 total) internal {
        vm.prank(SETTLER);
        distributor.proposeRoot(epoch, root, total, "ipfs://tree");
        vm.warp(block.timestamp + distributor.challengeDelay());
        distributor.acceptRoot();
    }

    function test_ozVector_builderMatches() public pure {
        bytes32[] memory leaves = new bytes32[](3);
        leaves[0] = MerkleBuilder.leaf(A1, 5e18);
        leaves[1] = MerkleBuilder.leaf(A2, 2.5e18);
        leaves[2] = MerkleBuilder.leaf(A3, 1);
        bytes32[] memory tree = MerkleBuilder.build(leaves);
        vm.assertEq(leaves[0], OZ_LEAF1, "leaf encoding");
        vm.assertEq(tree[0], OZ_ROOT, "root");
        bytes32[] memory p = MerkleBuilder.proof(tree, OZ_LEAF1);
        vm.assertEq(p.length, 1, "proof length");
        vm.assertEq(p[0], OZ_PROOF1, "proof");
    }

    function test_ozVector_claimAndTamper() public {
        _fundPool(OZ_TOTAL);
        _proposeAndAccept(1, OZ_ROOT, OZ_TOTAL);
        bytes32[] memory proof = new bytes32[](1);
        proof[0] = OZ_PROOF1;

        bytes32[] memory tampered = new bytes32[](1);
        tampered[0] = OZ_PROOF1 ^ bytes32(uint256(1));
        vm.expectRevert(abi.encodeWithSelector(RewardDistributor.InvalidProof.selector, A1, 5e18));
        distributor.claim(A1, 5e18, tampered);
        vm.expectRevert(abi.encodeWithSelector(RewardDistributor.InvalidProof.selector, A1, 5e18 + 1));
        distributor.claim(A1, 5e18 + 1, proof);
        vm.expectRevert(abi.encodeWithSelector(RewardDistributor.InvalidProof.selector, A2, 5e18));
        distributor.claim(A2, 5e18, proof);

        vm.expectEmit(address(distributor));
        emit RewardDistributor.Claimed(A1, 1, 5e18, 5e18, bob);
        vm.prank(bob); // anyone may claim for the account; the account is paid
        uint256 paid = distributor.claim(A1, 5e18, proof);
        vm.assertEq(paid, 5e18, "returned");
        vm.assertEq(token.balanceOf(A1), 5e18, "paid to the account");
        vm.assertEq(token.balanceOf(bob), 0, "not to the caller");
        vm.assertEq(distributor.claimed(A1), 5e18, "claimed");
        vm.assertEq(distributor.totalClaimed(), 5e18, "total claimed");

        vm.expectRevert(abi.encodeWithSelector(RewardDistributor.NothingToClaim.selector, A1, 5e18, 5e18));
        distributor.claim(A1, 5e18, proof);
    }

    function test_cumulativeAcrossEpochsPaysTheDifference() public {
        _fundPool(100 ether);
        bytes32[] memory leaves = new bytes32[](2);
        leaves[0] = MerkleBuilder.leaf(alice, 10 ether);
        leaves[1] = MerkleBuilder.leaf(bob, 20 ether);
        bytes32[] memory t1 = MerkleBuilder.build(leaves);
        _proposeAndAccept(1, t1[0], 30 ether);
        distributor.claim(alice, 10 ether, MerkleBuilder.proof(t1, leaves[0]));

        leaves[0] = MerkleBuilder.leaf(alice, 25 ether);
        leaves[1] = MerkleBuilder.leaf(bob, 45 ether);
        bytes32[] memory t2 = MerkleBuilder.build(leaves);
        _proposeAndAccept(2, t2[0], 70 ether);
        // the old root no longer pays
        vm.expectRevert(abi.encodeWithSelector(RewardDistributor.InvalidProof.selector, bob, 20 ether));
        distributor.claim(bob, 20 ether, MerkleBuilder.proof(t1, MerkleBuilder.leaf(bob, 20 ether)));

        vm.assertEq(distributor.claim(alice, 25 ether, MerkleBuilder.proof(t2, leaves[0])), 15 ether, "difference");
        vm.assertEq(distributor.claim(bob, 45 ether, MerkleBuilder.proof(t2, leaves[1])), 45 ether, "all at once");
        vm.assertEq(token.balanceOf(alice), 25 ether, "alice total");
        vm.assertEq(distributor.totalClaimed(), 70 ether, "total");
    }

    function test_propose_reverts() public {
        _fundPool(10 ether);
        bytes32 role = distributor.SETTLER_ROLE();
        vm.prank(alice);
        vm.expectRevert(abi.encodeWithSelector(IAccessControl.AccessControlUnauthorizedAccount.selector, alice, role));
        distributor.proposeRoot(1, keccak256("r"), 1, "");

        vm.startPrank(SETTLER);
        vm.expectRevert(RewardDistributor.ZeroRoot.selector);
        distributor.proposeRoot(1, bytes32(0), 1, "");
        vm.expectRevert(abi.encodeWithSelector(RewardDistributor.EpochNotIncreasing.selector, 0, 0));
        distributor.proposeRoot(0, keccak256("r"), 1, "");
        vm.expectRevert(abi.encodeWithSelector(RewardDistributor.InsufficientPool.selector, 10 ether + 1, 10 ether));
        distributor.proposeRoot(1, keccak256("r"), 10 ether + 1, "");
        vm.expectRevert(
            abi.encodeWithSelector(RewardDistributor.TotalTooLarge.selector, uint256(type(uint128).max) + 1)
        );
        distributor.proposeRoot(1, keccak256("r"), uint256(type(uint128).max) + 1, "");
        distributor.proposeRoot(5, keccak256("r5"), 8 ether, "");
        vm.expectRevert(abi.encodeWithSelector(RewardDistributor.EpochNotIncreasing.selector, 5, 5));
        distributor.proposeRoot(5, keccak256("r5b"), 8 ether, "");
        vm.stopPrank();

        vm.warp(block.timestamp + distributor.challengeDelay());
        distributor.acceptRoot();
        vm.prank(SETTLER);
        vm.expectRevert(abi.encodeWithSelector(RewardDistributor.TotalDecreased.selector, 7 ether, 8 ether));
        distributor.proposeRoot(6, keccak256("r6"), 7 ether, "");
    }

    function test_propose_rejectsTotalBelowClaimed() public {
        // a settler bug: root 1's leaf owes more than its total; the claim stops at the total, and root 2 may
        // not "promise" less than root 1 did
        _fundPool(10 ether);
        bytes32 leaf = MerkleBuilder.leaf(alice, 5 ether);
        _proposeAndAccept(1, leaf, 1 ether);
        vm.expectRevert(abi.encodeWithSelector(RewardDistributor.ClaimExceedsTotal.selector, 5 ether, 1 ether));
        distributor.claim(alice, 5 ether, new bytes32[](0));
        bytes32 fair = MerkleBuilder.leaf(alice, 1 ether);
        vm.prank(SETTLER);
        vm.expectRevert(abi.encodeWithSelector(RewardDistributor.TotalDecreased.selector, 0.5 ether, 1 ether));
        distributor.proposeRoot(2, fair, 0.5 ether, "");
        _proposeAndAccept(2, fair, 1 ether);
        distributor.claim(alice, 1 ether, new bytes32[](0));
        vm.assertEq(distributor.totalClaimed(), 1 ether, "the whole total, no more");
    }

    function test_acceptAfterDelayOnly() public {
        _fundPool(1 ether);
        vm.expectRevert(RewardDistributor.NoPendingRoot.selector);
        distributor.acceptRoot();
        uint64 validAt = uint64(block.timestamp) + distributor.challengeDelay();
        vm.expectEmit(address(distributor));
        emit RewardDistributor.RootProposed(1, keccak256("r"), 1 ether, validAt, "ipfs://t", SETTLER);
        vm.prank(SETTLER);
        distributor.proposeRoot(1, keccak256("r"), 1 ether, "ipfs://t");
        vm.warp(validAt - 1);
        vm.expectRevert(abi.encodeWithSelector(RewardDistributor.ChallengePeriodActive.selector, validAt));
        distributor.acceptRoot();
        vm.expectRevert(RewardDistributor.NoAcceptedRoot.selector);
        distributor.claim(alice, 1, new bytes32[](0));
        vm.warp(validAt);
        vm.expectEmit(address(distributor));
        emit RewardDistributor.RootAccepted(1, keccak256("r"), 1 ether);
        vm.prank(alice); // permissionless
        distributor.acceptRoot();
        RewardDistributor.Root memory cur = distributor.currentRoot();
        vm.assertEq(cur.root, keccak256("r"), "root");
        vm.assertEq(uint256(cur.epoch), 1, "epoch");
        vm.assertEq(distributor.pendingRoot().root, bytes32(0), "pending cleared");
    }

    function test_supersedeAndRevoke() public {
        _fundPool(1 ether);
        vm.startPrank(SETTLER);
        distributor.proposeRoot(1, keccak256("r1"), 1, "");
        vm.expectEmit(address(distributor));
        emit RewardDistributor.RootSuperseded(1, keccak256("r1"), 2);
        distributor.proposeRoot(2, keccak256("r2"), 2, "");
        vm.stopPrank();
        vm.assertEq(distributor.pendingRoot().root, keccak256("r2"), "replaced");

        bytes32 role = distributor.REVOKER_ROLE();
        vm.prank(SETTLER);
        vm.expectRevert(abi.encodeWithSelector(IAccessControl.AccessControlUnauthorizedAccount.selector, SETTLER, role));
        distributor.revokeRoot(2, keccak256("r2"));
        vm.expectEmit(address(distributor));
        emit RewardDistributor.RootRevoked(2, keccak256("r2"), address(timelock));
        vm.prank(address(timelock));
        distributor.revokeRoot(2, keccak256("r2"));
        vm.warp(block.timestamp + 1 days);
        vm.expectRevert(RewardDistributor.NoPendingRoot.selector);
        distributor.acceptRoot();
        vm.prank(address(timelock));
        vm.expectRevert(RewardDistributor.NoPendingRoot.selector);
        distributor.revokeRoot(2, keccak256("r2"));
        // a revoked epoch is never reused
        vm.prank(SETTLER);
        vm.expectRevert(abi.encodeWithSelector(RewardDistributor.EpochNotIncreasing.selector, 2, 2));
        distributor.proposeRoot(2, keccak256("r2b"), 2, "");
    }

    /// Attack: a revocation aimed at epoch 1 is mined after the settler superseded it with epoch 2; it must not
    /// throw away epoch 2.
    function test_attack_revocationAimedAtASupersededRootMissesTheNextOne() public {
        _fundPool(1 ether);
        vm.startPrank(SETTLER);
        distributor.proposeRoot(1, keccak256("r1"), 1, "");
        distributor.proposeRoot(2, keccak256("r2"), 2, "");
        vm.stopPrank();
        vm.prank(address(timelock));
        vm.expectRevert(abi.encodeWithSelector(RewardDistributor.NotPending.selector, 1, keccak256("r1")));
        distributor.revokeRoot(1, keccak256("r1"));
        // nor a right epoch with a wrong root
        vm.prank(address(timelock));
        vm.expectRevert(abi.encodeWithSelector(RewardDistributor.NotPending.selector, 2, keccak256("r1")));
        distributor.revokeRoot(2, keccak256("r1"));
        vm.assertEq(distributor.pendingRoot().root, keccak256("r2"), "epoch 2 still pending");
        vm.warp(block.timestamp + distributor.challengeDelay());
        distributor.acceptRoot();
        vm.assertEq(distributor.currentRoot().root, keccak256("r2"), "and accepted");
    }

    /// Attack: a settler (buggy or with a stolen key) proposes a root whose one leaf owes 200 OPEN under a `total`
    /// of 100, to drain the 300 OPEN the distributor holds (the pools of payments it did not settle). Claims
    /// stop at the root's total.
    function test_attack_aRootWhoseLeavesExceedItsTotalPaysNoMoreThanTheTotal() public {
        _fundPool(300 ether);
        address thief = makeAddr("thief");
        address honest = makeAddr("honest");
        bytes32[] memory leaves = new bytes32[](2);
        leaves[0] = MerkleBuilder.leaf(thief, 200 ether);
        leaves[1] = MerkleBuilder.leaf(honest, 60 ether);
        bytes32[] memory tree = MerkleBuilder.build(leaves);
        _proposeAndAccept(1, tree[0], 100 ether);
        vm.expectRevert(abi.encodeWithSelector(RewardDistributor.ClaimExceedsTotal.selector, 200 ether, 100 ether));
        distributor.claim(thief, 200 ether, MerkleBuilder.proof(tree, leaves[0]));
        // what the total covers is paid; past it, nothing
        distributor.claim(honest, 60 ether, MerkleBuilder.proof(tree, leaves[1]));
        vm.assertEq(distributor.totalClaimed(), 60 ether, "claimed within the total");
        vm.expectRevert(abi.encodeWithSelector(RewardDistributor.ClaimExceedsTotal.selector, 200 ether, 40 ether));
        distributor.claim(thief, 200 ether, MerkleBuilder.proof(tree, leaves[0]));
        vm.assertEq(token.balanceOf(thief), 0, "the thief got nothing");
        vm.assertEq(token.balanceOf(address(distributor)), 240 ether, "the unsettled pools stay");
    }

    function _disputer(address who) internal returns (uint256 bond) {
        bond = distributor.disputeBond();
        _fund(who, bond);
        vm.prank(who);
        token.approve(address(distributor), bond);
    }

    /// Attack: a wrong root (a stolen settler key's) is proposed. A watcher disputes it with a bond: it can be
    /// neither accepted nor superseded (the settler cannot escape the dispute); the revoker upholds the dispute,
    /// the root is revoked and the watcher gets its bond back; the pool is untouched throughout.
    function test_attack_aDisputedWrongRootIsNeverAcceptedAndTheWatcherIsRepaid() public {
        _fundPool(300 ether);
        address watcher = makeAddr("watcher");
        uint256 bond = _disputer(watcher);
        vm.prank(SETTLER);
        distributor.proposeRoot(1, keccak256("wrong"), 300 ether, "");
        vm.expectEmit(address(distributor));
        emit RewardDistributor.RootDisputed(1, keccak256("wrong"), watcher, bond, "leaves differ");
        vm.prank(watcher);
        distributor.dispute(1, keccak256("wrong"), "leaves differ");
        vm.assertEq(token.balanceOf(address(distributor)), 300 ether + bond, "the bond is held");
        vm.assertEq(distributor.pendingDispute().disputer, watcher, "open");

        vm.warp(block.timestamp + distributor.challengeDelay());
        vm.expectRevert(abi.encodeWithSelector(RewardDistributor.Disputed.selector, 1, keccak256("wrong"), watcher));
        distributor.acceptRoot();
        vm.prank(SETTLER);
        vm.expectRevert(abi.encodeWithSelector(RewardDistributor.Disputed.selector, 1, keccak256("wrong"), watcher));
        distributor.proposeRoot(2, keccak256("escape"), 300 ether, "");
        // only the revoker decides
        bytes32 role = distributor.REVOKER_ROLE();
        vm.prank(watcher);
        vm.expectRevert(abi.encodeWithSelector(IAccessControl.AccessControlUnauthorizedAccount.selector, watcher, role));
        distributor.resolveDispute(1, keccak256("wrong"), true);

        vm.expectEmit(address(distributor));
        emit RewardDistributor.DisputeResolved(1, keccak256("wrong"), watcher, true, bond, address(timelock));
        vm.prank(address(timelock));
        distributor.resolveDispute(1, keccak256("wrong"), true);
        vm.assertEq(distributor.pendingRoot().root, bytes32(0), "revoked");
        vm.assertEq(token.balanceOf(watcher), bond, "bond returned");
        vm.assertEq(token.balanceOf(address(distributor)), 300 ether, "pool untouched");
        vm.expectRevert(RewardDistributor.NoPendingRoot.selector);
        distributor.acceptRoot();
    }

    /// A griefer disputes an honest root: the revoker rejects the dispute, the bond joins the contributor pool
    /// (it backs the next roots' solvency), and the root is accepted once its delay is over.
    function test_aRejectedDisputeCostsTheBondAndTheRootStands() public {
        _fundPool(10 ether);
        address griefer = makeAddr("griefer");
        uint256 bond = _disputer(griefer);
        vm.prank(SETTLER);
        distributor.proposeRoot(1, keccak256("honest"), 10 ether, "");
        vm.prank(griefer);
        distributor.dispute(1, keccak256("honest"), "no reason");
        vm.prank(address(timelock));
        distributor.resolveDispute(1, keccak256("honest"), false);
        vm.assertEq(token.balanceOf(griefer), 0, "bond lost");
        vm.assertEq(distributor.pendingRoot().root, keccak256("honest"), "still pending");
        vm.warp(block.timestamp + distributor.challengeDelay());
        distributor.acceptRoot();
        vm.assertEq(distributor.currentRoot().root, keccak256("honest"), "accepted");
        // the lost bond is pool money now: the next root may promise it
        vm.prank(SETTLER);
        distributor.proposeRoot(2, keccak256("next"), 10 ether + bond, "");
    }

    /// A dispute is refused for a root not pending, after the challenge delay, or while another dispute is open;
    /// revoking a disputed root upholds the dispute.
    function test_disputeRules() public {
        _fundPool(10 ether);
        address watcher = makeAddr("watcher");
        uint256 bond = _disputer(watcher);
        vm.prank(watcher);
        vm.expectRevert(RewardDistributor.NoPendingRoot.selector);
        distributor.dispute(1, keccak256("r1"), "");
        vm.prank(SETTLER);
        distributor.proposeRoot(1, keccak256("r1"), 10 ether, "");
        vm.prank(watcher);
        vm.expectRevert(abi.encodeWithSelector(RewardDistributor.NotPending.selector, 1, keccak256("r0")));
        distributor.dispute(1, keccak256("r0"), "");
        vm.prank(address(timelock));
        vm.expectRevert(abi.encodeWithSelector(RewardDistributor.NotDisputed.selector, 1, keccak256("r1")));
        distributor.resolveDispute(1, keccak256("r1"), true);
        vm.prank(watcher);
        distributor.dispute(1, keccak256("r1"), "first");
        address second = makeAddr("second");
        _disputer(second);
        vm.prank(second);
        vm.expectRevert(abi.encodeWithSelector(RewardDistributor.Disputed.selector, 1, keccak256("r1"), watcher));
        distributor.dispute(1, keccak256("r1"), "second");
        // revoking a disputed root upholds its dispute
        vm.prank(address(timelock));
        distributor.revokeRoot(1, keccak256("r1"));
        vm.assertEq(token.balanceOf(watcher), bond, "bond returned by the revocation");
        // the challenge delay over: too late to dispute
        vm.prank(SETTLER);
        distributor.proposeRoot(2, keccak256("r2"), 10 ether, "");
        uint64 validAt = distributor.pendingRoot().validAt;
        vm.warp(validAt);
        vm.prank(second);
        vm.expectRevert(abi.encodeWithSelector(RewardDistributor.ChallengePeriodOver.selector, validAt));
        distributor.dispute(2, keccak256("r2"), "late");
    }

    function test_setDisputeBond() public {
        vm.expectEmit(address(distributor));
        emit RewardDistributor.DisputeBondSet(distributor.disputeBond(), 5 ether);
        vm.prank(address(timelock));
        distributor.setDisputeBond(5 ether);
        vm.assertEq(uint256(distributor.disputeBond()), 5 ether, "set");
        vm.prank(alice);
        vm.expectRevert(
            abi.encodeWithSelector(IAccessControl.AccessControlUnauthorizedAccount.selector, alice, bytes32(0))
        );
        distributor.setDisputeBond(0);
    }

    function testFuzz_claimsMatchTree(uint256 seed, uint8 count) public {
        uint256 n = bound(count, 1, 12);
        address[] memory accounts = new address[](n);
        uint256[] memory amounts = new uint256[](n);
        bytes32[] memory leaves = new bytes32[](n);
        uint256 total;
        for (uint256 i; i < n; ++i) {
            accounts[i] = address(uint160(uint256(keccak256(abi.encode(seed, i)))));
            amounts[i] = bound(uint256(keccak256(abi.encode(seed, i, "amt"))), 1, 1_000_000 ether);
            leaves[i] = MerkleBuilder.leaf(accounts[i], amounts[i]);
            total += amounts[i];
        }
        bytes32[] memory tree = MerkleBuilder.build(leaves);
        _fundPool(total);
        _proposeAndAccept(1, tree[0], total);
        for (uint256 i; i < n; ++i) {
            bytes32[] memory p = MerkleBuilder.proof(tree, leaves[i]);
            if (p.length > 0) {
                bytes32[] memory bad = new bytes32[](p.length);
                for (uint256 k; k < p.length; ++k) {
                    bad[k] = p[k];
                }
                bad[seed % p.length] ^= bytes32(uint256(1) << (seed % 256));
                vm.expectRevert(
                    abi.encodeWithSelector(RewardDistributor.InvalidProof.selector, accounts[i], amounts[i])
                );
                distributor.claim(accounts[i], amounts[i], bad);
            }
            distributor.claim(accounts[i], amounts[i], p);
            vm.assertEq(token.balanceOf(accounts[i]), amounts[i], "paid its leaf");
        }
        vm.assertEq(token.balanceOf(address(distributor)), 0, "pool exactly drained");
    }

    function test_setChallengeDelay() public {
        vm.prank(address(timelock));
        vm.expectRevert(abi.encodeWithSelector(RewardDistributor.ChallengeDelayTooLong.selector, 31 days, 30 days));
        distributor.setChallengeDelay(31 days);
        vm.expectEmit(address(distributor));
        emit RewardDistributor.ChallengeDelaySet(1 hours, 2 days);
        vm.prank(address(timelock));
        distributor.setChallengeDelay(2 days);
        vm.assertEq(uint256(distributor.challengeDelay()), 2 days, "set");
        vm.prank(alice);
        vm.expectRevert(
            abi.encodeWithSelector(IAccessControl.AccessControlUnauthorizedAccount.selector, alice, bytes32(0))
        );
        distributor.setChallengeDelay(0);
    }

    function test_constructorRejectsZeroAddresses() public {
        vm.expectRevert(RewardDistributor.ZeroAddress.selector);
        new RewardDistributor(token, address(0), 1, 1);
    }
}

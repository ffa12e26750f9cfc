// SPDX-License-Identifier: Apache-2.0
pragma solidity 0.8.30;

import {RewardDistributor} from "../../src/RewardDistributor.sol";
import {Staking} from "../../src/Staking.sol";
import {Fixture} from "../utils/Fixture.sol";
import {vm} from "../utils/Vm.sol";
import {Handler} from "./Handler.sol";

/// @notice System-wide invariants over random sequences of payments, split changes, burns, stakes, unstakes,
/// withdrawals, slashes, signed contributions, settlements and claims (see Handler for the actions).
contract InvariantsTest is Fixture {
    Handler internal handler;

    function setUp() public override {
        super.setUp();
        (uint256 modelId, uint256 datanetId) = _model(makeAddr("developer"));
        handler = new Handler(
            token, registry, staking, feeRouter, distributor, address(timelock), SETTLER, modelId, datanetId
        );
        // agent i is operated by actor i
        uint256[] memory agents = new uint256[](4);
        for (uint256 i; i < 4; ++i) {
            address actor = handler.actors(i);
            vm.prank(bob);
            agents[i] = registry.registerAgent(modelId, actor, "ipfs://agent");
            _fund(actor, 1_000_000 ether);
            vm.prank(actor);
            token.approve(address(feeRouter), type(uint256).max);
        }
        handler.setAgents(agents);
        _targetContract(address(handler));
        bytes4[] memory actions = new bytes4[](23);
        actions[0] = Handler.payInference.selector;
        actions[1] = Handler.replayPayment.selector;
        actions[2] = Handler.setSplit.selector;
        actions[3] = Handler.burn.selector;
        actions[4] = Handler.fundPool.selector;
        actions[5] = Handler.stake.selector;
        actions[6] = Handler.unstake.selector;
        actions[7] = Handler.withdraw.selector;
        actions[8] = Handler.slash.selector;
        actions[9] = Handler.setMaxSlashBps.selector;
        actions[10] = Handler.contributeWithSig.selector;
        actions[11] = Handler.replayContribution.selector;
        actions[12] = Handler.propose.selector;
        actions[13] = Handler.claim.selector;
        actions[14] = Handler.overclaim.selector;
        actions[15] = Handler.claim.selector; // claims twice as likely: they are what the pool is for
        actions[16] = Handler.accept.selector;
        actions[17] = Handler.revoke.selector;
        actions[18] = Handler.proposeDishonest.selector;
        actions[19] = Handler.dispute.selector;
        actions[20] = Handler.resolve.selector;
        actions[21] = Handler.setChallengeDelay.selector;
        actions[22] = Handler.setDisputeBond.selector;
        _targetSelector(address(handler), actions);
    }

    function invariant_supplyIsGenesisMinusBurned() public view {
        vm.assertEq(token.totalSupply(), 1e27 - handler.ghostBurned(), "supply == 1e27 - burned");
    }

    function invariant_feePartsSumToFees() public view {
        vm.assertEq(handler.ghostFeePartsSum(), handler.ghostFeesPaid(), "fee parts == fees");
        vm.assertEq(token.balanceOf(address(feeRouter)), 0, "router keeps nothing");
    }

    function invariant_claimsBoundedByAllocationAndFunding() public view {
        uint256 n = handler.actorCount();
        for (uint256 i; i < n; ++i) {
            address a = handler.actors(i);
            vm.assertLe(distributor.claimed(a), handler.cumulative(i), "claimed <= cumulative allocation");
        }
        vm.assertEq(handler.claimedDecreased(), 0, "claimed never decreases");
        vm.assertLe(distributor.totalClaimed(), handler.ghostPoolFunded(), "total claimed <= total funded");
        vm.assertEq(
            token.balanceOf(address(distributor)),
            handler.ghostPoolFunded() - distributor.totalClaimed() + handler.ghostBondHeld(),
            "pool balance == funded - claimed + the open dispute's bond"
        );
        vm.assertEq(handler.ghostBondHeld(), distributor.pendingDispute().bond, "one open dispute's bond at most");
        vm.assertLe(
            distributor.currentRoot().total - distributor.totalClaimed(),
            token.balanceOf(address(distributor)) - handler.ghostBondHeld(),
            "the accepted root is covered by the pool, bonds apart"
        );
        vm.assertEq(handler.acceptedWhileDisputed(), 0, "a disputed root is never accepted");
        vm.assertLe(distributor.totalClaimed(), distributor.currentRoot().total, "claims never exceed the root's total");
        vm.assertEq(handler.claimedPastTotal(), 0, "not even for a moment, under a dishonest root");
        RewardDistributor.Root memory p = distributor.pendingRoot();
        if (p.root != bytes32(0)) {
            vm.assertGe(p.total, distributor.currentRoot().total, "a pending root never promises less");
            vm.assertLt(distributor.currentRoot().epoch, p.epoch, "a pending root is of a later epoch");
        }
    }

    function invariant_stakingBooksBalance() public view {
        uint256 bal = token.balanceOf(address(staking));
        vm.assertEq(
            bal,
            handler.ghostStakeDeposited() - handler.ghostStakeWithdrawn() - handler.ghostStakeSlashed(),
            "balance == deposited - withdrawn - slashed"
        );
        vm.assertEq(bal, staking.totalStaked() + staking.totalUnbonding(), "balance == staked + unbonding");
        // the totals are the sum of the positions
        uint256 staked;
        uint256 unbonding;
        uint256 agentStakes;
        for (uint256 i; i < handler.actorCount(); ++i) {
            uint256 agentId = handler.agentOf(i);
            Staking.Position memory p = staking.position(agentId, handler.actors(i));
            staked += p.staked;
            unbonding += p.unbonding;
            agentStakes += staking.agentStake(agentId);
        }
        vm.assertEq(staked, staking.totalStaked(), "sum of positions' stake == totalStaked");
        vm.assertEq(unbonding, staking.totalUnbonding(), "sum of positions' unbonding == totalUnbonding");
        vm.assertEq(agentStakes, staking.totalStaked(), "sum of agent stakes == totalStaked");
    }

    function invariant_noReplay() public view {
        vm.assertEq(handler.replaySucceeded(), 0, "no replayed signature, requestId or overclaim succeeded");
    }
}

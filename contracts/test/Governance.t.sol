// SPDX-License-Identifier: Apache-2.0
pragma solidity 0.8.30;

import {IGovernor} from "@openzeppelin/contracts/governance/IGovernor.sol";
import {FeeRouter} from "../src/FeeRouter.sol";
import {Fixture} from "./utils/Fixture.sol";
import {vm} from "./utils/Vm.sol";

contract GovernanceTest is Fixture {
    function test_deployerKeepsNoAdmin() public view {
        bytes32 admin = 0x00;
        address me = address(this); // the deployer in the fixture
        vm.assertFalse(timelock.hasRole(admin, me), "timelock admin renounced");
        vm.assertFalse(registry.hasRole(admin, me), "registry");
        vm.assertFalse(staking.hasRole(admin, me), "staking");
        vm.assertFalse(feeRouter.hasRole(admin, me), "fee router");
        vm.assertFalse(distributor.hasRole(admin, me), "distributor");
        vm.assertFalse(distributor.hasRole(distributor.REVOKER_ROLE(), me), "revoker");
        vm.assertTrue(registry.hasRole(admin, address(timelock)), "timelock owns registry");
        vm.assertTrue(staking.hasRole(admin, address(timelock)), "timelock owns staking");
        vm.assertTrue(feeRouter.hasRole(admin, address(timelock)), "timelock owns fee router");
        vm.assertTrue(distributor.hasRole(admin, address(timelock)), "timelock owns distributor");
        vm.assertTrue(distributor.hasRole(distributor.REVOKER_ROLE(), address(timelock)), "timelock revokes");
        vm.assertTrue(staking.hasRole(staking.SLASHER_ROLE(), address(timelock)), "timelock slashes");
        vm.assertTrue(distributor.hasRole(distributor.SETTLER_ROLE(), SETTLER), "daemon settles");
        vm.assertTrue(timelock.hasRole(timelock.PROPOSER_ROLE(), address(governor)), "governor proposes");
        vm.assertTrue(timelock.hasRole(timelock.EXECUTOR_ROLE(), address(0)), "anyone executes");
        vm.assertEq(address(governor.token()), address(token), "votes from OPEN");
        vm.assertEq(governor.timelock(), address(timelock), "governor uses the timelock");
    }

    function test_proposalChangesFeeSplit() public {
        // alice holds 10% of the supply and votes with it; quorum is 4%
        _fund(alice, 100_000_000 ether);
        vm.prank(alice);
        token.delegate(alice);
        vm.roll(block.number + 1);

        address[] memory targets = new address[](1);
        targets[0] = address(feeRouter);
        uint256[] memory values = new uint256[](1);
        bytes[] memory calls = new bytes[](1);
        FeeRouter.Split memory next = FeeRouter.Split(2000, 3000, 1000, 4000);
        calls[0] = abi.encodeCall(FeeRouter.setSplit, (next));
        string memory description = "Burn 20% of every inference fee";
        bytes32 descHash = keccak256(bytes(description));

        vm.prank(alice);
        uint256 id = governor.propose(targets, values, calls, description);
        vm.assertEq(uint256(governor.state(id)), uint256(IGovernor.ProposalState.Pending), "pending");
        vm.roll(block.number + governor.votingDelay() + 1);
        vm.prank(alice);
        governor.castVote(id, 1); // for
        vm.prank(bob); // no votes: counted as zero, not an error
        governor.castVote(id, 0);
        vm.roll(block.number + governor.votingPeriod());
        vm.assertEq(uint256(governor.state(id)), uint256(IGovernor.ProposalState.Succeeded), "succeeded");

        // executing before queueing, or before the delay, fails
        vm.expectRevert();
        governor.execute(targets, values, calls, descHash);
        governor.queue(targets, values, calls, descHash);
        vm.assertEq(uint256(governor.state(id)), uint256(IGovernor.ProposalState.Queued), "queued");
        vm.expectRevert();
        governor.execute(targets, values, calls, descHash);
        vm.assertEq(uint256(feeRouter.split().burnBps), 1000, "unchanged while in the timelock");

        vm.warp(block.timestamp + timelock.getMinDelay());
        vm.expectEmit(address(feeRouter));
        emit FeeRouter.SplitSet(2000, 3000, 1000, 4000);
        governor.execute(targets, values, calls, descHash);
        vm.assertEq(uint256(governor.state(id)), uint256(IGovernor.ProposalState.Executed), "executed");
        FeeRouter.Split memory s = feeRouter.split();
        vm.assertEq(uint256(s.burnBps), 2000, "burn");
        vm.assertEq(uint256(s.developerBps), 3000, "developer");
    }

    function test_proposalWithoutQuorumFails() public {
        _fund(alice, 1_000_000 ether); // 0.1% of supply, below the 4% quorum
        vm.prank(alice);
        token.delegate(alice);
        vm.roll(block.number + 1);
        address[] memory targets = new address[](1);
        targets[0] = address(feeRouter);
        bytes[] memory calls = new bytes[](1);
        calls[0] = abi.encodeCall(FeeRouter.setSplit, (FeeRouter.Split(0, 0, 0, 10_000)));
        vm.prank(alice);
        uint256 id = governor.propose(targets, new uint256[](1), calls, "all to the pool");
        vm.roll(block.number + governor.votingDelay() + 1);
        vm.prank(alice);
        governor.castVote(id, 1);
        vm.roll(block.number + governor.votingPeriod());
        vm.assertEq(uint256(governor.state(id)), uint256(IGovernor.ProposalState.Defeated), "defeated");
    }

    function test_settingsAndCancel() public {
        vm.assertEq(governor.proposalThreshold(), 0, "threshold");
        vm.assertEq(governor.votingDelay(), 1, "voting delay");
        vm.assertEq(governor.votingPeriod(), 50, "voting period");
        vm.roll(block.number + 2);
        vm.assertEq(governor.quorum(block.number - 1), 40_000_000 ether, "quorum is 4% of supply");

        address[] memory targets = new address[](1);
        targets[0] = address(feeRouter);
        bytes[] memory calls = new bytes[](1);
        calls[0] = abi.encodeCall(FeeRouter.setSplit, (FeeRouter.Split(0, 0, 0, 10_000)));
        vm.prank(alice);
        uint256 id = governor.propose(targets, new uint256[](1), calls, "withdrawn later");
        vm.assertTrue(governor.proposalNeedsQueuing(id), "goes through the timelock");
        vm.prank(bob);
        vm.expectRevert(); // only the proposer, and only while pending
        governor.cancel(targets, new uint256[](1), calls, keccak256("withdrawn later"));
        vm.prank(alice);
        governor.cancel(targets, new uint256[](1), calls, keccak256("withdrawn later"));
        vm.assertEq(uint256(governor.state(id)), uint256(IGovernor.ProposalState.Canceled), "canceled");
    }
}

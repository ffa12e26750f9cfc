// SPDX-License-Identifier: Apache-2.0
pragma solidity 0.8.30;

import {IAccessControl} from "@openzeppelin/contracts/access/IAccessControl.sol";
import {IAgentRegistry} from "../src/interfaces/IAgentRegistry.sol";
import {Staking} from "../src/Staking.sol";
import {Fixture} from "./utils/Fixture.sol";
import {vm} from "./utils/Vm.sol";

contract StakingTest is Fixture {
    uint256 internal agentId;
    address internal operator;
    address internal slasher;

    function setUp() public override {
        super.setUp();
        operator = makeAddr("operator");
        slasher = makeAddr("slasher");
        (uint256 modelId,) = _model(bob);
        vm.prank(bob);
        agentId = registry.registerAgent(modelId, operator, "ipfs://agent");
        _fund(operator, 1000 ether);
        vm.prank(operator);
        token.approve(address(staking), type(uint256).max);
        vm.startPrank(address(timelock));
        staking.grantRole(staking.SLASHER_ROLE(), slasher);
        vm.stopPrank();
    }

    function test_stake() public {
        vm.expectEmit(address(staking));
        emit Staking.Staked(agentId, operator, 100 ether, 100 ether);
        vm.prank(operator);
        staking.stake(agentId, 100 ether);
        vm.assertEq(uint256(staking.position(agentId, operator).staked), 100 ether, "staked");
        vm.assertEq(staking.agentStake(agentId), 100 ether, "agent stake");
        vm.assertEq(staking.totalStaked(), 100 ether, "total");
        vm.assertEq(token.balanceOf(address(staking)), 100 ether, "held");
    }

    function test_stake_reverts() public {
        vm.startPrank(operator);
        vm.expectRevert(Staking.ZeroAmount.selector);
        staking.stake(agentId, 0);
        vm.expectRevert(abi.encodeWithSelector(Staking.UnknownAgent.selector, 99));
        staking.stake(99, 1 ether);
        vm.stopPrank();
        vm.prank(alice);
        vm.expectRevert(abi.encodeWithSelector(Staking.NotAgentOperator.selector, agentId, alice));
        staking.stake(agentId, 1 ether);
    }

    function test_unstakeWithdrawLifecycle() public {
        vm.startPrank(operator);
        staking.stake(agentId, 100 ether);
        vm.expectRevert(abi.encodeWithSelector(Staking.InsufficientStake.selector, 100 ether, 101 ether));
        staking.unstake(agentId, 101 ether);
        vm.expectRevert(Staking.ZeroAmount.selector);
        staking.unstake(agentId, 0);
        vm.expectRevert(abi.encodeWithSelector(Staking.NothingToWithdraw.selector, agentId, operator));
        staking.withdraw(agentId);

        uint64 releaseAt = uint64(block.timestamp) + staking.unbondingPeriod();
        vm.expectEmit(address(staking));
        emit Staking.UnstakeRequested(agentId, operator, 40 ether, 40 ether, releaseAt);
        staking.unstake(agentId, 40 ether);
        vm.assertEq(staking.agentStake(agentId), 60 ether, "agent stake drops at once");
        vm.assertEq(staking.totalUnbonding(), 40 ether, "unbonding");

        vm.warp(releaseAt - 1);
        vm.expectRevert(abi.encodeWithSelector(Staking.StillUnbonding.selector, releaseAt));
        staking.withdraw(agentId);

        vm.warp(releaseAt);
        uint256 before = token.balanceOf(operator);
        vm.expectEmit(address(staking));
        emit Staking.Withdrawn(agentId, operator, 40 ether);
        staking.withdraw(agentId);
        vm.stopPrank();
        vm.assertEq(token.balanceOf(operator) - before, 40 ether, "paid");
        vm.assertEq(staking.totalUnbonding(), 0, "bucket empty");
        vm.assertEq(uint256(staking.position(agentId, operator).unbonding), 0, "position empty");
    }

    function test_newUnstakeRestartsTheClock() public {
        vm.startPrank(operator);
        staking.stake(agentId, 100 ether);
        staking.unstake(agentId, 10 ether);
        vm.warp(block.timestamp + 6 days);
        staking.unstake(agentId, 10 ether);
        vm.warp(block.timestamp + 2 days); // 8 days after the first, 2 after the second
        vm.expectRevert();
        staking.withdraw(agentId);
        vm.warp(block.timestamp + 5 days);
        staking.withdraw(agentId);
        vm.stopPrank();
        vm.assertEq(token.balanceOf(operator), 920 ether, "both unstakes paid together");
    }

    function test_slash_fromStakeThenUnbonding_burns() public {
        vm.startPrank(operator);
        staking.stake(agentId, 100 ether);
        staking.unstake(agentId, 95 ether); // 5 staked, 95 unbonding
        vm.stopPrank();
        uint256 supplyBefore = token.totalSupply();
        vm.expectEmit(address(staking));
        emit Staking.Slashed(agentId, operator, keccak256("incident-1"), 5 ether, 5 ether, true, slasher);
        vm.prank(slasher);
        staking.slash(agentId, operator, 10 ether, keccak256("incident-1")); // cap: 10% of 100
        Staking.Position memory p = staking.position(agentId, operator);
        vm.assertEq(uint256(p.staked), 0, "stake taken first");
        vm.assertEq(uint256(p.unbonding), 90 ether, "then unbonding");
        vm.assertEq(supplyBefore - token.totalSupply(), 10 ether, "burned");
        vm.assertEq(token.balanceOf(address(staking)), 90 ether, "balance matches");
    }

    function test_slash_toTreasuryAndCaps() public {
        vm.prank(operator);
        staking.stake(agentId, 100 ether);
        vm.prank(address(timelock));
        staking.setSlashDestination(false, address(timelock));
        uint256 before = token.balanceOf(address(timelock));

        vm.startPrank(slasher);
        vm.expectRevert(abi.encodeWithSelector(Staking.SlashExceedsCap.selector, 10 ether + 1, 10 ether));
        staking.slash(agentId, operator, 10 ether + 1, keccak256("i"));
        vm.expectRevert(Staking.ZeroAmount.selector);
        staking.slash(agentId, operator, 0, keccak256("i"));
        staking.slash(agentId, operator, 10 ether, keccak256("i"));
        vm.expectRevert(
            abi.encodeWithSelector(Staking.IncidentAlreadySlashed.selector, keccak256("i"), agentId, operator)
        );
        staking.slash(agentId, operator, 1 ether, keccak256("i"));
        // a new incident in the same window finds the window's cap spent
        vm.expectRevert(abi.encodeWithSelector(Staking.SlashExceedsCap.selector, 1, 0));
        staking.slash(agentId, operator, 1, keccak256("j"));
        vm.stopPrank();
        vm.assertEq(token.balanceOf(address(timelock)) - before, 10 ether, "sent to treasury");
        vm.assertEq(staking.agentStake(agentId), 90 ether, "agent stake");
    }

    function test_slash_onlySlasher() public {
        vm.prank(operator);
        staking.stake(agentId, 100 ether);
        bytes32 role = staking.SLASHER_ROLE();
        vm.prank(operator);
        vm.expectRevert(
            abi.encodeWithSelector(IAccessControl.AccessControlUnauthorizedAccount.selector, operator, role)
        );
        staking.slash(agentId, operator, 1 ether, "x");
        // governance itself holds the role from deployment
        vm.prank(address(timelock));
        staking.slash(agentId, operator, 1 ether, "x");
    }

    function testFuzz_slashNeverExceedsCap(uint96 stakeAmt, uint96 unstakeAmt, uint96 slashAmt, uint16 bps) public {
        stakeAmt = uint96(bound(stakeAmt, 1, 1000 ether));
        unstakeAmt = uint96(bound(unstakeAmt, 0, stakeAmt));
        bps = uint16(bound(bps, 1, 10_000));
        vm.prank(address(timelock));
        staking.setMaxSlashBps(bps);
        vm.startPrank(operator);
        staking.stake(agentId, stakeAmt);
        if (unstakeAmt > 0) staking.unstake(agentId, unstakeAmt);
        vm.stopPrank();
        uint256 cap = uint256(stakeAmt) * bps / 10_000;
        slashAmt = uint96(bound(slashAmt, 1, uint256(stakeAmt) + 1));
        vm.prank(slasher);
        if (slashAmt > cap) {
            vm.expectRevert(abi.encodeWithSelector(Staking.SlashExceedsCap.selector, slashAmt, cap));
            staking.slash(agentId, operator, slashAmt, "f");
        } else {
            staking.slash(agentId, operator, slashAmt, "f");
            Staking.Position memory p = staking.position(agentId, operator);
            vm.assertEq(uint256(p.staked) + p.unbonding, uint256(stakeAmt) - slashAmt, "position shrank by slash");
            vm.assertEq(token.balanceOf(address(staking)), staking.totalStaked() + staking.totalUnbonding(), "books");
        }
    }

    function test_governanceSetters() public {
        vm.startPrank(address(timelock));
        vm.expectEmit(address(staking));
        emit Staking.UnbondingPeriodSet(7 days, 1 days);
        staking.setUnbondingPeriod(1 days);
        vm.expectRevert(abi.encodeWithSelector(Staking.UnbondingPeriodTooLong.selector, 366 days, 365 days));
        staking.setUnbondingPeriod(366 days);
        vm.expectRevert(abi.encodeWithSelector(Staking.UnbondingPeriodTooShort.selector, 0, 1 days));
        staking.setUnbondingPeriod(0);
        vm.expectRevert(abi.encodeWithSelector(Staking.UnbondingPeriodTooShort.selector, 1 days - 1, 1 days));
        staking.setUnbondingPeriod(1 days - 1);
        vm.expectRevert(abi.encodeWithSelector(Staking.InvalidBps.selector, 0));
        staking.setMaxSlashBps(0);
        vm.expectRevert(abi.encodeWithSelector(Staking.InvalidBps.selector, 10_001));
        staking.setMaxSlashBps(10_001);
        vm.expectEmit(address(staking));
        emit Staking.MaxSlashBpsSet(1000, 5000);
        staking.setMaxSlashBps(5000);
        vm.expectRevert(Staking.ZeroAddress.selector);
        staking.setSlashDestination(false, address(0));
        vm.stopPrank();
        vm.prank(alice);
        vm.expectRevert(
            abi.encodeWithSelector(IAccessControl.AccessControlUnauthorizedAccount.selector, alice, bytes32(0))
        );
        staking.setUnbondingPeriod(0);
        vm.prank(alice);
        vm.expectRevert(
            abi.encodeWithSelector(IAccessControl.AccessControlUnauthorizedAccount.selector, alice, bytes32(0))
        );
        staking.setMaxSlashBps(1);
        vm.prank(alice);
        vm.expectRevert(
            abi.encodeWithSelector(IAccessControl.AccessControlUnauthorizedAccount.selector, alice, bytes32(0))
        );
        staking.setSlashDestination(true, address(0));
    }

    function test_constructorRejectsZeroAddresses() public {
        vm.expectRevert(Staking.ZeroAddress.selector);
        new Staking(token, IAgentRegistry(address(0)), alice, alice, 1, 1, true);
        vm.expectRevert(Staking.ZeroAddress.selector);
        new Staking(token, IAgentRegistry(address(registry)), address(0), alice, 1, 1, true);
    }

    function test_constructorRejectsAnUnbondingPeriodWithoutTimeToSlash() public {
        vm.expectRevert(abi.encodeWithSelector(Staking.UnbondingPeriodTooShort.selector, 0, 1 days));
        new Staking(token, IAgentRegistry(address(registry)), alice, alice, 0, 1, true);
    }

    /// Attack: a slasher (or its stolen key) names fresh incident after fresh incident to take a whole position.
    /// One window takes at most `maxSlashBps` of what the position held when the window opened.
    function test_attack_freshIncidentsCannotSlashPastTheWindowCap() public {
        vm.prank(operator);
        staking.stake(agentId, 100 ether);
        vm.startPrank(slasher);
        staking.slash(agentId, operator, 4 ether, keccak256("a"));
        staking.slash(agentId, operator, 6 ether, keccak256("b")); // 10% of 100, in two incidents
        vm.expectRevert(abi.encodeWithSelector(Staking.SlashExceedsCap.selector, 1, 0));
        staking.slash(agentId, operator, 1, keccak256("c"));
        Staking.SlashWindow memory w = staking.slashWindow(agentId, operator);
        vm.assertEq(uint256(w.cap), 10 ether, "the window's cap");
        vm.assertEq(uint256(w.slashed), 10 ether, "spent");
        // the next window opens on what is left
        vm.warp(w.endsAt);
        vm.expectRevert(abi.encodeWithSelector(Staking.SlashExceedsCap.selector, 9 ether + 1, 9 ether));
        staking.slash(agentId, operator, 9 ether + 1, keccak256("c"));
        staking.slash(agentId, operator, 9 ether, keccak256("c"));
        vm.stopPrank();
        vm.assertEq(uint256(staking.position(agentId, operator).staked), 81 ether, "two windows, 10% each");
    }

    /// Attack: once an unstake's release time passes, the staker races a pending slash with `withdraw`. Released
    /// stake is not slashable, so the outcome is the same whichever is mined first.
    function test_attack_withdrawRacingASlashEndsTheSameEitherWay() public {
        vm.startPrank(operator);
        staking.stake(agentId, 100 ether);
        staking.unstake(agentId, 60 ether); // 40 staked, 60 unbonding
        vm.stopPrank();
        // before release the unbonding stake is slashable: 10% of 100
        uint256 snap = vm.snapshotState();
        vm.prank(slasher);
        staking.slash(agentId, operator, 10 ether, keccak256("early"));
        vm.assertEq(uint256(staking.position(agentId, operator).staked), 30 ether, "stake first");
        vm.assertTrue(vm.revertToState(snap), "reverted");
        vm.warp(staking.position(agentId, operator).releaseAt);
        snap = vm.snapshotState();
        // slash first, then withdraw
        vm.prank(slasher);
        staking.slash(agentId, operator, 4 ether, keccak256("late")); // 10% of the 40 still staked
        vm.prank(operator);
        staking.withdraw(agentId);
        uint256 slashThenWithdraw = token.balanceOf(operator);
        Staking.Position memory p1 = staking.position(agentId, operator);
        vm.assertTrue(vm.revertToState(snap), "reverted");
        // withdraw first, then slash
        vm.prank(operator);
        staking.withdraw(agentId);
        vm.prank(slasher);
        staking.slash(agentId, operator, 4 ether, keccak256("late"));
        Staking.Position memory p2 = staking.position(agentId, operator);
        vm.assertEq(token.balanceOf(operator), slashThenWithdraw, "the staker gets the same");
        vm.assertEq(uint256(p1.staked), uint256(p2.staked), "the position ends the same");
        vm.assertEq(uint256(p2.staked), 36 ether, "the slash took active stake only");
        // the released stake itself is out of reach
        vm.prank(slasher);
        vm.expectRevert(abi.encodeWithSelector(Staking.SlashExceedsCap.selector, 37 ether, 0));
        staking.slash(agentId, operator, 37 ether, keccak256("more"));
    }
}

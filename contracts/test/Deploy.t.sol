// SPDX-License-Identifier: Apache-2.0
pragma solidity 0.8.30;

import {SuiteDeployer} from "../script/SuiteDeployer.sol";
import {Test} from "./utils/Test.sol";
import {vm} from "./utils/Vm.sol";

/// @notice The deployment config is validated before anything is deployed.
contract DeployConfigTest is Test, SuiteDeployer {
    function _deployExternal(SuiteParams memory p) external returns (Suite memory) {
        return _deploySuite(p);
    }

    function test_localConfigParses() public view {
        SuiteParams memory p = _loadParams(_readConfig("local.json"), address(this));
        vm.assertEq(p.allocations.length, 5, "allocations");
        vm.assertEq(p.allocations[4].recipient, address(0), "treasury line");
        vm.assertEq(p.allocations[0].bps, 5170, "ecosystem bps");
        vm.assertEq(p.settler, 0x70997970C51812dc3A010C7d01b50e0d17dc79C8, "settler");
        vm.assertEq(uint256(p.split.poolBps), 4000, "pool bps");
        vm.assertEq(p.timelockDelay, 60, "timelock delay");
    }

    /// The production example deploys as written (placeholder addresses aside), with the timings its comment
    /// argues for: the timelock outlasts the challenge window, unbonding outlasts both.
    function test_productionExampleDeploysWithItsTimings() public {
        SuiteParams memory p = _loadParams(_readConfig("production.example.json"), address(this));
        vm.assertEq(p.challengeDelay, 2 days, "challenge delay");
        vm.assertEq(p.timelockDelay, 3 days, "timelock delay");
        vm.assertLt(p.challengeDelay, p.timelockDelay, "a change is announced a whole challenge window ahead");
        vm.assertLt(p.timelockDelay, p.unbondingPeriod, "stake outlasts both");
        vm.assertTrue(p.guardian != address(0), "a guardian");
        vm.assertEq(p.proposalThreshold, 1_000_000 ether, "proposal threshold");
        this._deployExternal(p);
    }

    function test_badAllocationBpsReverts() public {
        SuiteParams memory p = _loadParams(_readConfig("local.json"), address(this));
        p.allocations[0].bps -= 1;
        vm.expectRevert(abi.encodeWithSelector(SuiteDeployer.AllocationBpsSum.selector, 9999));
        this._deployExternal(p);
    }
}

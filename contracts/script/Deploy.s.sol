// SPDX-License-Identifier: Apache-2.0
pragma solidity 0.8.30;

import {vm} from "../test/utils/Vm.sol";
import {SuiteDeployer} from "./SuiteDeployer.sol";

/// @notice Deploys the suite: use scripts/deploy.sh, which runs this with --broadcast and then writes
/// deployments/<chainId>.json. Reads DEPLOYER_PRIVATE_KEY and DEPLOY_CONFIG (a JSON file under
/// contracts/script/config/, default local.json).
contract Deploy is SuiteDeployer {
    /// @dev anvil's first dev account; used only when DEPLOYER_PRIVATE_KEY is unset.
    uint256 internal constant ANVIL_KEY_0 = 0xac0974bec39a17e36ba4a6b4d238ff944bacb478cbed5efcae784d7bf4f2ff80;

    function run() external returns (Suite memory s) {
        uint256 key = vm.envOr("DEPLOYER_PRIVATE_KEY", ANVIL_KEY_0);
        SuiteParams memory p = _loadParams(_readConfig(vm.envOr("DEPLOY_CONFIG", string("local.json"))), vm.addr(key));
        vm.startBroadcast(key);
        s = _deploySuite(p);
        vm.stopBroadcast();
    }
}

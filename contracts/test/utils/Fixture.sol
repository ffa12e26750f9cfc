// SPDX-License-Identifier: Apache-2.0
pragma solidity 0.8.30;

import {TimelockController} from "@openzeppelin/contracts/governance/TimelockController.sol";
import {FeeRouter} from "../../src/FeeRouter.sol";
import {OpenGovernor} from "../../src/OpenGovernor.sol";
import {OpenToken} from "../../src/OpenToken.sol";
import {Registry} from "../../src/Registry.sol";
import {RewardDistributor} from "../../src/RewardDistributor.sol";
import {Staking} from "../../src/Staking.sol";
import {SuiteDeployer} from "../../script/SuiteDeployer.sol";
import {Test} from "./Test.sol";
import {vm} from "./Vm.sol";

/// @notice The whole suite, deployed with the shipped local config, exactly as scripts/deploy.sh wires it.
abstract contract Fixture is Test, SuiteDeployer {
    /// anvil dev account #0: genesis holder in config/local.json
    address internal constant HOLDER = 0xf39Fd6e51aad88F6F4ce6aB8827279cffFb92266;
    /// anvil dev account #1: the settler in config/local.json
    address internal constant SETTLER = 0x70997970C51812dc3A010C7d01b50e0d17dc79C8;

    OpenToken internal token;
    TimelockController internal timelock;
    OpenGovernor internal governor;
    Registry internal registry;
    Staking internal staking;
    FeeRouter internal feeRouter;
    RewardDistributor internal distributor;

    address internal alice;
    address internal bob;
    address internal carol;

    function setUp() public virtual {
        SuiteParams memory p = _loadParams(_readConfig("local.json"), address(this));
        Suite memory s = _deploySuite(p);
        token = s.token;
        timelock = s.timelock;
        governor = s.governor;
        registry = s.registry;
        staking = s.staking;
        feeRouter = s.feeRouter;
        distributor = s.distributor;
        alice = makeAddr("alice");
        bob = makeAddr("bob");
        carol = makeAddr("carol");
    }

    function _fund(address to, uint256 amount) internal {
        vm.prank(HOLDER);
        vm.assertTrue(token.transfer(to, amount), "fund transfer");
    }

    /// @dev A public Datanet owned by `owner` (fee paid from a fresh grant).
    function _datanet(address owner, bool permissioned) internal returns (uint256 id) {
        uint256 fee = registry.datanetFee();
        _fund(owner, fee);
        vm.startPrank(owner);
        token.approve(address(registry), fee);
        id = registry.createDatanet("ipfs://datanet", new string[](0), permissioned, new address[](0));
        vm.stopPrank();
    }

    /// @dev A Datanet with one accepted contribution and version 1 published; then a model on it by `developer`.
    function _model(address developer) internal returns (uint256 modelId, uint256 datanetId) {
        datanetId = _datanet(carol, false);
        vm.prank(alice);
        uint256 c = registry.contribute(datanetId, keccak256(abi.encode("row", developer)), "ipfs://row");
        uint256[] memory ids = new uint256[](1);
        ids[0] = c;
        vm.startPrank(carol);
        registry.reviewContributions(datanetId, ids, true);
        registry.publishVersion(datanetId, keccak256("v1"), 1, "ipfs://v1");
        vm.stopPrank();
        uint256[] memory dn = new uint256[](1);
        dn[0] = datanetId;
        uint64[] memory vs = new uint64[](1);
        vs[0] = 1;
        vm.prank(developer);
        modelId = registry.registerModel(
            Registry.ModelSpec({
                baseModel: "SmolLM2-135M-Instruct",
                baseModelHash: keccak256("base"),
                datanetIds: dn,
                datanetVersions: vs,
                trainingConfigHash: keccak256("cfg"),
                metadataURI: "ipfs://model"
            })
        );
    }
}

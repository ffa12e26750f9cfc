// SPDX-License-Identifier: Apache-2.0
pragma solidity 0.8.30;

import {SafeCast} from "@openzeppelin/contracts/utils/math/SafeCast.sol";
import {TimelockController} from "@openzeppelin/contracts/governance/TimelockController.sol";
import {FeeRouter} from "../src/FeeRouter.sol";
import {IAgentRegistry} from "../src/interfaces/IAgentRegistry.sol";
import {IModelRegistry} from "../src/interfaces/IModelRegistry.sol";
import {OpenGovernor} from "../src/OpenGovernor.sol";
import {OpenToken} from "../src/OpenToken.sol";
import {Registry} from "../src/Registry.sol";
import {RewardDistributor} from "../src/RewardDistributor.sol";
import {Staking} from "../src/Staking.sol";
import {vm} from "../test/utils/Vm.sol";

/// @notice Deploys and wires the whole suite. Shared by the deploy script and the tests, so the tests exercise
/// exactly the wiring that goes on-chain.
abstract contract SuiteDeployer {
    /// @notice One genesis allocation in bps of the supply; recipient zero means the timelock (protocol treasury).
    struct AllocationBps {
        uint256 bps;
        string label;
        address recipient;
    }

    struct SuiteParams {
        /// The account sending the deployment; it holds admin rights only until the end of `_deploySuite`.
        address deployer;
        AllocationBps[] allocations;
        uint256 timelockDelay;
        uint48 votingDelay;
        uint32 votingPeriod;
        uint256 proposalThreshold;
        uint256 quorumPercent;
        uint256 datanetFee;
        FeeRouter.Split split;
        uint64 challengeDelay;
        /// OPEN a dispute of a pending reward root posts.
        uint96 disputeBond;
        uint64 unbondingPeriod;
        uint16 maxSlashBps;
        bool burnSlashed;
        /// Gets SETTLER_ROLE on the distributor (the local daemon in dev); zero for none.
        address settler;
        /// Gets REVOKER_ROLE on the distributor besides the timelock; zero for none.
        address guardian;
        /// Gets SLASHER_ROLE on staking besides the timelock; zero for none.
        address slasher;
    }

    struct Suite {
        OpenToken token;
        TimelockController timelock;
        OpenGovernor governor;
        Registry registry;
        Staking staking;
        FeeRouter feeRouter;
        RewardDistributor distributor;
    }

    error AllocationBpsSum(uint256 sum);

    function _deploySuite(SuiteParams memory p) internal returns (Suite memory s) {
        uint256 bpsSum;
        for (uint256 i; i < p.allocations.length; ++i) {
            bpsSum += p.allocations[i].bps;
        }
        if (bpsSum != 10_000) revert AllocationBpsSum(bpsSum);

        address[] memory none = new address[](0);
        address[] memory anyone = new address[](1); // address(0) as executor: anyone may execute a ready proposal
        s.timelock = new TimelockController(p.timelockDelay, none, anyone, p.deployer);

        uint256 supply = 1_000_000_000 ether;
        OpenToken.Allocation[] memory allocations = new OpenToken.Allocation[](p.allocations.length);
        for (uint256 i; i < p.allocations.length; ++i) {
            AllocationBps memory a = p.allocations[i];
            allocations[i] = OpenToken.Allocation({
                recipient: a.recipient == address(0) ? address(s.timelock) : a.recipient,
                amount: supply * a.bps / 10_000,
                label: a.label
            });
        }
        s.token = new OpenToken(allocations);
        s.governor =
            new OpenGovernor(s.token, s.timelock, p.votingDelay, p.votingPeriod, p.proposalThreshold, p.quorumPercent);
        address treasury = address(s.timelock);
        s.registry = new Registry(s.token, p.deployer, treasury, p.datanetFee);
        s.distributor = new RewardDistributor(s.token, p.deployer, p.challengeDelay, p.disputeBond);
        s.feeRouter = new FeeRouter(
            s.token, IModelRegistry(address(s.registry)), p.deployer, treasury, address(s.distributor), p.split
        );
        s.staking = new Staking(
            s.token,
            IAgentRegistry(address(s.registry)),
            p.deployer,
            treasury,
            p.unbondingPeriod,
            p.maxSlashBps,
            p.burnSlashed
        );

        // Governance: only the governor proposes and cancels; the timelock owns every parameter.
        s.timelock.grantRole(s.timelock.PROPOSER_ROLE(), address(s.governor));
        s.timelock.grantRole(s.timelock.CANCELLER_ROLE(), address(s.governor));
        if (p.settler != address(0)) s.distributor.grantRole(s.distributor.SETTLER_ROLE(), p.settler);
        s.distributor.grantRole(s.distributor.REVOKER_ROLE(), treasury);
        if (p.guardian != address(0)) s.distributor.grantRole(s.distributor.REVOKER_ROLE(), p.guardian);
        s.distributor.renounceRole(s.distributor.REVOKER_ROLE(), p.deployer);
        s.staking.grantRole(s.staking.SLASHER_ROLE(), treasury);
        if (p.slasher != address(0)) s.staking.grantRole(s.staking.SLASHER_ROLE(), p.slasher);

        bytes32 admin = 0x00; // DEFAULT_ADMIN_ROLE
        s.registry.grantRole(admin, treasury);
        s.registry.renounceRole(admin, p.deployer);
        s.distributor.grantRole(admin, treasury);
        s.distributor.renounceRole(admin, p.deployer);
        s.feeRouter.grantRole(admin, treasury);
        s.feeRouter.renounceRole(admin, p.deployer);
        s.staking.grantRole(admin, treasury);
        s.staking.renounceRole(admin, p.deployer);
        // Last: the deployer gives up the timelock itself. From here on only proposals change anything.
        s.timelock.renounceRole(admin, p.deployer);
    }

    /// @notice Parse a deployment config (see contracts/script/config/local.json for the fields).
    function _loadParams(string memory json, address deployer) internal pure returns (SuiteParams memory p) {
        p.deployer = deployer;
        // forge decodes JSON objects with their keys in alphabetical order: bps, label, recipient.
        p.allocations = abi.decode(vm.parseJson(json, ".allocations"), (AllocationBps[]));
        p.timelockDelay = vm.parseJsonUint(json, ".timelockDelay");
        p.votingDelay = SafeCast.toUint48(vm.parseJsonUint(json, ".votingDelay"));
        p.votingPeriod = SafeCast.toUint32(vm.parseJsonUint(json, ".votingPeriod"));
        p.proposalThreshold = vm.parseJsonUint(json, ".proposalThreshold");
        p.quorumPercent = vm.parseJsonUint(json, ".quorumPercent");
        p.datanetFee = vm.parseJsonUint(json, ".datanetFee");
        p.split = FeeRouter.Split({
            burnBps: SafeCast.toUint16(vm.parseJsonUint(json, ".split.burnBps")),
            developerBps: SafeCast.toUint16(vm.parseJsonUint(json, ".split.developerBps")),
            treasuryBps: SafeCast.toUint16(vm.parseJsonUint(json, ".split.treasuryBps")),
            poolBps: SafeCast.toUint16(vm.parseJsonUint(json, ".split.poolBps"))
        });
        p.challengeDelay = SafeCast.toUint64(vm.parseJsonUint(json, ".challengeDelay"));
        p.disputeBond = SafeCast.toUint96(vm.parseJsonUint(json, ".disputeBond"));
        p.unbondingPeriod = SafeCast.toUint64(vm.parseJsonUint(json, ".unbondingPeriod"));
        p.maxSlashBps = SafeCast.toUint16(vm.parseJsonUint(json, ".maxSlashBps"));
        p.burnSlashed = vm.parseJsonBool(json, ".burnSlashed");
        p.settler = vm.parseJsonAddress(json, ".settler");
        p.guardian = vm.parseJsonAddress(json, ".guardian");
        p.slasher = vm.parseJsonAddress(json, ".slasher");
    }

    /// @notice Read contracts/script/config/<name>.
    function _readConfig(string memory name) internal view returns (string memory) {
        // relative to the project root (forge resolves it there): a path of constant length, so the tests'
        // gas does not depend on where the clone lives
        return vm.readFile(string.concat("contracts/script/config/", name));
    }
}

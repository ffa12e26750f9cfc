// SPDX-License-Identifier: Apache-2.0
pragma solidity 0.8.30;

import {IAccessControl} from "@openzeppelin/contracts/access/IAccessControl.sol";
import {IERC1271} from "@openzeppelin/contracts/interfaces/IERC1271.sol";
import {Nonces} from "@openzeppelin/contracts/utils/Nonces.sol";
import {Registry} from "../src/Registry.sol";
import {Fixture} from "./utils/Fixture.sol";
import {vm} from "./utils/Vm.sol";

/// @dev An ERC-1271 wallet that accepts exactly one digest.
contract Wallet1271 is IERC1271 {
    bytes32 public approved;

    function approve(bytes32 digest) external {
        approved = digest;
    }

    function isValidSignature(bytes32 digest, bytes memory) external view returns (bytes4) {
        return digest == approved ? IERC1271.isValidSignature.selector : bytes4(0xffffffff);
    }
}

contract RegistryTest is Fixture {
    uint256 internal datanetId;

    function setUp() public override {
        super.setUp();
        datanetId = _datanet(carol, false);
    }

    function _ids(uint256 a) internal pure returns (uint256[] memory ids) {
        ids = new uint256[](1);
        ids[0] = a;
    }

    function _sign(uint256 pk, address contributor, uint256 dn, bytes32 h, string memory uri, uint256 nonce, uint256 dl)
        internal
        view
        returns (bytes memory)
    {
        bytes32 digest = _digest(contributor, dn, h, uri, nonce, dl);
        (uint8 v, bytes32 r, bytes32 s) = vm.sign(pk, digest);
        return abi.encodePacked(r, s, v);
    }

    function _digest(address contributor, uint256 dn, bytes32 h, string memory uri, uint256 nonce, uint256 dl)
        internal
        view
        returns (bytes32)
    {
        bytes32 structHash = keccak256(
            abi.encode(registry.CONTRIBUTE_TYPEHASH(), contributor, dn, h, keccak256(bytes(uri)), nonce, dl)
        );
        return keccak256(abi.encodePacked("\x19\x01", registry.DOMAIN_SEPARATOR(), structHash));
    }

    // ---------------------------------------------------------------- datanets

    function test_createDatanet_paysFeeAndEmits() public {
        uint256 fee = registry.datanetFee();
        _fund(alice, fee);
        uint256 treasuryBefore = token.balanceOf(address(timelock));
        string[] memory tags = new string[](2);
        tags[0] = "medicine";
        tags[1] = "radiology";
        address[] memory curators = new address[](1);
        curators[0] = bob;
        vm.startPrank(alice);
        token.approve(address(registry), fee);
        vm.expectEmit(address(registry));
        emit Registry.DatanetCreated(2, alice, "ipfs://med", tags, true, curators, fee);
        uint256 id = registry.createDatanet("ipfs://med", tags, true, curators);
        vm.stopPrank();
        vm.assertEq(id, 2, "second datanet");
        Registry.Datanet memory d = registry.datanet(id);
        vm.assertEq(d.owner, alice, "owner");
        vm.assertTrue(d.permissioned, "permissioned");
        vm.assertTrue(registry.isCurator(id, bob), "curator");
        vm.assertEq(token.balanceOf(address(timelock)) - treasuryBefore, fee, "fee to treasury");
        vm.assertEq(token.balanceOf(alice), 0, "fee taken");
    }

    function test_createDatanet_reverts() public {
        vm.prank(alice);
        vm.expectRevert(Registry.EmptyURI.selector);
        registry.createDatanet("", new string[](0), false, new address[](0));

        address[] memory curators = new address[](1);
        vm.prank(alice);
        vm.expectRevert(Registry.ZeroAddress.selector);
        registry.createDatanet("ipfs://x", new string[](0), false, curators);

        // no allowance for the fee
        vm.prank(alice);
        vm.expectRevert();
        registry.createDatanet("ipfs://x", new string[](0), false, new address[](0));
        vm.assertEq(registry.datanetCount(), 1, "nothing created");
    }

    function test_createDatanet_freeWhenFeeZero() public {
        vm.prank(address(timelock));
        registry.setDatanetFee(0);
        vm.prank(alice);
        uint256 id = registry.createDatanet("ipfs://free", new string[](0), false, new address[](0));
        vm.assertEq(registry.datanet(id).owner, alice, "created without OPEN");
    }

    function test_ownerAdministration() public {
        vm.startPrank(carol);
        vm.expectEmit(address(registry));
        emit Registry.DatanetMetadataUpdated(datanetId, "ipfs://new");
        registry.setDatanetMetadata(datanetId, "ipfs://new");
        vm.expectRevert(Registry.EmptyURI.selector);
        registry.setDatanetMetadata(datanetId, "");

        vm.expectEmit(address(registry));
        emit Registry.CuratorSet(datanetId, bob, true);
        registry.setCurator(datanetId, bob, true);
        vm.expectRevert(Registry.ZeroAddress.selector);
        registry.setCurator(datanetId, address(0), true);

        vm.expectRevert(Registry.ZeroAddress.selector);
        registry.transferDatanetOwnership(datanetId, address(0));
        vm.expectEmit(address(registry));
        emit Registry.DatanetOwnershipTransferred(datanetId, carol, alice);
        registry.transferDatanetOwnership(datanetId, alice);
        vm.stopPrank();
        vm.assertEq(registry.datanet(datanetId).owner, alice, "new owner");
        vm.assertTrue(registry.isCurator(datanetId, bob), "curator kept");

        // the old owner lost every right
        vm.startPrank(carol);
        vm.expectRevert(abi.encodeWithSelector(Registry.NotDatanetOwner.selector, datanetId, carol));
        registry.setDatanetMetadata(datanetId, "ipfs://x");
        vm.expectRevert(abi.encodeWithSelector(Registry.NotDatanetOwner.selector, datanetId, carol));
        registry.setCurator(datanetId, carol, true);
        vm.expectRevert(abi.encodeWithSelector(Registry.NotDatanetOwner.selector, datanetId, carol));
        registry.transferDatanetOwnership(datanetId, carol);
        vm.stopPrank();

        vm.expectRevert(abi.encodeWithSelector(Registry.UnknownDatanet.selector, 99));
        registry.setCurator(99, bob, true);
    }

    // ---------------------------------------------------------------- contributions

    function test_contribute_pendingAndEvent() public {
        bytes32 h = keccak256("hello");
        vm.expectEmit(address(registry));
        emit Registry.ContributionSubmitted(1, datanetId, alice, h, "ipfs://hello", alice);
        vm.prank(alice);
        uint256 id = registry.contribute(datanetId, h, "ipfs://hello");
        Registry.Contribution memory c = registry.contribution(id);
        vm.assertEq(c.contributor, alice, "contributor");
        vm.assertEq(uint256(c.datanetId), datanetId, "datanet");
        vm.assertEq(uint256(c.status), uint256(Registry.ContributionStatus.Pending), "pending");
        vm.assertEq(registry.contributionByHash(datanetId, alice, h), id, "dedupe index");
        vm.assertEq(registry.contributionByHash(datanetId, bob, h), 0, "per contributor");
        vm.assertEq(uint256(registry.datanet(datanetId).contributionCount), 1, "count");
    }

    function test_contribute_reverts() public {
        bytes32 h = keccak256("x");
        vm.startPrank(alice);
        vm.expectRevert(abi.encodeWithSelector(Registry.UnknownDatanet.selector, 42));
        registry.contribute(42, h, "u");
        vm.expectRevert(Registry.ZeroHash.selector);
        registry.contribute(datanetId, bytes32(0), "u");
        uint256 id = registry.contribute(datanetId, h, "u");
        vm.expectRevert(abi.encodeWithSelector(Registry.DuplicateContribution.selector, datanetId, alice, h, id));
        registry.contribute(datanetId, h, "u");
        vm.stopPrank();
        vm.assertEq(registry.contributionCount(), 1, "only one stored");
    }

    /// Two contributors who hold the same data each contribute it, each to their own credit.
    function test_identicalDataFromTwoContributorsIsTwoContributions() public {
        bytes32 h = keccak256("shared");
        vm.prank(alice);
        uint256 a = registry.contribute(datanetId, h, "u");
        vm.prank(bob);
        uint256 b = registry.contribute(datanetId, h, "u");
        vm.assertTrue(a != b, "two contributions");
        vm.assertEq(registry.contribution(a).contributor, alice, "alice's");
        vm.assertEq(registry.contribution(b).contributor, bob, "bob's");
    }

    /// A rejected contribution keeps its slot for its contributor (a curator's no is not undone by resubmitting),
    /// and does not block anyone else.
    function test_aRejectedHashStaysWithItsContributor() public {
        bytes32 h = keccak256("rejected");
        vm.prank(alice);
        uint256 id = registry.contribute(datanetId, h, "u");
        uint256[] memory ids = new uint256[](1);
        ids[0] = id;
        vm.prank(carol);
        registry.reviewContributions(datanetId, ids, false);
        vm.prank(alice);
        vm.expectRevert(abi.encodeWithSelector(Registry.DuplicateContribution.selector, datanetId, alice, h, id));
        registry.contribute(datanetId, h, "u");
        vm.prank(bob);
        uint256 other = registry.contribute(datanetId, h, "u");
        vm.assertEq(registry.contribution(other).contributor, bob, "bob may still give it");
    }

    /// A front-runner who copies a relayed `contributeWithSig`'s hash from the mempool and submits it first gets
    /// a contribution of its own; the victim's signed contribution still goes through, credited to the victim.
    function test_attack_aFrontRunContributionDoesNotBlockOrTakeTheSignersCredit() public {
        (address victim, uint256 pk) = makeKey("victim");
        bytes32 h = keccak256("victim's data");
        uint256 deadline = block.timestamp + 1 hours;
        bytes memory sig = _sign(pk, victim, datanetId, h, "ipfs://v", 0, deadline);
        vm.prank(bob); // the front-runner
        uint256 squat = registry.contribute(datanetId, h, "ipfs://squat");
        vm.prank(makeAddr("relayer"));
        uint256 id = registry.contributeWithSig(victim, datanetId, h, "ipfs://v", 0, deadline, sig);
        vm.assertEq(registry.contribution(id).contributor, victim, "the victim's");
        vm.assertEq(registry.contributionByHash(datanetId, victim, h), id, "indexed for the victim");
        vm.assertEq(registry.contributionByHash(datanetId, bob, h), squat, "the squatter has only its own");
    }

    function test_permissionedDatanet() public {
        uint256 dn = _datanet(carol, true);
        vm.prank(alice);
        vm.expectRevert(abi.encodeWithSelector(Registry.NotAllowedContributor.selector, dn, alice));
        registry.contribute(dn, keccak256("a"), "u");

        address[] memory who = new address[](1);
        who[0] = alice;
        vm.prank(bob); // not a curator
        vm.expectRevert(abi.encodeWithSelector(Registry.NotCurator.selector, dn, bob));
        registry.setContributorsAllowed(dn, who, true);

        vm.prank(carol);
        vm.expectEmit(address(registry));
        emit Registry.ContributorAllowed(dn, alice, true);
        registry.setContributorsAllowed(dn, who, true);
        vm.prank(alice);
        registry.contribute(dn, keccak256("a"), "u");

        vm.startPrank(carol);
        vm.expectRevert(Registry.EmptyBatch.selector);
        registry.setContributorsAllowed(dn, new address[](0), true);
        vm.expectRevert(Registry.ZeroAddress.selector);
        registry.setContributorsAllowed(dn, new address[](1), true);
        registry.setContributorsAllowed(dn, who, false);
        vm.stopPrank();
        vm.prank(alice);
        vm.expectRevert(abi.encodeWithSelector(Registry.NotAllowedContributor.selector, dn, alice));
        registry.contribute(dn, keccak256("b"), "u");
    }

    function testFuzz_contributeWithSig(uint256 pk, bytes32 h, uint256 deadlineOffset) public {
        pk = bound(pk, 1, 0xfffffffffffffffffffffffffffffffebaaedce6af48a03bbfd25e8cd0364140);
        vm.assume(h != bytes32(0));
        uint256 deadline = block.timestamp + bound(deadlineOffset, 0, 30 days);
        address contributor = vm.addr(pk);
        bytes memory sig = _sign(pk, contributor, datanetId, h, "ipfs://sig", 0, deadline);

        vm.expectEmit(address(registry));
        emit Registry.ContributionSubmitted(1, datanetId, contributor, h, "ipfs://sig", bob);
        vm.prank(bob); // the relayer
        uint256 id = registry.contributeWithSig(contributor, datanetId, h, "ipfs://sig", 0, deadline, sig);
        vm.assertEq(registry.contribution(id).contributor, contributor, "credited to the signer");
        vm.assertEq(registry.nonces(contributor), 1, "nonce used");

        // replay of the same signature: the nonce is spent
        vm.prank(bob);
        vm.expectRevert(abi.encodeWithSelector(Nonces.InvalidAccountNonce.selector, contributor, 1));
        registry.contributeWithSig(contributor, datanetId, h, "ipfs://sig", 0, deadline, sig);
    }

    function testFuzz_contributeWithSig_rejectsTampering(uint256 pk, bytes32 h, uint8 field) public {
        pk = bound(pk, 1, 1e30);
        vm.assume(h != bytes32(0) && h != keccak256("other"));
        address contributor = vm.addr(pk);
        uint256 deadline = block.timestamp + 1 hours;
        bytes memory sig = _sign(pk, contributor, datanetId, h, "ipfs://sig", 0, deadline);
        field = uint8(bound(field, 0, 3));
        // change exactly one signed field
        bytes32 h2 = field == 0 ? keccak256("other") : h;
        string memory uri2 = field == 1 ? "ipfs://evil" : "ipfs://sig";
        uint256 deadline2 = field == 2 ? deadline + 1 : deadline;
        address contributor2 = field == 3 ? bob : contributor;
        vm.expectRevert(abi.encodeWithSelector(Registry.InvalidSignature.selector, contributor2));
        registry.contributeWithSig(contributor2, datanetId, h2, uri2, 0, deadline2, sig);
        vm.assertEq(registry.contributionCount(), 0, "nothing stored");
    }

    function test_contributeWithSig_expiredAndWrongNonce() public {
        (address signer, uint256 pk) = makeKey("signer");
        bytes32 h = keccak256("late");
        uint256 deadline = block.timestamp + 10;
        bytes memory sig = _sign(pk, signer, datanetId, h, "u", 0, deadline);
        vm.warp(deadline + 1);
        vm.expectRevert(abi.encodeWithSelector(Registry.ExpiredSignature.selector, deadline));
        registry.contributeWithSig(signer, datanetId, h, "u", 0, deadline, sig);

        vm.warp(deadline);
        vm.expectRevert(abi.encodeWithSelector(Nonces.InvalidAccountNonce.selector, signer, 0));
        registry.contributeWithSig(signer, datanetId, h, "u", 5, deadline, sig);
        // still usable at the deadline itself
        registry.contributeWithSig(signer, datanetId, h, "u", 0, deadline, sig);
    }

    function test_contributeWithSig_erc1271Wallet() public {
        Wallet1271 w = new Wallet1271();
        bytes32 h = keccak256("from a contract wallet");
        uint256 deadline = block.timestamp + 1 days;
        w.approve(_digest(address(w), datanetId, h, "u", 0, deadline));
        uint256 id = registry.contributeWithSig(address(w), datanetId, h, "u", 0, deadline, "");
        vm.assertEq(registry.contribution(id).contributor, address(w), "wallet credited");
    }

    // ---------------------------------------------------------------- review and versions

    function _three() internal returns (uint256[] memory ids) {
        ids = new uint256[](3);
        vm.startPrank(alice);
        for (uint256 i; i < 3; ++i) {
            ids[i] = registry.contribute(datanetId, keccak256(abi.encode(i)), "u");
        }
        vm.stopPrank();
    }

    function test_review_batchAcceptAndReject() public {
        uint256[] memory ids = _three();
        vm.prank(carol);
        registry.setCurator(datanetId, bob, true);
        uint256[] memory two = new uint256[](2);
        two[0] = ids[0];
        two[1] = ids[2];
        vm.expectEmit(address(registry));
        emit Registry.ContributionReviewed(ids[0], datanetId, bob, true);
        vm.expectEmit(address(registry));
        emit Registry.ContributionReviewed(ids[2], datanetId, bob, true);
        vm.prank(bob);
        registry.reviewContributions(datanetId, two, true);
        vm.prank(carol);
        registry.reviewContributions(datanetId, _ids(ids[1]), false);

        vm.assertEq(uint256(registry.contribution(ids[0]).status), uint256(Registry.ContributionStatus.Accepted), "0");
        vm.assertEq(uint256(registry.contribution(ids[1]).status), uint256(Registry.ContributionStatus.Rejected), "1");
        vm.assertEq(uint256(registry.datanet(datanetId).acceptedCount), 2, "accepted count");

        vm.prank(carol);
        vm.expectRevert(
            abi.encodeWithSelector(
                Registry.ContributionAlreadyReviewed.selector, ids[1], Registry.ContributionStatus.Rejected
            )
        );
        registry.reviewContributions(datanetId, _ids(ids[1]), true);
    }

    function test_review_reverts() public {
        uint256[] memory ids = _three();
        vm.prank(bob);
        vm.expectRevert(abi.encodeWithSelector(Registry.NotCurator.selector, datanetId, bob));
        registry.reviewContributions(datanetId, ids, true);

        vm.startPrank(carol);
        vm.expectRevert(Registry.EmptyBatch.selector);
        registry.reviewContributions(datanetId, new uint256[](0), true);
        vm.expectRevert(abi.encodeWithSelector(Registry.UnknownContribution.selector, 77));
        registry.reviewContributions(datanetId, _ids(77), true);
        vm.stopPrank();

        uint256 other = _datanet(carol, false);
        vm.prank(carol);
        vm.expectRevert(abi.encodeWithSelector(Registry.ContributionNotInDatanet.selector, ids[0], other));
        registry.reviewContributions(other, _ids(ids[0]), true);

        // a bad id late in the batch undoes the whole batch
        uint256[] memory mixed = new uint256[](2);
        mixed[0] = ids[0];
        mixed[1] = 99;
        vm.prank(carol);
        vm.expectRevert(abi.encodeWithSelector(Registry.UnknownContribution.selector, 99));
        registry.reviewContributions(datanetId, mixed, true);
        vm.assertEq(uint256(registry.contribution(ids[0]).status), uint256(Registry.ContributionStatus.Pending), "kept");
    }

    function test_publishVersion() public {
        uint256[] memory ids = _three();
        vm.startPrank(carol);
        vm.expectRevert(abi.encodeWithSelector(Registry.InvalidVersionCount.selector, 1, 0));
        registry.publishVersion(datanetId, keccak256("r"), 1, "ipfs://v");
        registry.reviewContributions(datanetId, ids, true);
        vm.expectRevert(Registry.ZeroHash.selector);
        registry.publishVersion(datanetId, bytes32(0), 1, "ipfs://v");
        vm.expectRevert(abi.encodeWithSelector(Registry.InvalidVersionCount.selector, 4, 3));
        registry.publishVersion(datanetId, keccak256("r"), 4, "ipfs://v");
        vm.expectRevert(abi.encodeWithSelector(Registry.InvalidVersionCount.selector, 0, 3));
        registry.publishVersion(datanetId, keccak256("r"), 0, "ipfs://v");

        vm.expectEmit(address(registry));
        emit Registry.DatanetVersionPublished(datanetId, 1, keccak256("r1"), 2, "ipfs://v1");
        uint64 v1 = registry.publishVersion(datanetId, keccak256("r1"), 2, "ipfs://v1");
        uint64 v2 = registry.publishVersion(datanetId, keccak256("r2"), 3, "ipfs://v2");
        vm.stopPrank();
        vm.assertEq(uint256(v1), 1, "v1");
        vm.assertEq(uint256(v2), 2, "v2");
        vm.assertEq(registry.versionRoot(datanetId, 2), keccak256("r2"), "root");

        vm.prank(bob);
        vm.expectRevert(abi.encodeWithSelector(Registry.NotDatanetOwner.selector, datanetId, bob));
        registry.publishVersion(datanetId, keccak256("r3"), 3, "ipfs://v3");
    }

    // ---------------------------------------------------------------- models, adapters, agents

    function _spec(uint256 dn, uint64 v) internal pure returns (Registry.ModelSpec memory s) {
        uint256[] memory dns = new uint256[](1);
        dns[0] = dn;
        uint64[] memory vs = new uint64[](1);
        vs[0] = v;
        s = Registry.ModelSpec({
            baseModel: "SmolLM2-135M-Instruct",
            baseModelHash: keccak256("gguf"),
            datanetIds: dns,
            datanetVersions: vs,
            trainingConfigHash: keccak256("cfg"),
            metadataURI: "ipfs://m"
        });
    }

    function test_registerModel() public {
        (uint256 modelId, uint256 dn) = _model(bob);
        vm.assertEq(registry.modelDeveloper(modelId), bob, "developer");
        vm.assertEq(registry.model(modelId).developer, bob, "model view");

        Registry.ModelSpec memory s = _spec(dn, 1);
        bytes32[] memory roots = new bytes32[](1);
        roots[0] = keccak256("v1");
        vm.expectEmit(address(registry));
        emit Registry.ModelRegistered(
            modelId + 1,
            alice,
            s.baseModel,
            s.baseModelHash,
            s.datanetIds,
            s.datanetVersions,
            roots,
            s.trainingConfigHash,
            "ipfs://m"
        );
        vm.prank(alice);
        registry.registerModel(s);
    }

    function test_registerModel_reverts() public {
        Registry.ModelSpec memory s = _spec(datanetId, 1);
        vm.expectRevert(abi.encodeWithSelector(Registry.UnknownDatanetVersion.selector, datanetId, 1));
        registry.registerModel(s);

        s.datanetVersions = new uint64[](2);
        vm.expectRevert(abi.encodeWithSelector(Registry.LengthMismatch.selector, 1, 2));
        registry.registerModel(s);

        s = _spec(datanetId, 1);
        s.baseModel = "";
        vm.expectRevert(Registry.EmptyURI.selector);
        registry.registerModel(s);

        s = _spec(datanetId, 1);
        s.trainingConfigHash = bytes32(0);
        vm.expectRevert(Registry.ZeroHash.selector);
        registry.registerModel(s);
        vm.assertEq(registry.modelCount(), 0, "nothing registered");
    }

    function test_transferModel() public {
        (uint256 modelId,) = _model(bob);
        vm.prank(alice);
        vm.expectRevert(abi.encodeWithSelector(Registry.NotModelDeveloper.selector, modelId, alice));
        registry.transferModel(modelId, alice);
        vm.prank(bob);
        vm.expectRevert(Registry.ZeroAddress.selector);
        registry.transferModel(modelId, address(0));
        vm.expectEmit(address(registry));
        emit Registry.ModelDeveloperTransferred(modelId, bob, alice);
        vm.prank(bob);
        registry.transferModel(modelId, alice);
        vm.assertEq(registry.modelDeveloper(modelId), alice, "new developer");
        vm.expectRevert(abi.encodeWithSelector(Registry.UnknownModel.selector, 9));
        registry.transferModel(9, alice);
    }

    function test_publishAdapter_versions() public {
        (uint256 modelId,) = _model(bob);
        vm.startPrank(bob);
        vm.expectEmit(address(registry));
        emit Registry.AdapterPublished(1, modelId, 1, keccak256("w1"), "ipfs://w1");
        (uint256 a1, uint64 v1) = registry.publishAdapter(modelId, keccak256("w1"), "ipfs://w1");
        (uint256 a2, uint64 v2) = registry.publishAdapter(modelId, keccak256("w2"), "ipfs://w2");
        vm.expectRevert(Registry.ZeroHash.selector);
        registry.publishAdapter(modelId, bytes32(0), "ipfs://w");
        vm.expectRevert(Registry.EmptyURI.selector);
        registry.publishAdapter(modelId, keccak256("w3"), "");
        vm.stopPrank();
        vm.assertEq(a1, 1, "a1");
        vm.assertEq(a2, 2, "a2");
        vm.assertEq(uint256(v1), 1, "v1");
        vm.assertEq(uint256(v2), 2, "v2");
        Registry.Adapter memory a = registry.adapter(a2);
        vm.assertEq(uint256(a.modelId), modelId, "model");
        vm.assertEq(a.contentHash, keccak256("w2"), "hash");
        vm.prank(alice);
        vm.expectRevert(abi.encodeWithSelector(Registry.NotModelDeveloper.selector, modelId, alice));
        registry.publishAdapter(modelId, keccak256("w9"), "ipfs://w9");
    }

    function test_agents() public {
        (uint256 modelId,) = _model(bob);
        vm.expectRevert(abi.encodeWithSelector(Registry.UnknownModel.selector, 5));
        registry.registerAgent(5, alice, "ipfs://agent");
        vm.expectRevert(Registry.ZeroAddress.selector);
        registry.registerAgent(modelId, address(0), "ipfs://agent");

        vm.expectEmit(address(registry));
        emit Registry.AgentRegistered(1, modelId, carol, alice, "ipfs://agent");
        vm.prank(carol);
        uint256 agentId = registry.registerAgent(modelId, alice, "ipfs://agent");
        vm.assertEq(registry.agentOperator(agentId), alice, "operator");
        Registry.Agent memory a = registry.agent(agentId);
        vm.assertEq(a.owner, carol, "owner");
        vm.assertEq(uint256(a.modelId), modelId, "model");

        vm.prank(alice);
        vm.expectRevert(abi.encodeWithSelector(Registry.NotAgentOwner.selector, agentId, alice));
        registry.setAgentOperator(agentId, alice);
        vm.prank(carol);
        vm.expectRevert(Registry.ZeroAddress.selector);
        registry.setAgentOperator(agentId, address(0));
        vm.expectRevert(abi.encodeWithSelector(Registry.UnknownAgent.selector, 8));
        registry.setAgentOperator(8, alice);
        vm.expectEmit(address(registry));
        emit Registry.AgentOperatorChanged(agentId, alice, bob);
        vm.prank(carol);
        registry.setAgentOperator(agentId, bob);
        vm.assertEq(registry.agentOperator(agentId), bob, "new operator");
    }

    // ---------------------------------------------------------------- governance

    function test_governanceSetters() public {
        vm.expectRevert(
            abi.encodeWithSelector(IAccessControl.AccessControlUnauthorizedAccount.selector, alice, bytes32(0))
        );
        vm.prank(alice);
        registry.setDatanetFee(1);
        vm.expectRevert(
            abi.encodeWithSelector(IAccessControl.AccessControlUnauthorizedAccount.selector, alice, bytes32(0))
        );
        vm.prank(alice);
        registry.setTreasury(alice);

        vm.startPrank(address(timelock));
        vm.expectEmit(address(registry));
        emit Registry.DatanetFeeSet(10 ether, 5 ether);
        registry.setDatanetFee(5 ether);
        vm.expectRevert(Registry.ZeroAddress.selector);
        registry.setTreasury(address(0));
        vm.expectEmit(address(registry));
        emit Registry.TreasurySet(address(timelock), bob);
        registry.setTreasury(bob);
        vm.stopPrank();
        vm.assertEq(registry.datanetFee(), 5 ether, "fee");
        vm.assertEq(registry.treasury(), bob, "treasury");
    }

    function test_constructorRejectsZeroAddresses() public {
        vm.expectRevert(Registry.ZeroAddress.selector);
        new Registry(token, address(0), alice, 0);
        vm.expectRevert(Registry.ZeroAddress.selector);
        new Registry(token, alice, address(0), 0);
    }
}

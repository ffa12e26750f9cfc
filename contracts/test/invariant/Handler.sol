// SPDX-License-Identifier: Apache-2.0
pragma solidity 0.8.30;

import {FeeRouter} from "../../src/FeeRouter.sol";
import {OpenToken} from "../../src/OpenToken.sol";
import {Registry} from "../../src/Registry.sol";
import {RewardDistributor} from "../../src/RewardDistributor.sol";
import {Staking} from "../../src/Staking.sol";
import {MerkleBuilder} from "../utils/MerkleBuilder.sol";
import {vm} from "../utils/Vm.sol";

/// @notice Drives the suite with random but well-formed actions and keeps ghost books the invariants compare
/// against the contracts. Actions that should fail are attempted too (replays); if one succeeds it is counted.
contract Handler {
    uint256 internal constant ACTORS = 4;

    OpenToken public immutable token;
    Registry public immutable registry;
    Staking public immutable staking;
    FeeRouter public immutable feeRouter;
    RewardDistributor public immutable distributor;
    address public immutable timelock;
    address public immutable settler;
    uint256 public immutable modelId;
    uint256 public immutable datanetId;
    uint256[] internal _agents; // agent i is run by actor i

    address[ACTORS] public actors;
    uint256[ACTORS] internal _keys;

    // ---- ghost books ----
    uint256 public ghostBurned;
    uint256 public ghostFeesPaid;
    uint256 public ghostFeePartsSum;
    uint256 public ghostPoolFunded;
    uint256 public ghostStakeDeposited;
    uint256 public ghostStakeWithdrawn;
    uint256 public ghostStakeSlashed;
    uint256 public replaySucceeded;
    uint256 public claimedDecreased;
    uint256 public payments;
    uint256 public claims;
    uint256 public settlements;

    // paid requests, for replay attempts
    address[] internal _payers;
    bytes32[] internal _requestIds;

    // used contribution signatures, for replay attempts
    struct SignedContribution {
        address contributor;
        bytes32 contentHash;
        uint256 nonce;
        uint256 deadline;
        bytes signature;
    }

    SignedContribution[] internal _signed;
    uint256 internal _contentNonce;

    // the accepted cumulative allocation, per actor
    uint256[ACTORS] public cumulative;
    uint256[ACTORS] internal _pendingCumulative;
    bytes32[] internal _tree;
    bytes32[] internal _pendingTree;
    /// @notice Roots proposed, superseded, revoked, and proposed with leaves above their total.
    uint256 public proposals;
    uint256 public superseded;
    uint256 public revocations;
    uint256 public dishonest;
    /// @notice Disputes opened, the bond they hold now, and acceptances of a disputed root (must stay 0).
    uint256 public disputes;
    uint256 public ghostBondHeld;
    uint256 public acceptedWhileDisputed;
    /// @notice The largest `totalClaimed - currentRoot().total` ever seen after a claim (must stay 0).
    uint256 public claimedPastTotal;
    uint256[ACTORS] public lastClaimed;
    uint64 internal _epoch;

    constructor(
        OpenToken token_,
        Registry registry_,
        Staking staking_,
        FeeRouter feeRouter_,
        RewardDistributor distributor_,
        address timelock_,
        address settler_,
        uint256 modelId_,
        uint256 datanetId_
    ) {
        token = token_;
        registry = registry_;
        staking = staking_;
        feeRouter = feeRouter_;
        distributor = distributor_;
        timelock = timelock_;
        settler = settler_;
        modelId = modelId_;
        datanetId = datanetId_;
        for (uint256 i; i < ACTORS; ++i) {
            _keys[i] = uint256(keccak256(abi.encode("actor", i)));
            actors[i] = vm.addr(_keys[i]);
        }
    }

    /// @dev Agent i must be operated by actor i.
    function setAgents(uint256[] calldata agents_) external {
        require(_agents.length == 0, "agents already set");
        _agents = agents_;
    }

    function _actor(uint256 seed) internal view returns (uint256 i, address a) {
        i = seed % ACTORS;
        a = actors[i];
    }

    function _bound(uint256 x, uint256 min, uint256 max) internal pure returns (uint256) {
        return max <= min ? min : min + (x % (max - min + 1));
    }

    // ------------------------------------------------------------------ fees

    function payInference(uint256 actorSeed, uint256 amount, bytes32 requestId) external {
        (, address payer) = _actor(actorSeed);
        uint256 bal = token.balanceOf(payer);
        if (bal == 0 || feeRouter.paid(payer, requestId)) return;
        amount = _bound(amount, 1, bal < 1_000 ether ? bal : 1_000 ether);
        uint256 supply = token.totalSupply();
        address dev = registry.modelDeveloper(modelId);
        uint256 devBal = token.balanceOf(dev);
        uint256 trBal = token.balanceOf(feeRouter.treasury());
        uint256 poolBal = token.balanceOf(address(distributor));
        vm.prank(payer);
        feeRouter.payInference(modelId, requestId, amount);
        uint256 burned = supply - token.totalSupply();
        ghostBurned += burned;
        ghostFeesPaid += amount;
        uint256 poolPart = token.balanceOf(address(distributor)) - poolBal;
        ghostPoolFunded += poolPart;
        ghostFeePartsSum += burned + (token.balanceOf(dev) - devBal) + (token.balanceOf(feeRouter.treasury()) - trBal)
            + poolPart;
        _payers.push(payer);
        _requestIds.push(requestId);
        ++payments;
    }

    function replayPayment(uint256 idx) external {
        if (_payers.length == 0) return;
        idx %= _payers.length;
        vm.prank(_payers[idx]);
        try feeRouter.payInference(modelId, _requestIds[idx], 1) {
            ++replaySucceeded;
        } catch {}
    }

    function setSplit(uint16 b, uint16 d, uint16 t) external {
        b = uint16(_bound(b, 0, 10_000));
        d = uint16(_bound(d, 0, 10_000 - b));
        t = uint16(_bound(t, 0, 10_000 - b - d));
        vm.prank(timelock);
        feeRouter.setSplit(FeeRouter.Split(b, d, t, 10_000 - b - d - t));
    }

    function burn(uint256 actorSeed, uint256 amount) external {
        (, address a) = _actor(actorSeed);
        uint256 bal = token.balanceOf(a);
        if (bal == 0) return;
        amount = _bound(amount, 1, bal);
        vm.prank(a);
        token.burn(amount);
        ghostBurned += amount;
    }

    function fundPool(uint256 actorSeed, uint256 amount) external {
        (, address a) = _actor(actorSeed);
        uint256 bal = token.balanceOf(a);
        if (bal == 0) return;
        amount = _bound(amount, 1, bal);
        vm.prank(a);
        require(token.transfer(address(distributor), amount), "transfer");
        ghostPoolFunded += amount;
    }

    // ------------------------------------------------------------------ staking

    function stake(uint256 actorSeed, uint256 amount) external {
        (uint256 i, address a) = _actor(actorSeed);
        uint256 bal = token.balanceOf(a);
        if (bal == 0) return;
        amount = _bound(amount, 1, bal);
        vm.startPrank(a);
        token.approve(address(staking), amount);
        staking.stake(_agents[i], amount);
        vm.stopPrank();
        ghostStakeDeposited += amount;
    }

    function unstake(uint256 actorSeed, uint256 amount) external {
        (uint256 i, address a) = _actor(actorSeed);
        uint256 staked = staking.position(_agents[i], a).staked;
        if (staked == 0) return;
        // a third of the time unstake everything, so slashes also reach the unbonding bucket
        amount = amount % 3 == 0 ? staked : _bound(amount, 1, staked);
        vm.prank(a);
        staking.unstake(_agents[i], amount);
    }

    function withdraw(uint256 actorSeed) external {
        (uint256 i, address a) = _actor(actorSeed);
        Staking.Position memory p = staking.position(_agents[i], a);
        if (p.unbonding == 0) return;
        if (block.timestamp < p.releaseAt) vm.warp(p.releaseAt);
        vm.prank(a);
        staking.withdraw(_agents[i]);
        ghostStakeWithdrawn += p.unbonding;
    }

    function slash(uint256 actorSeed, uint256 amount, bytes32 incident) external {
        (uint256 i, address a) = _actor(actorSeed);
        Staking.Position memory p = staking.position(_agents[i], a);
        // what the contract lets one window take: released unbonding stake is out of reach
        uint256 slashable = block.timestamp < p.releaseAt ? uint256(p.staked) + p.unbonding : p.staked;
        Staking.SlashWindow memory w = staking.slashWindow(_agents[i], a);
        uint256 cap = block.timestamp >= w.endsAt ? slashable * staking.maxSlashBps() / 10_000 : w.cap - w.slashed;
        if (cap > slashable) cap = slashable;
        if (cap == 0 || staking.incidentSlashed(incident, _agents[i], a)) return;
        amount = _bound(amount, 1, cap);
        uint256 supply = token.totalSupply();
        vm.prank(timelock);
        staking.slash(_agents[i], a, amount, incident);
        ghostStakeSlashed += amount;
        ghostBurned += supply - token.totalSupply();
    }

    function setMaxSlashBps(uint16 bps) external {
        vm.prank(timelock);
        staking.setMaxSlashBps(uint16(_bound(bps, 1, 10_000)));
    }

    // ------------------------------------------------------------------ contributions

    function contributeWithSig(uint256 actorSeed) external {
        (uint256 i, address a) = _actor(actorSeed);
        bytes32 h = keccak256(abi.encode("content", ++_contentNonce));
        uint256 nonce = registry.nonces(a);
        uint256 deadline = block.timestamp + 1 days;
        bytes32 structHash = keccak256(
            abi.encode(registry.CONTRIBUTE_TYPEHASH(), a, datanetId, h, keccak256(bytes("ipfs://c")), nonce, deadline)
        );
        bytes32 digest = keccak256(abi.encodePacked("\x19\x01", registry.DOMAIN_SEPARATOR(), structHash));
        (uint8 v, bytes32 r, bytes32 s) = vm.sign(_keys[i], digest);
        bytes memory sig = abi.encodePacked(r, s, v);
        registry.contributeWithSig(a, datanetId, h, "ipfs://c", nonce, deadline, sig);
        _signed.push(
            SignedContribution({contributor: a, contentHash: h, nonce: nonce, deadline: deadline, signature: sig})
        );
    }

    function replayContribution(uint256 idx, bool freshHash) external {
        if (_signed.length == 0) return;
        SignedContribution memory c = _signed[idx % _signed.length];
        // with a fresh content hash the duplicate check cannot be what stops it: only the nonce/signature can
        bytes32 h = freshHash ? keccak256(abi.encode("replay", idx, ++_contentNonce)) : c.contentHash;
        if (c.deadline < block.timestamp) return;
        try registry.contributeWithSig(c.contributor, datanetId, h, "ipfs://c", c.nonce, c.deadline, c.signature) {
            ++replaySucceeded;
        } catch {}
    }

    // ------------------------------------------------------------------ rewards

    /// @dev Propose an epoch: raise each actor's cumulative amount by what the pool can cover. A root still
    /// pending is superseded (the settler proposing again before the challenge delay ends).
    function propose(uint256 seed) external {
        if (_disputed()) return; // a disputed root cannot be superseded (test_attack_aDisputedWrongRoot...)
        uint256 available = token.balanceOf(address(distributor)) + distributor.totalClaimed();
        uint256 promised;
        for (uint256 i; i < ACTORS; ++i) {
            promised += cumulative[i];
        }
        if (available <= promised) return;
        uint256 room = available - promised;
        bytes32[] memory leaves = new bytes32[](ACTORS);
        uint256 total;
        for (uint256 i; i < ACTORS; ++i) {
            uint256 add = _bound(uint256(keccak256(abi.encode(seed, i))), 0, room / ACTORS);
            _pendingCumulative[i] = cumulative[i] + add;
            total += _pendingCumulative[i];
            leaves[i] = MerkleBuilder.leaf(actors[i], _pendingCumulative[i]);
        }
        _proposeTree(leaves, total);
    }

    /// @dev A dishonest settler: leaves promising up to everything the pool holds under a `total` that only
    /// covers what was promised before. Claims must stop at the total.
    function proposeDishonest(uint256 seed) external {
        if (_disputed()) return;
        uint256 available = token.balanceOf(address(distributor)) + distributor.totalClaimed();
        uint256 total = distributor.currentRoot().total;
        bytes32[] memory leaves = new bytes32[](ACTORS);
        for (uint256 i; i < ACTORS; ++i) {
            uint256 extra = _bound(uint256(keccak256(abi.encode(seed, i, "x"))), 0, available);
            _pendingCumulative[i] = cumulative[i] + extra;
            leaves[i] = MerkleBuilder.leaf(actors[i], _pendingCumulative[i]);
        }
        if (total == 0) return; // the first root must have room for its total; nothing to lie about yet
        _proposeTree(leaves, total);
        ++dishonest;
    }

    function _proposeTree(bytes32[] memory leaves, uint256 total) internal {
        bytes32[] memory tree = MerkleBuilder.build(leaves);
        if (distributor.pendingRoot().root != bytes32(0)) ++superseded;
        ++_epoch;
        vm.prank(settler);
        distributor.proposeRoot(_epoch, tree[0], total, "ipfs://tree");
        _pendingTree = tree;
        ++proposals;
    }

    /// @dev Accept the pending root once its challenge delay is over (claims go on meanwhile).
    function accept() external {
        RewardDistributor.Root memory p = distributor.pendingRoot();
        if (p.root == bytes32(0)) return;
        if (block.timestamp < p.validAt) vm.warp(p.validAt);
        if (_disputed()) {
            try distributor.acceptRoot() {
                ++acceptedWhileDisputed;
            } catch {}
            return;
        }
        distributor.acceptRoot();
        _tree = _pendingTree;
        for (uint256 i; i < ACTORS; ++i) {
            cumulative[i] = _pendingCumulative[i];
        }
        ++settlements;
    }

    /// @dev Governance revokes the pending root, naming it.
    function revoke() external {
        RewardDistributor.Root memory p = distributor.pendingRoot();
        if (p.root == bytes32(0)) return;
        uint256 bond = distributor.pendingDispute().bond;
        vm.prank(timelock);
        distributor.revokeRoot(p.epoch, p.root);
        ghostBondHeld -= bond; // a revocation upholds an open dispute: the bond goes back
        ++revocations;
    }

    /// @dev Someone disputes the pending root during its challenge delay, posting the bond.
    function dispute(uint256 actorSeed) external {
        RewardDistributor.Root memory p = distributor.pendingRoot();
        if (p.root == bytes32(0) || block.timestamp >= p.validAt || _disputed()) return;
        (, address a) = _actor(actorSeed);
        uint256 bond = distributor.disputeBond();
        if (token.balanceOf(a) < bond) return;
        vm.prank(a);
        token.approve(address(distributor), bond);
        vm.prank(a);
        distributor.dispute(p.epoch, p.root, "handler");
        ghostBondHeld += bond;
        ++disputes;
    }

    /// @dev Governance decides the open dispute: upheld revokes the root and repays the bond; rejected gives the
    /// bond to the pool.
    function resolve(bool upheld) external {
        RewardDistributor.Dispute memory d = distributor.pendingDispute();
        if (d.disputer == address(0)) return;
        RewardDistributor.Root memory p = distributor.pendingRoot();
        vm.prank(timelock);
        distributor.resolveDispute(p.epoch, p.root, upheld);
        ghostBondHeld -= d.bond;
        if (upheld) {
            ++revocations;
        } else {
            ghostPoolFunded += d.bond;
        }
    }

    /// @dev Governance changes the challenge delay (applies to later proposals) or the dispute bond (later
    /// disputes) at any moment: a pending root keeps its `validAt`, an open dispute its bond.
    function setChallengeDelay(uint64 delay) external {
        vm.prank(timelock);
        distributor.setChallengeDelay(uint64(_bound(delay, 0, 30 days)));
    }

    function setDisputeBond(uint96 bond) external {
        vm.prank(timelock);
        distributor.setDisputeBond(uint96(_bound(bond, 0, 1000 ether)));
    }

    function _disputed() internal view returns (bool) {
        return distributor.pendingDispute().disputer != address(0);
    }

    function claim(uint256 actorSeed) external {
        (uint256 i, address a) = _actor(actorSeed);
        if (_tree.length == 0 || cumulative[i] <= distributor.claimed(a)) return;
        bytes32[] memory proof = MerkleBuilder.proof(_tree, MerkleBuilder.leaf(a, cumulative[i]));
        try distributor.claim(a, cumulative[i], proof) {}
        catch {
            return; // a dishonest root's leaf past its total
        }
        uint256 paid = distributor.totalClaimed();
        uint256 total = distributor.currentRoot().total;
        if (paid > total && paid - total > claimedPastTotal) claimedPastTotal = paid - total;
        uint256 now_ = distributor.claimed(a);
        if (now_ < lastClaimed[i]) ++claimedDecreased;
        lastClaimed[i] = now_;
        ++claims;
    }

    /// @dev Claiming more than the leaf says must never work, whatever proof is offered.
    function overclaim(uint256 actorSeed, uint256 extra) external {
        (uint256 i, address a) = _actor(actorSeed);
        if (_tree.length == 0) return;
        uint256 amount = cumulative[i] + _bound(extra, 1, 1e24);
        bytes32[] memory proof = MerkleBuilder.proof(_tree, MerkleBuilder.leaf(a, cumulative[i]));
        try distributor.claim(a, amount, proof) {
            ++replaySucceeded;
        } catch {}
    }

    function agentOf(uint256 i) external view returns (uint256) {
        return _agents[i];
    }

    function actorCount() external pure returns (uint256) {
        return ACTORS;
    }
}

// SPDX-License-Identifier: Apache-2.0
pragma solidity 0.8.30;

import {AccessControl} from "@openzeppelin/contracts/access/AccessControl.sol";
import {IERC20} from "@openzeppelin/contracts/token/ERC20/IERC20.sol";
import {SafeERC20} from "@openzeppelin/contracts/token/ERC20/utils/SafeERC20.sol";
import {MerkleProof} from "@openzeppelin/contracts/utils/cryptography/MerkleProof.sol";
import {ReentrancyGuardTransient} from "@openzeppelin/contracts/utils/ReentrancyGuardTransient.sol";

/// @title OpenLedger reward distributor (the data-contributor pool)
/// @notice Holds the contributor share of inference fees and pays it out against cumulative Merkle roots.
/// Each epoch the settler proposes a root of a tree whose leaves are the OpenZeppelin StandardMerkleTree
/// leaves of `(address account, uint256 cumulativeAmount)`: everything `account` has earned since genesis.
/// A proposed root becomes claimable after `challengeDelay`, during which a REVOKER can revoke it and anyone can
/// dispute it by posting a bond in OPEN (`dispute`): a disputed root cannot be accepted nor superseded until the
/// REVOKER resolves the dispute (`resolveDispute`): upheld, the root is revoked and the bond goes back to the
/// disputer; rejected, the bond joins the contributor pool and the root may be accepted once its delay is over.
/// A claim pays `cumulativeAmount - claimed[account]`.
/// @dev Proposing is O(1) whatever the number of contributors. A root may never promise more than the pool
/// holds: `total - totalClaimed <= balance`, checked at proposal, and claims never add up to more than the
/// accepted root's `total` (checked at each claim). `total` is the settler's word (summing the tree on-chain
/// would not be O(1)); the challenge delay is there to catch a settler that lies about it.
contract RewardDistributor is AccessControl, ReentrancyGuardTransient {
    using SafeERC20 for IERC20;

    bytes32 public constant SETTLER_ROLE = keccak256("SETTLER_ROLE");
    bytes32 public constant REVOKER_ROLE = keccak256("REVOKER_ROLE");
    /// @notice Upper bound governance may set for the challenge delay.
    uint64 public constant MAX_CHALLENGE_DELAY = 30 days;

    /// @notice A root and what it promises in total (sum of all cumulative amounts in the tree).
    struct Root {
        bytes32 root;
        uint64 epoch;
        uint64 validAt;
        uint128 total;
    }

    /// @notice The open dispute of the pending root, if any; the bond is held apart from the pool.
    struct Dispute {
        address disputer;
        uint96 bond;
    }

    /// @dev What a claim touches, packed so a claim reads two slots and rewrites one. `unclaimed` is the accepted
    /// root's total less every claim so far (`totalClaimed() = total - unclaimed`): a claim checks it against
    /// the cap and lowers it in the slot it already reads. `epoch` is nonzero once a root is accepted, so a claim
    /// never writes the slot from zero to nonzero.
    struct ClaimState {
        uint64 epoch;
        uint64 validAt;
        uint128 unclaimed;
    }

    IERC20 public immutable open;

    bytes32 internal _currentRoot;
    ClaimState internal _claimState;
    uint128 internal _currentTotal;
    /// @notice The highest epoch ever proposed (accepted, pending or revoked): a revoked epoch is never reused.
    uint64 public latestEpoch;
    /// @notice Seconds between a proposal and the moment it can be accepted.
    uint64 public challengeDelay;
    Root internal _pending;
    /// @notice What each account has been paid so far (its cumulative amount at its last claim).
    mapping(address account => uint256) public claimed;
    /// @notice OPEN a disputer posts to dispute a pending root (lost if the dispute is rejected).
    uint96 public disputeBond;
    Dispute internal _dispute;

    event RootProposed(
        uint64 indexed epoch, bytes32 indexed root, uint256 total, uint64 validAt, string uri, address settler
    );
    event RootSuperseded(uint64 indexed epoch, bytes32 indexed root, uint64 byEpoch);
    event RootAccepted(uint64 indexed epoch, bytes32 indexed root, uint256 total);
    event RootRevoked(uint64 indexed epoch, bytes32 indexed root, address revoker);
    event Claimed(
        address indexed account, uint64 indexed epoch, uint256 cumulativeAmount, uint256 amount, address caller
    );
    event ChallengeDelaySet(uint64 previousDelay, uint64 newDelay);
    event RootDisputed(
        uint64 indexed epoch, bytes32 indexed root, address indexed disputer, uint256 bond, string reason
    );
    event DisputeResolved(
        uint64 indexed epoch, bytes32 indexed root, address indexed disputer, bool upheld, uint256 bond, address revoker
    );
    event DisputeBondSet(uint256 previousBond, uint256 newBond);

    error ZeroAddress();
    error ZeroRoot();
    error EpochNotIncreasing(uint64 epoch, uint64 latest);
    error TotalDecreased(uint256 total, uint256 previousTotal);
    error InsufficientPool(uint256 owed, uint256 balance);
    error NoPendingRoot();
    error ChallengePeriodActive(uint64 validAt);
    error NoAcceptedRoot();
    error InvalidProof(address account, uint256 cumulativeAmount);
    error NothingToClaim(address account, uint256 cumulativeAmount, uint256 alreadyClaimed);
    error ChallengeDelayTooLong(uint64 delay, uint64 max);
    error TotalTooLarge(uint256 total);
    error NotPending(uint64 epoch, bytes32 root);
    error ClaimExceedsTotal(uint256 amount, uint256 unclaimed);
    error Disputed(uint64 epoch, bytes32 root, address disputer);
    error NotDisputed(uint64 epoch, bytes32 root);
    error ChallengePeriodOver(uint64 validAt);

    /// @param open_ the OPEN token
    /// @param admin DEFAULT_ADMIN_ROLE holder (the timelock in production); also gets REVOKER_ROLE
    /// @param challengeDelay_ seconds a proposed root waits before it can be accepted
    /// @param disputeBond_ OPEN a dispute must post (see `dispute`)
    constructor(IERC20 open_, address admin, uint64 challengeDelay_, uint96 disputeBond_) {
        if (address(open_) == address(0) || admin == address(0)) revert ZeroAddress();
        open = open_;
        _grantRole(DEFAULT_ADMIN_ROLE, admin);
        _grantRole(REVOKER_ROLE, admin);
        _setChallengeDelay(challengeDelay_);
        _setDisputeBond(disputeBond_);
    }

    /// @notice Propose the root for `epoch`. SETTLER_ROLE only. Replaces (supersedes) a root still pending, unless
    /// that root is disputed: a settler cannot escape a dispute by proposing again.
    /// @param epoch greater than every epoch proposed before (`latestEpoch`)
    /// @param root the tree's root
    /// @param total sum of every cumulative amount in the tree; never below the accepted root's total, and
    /// never more than the pool can pay (`totalClaimed + balance`)
    /// @param uri where the full tree (leaves and proofs) is published
    function proposeRoot(uint64 epoch, bytes32 root, uint256 total, string calldata uri)
        external
        onlyRole(SETTLER_ROLE)
    {
        if (root == bytes32(0)) revert ZeroRoot();
        if (total > type(uint128).max) revert TotalTooLarge(total);
        if (epoch <= latestEpoch) revert EpochNotIncreasing(epoch, latestEpoch);
        uint256 currentTotal = _currentTotal;
        if (total < currentTotal) revert TotalDecreased(total, currentTotal);
        _checkSolvent(total);
        Root memory pending = _pending;
        _checkNotDisputed(pending);
        if (pending.root != bytes32(0)) emit RootSuperseded(pending.epoch, pending.root, epoch);
        latestEpoch = epoch;
        uint64 validAt = uint64(block.timestamp) + challengeDelay;
        // casting is safe: total <= uint128 max, checked above
        // forge-lint: disable-next-line(unsafe-typecast)
        _pending = Root({root: root, epoch: epoch, validAt: validAt, total: uint128(total)});
        emit RootProposed(epoch, root, total, validAt, uri, msg.sender);
    }

    /// @notice Make the pending root claimable once its challenge delay is over and no dispute of it is open.
    /// Anyone may call it.
    function acceptRoot() external {
        Root memory pending = _pending;
        // A zero root is the "no pending root" marker (proposeRoot rejects zero roots), not a balance.
        // slither-disable-next-line incorrect-equality
        if (pending.root == bytes32(0)) revert NoPendingRoot();
        if (block.timestamp < pending.validAt) revert ChallengePeriodActive(pending.validAt);
        _checkNotDisputed(pending);
        // No solvency re-check: since the proposal, claims moved totalClaimed and the balance by the same amount,
        // and nothing else can take OPEN out of this contract.
        // pending.total >= _currentTotal: proposeRoot checked it, and only this function changes _currentTotal
        uint128 unclaimed = _claimState.unclaimed + (pending.total - _currentTotal);
        _currentRoot = pending.root;
        _currentTotal = pending.total;
        _claimState = ClaimState({epoch: pending.epoch, validAt: pending.validAt, unclaimed: unclaimed});
        delete _pending;
        emit RootAccepted(pending.epoch, pending.root, pending.total);
    }

    /// @notice Throw away the pending root, named by its epoch and root so that a revocation aimed at one proposal
    /// can never hit the one that superseded it. REVOKER_ROLE only (governance, or a guardian it appoints).
    /// @param epoch the pending root's epoch
    /// @param root the pending root
    /// An open dispute of it is upheld by the revocation: its bond goes back to the disputer.
    function revokeRoot(uint64 epoch, bytes32 root) external onlyRole(REVOKER_ROLE) {
        _checkPending(epoch, root);
        if (_dispute.disputer != address(0)) {
            _resolve(epoch, root, true);
        } else {
            delete _pending;
            emit RootRevoked(epoch, root, msg.sender);
        }
    }

    /// @notice Dispute the pending root during its challenge delay: it can then be neither accepted nor superseded
    /// until the REVOKER resolves the dispute. Anyone may call it, posting `disputeBond` OPEN (approve it first),
    /// which comes back if the dispute is upheld and joins the contributor pool if it is rejected. One dispute
    /// at a time. A watcher (`openledger settle watch`) recomputes every proposed root and disputes a wrong one.
    /// @param epoch the pending root's epoch
    /// @param root the pending root
    /// @param reason what is wrong with it (for the revoker and the indexer)
    function dispute(uint64 epoch, bytes32 root, string calldata reason) external nonReentrant {
        Root memory pending = _checkPending(epoch, root);
        if (block.timestamp >= pending.validAt) revert ChallengePeriodOver(pending.validAt);
        _checkNotDisputed(pending);
        uint96 bond = disputeBond;
        _dispute = Dispute({disputer: msg.sender, bond: bond});
        emit RootDisputed(epoch, root, msg.sender, bond, reason);
        open.safeTransferFrom(msg.sender, address(this), bond);
    }

    /// @notice Decide the open dispute of the pending root. REVOKER_ROLE only. Upheld: the root is revoked and
    /// the bond returned to the disputer. Rejected: the bond joins the contributor pool, and the root may be
    /// accepted once its challenge delay is over.
    /// @param epoch the disputed root's epoch
    /// @param root the disputed root
    /// @param upheld whether the disputer was right
    function resolveDispute(uint64 epoch, bytes32 root, bool upheld) external onlyRole(REVOKER_ROLE) nonReentrant {
        _checkPending(epoch, root);
        if (_dispute.disputer == address(0)) revert NotDisputed(epoch, root);
        _resolve(epoch, root, upheld);
    }

    function _resolve(uint64 epoch, bytes32 root, bool upheld) internal {
        Dispute memory d = _dispute;
        delete _dispute;
        emit DisputeResolved(epoch, root, d.disputer, upheld, d.bond, msg.sender);
        if (upheld) {
            delete _pending;
            emit RootRevoked(epoch, root, msg.sender);
            open.safeTransfer(d.disputer, d.bond);
        }
    }

    /// @notice Pay `account` what it is owed under the accepted root. Anyone may call it; OPEN goes to `account`.
    /// All claims together never exceed the accepted root's `total`: a root whose leaves promise more than its
    /// total (a buggy or stolen settler key) cannot pay out the pools of payments it did not settle.
    /// @param account the leaf's account
    /// @param cumulativeAmount the leaf's cumulative amount
    /// @param proof the leaf's Merkle proof (OpenZeppelin StandardMerkleTree format)
    /// @return amount what was paid: `cumulativeAmount - claimed[account]` before the call
    function claim(address account, uint256 cumulativeAmount, bytes32[] calldata proof)
        external
        nonReentrant
        returns (uint256 amount)
    {
        bytes32 root = _currentRoot;
        if (root == bytes32(0)) revert NoAcceptedRoot();
        bytes32 leaf = keccak256(bytes.concat(keccak256(abi.encode(account, cumulativeAmount))));
        if (!MerkleProof.verifyCalldata(proof, root, leaf)) revert InvalidProof(account, cumulativeAmount);
        uint256 already = claimed[account];
        if (cumulativeAmount <= already) revert NothingToClaim(account, cumulativeAmount, already);
        amount = cumulativeAmount - already;
        claimed[account] = cumulativeAmount;
        ClaimState memory state = _claimState;
        // a root whose leaves add up to more than its total pays no more than its total, whatever they say
        if (amount > state.unclaimed) revert ClaimExceedsTotal(amount, state.unclaimed);
        // casting is safe: amount <= unclaimed, a uint128
        // forge-lint: disable-next-line(unsafe-typecast)
        _claimState.unclaimed = state.unclaimed - uint128(amount);
        open.safeTransfer(account, amount);
        emit Claimed(account, state.epoch, cumulativeAmount, amount, msg.sender);
    }

    /// @notice The claimable root.
    function currentRoot() external view returns (Root memory) {
        ClaimState memory state = _claimState;
        return Root({root: _currentRoot, epoch: state.epoch, validAt: state.validAt, total: _currentTotal});
    }

    /// @notice Everything paid out so far, over all accounts.
    function totalClaimed() external view returns (uint256) {
        return _currentTotal - _claimState.unclaimed;
    }

    /// @notice The root waiting out its challenge delay (zero root when none).
    function pendingRoot() external view returns (Root memory) {
        return _pending;
    }

    /// @notice The open dispute of the pending root (zero disputer when none).
    function pendingDispute() external view returns (Dispute memory) {
        return _dispute;
    }

    /// @notice Set the bond a dispute posts (applies to later disputes). Governance only.
    function setDisputeBond(uint96 bond) external onlyRole(DEFAULT_ADMIN_ROLE) {
        _setDisputeBond(bond);
    }

    function _setDisputeBond(uint96 bond) internal {
        emit DisputeBondSet(disputeBond, bond);
        disputeBond = bond;
    }

    function _checkPending(uint64 epoch, bytes32 root) internal view returns (Root memory pending) {
        pending = _pending;
        // A zero root is the "no pending root" marker (proposeRoot rejects zero roots), not a balance.
        // slither-disable-next-line incorrect-equality
        if (pending.root == bytes32(0)) revert NoPendingRoot();
        if (pending.epoch != epoch || pending.root != root) revert NotPending(epoch, root);
    }

    function _checkNotDisputed(Root memory pending) internal view {
        address disputer = _dispute.disputer;
        if (disputer != address(0)) revert Disputed(pending.epoch, pending.root, disputer);
    }

    /// @notice Set the challenge delay (seconds, at most 30 days); applies to later proposals. Governance only.
    function setChallengeDelay(uint64 delay) external onlyRole(DEFAULT_ADMIN_ROLE) {
        _setChallengeDelay(delay);
    }

    function _setChallengeDelay(uint64 delay) internal {
        if (delay > MAX_CHALLENGE_DELAY) revert ChallengeDelayTooLong(delay, MAX_CHALLENGE_DELAY);
        emit ChallengeDelaySet(challengeDelay, delay);
        challengeDelay = delay;
    }

    function _checkSolvent(uint256 total) internal view {
        uint256 alreadyClaimed = _currentTotal - _claimState.unclaimed;
        // total >= _currentTotal (checked by the caller) >= alreadyClaimed (claims never exceed the total)
        // no dispute is open here (proposeRoot refuses while one is), so the balance holds no bond
        uint256 balance = open.balanceOf(address(this));
        uint256 owed = total - alreadyClaimed;
        if (owed > balance) revert InsufficientPool(owed, balance);
    }
}

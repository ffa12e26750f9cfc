// SPDX-License-Identifier: Apache-2.0
pragma solidity 0.8.30;

import {AccessControl} from "@openzeppelin/contracts/access/AccessControl.sol";
import {IERC20} from "@openzeppelin/contracts/token/ERC20/IERC20.sol";
import {ERC20Burnable} from "@openzeppelin/contracts/token/ERC20/extensions/ERC20Burnable.sol";
import {SafeERC20} from "@openzeppelin/contracts/token/ERC20/utils/SafeERC20.sol";
import {SafeCast} from "@openzeppelin/contracts/utils/math/SafeCast.sol";
import {IAgentRegistry} from "./interfaces/IAgentRegistry.sol";
import {ReentrancyGuardTransient} from "@openzeppelin/contracts/utils/ReentrancyGuardTransient.sol";

/// @title OpenLedger agent staking
/// @notice Operators stake OPEN behind the agents they run. Unstaking moves stake into one unbonding bucket
/// per position that pays out after the unbonding period; stake stays slashable while it unbonds.
/// Only SLASHER_ROLE may slash, each incident once per position, and however many incidents it names, at most
/// `maxSlashBps` of a position in one slash window (`SLASH_WINDOW` from the window's first slash, of what the
/// position held when that window opened). Stake is slashable until it is released: unbonding stake whose
/// `releaseAt` has passed belongs to its staker, so whether a slash or the staker's `withdraw` is mined first
/// changes nothing. The unbonding period is at least `MIN_UNBONDING_PERIOD`, the slasher's time to act.
/// Slashed OPEN is burned or sent to the treasury, as governance decides.
/// @dev One bucket (not a queue) per position keeps slashing O(1): a staker cannot make itself unslashable by
/// splitting its unstake into many requests. A new unstake adds to the bucket and restarts its clock.
contract Staking is AccessControl, ReentrancyGuardTransient {
    using SafeERC20 for IERC20;

    bytes32 public constant SLASHER_ROLE = keccak256("SLASHER_ROLE");
    uint256 public constant BPS = 10_000;
    /// @notice Upper bound governance may set for the unbonding period.
    uint64 public constant MAX_UNBONDING_PERIOD = 365 days;
    /// @notice Lower bound of the unbonding period: stake must stay slashable long enough to be slashed.
    uint64 public constant MIN_UNBONDING_PERIOD = 1 days;
    /// @notice How long one slash window lasts, from its first slash.
    uint64 public constant SLASH_WINDOW = 30 days;

    struct Position {
        uint128 staked;
        uint128 unbonding;
        uint64 releaseAt;
    }

    /// @notice A position's current slash window: what it may still lose in it is `cap - slashed`.
    struct SlashWindow {
        uint64 endsAt;
        uint128 cap;
        uint128 slashed;
    }

    IERC20 public immutable open;
    IAgentRegistry public immutable registry;

    /// @notice Seconds an unstake waits before it can be withdrawn.
    uint64 public unbondingPeriod;
    /// @notice The most one incident may take from a position, in bps of its staked + unbonding balance.
    uint16 public maxSlashBps;
    /// @notice true: slashed OPEN is burned; false: it goes to `treasury`.
    bool public burnSlashed;
    address public treasury;

    uint256 public totalStaked;
    uint256 public totalUnbonding;
    /// @notice Active (not unbonding) stake behind each agent, summed over stakers.
    mapping(uint256 agentId => uint256) public agentStake;
    mapping(uint256 agentId => mapping(address staker => Position)) internal _positions;
    mapping(bytes32 incidentId => mapping(uint256 agentId => mapping(address staker => bool))) public incidentSlashed;
    mapping(uint256 agentId => mapping(address staker => SlashWindow)) internal _slashWindows;

    event Staked(uint256 indexed agentId, address indexed staker, uint256 amount, uint256 newStaked);
    event UnstakeRequested(
        uint256 indexed agentId, address indexed staker, uint256 amount, uint256 newUnbonding, uint64 releaseAt
    );
    event Withdrawn(uint256 indexed agentId, address indexed staker, uint256 amount);
    event Slashed(
        uint256 indexed agentId,
        address indexed staker,
        bytes32 indexed incidentId,
        uint256 fromStaked,
        uint256 fromUnbonding,
        bool burned,
        address slasher
    );
    event UnbondingPeriodSet(uint64 previousPeriod, uint64 newPeriod);
    event MaxSlashBpsSet(uint16 previousBps, uint16 newBps);
    event SlashDestinationSet(bool burn, address indexed treasury);

    error ZeroAddress();
    error ZeroAmount();
    error UnknownAgent(uint256 agentId);
    error NotAgentOperator(uint256 agentId, address account);
    error InsufficientStake(uint256 staked, uint256 requested);
    error NothingToWithdraw(uint256 agentId, address staker);
    error StillUnbonding(uint64 releaseAt);
    error SlashExceedsCap(uint256 amount, uint256 cap);
    error IncidentAlreadySlashed(bytes32 incidentId, uint256 agentId, address staker);
    error InvalidBps(uint256 bps);
    error UnbondingPeriodTooLong(uint64 period, uint64 max);
    error UnbondingPeriodTooShort(uint64 period, uint64 min);

    /// @param open_ the OPEN token
    /// @param registry_ the Registry (for agent operators)
    /// @param admin DEFAULT_ADMIN_ROLE holder (the timelock in production)
    /// @param treasury_ where slashed OPEN goes when it is not burned
    /// @param unbondingPeriod_ seconds an unstake waits
    /// @param maxSlashBps_ per-incident cap, in bps of the position
    /// @param burnSlashed_ burn slashed OPEN (true) or send it to the treasury (false)
    constructor(
        IERC20 open_,
        IAgentRegistry registry_,
        address admin,
        address treasury_,
        uint64 unbondingPeriod_,
        uint16 maxSlashBps_,
        bool burnSlashed_
    ) {
        if (address(open_) == address(0) || address(registry_) == address(0) || admin == address(0)) {
            revert ZeroAddress();
        }
        open = open_;
        registry = registry_;
        _grantRole(DEFAULT_ADMIN_ROLE, admin);
        _setUnbondingPeriod(unbondingPeriod_);
        _setMaxSlashBps(maxSlashBps_);
        _setSlashDestination(burnSlashed_, treasury_);
    }

    /// @notice Stake `amount` OPEN behind `agentId`. Only the agent's current operator may stake.
    function stake(uint256 agentId, uint256 amount) external nonReentrant {
        if (amount == 0) revert ZeroAmount();
        address operator = registry.agentOperator(agentId);
        if (operator == address(0)) revert UnknownAgent(agentId);
        if (operator != msg.sender) revert NotAgentOperator(agentId, msg.sender);
        Position storage p = _positions[agentId][msg.sender];
        uint256 newStaked = uint256(p.staked) + amount;
        p.staked = SafeCast.toUint128(newStaked);
        agentStake[agentId] += amount;
        totalStaked += amount;
        open.safeTransferFrom(msg.sender, address(this), amount);
        emit Staked(agentId, msg.sender, amount, newStaked);
    }

    /// @notice Start unbonding `amount` of the caller's stake behind `agentId`. It stays slashable and can be
    /// withdrawn after `unbondingPeriod`; the caller's whole bucket then waits from now.
    function unstake(uint256 agentId, uint256 amount) external {
        if (amount == 0) revert ZeroAmount();
        Position storage p = _positions[agentId][msg.sender];
        if (amount > p.staked) revert InsufficientStake(p.staked, amount);
        // casting is safe: amount <= p.staked, checked above
        // forge-lint: disable-next-line(unsafe-typecast)
        p.staked -= uint128(amount);
        // casting is safe: amount <= p.staked, a uint128
        // forge-lint: disable-next-line(unsafe-typecast)
        p.unbonding += uint128(amount);
        uint64 releaseAt = uint64(block.timestamp) + unbondingPeriod;
        p.releaseAt = releaseAt;
        agentStake[agentId] -= amount;
        totalStaked -= amount;
        totalUnbonding += amount;
        emit UnstakeRequested(agentId, msg.sender, amount, p.unbonding, releaseAt);
    }

    /// @notice Pay out the caller's unbonded stake behind `agentId` once its unbonding period is over.
    function withdraw(uint256 agentId) external nonReentrant {
        Position storage p = _positions[agentId][msg.sender];
        uint256 amount = p.unbonding;
        if (amount == 0) revert NothingToWithdraw(agentId, msg.sender);
        if (block.timestamp < p.releaseAt) revert StillUnbonding(p.releaseAt);
        p.unbonding = 0;
        p.releaseAt = 0;
        totalUnbonding -= amount;
        open.safeTransfer(msg.sender, amount);
        emit Withdrawn(agentId, msg.sender, amount);
    }

    /// @notice Slash a position for one incident, taken from active stake first, then from unbonding stake not yet
    /// released. SLASHER_ROLE only; each incident once per position. All the incidents of one slash window
    /// together take at most `maxSlashBps` of the slashable balance the position had when the window opened.
    /// @param incidentId an identifier of the misbehaviour (e.g. a dispute id), kept so it cannot be reused
    function slash(uint256 agentId, address staker, uint256 amount, bytes32 incidentId)
        external
        onlyRole(SLASHER_ROLE)
        nonReentrant
    {
        if (amount == 0) revert ZeroAmount();
        if (incidentSlashed[incidentId][agentId][staker]) revert IncidentAlreadySlashed(incidentId, agentId, staker);
        Position storage p = _positions[agentId][staker];
        uint256 slashable = _slashable(p);
        SlashWindow memory w = _slashWindows[agentId][staker];
        if (block.timestamp >= w.endsAt) {
            w = SlashWindow({
                endsAt: uint64(block.timestamp) + SLASH_WINDOW,
                cap: SafeCast.toUint128(slashable * maxSlashBps / BPS),
                slashed: 0
            });
        }
        uint256 left = w.cap - w.slashed;
        if (left > slashable) left = slashable;
        if (amount > left) revert SlashExceedsCap(amount, left);
        incidentSlashed[incidentId][agentId][staker] = true;
        // casting is safe: amount <= left <= cap - slashed, a uint128
        // forge-lint: disable-next-line(unsafe-typecast)
        w.slashed += uint128(amount);
        _slashWindows[agentId][staker] = w;

        uint256 fromStaked = amount <= p.staked ? amount : p.staked;
        uint256 fromUnbonding = amount - fromStaked;
        // casting is safe: fromStaked <= p.staked
        // forge-lint: disable-next-line(unsafe-typecast)
        p.staked -= uint128(fromStaked);
        // casting is safe: amount <= slashable <= staked + unbonding, so fromUnbonding <= unbonding
        // forge-lint: disable-next-line(unsafe-typecast)
        p.unbonding -= uint128(fromUnbonding);
        agentStake[agentId] -= fromStaked;
        totalStaked -= fromStaked;
        totalUnbonding -= fromUnbonding;

        bool burn = burnSlashed;
        if (burn) ERC20Burnable(address(open)).burn(amount);
        else open.safeTransfer(treasury, amount);
        emit Slashed(agentId, staker, incidentId, fromStaked, fromUnbonding, burn, msg.sender);
    }

    /// @notice A staker's position behind an agent.
    function position(uint256 agentId, address staker) external view returns (Position memory) {
        return _positions[agentId][staker];
    }

    /// @notice A position's current (or last) slash window.
    function slashWindow(uint256 agentId, address staker) external view returns (SlashWindow memory) {
        return _slashWindows[agentId][staker];
    }

    /// @dev What a slash may reach: active stake, and unbonding stake until its release time.
    function _slashable(Position storage p) internal view returns (uint256) {
        return block.timestamp < p.releaseAt ? uint256(p.staked) + p.unbonding : p.staked;
    }

    // ---- governance ----

    /// @notice Set the unbonding period (seconds, at least a day, at most a year). Applies to unstakes made after
    /// the change.
    function setUnbondingPeriod(uint64 period) external onlyRole(DEFAULT_ADMIN_ROLE) {
        _setUnbondingPeriod(period);
    }

    /// @notice Set the per-incident slash cap, in bps (at most 10,000).
    function setMaxSlashBps(uint16 bps) external onlyRole(DEFAULT_ADMIN_ROLE) {
        _setMaxSlashBps(bps);
    }

    /// @notice Choose whether slashed OPEN is burned or sent to `treasury_`.
    function setSlashDestination(bool burn, address treasury_) external onlyRole(DEFAULT_ADMIN_ROLE) {
        _setSlashDestination(burn, treasury_);
    }

    function _setUnbondingPeriod(uint64 period) internal {
        if (period > MAX_UNBONDING_PERIOD) revert UnbondingPeriodTooLong(period, MAX_UNBONDING_PERIOD);
        if (period < MIN_UNBONDING_PERIOD) revert UnbondingPeriodTooShort(period, MIN_UNBONDING_PERIOD);
        emit UnbondingPeriodSet(unbondingPeriod, period);
        unbondingPeriod = period;
    }

    function _setMaxSlashBps(uint16 bps) internal {
        if (bps == 0 || bps > BPS) revert InvalidBps(bps);
        emit MaxSlashBpsSet(maxSlashBps, bps);
        maxSlashBps = bps;
    }

    function _setSlashDestination(bool burn, address treasury_) internal {
        if (!burn && treasury_ == address(0)) revert ZeroAddress();
        burnSlashed = burn;
        treasury = treasury_;
        emit SlashDestinationSet(burn, treasury_);
    }
}

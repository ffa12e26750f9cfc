// SPDX-License-Identifier: Apache-2.0
pragma solidity 0.8.30;

import {AccessControl} from "@openzeppelin/contracts/access/AccessControl.sol";
import {IERC20} from "@openzeppelin/contracts/token/ERC20/IERC20.sol";
import {ERC20Burnable} from "@openzeppelin/contracts/token/ERC20/extensions/ERC20Burnable.sol";
import {IERC20Permit} from "@openzeppelin/contracts/token/ERC20/extensions/IERC20Permit.sol";
import {SafeERC20} from "@openzeppelin/contracts/token/ERC20/utils/SafeERC20.sol";
import {IModelRegistry} from "./interfaces/IModelRegistry.sol";
import {ReentrancyGuardTransient} from "@openzeppelin/contracts/utils/ReentrancyGuardTransient.sol";

/// @title OpenLedger inference fee router
/// @notice Every inference is paid here in OPEN. The fee is split by basis points into a burn, the model
/// developer's share, the protocol treasury's share and the data-contributor pool (the RewardDistributor);
/// the pool takes the rounding remainder, so the four parts always sum exactly to the fee.
contract FeeRouter is AccessControl, ReentrancyGuardTransient {
    using SafeERC20 for IERC20;

    uint256 public constant BPS = 10_000;

    /// @notice The fee split in bps; the four parts sum to 10,000.
    struct Split {
        uint16 burnBps;
        uint16 developerBps;
        uint16 treasuryBps;
        uint16 poolBps;
    }

    IERC20 public immutable open;
    IModelRegistry public immutable registry;

    Split internal _split;
    address public treasury;
    /// @notice The data-contributor pool: the RewardDistributor.
    address public pool;

    /// @notice requestIds already paid, per payer.
    mapping(address payer => mapping(bytes32 requestId => bool)) public paid;

    /// @notice One inference was paid; the parts sum to `amount`.
    event InferencePaid(
        address indexed payer,
        uint256 indexed modelId,
        bytes32 indexed requestId,
        uint256 amount,
        address developer,
        uint256 burned,
        uint256 developerAmount,
        uint256 treasuryAmount,
        uint256 poolAmount
    );
    event SplitSet(uint16 burnBps, uint16 developerBps, uint16 treasuryBps, uint16 poolBps);
    event TreasurySet(address indexed previousTreasury, address indexed newTreasury);
    event PoolSet(address indexed previousPool, address indexed newPool);

    error ZeroAddress();
    error ZeroAmount();
    error UnknownModel(uint256 modelId);
    error RequestAlreadyPaid(address payer, bytes32 requestId);
    /// @notice The four bps values do not sum to 10,000.
    error InvalidSplit(uint256 sum);

    /// @param open_ the OPEN token
    /// @param registry_ the Registry (for model developers)
    /// @param admin DEFAULT_ADMIN_ROLE holder (the timelock in production)
    /// @param treasury_ the protocol treasury
    /// @param pool_ the RewardDistributor
    /// @param split_ the initial split
    constructor(
        IERC20 open_,
        IModelRegistry registry_,
        address admin,
        address treasury_,
        address pool_,
        Split memory split_
    ) {
        if (address(open_) == address(0) || address(registry_) == address(0) || admin == address(0)) {
            revert ZeroAddress();
        }
        open = open_;
        registry = registry_;
        _grantRole(DEFAULT_ADMIN_ROLE, admin);
        _setTreasury(treasury_);
        _setPool(pool_);
        _setSplit(split_);
    }

    /// @notice Pay `amount` OPEN for inference `requestId` on `modelId` (approve this contract first).
    /// @param modelId a registered model
    /// @param requestId the caller's unique id for this inference; paying the same one twice reverts
    /// @param amount the fee in OPEN wei
    function payInference(uint256 modelId, bytes32 requestId, uint256 amount) external nonReentrant {
        _pay(modelId, requestId, amount);
    }

    /// @notice `payInference` with an EIP-2612 permit instead of a prior approval. The permit is used only when
    /// the payer's allowance to this contract is below `amount`, so an allowance the payer already gave is never
    /// overwritten (a permit sets the allowance to its value; the payment then spends `amount` of it). A permit
    /// that was already used (e.g. front-run) is ignored as long as the allowance is there.
    /// @param modelId the model paid for
    /// @param requestId the payer's request id (once per payer)
    /// @param amount the fee, in OPEN wei
    /// @param deadline the permit's deadline
    /// @param v the permit signature's v
    /// @param r the permit signature's r
    /// @param s the permit signature's s
    function payInferenceWithPermit(
        uint256 modelId,
        bytes32 requestId,
        uint256 amount,
        uint256 deadline,
        uint8 v,
        bytes32 r,
        bytes32 s
    ) external nonReentrant {
        if (open.allowance(msg.sender, address(this)) < amount) {
            try IERC20Permit(address(open)).permit(msg.sender, address(this), amount, deadline, v, r, s) {} catch {}
        }
        _pay(modelId, requestId, amount);
    }

    function _pay(uint256 modelId, bytes32 requestId, uint256 amount) internal {
        if (amount == 0) revert ZeroAmount();
        address developer = registry.modelDeveloper(modelId);
        if (developer == address(0)) revert UnknownModel(modelId);
        if (paid[msg.sender][requestId]) revert RequestAlreadyPaid(msg.sender, requestId);
        paid[msg.sender][requestId] = true;

        Split memory s = _split;
        uint256 burned = amount * s.burnBps / BPS;
        uint256 developerAmount = amount * s.developerBps / BPS;
        uint256 treasuryAmount = amount * s.treasuryBps / BPS;
        uint256 poolAmount = amount - burned - developerAmount - treasuryAmount;

        IERC20 token = open;
        // Pay the parts straight from the payer: one allowance check per part, no tokens parked here.
        if (developerAmount != 0) token.safeTransferFrom(msg.sender, developer, developerAmount);
        if (treasuryAmount != 0) token.safeTransferFrom(msg.sender, treasury, treasuryAmount);
        if (poolAmount != 0) token.safeTransferFrom(msg.sender, pool, poolAmount);
        if (burned != 0) ERC20Burnable(address(token)).burnFrom(msg.sender, burned);

        emit InferencePaid(
            msg.sender, modelId, requestId, amount, developer, burned, developerAmount, treasuryAmount, poolAmount
        );
    }

    /// @notice The current split.
    function split() external view returns (Split memory) {
        return _split;
    }

    // ---- governance ----

    /// @notice Set the fee split; the four bps must sum to exactly 10,000. Governance only.
    function setSplit(Split calldata newSplit) external onlyRole(DEFAULT_ADMIN_ROLE) {
        _setSplit(newSplit);
    }

    /// @notice Set the protocol treasury. Governance only.
    function setTreasury(address newTreasury) external onlyRole(DEFAULT_ADMIN_ROLE) {
        _setTreasury(newTreasury);
    }

    /// @notice Set the data-contributor pool (the RewardDistributor). Governance only.
    function setPool(address newPool) external onlyRole(DEFAULT_ADMIN_ROLE) {
        _setPool(newPool);
    }

    function _setSplit(Split memory s) internal {
        uint256 sum = uint256(s.burnBps) + s.developerBps + s.treasuryBps + s.poolBps;
        if (sum != BPS) revert InvalidSplit(sum);
        _split = s;
        emit SplitSet(s.burnBps, s.developerBps, s.treasuryBps, s.poolBps);
    }

    function _setTreasury(address newTreasury) internal {
        if (newTreasury == address(0)) revert ZeroAddress();
        emit TreasurySet(treasury, newTreasury);
        treasury = newTreasury;
    }

    function _setPool(address newPool) internal {
        if (newPool == address(0)) revert ZeroAddress();
        emit PoolSet(pool, newPool);
        pool = newPool;
    }
}

// SPDX-License-Identifier: Apache-2.0
pragma solidity 0.8.30;

import {AccessControl} from "@openzeppelin/contracts/access/AccessControl.sol";
import {IERC20} from "@openzeppelin/contracts/token/ERC20/IERC20.sol";
import {SafeERC20} from "@openzeppelin/contracts/token/ERC20/utils/SafeERC20.sol";
import {EIP712} from "@openzeppelin/contracts/utils/cryptography/EIP712.sol";
import {SignatureChecker} from "@openzeppelin/contracts/utils/cryptography/SignatureChecker.sol";
import {Nonces} from "@openzeppelin/contracts/utils/Nonces.sol";
import {IAgentRegistry} from "./interfaces/IAgentRegistry.sol";
import {IModelRegistry} from "./interfaces/IModelRegistry.sol";

/// @title OpenLedger Registry
/// @notice The on-chain record of Datanets and their contributions, dataset versions, models, LoRA adapters
/// and agents. URIs and free-form metadata live only in events (the indexer keeps them); storage holds what
/// the contracts themselves check.
/// @dev Ids start at 1; 0 means "none". Governance (DEFAULT_ADMIN_ROLE, the timelock) sets the Datanet fee
/// and the treasury.
contract Registry is AccessControl, EIP712, Nonces, IModelRegistry, IAgentRegistry {
    using SafeERC20 for IERC20;

    enum ContributionStatus {
        None,
        Pending,
        Accepted,
        Rejected
    }

    struct Datanet {
        address owner;
        bool permissioned;
        uint64 contributionCount;
        uint64 acceptedCount;
        uint64 versionCount;
    }

    struct Contribution {
        address contributor;
        uint64 datanetId;
        ContributionStatus status;
    }

    struct Model {
        address developer;
        uint64 adapterCount;
    }

    struct Adapter {
        uint64 modelId;
        uint64 version;
        bytes32 contentHash;
    }

    struct Agent {
        address owner;
        uint64 modelId;
        address operator;
    }

    /// @notice What a model was trained from: a base model and exact Datanet versions.
    struct ModelSpec {
        string baseModel;
        bytes32 baseModelHash;
        uint256[] datanetIds;
        uint64[] datanetVersions;
        bytes32 trainingConfigHash;
        string metadataURI;
    }

    bytes32 public constant CONTRIBUTE_TYPEHASH = keccak256(
        "Contribute(address contributor,uint256 datanetId,bytes32 contentHash,string metadataURI,uint256 nonce,uint256 deadline)"
    );

    /// @notice The OPEN token, in which the Datanet registration fee is paid.
    IERC20 public immutable open;
    /// @notice Receives registration fees.
    address public treasury;
    /// @notice Fee in OPEN wei to create a Datanet.
    uint256 public datanetFee;

    uint256 public datanetCount;
    uint256 public contributionCount;
    uint256 public modelCount;
    uint256 public adapterCount;
    uint256 public agentCount;

    mapping(uint256 id => Datanet) internal _datanets;
    mapping(uint256 datanetId => mapping(address => bool)) public isCurator;
    mapping(uint256 datanetId => mapping(address => bool)) public isAllowedContributor;
    /// @notice A contributor's contribution of a content hash to a Datanet (0 if none). Uniqueness is per
    /// contributor: nobody can claim a hash for others (a front-run `contribute` of someone's relayed hash is the
    /// front-runner's own contribution and does not block the victim's), and two contributors who hold the
    /// same data may each contribute it. A rejected contribution keeps its slot: its contributor cannot
    /// submit the same content to the same Datanet again; everyone else still can.
    mapping(
        uint256 datanetId => mapping(address contributor => mapping(bytes32 contentHash => uint256 contributionId))
    ) public contributionByHash;
    mapping(uint256 datanetId => mapping(uint64 version => bytes32 root)) public versionRoot;
    mapping(uint256 id => Contribution) internal _contributions;
    mapping(uint256 id => Model) internal _models;
    mapping(uint256 id => Adapter) internal _adapters;
    mapping(uint256 id => Agent) internal _agents;

    // ---- events ----
    event DatanetCreated(
        uint256 indexed datanetId,
        address indexed owner,
        string metadataURI,
        string[] tags,
        bool permissioned,
        address[] curators,
        uint256 feePaid
    );
    event DatanetMetadataUpdated(uint256 indexed datanetId, string metadataURI);
    event DatanetOwnershipTransferred(
        uint256 indexed datanetId, address indexed previousOwner, address indexed newOwner
    );
    event CuratorSet(uint256 indexed datanetId, address indexed curator, bool enabled);
    event ContributorAllowed(uint256 indexed datanetId, address indexed contributor, bool allowed);
    event ContributionSubmitted(
        uint256 indexed contributionId,
        uint256 indexed datanetId,
        address indexed contributor,
        bytes32 contentHash,
        string metadataURI,
        address submitter
    );
    event ContributionReviewed(
        uint256 indexed contributionId, uint256 indexed datanetId, address indexed curator, bool accepted
    );
    event DatanetVersionPublished(
        uint256 indexed datanetId, uint64 indexed version, bytes32 root, uint64 contributionCount, string uri
    );
    event ModelRegistered(
        uint256 indexed modelId,
        address indexed developer,
        string baseModel,
        bytes32 baseModelHash,
        uint256[] datanetIds,
        uint64[] datanetVersions,
        bytes32[] datanetRoots,
        bytes32 trainingConfigHash,
        string metadataURI
    );
    event ModelDeveloperTransferred(
        uint256 indexed modelId, address indexed previousDeveloper, address indexed newDeveloper
    );
    event AdapterPublished(
        uint256 indexed adapterId, uint256 indexed modelId, uint64 version, bytes32 contentHash, string uri
    );
    event AgentRegistered(
        uint256 indexed agentId, uint256 indexed modelId, address indexed owner, address operator, string metadataURI
    );
    event AgentOperatorChanged(uint256 indexed agentId, address indexed previousOperator, address indexed newOperator);
    event DatanetFeeSet(uint256 previousFee, uint256 newFee);
    event TreasurySet(address indexed previousTreasury, address indexed newTreasury);

    // ---- errors ----
    error ZeroAddress();
    error EmptyURI();
    error ZeroHash();
    error UnknownDatanet(uint256 datanetId);
    error UnknownContribution(uint256 contributionId);
    error UnknownModel(uint256 modelId);
    error UnknownAgent(uint256 agentId);
    error UnknownDatanetVersion(uint256 datanetId, uint64 version);
    error NotDatanetOwner(uint256 datanetId, address account);
    error NotCurator(uint256 datanetId, address account);
    error NotAllowedContributor(uint256 datanetId, address contributor);
    error NotModelDeveloper(uint256 modelId, address account);
    error NotAgentOwner(uint256 agentId, address account);
    error DuplicateContribution(
        uint256 datanetId, address contributor, bytes32 contentHash, uint256 existingContributionId
    );
    error ContributionNotInDatanet(uint256 contributionId, uint256 datanetId);
    error ContributionAlreadyReviewed(uint256 contributionId, ContributionStatus status);
    error EmptyBatch();
    error ExpiredSignature(uint256 deadline);
    error InvalidSignature(address contributor);
    error InvalidVersionCount(uint64 contributionCount, uint64 acceptedCount);
    error LengthMismatch(uint256 datanetIds, uint256 versions);

    /// @param open_ the OPEN token
    /// @param admin the account holding DEFAULT_ADMIN_ROLE (the timelock in production)
    /// @param treasury_ receiver of Datanet registration fees
    /// @param datanetFee_ initial Datanet registration fee (OPEN wei)
    constructor(IERC20 open_, address admin, address treasury_, uint256 datanetFee_)
        EIP712("OpenLedger Registry", "1")
    {
        if (address(open_) == address(0) || admin == address(0) || treasury_ == address(0)) revert ZeroAddress();
        open = open_;
        treasury = treasury_;
        datanetFee = datanetFee_;
        _grantRole(DEFAULT_ADMIN_ROLE, admin);
        emit TreasurySet(address(0), treasury_);
        emit DatanetFeeSet(0, datanetFee_);
    }

    // =====================================================================
    // Datanets
    // =====================================================================

    /// @notice Create a Datanet owned by the caller, paying the registration fee in OPEN (approve it first).
    /// @param metadataURI where the Datanet's description lives
    /// @param tags domain tags (e.g. "medicine", "solidity")
    /// @param permissioned when true, only contributors allowed by the owner or a curator may contribute
    /// @param curators accounts that may accept or reject contributions (the owner always may)
    /// @return datanetId the new Datanet's id
    function createDatanet(
        string calldata metadataURI,
        string[] calldata tags,
        bool permissioned,
        address[] calldata curators
    ) external returns (uint256 datanetId) {
        if (bytes(metadataURI).length == 0) revert EmptyURI();
        datanetId = ++datanetCount;
        _datanets[datanetId].owner = msg.sender;
        _datanets[datanetId].permissioned = permissioned;
        for (uint256 i; i < curators.length; ++i) {
            if (curators[i] == address(0)) revert ZeroAddress();
            isCurator[datanetId][curators[i]] = true;
        }
        uint256 fee = datanetFee;
        if (fee != 0) open.safeTransferFrom(msg.sender, treasury, fee);
        emit DatanetCreated(datanetId, msg.sender, metadataURI, tags, permissioned, curators, fee);
    }

    /// @notice Replace a Datanet's metadata URI. Owner only.
    function setDatanetMetadata(uint256 datanetId, string calldata metadataURI) external {
        _onlyDatanetOwner(datanetId);
        if (bytes(metadataURI).length == 0) revert EmptyURI();
        emit DatanetMetadataUpdated(datanetId, metadataURI);
    }

    /// @notice Hand a Datanet to a new owner. Owner only.
    function transferDatanetOwnership(uint256 datanetId, address newOwner) external {
        _onlyDatanetOwner(datanetId);
        if (newOwner == address(0)) revert ZeroAddress();
        _datanets[datanetId].owner = newOwner;
        emit DatanetOwnershipTransferred(datanetId, msg.sender, newOwner);
    }

    /// @notice Add or remove a curator. Owner only.
    function setCurator(uint256 datanetId, address curator, bool enabled) external {
        _onlyDatanetOwner(datanetId);
        if (curator == address(0)) revert ZeroAddress();
        isCurator[datanetId][curator] = enabled;
        emit CuratorSet(datanetId, curator, enabled);
    }

    /// @notice Allow or disallow contributors of a permissioned Datanet. Owner or curator.
    function setContributorsAllowed(uint256 datanetId, address[] calldata contributors, bool allowed) external {
        _onlyCurator(datanetId);
        if (contributors.length == 0) revert EmptyBatch();
        for (uint256 i; i < contributors.length; ++i) {
            if (contributors[i] == address(0)) revert ZeroAddress();
            isAllowedContributor[datanetId][contributors[i]] = allowed;
            emit ContributorAllowed(datanetId, contributors[i], allowed);
        }
    }

    // =====================================================================
    // Contributions
    // =====================================================================

    /// @notice Submit a data point to a Datanet as the caller. It starts Pending until a curator reviews it.
    /// A contributor submits a given content hash to a Datanet once (even if it was rejected); other
    /// contributors may submit the same hash (see `contributionByHash`).
    /// @param datanetId the Datanet
    /// @param contentHash hash of the content (the content itself stays off-chain)
    /// @param metadataURI where the content or its description can be fetched
    /// @return contributionId the new contribution's id
    function contribute(uint256 datanetId, bytes32 contentHash, string calldata metadataURI)
        external
        returns (uint256 contributionId)
    {
        return _contribute(msg.sender, datanetId, contentHash, metadataURI);
    }

    /// @notice Submit a contribution on behalf of `contributor`, who signed it (EIP-712, or ERC-1271 for
    /// contract wallets). Lets a relayer pay the gas. Each signature works once (nonce) and only until `deadline`.
    /// @param contributor the account credited with the contribution
    /// @param nonce the contributor's current nonce (see `nonces`)
    /// @param deadline unix time after which the signature is void
    /// @param signature the contributor's signature over the `Contribute` struct
    function contributeWithSig(
        address contributor,
        uint256 datanetId,
        bytes32 contentHash,
        string calldata metadataURI,
        uint256 nonce,
        uint256 deadline,
        bytes calldata signature
    ) external returns (uint256 contributionId) {
        if (block.timestamp > deadline) revert ExpiredSignature(deadline);
        _useCheckedNonce(contributor, nonce);
        bytes32 digest = _hashTypedDataV4(
            keccak256(
                abi.encode(
                    CONTRIBUTE_TYPEHASH,
                    contributor,
                    datanetId,
                    contentHash,
                    keccak256(bytes(metadataURI)),
                    nonce,
                    deadline
                )
            )
        );
        if (!SignatureChecker.isValidSignatureNow(contributor, digest, signature)) {
            revert InvalidSignature(contributor);
        }
        return _contribute(contributor, datanetId, contentHash, metadataURI);
    }

    function _contribute(address contributor, uint256 datanetId, bytes32 contentHash, string calldata metadataURI)
        internal
        returns (uint256 contributionId)
    {
        Datanet storage d = _datanet(datanetId);
        if (contentHash == bytes32(0)) revert ZeroHash();
        if (d.permissioned && !isAllowedContributor[datanetId][contributor]) {
            revert NotAllowedContributor(datanetId, contributor);
        }
        uint256 existing = contributionByHash[datanetId][contributor][contentHash];
        if (existing != 0) revert DuplicateContribution(datanetId, contributor, contentHash, existing);

        contributionId = ++contributionCount;
        contributionByHash[datanetId][contributor][contentHash] = contributionId;
        // casting is safe: the Datanet exists, so its id <= datanetCount
        // forge-lint: disable-next-line(unsafe-typecast)
        uint64 dn = uint64(datanetId);
        _contributions[contributionId] =
            Contribution({contributor: contributor, datanetId: dn, status: ContributionStatus.Pending});
        ++d.contributionCount;
        emit ContributionSubmitted(contributionId, datanetId, contributor, contentHash, metadataURI, msg.sender);
    }

    /// @notice Accept or reject pending contributions of one Datanet, in a batch. Owner or curator.
    /// @param datanetId the Datanet all ids belong to
    /// @param contributionIds pending contributions of that Datanet
    /// @param accept true to accept all of them, false to reject all of them
    function reviewContributions(uint256 datanetId, uint256[] calldata contributionIds, bool accept) external {
        Datanet storage d = _onlyCurator(datanetId);
        uint256 n = contributionIds.length;
        if (n == 0) revert EmptyBatch();
        ContributionStatus next = accept ? ContributionStatus.Accepted : ContributionStatus.Rejected;
        for (uint256 i; i < n; ++i) {
            uint256 id = contributionIds[i];
            Contribution storage c = _contributions[id];
            if (c.status == ContributionStatus.None) revert UnknownContribution(id);
            if (c.datanetId != datanetId) revert ContributionNotInDatanet(id, datanetId);
            if (c.status != ContributionStatus.Pending) revert ContributionAlreadyReviewed(id, c.status);
            c.status = next;
            emit ContributionReviewed(id, datanetId, msg.sender, accept);
        }
        // casting is safe: n is bounded by the contributions that exist
        // forge-lint: disable-next-line(unsafe-typecast)
        if (accept) d.acceptedCount += uint64(n);
    }

    /// @notice Publish a Datanet version: a Merkle root committing to its first `contributionCount` accepted
    /// contributions. Owner only. Versions number from 1.
    /// @param root the Merkle root of the version's contributions (built off-chain; see the daemon)
    /// @param contributionCount_ how many accepted contributions the version covers
    /// @param uri where the version's manifest (the leaves) can be fetched
    /// @return version the new version number
    function publishVersion(uint256 datanetId, bytes32 root, uint64 contributionCount_, string calldata uri)
        external
        returns (uint64 version)
    {
        Datanet storage d = _onlyDatanetOwner(datanetId);
        if (root == bytes32(0)) revert ZeroHash();
        if (contributionCount_ == 0 || contributionCount_ > d.acceptedCount) {
            revert InvalidVersionCount(contributionCount_, d.acceptedCount);
        }
        version = ++d.versionCount;
        versionRoot[datanetId][version] = root;
        emit DatanetVersionPublished(datanetId, version, root, contributionCount_, uri);
    }

    // =====================================================================
    // Models, adapters, agents
    // =====================================================================

    /// @notice Register a model trained on exact Datanet versions. The caller becomes its developer and is
    /// paid the developer share of its inference fees.
    /// @return modelId the new model's id
    function registerModel(ModelSpec calldata spec) external returns (uint256 modelId) {
        if (bytes(spec.baseModel).length == 0) revert EmptyURI();
        if (spec.baseModelHash == bytes32(0) || spec.trainingConfigHash == bytes32(0)) revert ZeroHash();
        uint256 n = spec.datanetIds.length;
        if (n != spec.datanetVersions.length) revert LengthMismatch(n, spec.datanetVersions.length);
        bytes32[] memory roots = new bytes32[](n);
        for (uint256 i; i < n; ++i) {
            bytes32 root = versionRoot[spec.datanetIds[i]][spec.datanetVersions[i]];
            if (root == bytes32(0)) revert UnknownDatanetVersion(spec.datanetIds[i], spec.datanetVersions[i]);
            roots[i] = root;
        }
        modelId = ++modelCount;
        _models[modelId].developer = msg.sender;
        emit ModelRegistered(
            modelId,
            msg.sender,
            spec.baseModel,
            spec.baseModelHash,
            spec.datanetIds,
            spec.datanetVersions,
            roots,
            spec.trainingConfigHash,
            spec.metadataURI
        );
    }

    /// @notice Hand a model (and its future developer fees) to another account. Developer only.
    function transferModel(uint256 modelId, address newDeveloper) external {
        _onlyModelDeveloper(modelId);
        if (newDeveloper == address(0)) revert ZeroAddress();
        _models[modelId].developer = newDeveloper;
        emit ModelDeveloperTransferred(modelId, msg.sender, newDeveloper);
    }

    /// @notice Publish a new LoRA adapter version for a model. Developer only. Versions number from 1.
    /// @param contentHash hash of the adapter weights file
    /// @param uri where the weights can be fetched
    /// @return adapterId the adapter's global id
    /// @return version its version within the model
    function publishAdapter(uint256 modelId, bytes32 contentHash, string calldata uri)
        external
        returns (uint256 adapterId, uint64 version)
    {
        Model storage m = _onlyModelDeveloper(modelId);
        if (contentHash == bytes32(0)) revert ZeroHash();
        if (bytes(uri).length == 0) revert EmptyURI();
        version = ++m.adapterCount;
        adapterId = ++adapterCount;
        // casting is safe: the model exists, so its id <= modelCount
        // forge-lint: disable-next-line(unsafe-typecast)
        _adapters[adapterId] = Adapter({modelId: uint64(modelId), version: version, contentHash: contentHash});
        emit AdapterPublished(adapterId, modelId, version, contentHash, uri);
    }

    /// @notice Register an agent serving `modelId`, owned by the caller and run by `operator` (who stakes for it).
    /// @return agentId the new agent's id
    function registerAgent(uint256 modelId, address operator, string calldata metadataURI)
        external
        returns (uint256 agentId)
    {
        if (_models[modelId].developer == address(0)) revert UnknownModel(modelId);
        if (operator == address(0)) revert ZeroAddress();
        agentId = ++agentCount;
        // casting is safe: the model exists, so its id <= modelCount
        // forge-lint: disable-next-line(unsafe-typecast)
        _agents[agentId] = Agent({owner: msg.sender, modelId: uint64(modelId), operator: operator});
        emit AgentRegistered(agentId, modelId, msg.sender, operator, metadataURI);
    }

    /// @notice Change an agent's operator. Agent owner only. Stake already posted stays with whoever posted it.
    function setAgentOperator(uint256 agentId, address operator) external {
        Agent storage a = _agents[agentId];
        if (a.owner == address(0)) revert UnknownAgent(agentId);
        if (a.owner != msg.sender) revert NotAgentOwner(agentId, msg.sender);
        if (operator == address(0)) revert ZeroAddress();
        address previous = a.operator;
        a.operator = operator;
        emit AgentOperatorChanged(agentId, previous, operator);
    }

    // =====================================================================
    // Governance
    // =====================================================================

    /// @notice Set the Datanet registration fee (OPEN wei). Governance only.
    function setDatanetFee(uint256 newFee) external onlyRole(DEFAULT_ADMIN_ROLE) {
        emit DatanetFeeSet(datanetFee, newFee);
        datanetFee = newFee;
    }

    /// @notice Set the fee receiver. Governance only.
    function setTreasury(address newTreasury) external onlyRole(DEFAULT_ADMIN_ROLE) {
        if (newTreasury == address(0)) revert ZeroAddress();
        emit TreasurySet(treasury, newTreasury);
        treasury = newTreasury;
    }

    // =====================================================================
    // Views
    // =====================================================================

    /// @notice A Datanet's state (owner is zero for an unknown id).
    function datanet(uint256 datanetId) external view returns (Datanet memory) {
        return _datanets[datanetId];
    }

    /// @notice A contribution's state (status None for an unknown id).
    function contribution(uint256 contributionId) external view returns (Contribution memory) {
        return _contributions[contributionId];
    }

    /// @notice A model's state (developer is zero for an unknown id).
    function model(uint256 modelId) external view returns (Model memory) {
        return _models[modelId];
    }

    /// @notice An adapter's state (modelId is zero for an unknown id).
    function adapter(uint256 adapterId) external view returns (Adapter memory) {
        return _adapters[adapterId];
    }

    /// @notice An agent's state (owner is zero for an unknown id).
    function agent(uint256 agentId) external view returns (Agent memory) {
        return _agents[agentId];
    }

    /// @inheritdoc IModelRegistry
    function modelDeveloper(uint256 modelId) external view returns (address) {
        return _models[modelId].developer;
    }

    /// @inheritdoc IAgentRegistry
    function agentOperator(uint256 agentId) external view returns (address) {
        return _agents[agentId].operator;
    }

    /// @notice The EIP-712 domain separator used by `contributeWithSig`.
    function DOMAIN_SEPARATOR() external view returns (bytes32) {
        return _domainSeparatorV4();
    }

    // ---- internal checks ----

    function _datanet(uint256 datanetId) internal view returns (Datanet storage d) {
        d = _datanets[datanetId];
        if (d.owner == address(0)) revert UnknownDatanet(datanetId);
    }

    function _onlyDatanetOwner(uint256 datanetId) internal view returns (Datanet storage d) {
        d = _datanet(datanetId);
        if (d.owner != msg.sender) revert NotDatanetOwner(datanetId, msg.sender);
    }

    function _onlyCurator(uint256 datanetId) internal view returns (Datanet storage d) {
        d = _datanet(datanetId);
        if (d.owner != msg.sender && !isCurator[datanetId][msg.sender]) revert NotCurator(datanetId, msg.sender);
    }

    function _onlyModelDeveloper(uint256 modelId) internal view returns (Model storage m) {
        m = _models[modelId];
        if (m.developer == address(0)) revert UnknownModel(modelId);
        if (m.developer != msg.sender) revert NotModelDeveloper(modelId, msg.sender);
    }
}

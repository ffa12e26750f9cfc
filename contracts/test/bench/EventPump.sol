// SPDX-License-Identifier: Apache-2.0
pragma solidity 0.8.30;

import {FeeRouter} from "../../src/FeeRouter.sol";
import {OpenToken} from "../../src/OpenToken.sol";
import {Registry} from "../../src/Registry.sol";

/// @notice Benchmark helper (scripts/bench-indexer.sh): makes the suite's contracts emit many events per
/// transaction, so a local chain holds 100k+ mixed events quickly. Never deployed outside benchmarks.
contract EventPump {
    OpenToken public immutable token;
    Registry public immutable registry;
    FeeRouter public immutable router;
    uint256 public datanetId;
    uint256 public modelId;
    uint256 public nextContent;
    uint256 public nextRequest;
    uint256 public nextReviewed;

    constructor(OpenToken token_, Registry registry_, FeeRouter router_) {
        token = token_;
        registry = registry_;
        router = router_;
    }

    /// @notice A Datanet owned by this pump (so it curates), one published version, and a model on it.
    /// Fund the pump with OPEN first.
    function setup() external {
        token.approve(address(registry), type(uint256).max);
        token.approve(address(router), type(uint256).max);
        datanetId = registry.createDatanet("bench://datanet", new string[](0), false, new address[](0));
        uint256 first = registry.contribute(datanetId, keccak256("bench-0"), "bench://0");
        uint256[] memory ids = new uint256[](1);
        ids[0] = first;
        registry.reviewContributions(datanetId, ids, true);
        nextReviewed = first + 1;
        registry.publishVersion(datanetId, keccak256("bench-v1"), 1, "bench://v1");
        uint256[] memory dns = new uint256[](1);
        dns[0] = datanetId;
        uint64[] memory vs = new uint64[](1);
        vs[0] = 1;
        modelId = registry.registerModel(
            Registry.ModelSpec("bench-base", keccak256("base"), dns, vs, keccak256("cfg"), "bench://model")
        );
        nextContent = 1;
    }

    /// @notice `n` ContributionSubmitted events.
    function contribute(uint256 n) external {
        uint256 c = nextContent;
        for (uint256 i; i < n; ++i) {
            registry.contribute(datanetId, keccak256(abi.encode("bench", c + i)), "bench://row");
        }
        nextContent = c + n;
    }

    /// @notice Accept the next `n` pending contributions: `n` ContributionReviewed events.
    function review(uint256 n) external {
        uint256[] memory ids = new uint256[](n);
        for (uint256 i; i < n; ++i) {
            ids[i] = nextReviewed + i;
        }
        nextReviewed += n;
        registry.reviewContributions(datanetId, ids, true);
    }

    /// @notice `n` paid inferences: InferencePaid plus the token Transfers of each split (5 events each).
    function pay(uint256 n, uint256 amount) external {
        uint256 r = nextRequest;
        for (uint256 i; i < n; ++i) {
            router.payInference(modelId, bytes32(r + i), amount);
        }
        nextRequest = r + n;
    }

    /// @notice `n` token Transfer events to distinct accounts.
    function scatter(uint256 n, uint256 amount) external {
        for (uint256 i; i < n; ++i) {
            require(
                token.transfer(address(uint160(uint256(keccak256(abi.encode(block.number, i))))), amount), "transfer"
            );
        }
    }
}

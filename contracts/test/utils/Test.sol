// SPDX-License-Identifier: Apache-2.0
pragma solidity 0.8.30;

import {vm} from "./Vm.sol";

/// @notice Minimal base for forge tests: the cheatcodes plus the fuzz/invariant helpers forge looks up by name.
abstract contract Test {
    bool public constant IS_TEST = true;

    struct FuzzSelector {
        address addr;
        bytes4[] selectors;
    }

    address[] internal _targetContracts;
    FuzzSelector[] internal _targetSelectors;

    /// @dev forge calls these to choose what an invariant campaign may call.
    function targetContracts() public view returns (address[] memory) {
        return _targetContracts;
    }

    function targetSelectors() public view returns (FuzzSelector[] memory) {
        return _targetSelectors;
    }

    function _targetContract(address target) internal {
        _targetContracts.push(target);
    }

    function _targetSelector(address target, bytes4[] memory selectors) internal {
        _targetSelectors.push(FuzzSelector({addr: target, selectors: selectors}));
    }

    /// @dev Map `x` into [min, max] without rejecting fuzz inputs (as forge-std's `bound`).
    function bound(uint256 x, uint256 min, uint256 max) internal pure returns (uint256) {
        require(min <= max, "bound: min > max");
        uint256 size = max - min;
        if (size == type(uint256).max) return x;
        return min + (x % (size + 1));
    }

    function makeAddr(string memory name) internal returns (address a) {
        a = vm.addr(uint256(keccak256(bytes(name))));
        vm.label(a, name);
    }

    function makeKey(string memory name) internal returns (address a, uint256 key) {
        key = uint256(keccak256(bytes(name)));
        a = vm.addr(key);
        vm.label(a, name);
    }
}

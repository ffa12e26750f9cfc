// SPDX-License-Identifier: Apache-2.0
pragma solidity 0.8.30;

/// @notice forge's console.log (the precompile-like address forge intercepts), for benchmark output only.
library Console {
    address internal constant CONSOLE = 0x000000000000000000636F6e736F6c652e6c6f67;

    function log(string memory label, uint256 value) internal view {
        bytes memory payload = abi.encodeWithSignature("log(string,uint256)", label, value);
        // forge answers this staticcall itself; on a real chain it is a call to an empty account
        (bool ok,) = CONSOLE.staticcall(payload);
        ok;
    }
}

// SPDX-License-Identifier: MIT
pragma solidity ^0.8.24;

import {IERC1271} from "@openzeppelin/contracts/interfaces/IERC1271.sol";
import {ECDSA} from "@openzeppelin/contracts/utils/cryptography/ECDSA.sol";

/// @title OwnedWallet
/// @notice A smart-contract wallet with one owning key, as smart accounts with a single signer are: a
///         signature is the wallet's when its owner made it (ERC-1271). A fixture of the daemon's sign-in
///         tests (daemon/tests/flow.rs), never deployed by the suite.
contract OwnedWallet is IERC1271 {
    /// @notice The key whose signatures are the wallet's.
    address public immutable owner;

    /// @param owner_ The key whose signatures the wallet accepts.
    constructor(address owner_) {
        owner = owner_;
    }

    /// @notice ERC-1271: whether `signature` over `hash` is the wallet's (the owner's ECDSA signature).
    /// @param hash The signed digest.
    /// @param signature A 65-byte ECDSA signature.
    /// @return magicValue `IERC1271.isValidSignature.selector` when valid, `0xffffffff` otherwise.
    function isValidSignature(bytes32 hash, bytes calldata signature) external view returns (bytes4 magicValue) {
        (address signer, ECDSA.RecoverError err,) = ECDSA.tryRecover(hash, signature);
        return
            err == ECDSA.RecoverError.NoError && signer == owner ? this.isValidSignature.selector : bytes4(0xffffffff);
    }
}

// SPDX-License-Identifier: Apache-2.0
pragma solidity 0.8.30;

/// @notice The part of the Registry that FeeRouter reads.
interface IModelRegistry {
    /// @notice The developer paid for `modelId`'s inferences; zero for an unknown model.
    function modelDeveloper(uint256 modelId) external view returns (address);
}

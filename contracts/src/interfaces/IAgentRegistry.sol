// SPDX-License-Identifier: Apache-2.0
pragma solidity 0.8.30;

/// @notice The part of the Registry that Staking reads.
interface IAgentRegistry {
    /// @notice The operator of `agentId`; zero for an unknown agent.
    function agentOperator(uint256 agentId) external view returns (address);
}

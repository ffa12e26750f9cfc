// SPDX-License-Identifier: Apache-2.0
pragma solidity 0.8.30;

import {ERC20} from "@openzeppelin/contracts/token/ERC20/ERC20.sol";
import {ERC20Burnable} from "@openzeppelin/contracts/token/ERC20/extensions/ERC20Burnable.sol";
import {ERC20Permit} from "@openzeppelin/contracts/token/ERC20/extensions/ERC20Permit.sol";
import {ERC20Votes} from "@openzeppelin/contracts/token/ERC20/extensions/ERC20Votes.sol";
import {Nonces} from "@openzeppelin/contracts/utils/Nonces.sol";

/// @title OPEN, the OpenLedger token
/// @notice Fixed supply of exactly 1,000,000,000 OPEN, minted once at deployment to an allocation list.
/// There is no mint function; supply only falls, through burns (fee burns and slashing).
/// Votes follow ERC20Votes: a holder has no voting power until it delegates (to itself or another).
contract OpenToken is ERC20, ERC20Permit, ERC20Votes, ERC20Burnable {
    /// @notice The whole supply, in wei (18 decimals).
    uint256 public constant TOTAL_SUPPLY = 1_000_000_000 ether;

    /// @notice One line of the genesis allocation.
    struct Allocation {
        address recipient;
        uint256 amount;
        string label;
    }

    /// @notice One genesis allocation was minted.
    event Allocated(address indexed recipient, uint256 amount, string label);

    error EmptyAllocation();
    error ZeroAllocationRecipient(uint256 index);
    error ZeroAllocationAmount(uint256 index);
    /// @notice The allocations do not add up to exactly TOTAL_SUPPLY.
    error AllocationSumMismatch(uint256 sum, uint256 expected);

    /// @param allocations recipients of the whole supply (ecosystem, team, investors, liquidity, treasury...);
    /// the amounts must sum to exactly TOTAL_SUPPLY.
    constructor(Allocation[] memory allocations) ERC20("OpenLedger", "OPEN") ERC20Permit("OpenLedger") {
        uint256 n = allocations.length;
        if (n == 0) revert EmptyAllocation();
        uint256 sum = 0;
        for (uint256 i; i < n; ++i) {
            Allocation memory a = allocations[i];
            if (a.recipient == address(0)) revert ZeroAllocationRecipient(i);
            if (a.amount == 0) revert ZeroAllocationAmount(i);
            sum += a.amount;
            _mint(a.recipient, a.amount);
            emit Allocated(a.recipient, a.amount, a.label);
        }
        if (sum != TOTAL_SUPPLY) revert AllocationSumMismatch(sum, TOTAL_SUPPLY);
    }

    function _update(address from, address to, uint256 value) internal override(ERC20, ERC20Votes) {
        super._update(from, to, value);
    }

    /// @inheritdoc ERC20Permit
    function nonces(address owner) public view override(ERC20Permit, Nonces) returns (uint256) {
        return super.nonces(owner);
    }
}

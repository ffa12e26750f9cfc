// SPDX-License-Identifier: Apache-2.0
pragma solidity 0.8.30;

import {OpenToken} from "../src/OpenToken.sol";
import {Fixture} from "./utils/Fixture.sol";
import {vm} from "./utils/Vm.sol";

contract OpenTokenTest is Fixture {
    bytes32 internal constant PERMIT_TYPEHASH =
        keccak256("Permit(address owner,address spender,uint256 value,uint256 nonce,uint256 deadline)");

    function test_genesisSupplyAndAllocations() public view {
        vm.assertEq(token.totalSupply(), 1_000_000_000 ether, "supply");
        vm.assertEq(token.TOTAL_SUPPLY(), 1_000_000_000 ether, "constant");
        vm.assertEq(token.balanceOf(address(timelock)), 100_000_000 ether, "treasury 10%");
        vm.assertEq(token.balanceOf(HOLDER), 900_000_000 ether, "the rest to the dev holder");
        vm.assertEq(token.name(), "OpenLedger", "name");
        vm.assertEq(token.symbol(), "OPEN", "symbol");
        vm.assertEq(token.decimals(), 18, "decimals");
    }

    function test_constructorEmitsAllocated() public {
        OpenToken.Allocation[] memory a = new OpenToken.Allocation[](2);
        a[0] = OpenToken.Allocation(alice, 400_000_000 ether, "team");
        a[1] = OpenToken.Allocation(bob, 600_000_000 ether, "community");
        vm.expectEmit();
        emit OpenToken.Allocated(alice, 400_000_000 ether, "team");
        vm.expectEmit();
        emit OpenToken.Allocated(bob, 600_000_000 ether, "community");
        OpenToken t = new OpenToken(a);
        vm.assertEq(t.balanceOf(bob), 600_000_000 ether, "bob");
    }

    function test_revert_allocationSumMismatch() public {
        OpenToken.Allocation[] memory a = new OpenToken.Allocation[](1);
        a[0] = OpenToken.Allocation(alice, 1_000_000_000 ether - 1, "all but one wei");
        vm.expectRevert(abi.encodeWithSelector(OpenToken.AllocationSumMismatch.selector, 1_000_000_000 ether - 1, 1e27));
        new OpenToken(a);
    }

    function test_revert_emptyAllocation() public {
        vm.expectRevert(OpenToken.EmptyAllocation.selector);
        new OpenToken(new OpenToken.Allocation[](0));
    }

    function test_revert_zeroRecipientOrAmount() public {
        OpenToken.Allocation[] memory a = new OpenToken.Allocation[](2);
        a[0] = OpenToken.Allocation(alice, 1e27, "x");
        a[1] = OpenToken.Allocation(address(0), 0, "y");
        vm.expectRevert(abi.encodeWithSelector(OpenToken.ZeroAllocationRecipient.selector, 1));
        new OpenToken(a);
        a[1] = OpenToken.Allocation(bob, 0, "y");
        vm.expectRevert(abi.encodeWithSelector(OpenToken.ZeroAllocationAmount.selector, 1));
        new OpenToken(a);
    }

    function test_noMintFunction() public {
        (bool ok,) = address(token).call(abi.encodeWithSignature("mint(address,uint256)", alice, 1));
        vm.assertFalse(ok, "mint must not exist");
        vm.assertEq(token.totalSupply(), 1e27, "supply unchanged");
    }

    function test_burnLowersSupply() public {
        _fund(alice, 100 ether);
        vm.prank(alice);
        token.burn(40 ether);
        vm.assertEq(token.totalSupply(), 1e27 - 40 ether, "supply");
        vm.assertEq(token.balanceOf(alice), 60 ether, "balance");
    }

    function test_votesNeedDelegation() public {
        _fund(alice, 1000 ether);
        vm.assertEq(token.getVotes(alice), 0, "no votes before delegating");
        vm.prank(alice);
        token.delegate(alice);
        vm.assertEq(token.getVotes(alice), 1000 ether, "votes after self-delegation");
        vm.prank(alice);
        vm.assertTrue(token.transfer(bob, 300 ether), "transfer");
        vm.assertEq(token.getVotes(alice), 700 ether, "votes follow balance");
    }

    function testFuzz_permit(uint256 pk, uint256 value, uint256 deadlineOffset) public {
        pk = bound(pk, 1, 0xfffffffffffffffffffffffffffffffebaaedce6af48a03bbfd25e8cd0364140);
        deadlineOffset = bound(deadlineOffset, 0, 365 days);
        address owner = vm.addr(pk);
        uint256 deadline = block.timestamp + deadlineOffset;
        bytes32 digest = keccak256(
            abi.encodePacked(
                "\x19\x01",
                token.DOMAIN_SEPARATOR(),
                keccak256(abi.encode(PERMIT_TYPEHASH, owner, bob, value, token.nonces(owner), deadline))
            )
        );
        (uint8 v, bytes32 r, bytes32 s) = vm.sign(pk, digest);
        token.permit(owner, bob, value, deadline, v, r, s);
        vm.assertEq(token.allowance(owner, bob), value, "allowance");
        vm.assertEq(token.nonces(owner), 1, "nonce used");
        vm.expectRevert(); // replay: the nonce moved on, so the signer recovers to someone else
        token.permit(owner, bob, value, deadline, v, r, s);
    }
}

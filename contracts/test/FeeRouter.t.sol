// SPDX-License-Identifier: Apache-2.0
pragma solidity 0.8.30;

import {IAccessControl} from "@openzeppelin/contracts/access/IAccessControl.sol";
import {FeeRouter} from "../src/FeeRouter.sol";
import {IModelRegistry} from "../src/interfaces/IModelRegistry.sol";
import {Fixture} from "./utils/Fixture.sol";
import {vm} from "./utils/Vm.sol";

contract FeeRouterTest is Fixture {
    bytes32 internal constant PERMIT_TYPEHASH =
        keccak256("Permit(address owner,address spender,uint256 value,uint256 nonce,uint256 deadline)");

    bytes32 internal constant REQ = "r";

    uint256 internal modelId;
    address internal developer;

    function setUp() public override {
        super.setUp();
        developer = makeAddr("developer");
        (modelId,) = _model(developer);
        _fund(alice, 1_000_000 ether);
        vm.prank(alice);
        token.approve(address(feeRouter), type(uint256).max);
    }

    function test_payInference_splitsAndEmits() public {
        uint256 supply = token.totalSupply();
        uint256 treasury0 = token.balanceOf(address(timelock));
        // local config: burn 10%, developer 40%, treasury 10%, pool 40%
        vm.expectEmit(address(feeRouter));
        emit FeeRouter.InferencePaid(
            alice, modelId, "req-1", 100 ether, developer, 10 ether, 40 ether, 10 ether, 40 ether
        );
        vm.prank(alice);
        feeRouter.payInference(modelId, "req-1", 100 ether);
        vm.assertEq(supply - token.totalSupply(), 10 ether, "burned");
        vm.assertEq(token.balanceOf(developer), 40 ether, "developer");
        vm.assertEq(token.balanceOf(address(timelock)) - treasury0, 10 ether, "treasury");
        vm.assertEq(token.balanceOf(address(distributor)), 40 ether, "pool");
        vm.assertEq(token.balanceOf(address(feeRouter)), 0, "nothing parked in the router");
        vm.assertTrue(feeRouter.paid(alice, "req-1"), "request recorded");
    }

    function test_payInference_reverts() public {
        vm.startPrank(alice);
        vm.expectRevert(FeeRouter.ZeroAmount.selector);
        feeRouter.payInference(modelId, "r", 0);
        vm.expectRevert(abi.encodeWithSelector(FeeRouter.UnknownModel.selector, 404));
        feeRouter.payInference(404, "r", 1 ether);
        feeRouter.payInference(modelId, "r", 1 ether);
        vm.expectRevert(abi.encodeWithSelector(FeeRouter.RequestAlreadyPaid.selector, alice, REQ));
        feeRouter.payInference(modelId, "r", 1 ether);
        vm.stopPrank();
        // the same requestId from another payer is a different request
        _fund(bob, 1 ether);
        vm.startPrank(bob);
        token.approve(address(feeRouter), 1 ether);
        feeRouter.payInference(modelId, "r", 1 ether);
        vm.stopPrank();
        // without allowance nothing moves and the request stays unpaid
        _fund(carol, 1 ether);
        vm.prank(carol);
        vm.expectRevert();
        feeRouter.payInference(modelId, "r", 1 ether);
        vm.assertFalse(feeRouter.paid(carol, "r"), "not recorded");
        vm.assertEq(token.balanceOf(carol), 1 ether, "untouched");
    }

    function testFuzz_partsSumToFee(uint256 amount, uint16 b, uint16 d, uint16 t) public {
        amount = bound(amount, 1, 1_000_000 ether);
        b = uint16(bound(b, 0, 10_000));
        d = uint16(bound(d, 0, 10_000 - b));
        t = uint16(bound(t, 0, 10_000 - b - d));
        uint16 p = 10_000 - b - d - t;
        vm.prank(address(timelock));
        feeRouter.setSplit(FeeRouter.Split(b, d, t, p));

        uint256[5] memory before = _balances();
        vm.prank(alice);
        feeRouter.payInference(modelId, keccak256(abi.encode(amount)), amount);
        uint256[5] memory afterPay = _balances();
        uint256 burned = before[0] - afterPay[0];
        uint256 dev = afterPay[1] - before[1];
        uint256 tr = afterPay[2] - before[2];
        uint256 pool = afterPay[3] - before[3];
        vm.assertEq(burned + dev + tr + pool, amount, "parts sum to the fee");
        vm.assertEq(before[4] - afterPay[4], amount, "payer paid exactly the fee");
        vm.assertEq(burned, amount * b / 10_000, "burn share");
        vm.assertEq(dev, amount * d / 10_000, "developer share");
        vm.assertEq(tr, amount * t / 10_000, "treasury share");
        vm.assertLe(pool - amount * p / 10_000, 3, "pool gets at most the rounding dust");
    }

    /// @dev supply, developer, treasury, pool, payer
    function _balances() internal view returns (uint256[5] memory b) {
        b[0] = token.totalSupply();
        b[1] = token.balanceOf(developer);
        b[2] = token.balanceOf(address(timelock));
        b[3] = token.balanceOf(address(distributor));
        b[4] = token.balanceOf(alice);
    }

    function _permit(uint256 pk, uint256 value, uint256 deadline) internal view returns (uint8, bytes32, bytes32) {
        address owner = vm.addr(pk);
        bytes32 digest = keccak256(
            abi.encodePacked(
                "\x19\x01",
                token.DOMAIN_SEPARATOR(),
                keccak256(abi.encode(PERMIT_TYPEHASH, owner, address(feeRouter), value, token.nonces(owner), deadline))
            )
        );
        return vm.sign(pk, digest);
    }

    function test_payInferenceWithPermit() public {
        (address payer, uint256 pk) = makeKey("payer");
        _fund(payer, 10 ether);
        uint256 deadline = block.timestamp + 1 hours;
        (uint8 v, bytes32 r, bytes32 s) = _permit(pk, 10 ether, deadline);
        vm.prank(payer);
        feeRouter.payInferenceWithPermit(modelId, "p1", 10 ether, deadline, v, r, s);
        vm.assertEq(token.balanceOf(payer), 0, "paid without approve");
        vm.assertEq(token.balanceOf(address(distributor)), 4 ether, "pool share");
    }

    function test_payInferenceWithPermit_frontRunPermitStillPays() public {
        (address payer, uint256 pk) = makeKey("payer");
        _fund(payer, 10 ether);
        uint256 deadline = block.timestamp + 1 hours;
        (uint8 v, bytes32 r, bytes32 s) = _permit(pk, 10 ether, deadline);
        // someone submits the permit first; the payment must still go through
        token.permit(payer, address(feeRouter), 10 ether, deadline, v, r, s);
        vm.prank(payer);
        feeRouter.payInferenceWithPermit(modelId, "p1", 10 ether, deadline, v, r, s);
        vm.assertEq(token.balanceOf(payer), 0, "paid");
    }

    /// Attack: a payer approved FeeRouter for 100 OPEN of future payments; someone relays a 10-OPEN permit
    /// payment of theirs. The standing allowance must only shrink by the payment, not be reset to the permit's value.
    function test_attack_aPermitPaymentKeepsTheStandingAllowance() public {
        (address payer, uint256 pk) = makeKey("payer");
        _fund(payer, 200 ether);
        vm.prank(payer);
        token.approve(address(feeRouter), 100 ether);
        uint256 deadline = block.timestamp + 1 hours;
        (uint8 v, bytes32 r, bytes32 s) = _permit(pk, 10 ether, deadline);
        vm.prank(payer);
        feeRouter.payInferenceWithPermit(modelId, "p1", 10 ether, deadline, v, r, s);
        vm.assertEq(token.allowance(payer, address(feeRouter)), 90 ether, "100 approved, 10 spent");
        vm.assertEq(token.nonces(payer), 0, "the permit was not needed, so not used");
        // below the amount, the permit is what pays
        (v, r, s) = _permit(pk, 95 ether, deadline);
        vm.prank(payer);
        feeRouter.payInferenceWithPermit(modelId, "p2", 95 ether, deadline, v, r, s);
        vm.assertEq(token.allowance(payer, address(feeRouter)), 0, "the permit's 95, spent");
        vm.assertEq(token.balanceOf(payer), 95 ether, "both paid");
    }

    function test_payInferenceWithPermit_badPermitReverts() public {
        (address payer, uint256 pk) = makeKey("payer");
        _fund(payer, 10 ether);
        (uint8 v, bytes32 r, bytes32 s) = _permit(pk, 1 ether, block.timestamp + 1 hours); // too small
        vm.prank(payer);
        vm.expectRevert();
        feeRouter.payInferenceWithPermit(modelId, "p1", 10 ether, block.timestamp + 1 hours, v, r, s);
        vm.assertEq(token.balanceOf(payer), 10 ether, "nothing moved");
    }

    function test_setSplit() public {
        vm.prank(address(timelock));
        vm.expectRevert(abi.encodeWithSelector(FeeRouter.InvalidSplit.selector, 9_999));
        feeRouter.setSplit(FeeRouter.Split(0, 5000, 0, 4999));
        vm.prank(address(timelock));
        vm.expectRevert(abi.encodeWithSelector(FeeRouter.InvalidSplit.selector, 10_001));
        feeRouter.setSplit(FeeRouter.Split(1, 5000, 0, 5000));
        vm.prank(alice);
        vm.expectRevert(
            abi.encodeWithSelector(IAccessControl.AccessControlUnauthorizedAccount.selector, alice, bytes32(0))
        );
        feeRouter.setSplit(FeeRouter.Split(0, 5000, 0, 5000));

        vm.expectEmit(address(feeRouter));
        emit FeeRouter.SplitSet(0, 0, 0, 10_000);
        vm.prank(address(timelock));
        feeRouter.setSplit(FeeRouter.Split(0, 0, 0, 10_000));
        FeeRouter.Split memory s = feeRouter.split();
        vm.assertEq(uint256(s.poolBps), 10_000, "all to the pool");
        vm.prank(alice);
        feeRouter.payInference(modelId, "all-pool", 7 ether);
        vm.assertEq(token.balanceOf(address(distributor)), 7 ether, "pool got everything");
        vm.assertEq(token.balanceOf(developer), 0, "developer got nothing");
    }

    function test_setTreasuryAndPool() public {
        vm.startPrank(address(timelock));
        vm.expectRevert(FeeRouter.ZeroAddress.selector);
        feeRouter.setTreasury(address(0));
        vm.expectRevert(FeeRouter.ZeroAddress.selector);
        feeRouter.setPool(address(0));
        vm.expectEmit(address(feeRouter));
        emit FeeRouter.TreasurySet(address(timelock), carol);
        feeRouter.setTreasury(carol);
        vm.expectEmit(address(feeRouter));
        emit FeeRouter.PoolSet(address(distributor), bob);
        feeRouter.setPool(bob);
        vm.stopPrank();
        vm.prank(alice);
        feeRouter.payInference(modelId, "x", 10 ether);
        vm.assertEq(token.balanceOf(carol), 1 ether, "new treasury");
        vm.assertEq(token.balanceOf(bob), 4 ether, "new pool");
        vm.prank(alice);
        vm.expectRevert(
            abi.encodeWithSelector(IAccessControl.AccessControlUnauthorizedAccount.selector, alice, bytes32(0))
        );
        feeRouter.setPool(alice);
        vm.prank(alice);
        vm.expectRevert(
            abi.encodeWithSelector(IAccessControl.AccessControlUnauthorizedAccount.selector, alice, bytes32(0))
        );
        feeRouter.setTreasury(alice);
    }

    function test_constructorRejectsBadInput() public {
        FeeRouter.Split memory ok = FeeRouter.Split(0, 0, 0, 10_000);
        vm.expectRevert(FeeRouter.ZeroAddress.selector);
        new FeeRouter(token, IModelRegistry(address(0)), alice, alice, alice, ok);
        vm.expectRevert(FeeRouter.ZeroAddress.selector);
        new FeeRouter(token, IModelRegistry(address(registry)), alice, alice, address(0), ok);
        vm.expectRevert(abi.encodeWithSelector(FeeRouter.InvalidSplit.selector, 0));
        new FeeRouter(token, IModelRegistry(address(registry)), alice, alice, alice, FeeRouter.Split(0, 0, 0, 0));
    }
}

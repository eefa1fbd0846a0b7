// SPDX-License-Identifier: Apache-2.0
pragma solidity 0.8.28;

import {TimelockController} from "@openzeppelin/contracts/governance/TimelockController.sol";

/// @title SenkenTimelock
/// @notice OpenZeppelin's TimelockController as is: it owns (is the governance address of)
/// the validator set, the project registry and the credit contract; the Governor is its only
/// proposer and canceller.
contract SenkenTimelock is TimelockController {
    constructor(uint256 minDelay, address[] memory proposers, address[] memory executors, address admin)
        TimelockController(minDelay, proposers, executors, admin)
    {}
}

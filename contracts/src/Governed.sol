// SPDX-License-Identifier: Apache-2.0
pragma solidity 0.8.28;

/// @title Governed
/// @notice One governance address (the DAO's TimelockController once deployed) may call the
/// functions marked `onlyGovernance`. Deployment starts with the deployer as governance, so it
/// can register the first projects, then hands governance to the timelock for good; after that,
/// only a passed and queued proposal can change anything (including a later hand-over).
abstract contract Governed {
    /// @notice The caller is not the governance address.
    error NotGovernance(address caller);
    /// @notice Governance cannot be handed to the zero address (that would freeze the contract).
    error ZeroGovernance();

    event GovernanceTransferred(address indexed previousGovernance, address indexed newGovernance);

    address private _governance;

    constructor(address initialGovernance) {
        if (initialGovernance == address(0)) revert ZeroGovernance();
        _governance = initialGovernance;
        emit GovernanceTransferred(address(0), initialGovernance);
    }

    modifier onlyGovernance() {
        if (msg.sender != _governance) revert NotGovernance(msg.sender);
        _;
    }

    /// @notice The address allowed to change this contract's governed state.
    function governance() public view returns (address) {
        return _governance;
    }

    /// @notice Hand governance to `newGovernance` (in production: only ever to a timelock).
    function transferGovernance(address newGovernance) external onlyGovernance {
        if (newGovernance == address(0)) revert ZeroGovernance();
        emit GovernanceTransferred(_governance, newGovernance);
        _governance = newGovernance;
    }
}

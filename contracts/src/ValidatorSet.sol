// SPDX-License-Identifier: Apache-2.0
pragma solidity 0.8.28;

import {ECDSA} from "@openzeppelin/contracts/utils/cryptography/ECDSA.sol";
import {Governed} from "./Governed.sol";

/// @title ValidatorSet
/// @notice The validators (secp256k1 addresses) and the quorum threshold k that an attestation
/// needs; changed only by governance. Every change bumps `epoch`, so validators and the ledger
/// can tell that the set changed (`validators()` returns members, k and epoch at once).
///
/// Safety rule ("lowers nothing below safety"): after every change, 2k > n (a strict majority
/// of the members must sign, so two conflicting quorums always share an honest member when
/// fewer than half are faulty) and k <= n (a quorum can still be reached). 2k > n implies k >= 1.
///
/// `checkQuorum` does the checks of Chainlink OCR2Aggregator.transmit on a set of signatures
/// over one digest: enough signatures, each a valid low-s secp256k1 signature (OpenZeppelin
/// ECDSA), each by a member, no member twice. It is a view: callers run it before any state
/// change of their own.
contract ValidatorSet is Governed {
    /// @notice Members are tracked in a 256-bit bitmap while checking a quorum.
    uint256 public constant MAX_VALIDATORS = 256;

    error UnknownSigner(address signer);
    error DuplicateSigner(address signer);
    error TooFewSignatures(uint256 got, uint256 needed);
    error TooManySignatures(uint256 got, uint256 members);
    error ThresholdBelowSafety(uint256 threshold, uint256 members);
    error ThresholdAboveMembers(uint256 threshold, uint256 members);
    error TooManyValidators(uint256 members, uint256 max);
    error ZeroValidator();
    error AlreadyValidator(address validator);
    error NotValidator(address validator);

    event ValidatorSetChanged(uint256 indexed epoch, address[] members, uint256 threshold);

    address[] private _members;
    /// 1-based position in _members; 0 for non-members.
    mapping(address => uint256) private _position;
    uint256 private _threshold;
    uint256 private _epoch;

    constructor(address initialGovernance, address[] memory initialMembers, uint256 initialThreshold)
        Governed(initialGovernance)
    {
        for (uint256 i = 0; i < initialMembers.length; ++i) {
            _add(initialMembers[i]);
        }
        _setThreshold(initialThreshold);
        _changed();
    }

    // ----------------------------------------------------------------- governance

    /// @notice Add `validator` and set the threshold to `newThreshold` in one step (adding a
    /// member can make the old k unsafe: with n = 4, k = 3, a fifth member keeps k = 3 safe,
    /// a sixth needs k = 4).
    function addValidator(address validator, uint256 newThreshold) external onlyGovernance {
        _add(validator);
        _setThreshold(newThreshold);
        _changed();
    }

    /// @notice Remove `validator` and set the threshold to `newThreshold`.
    function removeValidator(address validator, uint256 newThreshold) external onlyGovernance {
        uint256 position = _position[validator];
        if (position == 0) revert NotValidator(validator);
        address last = _members[_members.length - 1];
        _members[position - 1] = last;
        _position[last] = position;
        _members.pop();
        delete _position[validator];
        _setThreshold(newThreshold);
        _changed();
    }

    /// @notice Set k; reverts below the safety floor (2k > n) or above n.
    function setThreshold(uint256 newThreshold) external onlyGovernance {
        _setThreshold(newThreshold);
        _changed();
    }

    // ----------------------------------------------------------------- views

    /// @notice The whole set at once: members, threshold k and the epoch (bumped on every
    /// change), for validators to pick changes up.
    function validators()
        external
        view
        returns (address[] memory members, uint256 k, uint256 setEpoch)
    {
        return (_members, _threshold, _epoch);
    }

    function threshold() external view returns (uint256) {
        return _threshold;
    }

    function epoch() external view returns (uint256) {
        return _epoch;
    }

    function memberCount() external view returns (uint256) {
        return _members.length;
    }

    function isValidator(address account) external view returns (bool) {
        return _position[account] != 0;
    }

    /// @notice Revert unless `signatures` hold at least k valid signatures over `digest` by
    /// distinct members, and nothing else (an unknown signer, a duplicate or a malformed or
    /// high-s signature reverts even when k good ones are among them). Returns the epoch the
    /// check was made against.
    function checkQuorum(bytes32 digest, bytes[] calldata signatures)
        external
        view
        returns (uint256)
    {
        uint256 needed = _threshold;
        uint256 count = signatures.length;
        if (count < needed) revert TooFewSignatures(count, needed);
        if (count > _members.length) revert TooManySignatures(count, _members.length);
        uint256 seen;
        for (uint256 i = 0; i < count; ++i) {
            // reverts with ECDSAInvalidSignature / ...Length / ...S(s) for a malformed,
            // high-s or unrecoverable signature
            address signer = ECDSA.recoverCalldata(digest, signatures[i]);
            uint256 position = _position[signer];
            if (position == 0) revert UnknownSigner(signer);
            uint256 bit = 1 << (position - 1);
            if (seen & bit != 0) revert DuplicateSigner(signer);
            seen |= bit;
        }
        return _epoch;
    }

    // ----------------------------------------------------------------- internals

    function _add(address validator) private {
        if (validator == address(0)) revert ZeroValidator();
        if (_position[validator] != 0) revert AlreadyValidator(validator);
        if (_members.length >= MAX_VALIDATORS) {
            revert TooManyValidators(_members.length + 1, MAX_VALIDATORS);
        }
        _members.push(validator);
        _position[validator] = _members.length;
    }

    function _setThreshold(uint256 newThreshold) private {
        uint256 n = _members.length;
        if (2 * newThreshold <= n) revert ThresholdBelowSafety(newThreshold, n);
        if (newThreshold > n) revert ThresholdAboveMembers(newThreshold, n);
        _threshold = newThreshold;
    }

    function _changed() private {
        uint256 next = ++_epoch;
        emit ValidatorSetChanged(next, _members, _threshold);
    }
}

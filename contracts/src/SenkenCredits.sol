// SPDX-License-Identifier: Apache-2.0
pragma solidity 0.8.28;

import {ERC1155} from "@openzeppelin/contracts/token/ERC1155/ERC1155.sol";
import {EIP712} from "@openzeppelin/contracts/utils/cryptography/EIP712.sol";
import {CivilTime} from "./CivilTime.sol";
import {Governed} from "./Governed.sol";
import {ProjectRegistry} from "./ProjectRegistry.sol";
import {ValidatorSet} from "./ValidatorSet.sol";

/// @title SenkenCredits
/// @notice Carbon credits as ERC-1155 tokens, minted from validator-signed attestations.
///
/// * Token id: one per credit batch (project, vintage, methodology), the EIP-712 hashStruct of
///   `CreditBatch(string project,uint16 vintage,string methodology)`; the vintage is the UTC
///   calendar year of the window's start, computed on chain (CivilTime).
/// * Unit: 1 token unit = 1 g CO2e (UNIT_MG = 1000 mg), so 1 credit (1 t CO2e) = 1,000,000
///   units. Attestations carry mg; each batch keeps the mg below one unit as a remainder and
///   carries it into its next mint, so for every batch, at every moment,
///   mintedUnits * UNIT_MG + remainderMg == the sum of the co2eMg of its minted attestations.
/// * Minting takes an attestation and validator signatures over its EIP-712 digest (domain
///   "Senken", "1", this chain, this contract; the struct of senken_core.attestation) and
///   checks, before any state change: not minted yet (by attestation id, the hashStruct of
///   AttestationKey, as in Python), window on its grid and ended, project registered,
///   methodology, version, grid and co2eMg = quantity x grid EF of the governed term in force,
///   then the k-of-n quorum (ValidatorSet.checkQuorum). A second mint of the same attestation
///   id reverts with AlreadyMinted(id): never a silent no-op, so a caller learns it lost a race.
/// * Credits go to the project owner in the ProjectRegistry.
/// * Retirement burns credits and keeps a record (holder, batch, amount, beneficiary, reason,
///   ISO 3166 alpha-2 jurisdiction, time), readable by id, with an event to build a
///   certificate from. Burned credits can never move again.
contract SenkenCredits is ERC1155, EIP712, Governed {
    /// @notice Milligrams CO2e per token unit: 1 token unit = 1 g CO2e.
    uint256 public constant UNIT_MG = 1000;
    /// @notice Token units per credit (1 t CO2e).
    uint256 public constant UNITS_PER_CREDIT = 1_000_000;

    bytes32 public constant ATTESTATION_TYPEHASH = keccak256(
        "Attestation(string project,string device,uint64 windowStart,uint32 windowSeconds,"
        "string methodology,uint32 methodologyVersion,uint32 readingsAccepted,"
        "uint32 readingsRejected,uint64 quantity,uint64 co2eMg,bytes32 readingsRoot,"
        "bytes32 modelHash)"
    );
    bytes32 public constant ATTESTATION_KEY_TYPEHASH = keccak256(
        "AttestationKey(string project,string device,uint64 windowStart,uint32 windowSeconds,"
        "uint32 methodologyVersion)"
    );
    bytes32 public constant CREDIT_BATCH_TYPEHASH =
        keccak256("CreditBatch(string project,uint16 vintage,string methodology)");

    uint256 private constant MAX_BENEFICIARY_BYTES = 256;
    uint256 private constant MAX_REASON_BYTES = 1024;

    /// Field for field senken_core.attestation.Attestation (EIP-712 member order).
    struct Attestation {
        string project;
        string device;
        uint64 windowStart;
        uint32 windowSeconds;
        string methodology;
        uint32 methodologyVersion;
        uint32 readingsAccepted;
        uint32 readingsRejected;
        uint64 quantity;
        uint64 co2eMg;
        bytes32 readingsRoot;
        bytes32 modelHash;
    }

    struct Batch {
        string project;
        uint16 vintage;
        string methodology;
        uint256 mintedUnits; // all units ever minted, retired ones included
        uint256 retiredUnits;
        uint256 remainderMg; // attested mg not yet minted (below one unit), carried forward
    }

    struct Retirement {
        address holder;
        uint64 timestamp;
        bytes2 jurisdiction; // ISO 3166-1 alpha-2
        uint256 tokenId;
        uint256 amount;
        string beneficiary;
        string reason;
    }

    /// One slot per batch, updated once per mint or retirement.
    struct Totals {
        uint104 mintedUnits;
        uint104 retiredUnits;
        uint16 remainderMg;
        bool exists;
    }

    struct BatchName {
        string project;
        uint16 vintage;
        string methodology;
    }

    error AlreadyMinted(bytes32 attestationId);
    error WindowOffGrid(uint64 windowStart, uint32 windowSeconds);
    error WindowNotEnded(uint256 windowEnd, uint256 now_);
    error WindowGridMismatch(uint32 windowSeconds, uint32 projectWindowSeconds);
    error MethodologyMismatch(string methodology);
    error MethodologyVersionMismatch(uint32 version, uint32 versionInForce);
    error Co2eMismatch(uint64 co2eMg, uint256 expectedMg);
    error ZeroAmount();
    error InvalidBeneficiary();
    error ReasonTooLong(uint256 length, uint256 max);
    error InvalidJurisdiction(string jurisdiction);
    error UnknownRetirement(uint256 retirementId);
    error UnknownBatch(uint256 tokenId);

    event BatchCreated(uint256 indexed tokenId, string project, uint16 vintage, string methodology);
    /// Everything a verifier needs about a mint, the full attestation included (its
    /// readingsRoot and modelHash point at the evidence).
    event AttestationMinted(
        bytes32 indexed attestationId,
        uint256 indexed tokenId,
        address indexed owner,
        Attestation attestation,
        uint256 units,
        uint256 remainderMg,
        uint256 validatorEpoch
    );
    event Retired(
        uint256 indexed retirementId,
        address indexed holder,
        uint256 indexed tokenId,
        uint256 amount,
        string beneficiary,
        string reason,
        string jurisdiction,
        uint64 timestamp
    );
    event BaseURIChanged(string baseURI);

    ValidatorSet public immutable validatorSet;
    ProjectRegistry public immutable registry;

    string private _base;
    mapping(bytes32 attestationId => uint256 tokenId) private _mintedIn;
    mapping(uint256 tokenId => Totals) private _totals;
    mapping(uint256 tokenId => BatchName) private _names;
    mapping(uint256 retirementId => Retirement) private _retirements;
    uint256 private _retirementCount;

    constructor(
        address initialGovernance,
        ValidatorSet validatorSet_,
        ProjectRegistry registry_,
        string memory baseURI_
    ) ERC1155("") EIP712("Senken", "1") Governed(initialGovernance) {
        validatorSet = validatorSet_;
        registry = registry_;
        _base = baseURI_;
        emit BaseURIChanged(baseURI_);
    }

    // ----------------------------------------------------------------- minting

    /// @notice Mint the credits of attestation `a` to its project's owner, given validator
    /// signatures (65 bytes r || s || v each) over its EIP-712 digest. Reverts, changing
    /// nothing, on any failed check (see the contract notice); AlreadyMinted(id) on a replay.
    function mint(Attestation calldata a, bytes[] calldata signatures)
        external
        returns (uint256 tokenId, uint256 units)
    {
        bytes32 id = attestationId(a);
        if (_mintedIn[id] != 0) revert AlreadyMinted(id);
        address owner = _checkAgainstRegistry(a);
        uint256 epoch = validatorSet.checkQuorum(attestationDigest(a), signatures);

        // effects (all checks passed); the window has ended, so its year fits in 16 bits
        uint16 vintage = uint16(CivilTime.year(a.windowStart));
        tokenId = batchId(a.project, vintage, a.methodology);
        _mintedIn[id] = tokenId;
        Totals memory totals = _totals[tokenId];
        if (!totals.exists) {
            totals.exists = true;
            _names[tokenId] = BatchName(a.project, vintage, a.methodology);
            emit BatchCreated(tokenId, a.project, vintage, a.methodology);
        }
        uint256 carried = uint256(totals.remainderMg) + a.co2eMg;
        units = carried / UNIT_MG;
        totals.remainderMg = uint16(carried % UNIT_MG);
        totals.mintedUnits += uint104(units);
        _totals[tokenId] = totals;
        emit AttestationMinted(id, tokenId, owner, a, units, totals.remainderMg, epoch);
        if (units != 0) _mint(owner, tokenId, units, "");
    }

    function _checkAgainstRegistry(Attestation calldata a) private view returns (address) {
        if (a.windowSeconds == 0 || a.windowStart % a.windowSeconds != 0) {
            revert WindowOffGrid(a.windowStart, a.windowSeconds);
        }
        uint256 windowEnd = uint256(a.windowStart) + a.windowSeconds;
        if (windowEnd > block.timestamp) revert WindowNotEnded(windowEnd, block.timestamp);
        (address owner, bytes32 methodologyHash, uint32 windowSeconds, ProjectRegistry.Term memory term)
            = registry.mintTerms(a.project, a.windowStart);
        if (a.windowSeconds != windowSeconds) revert WindowGridMismatch(a.windowSeconds, windowSeconds);
        if (keccak256(bytes(a.methodology)) != methodologyHash) revert MethodologyMismatch(a.methodology);
        if (a.methodologyVersion != term.methodologyVersion) {
            revert MethodologyVersionMismatch(a.methodologyVersion, term.methodologyVersion);
        }
        uint256 expected = uint256(a.quantity) * term.gridEfGPerKwh;
        if (a.co2eMg != expected) revert Co2eMismatch(a.co2eMg, expected);
        return owner;
    }

    // ----------------------------------------------------------------- retirement

    /// @notice Burn `amount` units of batch `tokenId` held by the caller, for `beneficiary`
    /// (1-256 bytes), `reason` (up to 1024 bytes) and `jurisdiction` (ISO 3166-1 alpha-2, two
    /// uppercase letters). Returns the retirement id (1, 2, ...).
    function retire(
        uint256 tokenId,
        uint256 amount,
        string calldata beneficiary,
        string calldata reason,
        string calldata jurisdiction
    ) external returns (uint256) {
        return _retire(msg.sender, tokenId, amount, beneficiary, reason, jurisdiction);
    }

    /// @notice `retire` on behalf of `holder`, by the holder or an operator it approved.
    function retireFrom(
        address holder,
        uint256 tokenId,
        uint256 amount,
        string calldata beneficiary,
        string calldata reason,
        string calldata jurisdiction
    ) external returns (uint256) {
        if (holder != msg.sender && !isApprovedForAll(holder, msg.sender)) {
            revert ERC1155MissingApprovalForAll(msg.sender, holder);
        }
        return _retire(holder, tokenId, amount, beneficiary, reason, jurisdiction);
    }

    function _retire(
        address holder,
        uint256 tokenId,
        uint256 amount,
        string calldata beneficiary,
        string calldata reason,
        string calldata jurisdiction
    ) private returns (uint256 retirementId) {
        if (amount == 0) revert ZeroAmount();
        uint256 beneficiaryLength = bytes(beneficiary).length;
        if (beneficiaryLength == 0 || beneficiaryLength > MAX_BENEFICIARY_BYTES) {
            revert InvalidBeneficiary();
        }
        if (bytes(reason).length > MAX_REASON_BYTES) {
            revert ReasonTooLong(bytes(reason).length, MAX_REASON_BYTES);
        }
        bytes2 code = _jurisdiction(jurisdiction);
        // reverts ERC1155InsufficientBalance(holder, balance, amount, tokenId) when short
        _burn(holder, tokenId, amount);
        _totals[tokenId].retiredUnits += uint104(amount);
        retirementId = ++_retirementCount;
        _retirements[retirementId] = Retirement({
            holder: holder,
            timestamp: uint64(block.timestamp),
            jurisdiction: code,
            tokenId: tokenId,
            amount: amount,
            beneficiary: beneficiary,
            reason: reason
        });
        emit Retired(
            retirementId, holder, tokenId, amount, beneficiary, reason, jurisdiction,
            uint64(block.timestamp)
        );
    }

    function _jurisdiction(string calldata jurisdiction) private pure returns (bytes2) {
        bytes calldata code = bytes(jurisdiction);
        if (code.length != 2 || code[0] < "A" || code[0] > "Z" || code[1] < "A" || code[1] > "Z") {
            revert InvalidJurisdiction(jurisdiction);
        }
        return bytes2(code);
    }

    // ----------------------------------------------------------------- governance

    /// @notice Metadata lives at `<base>batches/<id>` and `<base>attestations/<id>`.
    function setBaseURI(string calldata baseURI_) external onlyGovernance {
        _base = baseURI_;
        emit BaseURIChanged(baseURI_);
    }

    // ----------------------------------------------------------------- views

    /// @notice The attestation id: hashStruct(AttestationKey), as Attestation.id() in Python.
    function attestationId(Attestation calldata a) public pure returns (bytes32) {
        return keccak256(
            abi.encode(
                ATTESTATION_KEY_TYPEHASH,
                keccak256(bytes(a.project)),
                keccak256(bytes(a.device)),
                a.windowStart,
                a.windowSeconds,
                a.methodologyVersion
            )
        );
    }

    /// @notice The EIP-712 digest validators sign (Attestation.digest(senken_domain(...))).
    function attestationDigest(Attestation calldata a) public view returns (bytes32) {
        bytes32 structHash = keccak256(
            bytes.concat(
                abi.encode(
                    ATTESTATION_TYPEHASH,
                    keccak256(bytes(a.project)),
                    keccak256(bytes(a.device)),
                    a.windowStart,
                    a.windowSeconds,
                    keccak256(bytes(a.methodology)),
                    a.methodologyVersion
                ),
                abi.encode(
                    a.readingsAccepted, a.readingsRejected, a.quantity, a.co2eMg, a.readingsRoot,
                    a.modelHash
                )
            )
        );
        return _hashTypedDataV4(structHash);
    }

    function domainSeparator() external view returns (bytes32) {
        return _domainSeparatorV4();
    }

    /// @notice The token id of a batch: hashStruct(CreditBatch{project, vintage, methodology}).
    function batchId(string calldata project, uint16 vintage, string calldata methodology)
        public
        pure
        returns (uint256)
    {
        return uint256(
            keccak256(
                abi.encode(
                    CREDIT_BATCH_TYPEHASH,
                    keccak256(bytes(project)),
                    uint256(vintage),
                    keccak256(bytes(methodology))
                )
            )
        );
    }

    /// @notice The batch an attestation id was minted into, 0 if it was never minted.
    function mintedIn(bytes32 attestationId_) external view returns (uint256) {
        return _mintedIn[attestationId_];
    }

    function batch(uint256 tokenId) external view returns (Batch memory) {
        Totals memory totals = _totals[tokenId];
        if (!totals.exists) revert UnknownBatch(tokenId);
        BatchName storage name = _names[tokenId];
        return Batch(
            name.project, name.vintage, name.methodology, totals.mintedUnits, totals.retiredUnits,
            totals.remainderMg
        );
    }

    /// @notice Attested mg of batch `tokenId` not yet minted as a whole unit (< UNIT_MG).
    function remainderMg(uint256 tokenId) external view returns (uint256) {
        return _totals[tokenId].remainderMg;
    }

    function retirement(uint256 retirementId) external view returns (Retirement memory) {
        if (retirementId == 0 || retirementId > _retirementCount) {
            revert UnknownRetirement(retirementId);
        }
        return _retirements[retirementId];
    }

    function retirementCount() external view returns (uint256) {
        return _retirementCount;
    }

    function baseURI() external view returns (string memory) {
        return _base;
    }

    /// @notice ERC-1155 metadata of batch `tokenId`: `<base>batches/<64 hex digits>`; the
    /// document there lists the batch's attestations (see attestationURI) and their evidence.
    function uri(uint256 tokenId) public view override returns (string memory) {
        return string.concat(_base, "batches/", _hex(bytes32(tokenId)));
    }

    /// @notice Where an attestation and its evidence (readings, Merkle proofs) are published.
    function attestationURI(bytes32 attestationId_) external view returns (string memory) {
        return string.concat(_base, "attestations/", _hex(attestationId_));
    }

    /// @notice The credit vintage of a window starting at `timestamp`: its UTC year.
    function vintageOf(uint64 timestamp) external pure returns (uint256) {
        return CivilTime.year(timestamp);
    }

    /// @notice The UTC calendar date of `timestamp`.
    function utcDate(uint64 timestamp)
        external
        pure
        returns (uint256 year, uint256 month, uint256 day)
    {
        return CivilTime.date(timestamp);
    }

    function _hex(bytes32 value) private pure returns (string memory) {
        bytes memory digits = "0123456789abcdef";
        bytes memory out = new bytes(64);
        for (uint256 i = 0; i < 32; ++i) {
            uint8 b = uint8(value[i]);
            out[2 * i] = digits[b >> 4];
            out[2 * i + 1] = digits[b & 0x0f];
        }
        return string(out);
    }
}

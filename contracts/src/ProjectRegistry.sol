// SPDX-License-Identifier: Apache-2.0
pragma solidity 0.8.28;

import {Governed} from "./Governed.sol";

/// @title ProjectRegistry
/// @notice The governed project registry: for each project id (the string validators put in
/// attestations) its owner (who receives minted credits), its methodology, its window grid and
/// its methodology terms.
///
/// A methodology term is (methodology version, grid emission factor in g CO2/kWh, effective
/// from): the term in force for a window is the last one whose `effectiveFrom` is at or before
/// the window's start. Every window thus has exactly one methodology version, so exactly one
/// attestation id (the id includes the version), and a window can never be credited twice
/// under two versions. A new term must take effect no earlier than the block that adds it:
/// windows are minted only once ended, so no window under a new term can have been minted
/// before that term existed. Terms are append-only; versions and start times strictly increase.
contract ProjectRegistry is Governed {
    /// @notice Same bound as senken_core.methodology.GridExportAmsID.
    uint32 public constant MAX_GRID_EF_G_PER_KWH = 10_000;

    struct Term {
        uint32 methodologyVersion;
        uint32 gridEfGPerKwh;
        uint64 effectiveFrom; // Unix seconds: applies to windows starting at or after this
    }

    struct Project {
        address owner;
        uint32 windowSeconds;
        bool registered;
        bytes32 methodologyHash; // keccak256 of the methodology name
        string methodology; // e.g. "CDM AMS-I.D"
    }

    error InvalidProjectId(string projectId);
    error ProjectExists(string projectId);
    error UnknownProject(string projectId);
    error ZeroOwner();
    error InvalidMethodology();
    error InvalidWindowSeconds(uint32 windowSeconds);
    error InvalidGridEmissionFactor(uint32 gridEfGPerKwh);
    error VersionNotIncreasing(uint32 version, uint32 latest);
    error TermNotAfterLatest(uint64 effectiveFrom, uint64 latest);
    error TermInPast(uint64 effectiveFrom, uint256 now_);
    error NoTermForWindow(string projectId, uint64 windowStart);

    event ProjectRegistered(
        bytes32 indexed projectKey, string projectId, address indexed owner, string methodology,
        uint32 windowSeconds
    );
    event ProjectOwnerChanged(bytes32 indexed projectKey, address indexed previous, address indexed owner);
    event MethodologyTermAdded(
        bytes32 indexed projectKey, uint32 methodologyVersion, uint32 gridEfGPerKwh, uint64 effectiveFrom
    );

    mapping(bytes32 => Project) private _projects;
    mapping(bytes32 => Term[]) private _terms;
    string[] private _projectIds;

    constructor(address initialGovernance) Governed(initialGovernance) {}

    // ----------------------------------------------------------------- governance

    /// @notice Register a project with its first methodology term (which may start at any
    /// time, the project having minted nothing yet).
    function registerProject(
        string calldata projectId,
        address owner,
        string calldata methodology,
        uint32 windowSeconds,
        uint32 methodologyVersion,
        uint32 gridEfGPerKwh,
        uint64 effectiveFrom
    ) external onlyGovernance {
        if (!_validId(bytes(projectId))) revert InvalidProjectId(projectId);
        bytes32 key = keccak256(bytes(projectId));
        if (_projects[key].registered) revert ProjectExists(projectId);
        if (owner == address(0)) revert ZeroOwner();
        if (bytes(methodology).length == 0 || bytes(methodology).length > 64) {
            revert InvalidMethodology();
        }
        if (windowSeconds == 0) revert InvalidWindowSeconds(windowSeconds);
        if (gridEfGPerKwh > MAX_GRID_EF_G_PER_KWH) revert InvalidGridEmissionFactor(gridEfGPerKwh);
        _projects[key] = Project({
            owner: owner,
            windowSeconds: windowSeconds,
            registered: true,
            methodologyHash: keccak256(bytes(methodology)),
            methodology: methodology
        });
        _projectIds.push(projectId);
        _terms[key].push(Term(methodologyVersion, gridEfGPerKwh, effectiveFrom));
        emit ProjectRegistered(key, projectId, owner, methodology, windowSeconds);
        emit MethodologyTermAdded(key, methodologyVersion, gridEfGPerKwh, effectiveFrom);
    }

    /// @notice Credits minted from now on go to `owner`.
    function setProjectOwner(string calldata projectId, address owner) external onlyGovernance {
        Project storage p = _project(projectId);
        if (owner == address(0)) revert ZeroOwner();
        emit ProjectOwnerChanged(keccak256(bytes(projectId)), p.owner, owner);
        p.owner = owner;
    }

    /// @notice Append a methodology term (a new version, e.g. a new grid emission factor)
    /// for windows starting at or after `effectiveFrom`, which must not lie in the past.
    function addMethodologyTerm(
        string calldata projectId,
        uint32 methodologyVersion,
        uint32 gridEfGPerKwh,
        uint64 effectiveFrom
    ) external onlyGovernance {
        _project(projectId);
        bytes32 key = keccak256(bytes(projectId));
        Term storage latest = _terms[key][_terms[key].length - 1];
        if (methodologyVersion <= latest.methodologyVersion) {
            revert VersionNotIncreasing(methodologyVersion, latest.methodologyVersion);
        }
        if (effectiveFrom <= latest.effectiveFrom) {
            revert TermNotAfterLatest(effectiveFrom, latest.effectiveFrom);
        }
        if (effectiveFrom < block.timestamp) revert TermInPast(effectiveFrom, block.timestamp);
        if (gridEfGPerKwh > MAX_GRID_EF_G_PER_KWH) revert InvalidGridEmissionFactor(gridEfGPerKwh);
        _terms[key].push(Term(methodologyVersion, gridEfGPerKwh, effectiveFrom));
        emit MethodologyTermAdded(key, methodologyVersion, gridEfGPerKwh, effectiveFrom);
    }

    // ----------------------------------------------------------------- views

    function project(string calldata projectId) external view returns (Project memory) {
        return _project(projectId);
    }

    function terms(string calldata projectId) external view returns (Term[] memory) {
        _project(projectId);
        return _terms[keccak256(bytes(projectId))];
    }

    function projectIds() external view returns (string[] memory) {
        return _projectIds;
    }

    /// @notice What the credit contract needs to check an attestation of `projectId` for the
    /// window starting at `windowStart`: the owner, the methodology (hash), the window grid and
    /// the methodology term in force. Reverts for an unknown project or a window before the
    /// first term.
    function mintTerms(string calldata projectId, uint64 windowStart)
        external
        view
        returns (address owner, bytes32 methodologyHash, uint32 windowSeconds, Term memory term)
    {
        Project storage p = _project(projectId);
        Term[] storage list = _terms[keccak256(bytes(projectId))];
        for (uint256 i = list.length; i > 0; --i) {
            if (list[i - 1].effectiveFrom <= windowStart) {
                return (p.owner, p.methodologyHash, p.windowSeconds, list[i - 1]);
            }
        }
        revert NoTermForWindow(projectId, windowStart);
    }

    // ----------------------------------------------------------------- internals

    function _project(string calldata projectId) private view returns (Project storage p) {
        p = _projects[keccak256(bytes(projectId))];
        if (!p.registered) revert UnknownProject(projectId);
    }

    /// senken_core.reading.DEVICE_ID_PATTERN: 3-63 characters of a-z, 0-9 and '-', not
    /// starting with '-'.
    function _validId(bytes calldata id) private pure returns (bool) {
        if (id.length < 3 || id.length > 63 || id[0] == "-") return false;
        for (uint256 i = 0; i < id.length; ++i) {
            bytes1 c = id[i];
            if (!((c >= "a" && c <= "z") || (c >= "0" && c <= "9") || c == "-")) return false;
        }
        return true;
    }
}

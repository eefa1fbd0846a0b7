"""Merkle trees over readings, and inclusion proofs down to each reading.

Contract
--------
A binary Merkle tree over an ordered list of leaves (``bytes``), with the structure of RFC 6962
(Certificate Transparency) section 2.1, hashed with SHA-256:

* leaf hash:   ``SHA-256(0x00 || leaf)``
* inner node:  ``SHA-256(0x01 || left || right)``
* ``MTH([])`` is ``SHA-256(b"")``; ``MTH([d0])`` is the leaf hash of ``d0``; for ``n > 1``
  leaves the tree splits at ``k``, the largest power of two smaller than ``n``:
  ``MTH(D[n]) = node(MTH(D[0:k]), MTH(D[k:n]))``. The tree is not padded: the last leaf of an
  odd level is carried up unchanged.

The two prefixes separate the domain of leaves from the domain of inner nodes. Without them, the
64 bytes ``left || right`` of an inner node could be presented as a *leaf* of a smaller tree
and "proved" included (a second-preimage forgery); with them, a leaf and a node never hash the
same bytes.

An inclusion proof (:class:`InclusionProof`) is the RFC 6962 section 2.1.1 audit path of leaf
``index`` in a tree of ``tree_size`` leaves: the sibling hashes from the leaf up to the root,
bottom-up. Its length is fixed by ``index`` and ``tree_size`` (RFC 9162 section 2.1.3.1).
:func:`verify_inclusion` recomputes the root from a leaf and a proof with the algorithm of
RFC 9162 section 2.1.3.2 and raises :class:`MerkleProofError` unless it equals the expected
root.

The root commits to the leaves, but not by itself to ``tree_size``: for some sizes the same
audit path is valid in a larger tree (leaf 0 of 3 and leaf 0 of 4 both fold two right
siblings). Take the tree size from the same attested source as the root and pass it to
:func:`verify_inclusion` (``tree_size=``), as a CT client takes both from a signed tree head.

Proofs travel as JSON through :meth:`InclusionProof.to_dict` and :meth:`InclusionProof.from_dict`
(hashes as 64 hexadecimal digits); ``from_dict`` is an input boundary and answers any malformed
input with :class:`MerkleProofError`.

:class:`MerkleTree` hashes the leaves once and keeps every level, so that the ledger serves any
number of proofs from one build; it gives the same root and proofs as :func:`merkle_root` and
:func:`inclusion_proof`. Everything here is pure and deterministic; nothing is cached between
calls except inside a :class:`MerkleTree`, which is immutable.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from hashlib import sha256
from typing import TypeGuard

from senken_core.errors import SenkenError

__all__ = [
    "InclusionProof",
    "MerkleProofError",
    "MerkleTree",
    "inclusion_proof",
    "leaf_hash",
    "merkle_root",
    "merkle_root_of_leaf_hashes",
    "verify_inclusion",
]

_LEAF_PREFIX = b"\x00"  # RFC 6962 section 2.1: leaf hashes
_NODE_PREFIX = b"\x01"  # RFC 6962 section 2.1: inner nodes
_HASH_SIZE = 32
_EMPTY_ROOT = sha256(b"").digest()
# RFC 9162 section 4.1 carries tree sizes as uint64; the bound also caps a path at 64 hashes.
_MAX_TREE_SIZE = 2**64 - 1
_MAX_PATH_LENGTH = 64
_HEX_HASH = re.compile(r"[0-9a-fA-F]{64}")
_DICT_KEYS = frozenset({"index", "tree_size", "path"})


class MerkleProofError(SenkenError):
    """An inclusion proof that is malformed or does not lead to the expected root.

    ``reason`` is a short stable code, for counters and API answers:

    * ``format``: not the expected shape (JSON keys and types, hex, hash length);
    * ``index``: the leaf index is outside the tree;
    * ``tree_size``: the tree size is out of range, or not the one expected;
    * ``path_length``: the audit path does not have the length its index and tree size fix;
    * ``mismatch``: the proof is well formed but does not lead to the expected root.
    """

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(f"{reason}: {message}")
        self.reason = reason


def _is_int(value: object) -> TypeGuard[int]:
    # bool is an int subclass; True is not a leaf index
    return isinstance(value, int) and not isinstance(value, bool)


def _audit_path_length(index: int, tree_size: int) -> int:
    """The number of hashes in the audit path of leaf ``index`` (0 <= index < tree_size).

    RFC 9162 section 2.1.3.1: the levels where the paths to ``index`` and to the last leaf
    still differ ("inner") all have a sibling; above them, a sibling only where the path turns
    right ("border", the set bits of what is left of the index).
    """
    inner = (index ^ (tree_size - 1)).bit_length()
    return inner + (index >> inner).bit_count()


def _check_shape(index: object, tree_size: object, path: object) -> None:
    """Raise :class:`MerkleProofError` unless the three fields form a well-formed proof."""
    if not _is_int(tree_size):
        raise MerkleProofError(
            "format", f"tree_size must be an integer, got {type(tree_size).__name__}"
        )
    if not 1 <= tree_size <= _MAX_TREE_SIZE:
        raise MerkleProofError(
            "tree_size", f"tree_size {tree_size} is out of range; it must be 1 .. 2**64-1"
        )
    if not _is_int(index):
        raise MerkleProofError("format", f"index must be an integer, got {type(index).__name__}")
    if not 0 <= index < tree_size:
        raise MerkleProofError(
            "index", f"leaf index {index} is outside a tree of {tree_size} leaves"
        )
    if not isinstance(path, tuple):
        raise MerkleProofError("format", f"path must be a tuple, got {type(path).__name__}")
    expected = _audit_path_length(index, tree_size)
    if len(path) != expected:
        raise MerkleProofError(
            "path_length",
            f"the path has {len(path)} hashes; the proof for leaf {index} of {tree_size} "
            f"needs exactly {expected}",
        )
    for position, node in enumerate(path):
        if not isinstance(node, bytes) or len(node) != _HASH_SIZE:
            raise MerkleProofError(
                "format", f"path[{position}] must be a 32-byte hash (bytes), got {node!r:.80}"
            )


@dataclass(frozen=True, slots=True)
class InclusionProof:
    """The audit path of leaf ``index`` in a tree of ``tree_size`` leaves (RFC 6962 2.1.1).

    ``path`` holds the sibling hashes from the leaf's level up to the root (bottom-up), 32 bytes
    each. Construction checks the shape (``0 <= index < tree_size <= 2**64-1``, the path length
    that index and size fix, 32-byte ``bytes`` hashes) and raises :class:`MerkleProofError`
    otherwise; it does not check that the proof leads to any root (:func:`verify_inclusion`).
    """

    index: int
    tree_size: int
    path: tuple[bytes, ...]

    def __post_init__(self) -> None:
        _check_shape(self.index, self.tree_size, self.path)

    def to_dict(self) -> dict[str, object]:
        """The proof as JSON-ready values: ``{"index", "tree_size", "path": [lower-case hex]}``."""
        return {
            "index": self.index,
            "tree_size": self.tree_size,
            "path": [node.hex() for node in self.path],
        }

    @classmethod
    def from_dict(cls, data: object) -> InclusionProof:
        """Parse the output of :meth:`to_dict` (typically after ``json.loads``).

        Requires a mapping with exactly the keys ``index``, ``tree_size`` (integers, not
        booleans or floats) and ``path`` (a list of 64-digit hex strings, either case), forming
        a well-formed proof as the constructor checks. Raises :class:`MerkleProofError`, and no
        other exception, for anything else.
        """
        if not isinstance(data, Mapping):
            raise MerkleProofError(
                "format", f"an inclusion proof must be a JSON object, got {type(data).__name__}"
            )
        keys = set(data)
        if keys != _DICT_KEYS:
            missing = sorted(_DICT_KEYS - keys)
            unknown = sorted(repr(key) for key in keys - _DICT_KEYS)
            problems = []
            if missing:
                problems.append(f"missing {', '.join(missing)}")
            if unknown:
                problems.append(f"unknown {', '.join(unknown)}")
            raise MerkleProofError(
                "format",
                f"an inclusion proof has exactly the keys index, tree_size and path: "
                f"{'; '.join(problems)}",
            )
        raw_path = data["path"]
        if not isinstance(raw_path, list | tuple):
            raise MerkleProofError(
                "format", f"path must be a list of hex strings, got {type(raw_path).__name__}"
            )
        if len(raw_path) > _MAX_PATH_LENGTH:
            raise MerkleProofError(
                "path_length", f"the path has {len(raw_path)} hashes; no proof has more than 64"
            )
        path = []
        for position, item in enumerate(raw_path):
            if not isinstance(item, str) or _HEX_HASH.fullmatch(item) is None:
                raise MerkleProofError(
                    "format",
                    f"path[{position}] must be a 32-byte hash as 64 hex digits, got {item!r:.80}",
                )
            path.append(bytes.fromhex(item))
        return cls(index=data["index"], tree_size=data["tree_size"], path=tuple(path))


def leaf_hash(leaf: bytes) -> bytes:
    """``SHA-256(0x00 || leaf)``: the hash of a leaf in the tree (RFC 6962 section 2.1).

    Raises ``TypeError`` if ``leaf`` is not bytes-like.
    """
    return sha256(_LEAF_PREFIX + leaf).digest()


def _leaf_level(leaves: Iterable[bytes]) -> list[bytes]:
    return [sha256(_LEAF_PREFIX + leaf).digest() for leaf in leaves]


def _parent_level(level: list[bytes]) -> list[bytes]:
    """The level above ``level`` (two or more hashes): pairs hashed, an odd last one carried up.

    Pairing left to right and carrying the odd last node up unchanged builds the same tree as
    RFC 6962's split at the largest power of two, from the bottom.
    """
    pairs = iter(level)
    parents = [
        sha256(_NODE_PREFIX + left + right).digest()
        for left, right in zip(pairs, pairs, strict=False)
    ]
    if len(level) % 2:
        parents.append(level[-1])
    return parents


def _check_leaf_index(index: int, tree_size: int) -> None:
    if not _is_int(index):
        raise MerkleProofError("format", f"index must be an integer, got {type(index).__name__}")
    if not 0 <= index < tree_size:
        raise MerkleProofError(
            "index", f"leaf index {index} is outside a tree of {tree_size} leaves"
        )


def merkle_root(leaves: Sequence[bytes]) -> bytes:
    """The RFC 6962 Merkle Tree Hash of ``leaves`` (32 bytes); ``SHA-256(b"")`` for none.

    Raises ``TypeError`` if a leaf is not bytes-like.
    """
    return merkle_root_of_leaf_hashes(_leaf_level(leaves))


def merkle_root_of_leaf_hashes(hashes: Sequence[bytes]) -> bytes:
    """:func:`merkle_root` of leaves whose :func:`leaf_hash` the caller already holds (in
    order): ``merkle_root(leaves) == merkle_root_of_leaf_hashes([leaf_hash(x) for x in
    leaves])``."""
    if len(hashes) == 0:
        return _EMPTY_ROOT
    level = list(hashes)
    while len(level) > 1:
        level = _parent_level(level)
    return level[0]


def inclusion_proof(leaves: Sequence[bytes], index: int) -> InclusionProof:
    """The audit path of ``leaves[index]`` in the tree over ``leaves``.

    Hashes the whole tree (O(n)); to serve many proofs from one tree, use :class:`MerkleTree`.
    Raises :class:`MerkleProofError` (reason ``index``) unless ``0 <= index < len(leaves)``;
    negative indices do not count from the end.
    """
    _check_leaf_index(index, len(leaves))
    level = _leaf_level(leaves)
    path = []
    position = index
    while len(level) > 1:
        sibling = position ^ 1
        if sibling < len(level):  # else this node is the odd last one, carried up
            path.append(level[sibling])
        level = _parent_level(level)
        position >>= 1
    return InclusionProof(index=index, tree_size=len(leaves), path=tuple(path))


def verify_inclusion(
    leaf: bytes, proof: InclusionProof, root: bytes, *, tree_size: int | None = None
) -> None:
    """Check that ``leaf`` is leaf ``proof.index`` of the tree whose root is ``root``.

    Returns ``None`` if it is; raises :class:`MerkleProofError` if the proof is malformed
    (``format``, ``index``, ``path_length``), if ``tree_size`` is given and differs from
    ``proof.tree_size`` (``tree_size``), or if the root the proof leads to is not ``root``
    (``mismatch``). Pass the ``tree_size`` attested with the root: the root alone does not fix
    it (see the module docstring). Raises ``TypeError`` if ``leaf`` is not bytes-like.
    """
    if not isinstance(proof, InclusionProof):
        raise MerkleProofError(
            "format", f"proof must be an InclusionProof, got {type(proof).__name__}"
        )
    # A frozen dataclass can still be bypassed (object.__setattr__); the check is cheap.
    _check_shape(proof.index, proof.tree_size, proof.path)
    if not isinstance(root, bytes) or len(root) != _HASH_SIZE:
        raise MerkleProofError("format", f"the root must be a 32-byte hash, got {root!r:.80}")
    if tree_size is not None and tree_size != proof.tree_size:
        raise MerkleProofError(
            "tree_size",
            f"the proof is for a tree of {proof.tree_size} leaves; the root attested is for "
            f"{tree_size}",
        )
    # RFC 9162 section 2.1.3.2. fn is the node's position on its level, sn the position of that
    # level's last node; where fn == sn and fn is even the node has no right sibling and is
    # carried up, so the levels are skipped until it is a right child again.
    fn = proof.index
    sn = proof.tree_size - 1
    node = leaf_hash(leaf)
    for sibling in proof.path:
        if sn == 0:
            raise MerkleProofError("path_length", "the path is longer than the tree is high")
        if fn & 1 or fn == sn:
            node = sha256(_NODE_PREFIX + sibling + node).digest()
            if not fn & 1:
                while fn and not fn & 1:
                    fn >>= 1
                    sn >>= 1
        else:
            node = sha256(_NODE_PREFIX + node + sibling).digest()
        fn >>= 1
        sn >>= 1
    if sn != 0:
        raise MerkleProofError("path_length", "the path is shorter than the tree is high")
    if node != root:
        raise MerkleProofError(
            "mismatch",
            f"leaf {proof.index} of {proof.tree_size} with this path leads to root "
            f"{node.hex()}, not to {root.hex()}: the leaf, the proof or the root is not the "
            f"one attested",
        )


class MerkleTree:
    """The RFC 6962 tree over some leaves, hashed once, serving any number of proofs.

    Keeps every level as one ``bytes`` of concatenated 32-byte hashes (about 64 bytes per leaf
    in all), not the leaves themselves. ``root``, ``proof(i)`` and ``len()`` equal
    :func:`merkle_root`, :func:`inclusion_proof` and ``len(leaves)``. Immutable, so safe to
    share between threads.
    """

    __slots__ = ("_levels", "_root", "_size")

    def __init__(self, leaves: Iterable[bytes]) -> None:
        """Hash ``leaves`` (any iterable, consumed once). Raises ``TypeError`` for a leaf that
        is not bytes-like."""
        level = _leaf_level(leaves)
        self._size = len(level)
        levels = [b"".join(level)]
        while len(level) > 1:
            level = _parent_level(level)
            levels.append(b"".join(level))
        self._levels = tuple(levels)
        self._root = level[0] if level else _EMPTY_ROOT

    @property
    def root(self) -> bytes:
        """The Merkle Tree Hash (32 bytes); ``SHA-256(b"")`` for no leaves."""
        return self._root

    def __len__(self) -> int:
        """The number of leaves."""
        return self._size

    def __repr__(self) -> str:
        return f"MerkleTree(size={self._size}, root={self._root.hex()})"

    def proof(self, index: int) -> InclusionProof:
        """The audit path of leaf ``index``, in O(log n) without hashing.

        Raises :class:`MerkleProofError` (reason ``index``) unless ``0 <= index < len(self)``.
        """
        _check_leaf_index(index, self._size)
        path = []
        position = index
        for level in self._levels[:-1]:
            start = (position ^ 1) * _HASH_SIZE
            if start < len(level):  # else this node is the odd last one, carried up
                path.append(level[start : start + _HASH_SIZE])
            position >>= 1
        return InclusionProof(index=index, tree_size=self._size, path=tuple(path))

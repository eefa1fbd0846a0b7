"""Merkle trees and inclusion proofs: RFC 6962 vectors, an independent reference, properties.

The reference below is written straight from RFC 6962 section 2.1 (MTH and PATH, recursive,
top-down), so that it shares no code and no bottom-up trick with senken_core.merkle.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Sequence
from dataclasses import FrozenInstanceError
from functools import partial
from typing import Any

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from senken_core.errors import SenkenError
from senken_core.merkle import (
    InclusionProof,
    MerkleProofError,
    MerkleTree,
    inclusion_proof,
    leaf_hash,
    merkle_root,
    merkle_root_of_leaf_hashes,
    verify_inclusion,
)

# --- RFC 6962 test data -------------------------------------------------------------------
# The eight leaves of Certificate Transparency's reference tests, and the published Merkle Tree
# Hashes of their first 0..8 entries.
CT_LEAVES = [
    b"",
    b"\x00",
    b"\x10",
    b"\x20\x21",
    b"\x30\x31",
    b"\x40\x41\x42\x43",
    b"\x50\x51\x52\x53\x54\x55\x56\x57",
    b"\x60\x61\x62\x63\x64\x65\x66\x67\x68\x69\x6a\x6b\x6c\x6d\x6e\x6f",
]
CT_ROOTS = [
    "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
    "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
    "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
    "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
    "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
    "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
    "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
    "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
    "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
]
# Published audit paths (CT / Trillian / transparency-dev merkle test data; 0-based index).
CT_PATHS: list[tuple[int, int, list[str]]] = [
    (0, 1, []),
    (0, 2, ["96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7"]),
    (1, 2, ["6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d"]),
    (2, 3, ["fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125"]),
    (
        1,
        5,
        [
            "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
        ],
    ),
    (
        0,
        8,
        [
            "96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4",
        ],
    ),
    (
        5,
        8,
        [
            "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
            "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
            "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
        ],
    ),
]


# --- Reference implementation (RFC 6962 section 2.1, recursive) ---------------------------
def _sha256(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


def _split(n: int) -> int:
    """The largest power of two smaller than n (n > 1)."""
    k = 1
    while k * 2 < n:
        k *= 2
    return k


def ref_node(left: bytes, right: bytes) -> bytes:
    return _sha256(b"\x01" + left + right)


def ref_mth(leaves: Sequence[bytes]) -> bytes:
    n = len(leaves)
    if n == 0:
        return _sha256(b"")
    if n == 1:
        return _sha256(b"\x00" + leaves[0])
    k = _split(n)
    return ref_node(ref_mth(leaves[:k]), ref_mth(leaves[k:]))


def ref_path(m: int, leaves: Sequence[bytes]) -> list[bytes]:
    n = len(leaves)
    if n == 1:
        return []
    k = _split(n)
    if m < k:
        return [*ref_path(m, leaves[:k]), ref_mth(leaves[k:])]
    return [*ref_path(m - k, leaves[k:]), ref_mth(leaves[:k])]


def ref_sides(m: int, n: int) -> tuple[str, ...]:
    """Which side each audit-path hash sits on, bottom-up ("L": sibling is the left child)."""
    if n == 1:
        return ()
    k = _split(n)
    if m < k:
        return (*ref_sides(m, k), "R")
    return (*ref_sides(m - k, n - k), "L")


def ref_root_from_path(node: bytes, m: int, n: int, path: Sequence[bytes]) -> bytes:
    """Fold a hash up an audit path, top-down from the split of RFC 6962."""
    if n == 1:
        assert not path
        return node
    k = _split(n)
    if m < k:
        return ref_node(ref_root_from_path(node, m, k, path[:-1]), path[-1])
    return ref_node(path[-1], ref_root_from_path(node, m - k, n - k, path[:-1]))


# --- helpers ------------------------------------------------------------------------------
def verifies(
    leaf: bytes, make_proof: Callable[[], InclusionProof], root: bytes, **kwargs: Any
) -> bool:
    """True if the proof can be built and verifies; False on MerkleProofError (only)."""
    try:
        verify_inclusion(leaf, make_proof(), root, **kwargs)
    except MerkleProofError:
        return False
    return True


def flip_bit(data: bytes, bit: int) -> bytes:
    bit %= len(data) * 8
    out = bytearray(data)
    out[bit // 8] ^= 1 << (bit % 8)
    return bytes(out)


leaf_lists = st.lists(st.binary(max_size=40), max_size=70)
unique_leaf_lists = st.lists(st.binary(max_size=40), min_size=1, max_size=70, unique=True)


# --- vectors ------------------------------------------------------------------------------
@pytest.mark.parametrize("size", range(len(CT_ROOTS)))
def test_roots_match_rfc6962_vectors(size: int) -> None:
    want = bytes.fromhex(CT_ROOTS[size])
    leaves = CT_LEAVES[:size]
    assert ref_mth(leaves) == want  # the reference itself is right
    assert merkle_root(leaves) == want
    assert MerkleTree(leaves).root == want
    assert len(MerkleTree(leaves)) == size


@pytest.mark.parametrize(("index", "size", "path_hex"), CT_PATHS)
def test_audit_paths_match_published_vectors(index: int, size: int, path_hex: list[str]) -> None:
    leaves = CT_LEAVES[:size]
    want = InclusionProof(index=index, tree_size=size, path=tuple(map(bytes.fromhex, path_hex)))
    assert ref_path(index, leaves) == list(want.path)
    assert inclusion_proof(leaves, index) == want
    assert MerkleTree(leaves).proof(index) == want
    verify_inclusion(leaves[index], want, bytes.fromhex(CT_ROOTS[size]), tree_size=size)


def test_hashes_are_domain_separated() -> None:
    assert leaf_hash(b"") == bytes.fromhex(CT_ROOTS[1])
    assert leaf_hash(b"abc") == _sha256(b"\x00abc")
    assert merkle_root([b"a", b"b"]) == _sha256(b"\x01" + leaf_hash(b"a") + leaf_hash(b"b"))
    assert merkle_root([]) == _sha256(b"")


def test_empty_tree() -> None:
    tree = MerkleTree([])
    assert len(tree) == 0
    assert tree.root == merkle_root([]) == _sha256(b"")
    with pytest.raises(MerkleProofError, match="outside a tree of 0 leaves") as info:
        tree.proof(0)
    assert info.value.reason == "index"
    with pytest.raises(MerkleProofError):
        inclusion_proof([], 0)


# --- agreement with the reference ---------------------------------------------------------
@settings(max_examples=150, deadline=None)
@given(leaf_lists)
def test_every_proof_verifies_and_matches_the_reference(leaves: list[bytes]) -> None:
    root = merkle_root(leaves)
    tree = MerkleTree(leaves)
    assert root == ref_mth(leaves) == tree.root
    assert len(tree) == len(leaves)
    for index, leaf in enumerate(leaves):
        proof = inclusion_proof(leaves, index)
        assert proof == tree.proof(index)
        assert list(proof.path) == ref_path(index, leaves)
        assert ref_root_from_path(leaf_hash(leaf), index, len(leaves), proof.path) == root
        verify_inclusion(leaf, proof, root)
        verify_inclusion(leaf, proof, root, tree_size=len(leaves))


@settings(max_examples=100, deadline=None)
@given(leaf_lists)
def test_the_root_of_leaf_hashes_is_the_root_of_the_leaves(leaves: list[bytes]) -> None:
    assert merkle_root_of_leaf_hashes([leaf_hash(x) for x in leaves]) == merkle_root(leaves)


@pytest.mark.parametrize("size", [127, 128, 129, 255, 256, 257, 1000, 1025])
def test_larger_trees_agree_with_the_reference(size: int) -> None:
    leaves = [i.to_bytes(4, "big") * 8 for i in range(size)]
    tree = MerkleTree(iter(leaves))  # any iterable, consumed once
    root = ref_mth(leaves)
    assert tree.root == merkle_root(leaves) == root
    for index in range(size):
        proof = tree.proof(index)
        verify_inclusion(leaves[index], proof, root, tree_size=size)
    for index in {0, 1, size // 2, _split(size) - 1, _split(size), size - 2, size - 1}:
        assert list(tree.proof(index).path) == ref_path(index, leaves)
        assert inclusion_proof(leaves, index) == tree.proof(index)


def test_tree_of_20000_leaves_builds_and_proves() -> None:
    leaves = [hashlib.sha256(i.to_bytes(4, "big")).digest() * 6 for i in range(20_000)]
    tree = MerkleTree(leaves)
    assert len(tree) == 20_000
    assert tree.root == merkle_root(leaves)
    for index, leaf in enumerate(leaves):
        verify_inclusion(leaf, tree.proof(index), tree.root, tree_size=20_000)
    for index in (0, 16_383, 16_384, 19_999):
        assert inclusion_proof(leaves, index) == tree.proof(index)
        assert list(tree.proof(index).path) == ref_path(index, leaves)
    assert tree.root == ref_mth(leaves)


# --- what must not verify -----------------------------------------------------------------
@settings(max_examples=200, deadline=None)
@given(unique_leaf_lists, st.data())
def test_any_changed_part_fails_verification(leaves: list[bytes], data: st.DataObject) -> None:
    n = len(leaves)
    index = data.draw(st.integers(0, n - 1), label="index")
    leaf = leaves[index]
    proof = inclusion_proof(leaves, index)
    root = merkle_root(leaves)
    bit = data.draw(st.integers(0, 2**16), label="bit")

    # the leaf: one bit flipped, or one byte more
    for other_leaf in (flip_bit(leaf, bit) if leaf else b"\x00", leaf + b"\x00"):
        assert not verifies(other_leaf, lambda: proof, root)

    # any path element
    for position in range(len(proof.path)):
        path = list(proof.path)
        path[position] = flip_bit(path[position], bit)
        assert not verifies(leaf, partial(InclusionProof, index, n, tuple(path)), root)

    # the root
    assert not verifies(leaf, lambda: proof, flip_bit(root, bit))

    # the index: with distinct leaves, no other position verifies (in range or not)
    other_index = data.draw(st.integers(-2, n + 2).filter(lambda i: i != index), label="j")
    assert not verifies(leaf, lambda: InclusionProof(other_index, n, proof.path), root)

    # the tree size: refused when the attested size is passed; without it, a wrong size
    # verifies only where its audit path has exactly the same shape (see test below)
    other_size = data.draw(st.integers(0, 2 * n + 2).filter(lambda s: s != n), label="size")
    assert not verifies(
        leaf, lambda: InclusionProof(index, other_size, proof.path), root, tree_size=n
    )
    if verifies(leaf, lambda: InclusionProof(index, other_size, proof.path), root):
        assert ref_sides(index, other_size) == ref_sides(index, n)


def test_tree_size_is_not_fixed_by_the_root_alone() -> None:
    # Leaf 0 of 3 and leaf 0 of 4 both fold two right siblings: the same path verifies with
    # either size. This is why verify_inclusion takes the attested tree_size.
    leaves = CT_LEAVES[:3]
    root = merkle_root(leaves)
    claimed = InclusionProof(0, 4, inclusion_proof(leaves, 0).path)
    verify_inclusion(leaves[0], claimed, root)
    with pytest.raises(MerkleProofError, match="tree of 4 leaves; the root attested is for 3"):
        verify_inclusion(leaves[0], claimed, root, tree_size=3)


@settings(max_examples=100, deadline=None)
@given(leaf_lists, st.binary(max_size=40), st.data())
def test_a_proof_never_verifies_another_leaf(
    leaves: list[bytes], other: bytes, data: st.DataObject
) -> None:
    assume(leaves)
    index = data.draw(st.integers(0, len(leaves) - 1))
    assume(other != leaves[index])
    with pytest.raises(MerkleProofError) as info:
        verify_inclusion(other, inclusion_proof(leaves, index), merkle_root(leaves))
    assert info.value.reason == "mismatch"


@settings(max_examples=100, deadline=None)
@given(st.lists(st.binary(max_size=40), min_size=2, max_size=70), st.data())
def test_an_inner_node_is_not_accepted_as_a_leaf(leaves: list[bytes], data: st.DataObject) -> None:
    # Second preimage: present the children of an inner node of level 1 as a leaf of the tree
    # one level up (tree size ceil(n/2)), with the rest of the real path.
    n = len(leaves)
    j = data.draw(st.integers(0, n // 2 - 1), label="node")
    left, right = leaf_hash(leaves[2 * j]), leaf_hash(leaves[2 * j + 1])
    node = ref_node(left, right)
    root = merkle_root(leaves)
    forged = InclusionProof(j, (n + 1) // 2, tuple(ref_path(2 * j, leaves)[1:]))
    # The forgery is structurally right: the node's own hash folds up to the root. Only the
    # 0x00/0x01 prefixes keep a leaf from hashing to it.
    assert ref_root_from_path(node, j, forged.tree_size, forged.path) == root
    for preimage in (b"\x01" + left + right, left + right):
        with pytest.raises(MerkleProofError) as info:
            verify_inclusion(preimage, forged, root)
        assert info.value.reason == "mismatch"


# --- shape checks -------------------------------------------------------------------------
HASH = bytes(32)


@pytest.mark.parametrize(
    ("index", "tree_size", "path", "reason", "message"),
    [
        (0, 0, (), "tree_size", "tree_size 0 is out of range"),
        (0, 2**64, (), "tree_size", "out of range"),
        (-1, 4, (HASH, HASH), "index", "leaf index -1 is outside a tree of 4 leaves"),
        (4, 4, (HASH, HASH), "index", "leaf index 4 is outside"),
        (True, 4, (HASH, HASH), "format", "index must be an integer, got bool"),
        (0, 4.0, (HASH, HASH), "format", "tree_size must be an integer, got float"),
        (0, 4, [HASH, HASH], "format", "path must be a tuple"),
        (0, 4, (HASH,), "path_length", "the path has 1 hashes; the proof for leaf 0 of 4 needs"),
        (0, 1, (HASH,), "path_length", "needs exactly 0"),
        (0, 4, (HASH, HASH[:31]), "format", r"path\[1\] must be a 32-byte hash"),
        (0, 4, (HASH, HASH.hex()), "format", r"path\[1\] must be a 32-byte hash"),
        (0, 4, (HASH, bytearray(HASH)), "format", r"path\[1\]"),
    ],
)
def test_malformed_proofs_are_refused_where_built(
    index: Any, tree_size: Any, path: Any, reason: str, message: str
) -> None:
    with pytest.raises(MerkleProofError, match=message) as info:
        InclusionProof(index=index, tree_size=tree_size, path=path)
    assert info.value.reason == reason
    assert isinstance(info.value, SenkenError)


def test_verify_checks_its_other_arguments() -> None:
    leaves = CT_LEAVES
    proof = inclusion_proof(leaves, 3)
    root = merkle_root(leaves)
    with pytest.raises(MerkleProofError, match="root must be a 32-byte hash"):
        verify_inclusion(leaves[3], proof, root[:31])
    with pytest.raises(MerkleProofError, match="proof must be an InclusionProof"):
        verify_inclusion(leaves[3], proof.to_dict(), root)  # type: ignore[arg-type]
    with pytest.raises(MerkleProofError, match=r"leads to root [0-9a-f]{64}, not to"):
        verify_inclusion(leaves[4], proof, root)
    # a proof tampered with past its constructor is still checked
    object.__setattr__(proof, "path", proof.path[:-1])
    with pytest.raises(MerkleProofError) as info:
        verify_inclusion(leaves[3], proof, root)
    assert info.value.reason == "path_length"


@pytest.mark.parametrize("index", [-1, 8, 100])
def test_proof_index_out_of_range(index: int) -> None:
    with pytest.raises(MerkleProofError, match=f"leaf index {index} is outside a tree of 8"):
        inclusion_proof(CT_LEAVES, index)
    with pytest.raises(MerkleProofError, match=f"leaf index {index} is outside a tree of 8"):
        MerkleTree(CT_LEAVES).proof(index)


def test_proofs_are_frozen() -> None:
    proof = inclusion_proof(CT_LEAVES, 0)
    with pytest.raises(FrozenInstanceError):
        proof.index = 1  # type: ignore[misc]


# --- JSON ---------------------------------------------------------------------------------
@settings(max_examples=100, deadline=None)
@given(st.lists(st.binary(max_size=20), min_size=1, max_size=70), st.data())
def test_dict_round_trip_through_json(leaves: list[bytes], data: st.DataObject) -> None:
    index = data.draw(st.integers(0, len(leaves) - 1))
    proof = MerkleTree(leaves).proof(index)
    wire = json.loads(json.dumps(proof.to_dict()))
    assert wire == proof.to_dict()
    assert InclusionProof.from_dict(wire) == proof
    verify_inclusion(leaves[index], InclusionProof.from_dict(wire), merkle_root(leaves))


def test_dict_format() -> None:
    proof = inclusion_proof(CT_LEAVES[:3], 2)
    assert proof.to_dict() == {"index": 2, "tree_size": 3, "path": [CT_ROOTS[2]]}
    upper = {"index": 2, "tree_size": 3, "path": [CT_ROOTS[2].upper()]}
    assert InclusionProof.from_dict(upper) == proof


VALID = {"index": 2, "tree_size": 3, "path": [CT_ROOTS[2]]}


@pytest.mark.parametrize(
    ("data", "reason", "message"),
    [
        ([VALID], "format", "must be a JSON object, got list"),
        ("{}", "format", "must be a JSON object, got str"),
        ({"index": 2, "path": []}, "format", "missing tree_size"),
        ({**VALID, "root": "00"}, "format", "unknown 'root'"),
        ({**VALID, "index": "2"}, "format", "index must be an integer, got str"),
        ({**VALID, "index": 2.0}, "format", "index must be an integer, got float"),
        ({**VALID, "tree_size": None}, "format", "tree_size must be an integer, got NoneType"),
        ({**VALID, "index": 3}, "index", "leaf index 3 is outside a tree of 3 leaves"),
        ({**VALID, "tree_size": 2**64}, "tree_size", "out of range"),
        ({**VALID, "path": CT_ROOTS[2]}, "format", "path must be a list of hex strings"),
        ({**VALID, "path": [CT_ROOTS[2][:-2]]}, "format", "path.0. must be a 32-byte hash"),
        ({**VALID, "path": [" " + CT_ROOTS[2][1:]]}, "format", "64 hex digits"),
        ({**VALID, "path": [CT_ROOTS[2] + "\n"]}, "format", "64 hex digits"),
        ({**VALID, "path": ["zz" * 32]}, "format", "64 hex digits"),
        ({**VALID, "path": [1]}, "format", "path.0. must be"),
        ({**VALID, "path": []}, "path_length", "has 0 hashes; the proof for leaf 2 of 3 needs"),
        ({**VALID, "path": [CT_ROOTS[2]] * 65}, "path_length", "no proof has more than 64"),
    ],
)
def test_from_dict_refuses_bad_input(data: object, reason: str, message: str) -> None:
    with pytest.raises(MerkleProofError, match=message) as info:
        InclusionProof.from_dict(data)
    assert info.value.reason == reason


hex_hashes = st.binary(min_size=32, max_size=32).map(bytes.hex)
json_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.integers(-2, 70),
    st.floats(),
    st.text(max_size=70),
    hex_hashes,
)
json_values = st.recursive(
    json_scalars,
    lambda children: st.one_of(
        st.lists(children, max_size=6),
        st.dictionaries(st.text(max_size=10), children, max_size=5),
    ),
    max_leaves=20,
)
keys = st.one_of(st.sampled_from(["index", "tree_size", "path"]), st.text(max_size=10))
garbage = st.one_of(
    json_values,
    st.binary(max_size=20),
    st.dictionaries(keys, json_values, max_size=5),
    st.dictionaries(st.one_of(keys, st.integers(), st.none()), json_values, max_size=4),
    st.fixed_dictionaries(
        {
            "index": st.one_of(st.integers(-2, 70), json_values),
            "tree_size": st.one_of(st.integers(-2, 70), json_values),
            "path": st.one_of(st.lists(hex_hashes, max_size=8), json_values),
        }
    ),
)


@settings(max_examples=500, deadline=None)
@given(garbage)
def test_from_dict_answers_garbage_with_merkle_proof_error_only(data: object) -> None:
    try:
        proof = InclusionProof.from_dict(data)
    except MerkleProofError as exc:
        assert exc.reason in {"format", "index", "tree_size", "path_length"}
        assert str(exc)
        return
    # accepted: then it was a well-formed proof, and it reads back the same
    assert isinstance(data, dict)
    assert InclusionProof.from_dict(proof.to_dict()) == proof
    assert proof.to_dict()["path"] == [str(h).lower() for h in data["path"]]

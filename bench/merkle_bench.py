"""Merkle tree benchmark: root, tree build, proofs and verifications against plain hashlib.

    .venv/bin/python bench/merkle_bench.py [--leaves 100000] [--leaf-bytes 200] [--rounds 5]
                                           [--proofs 20000]

Baseline, same run: plain ``hashlib.sha256(leaf).digest()`` over the same leaves, measured right
before and right after each round and averaged (the machine is shared and noisy; the ratios
move much less than the times). Per round:

1. ``merkle_root(leaves)``: time, and ratio to the baseline (the tree hashes each leaf once and
   about as many inner nodes, each with a 1-byte prefix: expect ~2);
2. ``MerkleTree(leaves)``: the same, keeping every level;
3. ``tree.proof(i)`` for ``--proofs`` random indices: proofs/s, and the cost of one proof in
   baseline leaf hashes;
4. ``verify_inclusion(leaf, proof, root, tree_size=n)`` for the same proofs: verifications/s,
   and the cost of one in baseline leaf hashes (a verification hashes the leaf and one node per
   path hash: 1 + ~17 for 100,000 leaves).

Prints each round and the median of each measure.
"""

from __future__ import annotations

import argparse
import hashlib
import random
import statistics
import sys
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from senken_core.merkle import InclusionProof, MerkleTree, merkle_root, verify_inclusion


def timed(work: Callable[[], object]) -> float:
    start = time.perf_counter()
    work()
    return time.perf_counter() - start


def baseline_seconds(leaves: list[bytes]) -> float:
    """Plain sha256 of every leaf, once (the floor for anything that hashes each leaf)."""
    sha256 = hashlib.sha256
    return timed(lambda: [sha256(leaf).digest() for leaf in leaves])


def one_round(leaves: list[bytes], indices: list[int]) -> dict[str, float]:
    n = len(leaves)
    before = baseline_seconds(leaves)
    root_s = timed(lambda: merkle_root(leaves))
    tree = MerkleTree([])

    def build() -> None:
        nonlocal tree
        tree = MerkleTree(leaves)

    build_s = timed(build)
    proofs: list[InclusionProof] = []
    proof_s = timed(lambda: proofs.extend(tree.proof(i) for i in indices))
    root = tree.root

    def verify_all() -> None:
        for proof in proofs:
            verify_inclusion(leaves[proof.index], proof, root, tree_size=n)

    verify_s = timed(verify_all)
    after = baseline_seconds(leaves)
    base = (before + after) / 2
    per_leaf_hash = base / n
    return {
        "baseline_ms": base * 1e3,
        "root_ms": root_s * 1e3,
        "root_ratio": root_s / base,
        "build_ms": build_s * 1e3,
        "build_ratio": build_s / base,
        "proofs_per_s": len(indices) / proof_s,
        "proof_in_hashes": proof_s / len(indices) / per_leaf_hash,
        "verify_per_s": len(indices) / verify_s,
        "verify_in_hashes": verify_s / len(indices) / per_leaf_hash,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--leaves", type=int, default=100_000)
    parser.add_argument("--leaf-bytes", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--proofs", type=int, default=20_000)
    args = parser.parse_args()

    rng = random.Random(6962)
    leaves = [rng.randbytes(args.leaf_bytes) for _ in range(args.leaves)]
    indices = [rng.randrange(args.leaves) for _ in range(args.proofs)]
    # warm-up, and what does not change between rounds: the memory a tree keeps and needs
    tracemalloc.start()
    tree = MerkleTree(leaves)
    kept_bytes, peak_bytes = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert tree.root == merkle_root(leaves)
    print(
        f"{args.leaves:,} leaves of {args.leaf_bytes} bytes, {args.proofs:,} proofs per round, "
        f"{args.rounds} rounds; path length {len(tree.proof(0).path)}; MerkleTree keeps "
        f"{kept_bytes / 1e6:.1f} MB (peak {peak_bytes / 1e6:.1f} MB while building)"
    )

    rounds = []
    header = (
        f"{'round':>5} {'sha256 ms':>10} {'root ms':>8} {'x base':>7} {'build ms':>9} "
        f"{'x base':>7} {'proofs/s':>9} {'hashes':>7} {'verif/s':>8} {'hashes':>7}"
    )
    print(header)
    for number in range(1, args.rounds + 1):
        r = one_round(leaves, indices)
        rounds.append(r)
        print(row(str(number), r))
    median = {key: statistics.median(r[key] for r in rounds) for key in rounds[0]}
    print(row("med", median))
    print(
        "x base: time / plain sha256 of every leaf once (same run); hashes: the cost of one "
        "proof or verification in plain sha256s of one leaf"
    )


def row(label: str, r: dict[str, float]) -> str:
    return (
        f"{label:>5} {r['baseline_ms']:>10.1f} {r['root_ms']:>8.1f} {r['root_ratio']:>7.2f} "
        f"{r['build_ms']:>9.1f} {r['build_ratio']:>7.2f} {r['proofs_per_s']:>9,.0f} "
        f"{r['proof_in_hashes']:>7.2f} {r['verify_per_s']:>8,.0f} {r['verify_in_hashes']:>7.1f}"
    )


if __name__ == "__main__":
    main()

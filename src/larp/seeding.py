"""The one seeding scheme of the library: every random stream is derived from a base seed and named keys.

A run, a data stream or an evaluation has one user-given seed; the streams it needs (one per rank, per
epoch, per batch, per sample) are ``derive_seed(seed, *keys)``, which mixes the keys with NumPy's
``SeedSequence`` (a hash, not an addition), so that neighbouring seeds and keys never give overlapping or
correlated streams (seed 1 rank 0 is not seed 0 rank 1).
"""

from __future__ import annotations

import numpy as np

__all__ = ["derive_seed"]


def derive_seed(seed: int, *keys: int) -> int:
    """A 63-bit seed for the stream named by ``keys`` under the base ``seed`` (all non-negative integers)."""
    values = (seed, *keys)
    if any(int(v) < 0 for v in values):
        raise ValueError(f"seeds and keys must be non-negative integers, got {values}")
    # the base seed is the entropy and the keys the spawn key: SeedSequence's documented way to name
    # independent child streams
    sequence = np.random.SeedSequence(int(seed), spawn_key=tuple(int(k) for k in keys))
    return int(sequence.generate_state(1, np.uint64)[0] >> np.uint64(1))

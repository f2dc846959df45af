"""Seeds and generators: every random stream of a run is derived from the run's seed and
integers naming the stream (the party, the round, the purpose), so the same seed gives
the same draws wherever a computation runs (one by one, vectorised, or on Flower)."""

from __future__ import annotations

import numpy as np
import torch


def derive_seed(*parts: int) -> int:
    """A 63-bit seed mixed from integers (SeedSequence: no collisions from simple sums).
    Negative parts (the preparation round, -1) enter as their 64-bit two's complement."""
    return int(
        np.random.SeedSequence([int(p) % 2**64 for p in parts]).generate_state(2, np.uint64)[0]
        >> np.uint64(1)
    )


def torch_generator(*parts: int) -> torch.Generator:
    return torch.Generator().manual_seed(derive_seed(*parts))


def seeded(*parts: int) -> torch.Generator:
    """A generator seeded from integers: the methods' own randomness streams (the first
    state word of the SeedSequence; :func:`torch_generator` is the engine's)."""
    seed = np.random.SeedSequence([int(p) % 2**64 for p in parts]).generate_state(1, np.uint64)[0]
    return torch.Generator().manual_seed(int(seed >> np.uint64(1)))

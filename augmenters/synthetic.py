"""Methods whose clients train on their real data plus synthetic samples.

The synthetic set of a client is private to it (it was generated with the client's own
randomness). A client trains on the union; in an attacked step on a batch of B of its
n real images it mixes in its synthetic samples in the same proportion (at least one
when it has any, so the attacked step always carries both kinds).
"""

from __future__ import annotations

import torch

from privbench.augmenters.base import Augmenter, ClientState
from privbench.engine.seeding import seeded


def synthetic_in_batch(batch: int, real: int, synthetic: int) -> int:
    """Synthetic samples mixed into a step on ``batch`` of ``real`` images: all of them
    for the whole set, else the same proportion (at least 1 when there are any)."""
    if synthetic == 0 or batch >= real:
        return synthetic
    return min(synthetic, max(1, round(batch * synthetic / real)))


class SyntheticAugmenter(Augmenter):
    """Base of the generative methods: keeps each client's synthetic set."""

    def setup(self, **kwargs) -> None:
        super().setup(**kwargs)
        self.synthetic: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}

    def training_data(self, round: int, client: ClientState, x: torch.Tensor, y: torch.Tensor):
        xs, ys = self.synthetic.get(client.client_id, (None, None))
        if ys is None or not len(ys):
            return x, y
        n = synthetic_in_batch(len(y), len(client.y), len(ys))
        if n < len(ys):
            pick = torch.randperm(len(ys), generator=seeded(self.seed, 7, round, client.client_id))
            xs, ys = xs[pick[:n]], ys[pick[:n]]
        return torch.cat([x, xs.to(x.dtype)]), torch.cat([y, ys.to(y.dtype)])

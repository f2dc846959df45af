"""Methods whose clients train on their real data plus synthetic samples.

The synthetic set of a client is private to it (it was generated with the client's own
randomness). A client trains on the union; in an attacked step on a batch of B of its
n real images it mixes in its synthetic samples in the same proportion (at least one
when it has any, so the attacked step always carries both kinds).
"""

from __future__ import annotations

import torch

from privbench.augmenters.base import Augmenter, ClientRole, ClientState
from privbench.engine.seeding import seeded


def synthetic_in_batch(batch: int, real: int, synthetic: int) -> int:
    """Synthetic samples mixed into a step on ``batch`` of ``real`` images: all of them
    for the whole set, else the same proportion (at least 1 when there are any)."""
    if synthetic == 0 or batch >= real:
        return synthetic
    return min(synthetic, max(1, round(batch * synthetic / real)))


class SyntheticClient(ClientRole):
    """A client of a generative method: trains on its real data plus its private
    synthetic set, ``private[cid]["synthetic_x"/"synthetic_y"]``."""

    def synthetic(self, cid: int) -> tuple[torch.Tensor, torch.Tensor] | None:
        """Client ``cid``'s synthetic set, or ``None``."""
        mine = self.private.get(cid, {})
        if "synthetic_y" not in mine:
            return None
        return mine["synthetic_x"], mine["synthetic_y"]

    def keep_synthetic(self, cid: int, images: torch.Tensor, labels: torch.Tensor) -> None:
        self.private.setdefault(cid, {}).update(synthetic_x=images, synthetic_y=labels)

    def drop_synthetic(self, cid: int) -> None:
        mine = self.private.get(cid, {})
        mine.pop("synthetic_x", None)
        mine.pop("synthetic_y", None)

    def training_data(self, round: int, client: ClientState, x: torch.Tensor, y: torch.Tensor):
        own = self.synthetic(client.client_id)
        if own is None or not len(own[1]):
            return x, y
        xs, ys = own
        n = synthetic_in_batch(len(y), len(client.y), len(ys))
        if n < len(ys):
            pick = torch.randperm(
                len(ys), generator=seeded(self.method.seed, 7, round, client.client_id)
            )
            xs, ys = xs[pick[:n]], ys[pick[:n]]
        return torch.cat([x, xs.to(x.dtype)]), torch.cat([y, ys.to(y.dtype)])


class SyntheticAugmenter(Augmenter):
    """Base of the generative methods: their clients keep private synthetic sets."""

    Client = SyntheticClient

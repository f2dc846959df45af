"""``fedavg``: federated training with no data augmentation (the baseline)."""

from __future__ import annotations

from privbench.augmenters.base import AUGMENTERS, Augmenter


@AUGMENTERS.register(
    "fedavg",
    description="no augmentation: clients share only model updates (pick the trainer with "
    "--algorithm fedavg|fedprox|qffl)",
)
class NoAugmentation(Augmenter):
    name = "fedavg"

"""Local-only augmentation baselines from torchvision: RandAugment and TrivialAugment.

Each client augments its own images with torchvision's transforms (v2), one random
draw per image, seeded from the client's private randomness; nothing extra is shared.
They are FedAvP's baselines: fixed, hand-designed policies instead of a learned one.

A gradient attacker cannot replay torchvision's random ops differentiably (several
are integer-valued), so its view of these clients is un-augmented training.
"""

from __future__ import annotations

import torch
from torchvision.transforms import v2

from privbench.augmenters.base import AUGMENTERS, Augmenter, cross_entropy
from privbench.augmenters.ops import from_unit, to_unit
from privbench.errors import ParameterError
from privbench.registry import Param

_BINS = Param("magnitude_bins", int, 31, "number of magnitude bins (torchvision's default)", low=2)


class _TorchvisionAugment(Augmenter):
    def transform(self) -> v2.Transform:  # pragma: no cover - abstract
        raise NotImplementedError

    def augment(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """One independent draw of the transform per image (x: (B, C, H, W))."""
        t = self.transform()
        seed = int(torch.randint(2**62, (1,), generator=generator))
        unit = to_unit(x, self.value_range).clamp(0.0, 1.0)
        with torch.random.fork_rng():  # torchvision draws from the global generator
            torch.manual_seed(seed)
            out = torch.stack([t(img) for img in unit])
        return from_unit(out, self.value_range)

    def local_loss(self, model, x, y, *, received, generator=None):
        if generator is None:  # the attacker's view: see the module docstring
            return cross_entropy(model(x), y)
        return cross_entropy(model(self.augment(x, generator)), y)


@AUGMENTERS.register(
    "randaugment",
    params=(
        Param("num_ops", int, 2, "RandAugment's N: ops applied in sequence", low=1),
        Param("magnitude", int, 9, "RandAugment's M: magnitude bin of every op", low=0),
        _BINS,
    ),
    description="RandAugment (torchvision): N random ops at magnitude M per image; local "
    "only, nothing shared",
)
class RandAugment(_TorchvisionAugment):
    name = "randaugment"

    def __init__(self, **params):
        super().__init__(**params)
        if self.params["magnitude"] >= self.params["magnitude_bins"]:
            raise ParameterError(
                f"The 'magnitude' parameter of randaugment must be < magnitude_bins "
                f"({self.params['magnitude_bins']}). Got {self.params['magnitude']} instead."
            )

    def transform(self):
        p = self.params
        return v2.RandAugment(
            num_ops=p["num_ops"], magnitude=p["magnitude"], num_magnitude_bins=p["magnitude_bins"]
        )


@AUGMENTERS.register(
    "trivialaugment",
    params=(_BINS,),
    description="TrivialAugment Wide (torchvision): one random op at a random magnitude per "
    "image; local only, nothing shared",
)
class TrivialAugment(_TorchvisionAugment):
    name = "trivialaugment"

    def transform(self):
        return v2.TrivialAugmentWide(num_magnitude_bins=self.params["magnitude_bins"])

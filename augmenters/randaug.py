"""Local-only augmentation baselines from torchvision: RandAugment and TrivialAugment.

Each client augments its own images with torchvision's transforms (v2), one random
draw per image, seeded from the client's private randomness; nothing extra is shared.
They are FedAvP's baselines: fixed, hand-designed policies instead of a learned one.

A gradient attacker cannot replay torchvision's random ops differentiably (several
are integer-valued), so its view of these clients is un-augmented training: what it
rebuilds is the augmented image the victim trained on. The op space is public, so the
adversary enumerates every draw (RandAugment: each sequence of N ops at magnitude M,
either sign; TrivialAugment: each op at each magnitude bin, either sign) and holds its
reconstruction against the private image under each: a row's ``psnr_augmented`` scores
the draw it matches best (``augmented_views``).
"""

from __future__ import annotations

import itertools
from typing import TYPE_CHECKING

import torch

from privbench.augmenters.base import AUGMENTERS, Augmenter, cross_entropy
from privbench.augmenters.ops import from_unit, to_unit
from privbench.errors import ParameterError
from privbench.registry import Param

if TYPE_CHECKING:  # torchvision is imported where a transform is built (ops.F says why)
    from torchvision.transforms import v2

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

    def draws(self, height: int, width: int) -> list[tuple[tuple[str, float], ...]]:
        """Every draw of the transform: a sequence of (op, signed magnitude)."""
        raise NotImplementedError  # pragma: no cover - abstract

    def augmented_views(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` under every draw of :meth:`draws` (K, B, C, H, W), torchvision's own ops
        applied as the victim's transform applies them."""
        t = self.transform()
        unit = to_unit(x, self.value_range).clamp(0.0, 1.0)
        views = []
        for draw in self.draws(*x.shape[-2:]):
            img = unit
            for op, magnitude in draw:
                img = t._apply_image_or_video_transform(
                    img, op, magnitude, interpolation=t.interpolation, fill=t._fill
                )
            views.append(from_unit(img, self.value_range))
        return torch.stack(views)

    @staticmethod
    def _op_draws(t, magnitude_bins: list[int] | None, height: int, width: int) -> list:
        """(op, signed magnitude) for every op of ``t``'s space at the given magnitude
        bins (all bins when None), either sign where the op is signed; each once (bins
        of an integer op share values)."""
        out = []
        for op, (magnitudes_of, signed) in t._AUGMENTATION_SPACE.items():
            magnitudes = magnitudes_of(t.num_magnitude_bins, height, width)
            if magnitudes is None:
                out.append((op, 0.0))
                continue
            bins = magnitude_bins if magnitude_bins is not None else range(len(magnitudes))
            for b in bins:
                m = float(magnitudes[b])
                out += [(op, m), (op, -m)] if signed and m else [(op, m)]
        return list(dict.fromkeys(out))

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
        from torchvision.transforms import v2

        p = self.params
        return v2.RandAugment(
            num_ops=p["num_ops"], magnitude=p["magnitude"], num_magnitude_bins=p["magnitude_bins"]
        )

    def draws(self, height, width):
        ops = self._op_draws(self.transform(), [self.params["magnitude"]], height, width)
        return list(itertools.product(ops, repeat=self.params["num_ops"]))


@AUGMENTERS.register(
    "trivialaugment",
    params=(_BINS,),
    description="TrivialAugment Wide (torchvision): one random op at a random magnitude per "
    "image; local only, nothing shared",
)
class TrivialAugment(_TorchvisionAugment):
    name = "trivialaugment"

    def transform(self):
        from torchvision.transforms import v2

        return v2.TrivialAugmentWide(num_magnitude_bins=self.params["magnitude_bins"])

    def draws(self, height, width):
        return [(op,) for op in self._op_draws(self.transform(), None, height, width)]

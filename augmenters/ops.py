"""FedAvP's search space: 17 image operations, ordered pairs of them, and the policy net.

Every operation is a pure function ``op(x, u)`` of an image batch ``x`` (N, C, H, W) in
[0, 1] and a random draw ``u`` (2,) in [0, 1): the magnitude is ``low + u[0] * (high -
low)`` within the range of FedAvP's code (alsdml/FedAvP, ``aug_op_cifar_list``), and
the three random ops (flip, cutout, crop) take their coin or position from ``u``. So an
augmentation is replayable from its draws, which the attack views rely on.

The ops are torchvision.transforms.v2 functionals with torchvision's AutoAugment
conventions (shear as the angle of atan(m) about the corner, translation in whole
pixels, nearest interpolation, black fill). Posterize, Equalize, AutoContrast and
Sharpness have no usable gradient in torchvision (integer rounding, in-place updates);
when the input needs a gradient (a gradient-inversion attacker optimising dummy images
through them) they pass it straight through (identity gradient).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from privbench.augmenters.base import under_transform


class _Functional:
    """``torchvision.transforms.v2.functional``, imported when an op first runs.
    Importing torchvision costs about 2 s (its ``ops`` load ``torch._dynamo``), which a
    run or a ``privbench`` command that applies no op need not pay."""

    def __getattr__(self, name: str):
        from torchvision.transforms.v2 import functional

        value = getattr(functional, name)
        setattr(self, name, value)  # later lookups are plain attributes
        return value


F = _Functional()


@dataclass(frozen=True)
class Op:
    name: str
    low: float
    high: float
    fn: Callable[[torch.Tensor, float, torch.Tensor], torch.Tensor]  # (x, magnitude, u)
    differentiable: bool = True

    def magnitude(self, u: torch.Tensor) -> float:
        return self.low + float(u[0]) * (self.high - self.low)

    def __call__(self, x: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        m = self.magnitude(u)
        if self.differentiable or not (x.requires_grad or under_transform()):
            return self.fn(x, m, u)
        base = x.detach()
        with torch.no_grad():  # a constant at every autograd level (torch.func's included)
            out = self.fn(base, m, u)
        return x + (out - base)  # straight-through gradient


def _shear(axis: int):
    def fn(x, m, u):
        angle = math.degrees(math.atan(m))
        shear = [angle, 0.0] if axis == 0 else [0.0, angle]
        return F.affine(
            x,
            angle=0.0,
            translate=[0, 0],
            scale=1.0,
            shear=shear,
            interpolation=F.InterpolationMode.NEAREST,
            center=[0, 0],
        )

    return fn


def _translate(axis: int):
    def fn(x, m, u):
        size = x.shape[-1] if axis == 0 else x.shape[-2]
        shift = int(m * size)  # a fraction of the image side, in whole pixels
        t = [shift, 0] if axis == 0 else [0, shift]
        return F.affine(
            x,
            angle=0.0,
            translate=t,
            scale=1.0,
            shear=[0.0, 0.0],
            interpolation=F.InterpolationMode.NEAREST,
        )

    return fn


def _flip(x, m, u):
    return F.horizontal_flip(x) if float(u[0]) >= 0.5 else x


def _cutout(x, m, u):
    # DeVries & Taylor's cutout: a black square of half the image side, centre at u.
    h, w = x.shape[-2:]
    side_h, side_w = max(1, h // 2), max(1, w // 2)
    cy, cx = int(float(u[0]) * h), int(float(u[1]) * w)
    top, left = max(0, cy - side_h // 2), max(0, cx - side_w // 2)
    bottom, right = min(h, cy + (side_h + 1) // 2), min(w, cx + (side_w + 1) // 2)
    return F.erase(x, top, left, bottom - top, right - left, torch.zeros((), dtype=x.dtype))


def _crop(x, m, u):
    # Pad by 1/8 of the side (4 px on 32x32, CIFAR's usual crop) and crop back at u.
    h, w = x.shape[-2:]
    pad = max(1, h // 8)
    padded = F.pad(x, [pad, pad, pad, pad], fill=0.0)
    top = min(2 * pad, int(float(u[0]) * (2 * pad + 1)))
    left = min(2 * pad, int(float(u[1]) * (2 * pad + 1)))
    return F.crop(padded, top, left, h, w)


OPS: tuple[Op, ...] = (
    Op("Identity", 0.0, 1.0, lambda x, m, u: x),
    Op("ShearX", -0.3, 0.3, _shear(0)),
    Op("ShearY", -0.3, 0.3, _shear(1)),
    Op("TranslateX", -0.45, 0.45, _translate(0)),
    Op("TranslateY", -0.45, 0.45, _translate(1)),
    Op(
        "Rotate",
        -30.0,
        30.0,
        lambda x, m, u: F.rotate(x, angle=m, interpolation=F.InterpolationMode.NEAREST),
    ),
    Op("AutoContrast", 0.0, 1.0, lambda x, m, u: F.autocontrast(x), differentiable=False),
    Op("Equalize", 0.0, 1.0, lambda x, m, u: F.equalize(x), differentiable=False),
    # Solarize's threshold is on the 0..255 scale in FedAvP's range [0, 256].
    Op("Solarize", 0.0, 256.0, lambda x, m, u: F.solarize(x, threshold=min(m / 255.0, 1.0))),
    Op("Posterize", 4.0, 8.0, lambda x, m, u: F.posterize(x, bits=int(m)), differentiable=False),
    Op("Contrast", 0.1, 1.9, lambda x, m, u: F.adjust_contrast(x, contrast_factor=m)),
    Op("Color", 0.1, 1.9, lambda x, m, u: F.adjust_saturation(x, saturation_factor=m)),
    Op("Brightness", 0.1, 1.9, lambda x, m, u: F.adjust_brightness(x, brightness_factor=m)),
    Op(
        "Sharpness",
        0.1,
        1.9,
        lambda x, m, u: F.adjust_sharpness(x, sharpness_factor=m),
        differentiable=False,
    ),
    Op("Flip", 0.0, 1.0, _flip),
    Op("Cutout", 0.0, 1.0, _cutout),
    Op("Crop", 0.0, 1.0, _crop),
)
OP_NAMES = tuple(op.name for op in OPS)
NUM_OPS = len(OPS)
NUM_PAIRS = NUM_OPS * NUM_OPS  # ordered pairs (first op, second op): 289


def pair_ops(pair: int) -> tuple[int, int]:
    return divmod(int(pair), NUM_OPS)


def to_unit(x: torch.Tensor, value_range: tuple[float, float]) -> torch.Tensor:
    lo, hi = value_range
    return (x - lo) / (hi - lo)


def from_unit(x: torch.Tensor, value_range: tuple[float, float]) -> torch.Tensor:
    lo, hi = value_range
    return x * (hi - lo) + lo


def apply_pairs(
    x: torch.Tensor,
    pairs: torch.Tensor,
    draws: torch.Tensor,
    value_range: tuple[float, float] = (0.0, 1.0),
) -> torch.Tensor:
    """Augment image i with op pair ``pairs[i]`` and draws ``draws[i]`` (2 ops x 2 values).

    x: (N, C, H, W) in ``value_range``; pairs: (N,) in [0, 289); draws: (N, 2, 2).
    """
    unit = to_unit(x, value_range)
    out = []
    for i in range(len(x)):
        first, second = pair_ops(pairs[i])
        img = unit[i : i + 1]
        img = OPS[first](img, draws[i, 0])
        img = OPS[second](img, draws[i, 1])
        out.append(img)
    return from_unit(torch.cat(out), value_range)


def apply_all_pairs(
    x: torch.Tensor,
    draws: torch.Tensor,
    value_range: tuple[float, float] = (0.0, 1.0),
) -> torch.Tensor:
    """Every image through every ordered pair: (289, N, C, H, W), pair-major.

    ``draws`` (2, 17, 2): one draw per op and position, shared by all images, so each op
    runs once per position on a whole stack (34 calls instead of 578 per image).
    """
    unit = to_unit(x, value_range)
    firsts = torch.stack([OPS[a](unit, draws[0, a]) for a in range(NUM_OPS)])  # (17, N, ...)
    stacked = firsts.flatten(0, 1)  # (17 N, C, H, W)
    seconds = torch.stack([OPS[b](stacked, draws[1, b]) for b in range(NUM_OPS)])  # (17, 17N,)
    n = len(x)
    # seconds[b, a * n + i] = op_b(op_a(x_i)); reorder to pair index a * 17 + b.
    out = seconds.view(NUM_OPS, NUM_OPS, n, *x.shape[1:]).transpose(0, 1)
    return from_unit(out.reshape(NUM_PAIRS, n, *x.shape[1:]), value_range)


class PolicyNet(nn.Module):
    """FedAvP's policy: a learned embedding (H1) -> MLP (H2, LeakyReLU 0.1) -> one sigmoid
    score per ordered op pair (289). The embedding is the only input: the policy is a
    set of parameters shaped by the network, not a function of the data."""

    def __init__(self, h1: int = 100, h2: int = 100):
        super().__init__()
        self.embedding = nn.Parameter(torch.rand(h1))
        self.l1 = nn.Linear(h1, h2)
        self.l2 = nn.Linear(h2, h2)
        self.l3 = nn.Linear(h2, NUM_PAIRS)
        self.act = nn.LeakyReLU(0.1)

    def forward(self) -> torch.Tensor:
        h = self.act(self.l1(self.embedding))
        h = self.act(self.l2(h))
        return torch.sigmoid(self.l3(h))  # (289,) scores in (0, 1)


def sampling_probs(scores: torch.Tensor, eps: float) -> torch.Tensor:
    """MetaAugment's rule used by FedAvP: (1 - eps) * s / sum(s) + eps * uniform."""
    s = scores.detach()
    return (1.0 - eps) * s / s.sum() + eps / len(s)


def sample_pairs(
    scores: torch.Tensor, eps: float, n: int, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """n op pairs drawn from the policy, and their draws (n, 2, 2)."""
    pairs = torch.multinomial(sampling_probs(scores, eps), n, replacement=True, generator=generator)
    draws = torch.rand(n, 2, 2, generator=generator)
    return pairs, draws

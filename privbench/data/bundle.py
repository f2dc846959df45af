"""Your own data as a :class:`DataBundle`: tensors, arrays, any map-style ``Dataset``."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import torch

from privbench.errors import ParameterError


@dataclass(frozen=True)
class DataBundle:
    """A dataset held in memory: images in [0, 1], (N, C, H, W); labels (N,)."""

    name: str
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    num_classes: int
    class_names: tuple[str, ...]
    value_range: tuple[float, float] = (0.0, 1.0)

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.x_train.shape[1:])  # (C, H, W)

    def validation_split(self, fraction: float = 0.1, seed: int = 0) -> DataBundle:
        """A bundle for tuning: ``fraction`` of each class of the *training* set is held
        out and becomes the test split; the real test set is dropped, so nothing tuned
        on this bundle has seen it. Fixed by ``seed``."""
        if not 0 < fraction < 1:
            raise ParameterError(
                f"The 'fraction' parameter must be > 0 and < 1. Got {fraction!r} instead."
            )
        rng = np.random.default_rng([seed, 7919])
        y = self.y_train.numpy()
        held = []
        for c in np.unique(y):
            idx = np.flatnonzero(y == c)
            k = int(round(len(idx) * fraction))
            held.append(rng.choice(idx, size=k, replace=False))
        val = np.sort(np.concatenate(held))
        if not len(val) or len(val) == len(y):
            raise ParameterError(
                f"a validation fraction of {fraction} of {len(y)} training images leaves "
                "an empty split; use a larger dataset or another fraction."
            )
        keep = np.setdiff1d(np.arange(len(y)), val)
        return replace(
            self,
            x_train=self.x_train[keep],
            y_train=self.y_train[keep],
            x_test=self.x_train[val],
            y_test=self.y_train[val],
        )


def fixed_split(n: int, test_fraction: float, salt: int) -> tuple[np.ndarray, np.ndarray]:
    perm = np.random.default_rng(salt).permutation(n)
    n_test = int(round(n * test_fraction))
    return np.sort(perm[n_test:]), np.sort(perm[:n_test])


def _as_tensor(value: Any, what: str) -> torch.Tensor:
    if isinstance(value, torch.Tensor):
        return value.detach().cpu()
    try:
        return torch.as_tensor(np.asarray(value))
    except (TypeError, ValueError, RuntimeError) as err:
        raise ParameterError(f"{what} cannot be read as an array: {err}") from None


def _images(value: Any, what: str) -> tuple[torch.Tensor, bool]:
    """(N, C, H, W) float tensor and whether it came as 8-bit integers."""
    x = _as_tensor(value, what)
    if x.ndim == 3:  # (N, H, W) grayscale
        x = x.unsqueeze(1)
    if x.ndim != 4:
        raise ParameterError(
            f"{what} must be shaped (N, C, H, W), (N, H, W, C) or (N, H, W); got {tuple(x.shape)}."
        )
    if x.shape[1] not in (1, 3, 4) and x.shape[-1] in (1, 3, 4):  # channels last
        x = x.permute(0, 3, 1, 2)
    is_uint8 = x.dtype == torch.uint8
    x = x.float()
    if not torch.isfinite(x).all():
        raise ParameterError(f"{what} contains NaN or infinite values.")
    return (x / 255.0 if is_uint8 else x).contiguous(), is_uint8


def _labels(value: Any, n: int, what: str) -> torch.Tensor:
    y = _as_tensor(value, what).reshape(-1)
    if y.is_floating_point() or y.is_complex() or y.dtype == torch.bool:
        if y.is_floating_point() and torch.equal(y, y.round()):
            y = y.long()
        else:
            raise ParameterError(f"{what} must be integer class indices; got dtype {y.dtype}.")
    if len(y) != n:
        raise ParameterError(f"{what} has {len(y)} labels for {n} images.")
    if len(y) and int(y.min()) < 0:
        raise ParameterError(f"{what} has a negative class index ({int(y.min())}).")
    return y.long().contiguous()


def _materialise(dataset: Any, what: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Every (image, label) item of a map-style Dataset, stacked."""
    from PIL import Image
    from torchvision.transforms.v2.functional import pil_to_tensor

    xs, ys = [], []
    for i in range(len(dataset)):
        item = dataset[i]
        if not isinstance(item, (tuple, list)) or len(item) < 2:
            raise ParameterError(
                f"{what}[{i}] is a {type(item).__name__}; items must be (image, label) pairs."
            )
        img, label = item[0], item[1]
        if isinstance(img, Image.Image):
            img = pil_to_tensor(img.convert("L" if img.mode == "L" else "RGB"))
        xs.append(_as_tensor(img, f"{what}[{i}] image"))
        ys.append(int(label))
    if not xs:
        raise ParameterError(f"{what} is empty.")
    shapes = {tuple(t.shape) for t in xs}
    if len(shapes) > 1:
        raise ParameterError(
            f"{what} has images of different shapes ({sorted(shapes)[:3]}); resize them in "
            "the Dataset's transform."
        )
    x = torch.stack(xs)
    if x.ndim == 4 and x.shape[1] not in (1, 3, 4):  # stacked (H, W, C) items
        x = x.permute(0, 3, 1, 2)
    return x, torch.tensor(ys)


def _is_dataset(obj: Any) -> bool:
    return (
        hasattr(obj, "__getitem__")
        and hasattr(obj, "__len__")
        and not isinstance(obj, (torch.Tensor, np.ndarray, Sequence, Mapping))
    )


def as_bundle(
    data: Any,
    *,
    name: str = "custom",
    num_classes: int | None = None,
    class_names: Sequence[str] | None = None,
    value_range: tuple[float, float] | None = None,
    test_fraction: float = 0.2,
) -> DataBundle:
    """Bring your own data: a :class:`DataBundle` from what you have.

    ``data`` may be a DataBundle; a dict with ``x_train, y_train`` (and optionally
    ``x_test, y_test``); a tuple ``(x, y)`` or ``(x_train, y_train, x_test, y_test)`` of
    tensors or arrays; a map-style ``Dataset`` of (image, label) pairs; or a tuple
    ``(train_dataset, test_dataset)``. Images may be (N, C, H, W), (N, H, W, C) or
    (N, H, W); uint8 images are scaled to [0, 1]. Without a test split a fixed
    ``test_fraction`` is held out. ``num_classes`` defaults to the largest label + 1;
    ``value_range`` to [0, 1] when the images lie in it, else their min and max
    (attacks clamp to it and PSNR is measured on it).
    """
    if isinstance(data, DataBundle):
        return data
    if isinstance(data, Mapping):
        missing = {"x_train", "y_train"} - set(data)
        if missing:
            raise ParameterError(
                f"data dict lacks {sorted(missing)}; give x_train, y_train (x_test, y_test "
                "optional)."
            )
        parts = [data["x_train"], data["y_train"]]
        if "x_test" in data or "y_test" in data:
            parts += [data["x_test"], data["y_test"]]
    elif _is_dataset(data):
        parts = list(_materialise(data, "dataset"))
    elif isinstance(data, (tuple, list)) and len(data) == 2 and all(map(_is_dataset, data)):
        parts = [*_materialise(data[0], "train dataset"), *_materialise(data[1], "test dataset")]
    elif isinstance(data, (tuple, list)) and len(data) in (2, 4):
        parts = list(data)
    else:
        raise ParameterError(
            f"Cannot use a {type(data).__name__} as data: give (x, y) or (x_train, y_train, "
            "x_test, y_test) tensors/arrays, a dict of those, a map-style Dataset of (image, "
            "label) pairs, (train_dataset, test_dataset) or a DataBundle."
        )
    x_tr, uint8 = _images(parts[0], "training images")
    y_tr = _labels(parts[1], len(x_tr), "training labels")
    if len(parts) == 4:
        x_te, _ = _images(parts[2], "test images")
        y_te = _labels(parts[3], len(x_te), "test labels")
        if x_te.shape[1:] != x_tr.shape[1:]:
            raise ParameterError(
                f"test images are {tuple(x_te.shape[1:])} but training images are "
                f"{tuple(x_tr.shape[1:])}."
            )
    else:
        if not 0 < test_fraction < 1:
            raise ParameterError(
                f"The 'test_fraction' parameter must be > 0 and < 1. Got {test_fraction!r}."
            )
        tr, te = fixed_split(len(y_tr), test_fraction, salt=3)
        if len(tr) == 0 or len(te) == 0:
            raise ParameterError(f"{len(y_tr)} images are too few to hold out a test split.")
        x_tr, y_tr, x_te, y_te = x_tr[tr], y_tr[tr], x_tr[te], y_tr[te]
    seen = int(max(int(y_tr.max()), int(y_te.max()) if len(y_te) else 0)) + 1
    if class_names is not None and num_classes is None:
        num_classes = len(class_names)
    num_classes = num_classes if num_classes is not None else seen
    if num_classes < 2 or seen > num_classes:
        raise ParameterError(
            f"The 'num_classes' parameter must be >= 2 and above every label ({seen - 1}). "
            f"Got {num_classes}."
        )
    names = tuple(class_names) if class_names is not None else tuple(map(str, range(num_classes)))
    if len(names) != num_classes:
        raise ParameterError(f"{len(names)} class names for {num_classes} classes.")
    if value_range is None:
        lo = min(float(x_tr.min()), float(x_te.min()))
        hi = max(float(x_tr.max()), float(x_te.max()))
        value_range = (0.0, 1.0) if (uint8 or (lo >= 0.0 and hi <= 1.0)) else (lo, hi)
    lo, hi = (float(v) for v in value_range)
    if not hi > lo:
        raise ParameterError(
            f"The 'value_range' parameter must be (low, high) with high > low; got {value_range!r}."
        )
    return DataBundle(
        name=name,
        x_train=x_tr,
        y_train=y_tr,
        x_test=x_te,
        y_test=y_te,
        num_classes=num_classes,
        class_names=names,
        value_range=(lo, hi),
    )

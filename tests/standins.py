"""Small, learnable stand-ins for the datasets that cannot be had offline (CIFAR-10/100,
EMNIST, an image folder), written in each dataset's real on-disk format so privbench
reads them with the same torchvision code as the real files.

Each class is a fixed template (a coarse random 4x4 grid per channel, enlarged, so the
class survives pooling) plus per-image noise: a model that trains at all separates the
classes; one that does not (a diverging learning rate, a broken loader) stays at chance.
"""

from __future__ import annotations

import os
import pickle
import struct
from pathlib import Path

import numpy as np


def class_images(
    n: int, classes: int, shape: tuple[int, ...], *, seed: int = 0, noise=0.35, channels_last=False
):
    """``n`` uint8 images of ``shape`` and their labels (``i % classes``): class template
    times (1 - noise) plus uniform noise. ``shape`` is (H, W), (C, H, W), or (H, W, C)
    with ``channels_last``."""
    rng = np.random.default_rng(seed)
    axes = (0, 1) if channels_last or len(shape) == 2 else (1, 2)
    coarse = [4 if i in axes else d for i, d in enumerate(shape)]
    templates = rng.uniform(0, 255, (classes, *coarse))
    for ax in axes:
        templates = np.repeat(templates, shape[ax] // 4, axis=ax + 1)
    labels = np.arange(n) % classes
    rng.shuffle(labels)
    images = (1 - noise) * templates[labels] + noise * rng.uniform(0, 255, (n, *shape))
    return images.round().astype(np.uint8), labels


def write_idx(path, array: np.ndarray) -> None:
    """MNIST's IDX format: big-endian magic and sizes, then the uint8 data."""
    magic = {1: 0x0801, 3: 0x0803}[array.ndim]
    with open(path, "wb") as fh:
        fh.write(struct.pack(">I", magic))
        for n in array.shape:
            fh.write(struct.pack(">I", n))
        fh.write(array.astype(np.uint8).tobytes())


def write_emnist(root: Path, *, n_train=940, n_test=470, classes=47) -> None:
    """EMNIST ``balanced`` (47 classes) in torchvision's raw IDX layout."""
    raw = root / "EMNIST" / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    x, y = class_images(n_train + n_test, classes, (28, 28), seed=1)
    for prefix, sl in (("train", slice(0, n_train)), ("test", slice(n_train, None))):
        write_idx(raw / f"emnist-balanced-{prefix}-images-idx3-ubyte", x[sl])
        write_idx(raw / f"emnist-balanced-{prefix}-labels-idx1-ubyte", y[sl])


def write_cifar(root: Path, name: str, *, per_batch=200, n_test=400) -> None:
    """CIFAR-10 (5 training batches) or CIFAR-100 (one ``train`` file), pickled as
    torchvision reads them. The real archives are checked by MD5, which stand-ins cannot
    match: callers reduce torchvision's ``check_integrity`` to "the file exists"."""
    if name == "cifar10":
        folder, files, key, meta, classes = (
            "cifar-10-batches-py",
            [f"data_batch_{i}" for i in range(1, 6)],
            "labels",
            ("batches.meta", "label_names"),
            10,
        )
        test = "test_batch"
    else:
        folder, files, key, meta, classes = (
            "cifar-100-python",
            ["train"],
            "fine_labels",
            ("meta", "fine_label_names"),
            100,
        )
        test = "test"
        per_batch *= 5  # one file holds what CIFAR-10 splits into five
    base = root / folder
    base.mkdir(parents=True, exist_ok=True)
    n_train = per_batch * len(files)
    x, y = class_images(n_train + n_test, classes, (3, 32, 32), seed=2)
    x = x.reshape(len(x), -1)
    chunks = [(f, slice(i * per_batch, (i + 1) * per_batch)) for i, f in enumerate(files)]
    for f, sl in [*chunks, (test, slice(n_train, None))]:
        with open(base / f, "wb") as fh:
            pickle.dump({"data": x[sl], key: [int(v) for v in y[sl]]}, fh)
    with open(base / meta[0], "wb") as fh:
        pickle.dump({meta[1]: [f"c{i}" for i in range(classes)]}, fh)


def write_imagefolder(root: Path, *, classes=4, per_class=60, size=16) -> None:
    """One sub-folder of RGB PNGs per class (torchvision's ImageFolder layout)."""
    from PIL import Image

    x, y = class_images(classes * per_class, classes, (size, size, 3), seed=3, channels_last=True)
    for k in range(classes):
        os.makedirs(root / f"class{k}", exist_ok=True)
    for i, (img, label) in enumerate(zip(x, y, strict=True)):
        Image.fromarray(img).save(root / f"class{label}" / f"{i}.png")

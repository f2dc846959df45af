"""Datasets: real images that ship inside installed packages, plus torchvision's.

Every dataset is returned as a :class:`DataBundle` of float32 tensors in [0, 1]
shaped (N, C, H, W) with int64 labels; small enough to live in memory, so local
training indexes tensors instead of running a DataLoader per batch.

Embedded (no internet): ``digits`` (scikit-learn), ``photos`` (scikit-image's
bundled photographs), ``faces`` and ``lfw`` (scikit-image's LFW subset). From ``--data-root``:
``mnist``, ``fashionmnist``, ``emnist``, ``cifar10``, ``cifar100`` and ``imagefolder``
(one sub-folder of images per class). A user's own data (tensors, arrays, any
map-style ``Dataset``) becomes a bundle through :func:`as_bundle`; an import string
``package.module:load`` names a function returning any of those.
"""

from __future__ import annotations

import os
from functools import lru_cache
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from privbench.data.bundle import DataBundle, as_bundle, fixed_split
from privbench.data.imagefolder import read_image_folder, to_channels
from privbench.errors import DatasetNotFoundError, ParameterError, PrivbenchError, UserCodeError
from privbench.registry import Entry, Param, Registry, first_doc_line


def _import_dataset(name: str, obj: Any) -> Entry[DataBundle]:
    if not callable(obj):
        raise ParameterError(
            f"dataset '{name}' is a {type(obj).__name__}; an imported dataset must be a "
            "function returning tensors, a Dataset or a DataBundle (see privbench.as_bundle)."
        )

    def load(*, root=None, download=False, **params):
        try:
            got = obj(**params)
        except PrivbenchError:
            raise
        except Exception as err:  # the user's loader failed: say so in one line
            raise UserCodeError(
                f"dataset '{name}' (--dataset): your loader raised {type(err).__name__}: {err}"
            ) from err
        return as_bundle(got, name=name)

    return Entry(name, load, tuple(getattr(obj, "PARAMS", ())), first_doc_line(obj) or name)


DATASETS: Registry[DataBundle] = Registry("dataset", importer=_import_dataset)

_SIZE = Param(
    "image_size",
    int,
    None,
    "resize images to SIZE x SIZE (default: native size)",
    low=4,
    high=512,
    nullable=True,
)
_TRAIN_SIZE = Param(
    "train_size",
    int,
    None,
    "keep a fixed random subset of this many training images",
    low=10,
    nullable=True,
)
_TEST_SIZE = Param(
    "test_size",
    int,
    None,
    "keep a fixed random subset of this many test images",
    low=10,
    nullable=True,
)


def _resize(x: torch.Tensor, size: int | None) -> torch.Tensor:
    if size is None or tuple(x.shape[-2:]) == (size, size):
        return x
    # antialias so that downsizing photos does not alias; clamp keeps the [0, 1] box.
    return F.interpolate(
        x, size=(size, size), mode="bilinear", antialias=True, align_corners=False
    ).clamp_(0.0, 1.0)


def _subset(x: torch.Tensor, y: torch.Tensor, n: int | None, salt: int):
    if n is None or n >= len(y):
        return x, y
    # A fixed subset (independent of the experiment seed): the dataset is part of the
    # benchmark's definition, the seed varies training and attacks only.
    idx = torch.from_numpy(np.random.default_rng(salt).permutation(len(y))[:n])
    return x[idx], y[idx]


def _finish(name, x_tr, y_tr, x_te, y_te, classes, image_size, train_size=None, test_size=None):
    x_tr, y_tr = _subset(x_tr, y_tr, train_size, 1)
    x_te, y_te = _subset(x_te, y_te, test_size, 2)
    return DataBundle(
        name=name,
        x_train=_resize(x_tr.float().contiguous(), image_size),
        y_train=y_tr.long().contiguous(),
        x_test=_resize(x_te.float().contiguous(), image_size),
        y_test=y_te.long().contiguous(),
        num_classes=len(classes),
        class_names=tuple(classes),
    )


def _digits_arrays() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's digits as its ``load_digits`` reads them (the CSV in its wheel,
    ``np.loadtxt``, the last column the label), without importing ``sklearn.datasets``:
    that import loads scipy.stats and costs a digits run about 2 s at start-up
    (docs/performance.md). Where the file is not (a scikit-learn that moved it), its own
    loader reads it."""
    import gzip
    import importlib.util
    import io
    from pathlib import Path

    spec = importlib.util.find_spec("sklearn")  # finds the package, does not import it
    roots = list(spec.submodule_search_locations or []) if spec is not None else []
    path = Path(roots[0], "datasets", "data", "digits.csv.gz") if roots else None
    if path is None or not path.is_file():
        from sklearn.datasets import load_digits as sk_digits

        d = sk_digits()
        return d.images, d.target
    with gzip.open(path) as fh:
        data = np.loadtxt(io.TextIOWrapper(fh, encoding="utf-8"), delimiter=",")
    return data[:, :-1].reshape(-1, 8, 8), data[:, -1].astype(int, copy=False)


@DATASETS.register(
    "digits",
    params=(_SIZE,),
    description="scikit-learn's 1,797 real 8x8 handwritten digits, 10 classes (embedded)",
)
def load_digits(*, image_size=None, root=None, download=False) -> DataBundle:
    images, target = _digits_arrays()
    x = torch.from_numpy(images.astype(np.float32) / 16.0).unsqueeze(1)  # (N, 1, 8, 8)
    y = torch.from_numpy(target.astype(np.int64))
    tr, te = fixed_split(len(y), 0.2, salt=0)
    return _finish("digits", x[tr], y[tr], x[te], y[te], [str(i) for i in range(10)], image_size)


# The photographs bundled in scikit-image's wheel (no download): one class per photo.
PHOTO_NAMES = (
    "astronaut",
    "coffee",
    "chelsea",
    "rocket",
    "immunohistochemistry",
    "hubble_deep_field",
    "retina",
    "colorwheel",
    "camera",
    "brick",
)


@lru_cache(maxsize=4)
def _photo_crops(per_class: int, crop: int) -> tuple[np.ndarray, np.ndarray]:
    import skimage.data
    from skimage.color import gray2rgb
    from skimage.transform import resize

    rng = np.random.default_rng(20240601)  # fixed: the crops are part of the dataset
    images, labels = [], []
    for label, name in enumerate(PHOTO_NAMES):
        img = getattr(skimage.data, name)()
        if img.ndim == 2:
            img = gray2rgb(img)
        img = img[..., :3].astype(np.float32) / 255.0
        # Scale so the short side is 4 crops long: crops then show textures and parts
        # of objects at a CIFAR-like scale instead of near-flat patches.
        scale = (4 * crop) / min(img.shape[:2])
        h, w = int(round(img.shape[0] * scale)), int(round(img.shape[1] * scale))
        img = resize(img, (h, w), anti_aliasing=True).astype(np.float32)
        for _ in range(per_class):
            top = rng.integers(0, h - crop + 1)
            left = rng.integers(0, w - crop + 1)
            patch = img[top : top + crop, left : left + crop]
            if rng.random() < 0.5:
                patch = patch[:, ::-1]
            images.append(patch.transpose(2, 0, 1).copy())  # (3, crop, crop)
            labels.append(label)
    return np.clip(np.stack(images), 0.0, 1.0), np.array(labels, dtype=np.int64)


@DATASETS.register(
    "photos",
    params=(_SIZE, Param("per_class", int, 150, "crops per photograph", low=5, high=5000)),
    description="deterministic 32x32 RGB crops of the 10 photographs bundled in scikit-image, "
    "label = photo (embedded)",
)
def load_photos(*, image_size=None, per_class=150, root=None, download=False) -> DataBundle:
    x, y = _photo_crops(per_class, 32)
    tr, te = fixed_split(len(y), 0.2, salt=1)
    x, y = torch.from_numpy(x), torch.from_numpy(y)
    return _finish("photos", x[tr], y[tr], x[te], y[te], list(PHOTO_NAMES), image_size)


def _register_lfw(name: str, description: str) -> None:
    def load(*, image_size=None, root=None, download=False) -> DataBundle:
        import skimage.data

        imgs = skimage.data.lfw_subset().astype(np.float32)  # (200, 25, 25): 100 faces, 100 not
        x = torch.from_numpy(imgs).unsqueeze(1)
        y = torch.from_numpy(np.array([1] * 100 + [0] * 100, dtype=np.int64))
        tr, te = fixed_split(len(y), 0.2, salt=2)
        return _finish(name, x[tr], y[tr], x[te], y[te], ["non-face", "face"], image_size)

    DATASETS.register(name, params=(_SIZE,), description=description)(load)


_register_lfw("faces", "scikit-image's 200 real 25x25 grey LFW crops: face vs non-face (embedded)")
_register_lfw("lfw", "the 'faces' crops under the name face-reconstruction papers use (embedded)")


DATA_ROOT_ENV = "PRIVBENCH_DATA_ROOT"  # the data folder when --data-root is not given

# name -> (torchvision class name, folder it reads under root, extra kwargs)
_TORCHVISION = {
    "mnist": ("MNIST", "MNIST/raw", {}),
    "fashionmnist": ("FashionMNIST", "FashionMNIST/raw", {}),
    "emnist": ("EMNIST", "EMNIST/raw", {}),
    "cifar10": ("CIFAR10", "cifar-10-batches-py", {}),
    "cifar100": ("CIFAR100", "cifar-100-python", {}),
}


def _load_torchvision(name, *, root, download, image_size, train_size, test_size, **kw):
    import torchvision.datasets as tvd

    cls_name, folder, extra = _TORCHVISION[name]
    cls = getattr(tvd, cls_name)
    root = os.path.abspath(os.path.expanduser(root or "./data"))
    expected = os.path.join(root, folder)
    splits = []
    for train in (True, False):
        try:
            ds = cls(root=root, train=train, download=download, **extra, **kw)
        except RuntimeError as err:
            if "not found" in str(err).lower() or "corrupted" in str(err).lower():
                hint = (
                    ""
                    if download
                    else "; pass --download (needs internet) or point "
                    "--data-root at the folder that holds it"
                )
                raise DatasetNotFoundError(
                    f"Dataset '{name}' not found: expected {expected}{hint}."
                ) from None
            raise
        data = ds.data
        data = torch.from_numpy(data) if isinstance(data, np.ndarray) else data
        # (N, H, W) grayscale or (N, H, W, C) colour -> (N, C, H, W)
        data = data.unsqueeze(1) if data.ndim == 3 else data.permute(0, 3, 1, 2)
        if name == "emnist":
            data = data.transpose(-1, -2)  # EMNIST is stored transposed; make it upright
        targets = torch.as_tensor(np.asarray(ds.targets), dtype=torch.long)
        splits.append((data.float() / 255.0, targets, list(ds.classes)))
    (x_tr, y_tr, classes), (x_te, y_te, _) = splits
    return _finish(name, x_tr, y_tr, x_te, y_te, classes, image_size, train_size, test_size)


def _register_torchvision(name: str, desc: str, extra_params=()):
    def loader(
        *, root=None, download=False, image_size=None, train_size=None, test_size=None, **kw
    ):
        return _load_torchvision(
            name,
            root=root,
            download=download,
            image_size=image_size,
            train_size=train_size,
            test_size=test_size,
            **kw,
        )

    DATASETS.register(
        name, params=(_SIZE, _TRAIN_SIZE, _TEST_SIZE, *extra_params), description=desc
    )(loader)


_register_torchvision("mnist", "MNIST from --data-root (torchvision; --download to fetch)")
_register_torchvision("fashionmnist", "Fashion-MNIST from --data-root (torchvision)")
_register_torchvision(
    "emnist",
    "EMNIST from --data-root (torchvision; --emnist-split picks the split)",
    (
        Param(
            "emnist_split",
            str,
            "balanced",
            "EMNIST split",
            choices=("byclass", "bymerge", "balanced", "letters", "digits", "mnist"),
        ),
    ),
)
_register_torchvision("cifar10", "CIFAR-10 from --data-root (torchvision)")
_register_torchvision("cifar100", "CIFAR-100 from --data-root (torchvision)")


@DATASETS.register(
    "imagefolder",
    params=(
        _SIZE,
        Param(
            "channels",
            int,
            None,
            "1 (grayscale) or 3 (RGB); default: 1 if every image is grayscale, else 3",
            choices=(1, 3),
            nullable=True,
        ),
        Param(
            "test_fraction",
            float,
            0.2,
            "share held out for testing when the folder has no train/ and test/ sub-folders",
            low=0.0,
            high=1.0,
            low_open=True,
            high_open=True,
        ),
    ),
    description="your images from --data-root: one sub-folder per class (or train/ and "
    "test/ folders laid out so), read with torchvision's ImageFolder",
)
def load_imagefolder(
    *, root=None, download=False, image_size=None, channels=None, test_fraction=0.2
) -> DataBundle:
    if not root:
        raise DatasetNotFoundError(
            "Dataset 'imagefolder' needs --data-root DIR: a folder with one sub-folder of "
            "images per class (DIR/cat/1.png, DIR/dog/7.jpg, ...), or DIR/train and DIR/test "
            "laid out so."
        )
    root = os.path.abspath(os.path.expanduser(root))
    if not os.path.isdir(root):
        raise DatasetNotFoundError(f"Dataset 'imagefolder': {root} is not a folder.")
    train_dir, test_dir = os.path.join(root, "train"), os.path.join(root, "test")
    if os.path.isdir(train_dir) and os.path.isdir(test_dir):
        (x_tr, y_tr, classes), (x_te, y_te, test_classes) = (
            read_image_folder(d, image_size, channels) for d in (train_dir, test_dir)
        )
        if test_classes != classes:
            raise ParameterError(
                f"Dataset 'imagefolder': train/ has classes {classes} but test/ has "
                f"{test_classes}; they must be the same folders."
            )
        if x_tr.shape[1] != x_te.shape[1]:  # auto channels decided differently per split
            x_tr, x_te = (to_channels(x, 3) for x in (x_tr, x_te))
    else:
        x, y, classes = read_image_folder(root, image_size, channels)
        tr, te = fixed_split(len(y), test_fraction, salt=4)
        if len(tr) == 0 or len(te) == 0:
            raise ParameterError(
                f"Dataset 'imagefolder': {len(y)} images cannot be split into train and test "
                f"with test_fraction {test_fraction}; add images or train/ and test/ folders."
            )
        x_tr, y_tr, x_te, y_te = x[tr], y[tr], x[te], y[te]
    return _finish("imagefolder", x_tr, y_tr, x_te, y_te, classes, None)


def load_dataset(
    name: str, params: dict | None = None, *, root: str | None = None, download: bool = False
) -> DataBundle:
    """Load a registered dataset by name with validated parameters. ``root``: the folder
    of file-backed datasets; for the torchvision datasets, when not given, the
    ``PRIVBENCH_DATA_ROOT`` environment variable, else ``./data`` (``imagefolder`` always
    needs its own folder)."""
    resolved = DATASETS.resolve_params(name, params)
    if root is None and name in _TORCHVISION:
        root = os.environ.get(DATA_ROOT_ENV) or None
    if name == "emnist":
        resolved["split"] = resolved.pop("emnist_split")
    return DATASETS.entry(name).factory(root=root, download=download, **resolved)

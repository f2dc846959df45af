"""Embedded datasets, and torchvision datasets read from tiny files in their on-disk formats."""

import os
import pickle

import numpy as np
import pytest
import torch

from privbench.data import PHOTO_NAMES, load_dataset
from privbench.errors import DatasetNotFoundError, ParameterError
from tests.standins import write_idx


def test_digits_is_real_and_in_range():
    d = load_dataset("digits")
    assert d.shape == (1, 8, 8) and d.num_classes == 10
    assert len(d.y_train) + len(d.y_test) == 1797
    assert float(d.x_train.min()) == 0.0 and float(d.x_train.max()) == 1.0
    assert set(d.y_train.tolist()) == set(range(10))


def test_digits_are_scikit_learns_own_arrays_read_without_importing_it():
    """The digits come from the CSV in scikit-learn's wheel, exactly as its loader reads
    them, and a process that loads them does not import sklearn (its start-up cost)."""
    import subprocess
    import sys

    from sklearn.datasets import load_digits

    from privbench.data.datasets import _digits_arrays

    images, target = _digits_arrays()
    ref = load_digits()
    assert images.dtype == ref.images.dtype and target.dtype == ref.target.dtype
    assert np.array_equal(images, ref.images) and np.array_equal(target, ref.target)
    code = (
        "import sys; from privbench.data import load_dataset; load_dataset('digits'); "
        "print(sorted(m for m in sys.modules if m.split('.')[0] == 'sklearn'))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_digits_fall_back_to_scikit_learns_loader_where_its_file_is_not(monkeypatch):
    import importlib.util

    from privbench.data import datasets

    want = datasets._digits_arrays()
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None)
    images, target = datasets._digits_arrays()
    assert np.array_equal(images, want[0]) and np.array_equal(target, want[1])


def test_digits_resize():
    d = load_dataset("digits", {"image_size": 16})
    assert d.shape == (1, 16, 16)
    assert float(d.x_train.min()) >= 0.0 and float(d.x_train.max()) <= 1.0


def test_photos_deterministic_rgb_crops():
    a, b = load_dataset("photos"), load_dataset("photos")
    assert a.shape == (3, 32, 32) and a.num_classes == len(PHOTO_NAMES) >= 8
    assert torch.equal(a.x_train, b.x_train) and torch.equal(a.y_test, b.y_test)
    assert len(a.y_train) == 1200 and len(a.y_test) == 300
    # Natural images: not flat, and the classes differ in colour statistics.
    assert float(a.x_train.std()) > 0.1
    means = torch.stack([a.x_train[a.y_train == c].mean(dim=(0, 2, 3)) for c in range(10)])
    assert float(means.std(dim=0).mean()) > 0.03


def test_faces():
    d = load_dataset("faces")
    assert d.shape == (1, 25, 25) and d.num_classes == 2
    assert len(d.y_train) + len(d.y_test) == 200


def test_lfw_is_the_faces_data_under_its_papers_name():
    a, b = load_dataset("faces"), load_dataset("lfw", {"image_size": 32})
    assert b.name == "lfw" and b.shape == (1, 32, 32) and b.class_names == a.class_names
    assert torch.equal(a.y_train, b.y_train)


def test_bad_dataset_params():
    with pytest.raises(ParameterError, match="'image_size' parameter of dataset 'digits'"):
        load_dataset("digits", {"image_size": 2})


def _write_mnist_like(raw, prefix_train, prefix_test, n=20, classes=10):
    os.makedirs(raw, exist_ok=True)
    rng = np.random.default_rng(0)
    for prefix, count in ((prefix_train, n), (prefix_test, n // 2)):
        write_idx(
            os.path.join(raw, f"{prefix}-images-idx3-ubyte"), rng.integers(0, 256, (count, 28, 28))
        )
        write_idx(os.path.join(raw, f"{prefix}-labels-idx1-ubyte"), np.arange(count) % classes)


@pytest.mark.parametrize("name, folder", [("mnist", "MNIST"), ("fashionmnist", "FashionMNIST")])
def test_mnist_family_from_disk(tmp_path, name, folder):
    _write_mnist_like(tmp_path / folder / "raw", "train", "t10k")
    d = load_dataset(name, root=str(tmp_path))
    assert d.shape == (1, 28, 28) and len(d.y_train) == 20 and len(d.y_test) == 10
    assert float(d.x_train.max()) <= 1.0 and d.num_classes == 10


def test_emnist_from_disk_is_made_upright(tmp_path):
    raw = tmp_path / "EMNIST" / "raw"
    _write_mnist_like(raw, "emnist-balanced-train", "emnist-balanced-test", classes=47)
    d = load_dataset("emnist", root=str(tmp_path))
    img = np.fromfile(
        raw / "emnist-balanced-train-images-idx3-ubyte", dtype=np.uint8, offset=16
    ).reshape(20, 28, 28)
    assert torch.allclose(d.x_train[0, 0], torch.from_numpy(img[0].T / 255.0).float())
    assert d.num_classes == 47


@pytest.mark.parametrize(
    "name, folder, files, label_key, meta",
    [
        (
            "cifar10",
            "cifar-10-batches-py",
            [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"],
            "labels",
            ("batches.meta", "label_names", 10),
        ),
        (
            "cifar100",
            "cifar-100-python",
            ["train", "test"],
            "fine_labels",
            ("meta", "fine_label_names", 100),
        ),
    ],
)
def test_cifar_from_disk(tmp_path, monkeypatch, name, folder, files, label_key, meta):
    import torchvision.datasets.cifar as tv_cifar

    base = tmp_path / folder
    base.mkdir()
    rng = np.random.default_rng(0)
    for f in files:
        with open(base / f, "wb") as fh:
            pickle.dump(
                {
                    "data": rng.integers(0, 256, (6, 3072), dtype=np.uint8),
                    label_key: list(range(6)),
                },
                fh,
            )
    meta_file, meta_key, k = meta
    with open(base / meta_file, "wb") as fh:
        pickle.dump({meta_key: [f"c{i}" for i in range(k)]}, fh)
    # The real archives are checked by MD5; tiny stand-ins cannot match it, so the check
    # is reduced to "the file exists". Parsing is torchvision's own, unchanged.
    monkeypatch.setattr(tv_cifar, "check_integrity", lambda path, md5=None: os.path.isfile(path))
    d = load_dataset(name, root=str(tmp_path))
    assert d.shape == (3, 32, 32) and d.num_classes == k
    assert len(d.y_train) == 6 * (len(files) - 1) and len(d.y_test) == 6


def test_missing_dataset_is_one_clear_error(tmp_path):
    with pytest.raises(DatasetNotFoundError) as err:
        load_dataset("mnist", root=str(tmp_path))
    msg = str(err.value)
    assert str(tmp_path / "MNIST" / "raw") in msg and "--download" in msg
    assert "\n" not in msg

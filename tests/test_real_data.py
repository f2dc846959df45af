"""The real datasets (MNIST, Fashion-MNIST) from the folder a user points privbench at:
``--data-root`` or ``PRIVBENCH_DATA_ROOT``; never copied into the repository."""

from __future__ import annotations

import pytest
import torch

import privbench
from privbench.data.datasets import load_dataset
from tests.conftest import tiny_config


@pytest.mark.parametrize(
    "name, first_classes", [("mnist", ["0 - zero", "1 - one"]), ("fashionmnist", ["T-shirt/top"])]
)
def test_real_datasets_load_in_full_from_the_data_root(data_root, name, first_classes):
    data = load_dataset(name, root=data_root)
    assert data.x_train.shape == (60_000, 1, 28, 28) and data.x_test.shape == (10_000, 1, 28, 28)
    assert data.num_classes == 10 and data.value_range == (0.0, 1.0)
    assert float(data.x_train.min()) == 0.0 and float(data.x_train.max()) == 1.0
    assert list(data.class_names[: len(first_classes)]) == first_classes
    counts = torch.bincount(data.y_test, minlength=10)
    if name == "fashionmnist":  # 1,000 test images per class
        assert counts.tolist() == [1000] * 10


def test_the_environment_variable_is_the_default_data_root(data_root, monkeypatch, tmp_path):
    monkeypatch.setenv("PRIVBENCH_DATA_ROOT", data_root)
    cfg = tiny_config(dataset="fashionmnist", dataset_params={"train_size": 400, "test_size": 100})
    (row,) = privbench.run(cfg)
    assert row.status == "ok" and row.dataset == "fashionmnist"
    monkeypatch.setenv("PRIVBENCH_DATA_ROOT", str(tmp_path))  # an empty folder: a clear error
    with pytest.raises(privbench.PrivbenchError, match="not found: expected .*FashionMNIST"):
        privbench.run(cfg)


def test_the_environment_variable_is_not_an_image_folder(monkeypatch, tmp_path):
    monkeypatch.setenv("PRIVBENCH_DATA_ROOT", str(tmp_path))
    with pytest.raises(privbench.PrivbenchError, match="needs --data-root"):
        load_dataset("imagefolder")

"""Every registered dataset x model pair learns, with no learning-rate flag.

A first run on any dataset must train: the default learning rate comes from the tuning
(or its documented fallback), the loader hands the model sensible inputs, and the model
fits the shape. Each pair runs the CLI's FedAvg training on 2 IID clients (digits on
the 10 Dirichlet clients it was tuned on) and must beat the majority-class rate of its
test set by a clear margin. MNIST and Fashion-MNIST are the real files
(``PRIVBENCH_DATA_ROOT``); CIFAR-10/100, EMNIST and an image folder are learnable
stand-ins written in their real formats (``tests/standins.py``).
"""

from __future__ import annotations

import os

import numpy as np
import pytest

import privbench
from privbench import FedConfig, RunConfig, registries
from privbench.confighash import config_hash
from privbench.data import load_dataset
from tests import standins
from tests.conftest import shared_data_root
from tests.test_conformance import EMBEDDED

DATASETS = registries()["dataset"].names()
MODELS = registries()["model"].names()
ON_DISK = {"mnist", "fashionmnist"}  # the real files
STANDINS = {"cifar10", "cifar100", "emnist", "imagefolder"}
# 2 IID clients (the stand-ins hold 10-20 images a class, faces 160 images in all), except
# digits, which runs on the setup it was tuned on, the CLI's 10 Dirichlet clients: its
# tuned 0.3 diverges on 2 IID clients (144 local steps a round, not 14) for 1 seed in 4.
# Measured 2026-11-29, each pair on its tuning setup instead: faces/cnn (4 IID clients)
# and mnist/lenet-sigmoid (3,000 images, 10 Dirichlet clients, 3 rounds) stay at chance.
SETUP = {"digits": (10, "dirichlet")}
# The resnet costs 5-10x a small model per image: it runs 5 rounds (10 took 40-55 s a
# pair) and 1,000 real images. Measured 2026-12-03, far above each bar: photos 0.897
# (bar 0.247), cifar10 1.000 (0.208), cifar100 0.440 (0.118), emnist 0.915 (0.134),
# digits 0.975 (0.217) at 5 rounds; mnist 0.550 (0.216), fashionmnist 0.677 (0.215).
RESNET_ROUNDS, RESNET_TRAIN = 5, 1000
# The cnn and cnn-bn also run 5 rounds on the embedded data and stand-ins. Measured
# 2026-12-03 at 5 rounds, the lowest: cifar100/cnn-bn 0.670 (bar 0.118), photos/cnn
# 0.807 (0.247), digits/cnn 0.833 (0.217). The sigmoid LeNet keeps 10: at 5 it sits at
# chance on cifar100 (0.072) and emnist (0.098) and scrapes photos' bar (0.300 vs 0.247).
SLOW_STARTERS = {"lenet-sigmoid"}


@pytest.fixture(scope="module")
def standin_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("standins")
    standins.write_emnist(root)
    standins.write_cifar(root, "cifar10")
    standins.write_cifar(root, "cifar100")
    standins.write_imagefolder(root / "folder")
    return root


def _setup(dataset: str, model: str, standin_root, monkeypatch) -> tuple[str | None, dict]:
    """(data root, dataset params) of a first run of ``model`` on ``dataset``."""
    if dataset in ON_DISK:
        size = RESNET_TRAIN if model == "resnet" else 3000
        return shared_data_root(), {"train_size": size, "test_size": 1000}
    if dataset in STANDINS:
        import torchvision.datasets.cifar as tv_cifar

        # The stand-ins cannot match the real archives' MD5: only existence is checked.
        monkeypatch.setattr(
            tv_cifar, "check_integrity", lambda path, md5=None: os.path.isfile(path)
        )
        root = standin_root / "folder" if dataset == "imagefolder" else standin_root
        return str(root), {}
    return None, {}


def test_every_dataset_is_covered():
    """A dataset registered later is either embedded or gets files here."""
    assert set(DATASETS) == ON_DISK | STANDINS | set(EMBEDDED)


def _rounds(dataset: str, model: str) -> int:
    if dataset in ON_DISK:
        return 3
    return 10 if model in SLOW_STARTERS else RESNET_ROUNDS


@pytest.mark.slow
@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize("dataset", DATASETS)
def test_a_first_run_learns_above_chance(dataset, model, standin_root, monkeypatch):
    root, params = _setup(dataset, model, standin_root, monkeypatch)
    clients, partition = SETUP.get(dataset, (2, "iid"))
    cfg = RunConfig(
        dataset=dataset,
        dataset_params=params,
        partition=partition,
        model=model,
        data_root=root,
        # The CLI's local training (2 epochs, batch 10); 3 rounds on 3,000 real images;
        # the shorter runs above.
        fed=FedConfig(clients=clients, rounds=_rounds(dataset, model), eval_every=0),
    )
    (row,) = privbench.run(cfg)
    assert row.status == "ok", row.error
    y = load_dataset(dataset, params, root=root).y_test.numpy()
    chance = np.bincount(y).max() / len(y)  # the majority class's rate
    margin = max(0.1, 3 * np.sqrt(chance * (1 - chance) / len(y)))
    assert row.accuracy >= chance + margin, (
        f"{dataset}/{model} at lr {row.config['fed']['lr']}: accuracy {row.accuracy:.3f}, "
        f"chance {chance:.3f}"
    )


def test_cnn_he_init_is_kaiming_normal_and_pytorch_init_keeps_old_hashes():
    import torch

    from privbench.models import CNN
    from tests.conftest import tiny_config

    torch.manual_seed(0)
    old = CNN((1, 28, 28), 10, init="pytorch")  # PyTorch's layer defaults, untouched
    torch.manual_seed(0)
    layers = [m for m in old.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))]
    for mod in layers:
        ref = type(mod)(*_shape_args(mod))
        assert torch.equal(mod.weight, ref.weight) and torch.equal(mod.bias, ref.bias)
    he = CNN((1, 28, 28), 10)  # the default
    for mod in he.modules():
        if isinstance(mod, (torch.nn.Conv2d, torch.nn.Linear)):
            fan_in = mod.weight[0].numel()
            assert float(mod.weight.std()) == pytest.approx((2 / fan_in) ** 0.5, rel=0.25)
            assert not mod.bias.any()

    def hashed(**params):
        return tiny_config(model="cnn", model_params=params).resolve().hash()

    assert hashed(weight_init="he") == hashed()  # the default since
    pytorch = tiny_config(model="cnn").resolve().to_dict()
    pytorch["model_params"].pop("weight_init")  # a row from before the option
    assert hashed(weight_init="pytorch") == config_hash(pytorch) != hashed()


def _shape_args(mod):
    """The constructor arguments that rebuild ``mod`` (a Conv2d or a Linear)."""
    import torch

    if isinstance(mod, torch.nn.Linear):
        return mod.in_features, mod.out_features
    return mod.in_channels, mod.out_channels, mod.kernel_size, mod.stride, mod.padding


@pytest.mark.slow
def test_cnn_with_he_init_leaves_the_plateau_the_default_init_sits_on(data_root):
    """benchmarks/cnn_init.py's measurement, one seed: after 4 epochs of plain SGD on
    1,200 MNIST images the default init is still near chance, He init well above it.
    Four, not three: at lr 0.1 He's curve dips in single epochs, and where it dips
    depends on float rounding (seed 0's third epoch: 0.83 on two threads, 0.62 on one;
    its fourth 0.88 and 0.86; the recorded seeds' fourth epochs 0.86-0.91, the default's
    at most 0.19)."""
    import sys

    sys.path.insert(0, "benchmarks")
    try:
        from cnn_init import sgd_curve
    finally:
        sys.path.remove("benchmarks")
    data = load_dataset("mnist", {"train_size": 12000}, root=data_root)
    assert sgd_curve(data, "pytorch", 0.1, 0, epochs=4)[-1] < 0.3
    assert sgd_curve(data, "he", 0.1, 0, epochs=4)[-1] > 0.75

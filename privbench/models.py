"""Model zoo. Every factory takes the input shape (C, H, W) and the class count.

- ``lenet-sigmoid``: the LeNet of DLG (Zhu et al. 2019): three 5x5 convs with sigmoid,
  one linear layer; weights U(-0.5, 0.5) by default as in the DLG code.
- ``cnn-bn``: Fed-ZDA's CNNs with BatchNorm (two 5x5 convs 16/32 for grayscale, two 3x3
  convs 16/16 + FC 80 + FC 60 for RGB). ZSDG needs the BN statistics.
- ``cnn``: a small CNN without BN (FedAvP/FedMix style): three conv3x3 + pool, three FC.
- ``resnet``: a small CIFAR-style ResNet (3 stages of BasicBlocks, widths 16/32/64).
"""

from __future__ import annotations

import copy
import inspect
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from privbench.errors import IncompatibleError, PrivbenchError, UnknownNameError, UserCodeError
from privbench.registry import Entry, Param, Registry, first_doc_line


def model_factory(obj: Any, label: str) -> Callable[..., nn.Module]:
    """A ``(shape, num_classes, **params) -> nn.Module`` factory from what a user gives.

    Accepted: a factory taking ``(shape, num_classes)`` (plus keyword parameters), an
    ``nn.Module`` subclass with that constructor, a zero-argument factory, or an
    ``nn.Module`` instance (every party starts from a copy of its weights).
    """
    if isinstance(obj, nn.Module):
        return lambda shape, num_classes: copy.deepcopy(obj)
    return _guarded(_factory(obj, label), label)


def _guarded(factory: Callable[..., Any], label: str) -> Callable[..., nn.Module]:
    """``factory`` whose failures are the user's, said in one line: an exception it raises
    or a return value that is not an ``nn.Module`` becomes a :class:`UserCodeError`."""

    def build(shape, num_classes, **params) -> nn.Module:
        try:
            model = factory(shape, num_classes, **params)
        except PrivbenchError:
            raise
        except Exception as err:
            raise UserCodeError(
                f"model '{label}' (--model): your factory raised {type(err).__name__}: {err} "
                f"(called as factory({tuple(shape)}, {num_classes}))"
            ) from err
        if not isinstance(model, nn.Module):
            raise UserCodeError(
                f"model '{label}' (--model): your factory returned {type(model).__name__} "
                f"{model!r:.60}; a model factory must return a torch.nn.Module."
            )
        return model

    return build


def _factory(obj: Any, label: str) -> Callable[..., Any]:
    if not callable(obj):
        raise UnknownNameError(
            f"model '{label}' is a {type(obj).__name__}, not a model factory: give a "
            "callable (shape, num_classes) -> torch.nn.Module, an nn.Module class or instance."
        )
    try:
        sig = inspect.signature(obj)
    except (TypeError, ValueError):  # builtins without a signature: assume the contract
        return obj
    if _binds(sig, (1, 8, 8), 10):
        return obj
    if _binds(sig):
        return lambda shape, num_classes, **params: obj(**params)
    raise UnknownNameError(
        f"model '{label}' takes {sig}; privbench calls a model factory as "
        "factory(shape, num_classes) with shape = (C, H, W), or with no arguments."
    )


def _binds(sig: inspect.Signature, *args: Any) -> bool:
    """Whether a callable with signature ``sig`` accepts these positional arguments."""
    try:
        sig.bind(*args)
    except TypeError:
        return False
    return True


def _import_model(name: str, obj: Any) -> Entry[nn.Module]:
    params = tuple(getattr(obj, "PARAMS", ()))
    return Entry(name, model_factory(obj, name), params, first_doc_line(obj) or f"imported {name}")


def check_model_output(model: nn.Module, x: torch.Tensor, num_classes: int, label: str) -> None:
    """A clear error unless ``model`` maps a batch of ``x`` to (batch, num_classes) logits."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            out = model(x)
    except Exception as err:
        raise IncompatibleError(
            f"model '{label}' fails on a batch shaped {tuple(x.shape)} (the dataset's "
            f"images): {type(err).__name__}: {err}"
        ) from err
    finally:
        model.train(was_training)
    if not isinstance(out, torch.Tensor) or tuple(out.shape) != (len(x), num_classes):
        got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise IncompatibleError(
            f"model '{label}' maps a batch shaped {tuple(x.shape)} to {got}; privbench needs "
            f"logits shaped ({len(x)}, {num_classes}) (batch, classes of the dataset)."
        )


MODELS: Registry[nn.Module] = Registry("model", importer=_import_model)


def _flat_dim(features: nn.Module, shape: tuple[int, int, int]) -> int:
    with torch.no_grad():
        return int(features(torch.zeros(1, *shape)).numel())


class LeNetSigmoid(nn.Module):
    def __init__(self, shape, num_classes, width=12, uniform_init=True):
        super().__init__()
        c = shape[0]
        self.features = nn.Sequential(
            nn.Conv2d(c, width, 5, padding=2, stride=2),
            nn.Sigmoid(),
            nn.Conv2d(width, width, 5, padding=2, stride=2),
            nn.Sigmoid(),
            nn.Conv2d(width, width, 5, padding=2, stride=1),
            nn.Sigmoid(),
        )
        self.classifier = nn.Linear(_flat_dim(self.features, shape), num_classes)
        if uniform_init:  # DLG's weights_init: U(-0.5, 0.5) for weights and biases
            for p in self.parameters():
                nn.init.uniform_(p, -0.5, 0.5)

    def forward(self, x):
        return self.classifier(self.features(x).flatten(1))


def _pool_if(size: int) -> nn.Module:
    return nn.MaxPool2d(2) if size >= 2 else nn.Identity()


class CNNBN(nn.Module):
    """Fed-ZDA's CNNs (section 4.1); paddings keep small inputs (8x8 digits) valid."""

    def __init__(self, shape, num_classes):
        super().__init__()
        c, h, _ = shape
        if c == 1:  # MNIST/FMNIST variant
            self.features = nn.Sequential(
                nn.Conv2d(c, 16, 5, padding=2),
                nn.BatchNorm2d(16),
                _pool_if(h),
                nn.ReLU(),
                nn.Conv2d(16, 32, 5, padding=2),
                nn.BatchNorm2d(32),
                _pool_if(h // 2),
                nn.ReLU(),
            )
            self.classifier = nn.Linear(_flat_dim(self.features, shape), num_classes)
        else:  # CIFAR-10 variant
            self.features = nn.Sequential(
                nn.Conv2d(c, 16, 3, padding=1),
                nn.BatchNorm2d(16),
                _pool_if(h),
                nn.ReLU(),
                nn.Conv2d(16, 16, 3, padding=1),
                nn.BatchNorm2d(16),
                _pool_if(h // 2),
                nn.ReLU(),
            )
            self.classifier = nn.Sequential(
                nn.Linear(_flat_dim(self.features, shape), 80),
                nn.ReLU(),
                nn.Linear(80, 60),
                nn.ReLU(),
                nn.Linear(60, num_classes),
            )

    def forward(self, x):
        return self.classifier(self.features(x).flatten(1))


class CNN(nn.Module):
    """Three conv3x3 + ReLU + max-pool blocks, then three linear layers; no BatchNorm."""

    def __init__(self, shape, num_classes, width=32, hidden=128, init="he"):
        super().__init__()
        c, h, _ = shape
        layers, size = [], h
        for i in range(3):
            layers += [
                nn.Conv2d(c if i == 0 else width, width, 3, padding=1),
                nn.ReLU(),
                _pool_if(size),
            ]
            size = size // 2 if size >= 2 else size
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Sequential(
            nn.Linear(_flat_dim(self.features, shape), hidden),
            nn.ReLU(),
            nn.Linear(hidden, hidden // 2),
            nn.ReLU(),
            nn.Linear(hidden // 2, num_classes),
        )
        if init == "he":  # He et al. 2015: the init a plain ReLU stack needs to start moving
            for mod in self.modules():
                if isinstance(mod, (nn.Conv2d, nn.Linear)):
                    nn.init.kaiming_normal_(mod.weight, nonlinearity="relu")
                    nn.init.zeros_(mod.bias)

    def forward(self, x):
        return self.classifier(self.features(x).flatten(1))


class BasicBlock(nn.Module):
    def __init__(self, cin, cout, stride):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = nn.Identity()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(
                nn.Conv2d(cin, cout, 1, stride=stride, bias=False), nn.BatchNorm2d(cout)
            )

    def forward(self, x):
        out = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


class ResNet(nn.Module):
    def __init__(self, shape, num_classes, blocks=1, width=16):
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(shape[0], width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU()
        )
        layers, cin = [], width
        for stage in range(3):
            cout = width * 2**stage
            for b in range(blocks):
                layers.append(BasicBlock(cin, cout, 2 if (stage > 0 and b == 0) else 1))
                cin = cout
        self.layers = nn.Sequential(*layers)
        self.classifier = nn.Linear(cin, num_classes)

    def forward(self, x):
        out = self.layers(self.stem(x))
        return self.classifier(out.mean(dim=(2, 3)))


@MODELS.register(
    "lenet-sigmoid",
    params=(
        Param("uniform_init", bool, True, "DLG's U(-0.5, 0.5) weight init"),
        Param("width", int, 12, "channels of each conv", low=1),
    ),
    description="DLG's LeNet: 3 sigmoid convs + linear (weights U(-0.5, 0.5))",
)
def lenet_sigmoid(shape, num_classes, *, uniform_init=True, width=12):
    return LeNetSigmoid(shape, num_classes, width=width, uniform_init=uniform_init)


@MODELS.register(
    "cnn-bn", description="Fed-ZDA's CNN with BatchNorm (MNIST or CIFAR variant by channel count)"
)
def cnn_bn(shape, num_classes):
    return CNNBN(shape, num_classes)


@MODELS.register(
    "cnn",
    params=(
        Param("width", int, 32, "channels of each conv", low=1),
        Param("hidden", int, 128, "width of the first linear layer", low=2),
        Param(
            "weight_init",
            str,
            "he",
            "weights at round 0: he, Kaiming-normal for ReLU (fan-in) with zero biases, "
            "or pytorch: PyTorch's layer defaults (Kaiming-uniform, a = sqrt(5); this "
            "unnormalised ReLU stack then sits at chance for its first ~200 SGD steps on "
            "MNIST; the init of every cnn row before He became the default)",
            choices=("pytorch", "he"),
        ),
    ),
    description="small CNN without BatchNorm (3 conv3x3 + pool, 3 FC)",
)
def cnn(shape, num_classes, *, width=32, hidden=128, weight_init="he"):
    return CNN(shape, num_classes, width=width, hidden=hidden, init=weight_init)


@MODELS.register(
    "resnet",
    params=(
        Param("blocks", int, 1, "BasicBlocks per stage (1 = ResNet-8)", low=1),
        Param("width", int, 16, "channels of the first stage", low=1),
    ),
    description="small CIFAR-style ResNet with BatchNorm",
)
def resnet(shape, num_classes, *, blocks=1, width=16):
    return ResNet(shape, num_classes, blocks=blocks, width=width)


def classifier_weight_name(model: nn.Module, num_classes: int) -> str:
    """Name of the last linear layer's weight whose rows are the classes (iDLG reads it)."""
    name = None
    for mod_name, mod in model.named_modules():
        if isinstance(mod, nn.Linear) and mod.out_features == num_classes:
            name = f"{mod_name}.weight" if mod_name else "weight"
    if name is None:
        raise ValueError("model has no linear layer with one output per class")
    return name

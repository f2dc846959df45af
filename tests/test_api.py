"""Bring your own model and data: the Python API, import strings, ImageFolder, as_bundle."""

import json
import textwrap

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image
from torch import nn

import privbench
from privbench.cli import build_parser, config_from_args, main
from privbench.data import as_bundle
from privbench.errors import IncompatibleError, ParameterError, PrivbenchError, UnknownNameError
from tests.conftest import tiny_config

VOLATILE = {"wall_s", "train_s", "attack_s", "reconstruction_file"}


def _stable(row: dict) -> dict:
    return {k: v for k, v in row.items() if k not in VOLATILE}


class TinyNet(nn.Module):
    def __init__(self, shape, num_classes):
        super().__init__()
        self.body = nn.Sequential(
            nn.Flatten(),
            nn.Linear(int(np.prod(shape)), 16),
            nn.Sigmoid(),
            nn.Linear(16, num_classes),
        )

    def forward(self, x):
        return self.body(x)


def test_api_and_cli_give_identical_rows(capsys):
    argv = [
        "run",
        "fedavg",
        "--attack",
        "idlg",
        "--iters",
        "5",
        "--partition",
        "iid",
        "--clients",
        "4",
        "--rounds",
        "2",
        "--local-epochs",
        "1",
        "--batch-size",
        "16",
        "--seed",
        "3",
    ]
    assert main([*argv, "--json", "--no-save", "--no-progress"]) == 0
    (cli_row,) = json.loads(capsys.readouterr().out)
    config = config_from_args(build_parser().parse_args(argv))
    (api_row,) = privbench.run(config)
    assert _stable(api_row.to_dict()) == _stable(cli_row)
    assert cli_row["psnr"] is not None and cli_row["accuracy"] is not None


def test_rows_become_a_dataframe():
    rows = privbench.run(tiny_config(attack=dict(names=("idlg", "dlg"), params={"iters": 2})))
    frame = rows.to_frame()
    assert isinstance(frame, pd.DataFrame) and len(frame) == 3
    assert list(frame["attack"]) == ["idlg", "dlg", "worst-case"]
    assert frame.columns[0] == "method" and "psnr" in frame and "bytes_up" in frame
    assert frame["bytes_up"].iloc[0] == rows[0].bytes_up


@pytest.mark.parametrize(
    "model",
    [
        TinyNet,  # an nn.Module class with the (shape, num_classes) constructor
        lambda shape, num_classes: TinyNet(shape, num_classes),  # a factory
        lambda: TinyNet((1, 8, 8), 10),  # a zero-argument factory
        TinyNet((1, 8, 8), 10),  # an instance: every party starts from its weights
    ],
    ids=["class", "factory", "no-arg", "instance"],
)
def test_custom_model_runs_end_to_end(model):
    cfg = tiny_config(model="tiny-net", attack=dict(names=("idlg",), params={"iters": 3}))
    (row,) = privbench.run(cfg, model=model)
    assert row.status == "ok", row.error
    assert row.model == "tiny-net" and row.psnr is not None
    n_params = sum(p.numel() for p in TinyNet((1, 8, 8), 10).parameters())
    assert row.bytes_up > 0 and row.bytes_up % (4 * n_params) == 0  # whole float32 updates


def test_instance_weights_are_the_initial_global_model():
    net = TinyNet((1, 8, 8), 10)
    exp = privbench.engine.experiment.Experiment(tiny_config(model="mine"), model=net)
    built = exp.build_model()
    assert built is not net
    for a, b in zip(built.parameters(), net.parameters(), strict=True):
        assert torch.equal(a, b)


def test_model_with_wrong_output_is_refused_clearly():
    with pytest.raises(IncompatibleError, match=r"logits shaped \(2, 10\)"):
        privbench.run(
            tiny_config(model="bad"),
            model=lambda shape, k: nn.Sequential(nn.Flatten(), nn.Linear(64, 3)),
        )
    with pytest.raises(IncompatibleError, match="fails on a batch shaped"):
        privbench.run(tiny_config(model="bad"), model=lambda shape, k: nn.Linear(5, k))
    with pytest.raises(UnknownNameError, match="takes"):
        privbench.run(tiny_config(model="bad"), model=lambda a, b, c: None)


@pytest.fixture
def user_module(tmp_path, monkeypatch):
    """A user's nets.py in the working directory, as with `privbench run --model nets:...`."""
    (tmp_path / "user_nets_pb.py").write_text(
        textwrap.dedent(
            """
            from torch import nn

            def make_net(shape, num_classes):
                c, h, w = shape
                return nn.Sequential(nn.Flatten(), nn.Linear(c * h * w, num_classes))

            def load_blobs():
                import torch
                g = torch.Generator().manual_seed(0)
                y = torch.arange(200) % 2
                x = torch.rand(200, 1, 6, 6, generator=g) * 0.5 + 0.5 * y.view(-1, 1, 1, 1)
                return x, y
            """
        )
    )
    monkeypatch.chdir(tmp_path)
    yield "user_nets_pb"
    import sys

    sys.modules.pop("user_nets_pb", None)


def test_import_string_model_and_dataset_from_the_cli(user_module, capsys):
    code = main(
        [
            "run",
            "fedavg",
            "--model",
            f"{user_module}:make_net",
            "--dataset",
            f"{user_module}:load_blobs",
            "--partition",
            "iid",
            "--clients",
            "2",
            "--rounds",
            "3",
            "--batch-size",
            "8",
            "--json",
            "--no-save",
            "--no-progress",
        ]
    )
    (row,) = json.loads(capsys.readouterr().out)
    assert code == 0 and row["status"] == "ok"
    assert row["model"] == f"{user_module}:make_net"
    assert row["accuracy"] > 0.9  # the two blob classes are separable


def test_import_string_errors_name_the_problem(user_module):
    reg = privbench.registries()["model"]
    with pytest.raises(UnknownNameError, match="Cannot import model 'no_such_mod:f'"):
        reg.entry("no_such_mod:f")
    with pytest.raises(UnknownNameError, match="has no attribute 'nope'.*make_net"):
        reg.entry(f"{user_module}:nope")
    with pytest.raises(UnknownNameError, match="import string 'package.module:callable'"):
        reg.entry("lenet")  # an unknown plain name also says import strings work


def test_as_bundle_reads_common_layouts():
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, size=(50, 12, 12, 3), dtype=np.uint8)  # NHWC uint8
    y = np.arange(50) % 5
    b = as_bundle((x, y))
    assert b.shape == (3, 12, 12) and b.num_classes == 5 and b.value_range == (0.0, 1.0)
    assert len(b.y_train) + len(b.y_test) == 50 and len(b.y_test) == 10
    assert torch.allclose(
        torch.cat([b.x_train, b.x_test]).sum(), torch.tensor(x.sum() / 255.0, dtype=torch.float32)
    )
    # A normalised dataset keeps its own range (attacks clamp to it, PSNR uses it).
    z = torch.randn(40, 1, 5, 5)
    nb = as_bundle({"x_train": z, "y_train": torch.arange(40) % 2}, num_classes=3)
    assert nb.value_range == (float(z.min()), float(z.max())) and nb.num_classes == 3
    ds = torch.utils.data.TensorDataset(torch.rand(30, 1, 4, 4), torch.arange(30) % 3)
    db = as_bundle((ds, ds))
    assert len(db.y_train) == 30 and len(db.y_test) == 30 and db.num_classes == 3


@pytest.mark.parametrize(
    "data, message",
    [
        ((torch.rand(10, 5), torch.zeros(10)), r"shaped \(N, C, H, W\)"),
        ((torch.rand(10, 1, 4, 4), torch.zeros(9)), "9 labels for 10 images"),
        ((torch.rand(10, 1, 4, 4), torch.full((10,), 0.5)), "integer class indices"),
        ((torch.full((10, 1, 4, 4), float("nan")), torch.zeros(10)), "NaN"),
        ("images.npy", "Cannot use a str as data"),
        ({"x_train": torch.rand(4, 1, 2, 2)}, "lacks"),
    ],
)
def test_as_bundle_refuses_bad_data_clearly(data, message):
    with pytest.raises(ParameterError, match=message):
        as_bundle(data)


def test_own_tensors_run_through_the_api():
    g = torch.Generator().manual_seed(1)
    y = torch.arange(240) % 3
    x = (torch.rand(240, 1, 8, 8, generator=g) * 0.3 + 0.35 * y.view(-1, 1, 1, 1)).clamp(0, 1)
    cfg = tiny_config(dataset="my-blobs", attack=dict(names=("idlg",), params={"iters": 3}))
    (row,) = privbench.run(cfg, data=(x, y))
    assert row.status == "ok" and row.dataset == "my-blobs" and row.accuracy is not None


def _png_folder(root, sizes=None, classes=("cat", "dog", "owl"), per_class=12, mode="RGB"):
    rng = np.random.default_rng(0)
    for k, name in enumerate(classes):
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            size = (sizes or {}).get((name, i), 10)
            base = np.full((size, size, 3), 60 * k, dtype=np.uint8)
            noise = rng.integers(0, 40, size=(size, size, 3), dtype=np.uint8)
            img = Image.fromarray(base + noise)
            img.convert(mode).save(root / name / f"{i}.png")


def test_imagefolder_of_pngs_runs_end_to_end(tmp_path, capsys):
    _png_folder(tmp_path / "imgs")
    argv = ["run", "fedavg", "--dataset", "imagefolder", "--data-root", str(tmp_path / "imgs")]
    argv += ["--partition", "iid", "--clients", "2", "--rounds", "2", "--batch-size", "4"]
    argv += ["--attack", "idlg", "--iters", "3", "--json", "--no-save", "--no-progress"]
    assert main(argv) == 0
    (row,) = json.loads(capsys.readouterr().out)
    assert row["status"] == "ok" and row["dataset"] == "imagefolder"
    from privbench.data import load_dataset

    d = load_dataset("imagefolder", root=str(tmp_path / "imgs"))
    assert d.shape == (3, 10, 10) and d.class_names == ("cat", "dog", "owl")
    assert len(d.y_train) + len(d.y_test) == 36
    gray = load_dataset(
        "imagefolder", {"channels": 1, "image_size": 6}, root=str(tmp_path / "imgs")
    )
    assert gray.shape == (1, 6, 6)


def test_imagefolder_train_test_layout_and_grayscale(tmp_path):
    _png_folder(tmp_path / "train", mode="L")
    _png_folder(tmp_path / "test", per_class=3, mode="L")
    from privbench.data import load_dataset

    d = load_dataset("imagefolder", root=str(tmp_path))
    assert d.shape == (1, 10, 10) and len(d.y_train) == 36 and len(d.y_test) == 9


def test_imagefolder_errors(tmp_path):
    from privbench.data import load_dataset

    with pytest.raises(PrivbenchError, match="needs --data-root"):
        load_dataset("imagefolder")
    _png_folder(tmp_path / "mixed", sizes={("dog", 3): 14})
    with pytest.raises(ParameterError, match="differ in size.*--image-size"):
        load_dataset("imagefolder", root=str(tmp_path / "mixed"))
    assert load_dataset("imagefolder", {"image_size": 8}, root=str(tmp_path / "mixed")).shape == (
        3,
        8,
        8,
    )
    (tmp_path / "empty").mkdir()
    with pytest.raises(PrivbenchError, match="imagefolder"):
        load_dataset("imagefolder", root=str(tmp_path / "empty"))


# -- attack_update ----------------------------------------------------------------------


def _digit_gradient(seed: int):
    from privbench.data import load_dataset
    from privbench.models import lenet_sigmoid

    d = load_dataset("digits")
    torch.manual_seed(seed)
    net = lenet_sigmoid(d.shape, d.num_classes)
    x, y = d.x_train[seed : seed + 1], d.y_train[seed : seed + 1]
    grads = torch.autograd.grad(nn.functional.cross_entropy(net(x), y), net.parameters())
    return net, grads, x, y


@pytest.mark.slow
@pytest.mark.parametrize("seed", [0, 1])
def test_attack_update_recovers_one_image_from_a_lenet_gradient(seed):
    net, grads, x, y = _digit_gradient(seed)
    before = [p.detach().clone() for p in net.parameters()]
    out = privbench.attack_update(
        net, grads, attack="dlg", params={"restarts": 2}, ground_truth=(x, y), seed=seed
    )
    assert out.psnr >= 30.0 and out.ssim >= 0.9  # the DLG band of the benchmark's tests
    assert out.images.shape == x.shape and out.score.label_acc == 1.0
    assert all(torch.equal(a, b) for a, b in zip(before, net.parameters(), strict=True))


@pytest.mark.parametrize("steps", [1, 3])
def test_attack_update_equals_the_benchmarks_attack_on_the_same_message(steps):
    """Fed the message a run captured, with the run's attack seed, attack_update rebuilds
    exactly what the runner's attack rebuilt."""
    from privbench.engine.experiment import Experiment
    from privbench.engine.seeding import derive_seed
    from privbench.evaluation.attacking import attack_victims

    cfg = tiny_config(attack=dict(names=("idlg",), steps=steps, params={"iters": 15}))
    exp = Experiment(cfg)
    out = exp.train()
    (obs,) = [o for o in out.channel.observations if o.sender == 0 and o.round == 0]
    score, _, _, _ = attack_victims(exp, "idlg", out, None)
    net = exp.build_model()
    net.load_state_dict(dict(obs.context.weights_before))
    victim = out.victims[0]
    got = privbench.attack_update(
        net,
        dict(obs.payload),
        attack="idlg",
        params={"iters": 15},
        kind=obs.kind,
        lr=cfg.fed.lr,
        local_steps=steps,
        ground_truth=(victim.images, victim.labels),
        seed=derive_seed(cfg.seed, 2, 0),
    )
    assert got.psnr == pytest.approx(score.psnr, abs=1e-6)


def test_attack_update_refuses_bad_input_clearly():
    net, grads, x, y = _digit_gradient(0)
    with pytest.raises(ParameterError, match="has 2 tensors but the model has"):
        privbench.attack_update(net, grads[:2], ground_truth=x)
    bad = dict(zip([n for n, _ in net.named_parameters()], grads, strict=True))
    bad["classifier.bias"] = torch.zeros(3)
    with pytest.raises(ParameterError, match="'classifier.bias' is shaped"):
        privbench.attack_update(net, bad, ground_truth=x)
    with pytest.raises(ParameterError, match="kind='update'"):
        privbench.attack_update(net, grads, kind="gradient", local_steps=3, ground_truth=x)
    with pytest.raises(ParameterError, match="input_shape"):
        privbench.attack_update(net, grads)
    with pytest.raises(UnknownNameError, match="Valid attacks"):
        privbench.attack_update(net, grads, attack="nope", ground_truth=x)
    with pytest.raises(ParameterError, match="consumes averaged_data"):
        privbench.attack_update(net, grads, attack="averaged-data", ground_truth=x)

"""Plugins: in-process decorators, ``privbench.plugins`` entry points, check_plugin."""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

import privbench
from privbench import Param
from privbench.augmenters import Augmenter
from privbench.testing import check_plugin
from tests.conftest import tiny_config

ROOT = Path(__file__).resolve().parents[1]

# The plugin of the README's example, as a third-party package would ship it.
PLUGIN_SOURCE = '''
"""Flip augmentation: the loss averages each image and its mirror image."""
import torch

import privbench
from privbench.augmenters import Augmenter, cross_entropy


@privbench.register_augmenter(
    "flip",
    params=(privbench.Param("flip_weight", float, 0.5, "weight of the mirrored copy",
                            low=0.0, high=1.0),),
    description="horizontal-flip augmentation (loss on each image and its mirror image)",
)
class Flip(Augmenter):
    def local_loss(self, model, x, y, *, received, generator=None):
        w = self.params["flip_weight"]
        return (1 - w) * cross_entropy(model(x), y) + w * cross_entropy(
            model(torch.flip(x, dims=[-1])), y
        )
'''


@pytest.fixture
def flip_plugin():
    namespace: dict = {}
    exec(compile(PLUGIN_SOURCE, "flip_plugin", "exec"), namespace)
    yield namespace["Flip"]
    privbench.registries()["method"].entries.pop("flip")


def test_decorator_registers_a_method_that_runs_and_is_attacked_method_aware(flip_plugin):
    assert "flip" in privbench.registries()["method"].names()
    cfg = tiny_config(
        method="flip",
        method_params={"flip_weight": 0.3},
        attack=dict(names=("idlg",), params={"iters": 3}),
    )
    (row,) = privbench.run(cfg)
    assert row.status == "ok" and row.method == "flip"
    # The attacker rebuilds the victim's message with the plugin's own loss: exact here.
    from privbench.attacks.gradient import VictimSimulator
    from privbench.engine.experiment import Experiment

    exp = Experiment(tiny_config(method="flip", attack=dict(names=("idlg",))))
    out = exp.train()
    (obs,) = [o for o in out.channel.observations if o.kind == "gradient"]
    victim = out.victims[0]
    sim = VictimSimulator(obs.context)
    again = sim.message("gradient", victim.images, victim.labels, create_graph=False)
    for name, g in sim.target(obs).items():
        torch.testing.assert_close(again[name], g)


def test_check_plugin_passes_a_good_plugin_and_names_a_bad_parameter(flip_plugin):
    check_plugin("method", "flip")
    reg = privbench.registries()["method"]

    @privbench.register_augmenter(
        "sloppy",
        params=(Param("strength", float, 5.0, "out of its own range", low=0.0, high=1.0),),
        description="default outside the declared range",
    )
    class Sloppy(Augmenter):
        pass

    try:
        with pytest.raises(Exception, match="'strength' parameter of method 'sloppy'"):
            check_plugin("method", "sloppy")
    finally:
        reg.entries.pop("sloppy")
    with pytest.raises(privbench.PrivbenchError, match="Unknown plugin kind 'widget'"):
        check_plugin("widget", "x")


def test_duplicate_names_are_refused():
    with pytest.raises(ValueError, match="already registered"):
        privbench.register_attack("dlg", description="again")(object)


def _install(tmp_path: Path, name: str, module_source: str, entry: str) -> Path:
    """Build and install a tiny distribution declaring a privbench.plugins entry point."""
    src = tmp_path / name
    src.mkdir()
    module = name.replace("-", "_")
    (src / f"{module}.py").write_text(module_source)
    (src / "pyproject.toml").write_text(
        textwrap.dedent(
            f"""
            [build-system]
            requires = ["setuptools>=61"]
            build-backend = "setuptools.build_meta"

            [project]
            name = "{name}"
            version = "0.1.0"

            [project.entry-points."privbench.plugins"]
            {module} = "{entry}"

            [tool.setuptools]
            py-modules = ["{module}"]
            """
        )
    )
    target = tmp_path / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation"]
        + ["--no-index", "--target", str(target), str(src)],
        check=True,
        timeout=300,
        capture_output=True,
    )
    return target


def _privbench(args: list[str], site: Path, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), str(ROOT)])}
    return subprocess.run(
        [sys.executable, "-m", "privbench", *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=cwd,
        timeout=600,
    )


@pytest.mark.slow
def test_entry_point_plugin_is_listed_and_runs_from_the_cli(tmp_path):
    site = _install(tmp_path, "pb-flip-plugin", PLUGIN_SOURCE, "pb_flip_plugin")
    listed = _privbench(["list"], site, tmp_path)
    assert listed.returncode == 0, listed.stderr
    assert "flip " in listed.stdout and "(plugin from pb_flip_plugin)" in listed.stdout
    assert "--flip-weight" in listed.stdout
    ran = _privbench(
        ["run", "flip", "--flip-weight", "0.4", "--attack", "idlg", "--iters", "3"]
        + ["--clients", "4", "--rounds", "2", "--partition", "iid", "--json", "--no-save"],
        site,
        tmp_path,
    )
    assert ran.returncode == 0, ran.stderr
    (row,) = json.loads(ran.stdout)
    assert row["method"] == "flip" and row["status"] == "ok"
    assert row["config"]["method_params"] == {"flip_weight": 0.4}
    bad = _privbench(["run", "flip", "--flip-weight", "2"], site, tmp_path)
    assert bad.returncode == 2 and "'flip_weight' parameter of method 'flip'" in bad.stderr


@pytest.mark.slow
def test_a_broken_plugin_is_reported_not_fatal(tmp_path):
    site = _install(
        tmp_path, "pb-broken-plugin", "raise ImportError('missing dep xyz')\n", "pb_broken_plugin"
    )
    listed = _privbench(["list", "--json"], site, tmp_path)
    assert listed.returncode == 0, listed.stderr
    data = json.loads(listed.stdout)
    (failed,) = data["failed_plugins"]
    assert failed["distribution"] == "pb-broken-plugin" and "missing dep xyz" in failed["error"]
    assert "dlg" in data["attack"]  # the built-ins still work
    assert "failed to load" in listed.stderr  # and the warning is on stderr

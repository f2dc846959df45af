"""Helpers for users' own test suites.

- :func:`assert_no_leakage_regression`: fail a test when leakage rises or utility
  falls against a stored baseline::

      rows = privbench.run(my_config)
      assert_no_leakage_regression(rows, "tests/privacy-baseline.json", psnr_tol=1.0)

- :func:`check_plugin`: the conformance checks every built-in plugin passes, for a
  plugin you wrote (``check_plugin("attack", "my-attack")`` in your pytest suite).
- :func:`tiny_config`: a run that finishes in about a second, for smoke tests.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Any

import torch

from privbench.config import AttackConfig, FedConfig, RunConfig
from privbench.errors import ParameterError
from privbench.registry import Param
from privbench.results.report import check, load_rows


def assert_no_leakage_regression(
    results: str | os.PathLike | Sequence[Any],
    baseline: str | os.PathLike | Mapping[str, Any],
    *,
    psnr_tol: float = 1.0,
    ssim_tol: float = 0.02,
    acc_tol: float = 0.02,
) -> None:
    """Raise ``AssertionError`` with a readable diff when, against ``baseline`` (a file
    from ``privbench baseline`` or its dict), any experiment's mean PSNR or SSIM rose or
    its accuracy fell beyond the tolerance, or an experiment is missing or failed.

    ``results``: rows from :func:`privbench.run`, a result folder or a ``.jsonl`` file.
    """
    report = check(
        load_rows(results), baseline, psnr_tol=psnr_tol, ssim_tol=ssim_tol, acc_tol=acc_tol
    )
    if not report.ok:
        raise AssertionError("privacy/utility regression against the baseline:\n" + report.text())


def tiny_config(**overrides: Any) -> RunConfig:
    """A run that trains in well under a second: digits, 4 IID clients, 2 rounds.

    ``fed=`` and ``attack=`` take dicts of the fields to change.
    """
    fed = overrides.pop("fed", {})
    attack = overrides.pop("attack", {})
    base = RunConfig(
        dataset="digits",
        partition="iid",
        fed=FedConfig(clients=4, rounds=2, local_epochs=1, batch_size=16, lr=0.5, eval_every=0),
        attack=AttackConfig(),
        seed=0,
    )
    return replace(
        base,
        fed=replace(base.fed, **fed),
        attack=replace(base.attack, **attack),
        **overrides,
    )


# -- conformance ------------------------------------------------------------------------

MODEL_SHAPES = ((1, 8, 8), (3, 32, 32), (1, 25, 25))


def bad_values(p: Param) -> list[Any]:
    """Values a parameter spec must reject."""
    bad: list[Any] = [object()]
    if p.choices is not None:
        bad.append("__not-a-choice__")
    if p.type in (int, float):
        bad.append("not-a-number")
        if p.low is not None:
            bad.append(p.low if p.low_open else p.low - 1)
        if p.high is not None:
            bad.append(p.high if p.high_open else p.high + 1)
    if p.type is int:
        bad.append(0.5)
    if p.type is float:
        bad.append(math.nan)
    if not p.nullable:
        bad.append(None)
    return bad


def _registries() -> dict:
    from privbench import registries

    return registries()


def check_declaration(kind: str, name: str) -> None:
    """A description for ``privbench list``; defaults that pass their own checks."""
    reg = _registries()[kind]
    entry = reg.entry(name)
    assert entry.description, f"{kind} '{name}' has no description for `privbench list`"
    resolved = reg.resolve_params(name, {})
    assert set(resolved) == {p.name for p in entry.params}


def check_rejects_bad_parameters(kind: str, name: str) -> None:
    """Every parameter refuses out-of-range or mistyped values with an error naming it."""
    reg = _registries()[kind]
    for p in reg.entry(name).params:
        for value in bad_values(p):
            try:
                reg.resolve_params(name, {p.name: value})
            except ParameterError as err:
                assert f"'{p.name}' parameter of {reg.kind} '{name}'" in str(err), str(err)
            else:
                raise AssertionError(f"{kind} '{name}' accepted {p.name}={value!r}")
    try:
        reg.resolve_params(name, {"no_such_knob": 1})
    except ParameterError as err:
        assert "no parameter 'no_such_knob'" in str(err), str(err)
    else:
        raise AssertionError(f"{kind} '{name}' accepted an unknown parameter")


def parameter_owners() -> dict[str, set[str]]:
    """Parameter name -> the plugin kinds declaring it (the CLI's flags are flat)."""
    owners: dict[str, set[str]] = {}
    for kind, reg in _registries().items():
        for n in reg.names():
            for p in reg.entry(n).params:
                owners.setdefault(p.name, set()).add(kind)
    return owners


def check_parameter_names(kind: str, name: str) -> None:
    """No parameter name of this plugin is used by a plugin of another kind."""
    owners = parameter_owners()
    for p in _registries()[kind].entry(name).params:
        others = owners[p.name] - {kind}
        assert not others, (
            f"parameter '{p.name}' of {kind} '{name}' is also declared by a "
            f"{', '.join(sorted(others))}: the CLI's flat --{p.name.replace('_', '-')} "
            "flag would be ambiguous; rename it"
        )


def check_model(name: str) -> None:
    from privbench.models import classifier_weight_name

    factory = _registries()["model"].entry(name).factory
    for shape in MODEL_SHAPES:
        model = factory(shape, 7)
        out = model(torch.rand(2, *shape))
        assert out.shape == (2, 7), f"model '{name}' maps {shape} inputs to {tuple(out.shape)}"
        # iDLG reads the label off the last linear layer with one output per class.
        assert classifier_weight_name(model, 7) in dict(model.named_parameters())


def check_dataset(name: str, *, data_root: str | None = None) -> None:
    from privbench.data import load_dataset

    d = load_dataset(name, root=data_root)
    assert d.x_train.dtype == torch.float32 and d.y_train.dtype == torch.int64
    assert d.x_train.ndim == 4 and d.x_test.shape[1:] == d.x_train.shape[1:]
    lo, hi = d.value_range
    assert float(d.x_train.min()) >= lo and float(d.x_train.max()) <= hi
    assert len(d.class_names) == d.num_classes
    assert int(d.y_train.max()) < d.num_classes and int(d.y_train.min()) >= 0


def _run_ok(cfg: RunConfig, what: str):
    import privbench

    rows = privbench.run(cfg)
    for row in rows:
        assert row.status == "ok", f"{what}: {row.error}"
    return rows


def _dry(kind: str, name: str) -> dict[str, Any]:
    own = {p.name for p in _registries()[kind].entry(name).params}
    return {"iters": 2} if "iters" in own else {}


def method_feeding(attack: Any) -> str:
    """A registered method that puts on the channel what ``attack`` consumes."""
    if set(attack.consumes) & {"gradient", "update"}:
        return "fedavg"
    reg = _registries()["method"]
    for n in reg.names():
        if set(attack.consumes) & set(getattr(reg.entry(n).factory, "shares", ())):
            return n
    raise AssertionError(f"no registered method shares what {attack.name} consumes")


def check_method(name: str) -> None:
    (row,) = _run_ok(
        tiny_config(method=name, attack=dict(names=("idlg",), params={"iters": 2})),
        f"method '{name}'",
    )
    assert row.bytes_up > 0 and row.accuracy is not None


def check_attack(name: str) -> None:
    attack = _registries()["attack"].create(name)
    assert attack.consumes, f"attack '{name}' declares no message kinds it consumes"
    assert attack.target in ("batch", "dataset", "labels", "audit"), (
        f"attack '{name}' target {attack.target!r}"
    )
    cfg = tiny_config(
        method=method_feeding(attack),
        model="cnn-bn" if getattr(attack, "needs_batchnorm", False) else None,
        attack=dict(names=(name,), batch=2, params=_dry("attack", name)),
    )
    (row,) = _run_ok(cfg, f"attack '{name}'")
    if attack.target == "labels":
        assert row.label_dist_error is not None and 0.0 <= row.label_dist_error <= 1.0
        return
    assert row.psnr is not None and row.ssim is not None
    if attack.target == "batch":
        assert row.n_images == 2, f"attack '{name}' scored {row.n_images} images, not 2"
    else:
        assert row.n_images >= 1


def check_defense(name: str) -> None:
    """A run with the defense; one that acts on shared artifacts (``acts_on``) runs with
    the first registered method that shares one of them."""
    acts = getattr(_registries()["defense"].entry(name).factory, "acts_on", None)
    method = "fedavg"
    if acts is not None:
        methods = _registries()["method"]
        sharing = [
            m
            for m in methods.names()
            if set(getattr(methods.entry(m).factory, "shares", ())) & set(acts)
        ]
        method = "fedmix" if "fedmix" in sharing else sharing[0]  # fedmix: the quickest
    cfg = tiny_config(method=method, defenses=() if name == "none" else (name,))
    _run_ok(cfg, f"defense '{name}'")


def check_partition(name: str) -> None:
    _run_ok(tiny_config(partition=name), f"partition '{name}'")


def check_algorithm(name: str) -> None:
    _run_ok(tiny_config(fed=dict(algorithm=name)), f"algorithm '{name}'")


def check_threat(name: str) -> None:
    from privbench.engine.experiment import Experiment

    out = Experiment(tiny_config(attack=dict(threat=name))).train()
    assert out.channel.observations, f"threat '{name}' observed nothing"


BEHAVIOUR = {
    "model": check_model,
    "dataset": check_dataset,
    "method": check_method,
    "attack": check_attack,
    "defense": check_defense,
    "partition": check_partition,
    "algorithm": check_algorithm,
    "threat": check_threat,
}


def check_plugin(kind: str, name: str, *, behaviour: bool = True, data_root: str | None = None):
    """Run the conformance suite privbench runs on its built-ins against one plugin.

    Declaration (description, valid defaults, bad values rejected by name, no parameter
    name clashing with another kind's) and, with ``behaviour``, a tiny end-to-end use
    of the plugin: a model maps every shape to logits, a dataset loads as float images
    in its value range, a method trains and can be attacked, an attack returns a scored
    reconstruction, a defense/partition/algorithm runs, a threat model observes. Raises
    ``AssertionError`` naming what failed.
    """
    regs = _registries()
    if kind not in regs:
        raise ParameterError(f"Unknown plugin kind '{kind}'. Valid kinds: {', '.join(regs)}.")
    regs[kind].entry(name)  # an unknown name raises with the valid ones
    check_declaration(kind, name)
    check_rejects_bad_parameters(kind, name)
    check_parameter_names(kind, name)
    if behaviour:
        if kind == "dataset":
            check_dataset(name, data_root=data_root)
        else:
            BEHAVIOUR[kind](name)


def as_float64(observation):
    """``observation`` with its model, weights and payload in float64: for checking that
    two paths of an attack are the same algorithm without float32 rounding, which
    L-BFGS on sigmoid nets amplifies. Draw the dummy data in float64 too
    (``torch.set_default_dtype(torch.float64)``)."""
    from dataclasses import replace as _replace

    ctx = observation.context
    build = ctx.build_model
    ctx64 = _replace(
        ctx,
        build_model=lambda: build().double(),
        weights_before={k: v.double() for k, v in ctx.weights_before.items()},
    )
    payload = {k: v.double() for k, v in observation.payload.items()}
    return _replace(observation, context=ctx64, payload=payload)

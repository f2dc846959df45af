"""privbench: how much private data does federated learning with augmentation leak?

Public face (everything else is reachable but not advertised)::

    import privbench
    rows = privbench.run(privbench.RunConfig(attack=privbench.AttackConfig(names=("dlg",))))
    print(rows[0].psnr, rows[0].accuracy, rows[0].bytes_up)
    rows.to_frame()  # a pandas DataFrame

Bring your own model (``model=``: a factory ``(shape, num_classes) -> nn.Module`` or a
module) and data (``data=``: tensors, arrays, a ``Dataset``; see :func:`as_bundle`),
attack one captured update (:func:`attack_update`), add plugins
(:func:`register_attack` and friends, or the ``privbench.plugins`` entry points).
"""

from __future__ import annotations

__version__ = "0.1.0"

from privbench.api import UpdateAttack, attack_update
from privbench.config import AttackConfig, FedConfig, RunConfig
from privbench.data import DataBundle, as_bundle
from privbench.errors import PrivbenchError
from privbench.plugins import (
    register_attack,
    register_augmenter,
    register_dataset,
    register_defense,
    register_model,
    register_partition,
)
from privbench.registry import Param
from privbench.results import Result, Results, ResultStore


def registries() -> dict:
    """Every plugin registry by kind (importing the plugin packages registers them;
    installed ``privbench.plugins`` entry points load on the first call)."""
    from privbench.attacks import ATTACKS
    from privbench.augmenters import AUGMENTERS
    from privbench.data import DATASETS
    from privbench.data.partition import PARTITIONS
    from privbench.defenses import DEFENSES
    from privbench.engine.channel import THREATS
    from privbench.engine.federated import ALGORITHMS
    from privbench.models import MODELS
    from privbench.plugins import load_entry_points

    regs = {
        "method": AUGMENTERS,
        "attack": ATTACKS,
        "defense": DEFENSES,
        "dataset": DATASETS,
        "partition": PARTITIONS,
        "model": MODELS,
        "algorithm": ALGORITHMS,
        "threat": THREATS,
    }
    load_entry_points()
    return regs


def run(
    config: RunConfig | None = None,
    *,
    params: dict | None = None,
    model=None,
    data=None,
    out: str | ResultStore | None = None,
    checkpoint_every: float | None = 300.0,
) -> Results:
    """Run one experiment; return one :class:`Result` per attack (appended to ``out``, a
    result folder or a :class:`ResultStore`).

    ``model``: your own model factory ``(shape, num_classes) -> nn.Module``, an
    ``nn.Module`` class or instance, instead of ``config.model`` (which then only labels
    the rows). ``data``: your own data, anything :func:`as_bundle` takes, instead of
    ``config.dataset``. ``params``: plugin parameters under their plugin's name,
    ``{"fedmix": {"lam": 0.1}, "dlg": {"iters": 50}}`` (see
    :meth:`RunConfig.with_params`). ``checkpoint_every``: with ``out``, the round loop
    saves its state there every so many seconds (None: never) and rerunning the same
    config resumes from it, giving the row an uninterrupted run gives. The CLI runs
    exactly this function.
    """
    from privbench.pipeline import run as _run
    from privbench.validation import require_config

    if config is not None:
        require_config(config, "privbench.run")
    store = out if isinstance(out, ResultStore) else (ResultStore(out) if out else None)
    config = config or RunConfig()
    if params:
        config = config.with_params(params)
    return _run(config, store=store, model=model, data=data, checkpoint_every=checkpoint_every)


__all__ = [
    "AttackConfig",
    "DataBundle",
    "FedConfig",
    "Param",
    "PrivbenchError",
    "Result",
    "ResultStore",
    "Results",
    "RunConfig",
    "UpdateAttack",
    "as_bundle",
    "attack_update",
    "register_attack",
    "register_augmenter",
    "register_dataset",
    "register_defense",
    "register_model",
    "register_partition",
    "registries",
    "run",
    "__version__",
]

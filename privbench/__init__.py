"""privbench: how much private data does federated learning with augmentation leak?

Public face (everything else is reachable but not advertised)::

    import privbench
    rows = privbench.run(privbench.RunConfig(attack=privbench.AttackConfig(names=("dlg",))))
    print(rows[0].psnr, rows[0].accuracy, rows[0].bytes_up)
"""

from __future__ import annotations

__version__ = "0.1.0"

from privbench.config import AttackConfig, FedConfig, RunConfig
from privbench.errors import PrivbenchError
from privbench.results import Result, ResultStore


def registries() -> dict:
    """Every plugin registry by kind (importing the plugin packages registers them)."""
    from privbench.attacks import ATTACKS
    from privbench.augmenters import AUGMENTERS
    from privbench.channel import THREATS
    from privbench.data import DATASETS
    from privbench.defenses import DEFENSES
    from privbench.federated import ALGORITHMS
    from privbench.models import MODELS
    from privbench.partition import PARTITIONS

    return {
        "method": AUGMENTERS,
        "attack": ATTACKS,
        "defense": DEFENSES,
        "dataset": DATASETS,
        "partition": PARTITIONS,
        "model": MODELS,
        "algorithm": ALGORITHMS,
        "threat": THREATS,
    }


def run(config: RunConfig, *, out: str | None = None) -> list[Result]:
    """Run one experiment; return one :class:`Result` per attack (appended to ``out``)."""
    from privbench.runner import run as _run

    return _run(config, store=ResultStore(out) if out else None)


__all__ = [
    "AttackConfig",
    "FedConfig",
    "PrivbenchError",
    "Result",
    "ResultStore",
    "RunConfig",
    "registries",
    "run",
    "__version__",
]

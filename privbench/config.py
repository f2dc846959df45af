"""Typed run configuration. ``RunConfig.resolve()`` validates everything at once.

Plugin parameters live in ``*_params`` dicts keyed by the plugin's own parameter
names; ``resolve`` fills defaults and reports every problem in one
:class:`~privbench.errors.ParameterError`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from privbench.adversary import base_name as _base
from privbench.adversary import expand_attacks
from privbench.confighash import config_hash
from privbench.errors import ParameterError, PrivbenchError
from privbench.tuning import default_lr

CLIENT_SAMPLING = ("auto", "fixed", "poisson")
DEFAULT_MODEL = "lenet-sigmoid"  # DLG's model; a method that needs another sets default_model


def default_model_for(method: str) -> str:
    """The model a run of ``method`` uses when none is named: the method's own
    ``default_model`` (Fed-ZDA needs BatchNorm) or :data:`DEFAULT_MODEL`."""
    from privbench import registries

    reg = registries()["method"]
    preferred = getattr(reg.entry(method).factory, "default_model", None) if method in reg else None
    return preferred or DEFAULT_MODEL


@dataclass(frozen=True)
class FedConfig:
    """Federated training: N clients, a fraction sampled per round, local SGD."""

    algorithm: str = "fedavg"
    algorithm_params: dict[str, Any] = field(default_factory=dict)
    clients: int = 10
    fraction: float = 1.0
    rounds: int = 10
    local_epochs: int = 2
    batch_size: int = 10
    # None: the default tuned for the dataset x model (privbench.tuning; 0.5 untuned)
    lr: float | None = None
    local_test_fraction: float = 0.2
    eval_every: int = 1
    # How a round's clients are drawn: "fixed" (m = round(fraction * N) without
    # replacement), "poisson" (each client independently with q = fraction; the sampling
    # DP-FedAvg's accountant assumes), or "auto" (poisson under central client-level DP,
    # else fixed). Resolved to fixed or poisson.
    client_sampling: str = "auto"
    # The clients' local optimiser: "sgd" (what vectorised clients and the attacks'
    # simulators compute) or "adam" (fresh per client and round, e.g. the CVAE thesis'
    # recipe), with L2 weight decay. Plain SGD without decay is left out of the hash.
    optimizer: str = "sgd"
    weight_decay: float = 0.0
    # Train the clients of a round as one vectorised computation where the method allows
    # (same results as one by one, within float rounding, which training can amplify:
    # see docs/performance.md). An execution choice: not part of the config hash.
    vectorise: bool = True

    @property
    def plain_sgd(self) -> bool:
        """Local SGD without weight decay: what vectorised clients, the attacks'
        simulators, q-FFL and the strategies that replace local SGD assume."""
        return self.optimizer == "sgd" and self.weight_decay == 0

    @property
    def clients_per_round(self) -> int:
        return max(1, int(round(self.fraction * self.clients)))


@dataclass(frozen=True)
class AttackConfig:
    """What is attacked: which attacks, by whom, in which round, against which clients.

    At ``round`` the first ``victims`` clients are made to take part; each trains on
    ``batch`` of its images for ``steps`` full-batch SGD steps. One step sends the
    gradient (FedSGD); more send the weight update (FedAvg).
    """

    names: tuple[str, ...] = ()
    params: dict[str, Any] = field(default_factory=dict)
    threat: str = "server"
    threat_params: dict[str, Any] = field(default_factory=dict)
    round: int = 0
    victims: int = 1
    batch: int = 1
    steps: int = 1


@dataclass(frozen=True)
class RunConfig:
    """One experiment: data, partition, model, method, defenses, training and attacks."""

    method: str = "fedavg"
    method_params: dict[str, Any] = field(default_factory=dict)
    dataset: str = "digits"
    dataset_params: dict[str, Any] = field(default_factory=dict)
    partition: str = "dirichlet"
    partition_params: dict[str, Any] = field(default_factory=dict)
    model: str | None = None  # None: the method's default_model, else lenet-sigmoid
    model_params: dict[str, Any] = field(default_factory=dict)
    defenses: tuple[str, ...] = ()
    defense_params: dict[str, Any] = field(default_factory=dict)
    fed: FedConfig = field(default_factory=FedConfig)
    attack: AttackConfig = field(default_factory=AttackConfig)
    seed: int = 0
    data_root: str | None = None
    download: bool = False

    def resolve(self, *, provided: frozenset[str] = frozenset()) -> RunConfig:
        """Validate every name and number; return the config with all defaults filled in.

        ``provided``: kinds ("model", "dataset") the caller supplies as objects; their
        names are labels then, not registry names.
        """
        from privbench import registries
        from privbench.validation import field_problems, optimizer_problems

        if typed := field_problems(self):  # wrong types first: the checks below compare
            raise ParameterError(" ".join(typed))
        problems: list[str] = []

        def check(cond: bool, name: str, allowed: str, got: Any) -> None:
            if not cond:
                problems.append(f"The '{name}' parameter must be {allowed}. Got {got!r} instead.")

        def plugin(
            kind: str, name: str, params: dict[str, Any], keep_only_known: bool = False
        ) -> dict[str, Any]:
            if kind in provided:
                return dict(params)
            reg = registries()[kind]
            try:
                entry = reg.entry(name)
                if keep_only_known:
                    own = {p.name for p in entry.params}
                    params = {k: v for k, v in params.items() if k in own}
                return reg.resolve_params(name, params)
            except PrivbenchError as err:
                problems.append(str(err))
                return dict(params)

        fed = self.fed
        atk = replace(self.attack, names=expand_attacks(self.attack.names, self.method))
        check(isinstance(self.seed, int) and self.seed >= 0, "seed", "an integer >= 0", self.seed)
        check(fed.clients >= 1, "clients", ">= 1", fed.clients)
        check(0 < fed.fraction <= 1, "fraction", "> 0 and <= 1", fed.fraction)
        check(fed.rounds >= 1, "rounds", ">= 1", fed.rounds)
        check(
            fed.client_sampling in CLIENT_SAMPLING,
            "client_sampling",
            "one of " + ", ".join(CLIENT_SAMPLING),
            fed.client_sampling,
        )
        problems += optimizer_problems(fed, atk)
        check(fed.local_epochs >= 1, "local_epochs", ">= 1", fed.local_epochs)
        check(fed.batch_size >= 1, "batch_size", ">= 1", fed.batch_size)
        check(
            fed.lr is None or (isinstance(fed.lr, (int, float)) and 0 < fed.lr < math.inf),
            "lr",
            "a finite number > 0 (or None: the tuned default)",
            fed.lr,
        )
        check(
            0 <= fed.local_test_fraction < 1,
            "local_test_fraction",
            ">= 0 and < 1",
            fed.local_test_fraction,
        )
        check(
            fed.eval_every >= 0, "eval_every", ">= 0 (0: only after the last round)", fed.eval_every
        )
        check(
            0 <= atk.round < max(fed.rounds, 1),
            "attack_round",
            f"a round index >= 0 and < rounds ({fed.rounds})",
            atk.round,
        )
        check(
            1 <= atk.victims <= max(fed.clients, 1),
            "victims",
            f">= 1 and <= clients ({fed.clients})",
            atk.victims,
        )
        check(
            atk.victims <= fed.clients_per_round or not atk.names,
            "victims",
            f"<= clients sampled per round ({fed.clients_per_round})",
            atk.victims,
        )
        check(atk.batch >= 1, "attack_batch", ">= 1", atk.batch)
        check(atk.steps >= 1, "victim_steps", ">= 1", atk.steps)

        method_params = plugin("method", self.method, self.method_params)
        model = self.model if self.model is not None else default_model_for(self.method)
        dataset_params = plugin("dataset", self.dataset, self.dataset_params)
        partition_params = plugin("partition", self.partition, self.partition_params)
        model_params = plugin("model", model, self.model_params)
        algorithm_params = plugin("algorithm", fed.algorithm, fed.algorithm_params)
        threat_params = plugin("threat", atk.threat, atk.threat_params)
        # Attack and defense params are shared by name across the chosen plugins of a kind.
        attack_params = _resolve_shared(plugin, "attack", atk.names, atk.params, problems)
        defense_params = _resolve_shared(
            plugin, "defense", self.defenses, self.defense_params, problems
        )
        if not problems and self.method in registries()["method"]:
            import warnings

            from privbench.validation import combination_problems, view_notices

            problems += combination_problems(self.method, tuple(self.defenses))
            for notice in view_notices(self.method, attack_params):
                warnings.warn(notice, stacklevel=2)
        if problems:
            raise PrivbenchError(" ".join(problems))
        return replace(
            self,
            model=model,
            method_params=method_params,
            dataset_params=dataset_params,
            partition_params=partition_params,
            model_params=model_params,
            defense_params=defense_params,
            fed=replace(
                fed,
                algorithm_params=algorithm_params,
                client_sampling=self._client_sampling(defense_params),
                lr=fed.lr
                if fed.lr is not None
                else default_lr(self.dataset, model, provided="dataset" in provided)[0],
            ),
            attack=replace(atk, params=attack_params, threat_params=threat_params),
        )

    def _client_sampling(self, defense_params: Mapping[str, Any]) -> str:
        """``auto``: Poisson sampling where central client-level DP accounts for it."""
        if self.fed.client_sampling != "auto":
            return self.fed.client_sampling
        central = "client-dp" in self.defenses and not defense_params["client-dp"].get("local")
        return "poisson" if central else "fixed"

    def chosen_plugins(self) -> list[tuple[str, str]]:
        """(kind, name) of every plugin this configuration chooses."""
        model = self.model if self.model is not None else default_model_for(self.method)
        return [
            ("method", self.method),
            ("dataset", self.dataset),
            ("partition", self.partition),
            ("model", model),
            ("algorithm", self.fed.algorithm),
            ("threat", self.attack.threat),
            *(("attack", n) for n in expand_attacks(self.attack.names, self.method)),
            *(("defense", n) for n in self.defenses),
        ]

    def with_params(self, params: Mapping[str, Any]) -> RunConfig:
        """This configuration with plugin parameters set under their plugin's name:
        ``{"fedmix": {"lam": 0.1}, "dlg": {"iters": 50}}`` or ``{"fedmix.lam": 0.1}``.

        The name is a chosen plugin's (the method, dataset, partition, model, algorithm,
        threat model, or one of the attacks or defenses); the parameter must be one of
        its own. Values are validated with the rest when the run resolves the config.
        """
        from privbench import registries

        regs = registries()
        chosen = self.chosen_plugins()
        attacks = expand_attacks(self.attack.names, self.method)
        slots = {
            "method": dict(self.method_params),
            "dataset": dict(self.dataset_params),
            "partition": dict(self.partition_params),
            "model": dict(self.model_params),
            "algorithm": dict(self.fed.algorithm_params),
            "threat": dict(self.attack.threat_params),
            "attack": per_plugin("attack", attacks, self.attack.params)[0],
            "defense": per_plugin("defense", self.defenses, self.defense_params)[0],
        }
        for plugin, param, value in namespaced_items(params):
            kinds = list(dict.fromkeys(k for k, n in chosen if n == plugin or _base(n) == plugin))
            declared = [
                k
                for k in kinds
                if plugin not in regs[k]
                or any(q.name == param for q in regs[k].entry(plugin).params)
            ]
            if not kinds:
                names = ", ".join(f"{k} '{n}'" for k, n in chosen)
                raise ParameterError(
                    f"'{plugin}.{param}': '{plugin}' is not a plugin of this run (chosen: {names})."
                )
            if not declared:
                own = sorted({q.name for k in kinds for q in regs[k].entry(plugin).params})
                raise ParameterError(
                    f"'{plugin}.{param}': {kinds[0]} '{plugin}' has no parameter '{param}' "
                    f"(its parameters: {', '.join(own) or 'none'})."
                )
            for k in declared:
                if k == "attack":  # the attack and its @variants (dlg, dlg@enumerate)
                    for n in attacks:
                        if plugin in (n, _base(n)):
                            slots[k].setdefault(n, {})[param] = value
                elif k == "defense":
                    slots[k].setdefault(plugin, {})[param] = value
                else:
                    slots[k][param] = value
        return replace(
            self,
            method_params=slots["method"],
            dataset_params=slots["dataset"],
            partition_params=slots["partition"],
            model_params=slots["model"],
            defense_params=slots["defense"],
            fed=replace(self.fed, algorithm_params=slots["algorithm"]),
            attack=replace(
                self.attack, names=attacks, params=slots["attack"], threat_params=slots["threat"]
            ),
        )

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> RunConfig:
        """The config of ``d`` (``to_dict()``'s output, e.g. a row's ``config``)."""
        d = dict(d)
        fed, attack = dict(d.pop("fed", {})), dict(d.pop("attack", {}))
        attack["names"] = tuple(attack.get("names", ()))
        d["defenses"] = tuple(d.get("defenses", ()))
        return cls(**d, fed=FedConfig(**fed), attack=AttackConfig(**attack))

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["defenses"] = list(self.defenses)
        d["attack"]["names"] = list(self.attack.names)
        return d

    def hash(self) -> str:
        """Stable hash of what determines the result (not where data or results live)."""
        return config_hash(self.to_dict())


def namespaced_items(params: Mapping[str, Any]) -> list[tuple[str, str, Any]]:
    """(plugin, parameter, value) from ``{"fedmix": {"lam": 0.1}}`` or
    ``{"fedmix.lam": 0.1}``; hyphens in a parameter name read as underscores."""
    items = []
    for key, value in params.items():
        if isinstance(value, Mapping):
            items += [(str(key), str(p).replace("-", "_"), v) for p, v in value.items()]
            continue
        plugin, dot, param = str(key).rpartition(".")
        if not dot or not plugin or not param:
            raise ParameterError(
                f"The plugin parameter {key!r} must be named PLUGIN.PARAM (e.g. 'fedmix.lam') "
                "or given as {PLUGIN: {PARAM: value}}."
            )
        items.append((plugin, param.replace("-", "_"), value))
    return items


def per_plugin(
    kind: str, names: tuple[str, ...], params: Mapping[str, Any]
) -> tuple[dict[str, dict[str, Any]], set[str]]:
    """Params of several chosen plugins of one kind, per plugin; and the flat names that
    no chosen plugin declares.

    ``params`` may be per plugin (``{"dlg": {"iters": 10}}``) or flat (``{"iters": 10}``:
    given to every chosen plugin that declares it).
    """
    from privbench import registries

    reg = registries()[kind]
    per_name = params and all(isinstance(v, dict) for v in params.values())
    if per_name and set(params) <= set(names) | {_base(n) for n in names}:
        # A variant (dlg@enumerate) takes its plugin's parameters, then its own.
        return {n: {**params.get(_base(n), {}), **params.get(n, {})} for n in names}, set()
    per: dict[str, dict[str, Any]] = {n: {} for n in names}
    accepted: set[str] = set()
    for n in names:
        if n not in reg:
            continue
        own = {p.name for p in reg.entry(n).params}
        accepted |= own & set(params)
        per[n].update({k: v for k, v in params.items() if k in own})
    return per, set(params) - accepted


def _resolve_shared(plugin, kind, names, params, problems) -> dict[str, dict[str, Any]]:
    """Resolved params of several chosen plugins of one kind (see :func:`per_plugin`); a
    flat name that no chosen plugin accepts is an error."""
    per, unknown = per_plugin(kind, names, params)
    for key in sorted(unknown):
        chosen = ", ".join(f"'{n}'" for n in names) or "none chosen"
        problems.append(f"'{key}' is not a parameter of the chosen {kind}s ({chosen}).")
    return {n: plugin(kind, n, per[n]) for n in names}

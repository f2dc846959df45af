"""Seeded client partitions of a labelled training set.

Each partition maps labels (N,) to a list of index arrays, one per client. Then
:func:`split_clients` gives every client a local train/test split (Fed-ZDA's
local-test fairness metric needs a local test set that follows the client's own
label distribution).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from privbench.errors import ParameterError
from privbench.registry import Param, Registry

PARTITIONS: Registry = Registry("partition")


@dataclass(frozen=True)
class ClientSplit:
    """Indices into the dataset's training split for one client."""

    client_id: int
    train: np.ndarray
    test: np.ndarray


def _check_feasible(name: str, parts: list[np.ndarray], min_size: int) -> list[np.ndarray]:
    sizes = [len(p) for p in parts]
    worst = int(np.argmin(sizes))
    if sizes[worst] < min_size:
        raise ParameterError(
            f"Partition '{name}' leaves client {worst} with {sizes[worst]} samples but each "
            f"client needs at least {min_size}; use fewer clients or a larger dataset."
        )
    return [np.sort(p) for p in parts]


@PARTITIONS.register("iid", description="uniformly random equal-size shards")
def iid(labels: np.ndarray, num_clients: int, rng: np.random.Generator) -> list[np.ndarray]:
    perm = rng.permutation(len(labels))
    return _check_feasible("iid", np.array_split(perm, num_clients), 2)


@PARTITIONS.register(
    "shards",
    params=(Param("classes_per_client", int, 2, "distinct classes each client holds", low=1),),
    description="each client holds exactly k classes (FedMix-style label skew)",
)
def shards(labels, num_clients, rng, *, classes_per_client=2):
    classes = np.unique(labels)
    k = classes_per_client
    if k > len(classes):
        raise ParameterError(
            f"The 'classes_per_client' parameter of partition 'shards' must be <= the number "
            f"of classes ({len(classes)}). Got {k} instead."
        )
    # Cycle through a shuffled class order so every class has (nearly) the same number
    # of holders, then split each class's samples evenly among its holders.
    order = rng.permutation(classes)
    owned = [[order[(c * k + j) % len(classes)] for j in range(k)] for c in range(num_clients)]
    holders: dict[int, list[int]] = {int(c): [] for c in classes}
    for client, cls in enumerate(owned):
        for c in cls:
            holders[int(c)].append(client)
    parts: list[list[np.ndarray]] = [[] for _ in range(num_clients)]
    for c, who in holders.items():
        if not who:
            continue
        idx = rng.permutation(np.flatnonzero(labels == c))
        for client, chunk in zip(who, np.array_split(idx, len(who)), strict=True):
            parts[client].append(chunk)
    return _check_feasible("shards", [np.concatenate(p) for p in parts], 2)


@PARTITIONS.register(
    "unimodal",
    params=(Param("shards_per_client", int, 2, "label-sorted shards per client", low=1),),
    description="McMahan et al.'s split (Fed-ZDA's unimodal non-iid): label-sorted shards",
)
def unimodal(labels, num_clients, rng, *, shards_per_client=2):
    # Sort by label (stable, ties broken randomly), cut into equal shards, deal them out.
    order = np.lexsort((rng.random(len(labels)), labels))
    pieces = np.array_split(order, num_clients * shards_per_client)
    deal = rng.permutation(len(pieces))
    parts = [np.concatenate([pieces[s] for s in deal[c::num_clients]]) for c in range(num_clients)]
    return _check_feasible("unimodal", parts, 2)


@PARTITIONS.register(
    "dirichlet",
    params=(
        Param(
            "alpha",
            float,
            0.5,
            "Dirichlet concentration (smaller = more skew)",
            low=0.0,
            low_open=True,
        ),
        Param("min_size", int, 10, "redraw until every client has this many samples", low=2),
        Param(
            "over",
            str,
            "classes",
            "what Dirichlet(alpha) splits: classes, each class over the clients (sizes "
            "vary); or clients, each client's class proportions, every client an equal "
            "share of the samples (Hsu et al. 2019; FedLab's client_inner_dirichlet)",
            choices=("classes", "clients"),
        ),
    ),
    description="label skew: each class spread over clients by Dirichlet(alpha) proportions",
)
def dirichlet(labels, num_clients, rng, *, alpha=0.5, min_size=10, over="classes"):
    if over == "clients":
        return _dirichlet_over_clients(labels, num_clients, rng, alpha)
    classes = np.unique(labels)
    if min_size * num_clients > len(labels):
        raise ParameterError(
            f"The 'min_size' parameter of partition 'dirichlet' must be <= "
            f"{len(labels) // num_clients} for {num_clients} clients and {len(labels)} "
            f"samples. Got {min_size} instead."
        )
    for _attempt in range(1000):
        parts: list[list[int]] = [[] for _ in range(num_clients)]
        for c in classes:
            idx = rng.permutation(np.flatnonzero(labels == c))
            share = rng.dirichlet(np.full(num_clients, alpha))
            cuts = (np.cumsum(share)[:-1] * len(idx)).astype(int)
            for client, chunk in enumerate(np.split(idx, cuts)):
                parts[client].extend(chunk.tolist())
        if min(len(p) for p in parts) >= min_size:
            return [np.sort(np.array(p, dtype=np.int64)) for p in parts]
    raise ParameterError(
        f"Partition 'dirichlet' (alpha={alpha}) could not give every one of {num_clients} "
        f"clients {min_size} samples in 1000 draws; lower 'min_size', raise 'alpha' or use "
        f"fewer clients."
    )


def _dirichlet_over_clients(labels, num_clients, rng, alpha):
    """Each client i draws class proportions p_i ~ Dir(alpha) and floor(n/N) samples (the
    first n mod N clients one more), one at a time in a random order of clients, each
    sample's class drawn from p_i among the classes with samples left (p_i renormalised
    over them; uniform over them if p_i puts no mass there). FedLab's
    client_inner_dirichlet_partition, which retries a drawn empty class instead."""
    classes, inverse = np.unique(labels, return_inverse=True)
    pools = [rng.permutation(np.flatnonzero(inverse == c)).tolist() for c in range(len(classes))]
    priors = rng.dirichlet(np.full(len(classes), alpha), size=num_clients)
    sizes = np.full(num_clients, len(labels) // num_clients)
    sizes[: len(labels) % num_clients] += 1
    left = np.array([len(p) for p in pools], dtype=float)
    order = rng.permutation(np.repeat(np.arange(num_clients), sizes))
    parts: list[list[int]] = [[] for _ in range(num_clients)]
    for client in order:
        weights = priors[client] * (left > 0)
        total = weights.sum()
        weights = weights / total if total > 0 else (left > 0) / (left > 0).sum()
        c = int(rng.choice(len(classes), p=weights))
        parts[client].append(pools[c].pop())
        left[c] -= 1
    return [np.sort(np.array(p, dtype=np.int64)) for p in parts]


@PARTITIONS.register(
    "multimodal",
    params=(
        Param("groups", int, 2, "sub-populations (modes); classes are split among them", low=2),
        Param(
            "prevalence",
            float,
            0.8,
            "share of clients in the prevalent group",
            low=0.0,
            high=1.0,
            low_open=True,
            high_open=True,
        ),
        Param("classes_per_client", int, 2, "classes each client holds, from its group", low=1),
    ),
    description="Fed-ZDA's multimodal non-iid: a prevalent and rarer sub-populations, classes "
    "imbalanced overall",
)
def multimodal(labels, num_clients, rng, *, groups=2, prevalence=0.8, classes_per_client=2):
    classes = rng.permutation(np.unique(labels))
    if groups > len(classes):
        raise ParameterError(
            f"The 'groups' parameter of partition 'multimodal' must be <= the number of "
            f"classes ({len(classes)}). Got {groups} instead."
        )
    class_groups = np.array_split(classes, groups)
    k = classes_per_client
    if k > min(len(g) for g in class_groups):
        raise ParameterError(
            f"The 'classes_per_client' parameter of partition 'multimodal' must be <= "
            f"{min(len(g) for g in class_groups)} (classes in the smallest group). "
            f"Got {k} instead."
        )
    # Group 0 is the prevalent mode; the other groups share the remaining clients.
    n_major = max(1, min(num_clients - (groups - 1), int(round(prevalence * num_clients))))
    rest = np.array_split(np.arange(num_clients - n_major), groups - 1)
    group_of = [0] * n_major + [g + 1 for g, members in enumerate(rest) for _ in members]
    owned, holders = [], {int(c): 0 for c in classes}
    seen = [0] * groups
    for client in range(num_clients):
        g = group_of[client]
        pool = class_groups[g]
        cls = [pool[(seen[g] * k + j) % len(pool)] for j in range(k)]
        seen[g] += 1
        owned.append(cls)
        for c in cls:
            holders[int(c)] += 1
    # Every client gets the same amount of data, so prevalent classes (more holders) use
    # more of their samples than rare ones: the union of clients is class-imbalanced.
    counts = {int(c): int((labels == c).sum()) for c in classes}
    per_class = min(counts[c] // h for c, h in holders.items() if h)
    pools = {int(c): list(rng.permutation(np.flatnonzero(labels == c))) for c in classes}
    parts = []
    for cls in owned:
        take = []
        for c in cls:
            take.extend(pools[int(c)][:per_class])
            del pools[int(c)][:per_class]
        parts.append(np.array(take, dtype=np.int64))
    return _check_feasible("multimodal", parts, 2)


def partition(
    name: str, labels: np.ndarray, num_clients: int, *, seed: int, params: dict | None = None
) -> list[np.ndarray]:
    """Partition ``labels`` among ``num_clients`` with a registered, seeded partition."""
    if num_clients < 1:
        raise ParameterError(f"The 'clients' parameter must be >= 1. Got {num_clients} instead.")
    resolved = PARTITIONS.resolve_params(name, params)
    if num_clients * 2 > len(labels):
        raise ParameterError(
            f"The 'clients' parameter must be <= {len(labels) // 2} for a training set of "
            f"{len(labels)} samples (each client needs 2). Got {num_clients} instead."
        )
    rng = np.random.default_rng([seed, 1])
    return PARTITIONS.entry(name).factory(np.asarray(labels), num_clients, rng, **resolved)


def split_clients(parts: list[np.ndarray], *, test_fraction: float, seed: int) -> list[ClientSplit]:
    """Give every client a local train/test split (at least one sample in each)."""
    if not 0.0 <= test_fraction < 1.0:
        raise ParameterError(
            f"The 'local_test_fraction' parameter must be >= 0 and < 1. Got {test_fraction} "
            "instead."
        )
    rng = np.random.default_rng([seed, 2])
    out = []
    for cid, idx in enumerate(parts):
        perm = rng.permutation(idx)
        n_test = int(round(len(perm) * test_fraction))
        if test_fraction > 0:
            n_test = min(max(n_test, 1), len(perm) - 1)
        out.append(ClientSplit(cid, np.sort(perm[n_test:]), np.sort(perm[:n_test])))
    return out

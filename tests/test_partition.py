import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from privbench.data.partition import partition, split_clients
from privbench.errors import ParameterError

LABELS = np.repeat(np.arange(10), 50)  # 500 samples, 10 balanced classes


def _covers_disjointly(parts, n, exhaustive=True):
    allidx = np.concatenate(parts)
    assert len(np.unique(allidx)) == len(allidx), "a sample is given to two clients"
    if exhaustive:
        assert sorted(allidx.tolist()) == list(range(n))


@pytest.mark.parametrize("name", ["iid", "shards", "unimodal", "dirichlet"])
def test_partitions_cover_every_sample_once_and_are_seeded(name):
    a = partition(name, LABELS, 10, seed=1)
    b = partition(name, LABELS, 10, seed=1)
    c = partition(name, LABELS, 10, seed=2)
    assert len(a) == 10
    _covers_disjointly(a, len(LABELS))
    assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))
    assert not all(np.array_equal(x, y) for x, y in zip(a, c, strict=True))


def test_iid_sizes_equal():
    sizes = [len(p) for p in partition("iid", LABELS, 7, seed=0)]
    assert max(sizes) - min(sizes) <= 1


@pytest.mark.parametrize("k", [1, 2, 3])
def test_shards_exactly_k_classes(k):
    parts = partition("shards", LABELS, 10, seed=0, params={"classes_per_client": k})
    assert all(len(np.unique(LABELS[p])) == k for p in parts)


def test_unimodal_two_shards_mostly_two_classes():
    parts = partition("unimodal", LABELS, 10, seed=0)
    assert all(len(np.unique(LABELS[p])) <= 4 for p in parts)
    assert all(len(p) == 50 for p in parts)


def test_dirichlet_min_size_and_skew():
    parts = partition("dirichlet", LABELS, 10, seed=0, params={"alpha": 0.1, "min_size": 5})
    assert min(len(p) for p in parts) >= 5
    # Strong skew: on average a client's largest class holds most of its data.
    top = [np.bincount(LABELS[p], minlength=10).max() / len(p) for p in parts]
    assert np.mean(top) > 0.5
    wide = partition("dirichlet", LABELS, 10, seed=0, params={"alpha": 100.0})
    top_wide = [np.bincount(LABELS[p], minlength=10).max() / len(p) for p in wide]
    assert np.mean(top_wide) < np.mean(top)


def test_multimodal_groups_and_class_imbalance():
    parts = partition(
        "multimodal",
        LABELS,
        10,
        seed=0,
        params={"groups": 2, "prevalence": 0.8, "classes_per_client": 2},
    )
    _covers_disjointly(parts, len(LABELS), exhaustive=False)
    assert all(len(np.unique(LABELS[p])) == 2 for p in parts)
    counts = np.bincount(LABELS[np.concatenate(parts)], minlength=10)
    assert counts.max() >= 3 * counts[counts > 0].min()  # prevalent vs rare classes


def test_bad_parameters_rejected():
    with pytest.raises(ParameterError, match="'alpha' parameter of partition 'dirichlet'"):
        partition("dirichlet", LABELS, 10, seed=0, params={"alpha": -1})
    with pytest.raises(ParameterError, match="classes_per_client"):
        partition("shards", LABELS, 10, seed=0, params={"classes_per_client": 11})
    with pytest.raises(ParameterError, match="'clients' parameter"):
        partition("iid", LABELS, 400, seed=0)


def test_split_clients_gives_each_a_local_test_set():
    parts = partition("iid", LABELS, 5, seed=0)
    splits = split_clients(parts, test_fraction=0.2, seed=0)
    for p, s in zip(parts, splits, strict=True):
        assert len(s.test) == 20 and len(s.train) == 80
        assert sorted(np.concatenate([s.train, s.test]).tolist()) == sorted(p.tolist())


@settings(max_examples=25, deadline=None)
@given(
    clients=st.integers(1, 40),
    seed=st.integers(0, 10_000),
    k=st.integers(1, 10),
    alpha=st.floats(0.05, 50.0),
)
def test_partition_properties(clients, seed, k, alpha):
    for name, params in [
        ("iid", {}),
        ("shards", {"classes_per_client": k}),
        ("dirichlet", {"alpha": alpha, "min_size": 2}),
    ]:
        try:
            parts = partition(name, LABELS, clients, seed=seed, params=params)
        except ParameterError:
            continue  # infeasible combination, reported clearly; nothing else may fail
        assert len(parts) == clients
        assert min(len(p) for p in parts) >= 2
        # k classes per client can only cover all 10 classes if clients * k >= 10.
        _covers_disjointly(parts, len(LABELS), exhaustive=name != "shards" or clients * k >= 10)

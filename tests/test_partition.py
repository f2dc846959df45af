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


def test_dirichlet_over_clients_gives_equal_sizes_and_each_client_its_own_skew():
    labels = np.repeat(np.arange(10), 300)  # 3,000 samples
    over = {"over": "clients"}
    a = partition("dirichlet", labels, 100, seed=3, params={"alpha": 0.1, **over})
    _covers_disjointly(a, len(labels))
    assert {len(p) for p in a} == {30}  # equal shares, where over classes sizes vary
    b = partition("dirichlet", labels, 100, seed=3, params={"alpha": 0.1, **over})
    assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))
    top = [np.bincount(labels[p], minlength=10).max() / len(p) for p in a]
    wide = partition("dirichlet", labels, 100, seed=3, params={"alpha": 100.0, **over})
    top_wide = [np.bincount(labels[p], minlength=10).max() / len(p) for p in wide]
    assert np.mean(top) > 0.6 > 0.3 > np.mean(top_wide)
    # 101 samples over 10 clients: the first one holds the extra sample.
    odd = partition("dirichlet", np.arange(101) % 10, 10, seed=0, params=over)
    assert sorted(len(p) for p in odd) == [10] * 9 + [11]
    # Over classes, 100 clients at alpha 0.1 cannot all get 10 of 3,000 samples: the
    # thesis' setting needs the other reading.
    with pytest.raises(ParameterError, match="could not give every one of 100"):
        partition("dirichlet", labels, 100, seed=3, params={"alpha": 0.1})


def test_dirichlet_over_classes_keeps_the_hash_of_every_earlier_row():
    from privbench import RunConfig

    def hashed(**params):
        return RunConfig(partition="dirichlet", partition_params=params).resolve().hash()

    assert hashed(over="classes") == hashed() != hashed(over="clients")
    # The value before the parameter existed (commit bd2f8a0), at the default data.
    assert RunConfig(partition="dirichlet").resolve().hash() == "d9f03a3eaaa68886"


def test_dirichlet_over_clients_follows_the_hand_worked_draws():
    """Two clients, two classes of two samples: with all of client 0's prior on class 0
    the draws give it class 0 while there is any, then class 1 (its prior is zero
    there: the renormalisation falls back to the classes left)."""
    from privbench.data.partition import _dirichlet_over_clients

    class Fixed:  # client 0 all on class 0, client 1 all on class 1; order 0, 0, 1, 1
        def permutation(self, x):
            return np.arange(x) if isinstance(x, int) else np.asarray(x)

        def dirichlet(self, alpha, size):
            return np.array([[1.0, 0.0], [0.0, 1.0]])

        def choice(self, n, p):
            return int(np.argmax(p))

    parts = _dirichlet_over_clients(np.array([0, 0, 1, 1]), 2, Fixed(), 0.5)
    assert [p.tolist() for p in parts] == [[0, 1], [2, 3]]
    # Class 0 holds one sample: client 0 takes it, then (no mass left where samples
    # are) one of class 1, popped from the end of its pool [1, 2, 3].
    parts = _dirichlet_over_clients(np.array([0, 1, 1, 1]), 2, Fixed(), 0.5)
    assert [p.tolist() for p in parts] == [[0, 3], [1, 2]]


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

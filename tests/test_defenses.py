"""Defenses: accounting against an independent RDP computation, noise scales, clipping,
pruning, composition order, and that attacks see exactly what the defended channel carries."""

import math

import numpy as np
import pytest
import torch
from scipy.special import gammaln, logsumexp

import privbench
from privbench import registries
from privbench.defenses import DEFENSES, Defense
from privbench.defenses.dp import ClientDP, rdp_epsilon
from privbench.defenses.noise import Prune, sparse_bytes
from privbench.engine.experiment import Experiment
from privbench.errors import IncompatibleError
from tests.conftest import tiny_config


def _independent_epsilon(sigma, q, steps, delta, orders=range(2, 129)):
    """Sampled Gaussian RDP at integer orders by the binomial expansion (Mironov et al.
    2019), composed over steps and converted to (eps, delta) with Balle et al. (2020)'s
    bound — written from the formulas, not from Opacus."""
    best = math.inf
    for a in orders:
        k = np.arange(a + 1)
        log_terms = (
            gammaln(a + 1)
            - gammaln(k + 1)
            - gammaln(a - k + 1)
            + k * np.log(q)
            + (a - k) * np.log1p(-q)
            + (k * k - k) / (2 * sigma**2)
        )
        rdp = steps * logsumexp(log_terms) / (a - 1)
        eps = rdp + math.log((a - 1) / a) - (math.log(delta) + math.log(a)) / (a - 1)
        best = min(best, eps)
    return best


@pytest.mark.parametrize(
    "sigma, q, steps", [(1.5, 0.04, 2250), (1.0, 0.1, 100), (4.0, 0.01, 10_000)]
)
def test_opacus_rdp_matches_independent_computation(sigma, q, steps):
    from opacus.accountants.analysis import rdp as opacus_rdp

    orders = list(range(2, 129))
    rdp = opacus_rdp.compute_rdp(q=q, noise_multiplier=sigma, steps=steps, orders=orders)
    eps, _ = opacus_rdp.get_privacy_spent(orders=orders, rdp=rdp, delta=1e-5)
    assert eps == pytest.approx(_independent_epsilon(sigma, q, steps, 1e-5), abs=1e-6)
    # privbench's accountant (Opacus' default orders include fractional ones: never worse).
    assert rdp_epsilon(noise_multiplier=sigma, sample_rate=q, steps=steps, delta=1e-5) <= eps + 1e-9


def test_row_epsilon_is_the_accountant_for_the_runs_own_q_and_rounds():
    from opacus.accountants import RDPAccountant

    cfg = tiny_config(
        defenses=("client-dp",),
        defense_params={"noise_multiplier": 1.3},
        fed=dict(clients=8, fraction=0.5, rounds=3),
    )
    (row,) = privbench.run(cfg)
    acc = RDPAccountant()
    acc.history = [(1.3, 4 / 8, 3)]
    assert row.status == "ok"
    assert row.epsilon == pytest.approx(acc.get_epsilon(1e-5), abs=1e-6)
    assert row.delta == 1e-5 and "q=0.5" in row.accountant


def _dp(**kw):
    d = ClientDP(**{"clip": 1.0, "noise_multiplier": 1.0, **kw})
    d.setup(num_clients=10, clients_per_round=5, rounds=3, seed=0, lr=0.5)
    return d


def test_clipped_update_norms_never_exceed_c():
    d = _dp(clip=0.7)
    g = torch.Generator().manual_seed(0)
    for scale in (0.01, 1.0, 100.0):
        upd = {
            "w": torch.randn(50, generator=g) * scale,
            "b": torch.randn(5, generator=g) * scale,
            "n": torch.tensor(3),
        }
        out = d.privatize_update(0, 1, "update", upd)
        norm = math.sqrt(sum(float((v**2).sum()) for k, v in out.items() if k != "n"))
        assert norm <= 0.7 * (1 + 1e-6)
        if scale == 0.01:  # already inside the ball: untouched
            torch.testing.assert_close(out["w"], upd["w"])
        assert int(out["n"]) == 3
    # A FedSGD gradient is clipped in update units: ||lr * g|| <= C.
    grad = d.privatize_update(0, 1, "gradient", {"w": torch.full((10,), 100.0)})
    assert float((0.5 * grad["w"]).norm()) == pytest.approx(0.7, rel=1e-6)


def test_central_noise_std_is_z_c_over_m():
    d = _dp(clip=2.0, noise_multiplier=1.5)
    zeros = {"w": torch.zeros(20_000)}
    out = d.privatize_aggregate(0, zeros, zeros, num_clients=5)
    assert float(out["w"].std()) == pytest.approx(1.5 * 2.0 / 5, rel=0.02)
    assert abs(float(out["w"].mean())) < 0.01


def test_local_noise_std_is_z_c_per_update():
    d = _dp(clip=1.0, noise_multiplier=2.0, local=True)
    out = d.privatize_update(0, 0, "update", {"w": torch.zeros(20_000)})
    assert float(out["w"].std()) == pytest.approx(2.0, rel=0.02)
    same = d.privatize_aggregate(0, {"w": torch.zeros(3)}, {"w": torch.zeros(3)}, 5)
    assert float(same["w"].abs().sum()) == 0.0  # local mode adds nothing at the server


def test_prune_keeps_the_largest_entries_and_counts_sparse_bytes():
    p = Prune(prune=0.75)
    p.setup(num_clients=1, clients_per_round=1, rounds=1, seed=0, lr=0.1)
    w = torch.arange(1.0, 101.0) * torch.tensor([1.0, -1.0]).repeat(50)
    out = p.privatize_update(0, 0, "update", {"w": w, "n": torch.tensor(7)})
    kept = out["w"] != 0
    assert int(kept.sum()) == 25 and bool((out["w"][kept].abs() > 75).all())
    enc = p.encoding("update", out)
    assert enc == ("sparse-coo-int32", 25 * 8 + 8 + 4)  # 25 floats + the nonzero int64
    assert sparse_bytes({"w": w}) == 100 * 8
    dense = Prune(prune=0.0)
    assert dense.encoding("update", {"w": w}) is None  # dense is smaller: stays dense


def test_pruned_run_sends_sparse_bytes_and_attack_sees_the_pruned_update():
    cfg = tiny_config(
        defenses=("prune",), defense_params={"prune": 0.9}, attack=dict(names=("dlg",))
    )
    exp = Experiment(cfg)
    out = exp.train()
    (obs,) = [o for o in out.channel.observations if o.kind == "gradient"]
    zero_share = sum(int((v == 0).sum()) for v in obs.payload.values()) / sum(
        v.numel() for v in obs.payload.values()
    )
    assert zero_share >= 0.89  # 90% of each tensor, rounded down per tensor
    dense_model = sum(v.numel() * 4 for v in obs.payload.values())
    assert out.channel.bytes_by_kind()["gradient"]["up"] < 0.25 * dense_model


def test_artifact_noise_has_no_guarantee_and_blurs_what_the_attack_sees():
    base = dict(
        method="fedmix",
        method_params={"mean_size": 1},
        partition="shards",
        attack=dict(names=("averaged-data",)),
    )
    (clean,) = privbench.run(tiny_config(**base))
    (noisy,) = privbench.run(
        tiny_config(**base, defenses=("artifact-noise",), defense_params={"sigma": 0.1})
    )
    assert clean.psnr == 100.0
    # N(0, 0.1^2) noise: MSE ~ 0.01 before clamping to [0, 1] -> PSNR ~ 20 dB or a bit more.
    assert 19.0 < noisy.psnr < 24.0
    assert noisy.epsilon is None and noisy.accountant is None


def test_composed_defenses_apply_in_the_given_order():
    calls = []

    def make(tag):
        class Recorder(Defense):
            name = tag

            def privatize_update(self, round, client_id, kind, payload):
                calls.append(tag)
                return payload

        return Recorder

    DEFENSES.register("rec-a", description="test")(make("rec-a"))
    DEFENSES.register("rec-b", description="test")(make("rec-b"))
    try:
        privbench.run(tiny_config(defenses=("rec-b", "rec-a"), fed=dict(rounds=1, clients=2)))
    finally:
        del DEFENSES.entries["rec-a"], DEFENSES.entries["rec-b"]
    assert calls == ["rec-b", "rec-a", "rec-b", "rec-a"]


def test_noise_lowers_leakage():
    # IG's cosine loss ignores the clipping's rescaling, so only the noise can stop it.
    psnrs = []
    for z in (0.0, 1.0):
        cfg = tiny_config(
            defenses=("client-dp",),
            fed=dict(rounds=1),
            defense_params={"noise_multiplier": z, "local": True, "clip": 0.05},
            attack=dict(names=("ig",), params={"iters": 400}),
        )
        (row,) = privbench.run(cfg)
        psnrs.append(row.psnr)
    assert psnrs[0] > 25.0 and psnrs[1] < psnrs[0] - 10, psnrs


def test_defense_parameters_are_validated():
    reg = registries()["defense"]
    for name, params, frag in [
        ("artifact-noise", {"sigma": -1}, "'sigma'"),
        ("prune", {"prune": 1.0}, "'prune'"),
        ("prune", {"prune": -0.1}, "'prune'"),
        ("client-dp", {"clip": 0}, "'clip'"),
        ("client-dp", {"delta": 0}, "'delta'"),
    ]:
        with pytest.raises(privbench.PrivbenchError, match=frag):
            reg.resolve_params(name, params)


def test_the_attacker_masks_its_simulation_with_the_pruning_pattern_it_observes():
    """Pruning zeroes the smallest entries; which entries survive is on the wire. The
    defense-aware simulator masks its message alike, so on the victim's true batch it
    reproduces the pruned message exactly (unmasked, it would not)."""
    from privbench.attacks.gradient import VictimSimulator
    from privbench.engine.experiment import Experiment

    cfg = tiny_config(defenses=("prune",), attack=dict(names=("dlg",), victims=1))
    outcome = Experiment(cfg).train()
    (obs,) = [o for o in outcome.channel.observations if o.sender == 0 and o.kind == "gradient"]
    assert obs.context.masked
    victim = outcome.victims[0]
    sim = VictimSimulator(obs.context)
    target = sim.target(obs)
    masked = sim.message(obs.kind, victim.images, victim.labels, create_graph=False)
    for n, t in target.items():
        torch.testing.assert_close(masked[n], t, rtol=1e-5, atol=1e-7)
    sim.mask = None
    dense = sim.message(obs.kind, victim.images, victim.labels, create_graph=False)
    assert max(float((dense[n] - target[n]).abs().max()) for n in target) > 1e-4


def test_record_and_client_level_epsilons_are_separate_columns_never_summed():
    params = {"dp-sgd": {"noise_multiplier": 1.0}, "client-dp": {"noise_multiplier": 1.0}}
    both = tiny_config(defenses=("dp-sgd", "client-dp")).with_params(params)
    (row,) = privbench.run(both)
    assert row.status == "ok", row.error
    (record,) = privbench.run(
        tiny_config(defenses=("dp-sgd",)).with_params({"dp-sgd": params["dp-sgd"]})
    )
    (client,) = privbench.run(
        tiny_config(defenses=("client-dp",)).with_params({"client-dp": params["client-dp"]})
    )
    assert row.epsilon_record == pytest.approx(record.epsilon_record) == record.epsilon
    assert row.epsilon_client == pytest.approx(client.epsilon_client) == client.epsilon
    assert row.delta_record == row.delta_client == 1e-5
    assert row.epsilon is None and row.delta is None  # two guarantees, not one sum
    assert "record: " in row.accountant and "client: " in row.accountant
    assert record.epsilon_client is None and client.epsilon_record is None


def test_artifact_noise_leaves_shared_labels_clean_unless_asked():
    """FedMix's appendix I noises the averaged images, not the mean labels."""
    from privbench.defenses.noise import ArtifactNoise

    x, y = torch.rand(3, 1, 4, 4), torch.softmax(torch.rand(3, 10), dim=1)
    for noise_labels in (False, True):
        d = ArtifactNoise(sigma=0.5, noise_labels=noise_labels)
        d.setup(num_clients=2, clients_per_round=2, rounds=1, seed=0, lr=0.1)
        out = d.privatize_artifact(0, 0, "averaged_data", {"x": x, "y": y})
        assert not torch.equal(out["x"], x)
        assert torch.equal(out["y"], y) is (not noise_labels)
        policy = d.privatize_artifact(0, 0, "policy", {"y": y})
        assert not torch.equal(policy["y"], y)  # only shared data has a label part


# -- client sampling and client-level accounting ------------------------------------------


def test_poisson_sampling_draws_each_client_with_probability_q_and_forces_the_victims():
    from privbench.engine.case import Case

    cfg = tiny_config(
        fed=dict(clients=8, fraction=0.25, client_sampling="poisson"),
        attack=dict(names=("dlg",), victims=2, round=1),
    )
    case = Case(cfg)
    rng, mine = np.random.default_rng(5), np.random.default_rng(5)
    for rnd in range(3):
        want = set(np.flatnonzero(mine.random(8) < 0.25).tolist())
        if rnd == 1:
            want |= {0, 1}
        assert case.sample_clients(rng, rnd) == sorted(want)
    # Over many rounds each client comes in about a quarter of them.
    counts = np.zeros(8)
    for _ in range(4000):
        counts[case.sample_clients(rng, 0)] += 1
    np.testing.assert_allclose(counts / 4000, 0.25, atol=0.03)


def test_client_sampling_defaults_to_poisson_only_under_central_client_dp():
    def sampling(**kw):
        return tiny_config(**kw).resolve().fed.client_sampling

    assert sampling() == "fixed"
    assert sampling(defenses=("client-dp",)) == "poisson"
    assert sampling(defenses=("client-dp",), defense_params={"local": True}) == "fixed"
    assert sampling(defenses=("client-dp",), fed=dict(client_sampling="fixed")) == "fixed"
    with pytest.raises(privbench.PrivbenchError, match="'client_sampling' parameter must be"):
        tiny_config(fed=dict(client_sampling="uniform")).resolve()
    # The hash of a fixed-sampling run is the one it had before the option existed.
    base = tiny_config().resolve()
    assert base.hash() == tiny_config(fed=dict(client_sampling="fixed")).resolve().hash()


def test_client_epsilon_with_poisson_sampling_and_a_forced_round_is_opacus_accountant():
    from opacus.accountants import RDPAccountant

    cfg = tiny_config(
        defenses=("client-dp",),
        defense_params={"noise_multiplier": 1.1},
        fed=dict(clients=8, fraction=0.5, rounds=3),
        attack=dict(names=("idlg",), params={"iters": 2}, round=1),
    )
    (row,) = privbench.run(cfg)
    assert row.status == "ok", row.error
    acc = RDPAccountant()
    acc.history = [(1.1, 0.5, 2), (1.1, 1.0, 1)]  # the victim's attacked round: q = 1
    assert row.epsilon == pytest.approx(acc.get_epsilon(1e-5), abs=1e-6)
    assert row.epsilon_client == row.epsilon and row.epsilon_record is None
    assert "q=0.5 and q=1 in 1 forced round" in row.accountant
    # Without the forced round the same run is three sampled Gaussians at q = 1/2.
    plain = RDPAccountant()
    plain.history = [(1.1, 0.5, 3)]
    assert row.epsilon > plain.get_epsilon(1e-5)


@pytest.mark.parametrize("local", [False, True])
def test_client_dp_target_epsilon_picks_the_noise_opacus_accountant_puts_at_the_target(local):
    from opacus.accountants import RDPAccountant

    cfg = tiny_config(
        defenses=("client-dp",),
        defense_params={"target_epsilon": 5.0, "local": local},
        fed=dict(clients=8, fraction=0.5, rounds=3),
        attack=dict(names=("idlg",), params={"iters": 2}, round=1),
    )
    (row,) = privbench.run(cfg)
    assert row.status == "ok", row.error
    exp = Experiment(cfg.resolve())
    exp.train()
    (d,) = exp.parts.defenses
    # Calibrated for a client in every round (locally: 3 Gaussian mechanisms; centrally
    # 2 sampled at q = 1/2 and the attacked round at q = 1); Opacus' accountant is the
    # golden, and 1% less noise overshoots the target.
    full = [(d.z, 1.0, 3)] if local else [(d.z, 0.5, 2), (d.z, 1.0, 1)]
    for z, above in ((d.z, False), (0.99 * d.z, True)):
        acc = RDPAccountant()
        acc.history = [(z, q, n) for _, q, n in full]
        assert (acc.get_epsilon(1e-5) > 5.0) is above
    calibrated = RDPAccountant()
    calibrated.history = full
    assert 5.0 - 0.01 <= calibrated.get_epsilon(1e-5) <= 5.0
    # The row reports the mechanism that ran: locally, its busiest client's rounds.
    ran = RDPAccountant()
    busiest = max(len(r) for r in d.participation.values())
    ran.history = [(d.z, 1.0, busiest)] if local else full
    assert row.epsilon == pytest.approx(ran.get_epsilon(1e-5), abs=1e-9)
    assert row.epsilon <= 5.0


def test_client_dp_target_epsilon_needs_an_accountant():
    cfg = tiny_config(
        defenses=("client-dp",),
        defense_params={"target_epsilon": 5.0},
        fed=dict(clients=8, fraction=0.5, client_sampling="fixed"),
    )
    with pytest.raises(IncompatibleError, match="target_epsilon needs an accountant.*poisson"):
        privbench.run(cfg)


def test_central_client_dp_under_fixed_size_sampling_reports_no_epsilon():
    cfg = tiny_config(
        defenses=("client-dp",), fed=dict(clients=8, fraction=0.5, client_sampling="fixed")
    )
    (row,) = privbench.run(cfg)
    assert row.status == "ok" and row.epsilon is None and row.epsilon_client is None
    assert "fixed-size client sampling" in row.accountant


def test_poisson_average_divides_by_the_expected_client_count():
    d = ClientDP(clip=1.0, noise_multiplier=0.0)
    d.setup(
        num_clients=10, clients_per_round=5, rounds=1, seed=0, lr=0.5, client_sampling="poisson"
    )
    before = {"w": torch.zeros(3), "n": torch.tensor(4)}
    d1, d2 = torch.tensor([1.0, 2.0, 3.0]), torch.tensor([3.0, 0.0, -1.0])
    mean = {"w": (d1 + d2) / 2, "n": torch.tensor(5)}  # what equal-weight FedAvg gives
    out = d.privatize_aggregate(0, before, mean, num_clients=2)
    torch.testing.assert_close(out["w"], (d1 + d2) / 5)  # sum / (q N), not / 2
    assert int(out["n"]) == 5
    d.z = 2.0  # and the noise is z C / (q N)
    big = {"w": torch.zeros(20_000)}
    noisy = d.privatize_aggregate(1, big, big, num_clients=3)
    assert float(noisy["w"].std()) == pytest.approx(2.0 / 5, rel=0.02)


def test_poisson_rounds_may_be_empty_and_the_run_still_finishes():
    cfg = tiny_config(
        defenses=("client-dp",),
        defense_params={"noise_multiplier": 0.5},
        fed=dict(clients=4, fraction=0.25, rounds=6),
    )
    exp = Experiment(cfg)
    rng = np.random.default_rng([cfg.seed, 3])
    sizes = [len(exp.sample_clients(rng, r)) for r in range(6)]
    assert 0 in sizes  # this seed draws an empty round
    out = exp.train()
    assert math.isfinite(out.utility.accuracy) and out.spend[0] > 0


def test_client_dp_clips_trainable_parameters_only_batchnorm_becomes_groupnorm():
    cfg = tiny_config(model="cnn-bn", defenses=("client-dp",), fed=dict(rounds=1))
    exp = Experiment(cfg)
    model = exp.build_model()
    assert not any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in model.modules())
    assert not [n for n, b in model.named_buffers() if b.dtype.is_floating_point]
    out = exp.train()
    assert all(torch.isfinite(v).all() for v in exp.global_model.state_dict().values())
    assert math.isfinite(out.utility.accuracy)

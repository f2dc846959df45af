"""DP-SGD: per-record gradients (hooks vs one backward per record), clipping and noise
against hand computations, the run's epsilon against Opacus' accountant for the run's own
sampling rates and steps, target epsilon, BatchNorm replacement, refused combinations."""

import math

import pytest
import torch
from torch import nn

import privbench
from privbench import registries
from privbench.defenses.dpsgd import DPSGD, DPTrainer, per_sample_grads_microbatch
from privbench.engine.experiment import Experiment
from privbench.engine.training import LocalTraining
from privbench.errors import IncompatibleError
from tests.conftest import tiny_config


def _ce(model, x, y):
    return nn.functional.cross_entropy(model(x), y)


def _tiny_model(seed=0):
    torch.manual_seed(seed)
    return registries()["model"].entry("lenet-sigmoid").factory((1, 8, 8), 3)


def _batch(b=5, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(b, 1, 8, 8, generator=g), torch.randint(0, 3, (b,), generator=g)


def _trainer(model, **kw):
    args = dict(
        loss_fn=_ce,
        lr=0.1,
        noise_multiplier=0.0,
        max_grad_norm=1e6,
        expected_batch_size=5,
        noise_generator=torch.Generator().manual_seed(0),
    )
    args.update(kw)
    return DPTrainer(model, **args)


def _per_sample_hooks(model, x, y):
    t = _trainer(model)
    t.loss_fn(t.gsm, x, y).backward()
    out = [p.grad_sample.clone() for p in t.params]
    t.close()
    return out


@pytest.mark.filterwarnings("ignore:Full backward hook")
def test_opacus_hooks_equal_one_backward_per_record():
    x, y = _batch()
    model = _tiny_model()
    slow = per_sample_grads_microbatch(model, x, y, _ce)
    fast = _per_sample_hooks(model, x, y)
    for a, b in zip(slow, fast, strict=True):
        assert a.shape == b.shape
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("per_sample", ["hooks", "microbatch"])
def test_without_clipping_or_noise_the_step_is_the_mean_gradient(per_sample):
    x, y = _batch()
    model = _tiny_model()
    expected = torch.autograd.grad(_ce(model, x, y), list(model.parameters()))
    got = _trainer(model, per_sample=per_sample).noisy_gradient(x, y)
    for a, b in zip(expected, got, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


def test_clipping_bounds_each_record_then_averages():
    x, y = _batch()
    model = _tiny_model()
    c = 1e-3
    per = per_sample_grads_microbatch(model, x, y, _ce)
    norms = torch.stack([g.flatten(1).norm(dim=1) for g in per], 1).norm(dim=1)
    assert (norms > c).all()  # every record is clipped here
    factor = c / (norms + 1e-6)
    want = [torch.einsum("i,i...->...", factor, g) / len(y) for g in per]
    got = _trainer(model, max_grad_norm=c).noisy_gradient(x, y)
    for a, b in zip(want, got, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-9)
    total = math.sqrt(sum(float((g**2).sum()) for g in got))
    assert total <= c + 1e-9  # a mean of records clipped to C has norm <= C


def test_noise_std_is_sigma_c_over_expected_batch():
    model = _tiny_model()
    z, c, expected = 2.0, 0.5, 4.0
    t = _trainer(model, noise_multiplier=z, max_grad_norm=c, expected_batch_size=expected)
    empty = torch.empty(0, 1, 8, 8), torch.empty(0, dtype=torch.long)
    draws = torch.cat(
        [torch.cat([g.flatten() for g in t.noisy_gradient(*empty)]) for _ in range(20)]
    )
    assert draws.mean().abs() < 0.01
    assert float(draws.std()) == pytest.approx(z * c / expected, rel=0.02)


def test_fedprox_penalty_is_added_after_the_noise():
    x, y = _batch()
    model = _tiny_model()
    anchor = {n: p.detach().clone() + 0.1 for n, p in model.named_parameters()}
    mu, lr = 0.5, 0.1

    def penalty():
        return 0.5 * mu * sum(((p - anchor[n]) ** 2).sum() for n, p in model.named_parameters())

    before = [p.detach().clone() for p in model.parameters()]
    mean = torch.autograd.grad(_ce(model, x, y), list(model.parameters()))
    t = _trainer(model, lr=lr, penalty=penalty)
    t.step(x, y)
    t.close()
    for (n, p), b, g in zip(model.named_parameters(), before, mean, strict=True):
        want = b - lr * (g + mu * (b - anchor[n]))
        torch.testing.assert_close(p.detach(), want, rtol=1e-4, atol=1e-6)


def _expected_run_epsilon(cfg, sigma):
    """Opacus' accountant for each client's own q = 1/ceil(n/B) and its steps in every
    round (fraction 1: all clients train every round); the largest over clients."""
    from opacus.accountants import RDPAccountant

    exp = Experiment(cfg)
    eps = []
    for c in exp.clients:
        per_epoch = math.ceil(len(c.train) / cfg.fed.batch_size)
        acc = RDPAccountant()
        acc.history = [(sigma, 1 / per_epoch, cfg.fed.rounds * cfg.fed.local_epochs * per_epoch)]
        eps.append(acc.get_epsilon(1e-5))
    return max(eps)


def test_row_epsilon_is_opacus_accountant_for_the_runs_own_rates_and_steps():
    cfg = tiny_config(
        defenses=("dp-sgd",),
        defense_params={"noise_multiplier": 1.1, "max_grad_norm": 1.0},
        fed=dict(rounds=2, local_epochs=2, batch_size=32),
    )
    (row,) = privbench.run(cfg)
    assert row.status == "ok", row.error
    assert row.epsilon == pytest.approx(_expected_run_epsilon(cfg, 1.1), abs=1e-6)
    assert row.delta == 1e-5 and "dp-sgd" in row.accountant and "1.1" in row.accountant


def test_target_epsilon_is_reached_by_the_client_that_trains_every_round():
    cfg = tiny_config(
        defenses=("dp-sgd",),
        defense_params={"target_epsilon": 3.0},
        fed=dict(rounds=2, batch_size=32),
    )
    (row,) = privbench.run(cfg)
    assert row.status == "ok", row.error
    assert 3.0 - 0.05 <= row.epsilon <= 3.0 + 0.011  # Opacus' search tolerance is 0.01


def test_attacked_round_is_accounted_and_attack_sees_the_noisy_gradient():
    cfg = tiny_config(
        defenses=("dp-sgd",),
        defense_params={"noise_multiplier": 1.0, "max_grad_norm": 1.0},
        attack=dict(names=("dlg",), params={"iters": 3}),
    )
    exp = Experiment(cfg)
    out = exp.train()
    (obs,) = [o for o in out.channel.observations if o.kind == "gradient"]
    model = exp.build_model()
    model.load_state_dict(obs.context.weights_before)
    v = out.victims[0]
    clean = torch.autograd.grad(_ce(model, v.images, v.labels), list(model.parameters()))
    sent = list(obs.payload.values())
    err = sum(float(((a - b) ** 2).sum()) for a, b in zip(sent, clean, strict=True))
    assert err > 1e-2  # noise of std 1/B per entry on thousands of entries
    assert out.spend[0] is not None and out.spend[0] > 0


def test_batchnorm_model_is_fixed_for_every_party():
    cfg = tiny_config(model="cnn-bn", defenses=("dp-sgd",), fed=dict(rounds=1))
    exp = Experiment(cfg)
    mods = list(exp.build_model().modules())
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in mods)
    assert any(isinstance(m, nn.GroupNorm) for m in mods)
    (row,) = privbench.run(cfg)
    assert row.status == "ok", row.error and row.epsilon > 0


def test_fedmix_trains_with_one_backward_per_record_and_claims_no_guarantee(tmp_path):
    import math

    from privbench.results import ResultStore

    cfg = tiny_config(method="fedmix", defenses=("dp-sgd",), fed=dict(rounds=1, batch_size=32))
    (row,) = privbench.run(cfg, out=str(tmp_path))
    assert row.status == "ok", row.error
    # DP-SGD noised the updates, but each client's averaged data left in the clear: the
    # release has no record-level guarantee, whatever the accountant gives the updates.
    assert row.bytes_by_kind["averaged_data"]["up"] > 0
    assert math.isinf(row.epsilon) and math.isinf(row.epsilon_record)
    assert row.accountant.startswith("rdp (dp-sgd per client")
    assert row.accountant.endswith("; no guarantee: averaged_data uploaded outside the mechanism")
    (stored,) = ResultStore(str(tmp_path)).read()
    assert stored["epsilon"] is None and stored["epsilon_record"] is None


@pytest.mark.parametrize(
    "overrides, match",
    [
        (dict(fed=dict(algorithm="qffl")), "loss on all its data"),
        (dict(method="localmix"), "mixes records"),
    ],
)
def test_refused_combinations_say_why(overrides, match):
    with pytest.raises(IncompatibleError, match=match):
        Experiment(tiny_config(defenses=("dp-sgd",), **overrides))


class _Replacing(LocalTraining):
    replaces = "defense 'prune' replaces local training"


@pytest.mark.parametrize("order", [("dp-sgd", "prune"), ("prune", "dp-sgd")])
def test_two_defenses_that_train_are_refused(monkeypatch, order):
    prune = registries()["defense"].entry("prune").factory
    monkeypatch.setattr(prune, "wrap_training", lambda self, inner: _Replacing())
    with pytest.raises(IncompatibleError, match="choose one"):
        Experiment(tiny_config(defenses=order))


def test_sigma_for_target_epsilon_is_opacus_choice():
    from opacus.accountants.utils import get_noise_multiplier

    d = DPSGD(target_epsilon=2.0)
    d.setup(num_clients=4, clients_per_round=4, rounds=5, seed=0, lr=0.1, batch_size=10)
    want = get_noise_multiplier(
        target_epsilon=2.0, target_delta=1e-5, sample_rate=1 / 10, steps=5 * 10
    )
    assert d.sigma(95) == pytest.approx(want)


@pytest.mark.parametrize("records", [50, 800, 5000])
def test_target_epsilon_is_tight_on_a_wider_grid_of_rdp_orders(records, recwarn):
    """Opacus warns "Optimal order is the largest alpha" while it bisects for sigma (its
    trial sigmas below the answer); the epsilon of the sigma it returns has its best
    order inside the default grid, and a far wider, finer grid of orders does not
    tighten it: the row's epsilon is the accountant's best bound, not a loose one."""
    from opacus.accountants import RDPAccountant
    from opacus.accountants.analysis.rdp import compute_rdp, get_privacy_spent

    d = DPSGD(target_epsilon=8.0)  # the headline's budget, batch 50, 2 epochs, 10 rounds
    d.setup(
        num_clients=4, clients_per_round=4, rounds=10, seed=0, lr=0.1, batch_size=50, local_epochs=2
    )
    sigma = d.sigma(records)
    assert not [w for w in recwarn if "Optimal order" in str(w.message)]
    q, steps = d.schedule(records)

    def rdp(orders):
        return compute_rdp(q=q, noise_multiplier=sigma, steps=10 * steps, orders=orders)

    orders = RDPAccountant.DEFAULT_ALPHAS
    eps, best = get_privacy_spent(orders=orders, rdp=rdp(orders), delta=1e-5)
    wide = [1 + k / 100 for k in range(1, 1000)] + list(range(11, 2048))
    eps_wide, _ = get_privacy_spent(orders=wide, rdp=rdp(wide), delta=1e-5)
    assert min(orders) < best < max(orders)
    assert eps == pytest.approx(8.0, abs=0.01)
    assert eps - 0.01 < eps_wide <= eps


@pytest.mark.parametrize("rounds, q", [(10, 1.0), (30, 0.1)])
def test_client_level_calibration_is_tight_on_a_wider_grid_of_rdp_orders(rounds, q, recwarn):
    """The client level's own bisection (several (q, steps) parts) likewise: no warning
    from its trial z, and the z it returns has its best order inside Opacus' grid."""
    from opacus.accountants import RDPAccountant
    from opacus.accountants.analysis.rdp import compute_rdp, get_privacy_spent

    from privbench.defenses.dp import calibrate_noise

    z = calibrate_noise(8.0, 1e-5, lambda z: [(z, q, rounds)])
    assert not [w for w in recwarn if "Optimal order" in str(w.message)]
    orders = RDPAccountant.DEFAULT_ALPHAS
    rdp = compute_rdp(q=q, noise_multiplier=z, steps=rounds, orders=orders)
    eps, best = get_privacy_spent(orders=orders, rdp=rdp, delta=1e-5)
    assert min(orders) < best < max(orders)
    assert 7.99 <= eps <= 8.0


@pytest.mark.parametrize(
    "defense, params, attack",
    [
        ("dp-sgd", {"noise_multiplier": 0.0, "max_grad_norm": 0.05}, {}),
        ("dp-sgd", {"noise_multiplier": 0.0, "max_grad_norm": 0.05}, {"batch": 3}),
        ("dp-sgd", {"noise_multiplier": 0.0, "max_grad_norm": 0.05}, {"batch": 2, "steps": 3}),
        ("client-dp", {"noise_multiplier": 0.0, "clip": 0.01}, {"batch": 2}),
        ("client-dp", {"noise_multiplier": 0.0, "clip": 0.01}, {"batch": 2, "steps": 2}),
    ],
)
def test_defense_aware_simulator_reproduces_the_clipped_message(defense, params, attack):
    """Without noise, the attacker's simulation of the victim at the true data equals the
    observed, clipped message: the attacker models the defense's public clipping."""
    from privbench.attacks.gradient import VictimSimulator

    cfg = tiny_config(
        defenses=(defense,),
        defense_params=params,
        fed=dict(rounds=1),
        attack=dict(names=("dlg",), **attack),
    )
    out = Experiment(cfg).train()
    (obs,) = [o for o in out.channel.observations if o.sender == 0 and o.kind != "model"]
    sim = VictimSimulator(obs.context)
    v = out.victims[0]
    want = sim.target(obs)
    got = sim.message(obs.kind, v.images, v.labels, create_graph=False)
    norm = math.sqrt(sum(float((t**2).sum()) for t in want.values()))
    for k in want:
        torch.testing.assert_close(got[k], want[k], rtol=1e-3, atol=1e-5 * norm)
    # and clipping did bind: an attacker unaware of it simulates a different message
    from dataclasses import replace

    naive = VictimSimulator(replace(obs.context, record_clip=None, update_clip=None))
    raw = naive.message(obs.kind, v.images, v.labels, create_graph=False)
    assert any(not torch.allclose(raw[k], want[k], rtol=0.05) for k in want)


def test_k_steps_on_one_fixed_batch_are_one_mechanism_at_sigma_over_root_k():
    """The attacked round's victim takes k DP-SGD steps on a batch drawn once: one
    subsampled Gaussian mechanism at q = B/n with noise sigma/sqrt(k) (Opacus'
    accountant, one step), far more than k fresh samples at q would claim."""
    from opacus.accountants import RDPAccountant

    from privbench.engine.experiment import Experiment

    k, sigma = 5, 1.0
    cfg = tiny_config(
        defenses=("dp-sgd",),
        fed=dict(rounds=1),
        attack=dict(names=("dlg",), victims=1, steps=k, batch=2),
    ).with_params({"dp-sgd": {"noise_multiplier": sigma}})
    exp = Experiment(cfg)
    exp.train()
    (defense,) = exp.parts.defenses
    n = len(exp.client_data(0)[1])
    ours = defense.accountants[0].get_epsilon(1e-5)
    honest = RDPAccountant()
    honest.step(noise_multiplier=sigma / math.sqrt(k), sample_rate=2 / n)
    assert ours == pytest.approx(honest.get_epsilon(1e-5), rel=1e-12)
    fresh = RDPAccountant()
    for _ in range(k):
        fresh.step(noise_multiplier=sigma, sample_rate=2 / n)
    assert ours > fresh.get_epsilon(1e-5)

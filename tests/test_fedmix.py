"""MAFL family: the FedMix loss against global mixup, sharing, bytes, and the attacks."""

import pytest
import torch
import torch.nn.functional as F

import privbench
from privbench import registries
from privbench.attacks.gradient import VictimSimulator
from privbench.augmenters.fedmix import FedMix, NaiveMix, chunk_means
from privbench.engine.experiment import Experiment
from tests.conftest import tiny_config


def _tiny_model():
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Flatten(), torch.nn.Linear(12, 6), torch.nn.Tanh(), torch.nn.Linear(6, 3)
    ).double()


def _aug(cls, lam):
    a = cls(lam=lam)
    a.setup(num_classes=3, input_shape=(1, 3, 4), num_clients=2, seed=0)
    return a


def _global_mixup(model, xi, yi, xj, yj, lam):
    """Exact global mixup with raw partner data: CE(f((1-l)x_i + l x_j), (1-l)y_i + l y_j)."""
    logits = model((1 - lam) * xi + lam * xj)
    target = (1 - lam) * F.one_hot(yi, 3).double() + lam * yj
    return -(target * F.log_softmax(logits, 1)).sum(1).mean()


def test_fedmix_is_the_first_order_taylor_expansion_of_global_mixup():
    model = _tiny_model()
    g = torch.Generator().manual_seed(1)
    xi = torch.rand(5, 1, 3, 4, generator=g, dtype=torch.float64)
    yi = torch.tensor([0, 1, 2, 1, 0])
    xj = torch.rand(1, 1, 3, 4, generator=g, dtype=torch.float64)  # one partner image
    yj = F.one_hot(torch.tensor([2]), 3).double()
    errors = []
    for lam in (0.08, 0.04, 0.02, 0.01):
        fm = _aug(FedMix, lam).mixed_loss(model, xi, yi, xj, yj)
        errors.append(abs(float((fm - _global_mixup(model, xi, yi, xj, yj, lam)).detach())))
    ratios = [errors[i] / errors[i + 1] for i in range(3)]
    # Dropping O(lam^2) terms: halving lam quarters the error.
    assert all(3.3 < r < 4.7 for r in ratios), (errors, ratios)
    assert errors[-1] < 1e-3


def test_fedmix_is_linear_in_the_shared_mean():
    # Eq. 5: averaging M partners' FedMix losses equals FedMix with their mean (x-bar, y-bar);
    # this is also why the attacker's expected loss (generator=None) is exact in expectation.
    model = _tiny_model()
    g = torch.Generator().manual_seed(2)
    xi, yi = torch.rand(4, 1, 3, 4, generator=g, dtype=torch.float64), torch.tensor([0, 1, 2, 0])
    xs = torch.rand(6, 1, 3, 4, generator=g, dtype=torch.float64)
    ys = F.one_hot(torch.tensor([0, 1, 2, 2, 1, 0]), 3).double()
    aug = _aug(FedMix, 0.1)
    separate = torch.stack(
        [aug.mixed_loss(model, xi, yi, xs[j : j + 1], ys[j : j + 1]) for j in range(6)]
    ).mean()
    pooled = aug.mixed_loss(model, xi, yi, xs.mean(0, keepdim=True), ys.mean(0, keepdim=True))
    torch.testing.assert_close(separate, pooled)


@pytest.mark.parametrize("cls", [FedMix, NaiveMix])
def test_lambda_zero_is_plain_cross_entropy(cls):
    model = _tiny_model()
    x, y = torch.rand(4, 1, 3, 4, dtype=torch.float64), torch.tensor([0, 1, 2, 1])
    xbar, ybar = torch.rand(1, 1, 3, 4, dtype=torch.float64), torch.full((1, 3), 1 / 3).double()
    loss = _aug(cls, 0.0).mixed_loss(model, x, y, xbar, ybar)
    torch.testing.assert_close(loss, F.cross_entropy(model(x), y))


def test_fedmix_trains_the_model_through_the_input_derivative():
    model = _tiny_model()
    x, y = torch.rand(4, 1, 3, 4, dtype=torch.float64), torch.tensor([0, 1, 2, 1])
    xbar, ybar = torch.rand(1, 1, 3, 4, dtype=torch.float64), torch.full((1, 3), 1 / 3).double()
    aug = _aug(FedMix, 0.5)
    loss = aug.mixed_loss(model, x, y, xbar, ybar)
    grads = torch.autograd.grad(loss, list(model.parameters()))
    # Without create_graph the Taylor term would not reach the weights; compare with the
    # loss minus that term.
    xs = (0.5 * x).requires_grad_(True)
    own = F.cross_entropy(model(xs), y, reduction="none")
    no_taylor = (0.5 * own + 0.5 * -(ybar * F.log_softmax(model(xs), 1)).sum(1)).mean()
    g2 = torch.autograd.grad(no_taylor, list(model.parameters()))
    assert any(not torch.allclose(a, b) for a, b in zip(grads, g2, strict=True))


def test_chunk_means_hand_worked():
    x = torch.arange(4.0).reshape(4, 1, 1, 1)  # images 0, 1, 2, 3
    y = torch.tensor([0, 0, 1, 1])
    g = torch.Generator().manual_seed(0)
    xbar, ybar = chunk_means(x, y, 2, 2, g)
    assert xbar.shape == (2, 1, 1, 1) and ybar.shape == (2, 2)
    assert float(xbar.sum()) * 2 == pytest.approx(6.0)  # every image in exactly one chunk
    torch.testing.assert_close(ybar.sum(0), torch.tensor([1.0, 1.0]))
    one, hist = chunk_means(x, y, 2, None, g)
    assert float(one) == 1.5 and hist.tolist() == [[0.5, 0.5]]


def _cfg(method="fedmix", **extra):
    atk = extra.pop("attack", {})
    return tiny_config(method=method, method_params=extra, partition="shards", attack=atk)


def test_averaged_data_bytes_are_exact():
    cfg = _cfg(mean_size=10)
    exp = Experiment(cfg)
    out = exp.train()
    d, k = 64, 10
    sizes = [len(c.train) for c in exp.clients]
    means = [n // 10 for n in sizes]
    up = sum(means) * (d + k) * 4
    down = sum(sum(means) - m for m in means) * (d + k) * 4  # X_g minus own entries, once
    assert out.channel.bytes_by_kind()["averaged_data"] == {"up": up, "down": down}


def test_cutoff_threshold_and_server_averaging():
    cut = Experiment(_cfg(min_share_size=10_000)).train()
    assert "averaged_data" not in cut.channel.bytes_by_kind()
    exp = Experiment(_cfg(mean_size=1, server_average=4))
    exp.train()
    aug_entries = sum(len(c.train) for c in exp.clients)
    aug = registries()["method"].create("fedmix", mean_size=1, server_average=4)
    aug.setup(num_classes=10, input_shape=(1, 8, 8), num_clients=4, seed=0)
    server = aug.server_role()
    for cid, c in enumerate(exp.clients):
        server.receive(
            0,
            cid,
            "averaged_data",
            {"x": exp.data.x_train[c.train], "y": torch.zeros(len(c.train), 10)},
        )
    xg, _ = server.global_entries(0)
    assert len(xg) == aug_entries // 4


def test_every_round_sharing_resends():
    once = Experiment(_cfg()).train().channel.bytes_by_kind()["averaged_data"]
    every = Experiment(_cfg(share_every_round=True)).train().channel.bytes_by_kind()
    assert every["averaged_data"]["up"] == 2 * once["up"]


def test_averaged_data_attack_exact_at_mean_size_one_and_worse_for_all():
    (exact,) = privbench.run(_cfg(mean_size=1, attack=dict(names=("averaged-data",))))
    (pooled,) = privbench.run(_cfg(mean_size=None, attack=dict(names=("averaged-data",))))
    assert exact.status == "ok" and exact.psnr >= 60.0 and exact.ssim > 0.999
    assert pooled.psnr < 25.0
    # y-bar of a single all-data mean *is* the client's label histogram.
    assert pooled.label_dist_error == pytest.approx(0.0, abs=1e-6)
    assert exact.bytes_by_kind["averaged_data"]["up"] > pooled.bytes_by_kind["averaged_data"]["up"]


def test_curious_client_rebuilds_others_images_from_x_g():
    (row,) = privbench.run(
        _cfg(method="globalmix", attack=dict(names=("averaged-data",), threat="client"))
    )
    assert row.status == "ok" and row.psnr >= 60.0  # raw images travel: exact recovery


def test_deaveraging_beats_the_raw_means():
    # With several means per client (M_k = 10) their label mixes differ enough for the
    # regression to separate classes: the prototypes are closer to real private images.
    rows = [
        privbench.run(
            _cfg(mean_size=10, attack=dict(names=("averaged-data",), params={"deaverage": flag}))
        )[0]
        for flag in (False, True)
    ]
    assert rows[1].status == "ok" and rows[1].psnr > rows[0].psnr + 1.0
    assert rows[1].ssim > rows[0].ssim


def test_victim_simulation_exact_when_x_g_has_one_entry():
    # Two clients, one mean each: each receives exactly one entry, so the victim's pick is
    # known and the attacker's re-run of the FedMix loss is exact.
    cfg = tiny_config(
        method="fedmix",
        method_params={"lam": 0.2},
        fed=dict(clients=2),
        attack=dict(names=("dlg",), batch=2),
    )
    exp = Experiment(cfg)
    out = exp.train()
    (obs,) = [o for o in out.channel.observations if o.sender == 0 and o.kind == "gradient"]
    sim = VictimSimulator(obs.context)
    v = out.victims[0]
    got = sim.message("gradient", v.images, v.labels, create_graph=False)
    for name, want in sim.target(obs).items():
        torch.testing.assert_close(got[name], want, rtol=1e-4, atol=1e-6)


def test_mean_prior_needs_shared_means():
    (row,) = privbench.run(
        tiny_config(attack=dict(names=("idlg",), params={"prior": "mean", "iters": 2}))
    )
    assert row.status == "error" and "averaged_data" in row.error
    (ok,) = privbench.run(_cfg(attack=dict(names=("idlg",), params={"prior": "mean", "iters": 2})))
    assert ok.status == "ok"


def test_globalmix_is_labelled_privacy_violating():
    assert "PRIVACY-VIOLATING" in registries()["method"].entry("globalmix").description


# -- the adversary enumerates the X_g entries it knows -----------------------------------


def _distance(sim, obs, x, y):
    message = sim.message(obs.kind, x, y, create_graph=False)
    target = sim.target(obs)
    return float(sum(((message[n] - target[n]) ** 2).sum() for n in target))


@pytest.mark.parametrize("method", ["fedmix", "naivemix"])
def test_enumerate_finds_the_entry_the_victim_mixed_with(method):
    """The victim mixed its attacked step with one X_g entry, drawn privately. On the
    victim's true batch, the view of that entry rebuilds its gradient exactly; every
    other entry, and the mean entry (the expected view), does not."""
    cfg = tiny_config(method=method, attack=dict(names=("dlg",), victims=1))
    exp = Experiment(cfg)
    outcome = exp.train()
    (obs,) = [o for o in outcome.channel.observations if o.sender == 0 and o.kind == "gradient"]
    ctx, victim = obs.context, outcome.victims[0]
    n = ctx.method.attack_candidates(ctx.received)
    assert n == len(ctx.received["averaged_data"]["y"]) >= 2
    (used,) = ctx.method.drawn_candidates(ctx.received, exp.private_generator(obs.round, 0), 1)
    scale = float(sum((t**2).sum() for t in obs.payload.values()))
    dist = [
        _distance(
            VictimSimulator(ctx, guess="enumerate", candidate=c), obs, victim.images, victim.labels
        )
        for c in range(n)
    ]
    assert dist[used] <= 1e-10 * scale
    assert all(d > 1e-6 * scale for c, d in enumerate(dist) if c != used), dist
    mean = _distance(VictimSimulator(ctx, guess="expected"), obs, victim.images, victim.labels)
    assert mean > 1e-6 * scale


def test_enumerate_rows_say_whether_the_entry_was_identified():
    cfg = tiny_config(method="fedmix", attack=dict(names=("idlg",), victims=2)).with_params(
        {"idlg": {"iters": 3, "guess": "enumerate"}}
    )
    (row,) = privbench.run(cfg)
    assert row.status == "ok", row.error
    assert row.guess_identified in (0.0, 0.5, 1.0)
    mean = tiny_config(method="fedmix", attack=dict(names=("idlg",))).with_params(
        {"idlg": {"iters": 3}}
    )
    assert privbench.run(mean)[0].guess_identified is None


@pytest.mark.parametrize("name, params", [("idlg", {"iters": 2}), ("ig", {"iters": 20})])
def test_enumerated_candidates_run_batched_as_they_run_one_by_one(name, params):
    """Every X_g entry's trials share one vectorised computation (the entry is a trial
    input); the batched path picks the same entry with the same matching loss as the
    sequential reference path."""
    from privbench.attacks.gradient import _Problem, group_problems
    from privbench.engine.seeding import torch_generator

    cfg = tiny_config(method="fedmix", attack=dict(names=("idlg",), victims=2))
    exp = Experiment(cfg)
    outcome = exp.train()
    seen = outcome.channel.observations
    obs = [next(o for o in seen if o.sender == v and o.kind == "gradient") for v in range(2)]
    attack = registries()["attack"].create(name, guess="enumerate", restarts=2, **params)
    n = obs[0].context.method.attack_candidates(obs[0].context.received)
    problems = [
        _Problem(attack, obs[0], torch_generator(0, 2, 0), seen, candidate=c) for c in range(n)
    ]
    assert group_problems(problems) == [list(range(n))]  # one group: one computation
    got = {}
    for batched in (True, False):
        attack = registries()["attack"].create(
            name, guess="enumerate", restarts=2, batched=batched, **params
        )
        recs = attack.reconstruct_batch(
            obs, generators=[torch_generator(0, 2, v) for v in range(2)], seen=seen
        )
        got[batched] = [(r.meta["candidate"], r.meta["loss"]) for r in recs]
    for (ca, la), (cb, lb) in zip(got[True], got[False], strict=True):
        assert ca == cb and la == pytest.approx(lb, rel=1e-2, abs=1e-9)

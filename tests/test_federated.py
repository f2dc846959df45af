import pytest
import torch

from privbench.engine.federated import (
    QFFL,
    ClientResult,
    FedAvg,
    FedProx,
    local_train,
    weighted_average,
)


def test_weighted_average_hand_worked():
    # (1*[1, 2] + 3*[5, 6]) / 4 = [4, 5]
    out = weighted_average(
        [{"w": torch.tensor([1.0, 2.0])}, {"w": torch.tensor([5.0, 6.0])}], [1, 3]
    )
    assert torch.allclose(out["w"], torch.tensor([4.0, 5.0]))


def test_fedavg_weights_by_data_size_and_keeps_int_buffers_as_max():
    g = {"w": torch.tensor([0.0, 0.0]), "n": torch.tensor(5)}
    results = [
        ClientResult(0, {"w": torch.tensor([2.0, 0.0]), "n": torch.tensor(2)}, 10, 0.0),
        ClientResult(1, {"w": torch.tensor([0.0, 4.0]), "n": torch.tensor(3)}, 30, 0.0),
    ]
    out = FedAvg().aggregate(g, results, lr=0.1)
    # w = 0 + (10*[2,0] + 30*[0,4]) / 40 = [0.5, 3.0]
    assert torch.allclose(out["w"], torch.tensor([0.5, 3.0]))
    assert int(out["n"]) == 8  # the larger step count, 5 + 3


def test_fedprox_penalty_hand_worked():
    params = {"w": torch.tensor([1.0, 3.0])}
    glob = {"w": torch.tensor([0.0, 1.0])}
    # mu/2 * ||[1, 2]||^2 = 0.1/2 * 5 = 0.25
    assert float(FedProx(mu=0.1).penalty(params, glob)) == pytest.approx(0.25)
    assert FedProx(mu=0.0).penalty(params, glob) is None


def test_fedprox_pulls_local_model_toward_global():
    torch.manual_seed(0)
    x, y = torch.randn(64, 3), torch.randint(0, 2, (64,))

    def drift(mu):
        torch.manual_seed(1)
        model = torch.nn.Linear(3, 2)
        start = torch.cat([p.detach().flatten().clone() for p in model.parameters()])
        local_train(
            model,
            x,
            y,
            loss_fn=lambda m, a, b: torch.nn.functional.cross_entropy(m(a), b),
            epochs=20,
            batch_size=16,
            lr=0.5,
            generator=torch.Generator().manual_seed(0),
            algorithm=FedProx(mu=mu),
        )
        end = torch.cat([p.detach().flatten() for p in model.parameters()])
        return float((end - start).norm())

    assert drift(1.0) < 0.5 * drift(0.0)  # lr * mu < 2 keeps the proximal step stable


def test_qffl_q0_is_unweighted_mean_and_q1_hand_worked():
    g = {"w": torch.tensor([1.0])}
    results = [
        ClientResult(0, {"w": torch.tensor([-1.0])}, 10, 1.0),
        ClientResult(1, {"w": torch.tensor([-3.0])}, 99, 3.0),
    ]
    lr = 0.5  # L = 2
    out0 = QFFL(q=0.0).aggregate(g, results, lr)
    assert torch.allclose(out0["w"], torch.tensor([1.0 - 2.0]))  # mean of deltas, unweighted
    # q = 1: Delta_k = L*(-delta) = [2], [6]; numerator = 1*2 + 3*6 = 20
    # h_k = q F^0 ||Delta_k||^2 + L F = (4 + 2) + (36 + 6) = 48; w = 1 - 20/48
    out1 = QFFL(q=1.0).aggregate(g, results, lr)
    assert float(out1["w"]) == pytest.approx(1.0 - 20.0 / 48.0)


def test_local_train_counts_steps_and_is_deterministic():
    x, y = torch.randn(30, 4), torch.randint(0, 3, (30,))

    def once():
        torch.manual_seed(0)
        m = torch.nn.Linear(4, 3)
        steps = local_train(
            m,
            x,
            y,
            loss_fn=lambda mm, a, b: torch.nn.functional.cross_entropy(mm(a), b),
            epochs=2,
            batch_size=8,
            lr=0.1,
            generator=torch.Generator().manual_seed(3),
        )
        return steps, m.weight.detach().clone()

    (s1, w1), (s2, w2) = once(), once()
    assert s1 == s2 == 8  # ceil(30 / 8) = 4 batches x 2 epochs
    assert torch.equal(w1, w2)


def test_local_adam_is_torchs_adam_on_the_same_batches():
    """--optimizer adam: a fresh torch Adam (with weight decay) over the same minibatches
    plain SGD would take; checked against Adam's update written out by hand."""
    from privbench.engine.federated import minibatches

    x, y = torch.randn(12, 4), torch.randint(0, 3, (12,))

    def loss(mm, a, b):
        return torch.nn.functional.cross_entropy(mm(a), b)

    torch.manual_seed(0)
    m = torch.nn.Linear(4, 3)
    ref = {n: p.detach().clone() for n, p in m.named_parameters()}
    local_train(
        m, x, y, loss_fn=loss, epochs=1, batch_size=6, lr=0.01,
        generator=torch.Generator().manual_seed(3), optimizer="adam", weight_decay=1e-2,
    )  # fmt: skip
    # By hand: Adam(β1 0.9, β2 0.999, ε 1e-8), L2 decay added to the gradient.
    w = {n: v.clone().requires_grad_(True) for n, v in ref.items()}
    mom = {n: torch.zeros_like(v) for n, v in ref.items()}
    var = {n: torch.zeros_like(v) for n, v in ref.items()}
    idx_all = minibatches(m, 12, epochs=1, batch_size=6, generator=torch.Generator().manual_seed(3))
    for t, idx in enumerate(idx_all, start=1):
        out = torch.nn.functional.linear(x[idx], w["weight"], w["bias"])
        grads = torch.autograd.grad(
            torch.nn.functional.cross_entropy(out, y[idx]), list(w.values())
        )
        with torch.no_grad():
            for (n, p), g in zip(w.items(), grads, strict=True):
                g = g + 1e-2 * p
                mom[n] = 0.9 * mom[n] + 0.1 * g
                var[n] = 0.999 * var[n] + 0.001 * g * g
                step = 0.01 * (mom[n] / (1 - 0.9**t)) / ((var[n] / (1 - 0.999**t)).sqrt() + 1e-8)
                p -= step
    for n, p in m.named_parameters():
        assert torch.allclose(p, w[n], atol=1e-6), n


def test_adam_runs_one_by_one_and_is_refused_where_sgd_is_assumed():
    from dataclasses import replace

    from privbench import AttackConfig, FedConfig, RunConfig, run
    from privbench.cli.parser import build_parser, config_from_args
    from privbench.engine.experiment import Experiment
    from privbench.errors import IncompatibleError, PrivbenchError

    fed = FedConfig(clients=3, rounds=1, optimizer="adam", weight_decay=1e-4, lr=0.01)
    cfg = RunConfig(method="fedavg", partition="iid", model="cnn", fed=fed)
    exp = Experiment(cfg)
    assert not exp.vectorises(exp.make_parts())  # vectorised clients compute plain SGD
    (row,) = run(cfg)
    assert row.status == "ok" and row.config["fed"]["optimizer"] == "adam"
    args = build_parser().parse_args(
        ["run", "fedavg", "--optimizer", "adam", "--local-weight-decay", "0.1"]
    )
    assert (config_from_args(args).fed.optimizer, config_from_args(args).fed.weight_decay) == (
        "adam",
        0.1,
    )
    assert (
        RunConfig().resolve().hash() == RunConfig(fed=FedConfig(optimizer="sgd")).resolve().hash()
    )
    sgd = RunConfig(
        method="fedavg", partition="iid", model="cnn", fed=replace(fed, optimizer="sgd")
    )
    assert cfg.resolve().hash() != sgd.resolve().hash()
    with pytest.raises(PrivbenchError, match="'optimizer' parameter must be sgd or adam"):
        RunConfig(fed=FedConfig(optimizer="rmsprop")).resolve()
    with pytest.raises(PrivbenchError, match="victim takes several steps"):
        RunConfig(fed=fed, attack=AttackConfig(names=("ig",), steps=3)).resolve()
    with pytest.raises(PrivbenchError, match="under q-FFL"):
        RunConfig(fed=FedConfig(algorithm="qffl", optimizer="adam")).resolve()
    with pytest.raises(IncompatibleError, match="needs plain local training"):
        Experiment(RunConfig(method="fedavp", fed=FedConfig(optimizer="adam")))
    with pytest.raises(IncompatibleError, match="weight decay 0.0001.*needs plain local"):
        Experiment(RunConfig(method="fedavp", fed=FedConfig(weight_decay=1e-4)))

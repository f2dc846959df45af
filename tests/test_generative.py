"""Generative augmentation (Fed-ZDAC/ZDAS, federated CVAEs) and the attacks on it."""

import math
from dataclasses import replace

import pytest
import torch

import privbench
from privbench.attacks.base import ATTACKS
from privbench.attacks.gradient import Prior, VictimSimulator
from privbench.augmenters import ClientState
from privbench.augmenters.cvae import minority_counts, uniform_labels
from privbench.augmenters.synthetic import synthetic_in_batch
from privbench.config import AttackConfig, RunConfig
from privbench.engine.channel import Observation
from privbench.engine.experiment import Experiment
from privbench.errors import IncompatibleError, PrivbenchError
from privbench.evaluation.metrics import psnr
from privbench.nn.batchnorm import BNStatistics
from privbench.nn.cvae import CVAE, decoder_state, sample
from privbench.testing import tiny_config

CVAE_FAST = {"cvae_rounds": 3, "cvae_epochs": 1}


# -- Algorithm 1 and the label rules ----------------------------------------------------


def test_minority_counts_follow_algorithm_1_on_a_hand_worked_histogram():
    # deficits vs the top count 5: [0, 3, 5, 0], sum 8; k = 10 -> 3.75, 6.25 -> 4, 6.
    assert minority_counts([5, 2, 0, 5], 10) == [0, 4, 6, 0]
    # deficits [0, 2, 2]: 2.5 each rounds half to even -> 2 (the total may miss k).
    assert minority_counts([3, 1, 1], 5) == [0, 2, 2]
    # one label only: every other label has the full deficit, shared equally.
    assert minority_counts([0, 12, 0, 0], 9) == [3, 0, 3, 3]
    assert minority_counts([4, 4, 4], 30) == [0, 0, 0]  # balanced: nothing to impute


def test_uniform_labels_spread_evenly():
    counts = torch.bincount(uniform_labels(23, 10), minlength=10).tolist()
    assert counts == [3, 3, 3, 2, 2, 2, 2, 2, 2, 2]


def test_synthetic_in_batch_keeps_the_training_set_proportion():
    assert synthetic_in_batch(100, 100, 20) == 20  # the whole set: all of it
    assert synthetic_in_batch(10, 100, 20) == 2
    assert synthetic_in_batch(1, 100, 20) == 1  # at least one when there are any
    assert synthetic_in_batch(1, 100, 0) == 0


def test_cvae_minority_clients_impute_their_algorithm_1_counts():
    cfg = tiny_config(method="cvae-minority", partition="dirichlet", method_params=CVAE_FAST)
    exp = Experiment(cfg)
    exp.train()
    client = exp.parts.client  # the run's client role: each client's private synthetic set
    for c in exp.clients:
        _, y = exp.client_data(c.client_id)
        hist = torch.bincount(y, minlength=10).tolist()
        _, ys = client.synthetic(c.client_id)
        assert torch.bincount(ys, minlength=10).tolist() == minority_counts(hist, 20)


# -- the federated CVAE ------------------------------------------------------------------


def test_cvae_elbo_decreases_under_fedavg_and_generator_bytes_are_exact():
    params = {"cvae_rounds": 5, "cvae_epochs": 1}
    cfg = tiny_config(method="cvae-uniform", method_params=params)
    exp = Experiment(cfg)
    outcome = exp.train()
    states = [ClientState(c.client_id, *exp.client_data(c.client_id)) for c in exp.clients]
    hist = exp.parts.server.elbo_history(states)
    assert len(hist) == 1 + 5  # untrained, then after each FedAvg round
    assert all(b < a for a, b in zip(hist, hist[1:], strict=False)), hist
    assert hist[-1] < 0.6 * hist[0], hist
    # Bytes from the architecture, counted by hand: float32 weights and biases.
    d, k, latent, hidden = 64, 10, 8, 128
    enc = (d + k) * hidden + hidden + 2 * (hidden * latent + latent)
    dec = (latent + k) * hidden + hidden + hidden * d + d
    full, decoder_only = 4 * (enc + dec), 4 * dec
    n = cfg.fed.clients
    got = outcome.channel.bytes_by_kind()["generator"]
    assert got == {"up": 5 * n * full, "down": 5 * n * full + n * decoder_only}


def test_cvae_uniform_share_of_synthetic_data_is_reported():
    cfg = tiny_config(method="cvae-uniform", method_params={**CVAE_FAST, "k": 30})
    (row,) = privbench.run(cfg)
    assert row.status == "ok", row.error
    exp = Experiment(cfg)
    sizes = [len(exp.client_data(c.client_id)[1]) for c in exp.clients]
    expected = sum(30 / (n + 30) for n in sizes) / len(sizes)
    assert row.synthetic_share == pytest.approx(expected)
    assert privbench.run(tiny_config())[0].synthetic_share == 0.0


def test_cvae_finetune_pretrains_the_classifier_on_the_global_label_distribution():
    cfg = tiny_config(method="cvae-finetune", method_params=CVAE_FAST)
    exp = Experiment(cfg)
    outcome = exp.train()
    images, labels = exp.parts.server.server_set
    total = sum(torch.bincount(exp.client_data(c.client_id)[1], minlength=10) for c in exp.clients)
    # As many synthetic images as real ones, per class round(size * share): here exact.
    assert torch.bincount(labels, minlength=10).tolist() == total.tolist()
    assert images.min() >= 0.0 and images.max() <= 1.0
    assert outcome.channel.bytes_by_kind()["label_counts"]["up"] == cfg.fed.clients * 10 * 8


def test_decoder_inversion_recovers_an_image_the_decoder_can_draw():
    """The audit finds z for an image that lies on the decoder's manifold."""
    torch.manual_seed(0)
    cvae = CVAE((1, 8, 8), 10)
    g = torch.Generator().manual_seed(1)
    labels = torch.tensor([3, 7])
    with torch.no_grad():
        z = torch.randn(2, 8, generator=g) * 0.5
        target = torch.sigmoid(cvae.decode_logits(z, labels))
    exp = Experiment(tiny_config(method="cvae-uniform", method_params=CVAE_FAST))
    ctx = exp.public_context(
        {k: v for k, v in exp.build_model().state_dict().items()},
        steps=0,
        batch=0,
        num_images=0,
        algorithm=None,
        received={},
        defenses=[],
    )
    obs = Observation(-1, 0, "server", "generator", decoder_state(cvae.state_dict()), ctx)
    attack = ATTACKS.create("generator", iters=300, restarts=2)
    rec = attack.audit(obs, images=target, labels=labels, generator=g, seen=[obs])
    got = [psnr(t.numpy(), r.numpy()) for t, r in zip(target, rec.images, strict=True)]
    assert min(got) > 30.0, got


# -- Fed-ZDA -----------------------------------------------------------------------------


def test_zdac_clients_generate_from_the_received_model_after_burn_in():
    params = {"zsdg_iters": 5, "zsdg_per_class": 2, "start_round": 1}
    cfg = tiny_config(method="zdac", method_params=params)
    exp = Experiment(cfg)
    assert exp.cfg.model == "cnn-bn"  # the method's default model
    outcome = exp.train()
    client = exp.parts.client
    assert set(client.private) == set(range(cfg.fed.clients))
    for xs, ys in (client.synthetic(cid) for cid in client.private):
        assert ys.tolist() == torch.arange(10).repeat_interleave(2).tolist()
        assert xs.min() >= 0.0 and xs.max() <= 1.0  # the box of the data's range
    sizes = [len(exp.client_data(c.client_id)[1]) for c in exp.clients]
    assert outcome.synthetic_share == pytest.approx(sum(20 / (n + 20) for n in sizes) / 4)
    # Burn-in: with start_round past the last round nobody generates.
    late = Experiment(replace(cfg, method_params={**params, "start_round": 2}))
    assert late.train().synthetic_share == 0.0


def test_zdas_server_inverts_every_received_client_model():
    params = {"zsdg_iters": 5, "zsdg_per_class": 1, "start_round": 0}
    cfg = tiny_config(method="zdas", method_params=params)
    exp = Experiment(cfg)
    seen = []
    make_parts = exp.make_parts

    def spying_parts(**kw):
        parts = make_parts(**kw)
        original = parts.server.after_aggregate

        def spy(round, model, client_models):
            def models():
                built = client_models()
                seen.append((round, sorted(built)))
                return built

            return original(round, model, models)

        parts.server.after_aggregate = spy
        return parts

    exp.make_parts = spying_parts
    outcome = exp.train()
    assert seen == [(0, [0, 1, 2, 3]), (1, [0, 1, 2, 3])]
    x, y = exp.parts.server.server_set
    assert len(y) == 4 * 10 and torch.bincount(y).tolist() == [4] * 10
    assert outcome.synthetic_share == 0.0  # clients train on real data only


def test_client_models_are_broadcast_weights_plus_the_received_update():
    cfg = tiny_config(model="cnn-bn")
    exp = Experiment(cfg)
    model = exp.build_model()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    from privbench.engine.federated import ClientResult

    delta = {k: torch.ones_like(v) for k, v in state.items()}
    (got,) = exp.client_models(state, [ClientResult(2, delta, 1.0, 0.0)]).items()
    assert got[0] == 2
    for k, v in got[1].state_dict().items():
        assert torch.equal(v, state[k] + 1)


def test_zsdg_methods_and_attacks_refuse_models_without_batchnorm():
    with pytest.raises(IncompatibleError, match="BatchNorm"):
        Experiment(tiny_config(method="zdac", model="lenet-sigmoid"))
    with pytest.raises(IncompatibleError, match="BatchNorm"):
        Experiment(tiny_config(attack=dict(names=("bn-inversion",))))
    assert RunConfig(method="zdas").resolve().model == "cnn-bn"
    assert RunConfig(method="fedavg").resolve().model == "lenet-sigmoid"
    assert RunConfig(method="zdas", model="resnet").resolve().model == "resnet"


# -- method-aware gradient attacks ---------------------------------------------------------


def _victim_observation(cfg):
    exp = Experiment(cfg)
    outcome = exp.train()
    obs = next(o for o in outcome.channel.observations if o.sender == 0 and o.kind == "gradient")
    return exp, outcome, obs


def test_simulated_loss_is_real_plus_synthetic_and_exact_with_the_victims_samples():
    cfg = tiny_config(
        method="cvae-uniform",
        method_params={**CVAE_FAST, "k": 40},
        attack=dict(names=("dlg",), batch=2),
    )
    exp, outcome, obs = _victim_observation(cfg)
    ctx = obs.context
    n0 = len(exp.client_data(0)[1])
    assert ctx.num_images == 2 and ctx.num_synthetic == synthetic_in_batch(2, n0, 40)
    victim = outcome.victims[0]
    client = exp.parts.client  # the run's client role (engine side): its synthetic set
    # The victim's own synthetic samples in that step (its training_data, replayed).
    state = ClientState(0, *exp.client_data(0))
    x_all, y_all = client.training_data(cfg.attack.round, state, victim.images, victim.labels)
    xs, ys = x_all[2:], y_all[2:]
    assert len(ys) == ctx.num_synthetic
    exact = VictimSimulator(ctx)
    exact.synthetic = (xs, ys)
    msg = exact.message("gradient", victim.images, victim.labels, create_graph=False)
    for n, g in msg.items():
        torch.testing.assert_close(g, obs.payload[n], rtol=1e-4, atol=1e-6)
    # Leaving the synthetic part out simulates a different message.
    blind = VictimSimulator(ctx)
    blind.synthetic = None
    off = blind.message("gradient", victim.images, victim.labels, create_graph=False)
    assert max(float((off[n] - obs.payload[n]).abs().max()) for n in off) > 1e-3
    # The attacker's own estimate (decoder samples) has the right count and range.
    est = VictimSimulator(ctx, generator=torch.Generator().manual_seed(0)).synthetic
    assert len(est[1]) == ctx.num_synthetic and est[0].shape[1:] == (1, 8, 8)


def test_bn_prior_is_the_broadcast_models_statistics_loss():
    cfg = tiny_config(model="cnn-bn", attack=dict(names=("dlg",)))
    exp, _, obs = _victim_observation(cfg)
    prior = Prior("bn", 0.5, obs, [obs])
    x = torch.rand(3, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    model = obs.context.build_model()
    model.load_state_dict(dict(obs.context.weights_before))
    model.eval()
    stats = BNStatistics(model)
    with torch.no_grad():
        model(x)
    expected = 0.5 * 2.0 + 0.5 * float(stats.loss())
    assert float(prior(torch.tensor(2.0), x, torch.zeros(3, dtype=torch.long))) == pytest.approx(
        expected, rel=1e-5
    )


def test_generator_prior_is_zero_on_the_decoders_own_image_and_needs_a_decoder():
    cfg = tiny_config(method="cvae-uniform", method_params=CVAE_FAST, attack=dict(names=("dlg",)))
    _, _, obs = _victim_observation(cfg)
    prior = Prior("generator", 1.0 - 1e-9, obs, [obs])
    decoder = obs.context.method.decoder(obs.context.received["generator"])
    labels = torch.tensor([4])
    with torch.no_grad():
        own = torch.sigmoid(decoder.decode_logits(torch.zeros(1, 8), labels))
    assert float(prior(torch.tensor(0.0), own, labels)) == pytest.approx(0.0, abs=1e-6)
    other = torch.rand(1, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    assert float(prior(torch.tensor(0.0), other, labels)) > 0.01
    plain = tiny_config(attack=dict(names=("dlg",)))
    _, _, fedavg_obs = _victim_observation(plain)
    with pytest.raises(IncompatibleError, match="generator"):
        Prior("generator", 0.1, fedavg_obs, [fedavg_obs])
    with pytest.raises(IncompatibleError, match="BatchNorm"):
        Prior("bn", 0.1, fedavg_obs, [fedavg_obs])


@pytest.mark.parametrize("prior", ["bn", "generator"])
def test_priors_run_end_to_end(prior):
    method = "zdac" if prior == "bn" else "cvae-uniform"
    params = {"zsdg_iters": 5} if prior == "bn" else CVAE_FAST
    cfg = tiny_config(
        method=method,
        method_params=params,
        attack=dict(names=("dlg",), params={"iters": 3, "prior": prior, "prior_weight": 0.1}),
    )
    (row,) = privbench.run(cfg)
    assert row.status == "ok", row.error
    assert math.isfinite(row.psnr)


# -- artifact attacks ----------------------------------------------------------------------


def test_synthetic_nn_scores_decoder_samples_against_private_images():
    cfg = tiny_config(
        method="cvae-uniform",
        method_params=CVAE_FAST,
        attack=dict(names=("synthetic-nn", "generator"), params={"iters": 20}),
    )
    nn_row, gen_row = privbench.run(cfg)
    assert nn_row.status == gen_row.status == "ok", (nn_row.error, gen_row.error)
    assert nn_row.n_images == 10 * 10  # samples_per_class x classes
    exp = Experiment(cfg)
    assert gen_row.n_images == len(exp.client_data(0)[1])  # one match per private image
    assert gen_row.label_acc == 1.0  # conditioned on each record's own label


def test_synthetic_nn_uses_a_shared_synthetic_set_as_is():
    attack = ATTACKS.create("synthetic-nn")
    x = torch.rand(5, 1, 8, 8)
    obs = Observation(0, 1, "server", "synthetic_data", {"x": x, "y": torch.arange(5)}, None)
    rec = attack.reconstruct(obs, generator=torch.Generator(), seen=[obs])
    assert torch.equal(rec.images, x)


def test_bad_generative_parameters_name_the_parameter():
    with pytest.raises(PrivbenchError, match="'k' parameter"):
        RunConfig(method="cvae-uniform", method_params={"k": -1}).resolve()
    with pytest.raises(PrivbenchError, match="'zsdg_iters' parameter"):
        RunConfig(method="zdac", method_params={"zsdg_iters": 0}).resolve()
    with pytest.raises(PrivbenchError, match="prior"):
        RunConfig(attack=AttackConfig(names=("dlg",), params={"prior": "gan"})).resolve()


def test_cvae_samples_stay_in_the_value_range():
    cvae = CVAE((1, 8, 8), 10)
    out = sample(cvae, torch.arange(10), (-1.0, 2.0), torch.Generator().manual_seed(0))
    assert out.min() >= -1.0 and out.max() <= 2.0 and out.shape == (10, 1, 8, 8)


# -- the commands, on the default data and settings ---------------------------------


@pytest.mark.slow
@pytest.mark.parametrize(
    "argv",
    [
        ["zdac", "--attack", "dlg"],
        ["zdas", "--attack", "bn-inversion"],
        ["cvae-minority", "--attack", "generator"],
        ["cvae-uniform", "--attack", "synthetic-nn"],
        ["cvae-finetune", "--attack", "dlg"],
    ],
)
def test_default_generative_runs_print_their_rows(argv, capsys):
    """Default training; the attack short (its default, 4 x 300 L-BFGS steps on zdac's
    cnn-bn, takes minutes and is exercised by the golden rows and the benchmarks)."""
    from privbench.cli import main

    short = {"dlg": ["--iters", "20", "--restarts", "1"], "synthetic-nn": []}.get(
        argv[2], ["--iters", "20"]
    )
    assert main(["run", *argv, *short, "--no-save", "--no-progress", "--json"]) == 0
    import json

    (row,) = json.loads(capsys.readouterr().out)
    assert row["status"] == "ok" and row["method"] == argv[0] and row["attack"] == argv[2]
    assert row["accuracy"] > 0.5 and math.isfinite(row["psnr"])
    if argv[0] != "zdas":  # zdas's clients train on real data only
        assert (row["synthetic_share"] > 0) == (argv[0] != "cvae-finetune")


def test_artifact_noise_reaches_the_cvae_uploads_before_round_0():
    cfg = tiny_config(method="cvae-uniform", method_params={**CVAE_FAST, "cvae_rounds": 1})
    noisy = replace(cfg, defenses=("artifact-noise",), defense_params={"sigma": 0.5})
    ups = []
    for c in (cfg, noisy):
        exp = Experiment(c)
        outcome = exp.train()
        ups.append(
            next(o for o in outcome.channel.observations if o.kind == "generator" and o.sender == 0)
        )
    assert ups[0].round == ups[1].round == -1
    diff = ups[1].payload["dec.2.weight"] - ups[0].payload["dec.2.weight"]
    assert 0.3 < float(diff.std()) < 0.7  # sigma 0.5 on every uploaded weight


# -- the victim's synthetic samples as free variables of the attack ------------------------


def _zdac_victim(attack="dlg", **params):
    cfg = tiny_config(
        method="zdac",
        method_params={"zsdg_iters": 5, "zsdg_per_class": 1, "start_round": 0},
        attack=dict(names=(attack,), batch=2, round=1, params={"iters": 3, **params}),
    )
    exp = Experiment(cfg)
    out = exp.train()
    (obs,) = [o for o in out.channel.observations if o.sender == 0 and o.round == 1]
    return exp, out, obs


def test_joint_mode_reproduces_the_message_from_the_victims_real_and_synthetic_samples():
    from privbench.attacks.gradient import VictimSimulator
    from privbench.engine.method import ClientState

    exp, out, obs = _zdac_victim()
    victim = out.victims[0]
    assert obs.context.num_synthetic > 0
    # Engine side only: the samples the victim really mixed in (ground truth).
    state = ClientState(0, *exp.client_data(0))
    x_all, y_all = exp.parts.client.training_data(1, state, victim.images, victim.labels)
    joint = VictimSimulator(obs.context, synthetic="joint")
    assert joint.synthetic is None and joint.free == obs.context.num_synthetic
    got = joint.message(obs.kind, x_all, y_all, create_graph=False)
    want = joint.target(obs)
    for n in want:
        torch.testing.assert_close(got[n], want[n], rtol=1e-4, atol=1e-6)
    # The estimate-mode simulator appends its own estimate, which is not what was sent.
    est = VictimSimulator(obs.context)
    off = est.message(obs.kind, victim.images, victim.labels, create_graph=False)
    assert max(float((off[n] - want[n]).abs().max()) for n in want) > 1e-3


@pytest.mark.parametrize("attack", ["dlg", "idlg", "ig"])
def test_joint_mode_scores_only_the_victims_records(attack):
    cfg = tiny_config(
        method="zdac",
        method_params={"zsdg_iters": 5, "zsdg_per_class": 1, "start_round": 0},
        attack=dict(names=(f"{attack}@joint",), batch=2, round=1, params={"iters": 3}),
    )
    (row,) = privbench.run(cfg)
    assert row.status == "ok", row.error
    assert row.attack == f"{attack}@joint" and row.n_images == 2

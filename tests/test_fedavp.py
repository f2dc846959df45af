"""FedAvP: the 17 ops against torchvision, the policy, the meta-policy gradient, Reptile,
the attacker's views, policy-inference and the local baselines."""

import math

import pytest
import torch
from scipy.stats import chisquare
from torch import nn
from torchvision.transforms.v2 import RandAugment
from torchvision.transforms.v2 import functional as TF

import privbench
from privbench.attacks.policy import decompose
from privbench.augmenters.fedavp import PolicyGuess, reptile_update
from privbench.augmenters.ops import (
    NUM_OPS,
    NUM_PAIRS,
    OP_NAMES,
    OPS,
    apply_all_pairs,
    apply_pairs,
    sample_pairs,
    sampling_probs,
)
from privbench.errors import IncompatibleError, ParameterError
from privbench.testing import tiny_config

# Our op (by name) -> torchvision AutoAugment transform id and magnitude for draw u.
_SIDE = 16


def _tv_magnitude(name: str, op, u: torch.Tensor) -> float:
    m = op.magnitude(u)
    if name in ("Brightness", "Color", "Contrast", "Sharpness"):
        return m - 1.0  # torchvision's factor is 1 + magnitude
    if name.startswith("Translate"):
        return float(int(m * _SIDE))
    if name == "Solarize":
        return min(m / 255.0, 1.0)
    return m


@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("name", [n for n in OP_NAMES if n not in ("Flip", "Cutout", "Crop")])
def test_each_op_matches_torchvisions_autoaugment_transform(name, channels):
    op = OPS[OP_NAMES.index(name)]
    x = torch.rand(2, channels, _SIDE, _SIDE, generator=torch.Generator().manual_seed(1))
    reference = RandAugment()
    for u0 in (0.1, 0.5, 0.93):
        u = torch.tensor([u0, 0.3])
        got = op(x, u)
        want = reference._apply_image_or_video_transform(
            x, name, _tv_magnitude(name, op, u), interpolation=TF.InterpolationMode.NEAREST, fill={}
        )
        assert got.shape == x.shape
        assert float(got.min()) >= 0.0 and float(got.max()) <= 1.0
        torch.testing.assert_close(got, want)


def test_random_ops_follow_their_draws():
    x = torch.rand(1, 3, 8, 8)
    flip, cutout, crop = (OPS[OP_NAMES.index(n)] for n in ("Flip", "Cutout", "Crop"))
    torch.testing.assert_close(flip(x, torch.tensor([0.7, 0.0])), TF.horizontal_flip(x))
    torch.testing.assert_close(flip(x, torch.tensor([0.2, 0.0])), x)
    # Cutout: a 4x4 black square centred at (4, 4) on an 8x8 image.
    out = cutout(torch.ones(1, 1, 8, 8), torch.tensor([0.5, 0.5]))
    assert int((out == 0).sum()) == 16 and float(out[0, 0, 2:6, 2:6].sum()) == 0.0
    # Crop: pad 1, take the top-left 8x8 window = the image shifted down-right by 1.
    shifted = crop(x, torch.tensor([0.0, 0.0]))
    torch.testing.assert_close(shifted[..., 1:, 1:], x[..., :-1, :-1])
    assert float(shifted[..., 0, :].abs().sum()) == 0.0


def test_ops_keep_shape_and_range_in_the_datasets_value_range():
    x = torch.rand(6, 1, 8, 8) * 2 - 1  # a dataset in [-1, 1]
    g = torch.Generator().manual_seed(0)
    pairs = torch.randint(NUM_PAIRS, (6,), generator=g)
    out = apply_pairs(x, pairs, torch.rand(6, 2, 2, generator=g), (-1.0, 1.0))
    assert out.shape == x.shape and float(out.min()) >= -1.0 and float(out.max()) <= 1.0


def test_all_pairs_stack_equals_applying_each_pair_in_turn():
    x = torch.rand(3, 1, 8, 8)
    draws = torch.rand(2, NUM_OPS, 2, generator=torch.Generator().manual_seed(3))
    fast = apply_all_pairs(x, draws)  # (289, 3, 1, 8, 8)
    for pair in (0, 5, 17 * 9 + 2, NUM_PAIRS - 1):
        a, b = divmod(pair, NUM_OPS)
        per = torch.stack([draws[0, a], draws[1, b]])
        slow = apply_pairs(x, torch.full((3,), pair), per.expand(3, 2, 2))
        torch.testing.assert_close(fast[pair], slow)


def _method(**params):
    method = privbench.registries()["method"].create("fedavp", **params)
    method.setup(num_classes=3, input_shape=(1, 8, 8), num_clients=2, seed=0)
    return method


def test_policy_scores_lie_in_the_unit_interval_and_sampling_follows_them():
    method = _method(eps=0.2)
    scores = method.scores(method.theta).detach()
    assert scores.shape == (NUM_PAIRS,) and float(scores.min()) > 0 and float(scores.max()) < 1
    # Skew the scores so the test has something to detect, then draw many pairs.
    skewed = scores**8
    pairs, _ = sample_pairs(skewed, 0.2, 200_000, torch.Generator().manual_seed(0))
    probs = sampling_probs(skewed, 0.2).double()
    expected = probs / probs.sum() * len(pairs)
    observed = torch.bincount(pairs, minlength=NUM_PAIRS)
    assert chisquare(observed.numpy(), expected.numpy()).pvalue > 1e-3
    # eps = 1 is the uniform distribution; eps = 0 follows the scores alone.
    torch.testing.assert_close(sampling_probs(skewed, 1.0), torch.full((NUM_PAIRS,), 1 / 289))
    torch.testing.assert_close(sampling_probs(skewed, 0.0), skewed / skewed.sum())


class _Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(64, 3)

    def forward(self, x):
        return self.fc(torch.tanh(x.flatten(1)))


def test_policy_gradient_equals_a_finite_difference_of_the_meta_policy_loss():
    torch.manual_seed(0)
    method = _method(h1=4, h2=5, expansion=2, policy_clip=1e6, grad_clip=1e6)
    model = _Tiny().double()
    theta = {k: v.double() for k, v in method.theta.items()}
    g = torch.Generator().manual_seed(1)
    x, y = torch.rand(3, 1, 8, 8, dtype=torch.float64), torch.tensor([0, 1, 2])
    xv, yv = torch.rand(4, 1, 8, 8, dtype=torch.float64), torch.tensor([2, 1, 0, 0])
    pairs, draws = torch.randint(NUM_PAIRS, (6,), generator=g), torch.rand(6, 2, 2, generator=g)
    grad, new, inner = method.policy_gradient(model, theta, (x, y), (xv, yv), pairs, draws, lr=0.1)
    # First-order meta-policy loss: g_val is a constant taken at the new weights.
    names = [n for n, _ in model.named_parameters()]
    w_new = {n: t.clone().requires_grad_(True) for n, t in zip(names, new, strict=True)}
    val = nn.functional.cross_entropy(torch.func.functional_call(model, w_new, (xv,)), yv)
    g_val = torch.autograd.grad(val, list(w_new.values()))

    def meta_loss(th):
        loss = method._loss(model, x, y, method.scores(th), pairs, draws)
        g_aug = torch.autograd.grad(loss, list(model.parameters()))
        return -sum((a * b).sum() for a, b in zip(g_aug, g_val, strict=True))

    assert float(meta_loss(theta)) == pytest.approx(-inner, rel=1e-9)
    direction = {
        k: torch.randn(v.shape, generator=g, dtype=torch.float64) for k, v in theta.items()
    }
    h = 1e-5
    plus = meta_loss({k: theta[k] + h * direction[k] for k in theta})
    minus = meta_loss({k: theta[k] - h * direction[k] for k in theta})
    numeric = float(plus - minus) / (2 * h)
    analytic = float(sum((grad[k] * direction[k]).sum() for k in theta))
    assert analytic == pytest.approx(numeric, rel=1e-5, abs=1e-10)
    assert abs(analytic) > 0  # the scores really move the loss


def test_reptile_update_on_two_clients_equals_the_hand_worked_value():
    theta = {"w": torch.tensor([1.0, 2.0])}
    deltas = [{"w": torch.tensor([0.5, 0.0])}, {"w": torch.tensor([-1.0, 2.0])}]
    # grad = -(1/4 [0.5, 0] + 3/4 [-1, 2]) = [0.625, -1.5], norm 1.625.
    out = reptile_update(theta, deltas, [1.0, 3.0], lr=0.9, max_norm=10.0)
    torch.testing.assert_close(out["w"], torch.tensor([1 - 0.9 * 0.625, 2 + 0.9 * 1.5]))
    clipped = reptile_update(theta, deltas, [1.0, 3.0], lr=0.9, max_norm=1.0)
    scale = 0.9 / 1.625
    torch.testing.assert_close(clipped["w"], torch.tensor([1 - scale * 0.625, 2 + scale * 1.5]))


def test_expected_view_is_the_policy_weighted_sum_over_all_pairs():
    method = _method(eps=0.3)
    method.value_range = (0.0, 1.0)
    model = _Tiny()
    x, y = torch.rand(2, 1, 8, 8), torch.tensor([1, 2])
    received = {"policy": method.theta}
    view = method.attack_view("expected", torch.Generator().manual_seed(4))
    got = view.local_loss(model, x, y, received=received)
    draws = view._fixed
    scores = method.scores(method.theta).detach()
    q = sampling_probs(scores, 0.3)
    slow = 0.0
    for pair in range(NUM_PAIRS):
        a, b = divmod(pair, NUM_OPS)
        per = torch.stack([draws[0, a], draws[1, b]]).expand(2, 2, 2)
        xa = apply_pairs(x, torch.full((2,), pair), per)
        ce = nn.functional.cross_entropy(model(xa), y, reduction="none")
        slow = slow + q[pair] * scores[pair] * ce
    torch.testing.assert_close(got, slow.mean())
    identity = method.attack_view("identity", torch.Generator()).local_loss(
        model, x, y, received=received
    )
    torch.testing.assert_close(
        identity, (q * scores).sum() * nn.functional.cross_entropy(model(x), y)
    )
    assert isinstance(view, PolicyGuess)


def test_dummy_images_get_gradients_through_every_op():
    x = torch.rand(1, 1, 8, 8, requires_grad=True)
    for a in range(NUM_OPS):
        out = OPS[a](x, torch.tensor([0.6, 0.6]))
        (grad,) = torch.autograd.grad(out.sum(), x)
        assert torch.isfinite(grad).all() and float(grad.abs().sum()) > 0, OP_NAMES[a]


def test_fedavp_run_sends_policies_with_exact_bytes_and_infers_labels():
    cfg = tiny_config(
        method="fedavp",
        method_params={"h1": 8, "h2": 8},
        attack=dict(names=("policy-inference", "idlg"), params={"iters": 2}),
    )
    rows = privbench.run(cfg)
    for row in rows:
        assert row.status == "ok", row.error
    policy_floats = 8 + 9 * 8 + 9 * 8 + 9 * NUM_PAIRS
    per_message = 4 * policy_floats
    # 2 rounds x 4 clients receive the policy; every client but the FedSGD victim of
    # round 0 uploads one (plus its 8-byte sample count).
    assert rows[0].bytes_by_kind["policy"]["down"] == 2 * 4 * per_message
    assert rows[0].bytes_by_kind["policy"]["up"] == 7 * (per_message + 8)
    err = rows[0].label_dist_error
    assert rows[0].attack == "policy-inference" and 0.0 <= err <= 1.0 and rows[0].psnr is None
    assert rows[1].psnr is not None


def test_policy_inference_decomposes_an_update_into_class_directions():
    # Hand-worked: target = 0.25 u_0 + 0.75 u_2 with three class directions in R^4.
    U = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 2.0], [1.0, 1.0, 1.0]])
    target = U @ torch.tensor([1.0, 0.0, 3.0])
    hist, residual = decompose(U, target)
    torch.testing.assert_close(hist, torch.tensor([0.25, 0.0, 0.75], dtype=torch.float64))
    assert residual == pytest.approx(0.0, abs=1e-9)
    # Negative weights are not allowed: a target opposite to every direction is uniform.
    hist, _ = decompose(U, -target)
    torch.testing.assert_close(hist, torch.full((3,), 1 / 3, dtype=torch.float64))


def test_policy_inference_needs_a_policy_upload():
    cfg = tiny_config(method="fedmix", attack=dict(names=("policy-inference",)))
    (row,) = privbench.run(cfg)
    assert row.status == "error" and "policy" in row.error


def test_dp_sgd_cannot_replace_fedavps_local_training():
    with pytest.raises(IncompatibleError, match="own local training"):
        privbench.run(tiny_config(method="fedavp", defenses=("dp-sgd",)))


@pytest.mark.parametrize("name", ["randaugment", "trivialaugment"])
def test_torchvision_baselines_augment_each_image_reproducibly(name):
    method = privbench.registries()["method"].create(name)
    method.setup(num_classes=10, input_shape=(3, 16, 16), num_clients=2, seed=0)
    x = torch.rand(8, 3, 16, 16)
    a = method.augment(x, torch.Generator().manual_seed(5))
    b = method.augment(x, torch.Generator().manual_seed(5))
    torch.testing.assert_close(a, b)
    assert a.shape == x.shape and float(a.min()) >= 0 and float(a.max()) <= 1
    changed = [(a[i] - x[i]).abs().max() > 0 for i in range(8)]
    assert sum(changed) >= 4  # independent draws: most images change


@pytest.mark.parametrize(
    "name, params, count",
    [
        # 9 signed ops x 2 signs + 5 unsigned, in sequences of N
        ("randaugment", {}, (9 * 2 + 5) ** 2),
        ("randaugment", {"num_ops": 1, "magnitude": 0}, 14),  # magnitude 0: no sign
        # every bin of 9 signed ops (bin 0 at magnitude 0 once), Solarize's 31 bins,
        # Posterize's 7 distinct bit depths (8..2) over its 31 bins, Identity,
        # AutoContrast, Equalize
        ("trivialaugment", {}, 9 * (1 + 30 * 2) + 31 + 7 + 3),
    ],
)
def test_the_adversary_enumerates_every_draw_of_the_baselines_op_space(name, params, count):
    """The victim's augmented images are among the enumerated views, exactly: what its
    gradient determines is the private image under one public draw."""
    method = privbench.registries()["method"].create(name, **params)
    method.setup(num_classes=10, input_shape=(3, 16, 16), num_clients=2, seed=0)
    x = torch.rand(6, 3, 16, 16)
    views = method.augmented_views(x)
    assert views.shape == (count, *x.shape)
    assert len(set(method.draws(16, 16))) == count  # no draw twice
    for seed in range(4):
        seen = method.augment(x, torch.Generator().manual_seed(seed))
        nearest = ((views - seen[None]) ** 2).flatten(2).mean(2).min(0).values
        assert float(nearest.max()) < 1e-12, (seed, nearest)


def test_randaugment_refuses_a_magnitude_beyond_its_bins():
    with pytest.raises(ParameterError, match="magnitude"):
        privbench.run(tiny_config(method="randaugment", method_params={"magnitude": 40}))


def test_policy_guess_is_validated():
    method = _method()
    with pytest.raises(ParameterError, match="guess"):
        method.attack_view("psychic", torch.Generator())
    assert math.isfinite(float(method.scores(method.theta).sum()))


def test_a_randaugment_row_scores_the_augmented_image_its_gradient_gives_away():
    """End to end: DLG on a RandAugment victim rebuilds the augmented image; against the
    private image under the best public draw it scores at least as high as against the
    image as is, and a method without augmentation has no such score."""
    attack = {"names": ("dlg",), "params": {"iters": 30}}
    (rand,) = privbench.run(tiny_config(method="randaugment", attack=attack))
    (plain,) = privbench.run(tiny_config(attack=attack))
    assert rand.status == plain.status == "ok"
    assert rand.psnr_augmented is not None and rand.psnr_augmented >= rand.psnr
    assert plain.psnr_augmented is None


def test_trained_views_replay_the_op_pairs_the_loss_trains_on(monkeypatch):
    """Hand-checked: the copies ``trained_views`` replays from a generator are the images
    ``local_loss`` trains on with a generator at the same state (expansion 3)."""
    import privbench.augmenters.fedavp as fedavp

    method = _method(h1=4, h2=4, expansion=3)
    x = torch.rand(2, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    y = torch.tensor([0, 2])
    received = {"policy": method.theta}
    trained = []

    def spy(model, x, y, scores, pairs, draws, **kw):
        xr = x.repeat(kw["expansion"], 1, 1, 1)
        trained.append(fedavp.apply_pairs(xr, pairs, draws, kw["value_range"]))
        return real(model, x, y, scores, pairs, draws, **kw)

    real = fedavp.weighted_augmented_loss
    monkeypatch.setattr(fedavp, "weighted_augmented_loss", spy)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 3))
    method.local_loss(model, x, y, received=received, generator=torch.Generator().manual_seed(7))
    views = method.trained_views(x, received, torch.Generator().manual_seed(7))
    assert views.shape == (3, 2, 1, 8, 8)
    assert torch.equal(views.flatten(0, 1), trained[0])
    other = method.trained_views(x, received, torch.Generator().manual_seed(8))
    assert not torch.equal(views, other)  # the draws, not a fixed augmentation


def test_a_fedavp_row_scores_the_copies_its_victim_trained_on(monkeypatch, tmp_path):
    """End to end: the engine replays the victim's private op pairs, and the row's
    ``psnr_augmented`` is the reconstruction scored against exactly the copies the
    victim's gradient was computed on (recorded here as the step ran)."""
    import numpy as np

    import privbench.augmenters.fedavp as fedavp
    from privbench.evaluation.metrics import score_reconstruction

    steps = []

    def spy(model, x, y, scores, pairs, draws, **kw):
        xr = x.repeat(kw["expansion"], 1, 1, 1)
        out = fedavp.apply_pairs(xr, pairs, draws, kw["value_range"])
        steps.append((x.detach().clone(), out.detach().view(kw["expansion"], *x.shape)))
        return real(model, x, y, scores, pairs, draws, **kw)

    real = fedavp.weighted_augmented_loss
    monkeypatch.setattr(fedavp, "weighted_augmented_loss", spy)
    cfg = tiny_config(
        method="fedavp",
        method_params={"h1": 8, "h2": 8},
        attack=dict(names=("dlg@identity",), params={"iters": 5}, batch=2),
    )
    (row,) = privbench.run(cfg, out=str(tmp_path))
    assert row.status == "ok", row.error
    with np.load(tmp_path / row.reconstruction_file) as saved:
        gt, rec = torch.from_numpy(saved["ground_truth"][0]), saved["reconstruction"][0]
    (views,) = [v for x, v in steps if x.shape == gt.shape and torch.equal(x.double(), gt.double())]
    expected = score_reconstruction(gt, torch.from_numpy(rec), views=views).psnr_augmented
    assert row.psnr_augmented == pytest.approx(expected, abs=1e-9)
    assert row.psnr_augmented >= row.psnr


@pytest.mark.parametrize("expansion", [1, 3])
def test_copies_view_solves_each_copys_unknown_score_from_the_gradient(expansion):
    """Hand-checked: on the copies the victim really trained on, the copies view's
    message is the observed gradient once each copy's weight (its drawn pair's score,
    which the attacker cannot see) is solved against it; with the expected score for
    every copy (no target to solve against) it is not. With one copy per image this is
    the identity view with its weight solved."""
    from privbench.attacks.gradient import VictimSimulator
    from privbench.augmenters.fedavp import copy_major
    from privbench.engine.experiment import Experiment
    from privbench.evaluation.attacking import trained_views

    cfg = tiny_config(
        method="fedavp",
        method_params={"h1": 8, "h2": 8, "expansion": expansion},
        attack=dict(names=("dlg@copies",), batch=2),
    ).resolve()
    exp = Experiment(cfg)
    out = exp.train()
    (obs,) = [o for o in out.channel.observations if o.kind == "gradient"]
    victim = out.victims[0]
    views = trained_views(exp, obs, victim.images)  # (E, B, C, H, W), replayed
    x, y = views.flatten(0, 1), copy_major(victim.labels, expansion)
    sim = VictimSimulator(obs.context, guess="copies")
    target = sim.target(obs)
    solved = sim.message(obs.kind, x, y, create_graph=False, target=target)
    fixed = sim.message(obs.kind, x, y, create_graph=False)

    def gap(msg):
        diff = sum(((msg[n] - target[n]) ** 2).sum() for n in target)
        return float(torch.sqrt(diff / sum((t**2).sum() for t in target.values())))

    assert gap(solved) < 1e-4
    assert gap(fixed) > 1e-3


def test_copies_weights_are_solved_only_where_records_are_separate_terms():
    """Per-record gradients add up to the message only without BatchNorm (which couples
    a batch's records): on `cnn-bn` the copies view keeps the view's weights."""
    from privbench.attacks.gradient import VictimSimulator
    from privbench.engine.experiment import Experiment

    solves = {}
    for model in ("lenet-sigmoid", "cnn-bn"):
        cfg = tiny_config(
            method="fedavp",
            model=model,
            method_params={"h1": 8, "h2": 8},
            attack=dict(names=("idlg@copies",)),
        ).resolve()
        out = Experiment(cfg).train()
        (obs,) = [o for o in out.channel.observations if o.kind == "gradient"]
        solves[model] = VictimSimulator(obs.context, guess="copies").solves_weights(obs.kind)
    assert solves == {"lenet-sigmoid": True, "cnn-bn": False}


def test_copies_view_optimises_a_dummy_per_augmented_copy(tmp_path):
    """With ``expansion`` 3 and a batch of 2, DLG's and IG's copies views rebuild six
    images (copy-major, each copy keeping its image's label) and each victim image is
    scored by the best of them against the copies it trained on."""
    import numpy as np

    attack = {"names": ("dlg@copies", "ig@copies"), "params": {"iters": 3}, "batch": 2}
    cfg = tiny_config(
        method="fedavp", method_params={"h1": 8, "h2": 8, "expansion": 3}, attack=attack
    )
    rows = privbench.run(cfg, out=str(tmp_path))
    for row in rows:
        assert row.status == "ok", row.error
        if row.attack == "worst-case":
            continue
        with np.load(tmp_path / row.reconstruction_file) as saved:
            assert saved["ground_truth"].shape[1] == 2 and saved["reconstruction"].shape[1] == 6
        assert row.psnr_augmented >= row.psnr

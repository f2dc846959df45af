"""ZSDG (Fed-ZDA's zero-shot data generation) and the bn-inversion attack built on it."""

import copy

import pytest
import torch
import torch.nn.functional as F

from privbench.attacks.base import ATTACKS
from privbench.augmenters.base import Augmenter
from privbench.data import load_dataset
from privbench.engine.channel import Observation, PublicContext
from privbench.errors import IncompatibleError
from privbench.evaluation.metrics import psnr
from privbench.models import MODELS
from privbench.nn.batchnorm import BNStatistics, zsdg, zsdg_many


def _cnn_bn():
    return MODELS.entry("cnn-bn").factory((1, 8, 8), 10)


def _train(model, x, y, steps, lr=0.1, batch=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    model.train()
    for _ in range(steps):
        idx = torch.randint(0, len(y), (min(batch, len(y)),), generator=g)
        opt.zero_grad()
        F.cross_entropy(model(x[idx]), y[idx]).backward()
        opt.step()
    return model


@pytest.fixture(scope="module")
def trained():
    data = load_dataset("digits")
    torch.manual_seed(0)
    model = _train(_cnn_bn(), data.x_train, data.y_train, steps=300)
    return model, data


def _bn_loss(model, x):
    stats = BNStatistics(model)
    try:
        model.eval()
        with torch.no_grad():
            model(x)
        return float(stats.loss())
    finally:
        stats.close()


def test_zsdg_lowers_the_bn_loss_and_reaches_the_target_class(trained):
    model, _ = trained
    before = {k: v.clone() for k, v in model.state_dict().items()}
    common = dict(num_classes=10, input_shape=(1, 8, 8), per_class=6, lr=0.1)
    start = zsdg(model, iters=0, generator=torch.Generator().manual_seed(1), **common)
    out = zsdg(model, iters=150, generator=torch.Generator().manual_seed(1), **common)
    assert out.images.shape == (60, 1, 8, 8) and out.labels.tolist() == sorted(out.labels.tolist())
    assert out.bn_loss < 0.2 * start.bn_loss
    assert _bn_loss(model, out.images) == pytest.approx(out.bn_loss, rel=1e-4)
    model.eval()
    with torch.no_grad():
        acc = (model(out.images).argmax(1) == out.labels).float().mean()
    assert acc >= 0.95
    for k, v in model.state_dict().items():  # the model is only read
        assert torch.equal(v, before[k])


def test_zsdg_refuses_a_model_without_batchnorm():
    lenet = MODELS.entry("lenet-sigmoid").factory((1, 8, 8), 10)
    with pytest.raises(IncompatibleError, match="BatchNorm"):
        zsdg(
            lenet,
            num_classes=10,
            input_shape=(1, 8, 8),
            per_class=1,
            iters=1,
            lr=0.1,
            generator=torch.Generator(),
        )


def _observation(model_before, model_after, value_range=(0.0, 1.0)):
    before = {k: v.detach().clone() for k, v in model_before.state_dict().items()}
    after = model_after.state_dict()
    ctx = PublicContext(
        model_name="cnn-bn",
        build_model=_cnn_bn,
        weights_before=before,
        lr=0.1,
        local_steps=1,
        batch_size=4,
        num_images=4,
        num_classes=10,
        input_shape=(1, 8, 8),
        value_range=value_range,
        method=Augmenter(),
        augmenter_params={},
    )
    delta = {k: after[k] - before[k] for k in before}
    return Observation(
        round=0, sender=0, receiver="server", kind="update", payload=delta, context=ctx
    )


def test_bn_inversion_of_a_client_that_holds_one_image_beats_random_images(trained):
    """A client trained on a single private image: the BatchNorm statistics of its
    uploaded model describe that image, and inverting them recovers it better than
    random images do."""
    _, data = trained
    torch.manual_seed(3)
    start = _cnn_bn()
    client = _cnn_bn()
    client.load_state_dict(start.state_dict())
    secret, label = data.x_train[7:8], data.y_train[7:8]
    _train(client, secret.expand(8, -1, -1, -1), label.expand(8), steps=200, batch=8)
    attack = ATTACKS.create("bn-inversion", samples_per_class=2, iters=300)
    rec = attack.reconstruct(
        _observation(start, client), generator=torch.Generator().manual_seed(0)
    )
    truth = secret[0].numpy()
    best = max(psnr(truth[None], r[None].numpy()) for r in rec.images)
    g = torch.Generator().manual_seed(0)
    rand = max(psnr(truth[None], torch.rand(1, 1, 8, 8, generator=g).numpy()) for _ in range(20))
    assert best > rand + 3.0, (best, rand)


def test_zsdg_many_solves_each_models_problem_as_if_alone(trained):
    """The vectorised path (one vmap over models) equals one ZSDG run per model. In
    float64: in float32 the two summation orders part by up to 2e-3 in a few pixels
    after 25 Adam steps on one thread (not on two), rounding that the clamp to the box
    and Adam's normalised steps amplify, not wiring."""
    model, data = trained
    other = _train(_cnn_bn(), data.x_train[:200], data.y_train[:200], steps=30, seed=1)
    model, other = copy.deepcopy(model).double(), other.double()
    common = dict(num_classes=10, input_shape=(1, 8, 8), per_class=2, iters=25, lr=0.1)
    for match in ("batch", "image"):
        together = zsdg_many(
            [model, other],
            generators=[torch.Generator().manual_seed(5), torch.Generator().manual_seed(6)],
            box=(0.0, 1.0),
            match=match,
            **common,
        )
        for m, seed, got in zip((model, other), (5, 6), together, strict=True):
            alone = zsdg(
                m,
                generator=torch.Generator().manual_seed(seed),
                box=(0.0, 1.0),
                match=match,
                **common,
            )
            assert got.images.dtype == torch.float64
            torch.testing.assert_close(got.images, alone.images, rtol=1e-9, atol=1e-9)
            assert got.bn_loss == pytest.approx(alone.bn_loss, rel=1e-9)

"""Fed-ZDAC and Fed-ZDAS: federated training with zero-shot generated data (Fed-ZDA).

Fed-ZDAC's clients, or Fed-ZDAS's server, generate labelled images from a model alone
with ZSDG (Fed-ZDA's Algorithm 1: inputs optimised to match the model's BatchNorm running
statistics and a target class; :mod:`privbench.nn.batchnorm`) and train on them.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from privbench.augmenters.base import AUGMENTERS, ServerRole
from privbench.augmenters.synthetic import SyntheticAugmenter, SyntheticClient
from privbench.engine.federated import minibatches
from privbench.engine.seeding import seeded
from privbench.nn.batchnorm import zsdg_many
from privbench.registry import Param

ZSDG_PARAMS = (
    Param("zsdg_per_class", int, 2, "ZSDG images generated per class (per model)", low=1),
    Param("zsdg_iters", int, 100, "Adam iterations of ZSDG on the inputs", low=1),
    Param("zsdg_lr", float, 0.1, "Adam step size of ZSDG", low=0.0, low_open=True),
    Param(
        "start_round",
        int,
        2,
        "burn-in: rounds before the first augmentation (a poor model generates noise)",
        low=0,
    ),
)


class _ZSDGMethod(SyntheticAugmenter):
    default_model = "cnn-bn"  # ZSDG needs BatchNorm running statistics
    needs_batchnorm = True

    def generate(self, models: list[nn.Module], generators: list[torch.Generator]):
        """One ZSDG problem per model, all as one computation."""
        return zsdg_many(
            models,
            generators=generators,
            num_classes=self.num_classes,
            input_shape=self.input_shape,
            per_class=self.params["zsdg_per_class"],
            iters=self.params["zsdg_iters"],
            lr=self.params["zsdg_lr"],
            box=self.value_range,
        )


class ZDACClient(SyntheticClient):
    """A Fed-ZDAC client: generates its synthetic set from the model it received."""

    def begin_round(self, round, clients, model):
        m = self.method
        if round < m.params["start_round"]:
            for c in clients:
                self.drop_synthetic(c.client_id)
            return
        # Every client inverts the same received model from its own random start.
        gens = [seeded(m.seed, 8, round, c.client_id) for c in clients]
        received = model()
        for c, out in zip(clients, m.generate([received] * len(clients), gens), strict=True):
            self.keep_synthetic(c.client_id, out.images, out.labels)


@AUGMENTERS.register(
    "zdac",
    params=ZSDG_PARAMS,
    description="Fed-ZDAC: each client adds ZSDG data generated from the received global "
    "model to its training set (needs a BatchNorm model; default cnn-bn)",
)
class FedZDAC(_ZSDGMethod):
    name = "zdac"
    Client = ZDACClient

    def attack_synthetic(self, context, count, generator):
        """The attacker runs the same ZSDG on the broadcast model it also holds."""
        model = context.build_model()
        model.load_state_dict(dict(context.weights_before))
        (out,) = self.generate([model], [generator])
        pick = torch.randperm(len(out.labels), generator=generator)[:count]
        return out.images[pick], out.labels[pick]


class ZDASServer(ServerRole):
    """The Fed-ZDAS server: inverts every received client model and trains the
    aggregated model on the pooled synthetic set."""

    server_set: tuple[torch.Tensor, torch.Tensor] | None = None

    def after_aggregate(self, round, model, client_models):
        m = self.method
        models = client_models()
        if round < m.params["start_round"] or not models:
            return
        gens = [seeded(m.seed, 9, round, cid) for cid in models]
        parts = m.generate(list(models.values()), gens)
        x = torch.cat([p.images for p in parts])
        y = torch.cat([p.labels for p in parts])
        self.server_set = (x, y)
        train_on(
            model,
            x,
            y,
            epochs=m.params["server_epochs"],
            lr=m.params["server_lr"],
            batch_size=m.params["server_batch"],
            generator=seeded(m.seed, 10, round),
        )


@AUGMENTERS.register(
    "zdas",
    params=(
        *ZSDG_PARAMS,
        Param("server_epochs", int, 1, "server epochs on the combined synthetic set", low=1),
        Param("server_lr", float, 0.05, "server SGD step size", low=0.0, low_open=True),
        Param("server_batch", int, 10, "server minibatch size", low=1),
    ),
    description="Fed-ZDAS: the server generates class-balanced ZSDG data from every "
    "received client model and trains the aggregated model on it (needs BatchNorm)",
)
class FedZDAS(_ZSDGMethod):
    name = "zdas"
    Server = ZDASServer


def train_on(model, x, y, *, epochs, lr, batch_size, generator, optimizer="sgd", weight_decay=0.0):
    """Central training of ``model`` in place (the server's step of Fed-ZDAS and of
    CVAE fine-tuning): minibatch cross-entropy; the model's train/eval mode is kept."""
    was_training = model.training
    model.train()
    if optimizer == "adam":
        opt = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=weight_decay)
    else:
        opt = torch.optim.SGD(model.parameters(), lr=lr, weight_decay=weight_decay)
    # Local SGD's batches: a shuffle per epoch, no BatchNorm batch of one.
    for idx in minibatches(
        model, len(y), epochs=epochs, batch_size=batch_size, generator=generator
    ):
        opt.zero_grad()
        F.cross_entropy(model(x[idx]), y[idx]).backward()
        opt.step()
    model.train(was_training)


__all__ = ["FedZDAC", "FedZDAS", "train_on"]

"""What a FedAvP client's policy update gives away: its label distribution.

``policy-inference`` (server threat) is a shadow-model attack. The server knows the
global model and policy the client started from, its public training recipe (lr, batch
size, steps, sample count) and holds labelled data from the same distribution (the
run's test split, ``PublicContext.public_data``). For every class c it replays FedAvP's
local training on a shadow client holding only class-c images, as many as the victim,
and records the policy update u_c. The victim's update is then explained as a
non-negative mix of those, min ||delta - U pi|| over pi >= 0 (scipy's NNLS), and pi,
normalised, is the estimated label histogram. The score is its total-variation
distance to the true histogram (0 = exact; compare FedMix, whose y-bar gives the
histogram away outright, and a uniform guess).
"""

from __future__ import annotations

import math

import numpy as np
import torch

from privbench.attacks.base import ATTACKS, Attack, Reconstruction
from privbench.errors import IncompatibleError
from privbench.registry import Param


def flatten(payload, keys) -> torch.Tensor:
    return torch.cat([payload[k].detach().flatten().double() for k in keys])


def decompose(directions: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, float]:
    """The label histogram pi >= 0, sum 1, with target ~ directions (d, K) @ pi (NNLS),
    and the residual norm. A target nothing explains gives the uniform histogram."""
    from scipy.optimize import nnls  # where it runs (metrics.py says why)

    pi, residual = nnls(directions.double().numpy(), target.double().numpy())
    if pi.sum() <= 0:
        pi = np.ones(directions.shape[1])
    return torch.as_tensor(pi / pi.sum()), float(residual)


@ATTACKS.register(
    "policy-inference",
    params=(
        Param("shadow_runs", int, 1, "shadow trainings averaged per class", low=1),
        Param("aux_per_class", int, 64, "public images per class the attacker draws from", low=1),
    ),
    description="infer a FedAvP client's label distribution from its policy update "
    "(shadow clients per class + non-negative least squares)",
)
class PolicyInference(Attack):
    name = "policy-inference"
    consumes = ("policy",)
    target = "labels"

    def reconstruct(self, observation, *, generator, seen=()):
        ctx = observation.context
        method = ctx.method if ctx is not None else None
        theta = method.policy_state(ctx.received) if method is not None else None
        if theta is None or "num_samples" not in observation.payload:
            raise IncompatibleError(
                "policy-inference needs a client's policy update with its training recipe "
                "(method fedavp, --threat server)"
            )
        if ctx.public_data is None:
            raise IncompatibleError("policy-inference needs public data of the distribution")
        keys = list(theta)
        target = flatten(observation.payload, keys)  # (d,)
        n = int(observation.payload["num_samples"])
        epochs = max(1, round(ctx.local_steps / math.ceil(n / ctx.batch_size)))
        xa, ya = ctx.public_data
        columns = []
        for c in range(ctx.num_classes):
            pool = torch.nonzero(ya == c).flatten()[: self.params["aux_per_class"]]
            u = torch.zeros_like(target)
            if len(pool):
                for _ in range(self.params["shadow_runs"]):
                    pick = pool[torch.randint(len(pool), (n,), generator=generator)]
                    model = ctx.build_model()
                    model.load_state_dict(dict(ctx.weights_before))
                    _, shadow = method.train_policy(
                        model,
                        xa[pick],
                        ya[pick],
                        theta,
                        epochs=epochs,
                        batch_size=ctx.batch_size,
                        lr=ctx.lr,
                        generator=generator,
                        private=generator,
                        algorithm=ctx.algorithm,
                    )
                    u += flatten({k: shadow[k] - theta[k] for k in keys}, keys)
                u /= self.params["shadow_runs"]
            columns.append(u)
        hist, residual = decompose(torch.stack(columns, dim=1), target)
        meta = {"label_hist": hist, "residual": residual, "shadow_epochs": epochs}
        return Reconstruction(torch.empty(0, *ctx.input_shape), None, meta)

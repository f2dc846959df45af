"""Attacks on shared artifacts (no gradients): what averaged data gives away.

``averaged-data`` reads the FedMix/NaiveMix means a client shared (server threat) or
the X_g entries the server broadcast (curious client):

- as M_k -> 1 the means *are* the private images (M_k = 1: exact recovery);
- y-bar gives away the client's label distribution (scored against the true histogram);
- ``--deaverage``: regress every observed mean on its label mix, X-bar ~ Y-bar P, and
  return the per-class prototypes P_c of the classes the victim holds — a de-averaging
  that turns one mean per client into one image per class, pooled across clients.
"""

from __future__ import annotations

import torch

from privbench.attacks.base import ATTACKS, Attack, Reconstruction
from privbench.registry import Param


def class_prototypes(
    means: torch.Tensor, label_mix: torch.Tensor, ridge: float = 1e-3
) -> torch.Tensor:
    """Least squares P (K, C, H, W) with means (n, C, H, W) ~ label_mix (n, K) @ P."""
    X = means.flatten(1).double()  # (n, d)
    Y = label_mix.double()  # (n, K)
    k = Y.shape[1]
    P = torch.linalg.solve(Y.T @ Y + ridge * torch.eye(k, dtype=Y.dtype), Y.T @ X)  # (K, d)
    return P.float().reshape(k, *means.shape[1:])


@ATTACKS.register(
    "averaged-data",
    params=(
        Param(
            "deaverage",
            bool,
            False,
            "reconstruct per-class prototypes by regressing "
            "all observed means on their label mix (else: the means themselves)",
        ),
    ),
    description="rebuild private images and the label distribution from shared FedMix means "
    "(server or curious client)",
)
class AveragedDataAttack(Attack):
    name = "averaged-data"
    consumes = ("averaged_data",)
    target = "dataset"

    def reconstruct(self, observation, *, generator, seen=()):
        xbar, ybar = observation.payload["x"], observation.payload["y"]  # (M, C, H, W), (M, K)
        meta = {"label_hist": ybar.mean(0), "means": len(xbar)}  # chunks are ~equal size
        if not self.params["deaverage"]:
            return Reconstruction(xbar.clone(), ybar.argmax(1), meta)
        pool = [o for o in seen if o.kind == "averaged_data"]
        xs = torch.cat([o.payload["x"] for o in pool])
        ys = torch.cat([o.payload["y"] for o in pool])
        protos = class_prototypes(xs, ys)
        held = torch.nonzero(ybar.sum(0) > 0).flatten()  # classes the victim's means contain
        return Reconstruction(protos[held], held, {**meta, "pooled_means": len(xs)})

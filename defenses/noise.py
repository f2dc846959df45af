"""Gaussian noise on shared artifacts, and update pruning.

``artifact-noise`` adds N(0, sigma^2) to every floating tensor of a shared artifact
(averaged data, synthetic data, policy, generator, label counts) before it enters the
channel, except the labels of shared data (averaged or synthetic ``y``): FedMix's
appendix I noises the images only; ``noise_labels`` noises those too. Images stay
unclipped, so the noise has no bounded sensitivity to be calibrated against: it gives
**no formal DP guarantee**, and the row says ``epsilon = null``.

``prune`` (GradAttack's defense) zeroes the smallest ``prune`` fraction (by magnitude)
of each update's entries, per tensor, and sends the result in a sparse encoding (int32
index + value per nonzero) when that is smaller than the dense one.
"""

from __future__ import annotations

import torch

from privbench.defenses.base import DEFENSES, Defense
from privbench.registry import Param

ARTIFACT_KINDS = (
    "averaged_data",
    "synthetic_data",
    "policy",
    "generator",
    "bn_stats",
    "label_counts",
)
# The label part of shared data, left clean unless ``noise_labels`` (FedMix appendix I).
LABEL_KEYS = {"averaged_data": ("y",), "synthetic_data": ("y",)}


@DEFENSES.register(
    "artifact-noise",
    params=(
        Param("sigma", float, 0.1, "std of the Gaussian noise added to shared artifacts", low=0.0),
        Param(
            "noise_labels",
            bool,
            False,
            "also noise the labels of shared data (averaged/synthetic y); FedMix's appendix I "
            "noises the images only",
        ),
    ),
    description="Gaussian noise on shared artifacts (averaged/synthetic data, policies, "
    "generators); no formal guarantee",
)
class ArtifactNoise(Defense):
    name = "artifact-noise"
    acts_on = ARTIFACT_KINDS

    def __init__(self, **params):
        super().__init__(**params)
        self.sigma = self.params["sigma"]
        self._messages = 0

    def privatize_artifact(self, round, client_id, kind, payload):
        if kind not in ARTIFACT_KINDS or self.sigma == 0:
            return payload
        self._messages += 1
        gen = self.generator(round, client_id, self._messages)
        clean = () if self.params["noise_labels"] else LABEL_KEYS.get(kind, ())
        return {
            k: v + torch.randn(v.shape, generator=gen) * self.sigma
            if v.dtype.is_floating_point and k not in clean
            else v
            for k, v in payload.items()
        }


def sparse_bytes(payload) -> int:
    """COO size: one int32 flat index and one value per nonzero entry."""
    return sum(int((t != 0).sum()) * (4 + t.element_size()) for t in payload.values())


@DEFENSES.register(
    "prune",
    params=(
        Param(
            "prune",
            float,
            0.9,
            "fraction of each tensor's smallest-magnitude entries set to zero",
            low=0.0,
            high=1.0,
            high_open=True,
        ),
    ),
    description="gradient pruning (GradAttack): zero the smallest entries of each update; "
    "sparse encoding on the wire; no formal guarantee",
)
class Prune(Defense):
    name = "prune"
    masks_message = True  # which entries survive is visible on the wire

    def __init__(self, **params):
        super().__init__(**params)
        self.fraction = self.params["prune"]

    def privatize_update(self, round, client_id, kind, payload):
        out = {}
        for name, t in payload.items():
            k = int(self.fraction * t.numel())
            if not t.dtype.is_floating_point or k == 0:
                out[name] = t
                continue
            # The k-th smallest magnitude is the cut; ties at the cut are pruned too.
            cut = t.detach().abs().flatten().kthvalue(k).values
            out[name] = torch.where(t.abs() > cut, t, torch.zeros_like(t))
        return out

    def encoding(self, kind, payload):
        dense = sum(t.element_size() * t.numel() for t in payload.values())
        sparse = sparse_bytes(payload)
        return ("sparse-coo-int32", sparse) if sparse < dense else None

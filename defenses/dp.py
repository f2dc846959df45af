"""Client-level differential privacy: DP-FedAvg (McMahan et al. 2018; Geyer et al. 2017).

Each client's update (new weights - global weights) is clipped to L2 norm ``clip`` C.
The update covers the trainable parameters only: BatchNorm's running statistics are
statistics of the client's data that clipping cannot bound (and noise can make a
variance negative), so every party's model has them replaced by GroupNorm (Opacus'
``ModuleValidator.fix``), as under DP-SGD.

Central mode (the default): the server adds the clipped updates with equal weights and
divides by the expected number of clients qN, not the number that came (McMahan et al.
2018's fixed-denominator estimator, whose sensitivity is C / (qN)), then adds
N(0, (z C / (qN))^2); the curious server itself still sees clipped, un-noised updates
(central DP trusts the aggregator). Local mode (``local=true``): each client adds
N(0, (z C)^2) to its own update before sending.

Accounting with Opacus' RDP accountant, at the client level: central under Poisson
client sampling (``--client-sampling poisson``, the default here) — the sampled Gaussian
mechanism at q = m/N for each round, except that the attacked round's victims were made
to take part (q = 1 for them that round), so the reported epsilon, the largest over
clients, composes those rounds at q = 1. Central under fixed-size sampling: Opacus has no
accountant for sampling without replacement, so no epsilon is reported. Local — for each
client, a Gaussian mechanism (q = 1) per round it took part in; the largest epsilon.

``target_epsilon`` picks z instead of ``noise_multiplier``: the smallest z whose epsilon,
for a client that takes part in every round it can, lies within 0.01 below the target
(Opacus' ``get_noise_multiplier`` bisection, on the history above: the forced rounds at
q = 1 included). The row still reports the accountant's epsilon of what ran.
"""

from __future__ import annotations

import math
import warnings

import torch

from privbench.defenses.base import DEFENSES, Defense, PrivacySpend
from privbench.errors import IncompatibleError, ParameterError
from privbench.nn.batchnorm import batchnorm_layers
from privbench.registry import Param

DELTA = Param(
    "delta",
    float,
    1e-5,
    "target delta of the (epsilon, delta) guarantee",
    low=0.0,
    high=1.0,
    low_open=True,
    high_open=True,
)


def rdp_epsilon(*, noise_multiplier: float, sample_rate: float, steps: int, delta: float) -> float:
    """Epsilon of ``steps`` sampled Gaussian mechanisms, from Opacus' RDP accountant."""
    from opacus.accountants import RDPAccountant

    if steps == 0:
        return 0.0
    acc = RDPAccountant()
    acc.history = [(noise_multiplier, sample_rate, steps)]
    return float(acc.get_epsilon(delta))


def client_epsilon(history, delta: float) -> float:
    """Epsilon of a composition [(noise multiplier, sample rate, steps), ...] from Opacus'
    RDP accountant (entries with no steps dropped)."""
    from opacus.accountants import RDPAccountant

    history = [h for h in history if h[2] > 0]
    if not history:
        return 0.0
    acc = RDPAccountant()
    acc.history = history
    return float(acc.get_epsilon(delta))


def calibrate_noise(target: float, delta: float, schedule, tolerance: float = 0.01) -> float:
    """The noise multiplier whose epsilon over ``schedule(z)`` (an accountant history)
    lies within ``tolerance`` below ``target``: Opacus' ``get_noise_multiplier``
    bisection, over a history of several (q, steps) parts."""

    def eps(z: float) -> float:
        with warnings.catch_warnings():
            # Trial z far above the answer have their best RDP order at the edge of
            # Opacus' grid; the answer's lies inside it (tests/test_dpsgd.py).
            warnings.filterwarnings("ignore", message="Optimal order is the")
            return client_epsilon(schedule(z), delta)

    low, high = 0.0, 10.0
    while eps(high) > target:
        low, high = high, 2 * high
        if high > 1e6:
            raise ParameterError(
                f"The 'target_epsilon' parameter of client-dp is unreachable at delta "
                f"{delta:g}. Got {target!r}; a larger epsilon or delta is allowed."
            )
    e_high = eps(high)
    while target - e_high > tolerance:
        mid = (low + high) / 2
        e_mid = eps(mid)
        if e_mid < target:
            high, e_high = mid, e_mid
        else:
            low = mid
    return high


def clip_(payload: dict[str, torch.Tensor], max_norm: float) -> float:
    """Scale the floating tensors of ``payload`` in place to L2 norm <= max_norm; return
    the norm before clipping."""
    floats = [t for t in payload.values() if t.dtype.is_floating_point]
    norm = math.sqrt(sum(float((t.double() ** 2).sum()) for t in floats))
    if norm > max_norm:
        for t in floats:
            t.mul_(max_norm / norm)
    return norm


@DEFENSES.register(
    "client-dp",
    params=(
        Param("clip", float, 1.0, "C: L2 bound on each client's update", low=0.0, low_open=True),
        Param(
            "noise_multiplier",
            float,
            1.0,
            "z: noise std in units of C (ignored with --target-epsilon)",
            low=0.0,
        ),
        Param(
            "target_epsilon",
            float,
            None,
            "client-level epsilon to reach if a client takes part in every round it can "
            "(the attacked round's victims for certain); z is the smallest that Opacus' RDP "
            "accountant puts within 0.01 below it (needs Poisson sampling when central)",
            low=0.0,
            low_open=True,
            nullable=True,
        ),
        Param(
            "local",
            bool,
            False,
            "each client noises its own update (local DP) instead "
            "of the server noising the average",
        ),
        DELTA,
    ),
    description="DP-FedAvg: clip each update to C, Gaussian noise z*C/(qN) on the "
    "fixed-denominator average (or z*C per update with --local); RDP accountant over "
    "Poisson client sampling",
)
class ClientDP(Defense):
    name = "client-dp"
    guarantee = "client"

    def __init__(self, **params):
        super().__init__(**params)
        p = self.params
        self.clip, self.z = p["clip"], p["noise_multiplier"]
        self.local, self.delta = p["local"], p["delta"]
        self.target = p["target_epsilon"]
        self.update_clip = self.clip
        self.participation: dict[int, set[int]] = {}
        self.server_rounds: set[int] = set()

    def setup(self, **schedule) -> None:
        super().setup(**schedule)
        if self.target is not None:
            self.z = calibrate_noise(self.target, self.delta, self.schedule)

    def schedule(self, z: float) -> list[tuple[float, float, int]]:
        """The accountant's history [(z, q, rounds), ...] of a client that takes part in
        every round it can: all of them locally (a Gaussian mechanism each); centrally,
        each round at q = m/N, the forced ones (the attacked round's victims) at q = 1.
        Raises IncompatibleError where no accountant exists (central, fixed sampling)."""
        if self.local:
            return [(z, 1.0, self.rounds)]
        if self.client_sampling != "poisson":
            raise IncompatibleError(
                "client-dp's target_epsilon needs an accountant, and Opacus has none for "
                "fixed-size client sampling: add --client-sampling poisson, or set "
                "--noise-multiplier instead"
            )
        q = self.clients_per_round / self.num_clients
        certain = sum(1 for r, c in self.forced.items() if c and r < self.rounds) if q < 1 else 0
        return [(z, q, self.rounds - certain), (z, 1.0, certain)]

    @staticmethod
    def prepare_model(model):
        """Running statistics are not part of the clipped update: BatchNorm becomes
        GroupNorm (Opacus' ModuleValidator.fix) in every party's model."""
        if not batchnorm_layers(model):
            return model, False
        from opacus.validators import ModuleValidator

        return ModuleValidator.fix(model), True

    @property
    def expected_clients(self) -> float:
        """qN, the fixed denominator of the central average under Poisson sampling."""
        return self.clients_per_round

    def privatize_update(self, round, client_id, kind, payload):
        self.participation.setdefault(client_id, set()).add(round)
        # Work in update units: a FedSGD gradient g stands for the update -lr * g.
        scale = -self.lr if kind == "gradient" else 1.0
        update = {
            k: v.detach().clone() * scale if v.dtype.is_floating_point else v.clone()
            for k, v in payload.items()
        }
        clip_(update, self.clip)
        if self.local and self.z > 0:
            gen = self.generator(round, client_id)
            for v in update.values():
                if v.dtype.is_floating_point:
                    v.add_(torch.randn(v.shape, generator=gen) * (self.z * self.clip))
        return {k: v / scale if v.dtype.is_floating_point else v for k, v in update.items()}

    def aggregation_weight(self, client_id, num_samples):
        return 1.0  # equal weights keep each client's sensitivity at C / m

    def privatize_aggregate(self, round, global_state, new_state, num_clients):
        self.server_rounds.add(round)
        if self.local:
            return new_state
        denominator = num_clients
        if self.client_sampling == "poisson":
            # The mean over the clients that came, rescaled to sum / qN.
            denominator = self.expected_clients
            scale = num_clients / denominator
            new_state = {
                k: global_state[k] + (v - global_state[k]) * scale
                if v.dtype.is_floating_point
                else v
                for k, v in new_state.items()
            }
        if self.z == 0:
            return new_state
        std = self.z * self.clip / denominator
        gen = self.generator(round, self.num_clients)  # the server: an id no client has
        return {
            k: v + torch.randn(v.shape, generator=gen) * std if v.dtype.is_floating_point else v
            for k, v in new_state.items()
        }

    def privacy_spent(self):
        if self.z == 0:
            return PrivacySpend(math.inf, self.delta, "rdp (no noise: no guarantee)", "client")
        if self.local:
            worst = max((len(r) for r in self.participation.values()), default=0)
            eps = rdp_epsilon(
                noise_multiplier=self.z, sample_rate=1.0, steps=worst, delta=self.delta
            )
            return PrivacySpend(eps, self.delta, "rdp (local Gaussian, per client)", "client")
        if self.client_sampling != "poisson":
            return PrivacySpend(
                None,
                None,
                "none: Opacus has no accountant for fixed-size client sampling "
                "(use --client-sampling poisson)",
                "client",
            )
        q = self.clients_per_round / self.num_clients
        certain = sum(1 for r in self.server_rounds if self.forced.get(r))
        history = [(self.z, q, len(self.server_rounds) - certain), (self.z, 1.0, certain)]
        eps = client_epsilon(history, self.delta)
        note = f" and q=1 in {certain} forced round{'s' * (certain != 1)}" if certain else ""
        note = note if q < 1 else ""  # every client in every round: nothing to add
        return PrivacySpend(eps, self.delta, f"rdp (sampled Gaussian, q={q:g}{note})", "client")

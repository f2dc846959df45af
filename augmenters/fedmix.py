"""Mean-augmented federated learning (MAFL; Yoon et al., ICLR 2021): FedMix and friends.

Every client splits its local data into random chunks of ``mean_size`` (M_k) samples
and shares the mean image x-bar and mean one-hot label y-bar of each chunk (M_k = n_k
when ``mean_size`` is ``all``: one mean per client). The server gathers them into
X_g, Y_g and sends each client the entries of the *other* clients. Local losses, with
(x_i, y_i) a local sample and (x-bar_j, y-bar_j) one entry of X_g, Y_g chosen per
batch (Algorithm 2 of the paper):

- ``naivemix``: x~ = (1-lam) x_i + lam x-bar_j;
  (1-lam) CE(f(x~), y_i) + lam CE(f(x~), y-bar_j)                          (paper eq. 1)
- ``fedmix``: x' = (1-lam) x_i;
  (1-lam) CE(f(x'), y_i) + lam CE(f(x'), y-bar_j) + lam <dCE(f(x'), y_i)/dx', x-bar_j>
  — the first-order Taylor expansion of global mixup around x' (eq. 5).
- ``localmix``: mixup of each local sample with another local sample of the batch.
- ``globalmix``: NaiveMix with M_k = 1, i.e. mixup with other clients' *raw* images.
  It violates privacy on purpose: the upper bound of utility and of leakage.

Privacy knobs from the paper: ``mean_size`` (M_k), ``share_every_round`` (re-share
fresh means each round instead of once), ``server_average`` (m-fold extra averaging of
X_g at the server, appendix J), ``min_share_size`` (cut-off: clients with fewer samples
do not share, appendix H). Gaussian noise on the means (appendix I) is the
``artifact-noise`` defense.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from privbench.augmenters.base import (
    AUGMENTERS,
    Augmenter,
    ClientRole,
    ClientState,
    ServerRole,
    cross_entropy,
    input_gradient,
    per_sample_cross_entropy,
)
from privbench.registry import Param


def _mean_size(text: str) -> int | None:
    return None if text.strip().lower() == "all" else int(text)


LAM = Param(
    "lam",
    float,
    0.05,
    "mixup ratio lambda (paper: 0.05 CIFAR-10, 0.1 CIFAR-100, 0.2 FEMNIST)",
    low=0.0,
    high=1.0,
)
MAFL_PARAMS = (
    LAM,
    Param(
        "mean_size",
        int,
        None,
        "M_k: samples per shared mean ('all': one mean per client)",
        low=1,
        nullable=True,
        parse=_mean_size,
    ),
    Param(
        "share_every_round",
        bool,
        False,
        "re-share fresh means every round a client is "
        "sampled (default: all clients share once, before round 0)",
    ),
    Param("server_average", int, 1, "m: the server averages X_g entries m at a time", low=1),
    Param(
        "min_share_size", int, 0, "cut-off: clients with fewer samples do not share means", low=0
    ),
)


def chunk_means(
    x: torch.Tensor,
    y: torch.Tensor,
    num_classes: int,
    mean_size: int | None,
    generator: torch.Generator,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Means of random chunks of at least ``mean_size`` samples: (n_k // M_k, C, H, W) images
    and (n_k // M_k, K) label distributions. ``mean_size=None`` averages everything."""
    n = len(y)
    chunks = 1 if mean_size is None else max(1, n // mean_size)
    order = torch.randperm(n, generator=generator)
    onehot = F.one_hot(y, num_classes).float()
    xs, ys = [], []
    for idx in torch.tensor_split(order, chunks):
        xs.append(x[idx].mean(dim=0))
        ys.append(onehot[idx].mean(dim=0))
    return torch.stack(xs), torch.stack(ys)


class MeanClient(ClientRole):
    """A MAFL client: shares the means of random chunks of its data."""

    def share(self, round, client: ClientState):
        m = self.method
        if len(client.y) < m.params["min_share_size"]:
            return {}
        gen = torch.Generator().manual_seed(
            (m.seed * 1_000_003 + round * 10_007 + client.client_id) % (2**63)
        )
        xbar, ybar = chunk_means(client.x, client.y, m.num_classes, m.mean_size, gen)
        return {"averaged_data": {"x": xbar, "y": ybar}}


class MeanServer(ServerRole):
    """The MAFL server: gathers every client's means into X_g and sends each client the
    others' entries (again whenever X_g changed)."""

    def __init__(self, method):
        super().__init__(method)
        self.entries: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}  # per sender
        self.version = 0  # bumps when X_g changes; clients are re-sent X_g then
        self.sent: dict[int, int] = {}
        self.generator = torch.Generator().manual_seed(method.seed * 7919 + 17)

    def share_clients(self, round, sampled, everyone):
        if round == 0:
            return everyone  # MAFL: every client sends its means before training starts
        return sampled if self.method.params["share_every_round"] else []

    def receive(self, round, sender, kind, payload):
        self.entries[sender] = (payload["x"], payload["y"])
        self.version += 1

    def global_entries(self, receiver: int) -> tuple[torch.Tensor, torch.Tensor] | None:
        """X_g, Y_g as sent to ``receiver``: every other client's entries, shuffled, then
        averaged ``server_average`` at a time. With m > 1 the groups mix clients, so the
        receiver's own entries are not removed (the server cannot split them out)."""
        m = self.method.params["server_average"]
        owners = [c for c in sorted(self.entries) if m > 1 or c != receiver]
        if not owners:
            return None
        xg = torch.cat([self.entries[c][0] for c in owners])
        yg = torch.cat([self.entries[c][1] for c in owners])
        order = torch.randperm(len(xg), generator=self.generator)
        xg, yg = xg[order], yg[order]
        if m > 1:
            groups = max(1, len(xg) // m)
            xg = torch.stack([g.mean(0) for g in torch.tensor_split(xg, groups)])
            yg = torch.stack([g.mean(0) for g in torch.tensor_split(yg, groups)])
        return xg, yg

    def broadcast(self, round, receiver):
        if self.sent.get(receiver) == self.version:
            return {}  # the client already holds the current X_g
        entries = self.global_entries(receiver)
        if entries is None:
            return {}
        self.sent[receiver] = self.version
        return {"averaged_data": {"x": entries[0], "y": entries[1]}}


class MeanAugmented(Augmenter):
    """MAFL shared by NaiveMix, FedMix and GlobalMix: the clients share means
    (:class:`MeanClient`), the server gathers and broadcasts them (:class:`MeanServer`);
    the local loss mixes with one received entry."""

    shares = ("averaged_data",)
    force_mean_size: int | None = None  # GlobalMix pins M_k = 1
    Client = MeanClient
    Server = MeanServer

    def __init__(self, **params):
        super().__init__(**params)
        if self.force_mean_size is not None:
            self.params["mean_size"] = self.force_mean_size
        self.lam = self.params["lam"]
        self.mean_size = self.params["mean_size"]

    # -- local loss ---------------------------------------------------------------------

    @staticmethod
    def draw_entry(received, generator: torch.Generator) -> int:
        """The X_g entry a client mixes with in one batch (Algorithm 2)."""
        return int(torch.randint(len(received["averaged_data"]["y"]), (1,), generator=generator))

    def pick(self, received, generator: torch.Generator | None):
        """One X_g entry per batch (Algorithm 2); ``generator=None`` (an attacker who does
        not know the pick) gets the mean entry instead: the expected loss, exact for
        FedMix's loss, which is linear in the entry."""
        xg, yg = received["averaged_data"]["x"], received["averaged_data"]["y"]
        if generator is None:
            return xg.mean(0, keepdim=True), yg.mean(0, keepdim=True)
        j = self.draw_entry(received, generator)
        return xg[j : j + 1], yg[j : j + 1]  # (1, C, H, W), (1, K): broadcast over the batch

    def local_loss(self, model, x, y, *, received, generator=None):
        draw = self.step_draw(received, generator)
        if draw is None:  # nothing received yet (cut off, or alone)
            return cross_entropy(model(x), y)
        return self.drawn_loss(model, x, y, **draw)

    def step_draw(self, received, generator):
        """The batch's X_g entry (:meth:`pick`), or None before any is received."""
        if "averaged_data" not in received:
            return None
        xbar, ybar = self.pick(received, generator)
        return {"xbar": xbar, "ybar": ybar}

    def drawn_loss(self, model, x, y, *, xbar, ybar):
        return self.mixed_loss(model, x, y, xbar, ybar)

    # -- what an adversary can enumerate -------------------------------------------------

    def attack_candidates(self, received):
        """Every X_g entry the victim could have mixed with: the server built X_g and
        sent it, so it knows each one."""
        return len(received["averaged_data"]["y"]) if "averaged_data" in received else 0

    def attack_view(self, guess, generator, candidate=None):
        if guess == "enumerate" and candidate is not None:
            return EntryView(self, candidate)
        return self

    def drawn_candidates(self, received, generator, calls):
        if "averaged_data" not in received:
            return []
        return [self.draw_entry(received, generator) for _ in range(calls)]

    def mixed_loss(self, model, x, y, xbar, ybar):  # pragma: no cover - abstract
        raise NotImplementedError


class EntryView(Augmenter):
    """An adversary's view of a MAFL client that mixed with X_g entry ``entry``. The
    entry is a trial input: the views of all entries are one function of it, so an
    enumerating attack runs every candidate in one batched computation."""

    def __init__(self, method: MeanAugmented, entry: int | None, fixed=None):
        super().__init__()
        self.method, self.entry, self.fixed = method, entry, fixed
        self.name = f"{method.name}[entry {entry}]"

    @property
    def recipe(self):
        return self.method

    def trial_inputs(self, received) -> dict[str, torch.Tensor]:
        if self.fixed is not None:
            return dict(self.fixed)
        xg, yg = received["averaged_data"]["x"], received["averaged_data"]["y"]
        j = self.entry
        return {"xbar": xg[j : j + 1], "ybar": yg[j : j + 1]}

    def with_trial_inputs(self, inputs):
        return EntryView(self.method, self.entry, fixed=inputs)

    def local_loss(self, model, x, y, *, received, generator=None):
        entry = self.trial_inputs(received)
        return self.method.mixed_loss(model, x, y, entry["xbar"], entry["ybar"])


def _soft(y: torch.Tensor, num_classes: int) -> torch.Tensor:
    return y if y.dtype.is_floating_point else F.one_hot(y, num_classes).float()


@AUGMENTERS.register(
    "naivemix",
    params=MAFL_PARAMS,
    description="MAFL NaiveMix: mixup of local images with other clients' shared means",
)
class NaiveMix(MeanAugmented):
    name = "naivemix"
    mixes_batches = True  # CE is linear in the label: eq. 1 is CE on a soft-label mix

    def mixed_batch(self, x, y, *, received, generator):
        ys = _soft(y, self.num_classes)
        if "averaged_data" not in received:
            return x, ys
        xbar, ybar = self.pick(received, generator)
        lam = self.lam
        return (1 - lam) * x + lam * xbar, (1 - lam) * ys + lam * ybar.expand(len(x), -1)

    def mixed_loss(self, model, x, y, xbar, ybar):
        lam = self.lam
        logits = model((1 - lam) * x + lam * xbar)  # paper eq. 1
        return (1 - lam) * cross_entropy(logits, y) + lam * cross_entropy(
            logits, ybar.expand(len(x), -1)
        )


@AUGMENTERS.register(
    "fedmix",
    params=MAFL_PARAMS,
    description="MAFL FedMix: first-order Taylor approximation of global mixup from shared means",
)
class FedMix(MeanAugmented):
    name = "fedmix"
    per_sample_grads = "microbatch"  # eq. 5 differentiates through the inputs
    draws_per_step = True  # one X_g entry per batch; eq. 5 is a mean of per-record terms

    def mixed_loss(self, model, x, y, xbar, ybar):
        lam = self.lam
        xs = (1 - lam) * x  # x' = (1 - lam) x_i, (B, C, H, W)

        def own_loss(inputs):
            logits = model(inputs)
            own = per_sample_cross_entropy(logits, y)  # CE(f(x'), y_i), (B,)
            return own.sum(), (logits, own)

        # d CE(f(x'), y_i) / d x' per sample, kept differentiable so the term trains the
        # model (and a gradient attack differentiates through it).
        dx, (logits, own) = input_gradient(own_loss, xs)
        taylor = (dx * xbar).flatten(1).sum(1)  # <dl/dx', x-bar_j>, (B,)
        other = per_sample_cross_entropy(logits, ybar.expand(len(x), -1))  # CE(f(x'), y-bar_j)
        return ((1 - lam) * own + lam * other + lam * taylor).mean()  # paper eq. 5


@AUGMENTERS.register(
    "globalmix",
    params=tuple(p for p in MAFL_PARAMS if p.name != "mean_size"),
    description="PRIVACY-VIOLATING upper bound: mixup with other clients' raw images "
    "(NaiveMix with M_k = 1)",
)
class GlobalMix(NaiveMix):
    name = "globalmix"
    force_mean_size = 1


@AUGMENTERS.register(
    "localmix",
    params=(LAM,),
    description="mixup within the client's own batch; nothing extra shared",
)
class LocalMix(Augmenter):
    name = "localmix"
    per_sample_grads = None  # mixup partners are records of the same batch
    mixes_batches = True

    def mixed_batch(self, x, y, *, received, generator):
        ys = _soft(y, self.num_classes)
        if len(x) < 2:
            return x, ys
        perm = torch.randperm(len(x), generator=generator)
        lam = self.lam
        return (1 - lam) * x + lam * x[perm], (1 - lam) * ys + lam * ys[perm]

    def __init__(self, **params):
        super().__init__(**params)
        self.lam = self.params["lam"]

    def local_loss(self, model, x, y, *, received, generator=None):
        if generator is None or len(x) < 2:
            # The partner permutation is private; the attacker's best guess is the identity,
            # under which mixup reduces to plain cross-entropy.
            return cross_entropy(model(x), y)
        perm = torch.randperm(len(x), generator=generator)
        logits = model((1 - self.lam) * x + self.lam * x[perm])
        ys = _soft(y, self.num_classes)
        return (1 - self.lam) * cross_entropy(logits, ys) + self.lam * cross_entropy(
            logits, ys[perm]
        )

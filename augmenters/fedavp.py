"""FedAvP: federated augmentation-policy search (the FedAvP slides; code alsdml/FedAvP).

Clients share their model update and an update of a shared augmentation *policy*,
never data, means or features.

- Policy: :class:`~privbench.augmenters.ops.PolicyNet` scores the 289 ordered pairs of
  17 image ops; a pair is drawn per image from (1 - eps) * s / sum(s) + eps / 289 and
  its magnitudes uniformly within each op's range.
- Local step (``expansion`` augmented copies of each image): the model takes an SGD
  step on the per-sample losses weighted by the sampled pairs' scores (step clipped to
  norm ``grad_clip``). Every ``policy_every`` steps the client also takes a validation
  batch without augmentation from its own data, and the policy takes an SGD step on the
  federated meta-policy loss -<clip(g_aug), clip(g_val)>, where g_aug is the weighted
  augmented gradient (a function of the policy through the scores) and g_val the
  validation gradient at the updated weights. First-order: g_val is a constant and the
  model graph is dropped after the step.
- Server: the model by the run's trainer (FedAvg); the policy Reptile-style,
  theta <- theta - server_lr * clip(sum_k w_k (theta - theta_k)), w_k proportional to
  data size (norm clipped to ``grad_clip`` like the reference code).
- ``personalize``: a client starts each round from its own last policy (local
  adaptation) instead of the global one. ``policy_every = 5`` is the reference code's
  fast variant (FedAvP-Fast); 1 is the full method.

Messages: the global policy goes down as ``policy`` with the model; each client sends
``policy`` up after training: theta_k - theta plus its sample count.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn
from torch.func import functional_call

from privbench.augmenters.base import (
    AUGMENTERS,
    Augmenter,
    ClientRole,
    ServerRole,
    cross_entropy,
    per_sample_cross_entropy,
)
from privbench.augmenters.ops import (
    NUM_OPS,
    NUM_PAIRS,
    PolicyNet,
    apply_all_pairs,
    apply_pairs,
    sample_pairs,
    sampling_probs,
)
from privbench.engine.federated import minibatches
from privbench.engine.training import LocalTask, LocalTraining
from privbench.errors import IncompatibleError, ParameterError
from privbench.registry import Param

State = dict[str, torch.Tensor]
GUESSES = ("expected", "sample", "identity", "copies")


def clip_coef(grads, max_norm: float) -> torch.Tensor:
    """min(1, C / ||g||) over a list of tensors (a constant: computed without a graph)."""
    norm = torch.sqrt(sum((g.detach() ** 2).sum() for g in grads))
    return torch.clamp(max_norm / (norm + 1e-12), max=1.0)


def reptile_update(
    theta: Mapping[str, torch.Tensor],
    deltas: list[Mapping[str, torch.Tensor]],
    weights: list[float],
    *,
    lr: float,
    max_norm: float,
) -> State:
    """theta - lr * clip(sum_k w_k (theta - theta_k)), w_k = weights / sum(weights).

    ``deltas[k]`` is what client k sent: theta_k - theta.
    """
    total = float(sum(weights))
    if total <= 0:
        return {k: v.clone() for k, v in theta.items()}
    grad = {
        k: -sum(d[k] * (w / total) for d, w in zip(deltas, weights, strict=True)) for k in theta
    }
    coef = clip_coef(list(grad.values()), max_norm)
    return {k: theta[k] - lr * coef * grad[k] for k in theta}


def copy_major(t: torch.Tensor, copies: int) -> torch.Tensor:
    """``copies`` copies of a batch stacked copy-major, (copies * B, ...): how FedAvP's
    step expands its batch (the loss, and the copies scoring replays)."""
    return t.repeat(copies, *([1] * (t.dim() - 1)))


def weighted_augmented_loss(
    model,
    x: torch.Tensor,
    y: torch.Tensor,
    scores: torch.Tensor,
    pairs: torch.Tensor,
    draws: torch.Tensor,
    *,
    expansion: int,
    value_range: tuple[float, float],
    score_norm: bool = False,
) -> torch.Tensor:
    """FedAvP's training loss: each of ``expansion`` copies of image i goes through its
    sampled pair; per-sample cross-entropy weighted by the pair's score."""
    xr, yr = copy_major(x, expansion), copy_major(y, expansion)  # (E B, ...)
    losses = per_sample_cross_entropy(model(apply_pairs(xr, pairs, draws, value_range)), yr)
    w = scores[pairs]
    if score_norm:
        return (losses * w).sum() / w.sum()
    return (losses * w).mean()


def _with_penalty(loss, penalty, params):
    """The trainer's data-free term (FedProx), when it has one."""
    extra = penalty(params) if penalty is not None else None
    return loss if extra is None else loss + extra


_PARAMS = (
    Param("h1", int, 100, "policy embedding size H1", low=1),
    Param("h2", int, 100, "policy MLP hidden size H2", low=1),
    Param("eps", float, 0.4, "share of uniform sampling mixed into the policy", low=0.0, high=1.0),
    Param("expansion", int, 2, "augmented copies of each image per step", low=1),
    Param("policy_lr", float, 0.2, "client's SGD lr on the policy", low=0.0),
    Param("server_lr", float, 0.9, "server's Reptile step size on the policy", low=0.0),
    Param(
        "policy_clip",
        float,
        0.85,
        "norm clip of g_aug and g_val inside the meta-policy loss",
        low=0.0,
        low_open=True,
    ),
    Param(
        "grad_clip",
        float,
        10.0,
        "norm clip of the model step, the policy gradient and the Reptile step",
        low=0.0,
        low_open=True,
    ),
    Param(
        "val_batch",
        int,
        0,
        "validation batch of the meta-policy loss (0: the run's batch size)",
        low=0,
    ),
    Param(
        "policy_every",
        int,
        1,
        "policy step every k model steps (5: the reference FedAvP-Fast variant)",
        low=1,
    ),
    Param("personalize", bool, False, "clients keep and adapt their own policy across rounds"),
    Param("score_norm", bool, False, "normalise the sampled scores to sum 1 in the loss"),
)


class PolicyClient(ClientRole):
    """A FedAvP client: trains model and policy from the policy it received (or, with
    ``personalize``, from its own last policy, ``private[cid]``) and uploads the policy
    update theta_k - theta with its sample count."""

    def __init__(self, method: FedAvP):
        super().__init__(method)
        self._trained: dict[int, int] = {}  # client -> samples it trained on this round

    def local_training(self) -> PolicyTraining:
        return PolicyTraining(self)

    def local_train(self, model, task: LocalTask) -> int:
        """A client's local epochs of model and policy steps (``PolicyTraining``)."""
        m = self.method
        client, x, y = task.client, task.x, task.y
        cid = client.client_id
        start = m.policy_state(client.received)
        if m.params["personalize"] and cid in self.private:
            start = self.private[cid]
        steps, theta = m.train_policy(
            model,
            x,
            y,
            start,
            epochs=task.epochs,
            batch_size=task.batch_size,
            lr=task.lr,
            generator=task.generator,
            private=task.private,
            algorithm=task.algorithm,
        )
        self.private[cid] = theta
        self._trained[cid] = len(y)
        return steps

    def upload(self, round, client):
        n = self._trained.pop(client.client_id, None)
        if n is None:  # no local training this round (a FedSGD gradient)
            return {}
        theta_k = self.private[client.client_id]
        start = self.method.policy_state(client.received)
        delta = {k: theta_k[k] - start[k] for k in start}
        return {"policy": {**delta, "num_samples": torch.tensor(n, dtype=torch.int64)}}


class PolicyServer(ServerRole):
    """The FedAvP server: broadcasts the global policy with the model and updates it
    Reptile-style from the clients' policy updates."""

    def __init__(self, method: FedAvP):
        super().__init__(method)
        self.theta: State = {k: v.clone() for k, v in method.theta.items()}
        self._inbox: list[Mapping[str, torch.Tensor]] = []

    def broadcast(self, round, receiver):
        return {"policy": self.theta}

    def receive(self, round, sender, kind, payload):
        if kind == "policy":
            self._inbox.append(payload)

    def after_aggregate(self, round, model, client_models):
        if not self._inbox:
            return
        p = self.method.params
        self.theta = reptile_update(
            self.theta,
            [{k: m[k] for k in self.theta} for m in self._inbox],
            [float(m["num_samples"]) for m in self._inbox],
            lr=p["server_lr"],
            max_norm=p["grad_clip"],
        )
        self._inbox = []


class PolicyTraining(LocalTraining):
    """FedAvP's local training: model steps and policy steps alternate (Algorithm 2), so
    it replaces plain SGD; a FedSGD step is a plain gradient of the policy loss."""

    def __init__(self, client: PolicyClient):
        self.client = client
        self.replaces = (
            f"method '{client.method.name}' runs its own local training loop (it learns "
            "more than the model)"
        )

    def train(self, model, task: LocalTask) -> int:
        return self.client.local_train(model, task)


@AUGMENTERS.register(
    "fedavp",
    params=_PARAMS,
    description="FedAvP: a shared augmentation policy over 17x17 op pairs, learned by a "
    "federated meta-policy loss and Reptile",
)
class FedAvP(Augmenter):
    name = "fedavp"
    shares = ("policy",)
    Client = PolicyClient
    Server = PolicyServer
    # Its loss is a mean of per-record terms (constant weights w.r.t. the model), but
    # DP-SGD is refused anyway: it would replace the local loop that trains the policy.
    per_sample_grads = "microbatch"
    # The expected and sampled views apply the policy's ops to the dummies: free L-BFGS
    # dummies leave the box and overflow them (every restart diverges on digits).
    attack_image_ops = True
    # What rebuilds its victims (the headline): no ops on the dummies, and a free dummy
    # per augmented copy; ``all-gradient`` tries both beside the expected view.
    attack_guesses = ("identity", "copies")

    def setup(self, *, num_classes, input_shape, num_clients, seed):
        super().setup(
            num_classes=num_classes, input_shape=input_shape, num_clients=num_clients, seed=seed
        )
        p = self.params
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            self.net = PolicyNet(p["h1"], p["h2"])
        # The initial global policy (the server's starting point).
        self.theta: State = {k: v.detach().clone() for k, v in self.net.state_dict().items()}

    # -- the policy ---------------------------------------------------------------------

    def scores(self, theta: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """(289,) sigmoid scores of the policy with parameters ``theta``."""
        return functional_call(self.net, dict(theta), ())

    def policy_state(self, received: Mapping[str, Mapping[str, torch.Tensor]]) -> State:
        if "policy" not in received:
            raise IncompatibleError(
                "fedavp: no global policy among the messages the client received (the "
                "server broadcasts it with the model each round)"
            )
        return {k: received["policy"][k] for k in self.theta}

    # -- local training -----------------------------------------------------------------

    def local_loss(self, model, x, y, *, received, generator=None):
        if generator is None:  # an outsider: the expected loss over the policy
            return self.attack_view("expected", torch.Generator().manual_seed(0)).local_loss(
                model, x, y, received=received
            )
        scores, pairs, draws = self._draw(received, len(y), generator)
        return self._loss(model, x, y, scores, pairs, draws)

    def _draw(self, received, batch: int, generator):
        """The policy's scores and the op pairs (and their draws) a step on ``batch``
        images takes from ``generator``: one per augmented copy. The one place the step
        draws, so :meth:`trained_views` replays exactly what :meth:`local_loss` drew."""
        scores = self.scores(self.policy_state(received)).detach()
        n = batch * self.params["expansion"]
        return scores, *sample_pairs(scores, self.params["eps"], n, generator)

    def trained_views(self, x, received, generator):
        """The ``expansion`` copies of ``x`` under the op pairs :meth:`local_loss` draws
        from ``generator`` (the same draws, in its order): (E, B, C, H, W)."""
        _, pairs, draws = self._draw(received, len(x), generator)
        e = self.params["expansion"]
        with torch.no_grad():
            return apply_pairs(copy_major(x, e), pairs, draws, self.value_range).view(e, *x.shape)

    def _loss(self, model, x, y, scores, pairs, draws):
        return weighted_augmented_loss(
            model,
            x,
            y,
            scores,
            pairs,
            draws,
            expansion=self.params["expansion"],
            value_range=self.value_range,
            score_norm=self.params["score_norm"],
        )

    def policy_gradient(
        self,
        model: nn.Module,
        theta: Mapping[str, torch.Tensor],
        batch: tuple[torch.Tensor, torch.Tensor],
        val: tuple[torch.Tensor, torch.Tensor],
        pairs: torch.Tensor,
        draws: torch.Tensor,
        *,
        lr: float,
        penalty=None,
    ) -> tuple[dict[str, torch.Tensor], list[torch.Tensor], float]:
        """One meta step: (gradient of -<clip(g_aug), clip(g_val)> w.r.t. theta, the
        model's weights after its augmented step, the inner product). First-order:
        g_val is taken at the new weights as a constant."""
        params = dict(model.named_parameters())
        theta_v = {k: v.detach().clone().requires_grad_(True) for k, v in theta.items()}
        scores = self.scores(theta_v)
        loss = _with_penalty(self._loss(model, *batch, scores, pairs, draws), penalty, params)
        g_aug = torch.autograd.grad(loss, list(params.values()), create_graph=True)
        coef = clip_coef(g_aug, self.params["grad_clip"])
        new = [(p - lr * coef * g).detach() for p, g in zip(params.values(), g_aug, strict=True)]
        w_new = {n: t.clone().requires_grad_(True) for n, t in zip(params, new, strict=True)}
        buffers = {k: b.clone() for k, b in model.named_buffers()}  # BN stats stay untouched
        val_loss = cross_entropy(functional_call(model, {**w_new, **buffers}, (val[0],)), val[1])
        g_val = torch.autograd.grad(val_loss, list(w_new.values()))
        ca = clip_coef(g_aug, self.params["policy_clip"])
        cv = clip_coef(g_val, self.params["policy_clip"])
        inner = sum((ca * ga * cv * gv).sum() for ga, gv in zip(g_aug, g_val, strict=True))
        grads = torch.autograd.grad(-inner, list(theta_v.values()))
        return dict(zip(theta_v, grads, strict=True)), new, float(inner.detach())

    def train_policy(
        self,
        model: nn.Module,
        x: torch.Tensor,
        y: torch.Tensor,
        theta: Mapping[str, torch.Tensor],
        *,
        epochs: int,
        batch_size: int,
        lr: float,
        generator: torch.Generator,
        private: torch.Generator,
        algorithm=None,
    ) -> tuple[int, State]:
        """FedAvP's local training from policy ``theta``: (steps taken, the new policy).
        ``model`` is trained in place. Public: the policy-inference attack replays it."""
        p = self.params
        params = dict(model.named_parameters())
        start = {n: t.detach().clone() for n, t in params.items()}
        penalty = None
        if algorithm is not None:

            def penalty(current):
                return algorithm.penalty(current, start)

        theta = {k: v.detach().clone() for k, v in theta.items()}
        n, steps = len(y), 0
        val_size = min(n, p["val_batch"] or batch_size)
        model.train()
        for idx in minibatches(model, n, epochs=epochs, batch_size=batch_size, generator=generator):
            with torch.no_grad():
                scores = self.scores(theta)
            pairs, draws = sample_pairs(scores, p["eps"], len(idx) * p["expansion"], private)
            if steps % p["policy_every"] == 0:
                vidx = torch.randperm(n, generator=private)[:val_size]
                g_theta, new, _ = self.policy_gradient(
                    model,
                    theta,
                    (x[idx], y[idx]),
                    (x[vidx], y[vidx]),
                    pairs,
                    draws,
                    lr=lr,
                    penalty=penalty,
                )
                coef = clip_coef(list(g_theta.values()), p["grad_clip"])
                theta = {k: theta[k] - p["policy_lr"] * coef * g_theta[k] for k in theta}
            else:
                loss = self._loss(model, x[idx], y[idx], scores, pairs, draws)
                loss = _with_penalty(loss, penalty, params)
                g_aug = torch.autograd.grad(loss, list(params.values()))
                coef = clip_coef(g_aug, p["grad_clip"])
                new = [
                    t.detach() - lr * coef * g for t, g in zip(params.values(), g_aug, strict=True)
                ]
            with torch.no_grad():
                for t, v in zip(params.values(), new, strict=True):
                    t.copy_(v)
            steps += 1
        return steps, theta

    # -- what a gradient attacker simulates ----------------------------------------------

    def attack_view(self, guess, generator, candidate=None):
        if guess == "enumerate":  # 289 pairs per image: nothing an attacker enumerates
            guess = "expected"
        if guess not in GUESSES:
            raise ParameterError(
                f"The 'guess' parameter must be one of {', '.join(GUESSES)}. Got {guess!r}."
            )
        return PolicyGuess(self, guess, generator)


class PolicyGuess(Augmenter):
    """How an attacker who knows the global policy, but not the pair drawn for each image,
    models a FedAvP client's loss:

    - ``expected``: sum over all 289 pairs of q(pair) * s(pair) * loss(pair(x)), one fixed
      magnitude draw per op (the victim's loss in expectation over its pair draws);
    - ``sample``: one fixed pair per augmented copy, drawn from the policy like the victim;
    - ``identity``: no augmentation, weighted by the expected score sum(q * s);
    - ``copies``: a free dummy per augmented copy (``expansion`` per image), no op
      applied: the victim's step is a batch of E·B images it cannot see, each of which
      the attacker optimises, so none is forced to be a blend of two copies. Each copy's
      weight, the score of the pair the victim drew for it, is unknown too: iDLG and IG
      solve it against the observed gradient (``free_weights``,
      ``VictimSimulator.solved_gradient``). With the expected score for every copy iDLG
      rebuilt no copy above 30 dB on digits, with the solved ones all three
      (benchmarks/fedavp_copies.py); DLG's free soft labels already scale each term.
    """

    def __init__(self, method: FedAvP, guess: str, generator: torch.Generator):
        super().__init__()
        self.method, self.guess, self.generator = method, guess, generator
        self.name = f"{method.name}[{guess}]"
        # dummies per victim image (VictimSimulator.copies)
        self.copies = method.params["expansion"] if guess == "copies" else 1
        # each dummy's weight (its copy's score) solved against the message
        self.free_weights = guess == "copies"
        self._fixed = None
        if guess == "expected":  # drawn now: the view is the same however many restarts
            self._fixed = torch.rand(2, NUM_OPS, 2, generator=generator)

    def local_loss(self, model, x, y, *, received, generator=None):
        m = self.method
        scores = m.scores(m.policy_state(received)).detach()
        q = sampling_probs(scores, m.params["eps"])
        if self.guess in ("identity", "copies"):  # copies: x holds E·B dummies, y repeated
            return (q * scores).sum() * cross_entropy(model(x), y)
        if self.guess == "sample":
            if self._fixed is None:
                n = len(y) * m.params["expansion"]
                self._fixed = sample_pairs(scores, m.params["eps"], n, self.generator)
            return m._loss(model, x, y, scores, *self._fixed)
        if self._fixed is None:
            self._fixed = torch.rand(2, NUM_OPS, 2, generator=self.generator)
        xs = apply_all_pairs(x, self._fixed, m.value_range)  # (289, B, C, H, W)
        yr = y.repeat(NUM_PAIRS, *([1] * (y.dim() - 1)))
        losses = per_sample_cross_entropy(model(xs.flatten(0, 1)), yr).view(NUM_PAIRS, len(x))
        return ((q * scores)[:, None] * losses).sum(0).mean()

"""Gradient inversion: DLG, iDLG and Inverting Gradients.

All three rebuild the victim's message with the victim's *own* training recipe: the
dummy data go through ``context.augmenter.local_loss`` (so a FedMix client is attacked
with the FedMix loss), for ``context.local_steps`` steps of SGD when the message is a
multi-step ``update``. Only the optimisation of the dummy data differs:

- DLG (Zhu et al. 2019): L-BFGS on dummy images *and* dummy soft labels, squared L2
  distance between gradients.
- iDLG (Zhao et al. 2020): label from the sign of the last layer's weight gradient (the
  row that sums negative), then L-BFGS on the image only.
- IG (Geiping et al. 2020): 1 - cosine similarity + total variation, Adam on the signed
  gradient, box constraint, step-decayed lr, restarts keep the lowest loss.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch.func import functional_call

from privbench.attacks.base import ATTACKS, Attack, Reconstruction
from privbench.channel import Observation, PublicContext
from privbench.errors import IncompatibleError
from privbench.models import classifier_weight_name
from privbench.progress import bar
from privbench.registry import Param


class FunctionalModel:
    """Calls a module with explicit parameter tensors, so gradients flow to them."""

    def __init__(
        self,
        module: torch.nn.Module,
        params: Mapping[str, torch.Tensor],
        buffers: Mapping[str, torch.Tensor],
    ):
        self.module, self.params, self.buffers = module, params, buffers

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        # Fresh buffer copies: BN in train mode updates running stats in place.
        bufs = {k: v.clone() for k, v in self.buffers.items()}
        return functional_call(self.module, {**self.params, **bufs}, (x,))


class VictimSimulator:
    """Re-runs the victim's public training recipe on candidate data, differentiably."""

    def __init__(
        self,
        context: PublicContext,
        *,
        guess: str = "expected",
        generator: torch.Generator | None = None,
    ):
        self.ctx = context
        # How the attacker models private randomness it cannot see (FedAvP's op pairs).
        self.augmenter = context.augmenter.attack_view(
            guess, generator if generator is not None else torch.Generator().manual_seed(0)
        )
        self.module = context.build_model()
        self.module.load_state_dict(dict(context.weights_before))
        self.module.train()  # clients train in train mode (BN uses batch statistics)
        names = [n for n, _ in self.module.named_parameters()]
        self.param_names = names
        self.params0 = {n: context.weights_before[n].detach().clone() for n in names}
        self.buffers = {n: b.detach().clone() for n, b in self.module.named_buffers()}

    def loss(
        self,
        params: Mapping[str, torch.Tensor],
        x: torch.Tensor,
        y: torch.Tensor,
        *,
        penalty: bool = True,
    ) -> torch.Tensor:
        model = FunctionalModel(self.module, params, self.buffers)
        # generator=None: the attacker does not know the victim's private randomness, so
        # the method gives its expected loss (see Augmenter.local_loss).
        loss = self.augmenter.local_loss(model, x, y, received=self.ctx.received, generator=None)
        if penalty and self.ctx.algorithm is not None:
            extra = self.ctx.algorithm.penalty(params, self.params0)
            if extra is not None:
                loss = loss + extra
        return loss

    def step_gradient(
        self, params: dict[str, torch.Tensor], x: torch.Tensor, y: torch.Tensor, create_graph: bool
    ) -> list[torch.Tensor]:
        """The gradient the victim steps with. Under DP-SGD (public ``record_clip`` C):
        the mean of per-record gradients each clipped to C, then the data-free penalty;
        the noise, unknown and zero-mean, is left out."""
        values = list(params.values())
        clip = self.ctx.record_clip
        if clip is None:
            return list(
                torch.autograd.grad(self.loss(params, x, y), values, create_graph=create_graph)
            )
        total = [torch.zeros_like(v) for v in values]
        for i in range(len(y)):
            g = torch.autograd.grad(
                self.loss(params, x[i : i + 1], y[i : i + 1], penalty=False),
                values,
                create_graph=create_graph,
            )
            norm = torch.sqrt(sum((t**2).sum() for t in g))
            factor = torch.clamp(clip / (norm + 1e-6), max=1.0)
            total = [a + factor * t for a, t in zip(total, g, strict=True)]
        grads = [t / len(y) for t in total]
        if self.ctx.algorithm is not None:
            extra = self.ctx.algorithm.penalty(params, self.params0)
            if extra is not None:
                pen = torch.autograd.grad(extra, values, create_graph=create_graph)
                grads = [a + b for a, b in zip(grads, pen, strict=True)]
        return grads

    def message(
        self, kind: str, x: torch.Tensor, y: torch.Tensor, create_graph: bool = True
    ) -> dict[str, torch.Tensor]:
        """What the victim would have sent had its data been (x, y).

        ``gradient``: the loss gradient. ``update``: ``local_steps`` of full-batch SGD,
        reported (like the observation) as new weights minus old, divided by -lr so its
        scale is that of a gradient. Public clipping of the defenses is applied alike.
        """
        params = {n: p.clone().requires_grad_(True) for n, p in self.params0.items()}
        lr = self.ctx.lr
        if kind == "gradient":
            grads = self.step_gradient(params, x, y, create_graph)
            out = dict(zip(self.param_names, grads, strict=True))
        else:
            current = params
            for _ in range(self.ctx.local_steps):
                grads = self.step_gradient(current, x, y, create_graph)
                current = {
                    n: current[n] - lr * g for n, g in zip(self.param_names, grads, strict=True)
                }
            out = {n: (current[n] - self.params0[n]) / -lr for n in self.param_names}
        if self.ctx.update_clip is not None:  # DP-FedAvg: ||lr * message|| <= C
            norm = lr * torch.sqrt(sum((t**2).sum() for t in out.values()))
            factor = torch.clamp(self.ctx.update_clip / (norm + 1e-12), max=1.0)
            out = {n: t * factor for n, t in out.items()}
        return out

    def target(self, observation: Observation) -> dict[str, torch.Tensor]:
        """The observed message on the same scale as :meth:`message`."""
        payload = observation.payload
        if observation.kind == "gradient":
            return {n: payload[n].detach() for n in self.param_names}
        return {n: payload[n].detach() / -self.ctx.lr for n in self.param_names}


def infer_labels(observation: Observation, sim: VictimSimulator) -> torch.Tensor:
    """iDLG's rule, generalised to batches.

    With cross-entropy and non-negative inputs to the last layer, only the true class's
    row of the last weight gradient sums negative. For B images take the classes whose
    rows sum negative, most negative first, and fill up by repeating the most negative
    (a heuristic when labels repeat; exact for B = 1).
    """
    ctx = sim.ctx
    name = classifier_weight_name(sim.module, ctx.num_classes)
    row_sums = sim.target(observation)[name].sum(dim=1)  # (K,)
    order = torch.argsort(row_sums)
    negative = [int(c) for c in order if row_sums[c] < 0]
    labels = negative[: ctx.num_images]
    while len(labels) < ctx.num_images:
        labels.append(negative[0] if negative else int(order[0]))
    return torch.tensor(labels, dtype=torch.long)


def _l2_distance(a: Mapping[str, torch.Tensor], b: Mapping[str, torch.Tensor]) -> torch.Tensor:
    return sum(((a[k] - b[k]) ** 2).sum() for k in b)


def _cosine_distance(a: Mapping[str, torch.Tensor], b: Mapping[str, torch.Tensor]):
    dot = sum((a[k] * b[k]).sum() for k in b)
    na = sum((a[k] ** 2).sum() for k in b).sqrt()
    nb = sum((b[k] ** 2).sum() for k in b).sqrt()
    return 1.0 - dot / (na * nb + 1e-12)


def total_variation(x: torch.Tensor) -> torch.Tensor:
    """Mean absolute difference of neighbouring pixels (Geiping et al.'s TV prior)."""
    dx = (x[:, :, :, 1:] - x[:, :, :, :-1]).abs().mean()
    dy = (x[:, :, 1:, :] - x[:, :, :-1, :]).abs().mean()
    return dx + dy


def shared_means(observation: Observation, seen) -> torch.Tensor:
    """The victim's own averaged images that the same adversary saw (FedMix's x-bar)."""
    means = [
        o.payload["x"] for o in seen if o.kind == "averaged_data" and o.sender == observation.sender
    ]
    if not means:
        raise IncompatibleError(
            f"prior 'mean' needs client {observation.sender}'s averaged_data, which this "
            "adversary never saw (use a method that shares means, e.g. fedmix, and "
            "--threat server)"
        )
    return torch.cat(means)  # (M, C, H, W)


def mean_image_prior(x: torch.Tensor, means: torch.Tensor) -> torch.Tensor:
    """FedAvP slides' FedMix prior ||x' - x_mean||: each dummy image to its nearest mean."""
    dist = ((x[:, None] - means[None]) ** 2).flatten(2).sum(-1).add(1e-12).sqrt()  # (B, M)
    return dist.min(dim=1).values.mean()


class Prior:
    """Method-aware prior from the slides: loss = (1 - a) * matching + a * prior."""

    def __init__(self, kind: str, weight: float, observation: Observation, seen):
        self.kind, self.weight = kind, weight
        self.means = shared_means(observation, seen) if kind == "mean" else None

    def __call__(self, matching: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        if self.kind == "none" or self.weight == 0:
            return matching
        return (1 - self.weight) * matching + self.weight * mean_image_prior(x, self.means)


def _dummy_images(ctx: PublicContext, init: str, generator: torch.Generator) -> torch.Tensor:
    shape = (ctx.num_images, *ctx.input_shape)
    lo, hi = ctx.value_range
    if init == "randn":
        return torch.randn(shape, generator=generator)
    return lo + (hi - lo) * torch.rand(shape, generator=generator)


_ITERS = Param("iters", int, 300, "optimiser iterations", low=1)
_RESTARTS = Param("restarts", int, 1, "independent restarts; the lowest final loss wins", low=1)
_INIT = Param("init", str, "randn", "dummy image init", choices=("randn", "uniform"))
_PRIOR = Param(
    "prior",
    str,
    "none",
    "method-aware prior: 'mean' pulls each dummy image toward the victim's shared FedMix mean",
    choices=("none", "mean"),
)
_PRIOR_WEIGHT = Param(
    "prior_weight",
    float,
    1e-3,
    "alpha: loss = (1 - alpha) * matching + alpha * prior",
    low=0.0,
    high=1.0,
    high_open=True,
)
_GUESS = Param(
    "guess",
    str,
    "expected",
    "how the attacker models augmentation drawn privately by the victim (FedAvP's op "
    "pairs): expected loss over the policy, one sampled draw, or none (identity)",
    choices=("expected", "sample", "identity"),
)
_TOL = Param("tol", float, 1e-12, "stop once the matching loss is below this", low=0.0)


class _LBFGSAttack(Attack):
    """DLG and iDLG share this L-BFGS loop; iDLG fixes the labels first."""

    consumes = ("gradient", "update")
    joint_labels = True

    def reconstruct(self, observation, *, generator, seen=()):
        sim = VictimSimulator(observation.context, guess=self.params["guess"], generator=generator)
        target = sim.target(observation)
        fixed = None if self.joint_labels else infer_labels(observation, sim)
        prior = Prior(self.params["prior"], self.params["prior_weight"], observation, seen)
        best = None
        for restart in range(self.params["restarts"]):
            trial = self._restart(sim, observation.kind, target, fixed, generator, restart, prior)
            if trial is not None and (best is None or trial[0] < best[0]):
                best = trial
        if best is None:
            raise RuntimeError(f"{self.name}: every restart diverged (non-finite loss)")
        return Reconstruction(best[1], best[2], {"loss": best[0]})

    def _restart(self, sim, kind, target, fixed, generator, restart, prior):
        """One L-BFGS run from a fresh init: (final loss, images, labels), or None if it
        diverged (L-BFGS on sigmoid nets can blow up; other restarts may still succeed)."""
        ctx = sim.ctx
        x = _dummy_images(ctx, self.params["init"], generator).requires_grad_(True)
        variables = [x]
        logits = None
        if fixed is None:  # DLG: soft labels are optimised jointly
            logits = torch.randn(
                ctx.num_images, ctx.num_classes, generator=generator
            ).requires_grad_(True)
            variables.append(logits)
        opt = torch.optim.LBFGS(
            variables,
            lr=self.params["attack_lr"],
            max_iter=self.params["max_iter"],
            history_size=100,
        )

        def closure():
            opt.zero_grad()
            y = torch.softmax(logits, dim=1) if fixed is None else fixed
            dist = prior(_l2_distance(sim.message(kind, x, y), target), x)
            dist.backward()
            return dist

        last = float("inf")
        with bar(self.params["iters"], f"{self.name} restart {restart + 1}") as pbar:
            for _ in range(self.params["iters"]):
                loss = opt.step(closure)
                pbar.update(1)
                if loss is None or not torch.isfinite(loss):
                    break
                last = float(loss.detach())
                if last < self.params["tol"]:
                    break
        if not torch.isfinite(x).all() or last == float("inf"):
            return None
        labels = fixed if fixed is not None else logits.detach().argmax(dim=1)
        return last, x.detach().clone(), labels.clone()


_LBFGS_PARAMS = (
    _ITERS,
    _RESTARTS,
    _INIT,
    _TOL,
    _PRIOR,
    _PRIOR_WEIGHT,
    _GUESS,
    Param("attack_lr", float, 1.0, "L-BFGS step size", low=0.0, low_open=True),
    Param("max_iter", int, 20, "L-BFGS inner iterations per step", low=1),
)


@ATTACKS.register(
    "dlg",
    params=_LBFGS_PARAMS,
    description="Deep Leakage from Gradients: L-BFGS on dummy images and soft "
    "labels, L2 gradient distance",
)
class DLG(_LBFGSAttack):
    name = "dlg"
    joint_labels = True


@ATTACKS.register(
    "idlg",
    params=_LBFGS_PARAMS,
    description="improved DLG: label from the last layer's gradient signs, then "
    "L-BFGS on the image",
)
class IDLG(_LBFGSAttack):
    name = "idlg"
    joint_labels = False


@ATTACKS.register(
    "ig",
    params=(
        Param("iters", int, 2000, "Adam iterations", low=1),
        _RESTARTS,
        Param("init", str, "uniform", "dummy image init", choices=("randn", "uniform")),
        Param("attack_lr", float, 0.1, "Adam step size", low=0.0, low_open=True),
        Param("tv", float, 1e-4, "weight of the total-variation prior", low=0.0),
        Param("signed", bool, True, "descend on the sign of the image gradient"),
        _PRIOR,
        _PRIOR_WEIGHT,
        _GUESS,
    ),
    description="Inverting Gradients: cosine distance + TV, Adam on signed gradients, box "
    "constraint, restarts; works on multi-step updates",
)
class InvertingGradients(Attack):
    name = "ig"
    consumes = ("gradient", "update")

    def reconstruct(self, observation, *, generator, seen=()):
        sim = VictimSimulator(observation.context, guess=self.params["guess"], generator=generator)
        target = sim.target(observation)
        ctx = sim.ctx
        lo, hi = ctx.value_range
        labels = infer_labels(observation, sim)
        prior = Prior(self.params["prior"], self.params["prior_weight"], observation, seen)
        iters = self.params["iters"]
        best = None
        for restart in range(self.params["restarts"]):
            x = _dummy_images(ctx, self.params["init"], generator).clamp(lo, hi)
            x.requires_grad_(True)
            opt = torch.optim.Adam([x], lr=self.params["attack_lr"])
            sched = torch.optim.lr_scheduler.MultiStepLR(
                opt, milestones=[int(iters * f) for f in (3 / 8, 5 / 8, 7 / 8)], gamma=0.1
            )
            with bar(iters, f"ig restart {restart + 1}") as pbar:
                for _ in range(iters):
                    opt.zero_grad()
                    loss = prior(
                        _cosine_distance(sim.message(observation.kind, x, labels), target), x
                    )
                    if self.params["tv"] > 0:
                        loss = loss + self.params["tv"] * total_variation(x)
                    loss.backward()
                    if self.params["signed"]:
                        x.grad.sign_()
                    opt.step()
                    sched.step()
                    with torch.no_grad():
                        x.clamp_(lo, hi)  # box constraint: stay a valid image
                    pbar.update(1)
            candidate = sim.message(observation.kind, x.detach(), labels, create_graph=False)
            final = float(_cosine_distance(candidate, target).detach())
            if best is None or final < best[0]:
                best = (final, x.detach().clone())
        return Reconstruction(best[1], labels, {"loss": best[0]})

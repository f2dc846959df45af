"""Federated training: local SGD and server aggregation (FedAvg, FedProx, q-FFL).

State dicts are plain ``{name: tensor}`` maps. Aggregation is weighted by local data
size (McMahan et al. 2017). q-FFL follows q-FedAvg (Li et al. 2020, Algorithm 2).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import nn
from torch.func import functional_call, grad, vmap

from privbench.nn.stacked import stacked_forward, stacked_grads
from privbench.registry import Configurable, Param, Registry

State = dict[str, torch.Tensor]


def clone_state(model_or_state: nn.Module | Mapping[str, torch.Tensor]) -> State:
    state = model_or_state.state_dict() if isinstance(model_or_state, nn.Module) else model_or_state
    return {k: v.detach().clone() for k, v in state.items()}


def check_finite_state(state: Mapping[str, torch.Tensor], rnd: int, lr: float | None) -> None:
    """Raise :class:`DivergedError` when the aggregated model holds NaN or infinity:
    a diverged run is an error row that says so, never an accuracy."""
    from privbench.validation import nonfinite_tensors

    if bad := nonfinite_tensors(state):
        from privbench.errors import DivergedError

        raise DivergedError(
            f"Training diverged in round {rnd}: the aggregated model has non-finite weights "
            f"({', '.join(bad[:3])}{', ...' if len(bad) > 3 else ''}) at learning rate "
            f"{lr:g}; try a smaller --lr."
        )


def state_delta(new: Mapping[str, torch.Tensor], old: Mapping[str, torch.Tensor]) -> State:
    return {k: new[k] - old[k] for k in new}


def weighted_average(
    states: Sequence[Mapping[str, torch.Tensor]], weights: Sequence[float]
) -> State:
    """Weighted mean of floating tensors; integer buffers (BN step counts) take the max."""
    total = float(sum(weights))
    if total <= 0:
        raise ValueError("aggregation weights must sum to a positive number")
    out: State = {}
    for key in states[0]:
        first = states[0][key]
        if first.dtype.is_floating_point:
            acc = torch.zeros_like(first)
            for s, w in zip(states, weights, strict=True):
                acc += s[key] * (w / total)
            out[key] = acc
        else:
            out[key] = torch.stack([s[key] for s in states]).max(dim=0).values
    return out


@dataclass
class ClientResult:
    """What the server receives from one client: its update and public statistics."""

    client_id: int
    delta: State  # new weights - global weights (params and buffers)
    num_samples: float  # aggregation weight: local data size unless a defense overrides
    loss_at_global: float  # F_k(w^t), needed by q-FFL


class Algorithm(Configurable):
    """Server aggregation rule plus an optional local penalty."""

    name = "algorithm"
    needs_loss = False  # True: clients report their loss at the global weights (q-FFL)

    def penalty(
        self, params: Mapping[str, torch.Tensor], global_params: Mapping[str, torch.Tensor]
    ):
        """Extra local loss term on the current parameters (None: no term)."""
        return None

    def aggregate(self, global_state: State, results: Sequence[ClientResult], lr: float) -> State:
        raise NotImplementedError


ALGORITHMS: Registry[Algorithm] = Registry("algorithm")


@ALGORITHMS.register("fedavg", description="FedAvg: data-size-weighted mean of client models")
class FedAvg(Algorithm):
    name = "fedavg"

    def aggregate(self, global_state, results, lr):
        mean_delta = weighted_average([r.delta for r in results], [r.num_samples for r in results])
        # Integer buffers (BN step counts) average to the max delta, i.e. the max count.
        return {k: global_state[k] + mean_delta[k] for k in global_state}


@ALGORITHMS.register(
    "fedprox",
    params=(
        Param("mu", float, 0.01, "proximal weight: local loss + mu/2 ||w - w_global||^2", low=0.0),
    ),
    description="FedProx: FedAvg with a proximal term on local training",
)
class FedProx(FedAvg):
    name = "fedprox"

    def __init__(self, **params):
        super().__init__(**params)
        self.mu = self.params["mu"]

    def penalty(self, params, global_params):
        if self.mu == 0:
            return None
        sq = sum(((p - global_params[n]) ** 2).sum() for n, p in params.items())
        return 0.5 * self.mu * sq


@ALGORITHMS.register(
    "qffl",
    params=(Param("q", float, 1.0, "fairness exponent (q = 0 is FedAvg-like)", low=0.0),),
    description="q-FFL (q-FedAvg): reweights clients by loss^q for fairer accuracy",
)
class QFFL(Algorithm):
    name = "qffl"
    needs_loss = True

    def __init__(self, **params):
        super().__init__(**params)
        self.q = self.params["q"]

    def aggregate(self, global_state, results, lr):
        # q-FedAvg: L = 1/lr; Delta_k = L (w - w_k); deltas weighted by F_k^q and
        # normalised by h_k = q F_k^(q-1) ||Delta_k||^2 + L F_k^q.
        L = 1.0 / lr
        float_keys = [k for k, v in global_state.items() if v.dtype.is_floating_point]
        num = {k: torch.zeros_like(global_state[k]) for k in float_keys}
        h_total = 0.0
        for r in results:
            f = max(r.loss_at_global, 1e-10)
            grads = {k: -L * r.delta[k] for k in float_keys}  # L (w^t - w_k^{t+1})
            sq = float(sum((g.double() ** 2).sum() for g in grads.values()))
            for k in float_keys:
                num[k] += (f**self.q) * grads[k]
            h_total += self.q * f ** (self.q - 1) * sq + L * f**self.q
        out = dict(global_state)
        for k in float_keys:
            out[k] = global_state[k] - num[k] / h_total
        counts = weighted_average([r.delta for r in results], [1.0] * len(results))
        for k, v in global_state.items():
            if not v.dtype.is_floating_point:
                out[k] = v + counts[k]
        return out


LossFn = Callable[[nn.Module, torch.Tensor, torch.Tensor], torch.Tensor]


def local_train(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    loss_fn: LossFn,
    epochs: int,
    batch_size: int,
    lr: float,
    generator: torch.Generator,
    algorithm: Algorithm | None = None,
    momentum: float = 0.0,
    weight_decay: float = 0.0,
    optimizer: str = "sgd",
) -> int:
    """Train ``model`` in place with mini-batch SGD (or a fresh Adam); return the number
    of steps taken."""
    global_params = {n: p.detach().clone() for n, p in model.named_parameters()}
    if optimizer == "adam":
        opt = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=weight_decay)
    else:
        opt = torch.optim.SGD(
            model.parameters(), lr=lr, momentum=momentum, weight_decay=weight_decay
        )
    model.train()
    steps = 0
    for idx in minibatches(
        model, len(y), epochs=epochs, batch_size=batch_size, generator=generator
    ):
        opt.zero_grad(set_to_none=True)
        loss = loss_fn(model, x[idx], y[idx])
        if algorithm is not None:
            extra = algorithm.penalty(dict(model.named_parameters()), global_params)
            if extra is not None:
                loss = loss + extra
        loss.backward()
        opt.step()
        steps += 1
    return steps


class FunctionalModel:
    """Calls ``module`` with explicit parameter and buffer tensors (``functional_call``),
    so gradients flow to them and ``torch.func`` transforms can batch them."""

    def __init__(
        self,
        module: nn.Module,
        params: Mapping[str, torch.Tensor],
        buffers: Mapping[str, torch.Tensor],
    ):
        self.module, self.params, self.buffers = module, params, buffers

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return functional_call(self.module, {**self.params, **self.buffers}, (x,))


def can_vectorise(model: nn.Module) -> bool:
    """Clients of this model can train as one ``vmap``: no randomness inside the forward
    pass (dropout would draw one mask for all clients)."""
    return not any(isinstance(m, nn.modules.dropout._DropoutNd) for m in model.modules())


def vectorised_local_train(
    model: nn.Module,
    global_state: Mapping[str, torch.Tensor],
    datasets: Sequence[tuple[torch.Tensor, torch.Tensor]],
    *,
    loss_fn: LossFn,
    epochs: int,
    batch_size: int,
    lr: float,
    generators: Sequence[torch.Generator],
    algorithm: Algorithm | None = None,
    batch_mean_loss: bool = False,
    mixers: Sequence[Callable[[torch.Tensor, torch.Tensor], tuple]] | None = None,
    drawers: Sequence[Callable[[], Mapping[str, torch.Tensor]]] | None = None,
    drawn_loss: Callable[..., torch.Tensor] | None = None,
) -> tuple[list[State], list[int]]:
    """:func:`local_train` for several clients from the same global weights, as one
    computation: each SGD step is a ``vmap`` over the clients' parameters, buffers and
    batches. Every client draws its batches from its own generator exactly as
    :func:`local_train` does, so it takes the same steps. At each step the clients with
    a batch of the same size move together (remainder batches form their own group),
    and a client whose batches are used up stops. BatchNorm runs functionally: each
    client's running statistics are its own slice of a stacked buffer.

    ``loss_fn`` must not depend on the client (no per-client state or randomness).
    ``batch_mean_loss``: it is a mean over the batch of per-sample terms that calls the
    model once on the batch (the base cross-entropy); a model that
    :mod:`privbench.nn.stacked` can stack then runs without ``vmap``, channels-last.
    ``mixers``: per client, ``(x, y) -> (x', soft y')``, the batch it trains on (a method
    that mixes batches, each client with its own private generator, called once per
    step in order, as the one-by-one loop's loss would draw).
    ``drawers``: per client, its private draw for one step (called once per step in
    order); the step's loss is then ``drawn_loss(model, x, y, **draws)``, each draw
    broadcast over its client's records. Needs a model :mod:`privbench.nn.stacked` can
    stack (FedMix differentiates through its inputs, which ``vmap`` is not used for).
    Returns each client's new state and its number of steps.
    """
    k = len(datasets)
    schedules = [
        list(minibatches(model, len(y), epochs=epochs, batch_size=batch_size, generator=g))
        for (_, y), g in zip(datasets, generators, strict=True)
    ]
    param_names = [n for n, _ in model.named_parameters()]
    buffer_names = [n for n, _ in model.named_buffers() if n in global_state]
    params = {
        n: global_state[n].detach().expand(k, *global_state[n].shape).clone() for n in param_names
    }
    buffers = {
        n: global_state[n].detach().expand(k, *global_state[n].shape).clone() for n in buffer_names
    }
    global_params = {n: global_state[n].detach() for n in param_names}
    model.train()

    def loss(p, b, x, y):
        value = loss_fn(FunctionalModel(model, p, b), x, y)
        if algorithm is not None:
            extra = algorithm.penalty(p, global_params)
            if extra is not None:
                value = value + extra
        return value

    step_grads = vmap(grad(loss))
    fast = stacked_forward(model) if batch_mean_loss and not buffer_names else None
    if drawers is not None and fast is None:
        raise ValueError("per-step draws vectorise only on a stackable model without buffers")

    def penalty(p):
        return algorithm.penalty(p, global_params) if algorithm is not None else None

    for step in range(max((len(s) for s in schedules), default=0)):
        groups: dict[int, list[int]] = {}
        for c, sched in enumerate(schedules):
            if step < len(sched):
                groups.setdefault(len(sched[step]), []).append(c)
        for members in groups.values():
            idx = torch.tensor(members)
            batches = [
                (datasets[c][0][schedules[c][step]], datasets[c][1][schedules[c][step]])
                for c in members
            ]
            if mixers is not None:
                batches = [mixers[c](x, y) for c, (x, y) in zip(members, batches, strict=True)]
            xb = torch.stack([x for x, _ in batches])
            yb = torch.stack([y for _, y in batches])
            p = {n: v[idx] for n, v in params.items()}
            b = {n: v[idx] for n, v in buffers.items()}  # BN updates these in place
            if drawers is not None:
                g = stacked_grads(
                    fast,
                    _drawn(drawn_loss, [drawers[c]() for c in members], xb.shape[1]),
                    p,
                    xb,
                    yb,
                    penalty,
                )
            elif fast is not None:
                g = stacked_grads(fast, loss_fn, p, xb, yb, penalty)
            else:
                g = step_grads(p, b, xb, yb)
            for n in param_names:
                params[n][idx] = p[n] - lr * g[n]
            for n in buffer_names:
                buffers[n][idx] = b[n]
    states = [
        {n: (params[n][c] if n in params else buffers[n][c]) for n in global_state}
        for c in range(k)
    ]
    return states, [len(s) for s in schedules]


def _drawn(drawn_loss, draws, batch: int):
    """The loss of one vectorised step: each client's draw repeated over its ``batch``
    records, in the clients' order (the rows of the stacked batch)."""
    rows = {
        key: torch.cat([d[key].expand(batch, *d[key].shape[1:]) for d in draws]) for key in draws[0]
    }

    def loss(model, x, y):
        return drawn_loss(model, x, y, **rows)

    return loss


def minibatches(
    model: nn.Module, n: int, *, epochs: int, batch_size: int, generator: torch.Generator
) -> Iterator[torch.Tensor]:
    """Index batches of local SGD over ``n`` samples: a fresh shuffle each epoch. A
    batch of one is skipped when the model has BatchNorm (it cannot normalise it in
    train mode)."""
    has_bn = has_batchnorm(model)
    for _ in range(epochs):
        order = torch.randperm(n, generator=generator)
        for start in range(0, n, batch_size):
            idx = order[start : start + batch_size]
            if len(idx) < 2 and has_bn and n >= 2:
                continue
            yield idx


def has_batchnorm(model: nn.Module) -> bool:
    """Whether ``model`` normalises with BatchNorm, which couples a batch's records."""
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())


@torch.no_grad()
def mean_loss(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, loss_fn: LossFn, batch_size: int = 512
) -> float:
    model.eval()
    total = 0.0
    for start in range(0, len(y), batch_size):
        xb, yb = x[start : start + batch_size], y[start : start + batch_size]
        total += float(loss_fn(model, xb, yb)) * len(yb)
    return total / max(len(y), 1)


@torch.no_grad()
def predict(model: nn.Module, x: torch.Tensor, batch_size: int = 1024) -> torch.Tensor:
    model.eval()
    out = [model(x[s : s + batch_size]).argmax(dim=1) for s in range(0, len(x), batch_size)]
    return torch.cat(out) if out else torch.empty(0, dtype=torch.long)

"""Many attack trials as one computation.

A *trial* is one optimisation of dummy data against one observed message (a victim and
a restart). Trials never interact: trial i's loss depends only on its own variables.
So the gradient of every trial comes out of one ``vmap`` of the per-trial
``grad_and_value``, and an optimiser that keeps each trial's state apart runs them
together, each stopping on its own criteria.

- :class:`TrialFunction`: the per-trial loss, evaluated for a stack of trials with
  ``torch.func.vmap`` (one double-backward for all of them). A loss that ``vmap`` cannot
  trace (e.g. image ops with data-dependent control flow) falls back to one autograd
  call per trial, with a warning; the optimiser stays batched.
- :class:`BatchedLBFGS`: ``torch.optim.LBFGS`` (no line search), step for step, for each
  trial: same direction update, step size and stopping rules. A trial that stops its
  inner loop early drops out of the evaluations; the others go on.

Adam (Inverting Gradients) needs no batched twin: it is elementwise, so ``torch.optim.Adam``
on the stacked variables is each trial's own Adam.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

import torch
from torch.func import grad_and_value, vmap

log = logging.getLogger(__name__)


class TrialFunction:
    """``one(*per_trial_args) -> scalar`` evaluated with gradients for stacked trials.

    ``argnums`` name the arguments to differentiate (the trial's variables); the others
    are per-trial constants (targets, fixed labels). Every argument carries the trial
    dimension first.
    """

    def __init__(self, one: Callable[..., torch.Tensor], argnums: int | tuple[int, ...] = 0):
        self.one = one
        self.argnums = argnums
        self.vectorised = True
        self._batched = vmap(grad_and_value(one, argnums=argnums))

    def __call__(self, *stacked) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
        """(values (T,), gradients: one (T, ...) tensor per differentiated argument)."""
        if self.vectorised:
            try:
                grads, values = self._batched(*stacked)
                return values.detach(), _as_tuple(grads)
            except (RuntimeError, NotImplementedError) as err:
                self.vectorised = False
                log.warning(
                    "this loss does not vectorise over trials (%s); evaluating trials one "
                    "by one (same results, slower)",
                    str(err).splitlines()[0],
                )
        return self.loop(*stacked)

    def loop(self, *stacked) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
        """The reference path: one autograd call per trial."""
        nums = _as_tuple(self.argnums)
        values, grads = [], []
        for i in range(len(stacked[0])):
            args = [index_trials(a, i) for a in stacked]
            for n in nums:
                args[n] = args[n].detach().requires_grad_(True)
            with torch.enable_grad():
                value = self.one(*args)
                grads.append(torch.autograd.grad(value, [args[n] for n in nums]))
            values.append(value.detach())
        return torch.stack(values), tuple(torch.stack(g) for g in zip(*grads, strict=True))


def _as_tuple(x):
    return x if isinstance(x, tuple) else (x,)


def index_trials(a, idx: int | torch.Tensor):
    """Row(s) ``idx`` of a per-trial tensor or of every tensor in a dict."""
    if isinstance(a, dict):
        return {k: v[idx] for k, v in a.items()}
    return a[idx]


# (loss (S,), flat gradient (S, D)) of trials ``idx`` at flat variables (S, D).
FlatFn = Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


class BatchedLBFGS:
    """``torch.optim.LBFGS(lr, max_iter, history_size)`` without line search, for T
    independent trials over flat variables ``x`` (T, D).

    :meth:`step` takes one ``LBFGS.step`` for the trials ``idx`` and returns the loss each
    had at the start of it (what ``LBFGS.step`` returns). Per-trial state — direction,
    step size, curvature history, inverse-Hessian scale, iteration count — is kept apart,
    so each trial follows the path it would follow alone.
    """

    def __init__(
        self,
        x: torch.Tensor,
        fn: FlatFn,
        *,
        lr: float = 1.0,
        max_iter: int = 20,
        history_size: int = 100,
        tolerance_grad: float = 1e-7,
        tolerance_change: float = 1e-9,
    ):
        self.x = x.detach().clone()
        self.fn = fn
        self.lr, self.max_iter, self.m = lr, max_iter, history_size
        self.max_eval = max_iter * 5 // 4  # LBFGS' default evaluation budget per step
        self.tol_grad, self.tol_change = tolerance_grad, tolerance_change
        T, D = self.x.shape
        like = dict(dtype=self.x.dtype)
        self.n_iter = torch.zeros(T, dtype=torch.long)
        self.loss = torch.full((T,), float("nan"), dtype=torch.float64)
        self.prev_loss = self.loss.clone()
        self.g = torch.zeros(T, D, **like)
        self.prev_g = torch.zeros(T, D, **like)
        self.d = torch.zeros(T, D, **like)
        self.t = torch.zeros(T, **like)
        self.h_diag = torch.ones(T, **like)
        self.dirs = torch.zeros(T, self.m, D, **like)
        self.stps = torch.zeros(T, self.m, D, **like)
        self.ro = torch.zeros(T, self.m, **like)
        # Each trial's history is a ring: ``count`` pairs, the oldest in slot ``start``
        # (a full history overwrites its oldest pair in place instead of shifting m pairs).
        self.count = torch.zeros(T, dtype=torch.long)
        self.start = torch.zeros(T, dtype=torch.long)
        self.evaluations = 0  # per-trial loss evaluations, summed over trials

    def _evaluate(self, idx: torch.Tensor) -> torch.Tensor:
        loss, g = self.fn(idx, self.x[idx])
        self.loss[idx] = loss.double()
        self.g[idx] = g
        self.evaluations += len(idx)
        return g.abs().amax(dim=1) <= self.tol_grad

    def step(self, idx: torch.Tensor) -> torch.Tensor:
        opt = self._evaluate(idx)
        orig = self.loss[idx].clone()
        loop = idx[~opt]
        n = 0
        while len(loop) and n < self.max_iter:
            n += 1
            self.n_iter[loop] += 1
            first = self.n_iter[loop] == 1
            self._direction(loop[first], loop[~first])
            self.prev_g[loop] = self.g[loop]
            self.prev_loss[loop] = self.loss[loop]
            g = self.g[loop]
            t = torch.full((len(loop),), self.lr, dtype=self.x.dtype)
            if first.any():  # first iteration ever: a step no longer than 1 / |g|_1
                t[first] = torch.clamp(1.0 / g[first].abs().sum(dim=1), max=1.0) * self.lr
            self.t[loop] = t
            gtd = (g * self.d[loop]).sum(dim=1)
            moving = ~(gtd > -self.tol_change)  # not a descent direction: stop
            loop = loop[moving]
            if not len(loop):
                break
            step = self.t[loop, None] * self.d[loop]
            self.x[loop] += step
            if n == self.max_iter:  # LBFGS does not evaluate after its last iteration
                break
            opt = self._evaluate(loop)
            if 1 + n >= self.max_eval:  # evaluations this step, the first one included
                break
            stalled = step.abs().amax(dim=1) <= self.tol_change
            flat = (self.loss[loop] - self.prev_loss[loop]).abs() < self.tol_change
            loop = loop[~(opt | stalled | flat)]
        return orig

    def _direction(self, fresh: torch.Tensor, rest: torch.Tensor) -> None:
        if len(fresh):  # steepest descent, empty history
            self.d[fresh] = -self.g[fresh]
            self.dirs[fresh] = 0
            self.stps[fresh] = 0
            self.ro[fresh] = 0
            self.count[fresh] = 0
            self.start[fresh] = 0
            self.h_diag[fresh] = 1
        if not len(rest):
            return
        y = self.g[rest] - self.prev_g[rest]
        s = self.d[rest] * self.t[rest, None]
        ys = (y * s).sum(dim=1)
        keep = ys > 1e-10  # curvature condition: only then is the pair remembered
        if keep.any():
            new, y, s, ys = rest[keep], y[keep], s[keep], ys[keep]
            self._remember(new, y, s, ys)
            self.h_diag[new] = ys / (y * y).sum(dim=1)
        # Two-loop recursion, newest pair first; rows with fewer pairs read empty slots
        # at the extra ages (ro is zero there: they add nothing).
        k, pair = self._pairs(rest)
        q = -self.g[rest]
        al = torch.zeros(len(rest), max(k, 1), dtype=self.x.dtype)
        for j in range(k - 1, -1, -1):
            y_j, s_j, ro_j = pair(j)
            al[:, j] = (s_j * q).sum(dim=1) * ro_j
            q = q - al[:, j, None] * y_j
        r = q * self.h_diag[rest, None]
        for j in range(k):
            y_j, s_j, ro_j = pair(j)
            be = (y_j * r).sum(dim=1) * ro_j
            r = r + (al[:, j] - be)[:, None] * s_j
        self.d[rest] = r

    def _remember(self, new: torch.Tensor, y: torch.Tensor, s: torch.Tensor, ys) -> None:
        """Store the curvature pair of each trial in ``new``: in its ring, a full one
        overwriting its oldest pair in place."""
        count, start = self.count[new], self.start[new]
        full = count == self.m  # the newest pair replaces the oldest
        slot = torch.where(full, start, count)
        self.start[new] = torch.where(full, (start + 1) % self.m, start)
        self.dirs[new, slot] = y
        self.stps[new, slot] = s
        self.ro[new, slot] = 1.0 / ys
        self.count[new] = torch.clamp(count + 1, max=self.m)

    def _pairs(self, rest: torch.Tensor):
        """(k, pair): the most pairs any row of ``rest`` holds, and pair(j) = (y, s, ro)
        of each row's j-th oldest pair: views when every trial's ring is aligned, else
        gathered rows."""
        count, start = self.count[rest], self.start[rest]
        k = int(count.max()) if len(count) else 0
        every = len(rest) == len(self.x) and bool((rest == torch.arange(len(rest))).all())
        aligned = every and bool((start == start[0]).all())

        def pair(j: int):
            if aligned:
                at = (int(start[0]) + j) % self.m
                return self.dirs[:, at], self.stps[:, at], self.ro[:, at]
            at = (start + j) % self.m
            return self.dirs[rest, at], self.stps[rest, at], self.ro[rest, at]

        return k, pair


def stack_trials(parts: Sequence[torch.Tensor]) -> torch.Tensor:
    """Flatten each trial's variables and join them: (T, D)."""
    return torch.cat([p.reshape(p.shape[0], -1) for p in parts], dim=1)


def split_trials(flat: torch.Tensor, shapes: Sequence[tuple[int, ...]]) -> list[torch.Tensor]:
    """Inverse of :func:`stack_trials` for per-trial shapes ``shapes``."""
    out, start = [], 0
    for shape in shapes:
        size = 1
        for s in shape:
            size *= s
        out.append(flat[:, start : start + size].reshape(flat.shape[0], *shape))
        start += size
    return out


class ShiftingHistoryLBFGS(BatchedLBFGS):
    """The reference path of :class:`BatchedLBFGS`: each trial's history as
    ``torch.optim.LBFGS`` keeps it, oldest pair first, a full history shifting every
    pair down to drop the oldest (m × D per trial and iteration). The ring buffer must
    take exactly this path; ``benchmarks/perf_lbfgs.py`` measures the difference."""

    def _remember(self, new: torch.Tensor, y: torch.Tensor, s: torch.Tensor, ys) -> None:
        full = self.count[new] == self.m
        if full.any():
            old = new[full]
            self.dirs[old] = self.dirs[old].roll(-1, dims=1)
            self.stps[old] = self.stps[old].roll(-1, dims=1)
            self.ro[old] = self.ro[old].roll(-1, dims=1)
        pos = torch.clamp(self.count[new], max=self.m - 1)
        self.dirs[new, pos] = y
        self.stps[new, pos] = s
        self.ro[new, pos] = 1.0 / ys
        self.count[new] = pos + 1

    def _pairs(self, rest: torch.Tensor):
        # each row's whole history, copied: the memory traffic the ring avoids
        dirs, stps, ro = self.dirs[rest], self.stps[rest], self.ro[rest]
        count = self.count[rest]
        k = int(count.max()) if len(count) else 0
        return k, lambda j: (dirs[:, j], stps[:, j], ro[:, j])

"""The batched L-BFGS's history: a ring buffer against the shifting history of
``torch.optim.LBFGS`` (``ShiftingHistoryLBFGS``, the reference path), on the problem
where the gradient-inversion reproduction spends its hours: DLG at batch 8 on 28×28
images, LeNet-sigmoid, 8 victims × 4 restarts = 32 trials of 8 × 784 pixels and
8 × 10 label logits each, history 100.

With 20 inner iterations per step, a trial's history is full after 5 steps; from then
on the reference shifts m × D floats per trial and iteration, and reads the whole
history as a copy. The ring overwrites the oldest pair in place and reads pairs where
they lie. Both take the same path bit for bit (checked here and in
``tests/test_batched.py``). No data needed: the images are random, which changes
nothing in the cost.

    python benchmarks/perf_lbfgs.py            # ~3 min on 2 cores
"""

from __future__ import annotations

import argparse
import json
import time

import torch
import torch.nn.functional as F
from torch.func import functional_call, grad

from privbench.attacks.batched import (
    BatchedLBFGS,
    ShiftingHistoryLBFGS,
    TrialFunction,
    split_trials,
    stack_trials,
)
from privbench.models import LeNetSigmoid


def dlg_problem(victims: int, restarts: int, batch: int, shape=(1, 28, 28), seed: int = 0):
    """(flat starts (T, D), fn, shapes): DLG's trial loss (L2 distance of the dummy's
    gradient to the victim's, soft labels) for ``victims`` random batches."""
    g = torch.Generator().manual_seed(seed)
    model = LeNetSigmoid(shape, 10)
    params = {k: v.detach() for k, v in model.named_parameters()}

    def gradient(x, y_soft):
        def loss(p):
            out = functional_call(model, p, (x,))
            return -(y_soft * F.log_softmax(out, dim=1)).sum(dim=1).mean()

        return grad(loss)(params)

    targets = []
    for _ in range(victims):
        x = torch.rand(batch, *shape, generator=g)
        y = F.one_hot(torch.randint(0, 10, (batch,), generator=g), 10).float()
        targets.append(gradient(x, y))
    stacked = {k: torch.stack([t[k] for t in targets]) for k in params}

    def one(x, labels, target):
        got = gradient(x, torch.softmax(labels, dim=1))
        return sum(((got[k] - target[k]) ** 2).sum() for k in got)

    trial_fn = TrialFunction(one, argnums=(0, 1))
    owner = torch.arange(victims).repeat_interleave(restarts)
    shapes = [(batch, *shape), (batch, 10)]
    starts = [torch.randn(len(owner), *s, generator=g) for s in shapes]

    def fn(idx, flat):
        x, labels = split_trials(flat, shapes)
        values, grads = trial_fn(x, labels, {k: v[owner[idx]] for k, v in stacked.items()})
        return values, stack_trials(grads)

    return stack_trials(starts), fn


def history_speed(victims: int = 8, restarts: int = 4, batch: int = 8, steps: int = 8) -> dict:
    """Seconds for ``steps`` L-BFGS steps of every trial, ring against shifting history,
    in one process on one problem; and whether both took the same path."""
    flat0, fn = dlg_problem(victims, restarts, batch)
    every = torch.arange(len(flat0))
    out = {"trials": len(flat0), "dims": flat0.shape[1], "steps": steps, "history": 100}
    paths = {}
    for name, cls in (("ring", BatchedLBFGS), ("shifting", ShiftingHistoryLBFGS)):
        opt = cls(flat0, fn, max_iter=20, history_size=100)
        t0 = time.perf_counter()
        losses = [opt.step(every) for _ in range(steps)]
        out[f"{name}_s"] = time.perf_counter() - t0
        out[f"{name}_evaluations"] = opt.evaluations
        paths[name] = (opt.x, losses)
    (x, losses), (x_ref, losses_ref) = paths["ring"], paths["shifting"]
    out["same_path"] = bool(torch.equal(x, x_ref)) and all(
        torch.equal(a, b) for a, b in zip(losses, losses_ref, strict=True)
    )
    out["speedup"] = out["shifting_s"] / out["ring_s"]
    return out


def markdown(r: dict) -> list[str]:
    return [
        f"DLG's batched L-BFGS, {r['trials']} trials × {r['dims']} variables (28×28, batch 8, "
        f"LeNet-sigmoid), {r['steps']} steps of 20 iterations, history {r['history']}:",
        "",
        "| history | s | evaluations | speed-up | same path |",
        "|---|---|---|---|---|",
        f"| shifting (reference) | {r['shifting_s']:.1f} | {r['shifting_evaluations']} | 1.0x "
        "| - |",
        f"| ring | {r['ring_s']:.1f} | {r['ring_evaluations']} | {r['speedup']:.2f}x "
        f"| {'bit for bit' if r['same_path'] else 'NO'} |",
    ]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=8, help="outer L-BFGS steps")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    r = history_speed(steps=args.steps)
    print(json.dumps(r, indent=2) if args.json else "\n".join(markdown(r)))


if __name__ == "__main__":
    main()

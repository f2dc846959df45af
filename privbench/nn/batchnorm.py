"""BatchNorm statistics and their inversion (Fed-ZDA's ZSDG, Algorithm 1), shared by the
methods that generate data with it (Fed-ZDAC/ZDAS) and the attack that inverts a client's
model with it (``bn-inversion``).

Synthetic labelled images from a trained model alone. For every class n the inputs
x̄(n) start from N(0, 1) and descend on

    sum_l ||mu_l(x̄) - mu_l||^2 + ||sigma_l(x̄) - sigma_l||^2 + CE(M(x̄), n)

where mu_l, sigma_l are the running mean and standard deviation stored in the model's
l-th BatchNorm layer and mu_l(x̄), sigma_l(x̄) those of the batch of synthetic inputs
reaching that layer. Only the inputs move; the model is fixed. All classes form one
batch (their statistics are matched together, as the paper's Algorithm 1 forward-
propagates x̄(n) for all n at once).

The same optimisation run by a server on a client's uploaded model is a model-inversion
attack on that client: its BatchNorm statistics were fitted to the client's data
(``bn-inversion``).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from privbench.errors import IncompatibleError


def batchnorm_layers(model: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    return [
        m
        for m in model.modules()
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.running_mean is not None
    ]


@dataclass(frozen=True)
class ZSDGResult:
    images: torch.Tensor  # (N * per_class, C, H, W)
    labels: torch.Tensor  # (N * per_class,)
    bn_loss: float  # BatchNorm-statistics term at the end
    ce_loss: float  # cross-entropy term at the end


class BNStatistics:
    """Collects, during a forward pass, the BatchNorm-statistics loss
    sum_l ||mu_l(x̄) - mu_l||^2 + ||sigma_l(x̄) - sigma_l||^2: the per-channel mean and
    standard deviation of the batch reaching each BatchNorm layer against the layer's
    running statistics. The term is formed inside the hook from the layer's buffers as
    the forward sees them, so it also holds under ``functional_call``/``vmap`` with
    another model's buffers swapped in.

    ``per_image=True``: the statistics of each input on its own (over its spatial
    positions), each matched to the running statistics; the loss sums over inputs."""

    def __init__(self, model: nn.Module, *, per_image: bool = False):
        self.per_image = per_image
        self.layers = batchnorm_layers(model)
        if not self.layers:
            raise IncompatibleError(
                "ZSDG needs a model with BatchNorm layers that track running statistics "
                "(e.g. --model cnn-bn); this model has none"
            )
        self.terms: list[torch.Tensor] = []
        self._hooks = [layer.register_forward_pre_hook(self._collect) for layer in self.layers]

    def _collect(self, module, inputs) -> None:
        z = inputs[0]
        spatial = list(range(2, z.dim()))
        dims = spatial if self.per_image else [0, *spatial]  # all but the channel (and image)
        mean = z.mean(dim=dims)
        std = torch.sqrt(z.var(dim=dims, unbiased=False) + module.eps)
        running_std = torch.sqrt(module.running_var + module.eps)
        term = ((mean - module.running_mean) ** 2).sum() + ((std - running_std) ** 2).sum()
        self.terms.append(term)

    def loss(self) -> torch.Tensor:
        """The loss of the last forward pass (and forget it)."""
        total = sum(self.terms)
        self.terms.clear()
        return total

    def close(self) -> None:
        for h in self._hooks:
            h.remove()


def zsdg(model: nn.Module, *, generator: torch.Generator, **kwargs) -> ZSDGResult:
    """Fed-ZDA's ZSDG on one model (see :func:`zsdg_many` for the arguments)."""
    return zsdg_many([model], generators=[generator], **kwargs)[0]


def zsdg_many(
    models: list[nn.Module],
    *,
    generators: list[torch.Generator],
    num_classes: int,
    input_shape: tuple[int, int, int],
    per_class: int,
    iters: int,
    lr: float,
    classes: list[int] | None = None,
    box: tuple[float, float] | None = None,
    match: str = "batch",
) -> list[ZSDGResult]:
    """Fed-ZDA's ZSDG for each model (same architecture): ``per_class`` synthetic
    images for each class (all classes, or ``classes``), optimised with Adam on the
    inputs only. The models are used in eval mode (their stored statistics normalise)
    and left unchanged.

    All models run as one computation (``vmap`` over their stacked weights and the
    stacked inputs); each problem is the one a model alone would solve (Adam is
    elementwise, the losses are separate), from its own generator's start.

    ``box=(lo, hi)``: start uniform in the pixel range and project back into it after
    every step (for data that is not standardised, e.g. images in [0, 1]); without it,
    the paper's N(0, 1) start and no constraint.

    ``match="batch"`` (the paper): the statistics of the whole synthetic batch match the
    stored ones, so single images may stray as long as the batch averages out.
    ``match="image"``: every image's own statistics match them, a stronger constraint
    that pulls each image toward a typical record of the data behind the model."""
    if match not in ("batch", "image"):
        raise ValueError(f"match must be 'batch' or 'image'. Got {match!r} instead.")
    classes = list(range(num_classes)) if classes is None else list(classes)
    labels = torch.tensor(classes, dtype=torch.long).repeat_interleave(per_class)
    shape = (len(labels), *input_shape)
    dtype = next(models[0].parameters()).dtype  # the inputs follow the weights
    if box is None:
        starts = [torch.randn(shape, generator=g, dtype=dtype) for g in generators]
    else:
        starts = [
            box[0] + (box[1] - box[0]) * torch.rand(shape, generator=g, dtype=dtype)
            for g in generators
        ]
    x = torch.stack(starts)  # (models, N, C, H, W)
    base = copy.deepcopy(models[0]).eval()
    stats = BNStatistics(base, per_image=match == "image")
    modes = [m.training for m in models]
    try:  # stacking wants one mode; the forward is eval's anyway (base is in eval mode)
        params, buffers = torch.func.stack_module_state([m.eval() for m in models])
    finally:
        for m, mode in zip(models, modes, strict=True):
            m.train(mode)
    params = {k: v.detach() for k, v in params.items()}

    def losses(p, b, xs):
        logits = torch.func.functional_call(base, (p, b), (xs,))
        bn = stats.loss()
        return bn, F.cross_entropy(logits, labels)

    def total(p, b, xs):
        bn, ce = losses(p, b, xs)
        return bn + ce

    step = torch.vmap(torch.func.grad(total, argnums=2))
    try:
        x.requires_grad_(True)
        opt = torch.optim.Adam([x], lr=lr)
        for _ in range(iters):
            opt.zero_grad()
            x.grad = step(params, buffers, x.detach())
            opt.step()
            if box is not None:
                with torch.no_grad():
                    x.clamp_(*box)
        with torch.no_grad():
            bn, ce = torch.vmap(losses)(params, buffers, x)
    finally:
        stats.close()
    return [
        ZSDGResult(x[i].detach().clone(), labels.clone(), float(bn[i]), float(ce[i]))
        for i in range(len(models))
    ]

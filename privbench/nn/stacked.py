"""Several clients' copies of one model as one forward pass, without ``vmap``.

``vmap`` over the clients' weights runs each convolution as a grouped convolution on a
contiguous (NCHW) tensor, and max-pooling there is several times slower than on a
channels-last tensor (a profile of a 10-client MNIST step: pooling and the convolution
backward took half of it). ``vmap`` refuses a channels-last copy, so the vectorised
round was no faster than training the clients one after another.

Here the clients' activations are laid out as one channels-last batch of ``K * C``
channels, each convolution is one grouped call (group c holds client c's weights) and
each linear layer one batched matmul. Client c's logits depend only on its own weights,
so the gradient of the sum of the clients' losses with respect to the stacked weights
is every client's own gradient, exactly what ``vmap(grad(...))`` computes (to float
rounding; ``tests/test_batched.py`` holds the two and the one-by-one loop together).

Only models whose forward this module can read are stacked: :class:`~privbench.models.CNN`
(``classifier(features(x).flatten(1))`` with Conv2d, ReLU, MaxPool2d and Linear
layers); every other model keeps ``vmap``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import torch
import torch.nn.functional as F
from torch import nn

StackedForward = Callable[[Mapping[str, torch.Tensor], torch.Tensor], torch.Tensor]


def stacked_forward(model: nn.Module) -> StackedForward | None:
    """``forward(params, x)``: the logits (K, B, classes) of K copies of ``model`` with
    stacked parameters ``params`` (name -> (K, *shape)) on inputs ``x`` (K, B, C, H, W);
    None when ``model`` is not one this module can stack."""
    from privbench.models import CNN

    if type(model) is not CNN:
        return None
    features = list(model.features.named_children())
    classifier = list(model.classifier.named_children())
    known = (nn.Conv2d, nn.ReLU, nn.MaxPool2d, nn.Identity, nn.Linear)
    if not all(isinstance(m, known) for _, m in features + classifier):
        return None
    if any(isinstance(m, nn.Conv2d) and m.groups != 1 for _, m in features):
        return None

    def forward(params: Mapping[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
        k, b = x.shape[:2]
        # (K, B, C, H, W) -> (B, K*C, H, W), channels-last: client c is channel group c.
        h = x.transpose(0, 1).reshape(b, k * x.shape[2], *x.shape[3:])
        h = h.contiguous(memory_format=torch.channels_last)
        for name, m in features:
            h = _stacked_feature(m, h, params, f"features.{name}", k)
        # Each client's features flattened as its own forward would: (K, B, C*H*W).
        h = h.reshape(b, k, -1, *h.shape[2:]).flatten(2).transpose(0, 1)
        for name, m in classifier:
            if isinstance(m, nn.Linear):
                w, bias = params[f"classifier.{name}.weight"], params[f"classifier.{name}.bias"]
                h = torch.baddbmm(bias.unsqueeze(1), h, w.transpose(1, 2))
            elif isinstance(m, nn.ReLU):
                h = F.relu(h)
            elif not isinstance(m, nn.Identity):  # pragma: no cover - excluded above
                raise TypeError(type(m).__name__)
        return h

    return forward


def _stacked_feature(m: nn.Module, h, params, prefix: str, k: int) -> torch.Tensor:
    if isinstance(m, nn.Conv2d):
        w = params[f"{prefix}.weight"]
        bias = params.get(f"{prefix}.bias")
        return F.conv2d(
            h,
            w.reshape(-1, *w.shape[2:]),
            None if bias is None else bias.reshape(-1),
            stride=m.stride,
            padding=m.padding,
            dilation=m.dilation,
            groups=k,
        )
    if isinstance(m, nn.ReLU):
        return F.relu(h)
    if isinstance(m, nn.MaxPool2d):  # per channel: the clients' groups stay apart
        return F.max_pool2d(
            h, m.kernel_size, m.stride, m.padding, m.dilation, ceil_mode=m.ceil_mode
        )
    if isinstance(m, nn.Identity):
        return h
    raise TypeError(type(m).__name__)  # pragma: no cover - excluded by stacked_forward


def stacked_grads(
    forward: StackedForward,
    loss_fn: Callable,
    params: Mapping[str, torch.Tensor],
    x: torch.Tensor,
    y: torch.Tensor,
    penalty: Callable[[Mapping[str, torch.Tensor]], torch.Tensor | None] | None = None,
) -> dict[str, torch.Tensor]:
    """Every client's gradient of ``loss_fn`` (a mean over its batch, as the base
    cross-entropy is) plus ``penalty(client params)``, stacked like ``params``.

    ``x``: (K, B, ...) with the same B for every client, ``y``: (K, B, ...). The clients'
    batches are one batch of K*B for ``loss_fn``, whose mean is the mean of the clients'
    means; times K it is their sum, whose gradient is every client's own. The model
    ``loss_fn`` gets runs row block c through client c's weights, on the batch or on
    anything computed from it row by row (FedMix's scaled inputs, its input derivative)."""
    leaves = {n: p.detach().requires_grad_() for n, p in params.items()}
    k, b = x.shape[:2]

    def model(inputs):  # the K models on a batch laid out as the clients' batches, (K*B, ...)
        return forward(leaves, inputs.reshape(k, b, *inputs.shape[1:])).reshape(k * b, -1)

    flat = x.reshape(k * b, *x.shape[2:])
    total = loss_fn(model, flat, y.reshape(k * b, *y.shape[2:])) * k
    if penalty is not None:
        for c in range(k):
            extra = penalty({n: v[c] for n, v in leaves.items()})
            if extra is not None:
                total = total + extra
    grads = torch.autograd.grad(total, list(leaves.values()), allow_unused=True)
    return {
        n: torch.zeros_like(leaves[n]) if g is None else g
        for n, g in zip(leaves, grads, strict=True)
    }

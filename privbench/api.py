"""Attack one captured message of your own training code.

``attack_update`` wraps a gradient or weight update that your code produced (one
client step, or a few local steps) into the same observation the benchmark's channel
builds, runs a registered attack on it, and scores the reconstruction when you pass
the private batch::

    grads = torch.autograd.grad(F.cross_entropy(net(x), y), net.parameters())
    out = privbench.attack_update(net, grads, attack="dlg", ground_truth=(x, y))
    print(out.psnr, out.ssim)
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from privbench.engine.channel import SERVER, Observation, PublicContext
from privbench.errors import ParameterError
from privbench.evaluation.metrics import LeakageScore, score_reconstruction
from privbench.validation import require_finite_message


@dataclass(frozen=True)
class UpdateAttack:
    """What the attack rebuilt, and its score when the ground truth was given."""

    images: torch.Tensor  # (B, C, H, W), clamped to the value range
    labels: torch.Tensor | None
    score: LeakageScore | None

    @property
    def psnr(self) -> float | None:
        return None if self.score is None else self.score.psnr

    @property
    def ssim(self) -> float | None:
        return None if self.score is None else self.score.ssim


def _named(model: torch.nn.Module, message: Any) -> dict[str, torch.Tensor]:
    names = [n for n, _ in model.named_parameters()]
    if isinstance(message, Mapping):
        missing = [n for n in names if n not in message]
        if missing:
            raise ParameterError(
                f"the update lacks {len(missing)} of the model's parameters "
                f"(first: {missing[:3]}); give one tensor per named parameter."
            )
        tensors = {n: torch.as_tensor(message[n]) for n in names}
    elif isinstance(message, Sequence) and not isinstance(message, str):
        if len(message) != len(names):
            raise ParameterError(
                f"the update has {len(message)} tensors but the model has {len(names)} "
                "parameters; pass them in model.named_parameters() order (what "
                "torch.autograd.grad(loss, model.parameters()) returns) or as a dict."
            )
        tensors = dict(zip(names, (torch.as_tensor(t) for t in message), strict=True))
    else:
        raise ParameterError(
            f"the update must be a dict of parameter name -> tensor or a list of tensors; "
            f"got a {type(message).__name__}."
        )
    params = dict(model.named_parameters())
    for n, t in tensors.items():
        if tuple(t.shape) != tuple(params[n].shape):
            raise ParameterError(
                f"update tensor '{n}' is shaped {tuple(t.shape)} but the parameter is "
                f"{tuple(params[n].shape)}."
            )
        if not (t.is_floating_point() or t.dtype in (torch.int32, torch.int64)):
            raise ParameterError(
                f"update tensor '{n}' has dtype {t.dtype}; give real floating-point tensors."
            )
    require_finite_message(tensors, "the update")
    return {n: t.detach().to(params[n].dtype).cpu() for n, t in tensors.items()}


def attack_update(
    model: torch.nn.Module,
    update_or_gradient: Mapping[str, torch.Tensor] | Sequence[torch.Tensor],
    *,
    attack: str = "ig",
    params: Mapping[str, Any] | None = None,
    kind: str | None = None,
    lr: float = 0.1,
    local_steps: int = 1,
    batch_size: int | None = None,
    input_shape: tuple[int, int, int] | None = None,
    num_classes: int | None = None,
    value_range: tuple[float, float] = (0.0, 1.0),
    ground_truth: torch.Tensor | tuple[torch.Tensor, torch.Tensor] | None = None,
    method: str = "fedavg",
    seed: int = 0,
) -> UpdateAttack:
    """Reconstruct the batch behind one captured gradient or update.

    ``model`` must hold the weights the client started from (it is copied, not
    changed). ``kind``: ``"gradient"`` (the loss gradient of one full-batch step; the
    default when ``local_steps == 1``) or ``"update"`` (new weights minus old after
    ``local_steps`` full-batch SGD steps at ``lr``). ``batch_size``: images in the
    captured step (default: the ground truth's, else 1). ``params``: the attack's
    parameters (``{"iters": 300}``). ``ground_truth``: the private images, or
    (images, labels), to score against; ``input_shape`` and ``num_classes`` are
    inferred from it and the model when not given.
    """
    from privbench import registries

    kind = kind or ("gradient" if local_steps == 1 else "update")
    if kind not in ("gradient", "update"):
        raise ParameterError(f"The 'kind' parameter must be 'gradient' or 'update'. Got {kind!r}.")
    if kind == "gradient" and local_steps != 1:
        raise ParameterError(
            f"a gradient is one step: 'local_steps' must be 1 with kind='gradient'. Got "
            f"{local_steps}; pass kind='update' for a multi-step weight update."
        )
    if not (isinstance(local_steps, int) and local_steps >= 1):
        raise ParameterError(f"The 'local_steps' parameter must be >= 1. Got {local_steps!r}.")
    if not lr > 0:
        raise ParameterError(f"The 'lr' parameter must be > 0. Got {lr!r}.")
    gt_images = gt_labels = None
    if ground_truth is not None:
        if isinstance(ground_truth, (tuple, list)):
            gt_images, gt_labels = (torch.as_tensor(t) for t in ground_truth)
        else:
            gt_images = torch.as_tensor(ground_truth)
        if gt_images.ndim != 4:
            raise ParameterError(
                f"ground_truth images must be (B, C, H, W); got {tuple(gt_images.shape)}."
            )
        input_shape = input_shape or tuple(gt_images.shape[1:])
        batch_size = batch_size or len(gt_images)
    if input_shape is None:
        raise ParameterError("give input_shape=(C, H, W) (or ground_truth to infer it from).")
    batch_size = batch_size or 1
    if not isinstance(model, torch.nn.Module):
        raise ParameterError(
            f"The 'model' argument of attack_update must be a torch.nn.Module. "
            f"Got a {type(model).__name__} instead."
        )
    model = copy.deepcopy(model).cpu()
    if num_classes is None:
        model.eval()
        try:
            with torch.no_grad():
                num_classes = int(model(torch.zeros(1, *input_shape)).shape[-1])
        except Exception as err:  # the user's model does not take this input shape
            raise ParameterError(
                f"the model fails on an input shaped (1, *{tuple(input_shape)}): "
                f"{type(err).__name__}: {err}; give the input_shape the model takes."
            ) from err
    model.train()
    augmenter = registries()["method"].create(method)
    augmenter.setup(num_classes=num_classes, input_shape=input_shape, num_clients=1, seed=seed)
    weights = {k: v.detach().clone() for k, v in model.state_dict().items()}
    context = PublicContext(
        model_name=type(model).__name__,
        build_model=lambda: copy.deepcopy(model),
        weights_before=weights,
        lr=float(lr),
        local_steps=local_steps,
        batch_size=batch_size,
        num_images=batch_size,
        num_classes=num_classes,
        input_shape=tuple(input_shape),
        value_range=tuple(value_range),
        method=augmenter,
        augmenter_params={},
    )
    observation = Observation(0, 0, SERVER, kind, _named(model, update_or_gradient), context)
    attacker = registries()["attack"].create(attack, **dict(params or {}))
    if kind not in attacker.consumes:
        raise ParameterError(
            f"attack '{attack}' consumes {'/'.join(attacker.consumes)} messages, not {kind}s."
        )
    rec = attacker.reconstruct(
        observation, generator=torch.Generator().manual_seed(seed), seen=[observation]
    )
    images = rec.images.detach().clamp(*value_range)
    score = None
    if gt_images is not None:
        score = score_reconstruction(gt_images, images, gt_labels, rec.labels, tuple(value_range))
    return UpdateAttack(images, rec.labels, score)

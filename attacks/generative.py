"""Attacks on what generative methods share: a CVAE's weights, synthetic data.

- ``synthetic-nn``: the synthetic samples an adversary holds (a shared ``synthetic_data``
  set, or samples it draws from a shared decoder, ``per_class`` per class), each scored
  against its nearest private image of the victim: does synthetic data copy records?
- ``generator``: a memorisation *audit* of a shared CVAE decoder. For every private
  image of the victim it searches the decoder's latent space (Adam on z, the image's
  own label as condition) for the closest output. It is handed the private images, so it
  measures the best any holder of the decoder could reproduce each record (an upper
  bound on what sampling finds), as privacy audits of generative models do; it is not
  an attack that runs without them. Reported per private image and pooled per client.

Both use the latest version of the artifact the adversary saw: the victim's last CVAE
upload (server) or the decoder broadcast at the end of CVAE training (curious client).
"""

from __future__ import annotations

import torch

from privbench.attacks.base import ATTACKS, Attack, Reconstruction
from privbench.errors import IncompatibleError
from privbench.nn.cvae import CVAE, from_unit, sample, to_unit
from privbench.registry import Param


def latest(observation, seen):
    """The newest message of the observation's sender and kind that the adversary saw."""
    same = [o for o in seen if o.sender == observation.sender and o.kind == observation.kind]
    return same[-1] if same else observation


def shared_decoder(observation, seen) -> CVAE:
    """The CVAE (architecture from the public method) with the observed decoder weights."""
    obs = latest(observation, seen)
    decoder = obs.context.method.decoder(obs.payload) if obs.context is not None else None
    if decoder is None:
        raise IncompatibleError(
            "this generator message carries no CVAE recipe (use a cvae-* method)"
        )
    return decoder


@ATTACKS.register(
    "synthetic-nn",
    params=(
        Param("samples_per_class", int, 10, "samples drawn per class from a shared decoder", low=1),
    ),
    description="nearest private neighbour of synthetic samples (a shared synthetic set, "
    "or samples of a shared CVAE decoder)",
)
class SyntheticNearestNeighbour(Attack):
    name = "synthetic-nn"
    consumes = ("synthetic_data", "generator")
    target = "dataset"

    def reconstruct(self, observation, *, generator, seen=()):
        if observation.kind == "synthetic_data":
            obs = latest(observation, seen)
            return Reconstruction(obs.payload["x"].clone(), obs.payload.get("y"))
        decoder = shared_decoder(observation, seen)
        ctx = latest(observation, seen).context
        labels = torch.arange(ctx.num_classes).repeat_interleave(self.params["samples_per_class"])
        images = sample(decoder, labels, ctx.value_range, generator)
        return Reconstruction(images, labels, {"samples": len(labels)})


@ATTACKS.register(
    "generator",
    params=(
        Param("iters", int, 200, "Adam iterations of the latent search", low=1),
        Param("attack_lr", float, 0.05, "Adam step size on z", low=0.0, low_open=True),
        Param("restarts", int, 4, "latent starts per image (z = 0 and N(0, I) draws)", low=1),
    ),
    description="memorisation audit of a shared CVAE decoder: latent inversion toward each "
    "private image, best match per image and per client",
)
class GeneratorInversion(Attack):
    name = "generator"
    consumes = ("generator",)
    target = "audit"

    def audit(self, observation, *, images, labels, generator, seen=()) -> Reconstruction:
        """One decoder output per private image: argmin_z ||G(z, y) - x||^2 over
        ``restarts`` starts (the first at z = 0), all images and starts batched."""
        decoder = shared_decoder(observation, seen)
        ctx = latest(observation, seen).context
        for p in decoder.parameters():
            p.requires_grad_(False)
        r = self.params["restarts"]
        target = to_unit(images, ctx.value_range).repeat(r, 1, 1, 1)
        cond = labels.repeat(r)
        z = torch.randn((len(target), decoder.latent), generator=generator)
        z[: len(images)] = 0.0
        z.requires_grad_(True)
        opt = torch.optim.Adam([z], lr=self.params["attack_lr"])
        for _ in range(self.params["iters"]):
            opt.zero_grad()
            out = torch.sigmoid(decoder.decode_logits(z, cond))
            ((out - target) ** 2).flatten(1).sum(1).sum().backward()
            opt.step()
        with torch.no_grad():
            out = torch.sigmoid(decoder.decode_logits(z, cond))
            err = ((out - target) ** 2).flatten(1).sum(1).view(r, len(images))
            best = err.argmin(dim=0)
            picked = out.view(r, len(images), *out.shape[1:])[best, torch.arange(len(images))]
        return Reconstruction(from_unit(picked, ctx.value_range), labels.clone(), {"restarts": r})

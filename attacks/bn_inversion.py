"""``bn-inversion``: ZSDG run by the server on a client's uploaded model.

A client's model update carries its BatchNorm running statistics, fitted to the
client's private data during local training. Rebuilding the client's model (the
broadcast weights plus the update) and running ZSDG on it generates images whose
statistics match that client's data and which the model assigns to each class: a
model-inversion attack on that one client (Fed-ZDA's ZSDG, turned on its owner).

It inverts the client's newest update the adversary saw. Scored against the client's
whole training set: each generated image against its nearest private image
(best-match PSNR/SSIM).
"""

from __future__ import annotations

from privbench.attacks.base import ATTACKS, Attack, Reconstruction
from privbench.attacks.generative import latest
from privbench.errors import IncompatibleError
from privbench.nn.batchnorm import batchnorm_layers, zsdg
from privbench.registry import Param


@ATTACKS.register(
    "bn-inversion",
    params=(
        Param("samples_per_class", int, 4, "synthetic images generated per class", low=1),
        Param("iters", int, 200, "Adam iterations on the inputs", low=1),
        Param("attack_lr", float, 0.1, "Adam step size", low=0.0, low_open=True),
        Param(
            "match",
            str,
            "image",
            "'image': each generated image's own BatchNorm statistics match the client's; "
            "'batch': those of the generated batch (Fed-ZDA's ZSDG)",
            choices=("image", "batch"),
        ),
    ),
    description="server inverts a client's uploaded model: ZSDG matches the BatchNorm "
    "statistics it fitted to the client's data (needs a BN model, e.g. cnn-bn)",
)
class BNInversion(Attack):
    name = "bn-inversion"
    consumes = ("update",)
    target = "dataset"
    needs_batchnorm = True

    def reconstruct(self, observation, *, generator, seen=()):
        # The client's newest upload: its statistics saw the most of its data.
        observation = latest(observation, seen)
        ctx = observation.context
        model = ctx.build_model()
        if not batchnorm_layers(model):
            raise IncompatibleError(
                "bn-inversion needs a model with BatchNorm running statistics (e.g. --model "
                f"cnn-bn); '{ctx.model_name}' has none"
            )
        # The client's model: what was broadcast plus what it sent back.
        state = {k: v + observation.payload[k] for k, v in ctx.weights_before.items()}
        model.load_state_dict(state)
        lo, hi = ctx.value_range
        out = zsdg(
            model,
            num_classes=ctx.num_classes,
            input_shape=ctx.input_shape,
            per_class=self.params["samples_per_class"],
            iters=self.params["iters"],
            lr=self.params["attack_lr"],
            generator=generator,
            box=ctx.value_range,
            match=self.params["match"],
        )
        meta = {"bn_loss": out.bn_loss, "ce_loss": out.ce_loss}
        return Reconstruction(out.images.clamp(lo, hi), out.labels, meta)

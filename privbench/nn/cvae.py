"""The conditional VAE that the federated CVAE methods train and share, and what an
attacker holding its decoder does with it (sample, reload the decoder's weights)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class CVAE(nn.Module):
    """Conditional VAE on flattened images; ``dec.*`` weights form the shared decoder."""

    def __init__(self, input_shape, num_classes: int, latent: int = 8, hidden: int = 128):
        super().__init__()
        self.input_shape = tuple(input_shape)
        self.num_classes = num_classes
        self.latent = latent
        d = math.prod(input_shape)
        self.enc = nn.Sequential(nn.Linear(d + num_classes, hidden), nn.ReLU())
        self.enc_mu = nn.Linear(hidden, latent)
        self.enc_logvar = nn.Linear(hidden, latent)
        self.dec = nn.Sequential(
            nn.Linear(latent + num_classes, hidden), nn.ReLU(), nn.Linear(hidden, d)
        )

    def condition(self, y: torch.Tensor) -> torch.Tensor:
        """One-hot (or already soft, (B, K)) labels."""
        if y.dtype.is_floating_point and y.ndim == 2:
            return y
        return F.one_hot(y, self.num_classes).float()

    def encode(self, u: torch.Tensor, y: torch.Tensor):
        h = self.enc(torch.cat([u.flatten(1), self.condition(y)], dim=1))
        return self.enc_mu(h), self.enc_logvar(h)

    def decode_logits(self, z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        out = self.dec(torch.cat([z, self.condition(y)], dim=1))
        return out.view(len(z), *self.input_shape)

    def elbo_loss(self, u, y, *, beta: float, generator=None) -> torch.Tensor:
        """Mean over the batch of -ELBO with KL weighted by ``beta`` (u in [0, 1])."""
        mu, logvar = self.encode(u, y)
        eps = torch.randn(mu.shape, generator=generator)
        z = mu + torch.exp(0.5 * logvar) * eps
        rec = F.binary_cross_entropy_with_logits(self.decode_logits(z, y), u, reduction="none")
        kl = -0.5 * (1 + logvar - mu**2 - logvar.exp()).sum(dim=1)
        return (rec.flatten(1).sum(dim=1) + beta * kl).mean()


def to_unit(x: torch.Tensor, value_range) -> torch.Tensor:
    lo, hi = value_range
    return ((x - lo) / (hi - lo)).clamp(0.0, 1.0)


def from_unit(u: torch.Tensor, value_range) -> torch.Tensor:
    lo, hi = value_range
    return lo + (hi - lo) * u


def decoder_state(state) -> dict[str, torch.Tensor]:
    return {k: v for k, v in state.items() if k.startswith("dec.")}


def load_decoder(cvae: CVAE, decoder: dict[str, torch.Tensor]) -> CVAE:
    cvae.load_state_dict(dict(decoder), strict=False)
    return cvae


@torch.no_grad()
def sample(cvae: CVAE, labels: torch.Tensor, value_range, generator) -> torch.Tensor:
    """Decoder means for z ~ N(0, I), in the data's value range."""
    z = torch.randn((len(labels), cvae.latent), generator=generator)
    return from_unit(torch.sigmoid(cvae.decode_logits(z, labels)), value_range)

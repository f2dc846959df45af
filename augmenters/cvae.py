"""Federated conditional VAEs for data imputation (the thesis' CVAE family).

Before the classifier's first round, every client and the server train one CVAE with
FedAvg (its own rounds, local epochs and optimiser). The CVAE's weights travel as
``generator`` messages: the server broadcasts them, each client trains its copy on its
own data and uploads it, the server averages by data size. At the end the server sends
the decoder alone. Then:

- ``cvae-uniform``: every client samples ``k`` images from the decoder, labels spread
  evenly over the classes, and trains on real + synthetic data;
- ``cvae-minority``: the thesis' Algorithm 1: label l gets ``round(k * d_l / sum d)``
  images, where ``d_l = max count - count_l`` is its deficit against the client's most
  frequent label;
- ``cvae-finetune``: clients upload their label counts; the server samples a synthetic
  set with the global label distribution, trains the classifier on it centrally (Adam)
  and broadcasts it as the starting model that the federated rounds fine-tune on real
  data.

The CVAE is an MLP: encoder q(z | x, y) and decoder p(x | z, y) conditioned on the
one-hot label, Bernoulli likelihood on pixels rescaled to [0, 1] (the thesis uses
binarised MNIST), loss = reconstruction + beta * KL (beta = 1 is the plain VAE).
"""

from __future__ import annotations

import copy

import torch

from privbench.augmenters.base import AUGMENTERS, Preparation
from privbench.augmenters.synthetic import SyntheticAugmenter
from privbench.augmenters.zsdg import train_on
from privbench.engine.channel import SERVER
from privbench.engine.federated import minibatches
from privbench.engine.seeding import seeded
from privbench.nn.cvae import CVAE, decoder_state, load_decoder, sample, to_unit
from privbench.registry import Param


def minority_counts(label_counts, k: int) -> list[int]:
    """The thesis' Algorithm 1: images to impute per label.

    deficit_l = max(counts) - counts_l; label l gets round(k * deficit_l / sum(deficits)).
    A client whose labels are already balanced (no deficit) imputes nothing. ``round``
    is Python's (half to even)."""
    counts = [int(c) for c in label_counts]
    top = max(counts)
    deficits = [top - c for c in counts]
    total = sum(deficits)
    if total == 0:
        return [0] * len(counts)
    return [round(k * d / total) for d in deficits]


def uniform_labels(k: int, num_classes: int) -> torch.Tensor:
    """k labels spread evenly over the classes (the first k % K classes get one more)."""
    return torch.arange(k) % num_classes


def train_cvae_locally(cvae, u, y, *, epochs, lr, batch_size, beta, generator) -> None:
    opt = torch.optim.Adam(cvae.parameters(), lr=lr)
    cvae.train()
    for idx in minibatches(cvae, len(y), epochs=epochs, batch_size=batch_size, generator=generator):
        opt.zero_grad()
        cvae.elbo_loss(u[idx], y[idx], beta=beta, generator=generator).backward()
        opt.step()


CVAE_PARAMS = (
    Param("cvae_latent", int, 8, "CVAE latent dimension", low=1),
    Param("cvae_hidden", int, 128, "CVAE hidden units (encoder and decoder)", low=1),
    Param("beta", float, 1.0, "weight of the KL term (beta-VAE; 1 = plain VAE)", low=0.0),
    Param("cvae_rounds", int, 10, "FedAvg rounds of CVAE training (all clients)", low=1),
    Param("cvae_epochs", int, 2, "local epochs of CVAE training per round", low=1),
    Param("cvae_lr", float, 0.01, "Adam step size of CVAE training", low=0.0, low_open=True),
    Param("cvae_batch", int, 32, "CVAE minibatch size", low=1),
)
K_PARAM = Param("k", int, 20, "synthetic images imputed per client", low=0)


class _FederatedCVAE(SyntheticAugmenter):
    """Trains the CVAE with FedAvg in ``prepare``; subclasses say what clients do."""

    shares = ("generator",)

    def new_cvae(self, generator_seed: int) -> CVAE:
        with torch.random.fork_rng():
            torch.manual_seed(generator_seed)
            return CVAE(
                self.input_shape,
                self.num_classes,
                latent=self.params["cvae_latent"],
                hidden=self.params["cvae_hidden"],
            )

    def prepare(self, phase: Preparation) -> None:
        p = self.params
        cvae = self.new_cvae(int(seeded(self.seed, 11).initial_seed()))
        state = {k: v.detach().clone() for k, v in cvae.state_dict().items()}
        clients = phase.clients
        # Mean -ELBO of the global CVAE over the clients' data: at start, then each round.
        self.elbo_history: list[float] = [self.mean_elbo_loss(cvae, clients.values())]
        for _ in range(p["cvae_rounds"]):
            uploads = []
            for cid, client in clients.items():
                got = phase.send(SERVER, cid, "generator", state)
                local = copy.deepcopy(cvae)
                local.load_state_dict(dict(got))
                train_cvae_locally(
                    local,
                    to_unit(client.x, self.value_range),
                    client.y,
                    epochs=p["cvae_epochs"],
                    lr=p["cvae_lr"],
                    batch_size=p["cvae_batch"],
                    beta=p["beta"],
                    generator=phase.generator(cid),
                )
                up = phase.send(
                    cid,
                    SERVER,
                    "generator",
                    local.state_dict(),
                    context=phase.context(len(client.y)),
                )
                uploads.append((len(client.y), up))
            total = sum(n for n, _ in uploads)
            state = {k: sum(n * u[k] for n, u in uploads) / total for k in state}
            cvae.load_state_dict(state)
            self.elbo_history.append(self.mean_elbo_loss(cvae, clients.values()))
        self.cvae = cvae
        decoder = decoder_state(state)
        for cid, client in clients.items():
            client.received["generator"] = phase.send(SERVER, cid, "generator", decoder)
        self.after_generator(phase)

    @torch.no_grad()
    def mean_elbo_loss(self, cvae: CVAE, clients) -> float:
        """-ELBO over every client's data (a fixed noise draw, so rounds compare)."""
        total, n = 0.0, 0
        for c in clients:
            g = torch.Generator().manual_seed(0)
            loss = cvae.elbo_loss(to_unit(c.x, self.value_range), c.y, beta=1.0, generator=g)
            total += float(loss) * len(c.y)
            n += len(c.y)
        return total / n

    def decoder(self, weights) -> CVAE:
        """The CVAE architecture with these decoder weights (encoder unused)."""
        return load_decoder(self.new_cvae(0), weights)

    def client_decoder(self, received) -> CVAE:
        """The decoder a client received."""
        return self.decoder(received["generator"])

    def impute(self, phase: Preparation, labels_for) -> None:
        """Each client samples its synthetic set from the decoder it received."""
        for cid, client in phase.clients.items():
            labels = labels_for(client)
            decoder = self.client_decoder(client.received)
            images = sample(decoder, labels, self.value_range, phase.generator(cid))
            self.synthetic[cid] = (images, labels)

    def after_generator(self, phase: Preparation) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    def attack_synthetic(self, context, count, generator):
        """The attacker samples the shared decoder; it does not know the victim's label
        histogram, so it draws labels uniformly."""
        decoder = self.client_decoder(context.received)
        labels = torch.randint(self.num_classes, (count,), generator=generator)
        return sample(decoder, labels, self.value_range, generator), labels


@AUGMENTERS.register(
    "cvae-uniform",
    params=(*CVAE_PARAMS, K_PARAM),
    description="federated CVAE; every client imputes k samples with labels spread evenly",
)
class CVAEUniform(_FederatedCVAE):
    name = "cvae-uniform"

    def after_generator(self, phase):
        k = self.params["k"]
        self.impute(phase, lambda client: uniform_labels(k, self.num_classes))


@AUGMENTERS.register(
    "cvae-minority",
    params=(*CVAE_PARAMS, K_PARAM),
    description="federated CVAE; every client imputes k samples, most for its rarest labels "
    "(the thesis' Algorithm 1: deficits against its most frequent label)",
)
class CVAEMinority(_FederatedCVAE):
    name = "cvae-minority"

    def after_generator(self, phase):
        def labels_for(client):
            hist = torch.bincount(client.y, minlength=self.num_classes).tolist()
            counts = minority_counts(hist, self.params["k"])
            return torch.repeat_interleave(torch.arange(self.num_classes), torch.tensor(counts))

        self.impute(phase, labels_for)


@AUGMENTERS.register(
    "cvae-finetune",
    params=(
        *CVAE_PARAMS,
        Param(
            "synthetic_size",
            int,
            0,
            "server's synthetic set size (0: as many as the clients' real images)",
            low=0,
        ),
        Param("pretrain_epochs", int, 5, "server epochs on the synthetic set", low=1),
        Param("pretrain_lr", float, 0.01, "server Adam step size", low=0.0, low_open=True),
        Param("weight_decay", float, 1e-4, "server Adam weight decay", low=0.0),
        Param("pretrain_batch", int, 32, "server minibatch size", low=1),
    ),
    description="federated CVAE; the server pre-trains the classifier on a synthetic set "
    "with the global label distribution, the clients fine-tune it on real data",
)
class CVAEFinetune(_FederatedCVAE):
    name = "cvae-finetune"
    shares = ("generator", "label_counts")

    def after_generator(self, phase):
        p = self.params
        hist = torch.zeros(self.num_classes, dtype=torch.long)
        for cid, client in phase.clients.items():
            counts = torch.bincount(client.y, minlength=self.num_classes)
            hist += phase.send(cid, SERVER, "label_counts", {"counts": counts})["counts"].long()
        size = p["synthetic_size"] or int(hist.sum())
        per_class = [round(size * int(c) / int(hist.sum())) for c in hist]
        labels = torch.repeat_interleave(torch.arange(self.num_classes), torch.tensor(per_class))
        gen = phase.generator(SERVER)
        images = sample(self.cvae, labels, self.value_range, gen)
        self.server_set = (images, labels)
        train_on(
            phase.model,
            images,
            labels,
            epochs=p["pretrain_epochs"],
            lr=p["pretrain_lr"],
            batch_size=p["pretrain_batch"],
            generator=gen,
            optimizer="adam",
            weight_decay=p["weight_decay"],
        )

    def attack_synthetic(self, context, count, generator):
        return None  # clients fine-tune on real data only

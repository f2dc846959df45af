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

import torch

from privbench.augmenters.base import AUGMENTERS, ServerRole
from privbench.augmenters.synthetic import SyntheticAugmenter, SyntheticClient
from privbench.augmenters.zsdg import train_on
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


class CVAEClient(SyntheticClient):
    """A client of the federated CVAE: trains each received CVAE on its own data and
    uploads it; once it holds the decoder, imputes its synthetic set from it."""

    def prepare(self, step, client, received, generator):
        m = self.method
        p = m.params
        if step < p["cvae_rounds"]:  # one FedAvg round of the CVAE
            local = m.new_cvae(0)
            local.load_state_dict(dict(received["generator"]))
            train_cvae_locally(
                local,
                to_unit(client.x, m.value_range),
                client.y,
                epochs=p["cvae_epochs"],
                lr=p["cvae_lr"],
                batch_size=p["cvae_batch"],
                beta=p["beta"],
                generator=generator,
            )
            return {"generator": local.state_dict()}
        return self.after_generator(client, received, generator)

    def after_generator(self, client, received, generator):
        """With the decoder received: sample the client's synthetic set from it, labels
        as the method says (:meth:`_FederatedCVAE.impute_labels`)."""
        m = self.method
        labels = m.impute_labels(client.y)
        images = sample(m.decoder(received["generator"]), labels, m.value_range, generator)
        self.keep_synthetic(client.client_id, images, labels)
        return {}


class CVAEServer(ServerRole):
    """The server of the federated CVAE: broadcasts the CVAE each round, averages the
    clients' copies by data size, finally sends the decoder alone."""

    cvae: CVAE | None = None
    server_set: tuple[torch.Tensor, torch.Tensor] | None = None

    def prepare_send(self, step, clients, model):
        m = self.method
        rounds = m.params["cvae_rounds"]
        if step == 0:
            self.cvae = m.new_cvae(int(seeded(m.seed, 11).initial_seed()))
            self.state = {k: v.detach().clone() for k, v in self.cvae.state_dict().items()}
            self.states = [self.state]  # the global CVAE at start and after each round
        if step < rounds:
            return {cid: {"generator": self.state} for cid in clients}
        if step == rounds:
            decoder = decoder_state(self.state)
            return {cid: {"generator": decoder} for cid in clients}
        return None

    def prepare_receive(self, step, replies, model, generator):
        if step < self.method.params["cvae_rounds"]:
            uploads = [(r.num_examples, r.messages["generator"]) for r in replies.values()]
            total = sum(n for n, _ in uploads)
            self.state = {k: sum(n * u[k] for n, u in uploads) / total for k in self.state}
            self.cvae.load_state_dict(self.state)
            self.states.append(self.state)
        else:
            self.after_generator(replies, model, generator)

    def after_generator(self, replies, model, generator) -> None:
        """The clients' replies once they hold the decoder (cvae-finetune's label counts)."""
        return None

    @torch.no_grad()
    def elbo_history(self, clients) -> list[float]:
        """-ELBO of the global CVAE at start and after each round over ``clients``' data
        (a fixed noise draw, so rounds compare): a diagnostic for whoever holds the data
        (tests, benchmarks), not something the server can compute."""
        m = self.method
        cvae = m.new_cvae(0)
        history = []
        for state in self.states:
            cvae.load_state_dict(state)
            total, n = 0.0, 0
            for c in clients:
                g = torch.Generator().manual_seed(0)
                loss = cvae.elbo_loss(to_unit(c.x, m.value_range), c.y, beta=1.0, generator=g)
                total += float(loss) * len(c.y)
                n += len(c.y)
            history.append(total / n)
        return history


class _FederatedCVAE(SyntheticAugmenter):
    """The federated CVAE trained before round 0 (:class:`CVAEClient`,
    :class:`CVAEServer`); subclasses say which labels a client imputes."""

    shares = ("generator",)
    Client = CVAEClient
    Server = CVAEServer

    def new_cvae(self, generator_seed: int) -> CVAE:
        with torch.random.fork_rng():
            torch.manual_seed(generator_seed)
            return CVAE(
                self.input_shape,
                self.num_classes,
                latent=self.params["cvae_latent"],
                hidden=self.params["cvae_hidden"],
            )

    def decoder(self, weights) -> CVAE:
        """The CVAE architecture with these decoder weights (encoder unused)."""
        return load_decoder(self.new_cvae(0), weights)

    def impute_labels(self, labels: torch.Tensor) -> torch.Tensor:  # pragma: no cover
        """The labels a client with records labelled ``labels`` imputes."""
        raise NotImplementedError

    def attack_synthetic(self, context, count, generator):
        """The attacker samples the shared decoder; it does not know the victim's label
        histogram, so it draws labels uniformly."""
        decoder = self.decoder(context.received["generator"])
        labels = torch.randint(self.num_classes, (count,), generator=generator)
        return sample(decoder, labels, self.value_range, generator), labels


@AUGMENTERS.register(
    "cvae-uniform",
    params=(*CVAE_PARAMS, K_PARAM),
    description="federated CVAE; every client imputes k samples with labels spread evenly",
)
class CVAEUniform(_FederatedCVAE):
    name = "cvae-uniform"

    def impute_labels(self, labels):
        return uniform_labels(self.params["k"], self.num_classes)


@AUGMENTERS.register(
    "cvae-minority",
    params=(*CVAE_PARAMS, K_PARAM),
    description="federated CVAE; every client imputes k samples, most for its rarest labels "
    "(the thesis' Algorithm 1: deficits against its most frequent label)",
)
class CVAEMinority(_FederatedCVAE):
    name = "cvae-minority"

    def impute_labels(self, labels):
        hist = torch.bincount(labels, minlength=self.num_classes).tolist()
        counts = minority_counts(hist, self.params["k"])
        return torch.repeat_interleave(torch.arange(self.num_classes), torch.tensor(counts))


class FinetuneClient(CVAEClient):
    """A cvae-finetune client: once the decoder is out, it uploads its label counts."""

    def after_generator(self, client, received, generator):
        counts = torch.bincount(client.y, minlength=self.method.num_classes)
        return {"label_counts": {"counts": counts}}


class FinetuneServer(CVAEServer):
    """The cvae-finetune server: pre-trains the classifier on a synthetic set with the
    clients' global label distribution before it is first broadcast."""

    def after_generator(self, replies, model, generator):
        m = self.method
        p = m.params
        hist = torch.zeros(m.num_classes, dtype=torch.long)
        for reply in replies.values():
            hist += reply.messages["label_counts"]["counts"].long()
        size = p["synthetic_size"] or int(hist.sum())
        per_class = [round(size * int(c) / int(hist.sum())) for c in hist]
        labels = torch.repeat_interleave(torch.arange(m.num_classes), torch.tensor(per_class))
        images = sample(self.cvae, labels, m.value_range, generator)
        self.server_set = (images, labels)
        train_on(
            model,
            images,
            labels,
            epochs=p["pretrain_epochs"],
            lr=p["pretrain_lr"],
            batch_size=p["pretrain_batch"],
            generator=generator,
            optimizer="adam",
            weight_decay=p["weight_decay"],
        )


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

    Client = FinetuneClient
    Server = FinetuneServer

    def attack_synthetic(self, context, count, generator):
        return None  # clients fine-tune on real data only

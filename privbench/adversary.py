"""What a run's attack names stand for: ``NAME@VALUE`` variants and ``all-gradient``,
which expands to every gradient attack with every variant the method calls for."""

from __future__ import annotations

ALL_GRADIENT = "all-gradient"
WORST_CASE = "worst-case"  # the attack name of a run's worst-case row


def gradient_attacks() -> list[str]:
    """Registered attacks that rebuild a victim's batch from its gradient or update."""
    from privbench import registries

    reg = registries()["attack"]
    return [
        n
        for n in reg.names()
        if getattr(reg.entry(n).factory, "target", None) == "batch"
        and {"gradient", "update"} & set(getattr(reg.entry(n).factory, "consumes", ()))
    ]


def expand_attacks(names, method: str) -> tuple[str, ...]:
    """``all-gradient`` stands for every gradient attack, each as it is and with every
    variant the method calls for: ``@enumerate`` where ``method`` publishes candidates an
    adversary can enumerate (FedMix's X_g entries), ``@joint`` where it mixes private
    synthetic samples into the step (Fed-ZDAC, CVAE imputation), ``@sigmoid`` (the
    attacks that take it) where its attacker's view applies image ops to the dummies
    (FedAvP), and each of the method's ``attack_guesses`` (FedAvP: ``@identity``,
    ``@copies``); other names pass through, duplicates dropped."""
    from privbench import registries
    from privbench.errors import PrivbenchError

    names = tuple(names)
    if ALL_GRADIENT not in names:
        return names
    variants = ["", *method_variants(method)]
    attacks = registries()["attack"]

    def accepts(name: str) -> bool:  # only the L-BFGS attacks have a @sigmoid box
        try:
            attacks.variant_param(name)
        except PrivbenchError:
            return False
        return True

    out: list[str] = []
    for n in names:
        expanded = [n]
        if n == ALL_GRADIENT:
            expanded = [a + v for a in gradient_attacks() for v in variants if accepts(a + v)]
        out += [e for e in expanded if e not in out]
    return tuple(out)


def method_variants(method: str) -> list[str]:
    """The attack variants ``method`` calls for (see :func:`expand_attacks`):
    ``@enumerate``, ``@joint``, ``@sigmoid`` and its ``attack_guesses``, each where the
    method has what the variant models; none for a name no method is registered as."""
    from privbench import registries
    from privbench.engine.method import Augmenter

    methods = registries()["method"]
    factory = methods.entry(method).factory if method in methods else None

    def overrides(hook: str) -> bool:
        return isinstance(factory, type) and getattr(factory, hook) is not getattr(Augmenter, hook)

    variants = []
    if overrides("attack_candidates"):
        variants.append("@enumerate")
    if overrides("attack_synthetic"):
        variants.append("@joint")
    if getattr(factory, "attack_image_ops", False):
        variants.append("@sigmoid")
    return variants + ["@" + g for g in getattr(factory, "attack_guesses", ())]


def base_name(name: str) -> str:
    """The plugin of a variant name (``dlg@enumerate`` -> ``dlg``)."""
    return name.partition("@")[0]


__all__ = [
    "ALL_GRADIENT",
    "WORST_CASE",
    "base_name",
    "expand_attacks",
    "gradient_attacks",
    "method_variants",
]

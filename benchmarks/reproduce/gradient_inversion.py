"""Reproduction: DLG (Zhu et al. 2019) and iDLG (Zhao et al. 2020) on MNIST and LFW.

What the papers report, on DLG's LeNet (sigmoid, weights U(-0.5, 0.5)), untrained, one
shared gradient, L-BFGS from one random start (300 iterations in iDLG's code):

- iDLG, Table 1, batch 1: the label extracted from the gradient is right for 100% of
  the images on MNIST, CIFAR-100 and LFW; DLG's jointly optimised label for 89.9%
  (MNIST), 83.3% (CIFAR-100) and 79.1% (LFW) of them.
- DLG, section 4: images are recovered pixel-wise at batch 1 and, more slowly, at
  batch sizes up to 8 (their figure shows batches of 1, 2, 4, 8).

Here, scaled to 2 CPU cores: 8 victims per seed x ``--seeds`` seeds (the iDLG paper
draws 1,000 images per dataset), MNIST at 28x28 (full-size images, a fixed subset of
2,000 training images so a client's data is quick to load) and ``lfw``, scikit-image's
200 grey 25x25 LFW crops (the papers used RGB 32x32 LFW), batches of 1, 4 and 8. Each
victim's first gradient in round 0; success = PSNR > 30 dB per image. Variants: the
published single start (DLG, iDLG), privbench's default of 4 batched restarts (lowest
gradient-matching loss wins) and, not the papers' attack, Inverting Gradients with 4
restarts: DLG's squared-L2 matching scales with the gradient and leaves a victim the
model already classifies with confidence (a tiny gradient) at its random start, which
IG's cosine matching does not. Each victim's message squared norm is kept per seed
(``gradient_inversion_norms.jsonl``) and the page splits every attack's successes by it.

scikit-image's LFW subset is the face-detection demo's: 100 face crops and 100 non-face
crops (label 1 and 0), so about half the LFW victims are not faces.

Rows go to ``benchmarks/results/reproduce/gradient_inversion.jsonl`` as they come (a
rerun resumes), each attack's images and reconstructions to
``gradient_inversion/reconstructions/`` (the docs' reconstruction grid; rows measured
before 2026-12-03 saved none); the table to ``gradient_inversion.md`` beside it. MNIST comes from
``--data-root`` or ``PRIVBENCH_DATA_ROOT``:

    python benchmarks/reproduce/gradient_inversion.py --data-root ../shared/data
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/ (run as a file)

from _common import parse, parser  # noqa: E402
from attack_bands import SUCCESS_DB, Setting, measure, table  # noqa: E402

OUT = Path(__file__).resolve().parents[1] / "results" / "reproduce"
ARRAYS = "gradient_inversion"  # the reconstructions' folder beside the rows (the figure's)
MNIST = (("train_size", 2000), ("test_size", 500))
SETTINGS = [
    Setting(f"{name}, gradient, B={b}", dataset, "lenet-sigmoid", 1, b, 1, 0, 8, params)
    for name, dataset, params in (
        ("MNIST 28x28", "mnist", MNIST),
        ("LFW 25x25 grey", "lfw", ()),
    )
    for b in (1, 4, 8)
]
VARIANTS = {
    "dlg: 1 start (paper)": ("dlg", {"restarts": 1}),
    "idlg: 1 start (paper)": ("idlg", {"restarts": 1}),
    "dlg: 4 restarts": ("dlg", {"restarts": 4}),
    "idlg: 4 restarts": ("idlg", {"restarts": 4}),
    # not the papers' attack: the strongest one privbench has for a victim whose tiny
    # gradient leaves L2 matching at its start (see tiny_messages)
    "ig: 4 restarts": ("ig", {"restarts": 4}),
}
NORMS = "gradient_inversion_norms.jsonl"  # each victim's message squared norm, per seed
TINY = 0.01  # a message this small (squared norm) is "tiny"; most victims' are above 10
# Label accuracy the iDLG paper reports at batch 1 (Table 1).
PAPER_DLG_LABEL_ACC = {"mnist": 0.899, "lfw": 0.791}  # iDLG's own: 1.0 on both


def paper_lines(rows: list[dict]) -> list[str]:
    """Label accuracy at batch 1: the paper's against the measured, per attack."""
    lines = [
        "",
        "Label accuracy at B = 1, the iDLG paper's Table 1 against this run (one start):",
        "",
        "| data | DLG paper | DLG measured | iDLG paper | iDLG measured |",
        "|---|---|---|---|---|",
    ]
    for s in (s for s in SETTINGS if s.batch == 1):
        got = {}
        for attack in ("dlg", "idlg"):
            variant = f"{attack}: 1 start (paper)"
            rs = [r for r in rows if (r["setting"], r["variant"]) == (s.label, variant)]
            n = sum(r["victims"] for r in rs)
            got[attack] = (
                f"{sum(r['label_acc'] * r['victims'] for r in rs) / n:.3f} ({n} images)"
                if n
                else "-"
            )
        lines.append(
            f"| {s.dataset} | {PAPER_DLG_LABEL_ACC[s.dataset]:.3f} | {got['dlg']} "
            f"| 1.000 | {got['idlg']} |"
        )
    return lines


def tiny_messages(rows: list[dict], norms: list[dict]) -> list[str]:
    """Per setting, the victims whose message has a squared norm below ``TINY`` (the
    model already classifies them with confidence) against the others: how many each
    variant rebuilds above 30 dB. Victim i of a row is victim i of its seed's norms."""
    sizes = {(n["setting"], n["seed"]): n["message_sq_norm"] for n in norms}
    lines = [
        "",
        f"Victims whose message (the gradient) has a squared norm below {TINY:g} against "
        "the rest: images above 30 dB per attack",
        "",
        "| setting | attack | tiny messages | the rest |",
        "|---|---|---|---|",
    ]
    found = False
    for s in SETTINGS:
        for variant in VARIANTS:
            tiny, rest = [0, 0], [0, 0]
            for r in rows:
                size = sizes.get((r["setting"], r["seed"]))
                if (r["setting"], r["variant"]) != (s.label, variant) or size is None:
                    continue
                for psnr, sq in zip(r["victim_psnr"], size, strict=True):
                    box = tiny if sq < TINY else rest
                    box[0] += psnr > SUCCESS_DB
                    box[1] += 1
            if tiny[1]:
                found = True
                lines.append(
                    f"| {s.label} | {variant} | {tiny[0]}/{tiny[1]} | {rest[0]}/{rest[1]} |"
                )
    return lines if found else []


def page(rows: list[dict]) -> str:
    """The results page's block: the bands, the papers' label accuracy beside ours, and
    the victims whose tiny message defeats L2 matching."""
    from _store import RowStore

    norms = (
        list(RowStore(OUT / NORMS, lambda r: (r["setting"], r["seed"])))
        if (OUT / NORMS).exists()
        else []
    )
    return "\n".join([table(rows), *paper_lines(rows), *tiny_messages(rows, norms)])


def verdicts(rows: list[dict]) -> list[str]:
    """The papers' claims against this run: iDLG's label is exact at B = 1 (holds when
    every image's label is right); DLG recovers images pixel-wise at B = 1 (holds when
    most single-start DLG reconstructions pass 30 dB, partly when some do)."""
    out = []
    for s in (s for s in SETTINGS if s.batch == 1):

        def pooled(variant, key, s=s):
            rs = [r for r in rows if (r["setting"], r["variant"]) == (s.label, variant)]
            n = sum(r["victims"] for r in rs)
            return (sum(r[key] * r["victims"] for r in rs) / n if n else None), n

        label, n = pooled("idlg: 1 start (paper)", "label_acc")
        if n:
            verdict = "holds" if label == 1.0 else "does not hold"
            out.append(
                f"- {s.dataset}, iDLG's label at B = 1: {label:.3f} of {n} images right "
                f"(paper: 1.000): **{verdict}**"
            )
        rs = [r for r in rows if (r["setting"], r["variant"]) == (s.label, "dlg: 1 start (paper)")]
        wins, total = sum(r["successes"] for r in rs), sum(r["victims"] for r in rs)
        if total:
            share = wins / total
            verdict = "holds" if share > 0.5 else "partly" if wins else "does not hold"
            out.append(
                f"- {s.dataset}, DLG recovers the image at B = 1: {wins}/{total} above "
                f"{SUCCESS_DB:.0f} dB with one start: **{verdict}**"
            )
    return out


GRID_VARIANTS = (
    "dlg: 1 start (paper)",
    "idlg: 1 start (paper)",
    "dlg: 4 restarts",
    "ig: 4 restarts",
)


def grid_figure(rows: list[dict], folder: Path, out: str) -> str | None:
    """The reconstruction grid at B = 1: per dataset (a block of rows), every private
    image of the lowest seed whose rows saved all of ``GRID_VARIANTS`` and under each
    its reconstruction by every variant with that image's PSNR. None when no seed saved
    them all (rows from before the reconstructions were kept)."""
    import numpy as np

    from privbench.results.plots import _pyplot, _save, image_hwc

    blocks = []  # (setting, seed, {variant: row})
    for s in (s for s in SETTINGS if s.batch == 1):
        by_seed: dict[int, dict[str, dict]] = {}
        for r in rows:
            if r["setting"] == s.label and r.get("reconstruction_file"):
                by_seed.setdefault(r["seed"], {})[r["variant"]] = r
        full = sorted(seed for seed, got in by_seed.items() if set(GRID_VARIANTS) <= set(got))
        if full:
            blocks.append((s, full[0], by_seed[full[0]]))
    if not blocks:
        return None
    plt = _pyplot()
    per = 1 + len(GRID_VARIANTS)  # rows of one block: the private images, each variant
    width = max(s.victims for s, _, _ in blocks)
    fig, axes = plt.subplots(
        per * len(blocks),
        width,
        figsize=(1.1 * width + 1.2, 1.25 * per * len(blocks) + 0.6),
        squeeze=False,
    )
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_frame_on(False)

    def show(ax, img):
        img = image_hwc(img)
        ax.imshow(img, cmap="gray" if img.ndim == 2 else None, vmin=0, vmax=1)
        ax.set_frame_on(True)

    for k, (s, seed, got) in enumerate(blocks):
        top = k * per
        for i, variant in enumerate(GRID_VARIANTS):  # each variant's file read once
            with np.load(folder / got[variant]["reconstruction_file"]) as data:
                gt, rec = data["ground_truth"], data["reconstruction"]
            for v in range(s.victims):
                if i == 0:
                    show(axes[top][v], gt[v])
                    axes[top][v].set_title(f"{s.dataset} s{seed} #{v}", fontsize=8)
                show(axes[top + i + 1][v], rec[v])
                psnr = got[variant]["victim_psnr"][v]
                axes[top + i + 1][v].set_xlabel(f"{psnr:.1f} dB", fontsize=7)
            axes[top + i + 1][0].set_ylabel(variant.replace(": ", "\n"), fontsize=7)
        axes[top][0].set_ylabel("private", fontsize=7)
    fig.suptitle(
        "DLG / iDLG (and IG) at B = 1 on an untrained sigmoid LeNet: private images, "
        "reconstructions and their PSNR",
        fontsize=9,
    )
    return _save(fig, plt, out)


def main(argv: list[str] | None = None) -> None:
    args = parse(parser(__doc__, out=OUT, seeds=3, train_size=None), argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows = measure(
        args.seeds,
        list(VARIANTS),
        SETTINGS,
        out / "gradient_inversion.jsonl",
        VARIANTS,
        arrays=out / ARRAYS,
        norms=out / NORMS,
    )
    text = page(rows)
    command = "python benchmarks/reproduce/gradient_inversion.py"
    (out / "gradient_inversion.md").write_text(f"`{command} --seeds {args.seeds}`\n\n{text}\n")
    print(text)


if __name__ == "__main__":
    main()

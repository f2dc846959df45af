"""Leakage, utility and matching metrics.

Leakage uses scikit-image's PSNR and SSIM on images in the dataset's value range,
after matching each reconstruction to a ground-truth image by optimal assignment
(scipy's ``linear_sum_assignment`` on pairwise MSE). PSNR is capped at
``PSNR_CAP`` dB (MSE floored at 1e-10 for a [0, 1] range) so that an exact recovery
is a finite, JSON-safe number.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import torch

# scikit-image and scipy are imported where an image is scored: together they cost about
# a second at start-up, which commands that score nothing (list, table, a sweep's parent)
# need not pay.

PSNR_CAP = 100.0


def _hwc(img: np.ndarray) -> np.ndarray:
    """(C, H, W) -> (H, W, C), or (H, W) for one channel."""
    img = np.asarray(img, dtype=np.float64)
    return img[0] if img.shape[0] == 1 else np.moveaxis(img, 0, -1)


def leaked_db(psnr: float | None, augmented: float | None) -> float | None:
    """How much a reconstruction leaked, in dB: its PSNR to the private image, or to the
    augmented copy of it the client trained on where that is higher (``psnr_augmented``:
    an augmentation is not a defense). What the worst case maximises per victim."""
    if psnr is None or augmented is None:
        return psnr
    return max(psnr, augmented)


def psnr(gt: np.ndarray, rec: np.ndarray, data_range: float = 1.0) -> float:
    """PSNR in dB of one (C, H, W) image pair, capped at ``PSNR_CAP``."""
    from skimage.metrics import peak_signal_noise_ratio

    gt, rec = np.asarray(gt, np.float64), np.asarray(rec, np.float64)
    if float(np.mean((gt - rec) ** 2)) <= 1e-10 * data_range**2:
        return PSNR_CAP
    return min(float(peak_signal_noise_ratio(gt, rec, data_range=data_range)), PSNR_CAP)


def affine_fit(gt: np.ndarray, rec: np.ndarray) -> np.ndarray:
    """``a * rec + b`` per channel, with (a, b) the least-squares fit to ``gt``: what is
    left of a (C, H, W) reconstruction once contrast and brightness, which a train-mode
    BatchNorm gradient barely determines, are forgiven."""
    gt, rec = np.asarray(gt, np.float64), np.asarray(rec, np.float64)
    out = np.empty_like(rec)
    for c in range(rec.shape[0]):
        r, g = rec[c].ravel(), gt[c].ravel()
        design = np.stack([r, np.ones_like(r)], axis=1)
        (a, b), *_ = np.linalg.lstsq(design, g, rcond=None)
        out[c] = (a * r + b).reshape(rec[c].shape)
    return out


def psnr_affine(gt: np.ndarray, rec: np.ndarray, data_range: float = 1.0) -> float:
    """PSNR after the per-channel affine fit of ``rec`` to ``gt`` (:func:`affine_fit`);
    never below :func:`psnr` (the identity is one of the fits)."""
    return psnr(gt, affine_fit(gt, rec), data_range)


def ssim(gt: np.ndarray, rec: np.ndarray, data_range: float = 1.0) -> float:
    """SSIM of one (C, H, W) image pair (scikit-image, Gaussian-free 7x7 window or smaller)."""
    from skimage.metrics import structural_similarity

    a, b = _hwc(gt), _hwc(rec)
    side = min(a.shape[0], a.shape[1])
    win = min(7, side if side % 2 else side - 1)
    if win < 3:
        raise ValueError(f"SSIM needs images of at least 3x3 pixels, got {a.shape[:2]}")
    channel_axis = -1 if a.ndim == 3 else None
    return float(
        structural_similarity(a, b, data_range=data_range, win_size=win, channel_axis=channel_axis)
    )


def match(gt: np.ndarray, rec: np.ndarray) -> np.ndarray:
    """Optimal assignment of reconstructions to ground truth by MSE; returns rec index per gt."""
    from scipy.optimize import linear_sum_assignment

    g = gt.reshape(len(gt), -1)
    r = rec.reshape(len(rec), -1)
    cost = ((g[:, None, :] - r[None, :, :]) ** 2).mean(axis=2)  # (B_gt, B_rec)
    rows, cols = linear_sum_assignment(cost)
    order = np.full(len(gt), -1, dtype=np.int64)
    order[rows] = cols
    return order


@dataclass(frozen=True)
class LeakageScore:
    psnr: float
    ssim: float
    mse: float
    label_acc: float | None
    per_image_psnr: tuple[float, ...]
    num_images: int
    psnr_affine: float | None = None  # after the per-channel affine fit (affine_fit)
    # against the private image under the public augmentation draw it matches best
    # (a method's augmented_views), or as is when that is closer
    psnr_augmented: float | None = None


def score_reconstruction(
    gt_images: torch.Tensor,
    rec_images: torch.Tensor,
    gt_labels: torch.Tensor | None = None,
    rec_labels: torch.Tensor | None = None,
    value_range: tuple[float, float] = (0.0, 1.0),
    views: torch.Tensor | None = None,
) -> LeakageScore:
    """Match and score a batch of reconstructions against the private images. ``views``
    (K, B, C, H, W): the private images under each augmentation draw; each pair then
    also scores against the view it matches best (``psnr_augmented``). With more
    reconstructions than images (an attack with a dummy per augmented copy), image i's
    ``psnr_augmented`` is the best of every reconstruction against its views."""
    lo, hi = value_range
    gt = gt_images.detach().cpu().double()
    rec = rec_images.detach().cpu().double().clamp(lo, hi)
    order = match(gt.numpy(), rec.numpy())
    gi = [i for i, j in enumerate(order) if j >= 0]
    rj = [int(order[i]) for i in gi]
    labelled = gt_labels is not None and rec_labels is not None
    score = score_pairs(
        gt[gi],
        rec[rj],
        gt_labels[gi] if labelled else None,
        rec_labels[rj] if labelled else None,
        value_range,
    )
    if views is None:
        return score
    aug = views.detach().cpu().double()
    best = []
    for i, j, p in zip(gi, rj, score.per_image_psnr, strict=True):
        for r in range(len(rec)) if len(rec) > len(gt) else [j]:
            nearest = int(((aug[:, i] - rec[r]) ** 2).flatten(1).mean(1).argmin())
            p = max(p, psnr(aug[nearest, i].numpy(), rec[r].numpy(), hi - lo))
        best.append(p)
    return replace(score, psnr_augmented=float(np.mean(best)))


def score_pairs(
    gt_images: torch.Tensor,
    rec_images: torch.Tensor,
    gt_labels: torch.Tensor | None = None,
    rec_labels: torch.Tensor | None = None,
    value_range: tuple[float, float] = (0.0, 1.0),
) -> LeakageScore:
    """Score rec_images[i] against gt_images[i] (already paired: an audit's per-record
    best match), without re-matching."""
    lo, hi = value_range
    gt = gt_images.detach().cpu().double().numpy()
    rec = rec_images.detach().cpu().double().clamp(lo, hi).numpy()
    hits = None
    if gt_labels is not None and rec_labels is not None:
        hits = [int(a) == int(b) for a, b in zip(gt_labels, rec_labels, strict=True)]
    return _score_pairs(gt, rec, hi - lo, hits)


def _score_pairs(
    gt: np.ndarray, rec: np.ndarray, data_range: float, hits: list[bool] | None = None
) -> LeakageScore:
    """Mean PSNR/SSIM/MSE of already paired images gt[i] <-> rec[i], (N, C, H, W) each."""
    psnrs = [psnr(g, r, data_range) for g, r in zip(gt, rec, strict=True)]
    affine = [max(p, psnr_affine(g, r, data_range)) for g, r, p in zip(gt, rec, psnrs, strict=True)]
    ssims = [ssim(g, r, data_range) for g, r in zip(gt, rec, strict=True)]
    mses = [float(np.mean((g - r) ** 2)) for g, r in zip(gt, rec, strict=True)]
    return LeakageScore(
        psnr=float(np.mean(psnrs)),
        ssim=float(np.mean(ssims)),
        mse=float(np.mean(mses)),
        label_acc=float(np.mean(hits)) if hits else None,
        per_image_psnr=tuple(psnrs),
        num_images=len(psnrs),
        psnr_affine=float(np.mean(affine)),
    )


def _nearest(candidates: torch.Tensor, pool: torch.Tensor, chunk: int = 256) -> torch.Tensor:
    """Index into ``pool`` of each candidate's nearest image by MSE (chunked cdist)."""
    c = candidates.reshape(len(candidates), -1).double()
    p = pool.reshape(len(pool), -1).double()
    out = [torch.cdist(c[s : s + chunk], p).argmin(dim=1) for s in range(0, len(c), chunk)]
    return torch.cat(out)


def score_nearest(
    gt_images: torch.Tensor,
    rec_images: torch.Tensor,
    value_range: tuple[float, float] = (0.0, 1.0),
    *,
    owner: int | None = None,
    population: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> LeakageScore:
    """Score each reconstruction against its nearest private image (artifact attacks).

    ``gt_images`` are the victim's private images. When the reconstructions are not
    attributed to the victim (a curious client sees everyone's entries mixed), pass the
    whole ``population`` (images, owner ids): only reconstructions whose nearest image
    overall belongs to ``owner`` are scored; if none does, all are scored against the
    victim's images (the adversary's best claim).
    """
    lo, hi = value_range
    rec = rec_images.detach().double().clamp(lo, hi)
    if population is not None:
        images, owners = population
        mine = owners[_nearest(rec, images)] == owner
        if bool(mine.any()):
            rec = rec[mine]
    gt = gt_images.detach().double()
    idx = _nearest(rec, gt)
    return _score_pairs(gt[idx].numpy(), rec.numpy(), hi - lo)


def label_distribution_error(estimate: torch.Tensor, truth: torch.Tensor) -> float:
    """Total-variation distance between two label histograms (normalised): 0 = exact."""
    p = torch.as_tensor(estimate, dtype=torch.float64).clamp(min=0)
    q = torch.as_tensor(truth, dtype=torch.float64)
    p, q = p / p.sum(), q / q.sum()
    return float(0.5 * (p - q).abs().sum())


def combine_scores(scores: list[LeakageScore]) -> LeakageScore:
    """Pool per-victim scores into one, weighting every image equally."""
    n = sum(s.num_images for s in scores)
    labelled = [s for s in scores if s.label_acc is not None]
    return LeakageScore(
        psnr=sum(s.psnr * s.num_images for s in scores) / n,
        ssim=sum(s.ssim * s.num_images for s in scores) / n,
        mse=sum(s.mse * s.num_images for s in scores) / n,
        label_acc=(
            sum(s.label_acc * s.num_images for s in labelled) / sum(s.num_images for s in labelled)
        )
        if labelled
        else None,
        per_image_psnr=tuple(p for s in scores for p in s.per_image_psnr),
        num_images=n,
        psnr_affine=_pooled(scores, "psnr_affine"),
        psnr_augmented=_pooled(scores, "psnr_augmented"),
    )


def _pooled(scores: list[LeakageScore], field: str) -> float | None:
    """The image-weighted mean of an optional score field; None unless every score has it."""
    values = [getattr(s, field) for s in scores]
    if any(v is None for v in values):
        return None
    return sum(v * s.num_images for v, s in zip(values, scores, strict=True)) / sum(
        s.num_images for s in scores
    )


@dataclass(frozen=True)
class Utility:
    accuracy: float
    client_acc_mean: float
    client_acc_var: float
    class_acc_var: float
    macro_f1: float


def macro_f1(y_true: np.ndarray, y_pred: np.ndarray, num_classes: int) -> float:
    """Unweighted mean F1 over the classes present in ``y_true`` or ``y_pred``."""
    f1s = []
    for c in range(num_classes):
        tp = np.sum((y_pred == c) & (y_true == c))
        fp = np.sum((y_pred == c) & (y_true != c))
        fn = np.sum((y_pred != c) & (y_true == c))
        if tp + fp + fn == 0:
            continue  # class absent from both: sklearn's labels=None ignores it too
        f1s.append(2 * tp / (2 * tp + fp + fn))
    return float(np.mean(f1s)) if f1s else 0.0


def per_class_accuracy(y_true: np.ndarray, y_pred: np.ndarray, num_classes: int) -> np.ndarray:
    accs = [np.mean(y_pred[y_true == c] == c) for c in range(num_classes) if np.any(y_true == c)]
    return np.array(accs, dtype=np.float64)


def utility(
    y_true: np.ndarray, y_pred: np.ndarray, num_classes: int, client_accs: list[float]
) -> Utility:
    """Global accuracy, client fairness (mean/var of local test accuracy), class fairness
    (variance of per-class accuracy) and macro-F1. Accuracies are fractions in [0, 1]."""
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    cls = per_class_accuracy(y_true, y_pred, num_classes)
    ca = np.asarray(client_accs, dtype=np.float64)
    return Utility(
        accuracy=float(np.mean(y_true == y_pred)),
        client_acc_mean=float(ca.mean()) if len(ca) else float("nan"),
        client_acc_var=float(ca.var()) if len(ca) else float("nan"),
        class_acc_var=float(cls.var()),
        macro_f1=macro_f1(y_true, y_pred, num_classes),
    )

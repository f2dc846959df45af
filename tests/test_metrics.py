"""Leakage and utility metrics against independent implementations and hand-worked cases."""

import numpy as np
import pytest
import torch
from skimage import data as skdata
from skimage.metrics import peak_signal_noise_ratio, structural_similarity
from sklearn.metrics import f1_score

from privbench.evaluation.metrics import (
    PSNR_CAP,
    macro_f1,
    match,
    psnr,
    score_reconstruction,
    ssim,
    utility,
)


@pytest.fixture
def pair():
    img = skdata.camera()[::16, ::16].astype(np.float64) / 255.0  # (32, 32)
    noisy = np.clip(img + np.random.default_rng(0).normal(0, 0.05, img.shape), 0, 1)
    return img[None], noisy[None]  # (1, H, W)


def test_psnr_and_ssim_equal_scikit_image(pair):
    gt, rec = pair
    assert psnr(gt, rec) == pytest.approx(peak_signal_noise_ratio(gt[0], rec[0], data_range=1.0))
    assert ssim(gt, rec) == pytest.approx(structural_similarity(gt[0], rec[0], data_range=1.0))


def test_psnr_hand_worked_and_capped():
    gt = np.zeros((1, 4, 4))
    rec = np.full((1, 4, 4), 0.1)  # MSE 0.01 -> 20 dB
    assert psnr(gt, rec) == pytest.approx(20.0)
    assert psnr(gt, gt) == PSNR_CAP


def test_ssim_rgb_and_small_images():
    rng = np.random.default_rng(1)
    a = rng.random((3, 8, 8))
    b = np.clip(a + rng.normal(0, 0.1, a.shape), 0, 1)
    expected = structural_similarity(
        np.moveaxis(a, 0, -1), np.moveaxis(b, 0, -1), data_range=1.0, channel_axis=-1, win_size=7
    )
    assert ssim(a, b) == pytest.approx(expected)
    assert ssim(a, a) == pytest.approx(1.0)


def test_matching_undoes_a_permutation():
    rng = np.random.default_rng(0)
    gt = rng.random((5, 1, 6, 6))
    perm = np.array([3, 0, 4, 1, 2])
    rec = gt[perm]
    order = match(gt, rec)
    assert np.array_equal(rec[order], gt)
    s = score_reconstruction(
        torch.from_numpy(gt), torch.from_numpy(rec), torch.arange(5), torch.arange(5)[perm]
    )
    assert s.psnr == PSNR_CAP and s.ssim == pytest.approx(1.0) and s.label_acc == 1.0


def test_macro_f1_equals_sklearn():
    rng = np.random.default_rng(0)
    y, p = rng.integers(0, 5, 200), rng.integers(0, 5, 200)
    p[:50] = y[:50]
    assert macro_f1(y, p, 5) == pytest.approx(f1_score(y, p, average="macro"))
    p2 = np.where(p == 4, 0, p)  # a class never predicted
    assert macro_f1(y, p2, 5) == pytest.approx(f1_score(y, p2, average="macro"))


def test_utility_hand_worked():
    y = np.array([0, 0, 1, 1])
    p = np.array([0, 1, 1, 1])
    u = utility(y, p, 2, client_accs=[0.5, 1.0])
    assert u.accuracy == 0.75
    assert u.class_acc_var == pytest.approx(np.var([0.5, 1.0]))
    assert u.client_acc_mean == 0.75 and u.client_acc_var == pytest.approx(0.0625)


def test_psnr_affine_is_the_hand_fit_and_never_below_psnr():
    from privbench.evaluation.metrics import PSNR_CAP, psnr, psnr_affine

    rng = np.random.default_rng(0)
    gt = rng.random((1, 4, 4))
    # A contrast/brightness change is forgiven entirely.
    assert psnr_affine(gt, 0.5 * gt + 0.2) == PSNR_CAP
    assert psnr(gt, 0.5 * gt + 0.2) < 30
    # Hand fit: a = cov(r, g) / var(r), b = mean(g) - a mean(r), per channel.
    rec = rng.random((2, 4, 4))
    gt2 = rng.random((2, 4, 4))
    fitted = np.empty_like(rec)
    for c in range(2):
        r, g = rec[c].ravel(), gt2[c].ravel()
        a = ((r - r.mean()) * (g - g.mean())).sum() / ((r - r.mean()) ** 2).sum()
        b = g.mean() - a * r.mean()
        fitted[c] = (a * r + b).reshape(4, 4)
    mse = float(np.mean((gt2 - fitted) ** 2))
    assert psnr_affine(gt2, rec) == pytest.approx(10 * np.log10(1.0 / mse), rel=1e-12)
    for _ in range(20):
        g, r = rng.random((3, 5, 5)), rng.random((3, 5, 5))
        assert psnr_affine(g, r) >= psnr(g, r)


def test_psnr_augmented_scores_the_view_a_reconstruction_matches_best():
    """Hand-worked: the reconstruction is the flipped private image. As is it scores low;
    against the views (the image as is, flipped) it is exact; without views, None."""
    from dataclasses import replace

    from privbench.evaluation.metrics import PSNR_CAP, combine_scores, score_reconstruction

    gen = torch.Generator().manual_seed(0)
    gt = torch.rand(1, 1, 8, 8, generator=gen)
    flipped = gt.flip(-1)
    views = torch.stack([gt, flipped])  # (K=2, B=1, C, H, W)
    plain = score_reconstruction(gt, flipped)
    score = score_reconstruction(gt, flipped, views=views)
    assert plain.psnr_augmented is None and score.psnr == plain.psnr < 20
    assert score.psnr_augmented == PSNR_CAP
    # never below the score as is: a view farther than the image itself does not count
    far = score_reconstruction(gt, gt + 0.01, views=torch.stack([flipped]))
    assert far.psnr_augmented == far.psnr
    pooled = combine_scores([score, replace(far, num_images=3)])
    assert pooled.psnr_augmented == pytest.approx((PSNR_CAP + 3 * far.psnr) / 4)
    assert combine_scores([score, plain]).psnr_augmented is None

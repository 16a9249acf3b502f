"""Unit tests for semray.metrics against cases worked out by hand."""
from __future__ import annotations

import math

import numpy as np
import pytest

from semray.metrics import (
    at_threshold,
    aupro,
    auroc,
    average_precision,
    best_f1,
    image_auroc,
    patch_metrics,
    pixel_auroc,
    pro_curve,
)

# labels [0,0,1,1], scores [0.1,0.4,0.35,0.8]:
#   AUROC: positive/negative pairs (0.35>0.1 yes, 0.35>0.4 no, 0.8>0.1 yes, 0.8>0.4 yes) -> 3/4
#   ranked 0.8(+) 0.4(-) 0.35(+) 0.1(-): AP = 1/2 * 1 + 1/2 * 2/3 = 5/6
#   thresholds: >=0.8 P=1 R=1/2 F1=2/3; >=0.4 P=1/2 R=1/2 F1=1/2; >=0.35 P=2/3 R=1 F1=4/5; >=0.1 P=1/2 R=1 F1=2/3
LABELS = [0, 0, 1, 1]
SCORES = [0.1, 0.4, 0.35, 0.8]


# ---------------------------------------------------------------- auroc
def test_auroc_perfect_reversed_and_hand_case():
    assert auroc([0, 0, 1, 1], [0.1, 0.2, 0.3, 0.4]) == pytest.approx(1.0)
    assert auroc([0, 0, 1, 1], [0.4, 0.3, 0.2, 0.1]) == pytest.approx(0.0)
    assert auroc(LABELS, SCORES) == pytest.approx(0.75)


def test_auroc_ties_count_half():
    assert auroc([0, 1, 0, 1, 1], [0.5] * 5) == pytest.approx(0.5)
    # pos 0.5 ties neg 0.5 (1/2) and beats 0.2 (1); pos 0.9 beats both (2) -> 3.5 / 4
    assert auroc([0, 0, 1, 1], [0.5, 0.2, 0.5, 0.9]) == pytest.approx(0.875)


def test_auroc_accepts_bool_and_2d_inputs():
    labels = np.array([[False, True], [False, True]])
    scores = np.array([[0.1, 0.35], [0.4, 0.8]])
    assert auroc(labels, scores) == pytest.approx(0.75)


@pytest.mark.parametrize("labels", [[0, 0, 0], [1, 1, 1]])
def test_auroc_single_class_is_nan(labels):
    assert math.isnan(auroc(labels, [0.1, 0.2, 0.3]))


# ---------------------------------------------------------------- average precision
def test_average_precision_hand_case():
    assert average_precision(LABELS, SCORES) == pytest.approx(5 / 6)
    assert average_precision([0, 0, 1, 1], [0.1, 0.2, 0.3, 0.4]) == pytest.approx(1.0)
    # ranked 0.9(-) 0.8(+) 0.1(+): AP = 1/2 * 1/2 + 1/2 * 2/3 = 7/12
    assert average_precision([1, 0, 1], [0.8, 0.9, 0.1]) == pytest.approx(7 / 12)


def test_average_precision_no_positives_is_nan_all_positives_is_one():
    assert math.isnan(average_precision([0, 0], [0.1, 0.2]))
    assert average_precision([1, 1], [0.1, 0.2]) == pytest.approx(1.0)


# ---------------------------------------------------------------- best F1
def test_best_f1_hand_case():
    result = best_f1(LABELS, SCORES)
    assert result["threshold"] == pytest.approx(0.35)
    assert result["precision"] == pytest.approx(2 / 3)
    assert result["recall"] == pytest.approx(1.0)
    assert result["f1"] == pytest.approx(0.8)


def test_best_f1_second_hand_case():
    # scores 0.9 0.8 0.7 0.3 0.2 0.1 with labels 1 0 1 0 1 0:
    #   >=0.9 P=1 R=1/3 F1=1/2; >=0.8 P=1/2 R=1/3 F1=2/5; >=0.7 P=2/3 R=2/3 F1=2/3;
    #   >=0.3 P=1/2 R=2/3 F1=4/7; >=0.2 P=3/5 R=1 F1=3/4; >=0.1 P=1/2 R=1 F1=2/3
    result = best_f1([1, 0, 1, 0, 1, 0], [0.9, 0.8, 0.7, 0.3, 0.2, 0.1])
    assert result == pytest.approx({"precision": 0.6, "recall": 1.0, "f1": 0.75, "threshold": 0.2})


def test_best_f1_perfect_separation():
    result = best_f1([0, 1, 0, 1], [0.2, 0.7, 0.1, 0.9])
    assert result == pytest.approx({"precision": 1.0, "recall": 1.0, "f1": 1.0, "threshold": 0.7})


def test_best_f1_agrees_with_at_threshold():
    rng = np.random.default_rng(0)
    labels = rng.random(200) < 0.3
    scores = rng.random(200) + 0.3 * labels
    best = best_f1(labels, scores)
    again = at_threshold(labels, scores, best["threshold"])
    assert again == pytest.approx(best)
    # no other threshold does better
    assert all(at_threshold(labels, scores, t)["f1"] <= best["f1"] + 1e-12 for t in np.unique(scores))


def test_best_f1_no_positives_is_nan():
    result = best_f1([0, 0, 0], [0.1, 0.2, 0.3])
    assert set(result) == {"precision", "recall", "f1", "threshold"}
    assert all(math.isnan(v) for v in result.values())


# ---------------------------------------------------------------- at_threshold
def test_at_threshold_hand_cases():
    # >= is inclusive: 0.35 flags 0.35, 0.4, 0.8
    assert at_threshold(LABELS, SCORES, 0.35) == pytest.approx(
        {"precision": 2 / 3, "recall": 1.0, "f1": 0.8, "threshold": 0.35})
    assert at_threshold(LABELS, SCORES, 0.4) == pytest.approx(
        {"precision": 0.5, "recall": 0.5, "f1": 0.5, "threshold": 0.4})
    assert at_threshold(LABELS, SCORES, 0.0) == pytest.approx(
        {"precision": 0.5, "recall": 1.0, "f1": 2 / 3, "threshold": 0.0})


def test_at_threshold_nothing_flagged():
    assert at_threshold(LABELS, SCORES, 5.0) == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "threshold": 5.0}


def test_at_threshold_no_positives():
    result = at_threshold([0, 0, 0], [0.1, 0.5, 0.9], 0.4)
    assert result["precision"] == 0.0 and math.isnan(result["recall"]) and result["f1"] == 0.0


# ---------------------------------------------------------------- patch_metrics and validation
def test_patch_metrics_combines_all():
    result = patch_metrics(LABELS, SCORES)
    assert result == pytest.approx({"auroc": 0.75, "average_precision": 5 / 6, "precision": 2 / 3,
                                    "recall": 1.0, "f1": 0.8, "threshold": 0.35})


FUNCTIONS = [auroc, average_precision, best_f1, patch_metrics, lambda y, s: at_threshold(y, s, 0.5)]


@pytest.mark.parametrize("fn", FUNCTIONS)
def test_mismatched_lengths_raise(fn):
    with pytest.raises(ValueError, match="labels"):
        fn([0, 1, 1], [0.1, 0.2])


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
@pytest.mark.parametrize("fn", FUNCTIONS)
def test_non_finite_scores_raise(fn, bad):
    with pytest.raises(ValueError, match="NaN"):
        fn([0, 1, 0, 1], [0.1, bad, 0.3, 0.4])


def test_held_out_f1_uses_the_other_folds_threshold():
    from semray.metrics import held_out_f1

    # image 0 separates at 0.5, image 1 at 5: each fold's threshold is wrong for the other
    labels = np.array([0, 1, 0, 1])
    scores = np.array([0.1, 0.9, 4.0, 6.0])
    groups = np.array([0, 0, 1, 1])
    # fold {0} at image 1's threshold 6.0: flags nothing (fn 1); fold {1} at 0.9: flags both (tp 1, fp 1)
    assert held_out_f1(labels, scores, groups) == pytest.approx(2 * 1 / (2 * 1 + 1 + 1))
    # one image only: undefined
    assert np.isnan(held_out_f1(labels, scores, np.zeros(4)))
    # two identical images: each fold's threshold is exactly right for the other
    assert held_out_f1(labels, np.array([0.1, 0.9, 0.1, 0.9]), groups) == pytest.approx(1.0)


# ---------------------------------------------------------------- pixel and region level


def _two_regions():
    mask = np.zeros((10, 10), bool)
    mask[1:3, 1:3] = True  # region A: 4 px
    mask[6:9, 5:9] = True  # region B: 12 px
    return mask


def test_perfect_map_gives_one_everywhere():
    mask = _two_regions()
    perfect = mask.astype(float)
    assert pixel_auroc([mask], [perfect]) == 1.0
    assert aupro([mask], [perfect]) == pytest.approx(1.0)


def test_random_map_gives_half_and_fpr_bound():
    rng = np.random.default_rng(0)
    masks = [rng.random((64, 64)) < 0.05 for _ in range(4)]
    maps = [rng.random((64, 64)) for _ in range(4)]
    assert pixel_auroc(masks, maps) == pytest.approx(0.5, abs=0.03)
    # a random map flags each region's pixels at the false-positive rate: PRO ~ FPR, area 0.3^2/2 / 0.3
    assert aupro(masks, maps) == pytest.approx(0.15, abs=0.02)


def test_pro_weights_regions_equally_hand_case():
    mask = _two_regions()
    a = np.zeros((10, 10))
    a[1:3, 1:3] = 1.0  # the small region fully found first, the large one missed
    fpr, pro = pro_curve([mask], [a])
    # threshold 1: region A overlap 1, region B 0 -> PRO 0.5 at FPR 0; threshold 0: everything
    assert list(fpr) == [0.0, 0.0, 1.0] and list(pro) == pytest.approx([0.0, 0.5, 1.0])
    # up to 30% FPR the curve rises linearly from 0.5 (at FPR 0) to 0.5 + 0.5 * 0.3 = 0.65 (at FPR 0.3)
    assert aupro([mask], [a]) == pytest.approx((0.5 + 0.65) / 2)


def test_image_auroc_uses_map_maxima_and_needs_both_kinds():
    mask_bad, mask_ok = _two_regions(), np.zeros((10, 10), bool)
    hot, cold = np.full((10, 10), 0.1), np.full((10, 10), 0.1)
    hot[2, 2] = 0.9
    assert image_auroc([mask_bad, mask_ok], [hot, cold]) == 1.0
    assert np.isnan(image_auroc([mask_bad], [hot]))


def test_pixel_metrics_check_shapes():
    with pytest.raises(ValueError, match="differ in shape"):
        pixel_auroc([np.zeros((4, 4), bool)], [np.zeros((4, 5))])

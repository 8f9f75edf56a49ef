"""InfoNCE (speech-guided MIM Eq. 2) against numbers worked out by hand.

Each direction is a batch-mean cross-entropy against the diagonal; the loss is
L_I + L_A. log1p(e^-x) terms are written out so the arithmetic can be checked.
"""

import math

import pytest
import torch

from s3prl_vgs.losses import info_nce_loss, same_image_mask


def test_identity_scores():
    # Every row and column: -log(e / (e + 1)) = log(1 + e^-1) = 0.313262.
    scores = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    assert info_nce_loss(scores).item() == pytest.approx(2 * 0.313262, abs=1e-6)


def test_asymmetric_scores_rows_are_audio():
    scores = torch.tensor([[2.0, 0.0], [1.0, 1.0]])
    # rows (audio -> image): log(1 + e^-2) = 0.126928 and log 2 = 0.693147 -> mean 0.410038
    # columns (image -> audio): [2, 1] target 0 and [0, 1] target 1: both log(1 + e^-1) = 0.313262
    expected = (0.126928 + 0.693147) / 2 + 0.313262
    assert info_nce_loss(scores).item() == pytest.approx(expected, abs=1e-6)
    assert expected == pytest.approx(0.723300, abs=1e-6)
    # both directions are summed, so transposing the matrix gives the same value
    assert info_nce_loss(scores.t()).item() == pytest.approx(expected, abs=1e-6)


def test_temperature_divides_scores():
    scores = torch.tensor([[2.0, 0.0], [1.0, 1.0]])
    # scores / 0.5 = [[4, 0], [2, 2]]: rows log(1 + e^-4) = 0.018150, log 2; columns log(1 + e^-2) twice
    expected = (0.018150 + 0.693147) / 2 + 0.126928
    assert info_nce_loss(scores, temperature=0.5).item() == pytest.approx(expected, abs=1e-6)


def test_same_image_pairs_leave_both_softmaxes():
    # captions 0 and 1 describe the same image, so columns 0 and 1 are that image
    scores = torch.tensor([[2.0, 1.0, 0.0], [1.0, 2.0, 0.0], [0.0, 0.0, 2.0]])
    same = same_image_mask(["a", "a", "b"])
    # row 0 keeps [2, 0]: log(1 + e^-2) = 0.126928; row 1 likewise; row 2 [0, 0, 2]: log(1 + 2e^-2) = 0.239545
    rows = (2 * 0.126928 + 0.239545) / 3
    assert info_nce_loss(scores, same).item() == pytest.approx(2 * rows, abs=1e-6)  # symmetric matrix
    # without the mask the same-image score competes: row 0 = log(1 + e^-1 + e^-2) = 0.407606
    unmasked_row0 = math.log(1 + math.exp(-1) + math.exp(-2))
    assert unmasked_row0 == pytest.approx(0.407606, abs=1e-6)
    assert info_nce_loss(scores).item() > info_nce_loss(scores, same).item() + 0.1


def test_gradient_raises_matched_scores():
    scores = torch.zeros(3, 3, requires_grad=True)
    info_nce_loss(scores).backward()
    # d/dS_ii of two CEs with uniform softmax over 3: 2 * (1/3 - 1) / 3 = -4/9; off-diagonal 2 * (1/3) / 3 = 2/9
    expected = torch.full((3, 3), 2 / 9) - torch.eye(3) * (2 / 9 + 4 / 9)
    torch.testing.assert_close(scores.grad, expected)


def test_rejects_non_square_scores():
    with pytest.raises(ValueError, match="square"):
        info_nce_loss(torch.zeros(2, 3))

"""masked_margin_softmax_loss against hand-computed values and the official fixture."""

import math

import pytest
import torch

from s3prl_vgs.losses import masked_margin_softmax_loss, same_image_mask

from tests.shared_paths import REFERENCE

FIXTURE = REFERENCE / "parity" / "fast_vgs_small_A.safetensors"


def lse(*xs):
    return math.log(sum(math.exp(x) for x in xs))


def test_identity_scores_margin_one_gives_two_log_two():
    # S - I = all zeros: each of the 2 rows and 2 columns is a uniform 2-way softmax.
    S = torch.eye(2)
    assert masked_margin_softmax_loss(S, margin=1.0).item() == pytest.approx(2 * math.log(2), abs=1e-6)


def test_no_margin_3x3_by_hand():
    S = torch.tensor([[2.0, 1.0, 0.0], [0.0, 3.0, 1.0], [1.0, 0.0, 1.0]])
    rows = [lse(2, 1, 0) - 2, lse(0, 3, 1) - 3, lse(1, 0, 1) - 1]
    cols = [lse(2, 0, 1) - 2, lse(1, 3, 0) - 3, lse(0, 1, 1) - 1]
    expected = sum(rows) / 3 + sum(cols) / 3
    assert masked_margin_softmax_loss(S, margin=0.0).item() == pytest.approx(expected, abs=1e-6)


def test_margin_and_same_image_collision_by_hand():
    # captions 0 and 2 describe the same image X: entries (0, 2) and (2, 0) leave both softmaxes.
    S = torch.tensor([[2.0, 1.0, 0.0], [0.0, 3.0, 1.0], [1.0, 0.0, 1.0]])
    same = same_image_mask(["X", "Y", "X"])
    assert same.tolist() == [[True, False, True], [False, True, False], [True, False, True]]
    d = [2 - 1, 3 - 1, 1 - 1]  # diagonal minus the margin
    rows = [lse(d[0], 1) - d[0], lse(0, d[1], 1) - d[1], lse(0, d[2]) - d[2]]
    cols = [lse(d[0], 0) - d[0], lse(1, d[1], 0) - d[1], lse(1, d[2]) - d[2]]
    expected = sum(rows) / 3 + sum(cols) / 3
    got = masked_margin_softmax_loss(S, same, margin=1.0).item()
    assert got == pytest.approx(expected, abs=1e-6)
    # and the collision matters: without the mask the value differs
    assert masked_margin_softmax_loss(S, margin=1.0).item() != pytest.approx(expected, abs=1e-3)


def test_loss_is_symmetric_in_orientation():
    torch.manual_seed(0)
    S = torch.randn(5, 5)
    same = same_image_mask([0, 1, 0, 2, 1])
    a = masked_margin_softmax_loss(S, same)
    b = masked_margin_softmax_loss(S.t(), same.t())
    assert a.item() == pytest.approx(b.item(), abs=1e-6)


def test_bad_shapes_raise():
    with pytest.raises(ValueError, match="square"):
        masked_margin_softmax_loss(torch.zeros(2, 3))
    with pytest.raises(ValueError, match="does not match"):
        masked_margin_softmax_loss(torch.zeros(2, 2), torch.zeros(3, 3, dtype=torch.bool))


@pytest.mark.skipif(not FIXTURE.exists(), reason="parity fixture not present")
def test_matches_official_losses_on_fixture():
    from safetensors.torch import load_file

    t = load_file(str(FIXTURE))
    same = same_image_mask(t["in.img_id_index"].tolist())
    for name in ("coarse", "fine"):
        S = t[f"out.{name}_scores"]
        assert masked_margin_softmax_loss(S, same).item() == pytest.approx(t[f"out.{name}_loss"].item(), abs=1e-6)
        assert masked_margin_softmax_loss(S).item() == pytest.approx(t[f"out.{name}_loss_no_img_id"].item(), abs=1e-6)

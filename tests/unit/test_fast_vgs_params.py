"""The base preset has the official FaST-VGS parameter set (COCO script sizes).

The official count comes from reference/official-checkpoints/fast_vgs_state_dict_shapes.json
(every DualEncoder + CrossEncoder key of the official bundle). Built on the meta device: no memory.
"""

import json
import math

import pytest
import torch

from s3prl_vgs.models.fast_vgs import FaSTVGS, FaSTVGSConfig

from tests.shared_paths import REFERENCE

SHAPES = REFERENCE / "official-checkpoints" / "fast_vgs_state_dict_shapes.json"
BN_BUFFERS = ("running_mean", "running_var", "num_batches_tracked")
# wav2vec2 pretraining heads present in the official bundle, unused by FaST-VGS
W2V2_PRETRAINING = ("quantizer.", "project_q.", "final_proj.", "mask_emb")


@pytest.fixture(scope="module")
def official():
    if not SHAPES.exists():
        pytest.skip("official shapes file not present")
    return {k: tuple(v) for k, v in json.loads(SHAPES.read_text()).items()}


def count(shapes):
    return sum(math.prod(s) for s in shapes)


def build_meta(**overrides):
    from transformers import HubertModel, Wav2Vec2Model  # noqa: F401  (importing them under "meta" fails)

    with torch.device("meta"):
        return FaSTVGS(FaSTVGSConfig.preset("base", **overrides))


def test_base_parameter_count_equals_official(official):
    assert count(official.values()) == 188_539_286  # everything in the bundle, buffers included
    params = {k: s for k, s in official.items() if not k.endswith(BN_BUFFERS)}
    used = {k: s for k, s in params.items() if not any(p in k for p in W2V2_PRETRAINING)}
    dead = count(s for k, s in used.items() if "audio_cls_token_proj_coarse" in k)
    assert count(used.values()) == 185_487_105 + dead  # trained parameters + the dead head
    assert build_meta(keep_dead_params=True).num_parameters() == count(used.values())
    assert build_meta().num_parameters() == count(used.values()) - dead == 185_487_105
    # frozen conv feature extractor (4.2 M) is counted above but not trained
    frozen = count(s for k, s in used.items() if ".feature_extractor." in k)
    assert build_meta().num_parameters(trainable_only=True) == 185_487_105 - frozen


def test_non_trunk_keys_are_the_official_keys(official):
    """After dropping the ``dual_encoder.`` prefix, every Conv2/Trm2/image/cross key and shape is identical."""
    ours = {k: tuple(v.shape) for k, v in build_meta(keep_dead_params=True).state_dict().items()}
    theirs = {}
    for k, s in official.items():
        if ".conv1_trm1_trm3." in k:
            continue
        theirs[k[len("dual_encoder."):] if k.startswith("dual_encoder.") else k] = s
    ours_non_trunk = {k: s for k, s in ours.items() if not k.startswith("trunk.")}
    assert ours_non_trunk == theirs
    # the trunk holds the same number of entries as the official wav2vec2 part minus its pretraining heads
    w2v2 = {k: s for k, s in official.items() if ".conv1_trm1_trm3." in k and not any(p in k for p in W2V2_PRETRAINING)}
    assert count(s for k, s in ours.items() if k.startswith("trunk.")) == count(w2v2.values())

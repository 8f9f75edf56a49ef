"""Speech-only upstream export: only the speech branch on disk, the full model's hidden states."""

from __future__ import annotations

import pytest
import torch
import yaml
from safetensors import safe_open

import s3prl_vgs
from espnet_recipes.bin import vgs_export
from s3prl_vgs.upstream.export import export_speech_only, speech_branch

# What must NOT be in a speech-only export, per family (the brief's list: image encoder,
# cross encoder, MIM decoder, momentum encoder, image-side projections).
IMAGE_SIDE = {
    "fast_vgs": ("visn_fc.", "trm.", "visual_cls_token", "cross_encoder."),
    "vg_mim": ("image_encoder.", "image_proj.", "decoder.", "momentum_image_encoder."),
}


def _espnet_exp(tmp_path, family):
    """An experiment dir as VGSTask leaves it: config.yaml + latest.pth with model.* keys."""
    torch.manual_seed(1)
    model = s3prl_vgs.build_model(family, preset="tiny")
    exp = tmp_path / "exp"
    exp.mkdir()
    (exp / "config.yaml").write_text(yaml.safe_dump({"model": family, "model_conf": {"preset": "tiny"}}))
    torch.save({f"model.{k}": v for k, v in model.state_dict().items()}, exp / "latest.pth")
    return exp, model.eval()


@pytest.mark.parametrize("family", sorted(IMAGE_SIDE))
def test_speech_only_export_same_hidden_states(family, tmp_path):
    exp, model = _espnet_exp(tmp_path, family)
    assert vgs_export.main(["--exp", str(exp), "--out", str(tmp_path / "model")]) == 0
    assert vgs_export.main(["--exp", str(exp), "--out", str(tmp_path / "upstream"), "--speech_only"]) == 0

    with safe_open(str(tmp_path / "upstream" / "model.safetensors"), "pt") as f:
        keys = list(f.keys())
    with safe_open(str(tmp_path / "model" / "model.safetensors"), "pt") as f:
        full_keys = list(f.keys())
    assert keys and not [k for k in keys if k.startswith(IMAGE_SIDE[family])]
    assert [k for k in full_keys if k.startswith(IMAGE_SIDE[family])]  # the full dir still has them
    assert set(keys) < set(full_keys)

    full = s3prl_vgs.load_model(tmp_path / "model")  # load_model still reads full dirs, image side included
    speech = s3prl_vgs.load_model(tmp_path / "upstream")
    assert hasattr(full, "encode_image") and all(getattr(speech, p.rstrip(".")) is None
                                                 for p in IMAGE_SIDE[family] if hasattr(full, p.rstrip(".")))
    wavs, lengths = torch.randn(3, 24000), torch.tensor([24000, 17000, 9000])
    with torch.no_grad():
        a, b, c = model.encode_audio(wavs, lengths), full.encode_audio(wavs, lengths), speech.encode_audio(wavs, lengths)
    assert len(a.hidden_states) == len(c.hidden_states) > 2
    for x, y, z in zip(a.hidden_states, b.hidden_states, c.hidden_states):
        assert torch.equal(x, y) and torch.equal(x, z)
    assert torch.equal(a.coarse, c.coarse)

    # The S3PRL entry gives the same layers from either directory, and holds only the speech branch.
    import s3prl.hub as hub

    e_full, e_speech = hub.__dict__[f"{family}_local"](ckpt=str(tmp_path / "model")), hub.__dict__[f"{family}_local"](ckpt=str(tmp_path / "upstream"))
    assert set(e_full.state_dict()) == set(e_speech.state_dict()) == {f"model.{k}" for k in keys}
    with torch.no_grad():
        hs_full = e_full([wavs[0], wavs[1, :17000]])["hidden_states"]
        hs_speech = e_speech([wavs[0], wavs[1, :17000]])["hidden_states"]
    assert all(torch.equal(x, y) for x, y in zip(hs_full, hs_speech))


def test_speech_branch_is_measured_not_listed():
    torch.manual_seed(0)
    model = s3prl_vgs.build_model("fast_vgs", preset="tiny")
    parts = speech_branch(model)
    assert "trunk" in parts and "cross_encoder" not in parts and "visual_cls_token" not in parts


def test_export_refuses_a_model_it_cannot_separate(tmp_path):
    class Tangled(torch.nn.Module):  # encode_audio reads an image-side weight without calling its module
        def __init__(self):
            super().__init__()
            self.audio, self.image = torch.nn.Linear(4, 4), torch.nn.Linear(4, 4)

        def encode_audio(self, wavs, lengths=None):
            class Out:
                pass
            out = Out()
            out.coarse = self.audio(wavs[:, :4]) + self.image.weight.sum()
            return out

    with pytest.raises(RuntimeError, match="does not reproduce encode_audio"):
        export_speech_only(Tangled(), tmp_path / "x")

"""Converted official checkpoints reproduce the official code's numbers.

The fixtures in ``reference/parity`` (shared/ beside the repository, or
``$S3PRL_VGS_PARITY_DIR``) hold small random official weights under the
official key names, inputs run through the official data code, and the
official outputs and intermediates. Each test converts the weights with
``s3prl_vgs.convert``, runs our public API on the stored inputs and compares
with the stored outputs within the sidecar's tolerances.
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import re
from pathlib import Path

import pytest
import torch
import yaml

import s3prl_vgs
from s3prl_vgs.checkpoint import CheckpointError
from s3prl_vgs.config import deep_merge
from s3prl_vgs.convert import ConversionError, convert_official, from_official, main
from s3prl_vgs.losses import masked_margin_softmax_loss, same_image_mask

REPO = Path(__file__).resolve().parents[2]
_CANDIDATES = [os.environ.get("S3PRL_VGS_PARITY_DIR"), str(REPO.parent / "shared" / "reference" / "parity")]
PARITY_DIR = next((Path(p) for p in _CANDIDATES if p and (Path(p) / "fast_vgs_small_A.json").is_file()), None)
_MISSING = f"parity fixtures not found in $S3PRL_VGS_PARITY_DIR nor in {REPO.parent / 'shared' / 'reference' / 'parity'}"
# In CI (CI=true) missing fixtures are a failure, not a skip: a green run must have compared the numbers.
IN_CI = os.environ.get("CI", "").strip().lower() in ("true", "1", "yes")
pytestmark = pytest.mark.skipif(PARITY_DIR is None and not IN_CI, reason=_MISSING)


def test_parity_fixtures_are_present():
    assert PARITY_DIR is not None, _MISSING

EXACT = dict(atol=0.0, rtol=0.0)


def _load_fixture(name: str):
    from safetensors.torch import load_file

    if PARITY_DIR is None:
        pytest.fail(_MISSING)
    tensors = load_file(str(PARITY_DIR / f"{name}.safetensors"))
    side = json.loads((PARITY_DIR / f"{name}.json").read_text())
    return tensors, side


def _tol(side, key_part: str):
    """atol/rtol of the sidecar tolerance entry whose name contains ``key_part``."""
    tols = side["recommended_tolerances"]
    (text,) = [v for k, v in tols.items() if key_part in k]
    atol = float(re.search(r"atol ([0-9.e-]+)", text).group(1))
    rtol = re.search(r"rtol ([0-9.e-]+)", text)
    return dict(atol=atol, rtol=float(rtol.group(1)) if rtol else 0.0)


def close(ours, ref, tol, what):
    torch.testing.assert_close(ours.float(), ref.float(), **tol, msg=lambda m: f"{what}: {m}")


def official_state(t, kind):
    prefixes = ("dual_encoder.",) if kind == "vg_hubert" else ("dual_encoder.", "cross_encoder.")
    return {k: v for k, v in t.items() if k.startswith(prefixes)}


def vg_args(side):
    # The fixture's ViT is smaller than any DINO vit_arch, so its head count is not in the
    # official args (the sidecar's non_arg_size_overrides says 3 heads).
    return dict(side["official_args"], vit_num_heads=side["dims"]["vit"]["num_heads"])


# ----------------------------------------------------------------------------- FaST-VGS


@pytest.fixture(scope="module")
def fast():
    t, side = _load_fixture("fast_vgs_small_A")
    model = from_official(official_state(t, "fast_vgs"), side["official_args"], "fast_vgs")
    with torch.no_grad():
        a = model.encode_audio(t["in.audio"], t["in.audio_length"])
        v = model.encode_image(t["in.visual_feats"], t["in.boxes"])
    tol = dict(early=_tol(side, "conv1_"), deep=_tol(side, "trm1_layers"), vec=_tol(side, "audio_coarse"))
    return dict(t=t, side=side, model=model, a=a, v=v, tol=tol)


def test_fast_vgs_config_and_dropped_keys(fast):
    model, side = fast["model"], fast["side"]
    c, dims = model.config, side["dims"]
    assert c.speech.official_compat and c.speech.cls_position == "before_pos_conv"
    assert list(c.resdavenet_widths) == dims["resdavenet_layer_widths"]  # inferred from the tensor shapes
    assert (c.speech.hidden_size, c.speech.num_heads, c.speech.num_layers, c.trm_layers, c.xtrm_layers, c.visual_feat_dim) == (
        64, 4, 2, 2, 1, 32)
    assert list(c.speech.conv_dim) == [32] * 7 and list(c.speech.conv_stride) == [5, 2, 2, 2, 2, 2, 2]
    official = {k for k, _, _ in side["state_dict_keys"]}
    dropped = set(model.dropped_official_keys)
    # the dead coarse head and the wav2vec2 pretraining heads, nothing else
    assert dropped == {k for k in official if re.search(r"audio_cls_token_proj_coarse|mask_emb|quantizer|project_q|final_proj", k)}
    assert "dead" in model.dropped_official_keys["dual_encoder.audio_cls_token_proj_coarse.0.weight"]
    # every other official tensor is in our model, with its value
    assert len(model.state_dict()) == len(official) - len(dropped)
    t = fast["t"]
    ours = model.state_dict()
    torch.testing.assert_close(ours["trunk.pos_conv_embed.conv.parametrizations.weight.original0"],
                               t["dual_encoder.conv1_trm1_trm3.encoder.pos_conv.0.weight_g"], **EXACT)
    torch.testing.assert_close(ours["conv2.layer4.0.downsample.1.running_var"],
                               t["dual_encoder.conv2.layer4.0.downsample.1.running_var"], **EXACT)


def test_fast_vgs_audio_chain(fast):
    t, model, a, tol = fast["t"], fast["model"], fast["a"], fast["tol"]
    with torch.no_grad():
        # in.audio is already normalised by the official loader, as the trunk's own normalisation expects to see
        close(model.trunk.feature_extractor(t["in.audio"]), t["out.conv1_feature_extractor"], tol["early"], "conv feature extractor")
        trunk = model.trunk(t["in.audio"], t["in.audio_length"])
    close(a.hidden_states[0], t["out.post_extract_proj"], tol["early"], "post_extract_proj")
    close(a.hidden_states[0], t["out.superb_hidden_state0"], tol["early"], "superb hidden_states[0]")
    assert torch.equal(a.padding_mask, t["out.frame_padding_mask"])
    assert torch.equal((~a.padding_mask).sum(-1), t["out.frame_nvalid"])
    close(trunk.cls_hidden_states[0], t["out.trm1_input"][:, 0], tol["early"], "Trm1 input CLS")
    assert len(a.hidden_states) == 1 + t["out.trm1_layers"].shape[0]
    for i, ref in enumerate(t["out.trm1_layers"]):
        close(a.hidden_states[i + 1], ref, tol["deep"], f"Trm1 layer {i}")
        close(trunk.cls_hidden_states[i + 1], t["out.trm1_layers_cls"][i], tol["deep"], f"Trm1 layer {i} CLS")
    conv2, trm2_frames = a.trm2_hidden_states
    close(conv2, t["out.conv2"], tol["deep"], "Conv2 output")
    assert torch.equal((~a.mask[:, 1:]).sum(-1), t["out.conv2_nframes"])
    assert torch.equal(a.mask, t["out.audio_extended_mask"][:, 0, 0] != 0)
    close(a.tokens, t["out.trm2"], tol["deep"], "Trm2 output")
    close(trm2_frames, t["out.trm2"][:, 1:], tol["deep"], "Trm2 frames")
    close(a.coarse, t["out.audio_coarse"], tol["vec"], "coarse audio vector")


def test_fast_vgs_image_chain(fast):
    t, v, tol = fast["t"], fast["v"], fast["tol"]
    close(v.hidden_states[0], t["out.visn_fc"], tol["deep"], "visn_fc")
    for i, ref in enumerate(t["out.visual_trm_layers"]):
        close(v.hidden_states[i + 1], ref[:, 1:], tol["deep"], f"image Trm layer {i}")
    close(v.tokens, t["out.visual_feats"], tol["deep"], "image Trm output")
    close(v.coarse, t["out.image_coarse"], tol["vec"], "coarse image vector")


def test_fast_vgs_cross_encoder_and_scores(fast):
    t, model, a, v, tol = fast["t"], fast["model"], fast["a"], fast["v"], fast["tol"]
    B = a.coarse.size(0)
    close(model.coarse_scores(a, v), t["out.coarse_scores"].t(), tol["vec"], "coarse scores (audios as rows)")
    with torch.no_grad():
        fine = model.fine_scores(a, v)
        # the official per-pair computation, pair k = i * B + j (audio i, image j)
        ce = model.cross_encoder
        a_rep, m_rep = a.tokens.repeat_interleave(B, 0), a.mask.repeat_interleave(B, 0)
        v_rep = v.tokens.repeat(B, 1, 1)
        from s3prl_vgs.modules.transformer import additive_mask

        xa, xv = ce.xtrm[0](a_rep, additive_mask(m_rep, a_rep.dtype), v_rep, None)
        reference = ce(a_rep, m_rep, v_rep, None)
    close(xa, t["out.xtrm_layer0_audio"], tol["deep"], "cross layer 0, audio stream")
    close(xv, t["out.xtrm_layer0_visual"], tol["deep"], "cross layer 0, visual stream")
    close(torch.cat([xa[:, 0], xv[:, 0]], -1), t["out.cross_cls_concat"], tol["deep"], "cross CLS concat")
    close(reference, t["out.fine_scores_flat"][:, 0], tol["vec"], "fine scores, reference path")
    close(fine, t["out.fine_scores"], tol["vec"], "fine scores (audios as rows)")


def test_fast_vgs_losses(fast):
    t, side, model, a, v, tol = fast["t"], fast["side"], fast["model"], fast["a"], fast["v"], fast["tol"]
    ids = [side["metadata"]["unique_img_ids"][i] for i in t["in.img_id_index"].tolist()]
    assert torch.equal(same_image_mask(ids) & ~torch.eye(3, dtype=torch.bool), t["out.shared_image_mask"] != 0)
    with torch.no_grad():
        out = model.compute_loss(a, v, image_ids=ids)
        plain = model.compute_loss(a, v)
    close(out.coarse_loss, t["out.coarse_loss"], tol["vec"], "coarse loss")
    close(out.fine_loss, t["out.fine_loss"], tol["vec"], "fine loss")
    close(out.loss, t["out.total_loss"], tol["vec"], "total loss")
    close(plain.coarse_loss, t["out.coarse_loss_no_img_id"], tol["vec"], "coarse loss without image ids")
    close(plain.fine_loss, t["out.fine_loss_no_img_id"], tol["vec"], "fine loss without image ids")


def test_fast_vgs_official_compat_is_what_makes_it_match(fast):
    """The default (padding-invariant) path computes a different function on these inputs."""
    t, side = fast["t"], fast["side"]
    conv = convert_official(official_state(t, "fast_vgs"), side["official_args"], "fast_vgs")
    conv.config = type(conv.config).from_dict(deep_merge(conv.config.to_dict(), {"speech": {"official_compat": False}}))
    model = conv.build()
    with torch.no_grad():
        a = model.encode_audio(t["in.audio"], t["in.audio_length"])
    assert (~a.padding_mask).sum(-1).tolist() == side["quirk_numbers"]["nvalid_convlen_formula"]  # 49/84/99, not 50/85/99
    assert (a.coarse - t["out.audio_coarse"]).abs().max() > 1e-3


def test_fast_vgs_plus_taps_layer_use_and_keeps_every_layer(fast):
    """FaST-VGS+ keeps all Trm1 layers; the grounding path still reads layer ``layer_use``."""
    t, side, tol = fast["t"], fast["side"], fast["tol"]
    state = official_state(t, "fast_vgs")
    src = "dual_encoder.conv1_trm1_trm3.encoder.layers."
    g = torch.Generator().manual_seed(0)
    for new in (2, 3):  # two extra layers after layer_use = 1 ("Trm3", trained by the wav2vec2 loss officially)
        for k, val in list(state.items()):
            if k.startswith(src + "0."):
                state[src + f"{new}." + k[len(src) + 2:]] = val + 0.05 * torch.randn(val.shape, generator=g)
    with pytest.raises(ConversionError, match="fast_vgs_plus"):
        from_official(state, side["official_args"], "fast_vgs")
    model = from_official(state, side["official_args"], "fast_vgs_plus")
    assert model.config.speech.num_layers == 4 and model.config.layer_use == 1
    with torch.no_grad():
        a = model.encode_audio(t["in.audio"], t["in.audio_length"])
        v = model.encode_image(t["in.visual_feats"], t["in.boxes"])
    assert len(a.hidden_states) == 5
    for i, ref in enumerate(t["out.trm1_layers"]):
        close(a.hidden_states[i + 1], ref, tol["deep"], f"Trm1 layer {i}")
    assert (a.hidden_states[3] - a.hidden_states[2]).abs().max() > 1e-2  # the extra layers do run
    close(a.trm2_hidden_states[0], t["out.conv2"], tol["deep"], "Conv2 fed from layer_use")
    close(a.coarse, t["out.audio_coarse"], tol["vec"], "coarse audio vector")
    close(model.fine_scores(a, v), t["out.fine_scores"], tol["vec"], "fine scores")


def test_fast_vgs_unmapped_and_missing_keys_are_listed(fast):
    t, side = fast["t"], fast["side"]
    state = official_state(t, "fast_vgs")
    extra = dict(state, **{"dual_encoder.some_new_head.weight": torch.zeros(2), "cross_encoder.other.bias": torch.zeros(2)})
    with pytest.raises(ConversionError, match=r"cross_encoder\.other\.bias.*dual_encoder\.some_new_head\.weight"):
        from_official(extra, side["official_args"], "fast_vgs")
    fewer = {k: v for k, v in state.items() if k not in ("dual_encoder.trm2_proj.bias", "cross_encoder.fc.2.weight")}
    with pytest.raises(CheckpointError, match=r"missing keys \['cross_encoder\.fc\.2\.weight', 'trm2_proj\.bias'\]"):
        from_official(fewer, side["official_args"], "fast_vgs")
    with pytest.raises(ConversionError, match="hidden_size=128 but the weights say 64"):
        from_official(state, dict(side["official_args"], hidden_size=128), "fast_vgs")


# ----------------------------------------------------------------------------- VG-HuBERT


@pytest.fixture(scope="module")
def vg():
    t, side = _load_fixture("vg_hubert_small_A")
    model = from_official(official_state(t, "vg_hubert"), vg_args(side), "vg_hubert")
    with torch.no_grad():
        a = model.encode_audio(t["in.audio"], t["in.audio_length"])
        v = model.encode_image(t["in.images"])
    tol = dict(early=_tol(side, "trm_input"), deep=_tol(side, "hubert_layers"), vec=_tol(side, "audio_cls"),
               attn=_tol(side, "seg_layer_attn"))
    return dict(t=t, side=side, model=model, a=a, v=v, tol=tol)


def test_checkpoint_filter_fn_next_to_each_model_maps_onto_its_attributes(fast, vg):
    """timm-style key maps in the model files: official keys -> exactly the model's own state-dict keys."""
    from s3prl_vgs.models import fast_vgs, vg_mim

    for kind, d, module in (("fast_vgs", fast, fast_vgs), ("vg_hubert", vg, vg_mim)):
        own = d["model"].state_dict()
        mapped = module.checkpoint_filter_fn(official_state(d["t"], kind), d["model"])
        assert set(mapped) == set(own), (kind, sorted(set(mapped) ^ set(own))[:10])
        assert all(torch.equal(own[k], v) for k, v in mapped.items())


def test_vg_hubert_is_the_mim_family_without_mim(vg):
    c, dims = vg["model"].config, vg["side"]["dims"]
    assert (c.mim, c.projection, c.loss, c.image_pooling, c.embed_dim) == ("none", "mlp", "masked_margin", "cls", 96)
    assert c.audio.backbone == "hubert" and c.audio.cls_position == "after_pos_conv" and not c.audio.normalize_waveform
    assert c.audio.official_compat and c.image.official_compat
    vit = dims["vit"]
    assert (c.image.image_size, c.image.patch_size, c.image.hidden_size, c.image.num_layers, c.image.num_heads) == (
        vit["img_size"], vit["patch_size"], vit["embed_dim"], vit["depth"], vit["num_heads"])
    assert vg["model"].dropped_official_keys == {}


def test_vg_hubert_audio_chain(vg):
    t, model, a, tol = vg["t"], vg["model"], vg["a"], vg["tol"]
    with torch.no_grad():
        close(model.audio_encoder.feature_extractor(t["in.audio"]), t["out.feature_extractor"], tol["early"], "conv features")
        trunk = model.audio_encoder(t["in.audio"], t["in.audio_length"])
    close(a.hidden_states[0], t["out.post_extract_proj"], tol["early"], "post_extract_proj")
    assert torch.equal(a.padding_mask, t["out.frame_padding_mask"])
    assert torch.equal((~a.padding_mask).sum(-1), t["out.frame_nvalid"])
    assert torch.equal(a.padding_mask, t["out.audio_extended_mask"][:, 0, 0] != 0)
    close(trunk.cls_hidden_states[0], t["out.trm_input"][:, 0], tol["early"], "CLS entering layer 0")
    for i, ref in enumerate(t["out.hubert_layers"]):
        close(a.hidden_states[i + 1], ref[:, 1:], tol["deep"], f"HuBERT layer {i}")
        close(trunk.cls_hidden_states[i + 1], ref[:, 0], tol["deep"], f"HuBERT layer {i} CLS")
    close(a.cls, t["out.audio_cls_raw"], tol["deep"], "audio CLS")
    close(a.coarse, t["out.audio_cls"], tol["vec"], "projected audio CLS")


def test_vg_hubert_image_chain(vg):
    t, model, v, tol = vg["t"], vg["model"], vg["v"], vg["tol"]
    with torch.no_grad():
        vit = model.image_encoder(t["in.images"], output_hidden_states=True)
        patches = model.image_encoder.embeddings.patch_embeddings(t["in.images"])
    close(patches, t["out.vit_patch_embed"], tol["deep"], "ViT patch embedding")
    for i, ref in enumerate(t["out.vit_blocks"]):
        close(vit.hidden_states[i + 1], ref, tol["deep"], f"ViT block {i}")
    close(v.cls, t["out.image_cls_raw"], tol["deep"], "ViT CLS")
    close(v.tokens, t["out.image_patch_feats"], tol["deep"], "ViT patch features")
    close(v.tokens.mean(1), t["out.visual_feats_mean_official"], tol["deep"], "mean patch feature")
    close(v.coarse, t["out.image_cls"], tol["vec"], "projected image CLS")


@pytest.mark.parametrize("case", ["small", "rect"])
def test_vg_hubert_position_embedding_interpolation(vg, case):
    """112x112 and 112x160 crops: DINO's bicubic interpolation with the +0.1 scale factor."""
    t, model, tol = vg["t"], vg["model"], vg["tol"]
    with torch.no_grad():
        v = model.encode_image(t[f"in.images_{case}"])
    close(v.tokens, t[f"out.{case}_image_patch_feats"], tol["deep"], f"{case} patch features")
    close(v.cls, t[f"out.{case}_image_cls_raw"], tol["deep"], f"{case} ViT CLS")
    close(v.coarse, t[f"out.{case}_image_cls"], tol["vec"], f"{case} projected CLS")


def test_vg_hubert_scores_and_loss(vg):
    t, side, model, a, v, tol = vg["t"], vg["side"], vg["model"], vg["a"], vg["v"], vg["tol"]
    scores = model.coarse_scores(a, v)
    close(scores, t["out.scores"].t(), tol["vec"], "S (audios as rows)")
    ids = [side["metadata"]["unique_img_ids"][i] for i in t["in.img_id_index"].tolist()]
    same = same_image_mask(ids)
    assert torch.equal(same & ~torch.eye(3, dtype=torch.bool), t["out.shared_image_mask"] != 0)
    margin = model.config.margin
    close(masked_margin_softmax_loss(scores, same, margin), t["out.loss"], tol["vec"], "loss")
    close(masked_margin_softmax_loss(scores, None, margin), t["out.loss_no_img_id"], tol["vec"], "loss without image ids")
    with torch.no_grad():
        out = model(t["in.audio"], t["in.audio_length"], t["in.images"], same_image=same)
    close(out.loss, t["out.total_loss"], tol["vec"], "training forward loss")


def test_vg_hubert_segmentation_attention(vg):
    """Per-head attention of the segmentation layer, via the trunk's ``attention_layer``."""
    t, side, model, tol = vg["t"], vg["side"], vg["model"], vg["tol"]
    layer = side["metadata"]["seg_layer"]
    with torch.no_grad():
        out = model.audio_encoder(t["in.seg_audio"], attention_layer=layer)
    close(out.attentions, t["out.seg_layer_attn_per_head"], tol["attn"], "per-head attention")
    close(out.hidden_states[layer + 1], t["out.seg_layer_features"], tol["deep"], "segmentation-layer features")
    close(out.cls_hidden_states[layer + 1], t["out.seg_layer_cls"], tol["deep"], "segmentation-layer CLS")


def test_vg_hubert_needs_the_head_count_of_a_non_dino_vit(vg):
    t, side = vg["t"], vg["side"]
    with pytest.raises(ConversionError, match="vit_num_heads"):
        from_official(official_state(t, "vg_hubert"), side["official_args"], "vg_hubert")


def test_vg_hubert_without_official_compat_refuses_other_image_sizes(vg):
    t, side = vg["t"], vg["side"]
    conv = convert_official(official_state(t, "vg_hubert"), vg_args(side), "vg_hubert")
    conv.config = type(conv.config).from_dict(deep_merge(conv.config.to_dict(), {"image": {"official_compat": False}}))
    model = conv.build()
    with pytest.raises(ValueError, match="224"):
        model.encode_image(t["in.images_small"])


# ----------------------------------------------------------------------------- vgs-convert


def _optimizer_state(model: torch.nn.Module) -> dict:
    """A real optimizer state dict (tensors per parameter) with BertAdam-style group entries."""
    params = list(model.parameters())[:4]
    opt = torch.optim.AdamW(params, lr=1e-4)
    for p in params:
        p.grad = torch.ones_like(p)
    opt.step()
    state = opt.state_dict()
    for group in state["param_groups"]:
        group.update(schedule="warmup_linear", warmup=0.1, t_total=1000, b1=0.9, b2=0.999, e=1e-6, max_grad_norm=1.0)
    return state


def _write_bundle(tmp_path, t, side, kind, extra_args=None):
    parts = {"dual_encoder": {}, "cross_encoder": {}}
    for k, v in official_state(t, kind).items():
        part, key = k.split(".", 1)
        # DataParallel-wrapped saves carry module.; the converter strips it
        parts[part][("module." + key) if part == "cross_encoder" else key] = v.clone()
    donor = torch.nn.Linear(3, 3)
    bundle = {"dual_encoder": parts["dual_encoder"], "optimizer": _optimizer_state(donor),
              "indices": {"epoch": 3, "position": 17, "indices": list(range(10))}, "libri_indices": None}
    if kind != "vg_hubert":
        bundle["cross_encoder"] = parts["cross_encoder"]
    torch.save(bundle, tmp_path / "best_bundle.pth")
    with open(tmp_path / "args.pkl", "wb") as f:
        pickle.dump(argparse.Namespace(**side["official_args"], **(extra_args or {})), f)  # the official format
    return tmp_path / "best_bundle.pth", tmp_path / "args.pkl"


def test_vgs_convert_fast_vgs_bundle_round_trip(fast, tmp_path, capsys):
    t, side, tol = fast["t"], fast["side"], fast["tol"]
    bundle, args = _write_bundle(tmp_path, t, side, "fast_vgs")
    out = tmp_path / "model"
    assert main(["--kind", "fast_vgs", "--bundle", str(bundle), "--args", str(args), "--out", str(out)]) == 0
    assert "audio_cls_token_proj_coarse" in capsys.readouterr().out
    meta = yaml.safe_load((out / "config.yaml").read_text())
    assert meta["model"] == "fast_vgs" and meta["extra"]["converted_from_official"]["official_pad_samples"] == 32000
    model = s3prl_vgs.load_model(out).eval()
    assert model.config == fast["model"].config
    with torch.no_grad():
        a = model.encode_audio(t["in.audio"], t["in.audio_length"])
        v = model.encode_image(t["in.visual_feats"], t["in.boxes"])
        fine = model.fine_scores(a, v)
    assert torch.equal(a.padding_mask, t["out.frame_padding_mask"])
    close(a.coarse, t["out.audio_coarse"], tol["vec"], "coarse audio vector")
    close(v.coarse, t["out.image_coarse"], tol["vec"], "coarse image vector")
    close(model.coarse_scores(a, v), t["out.coarse_scores"].t(), tol["vec"], "coarse scores")
    close(fine, t["out.fine_scores"], tol["vec"], "fine scores")


def test_vgs_convert_vg_hubert_bundle_round_trip(vg, tmp_path):
    t, side, tol = vg["t"], vg["side"], vg["tol"]
    bundle, args = _write_bundle(tmp_path, t, side, "vg_hubert", extra_args={"vit_num_heads": 3})
    out = tmp_path / "model"
    assert main(["--kind", "vg_hubert", "--bundle", str(bundle), "--args", str(args), "--out", str(out)]) == 0
    model = s3prl_vgs.load_model(out).eval()
    with torch.no_grad():
        a = model.encode_audio(t["in.audio"], t["in.audio_length"])
        v = model.encode_image(t["in.images"])
        small = model.encode_image(t["in.images_small"])
    close(a.coarse, t["out.audio_cls"], tol["vec"], "projected audio CLS")
    close(v.coarse, t["out.image_cls"], tol["vec"], "projected image CLS")
    close(small.coarse, t["out.small_image_cls"], tol["vec"], "112x112 projected image CLS")
    close(model.coarse_scores(a, v), t["out.scores"].t(), tol["vec"], "S")


def test_vgs_convert_refuses_a_fast_vgs_bundle_without_cross_encoder(fast, tmp_path, capsys):
    t, side = fast["t"], fast["side"]
    bundle, _ = _write_bundle(tmp_path, t, side, "vg_hubert")  # no cross_encoder entry
    assert main(["--kind", "fast_vgs", "--bundle", str(bundle), "--out", str(tmp_path / "m")]) == 1
    err = capsys.readouterr().err
    assert "best_bundle.pth" in err and "cross_encoder" in err
    assert not (tmp_path / "m").exists()


class _RunsCode:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_vgs_convert_refuses_malicious_args_pkl_without_running_it(fast, tmp_path, capsys):
    t, side = fast["t"], fast["side"]
    bundle, _ = _write_bundle(tmp_path, t, side, "fast_vgs")
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil_args.pkl"
    evil.write_bytes(pickle.dumps(_RunsCode(marker)))
    assert main(["--kind", "fast_vgs", "--bundle", str(bundle), "--args", str(evil), "--out", str(tmp_path / "m")]) == 1
    err = capsys.readouterr().err
    assert "evil_args.pkl" in err and "system" in err and "argparse.Namespace" in err
    assert not marker.exists() and not (tmp_path / "m").exists()


def test_vgs_convert_refuses_a_bundle_that_would_run_code(tmp_path, capsys):
    marker = tmp_path / "pwned"
    torch.save({"dual_encoder": {}, "cross_encoder": {}, "optimizer": _RunsCode(marker)}, tmp_path / "best_bundle.pth")
    assert main(["--kind", "fast_vgs", "--bundle", str(tmp_path / "best_bundle.pth"), "--out", str(tmp_path / "m")]) == 1
    err = capsys.readouterr().err
    assert "best_bundle.pth" in err and "weights-only" in err
    assert not marker.exists()


# ----------------------------------------------------------------------------- released sizes


def _official_shapes(kind):
    path = PARITY_DIR.parent / "official-checkpoints" / ("vg_hubert_state_dict_shapes.json" if kind == "vg_hubert"
                                                         else "fast_vgs_state_dict_shapes.json")
    if not path.is_file():
        pytest.skip(f"{path} not found")
    shapes = json.loads(path.read_text())
    shapes = shapes["dual_encoder"] if kind == "vg_hubert" else dict(shapes)
    if kind == "fast_vgs_plus":  # FaST-VGS+ keeps Trm1 layers 8-11 (same shapes as layer 0)
        src = "dual_encoder.conv1_trm1_trm3.encoder.layers."
        for i in range(8, 12):
            shapes.update({src + f"{i}." + k[len(src) + 2:]: s for k, s in list(shapes.items()) if k.startswith(src + "0.")})
    return shapes


@pytest.mark.parametrize("kind", ["fast_vgs", "fast_vgs_plus", "vg_hubert"])
def test_released_checkpoint_key_lists_map_onto_the_base_presets(kind):
    """Every key of the full-size official state dicts (489 for FaST-VGS) maps onto our base model, shape for shape."""
    from transformers import HubertModel, ViTModel, Wav2Vec2Model  # noqa: F401 (imported outside the meta device)

    from s3prl_vgs.models import get_model_class
    from s3prl_vgs.models.fast_vgs import FaSTVGSConfig
    from s3prl_vgs.models.vg_mim import SpeechGuidedMIMConfig

    state = {k: torch.empty(s, device="meta") for k, s in _official_shapes(kind).items()}
    conv = convert_official(state, {}, kind)  # no args.pkl: the released scripts' values
    if kind == "vg_hubert":
        expected = SpeechGuidedMIMConfig.preset("vg_hubert", audio={"official_compat": True, "reinit_last": 0},
                                                image={"official_compat": True})
    else:
        expected = FaSTVGSConfig.preset("base", speech={"official_compat": True, "num_layers": 12 if kind == "fast_vgs_plus" else 8})
    assert conv.config == expected
    with torch.device("meta"):
        model = get_model_class(conv.model_name)(conv.config)
    ours = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert {k: tuple(v.shape) for k, v in conv.state_dict.items()} == ours
    assert len(conv.dropped) == (0 if kind == "vg_hubert" else 12)

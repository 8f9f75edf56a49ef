"""FaST-VGS (tiny preset): config, shapes and masks, fast fine path, gradients, save/load, training."""


import pytest
import torch

import s3prl_vgs
from s3prl_vgs.config import ConfigError
from s3prl_vgs.losses import masked_margin_softmax_loss, same_image_mask
from s3prl_vgs.models.fast_vgs import FaSTVGS, FaSTVGSConfig, all_pairs, conv2_frame_lengths
from s3prl_vgs.modules.transformer import additive_mask

from tests.shared_paths import REFERENCE

FIXTURE = REFERENCE / "parity" / "fast_vgs_small_A.safetensors"


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return s3prl_vgs.build_model("fast_vgs", preset="tiny").eval()


def batch(B=3, L=16000, lengths=(16000, 9000, 3300), seed=0):
    g = torch.Generator().manual_seed(seed)
    wavs = torch.randn(B, L, generator=g)
    lengths = torch.tensor(lengths)
    wavs = wavs * (torch.arange(L)[None] < lengths[:, None])
    feats = torch.randn(B, 36, 32, generator=g)
    boxes = torch.rand(B, 36, 4, generator=g).sort(-1).values
    return wavs, lengths, feats, boxes


def perturb_(module, std=0.15, seed=0):
    """Weights large enough that fine scores are O(1), so 1e-5 comparisons mean something."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            if name.endswith("LayerNorm.weight"):
                p.copy_(1 + 0.1 * torch.randn(p.shape, generator=g))
            else:
                p.copy_(std * torch.randn(p.shape, generator=g))


# ----------------------------------------------------------------------------- config


def test_config_yaml_round_trip_and_strictness(tmp_path):
    cfg = FaSTVGSConfig.preset("tiny", margin=0.5, speech={"official_compat": True})
    back = FaSTVGSConfig.from_yaml(cfg.to_yaml())
    assert back == cfg and back.speech.official_compat and back.speech.hidden_size == 64
    with pytest.raises(ConfigError, match="unknown key"):
        FaSTVGSConfig.from_dict({**cfg.to_dict(), "xtrm_layer": 2})
    with pytest.raises(ConfigError, match="unknown key"):
        FaSTVGSConfig.from_dict({**cfg.to_dict(), "speech": {**cfg.speech.to_dict(), "hiden_size": 3}})
    with pytest.raises(ConfigError, match="layer_use"):
        FaSTVGSConfig.from_dict({**cfg.to_dict(), "layer_use": 5})
    with pytest.raises(ConfigError, match="ResDAVEnet"):
        FaSTVGSConfig.preset("tiny", resdavenet_widths=[16, 16, 32, 48, 32])
    with pytest.raises(ConfigError, match="unknown preset"):
        FaSTVGSConfig.preset("huge")


def test_presets():
    base = FaSTVGSConfig.preset("base")
    assert (base.hidden_size, base.layer_use, base.speech.num_layers, base.trm_layers, base.xtrm_layers) == (768, 7, 8, 6, 2)
    assert (base.visual_feat_dim, base.img_feat_len, base.margin) == (2048, 36, 1.0)
    assert (base.coarse_matching_weight, base.fine_matching_weight) == (0.1, 1.0)
    tiny = FaSTVGSConfig.preset("tiny")
    assert tiny.downsample_rate == 320 and tiny.conv2_downsample == 16
    # layer_use alone moves speech.num_layers; other speech fields keep the preset's values
    cfg = FaSTVGSConfig.preset("tiny", layer_use=0, speech={"dropout": 0.0})
    assert cfg.speech.num_layers == 1 and cfg.speech.hidden_size == 64 and cfg.speech.dropout == 0.0


# ----------------------------------------------------------------------------- shapes, masks


def test_padded_batch_lengths_and_masks(model):
    wavs, lengths, feats, boxes = batch()
    with torch.no_grad():
        a = model.encode_audio(wavs, lengths)
        v = model.encode_image(feats, boxes)
    # wav2vec2 frames: floor((len - 400) / 320) + 1 -> 49, 27, 10 (padded T = 49)
    assert a.padding_mask.shape == (3, 49)
    assert (~a.padding_mask).sum(-1).tolist() == [49, 27, 10]
    assert len(a.hidden_states) == 3 and all(h.shape == (3, 49, 64) for h in a.hidden_states)
    # Conv2, 4 stride-2 stages: n -> ceil(n / 2) four times: 49 -> 4, 27 -> 2, 10 -> 1 (T2 = 4)
    assert a.tokens.shape == (3, 5, 64) and a.mask.shape == (3, 5)
    assert (~a.mask).sum(-1).tolist() == [5, 3, 2]
    assert not a.mask[:, 0].any()
    assert a.trm2_padding_mask.shape == (3, 4)
    assert [h.shape for h in a.trm2_hidden_states] == [(3, 4, 64), (3, 4, 64)]
    assert a.coarse.shape == (3, 64)
    assert v.tokens.shape == (3, 37, 64) and not v.mask.any() and v.coarse.shape == (3, 64)
    assert len(v.hidden_states) == 3 and v.hidden_states[0].shape == (3, 36, 64)
    S = model.coarse_scores(a, v)
    assert torch.allclose(S, a.coarse @ v.coarse.t())
    assert model.fine_scores(a, v).shape == (3, 3)


def test_padded_utterance_computes_what_it_computes_alone(model):
    wavs, lengths, _, _ = batch()
    with torch.no_grad():
        a = model.encode_audio(wavs, lengths)
        for i, n in enumerate(lengths.tolist()):
            alone = model.encode_audio(wavs[i:i + 1, :n])
            T2 = alone.tokens.size(1)
            assert torch.equal(~a.mask[i, :T2], ~alone.mask[0]) and a.mask[i, T2:].all()
            assert torch.allclose(a.coarse[i], alone.coarse[0], atol=1e-5)
            assert torch.allclose(a.tokens[i, :T2], alone.tokens[0], atol=1e-5)


def test_conv2_frame_rules():
    # clean rule: ceil(n / 2) per stage
    assert conv2_frame_lengths(torch.tensor([149, 49, 16, 17, 1]), 149, 10, 4).tolist() == [10, 4, 1, 2, 1]
    # NOTE(original) rule: ratio round(T / T2); 3 s: round(149 / 10) = 15, trunc(149 / 15) = 9
    assert conv2_frame_lengths(torch.tensor([149, 100]), 149, 10, 4, official_compat=True).tolist() == [9, 6]
    # parity fixture A: T = 99, T2 = 7, ratio 14, valid frames 50 / 85 / 99 -> 3 / 6 / 7
    assert conv2_frame_lengths(torch.tensor([50, 85, 99]), 99, 7, 4, official_compat=True).tolist() == [3, 6, 7]


def test_bad_inputs(model):
    with pytest.raises(ValueError, match="feats"):
        model.encode_image(torch.randn(2, 36, 31), torch.rand(2, 36, 4))
    with pytest.raises(ValueError, match="boxes"):
        model.encode_image(torch.randn(2, 36, 32), torch.rand(2, 35, 4))
    _, _, feats, boxes = batch()
    with torch.no_grad():
        v = model.encode_image(feats, boxes)
        a = model.encode_audio(torch.randn(1, 8000))
        with pytest.raises(IndexError, match="image index"):
            model.fine_scores(a, v, torch.tensor([[0, 3]]))
        with pytest.raises(ValueError, match=r"\(P, 2\)"):
            model.fine_scores(a, v, torch.tensor([0, 1]))
        with pytest.raises(TypeError, match="encode_audio"):
            model.fine_scores(torch.randn(2, 5), v)


# ----------------------------------------------------------------------------- fast fine path


def random_outputs(model, Na=5, Ni=4, Ta=6, seed=0):
    from s3prl_vgs.models.fast_vgs import FaSTVGSAudioOutput, FaSTVGSImageOutput

    g = torch.Generator().manual_seed(seed)
    D = model.config.hidden_size
    a_tok = torch.randn(Na, Ta, D, generator=g)
    n_valid = torch.tensor([Ta, 2, 4, 1, Ta][:Na])
    a_mask = torch.arange(Ta)[None] >= n_valid[:, None]
    v_tok = torch.randn(Ni, 37, D, generator=g)
    audio = FaSTVGSAudioOutput(coarse=torch.randn(Na, D, generator=g), tokens=a_tok, tokens_padding_mask=a_mask)
    image = FaSTVGSImageOutput(coarse=torch.randn(Ni, D, generator=g), tokens=v_tok,
                               tokens_padding_mask=torch.zeros(Ni, 37, dtype=torch.bool))
    return audio, image


@pytest.mark.parametrize("xtrm_layers", [1, 2, 3])
def test_fast_fine_scores_equal_reference(xtrm_layers):
    torch.manual_seed(0)
    model = FaSTVGS(FaSTVGSConfig.preset("tiny", xtrm_layers=xtrm_layers)).eval()
    perturb_(model.cross_encoder, seed=xtrm_layers)
    audio, image = random_outputs(model)
    pairs = torch.tensor([[0, 0], [1, 3], [4, 2], [3, 3], [1, 3], [2, 1], [3, 0], [0, 2], [4, 1]])
    with torch.no_grad():
        fast = model.fine_scores(audio, image, pairs, chunk_size=4)
        ref = model.cross_encoder(audio.tokens[pairs[:, 0]], audio.mask[pairs[:, 0]], image.tokens[pairs[:, 1]])
        full = model.fine_scores(audio, image)  # (5, 4)
    assert ref.abs().max() > 0.3 and ref.std() > 0.1  # scores are not all the same
    assert torch.allclose(fast, ref, atol=1e-5, rtol=0)
    assert torch.equal(fast[1], fast[4])  # a repeated pair gets the same score
    assert torch.allclose(full[pairs[:, 0], pairs[:, 1]], ref, atol=1e-5, rtol=0)
    # chunking does not change anything
    with torch.no_grad():
        assert torch.allclose(model.fine_scores(audio, image, chunk_size=None), full, atol=1e-5)
        assert torch.allclose(model.fine_scores(audio, image, chunk_size=1), full, atol=1e-5)


def test_fast_path_gradients_equal_reference():
    torch.manual_seed(0)
    cfg = FaSTVGSConfig.preset("tiny", xtrm_layers=2, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    model = FaSTVGS(cfg).train()
    perturb_(model.cross_encoder, seed=7)
    audio, image = random_outputs(model, Na=4, Ni=4)
    audio.tokens.requires_grad_(True)
    image.tokens.requires_grad_(True)
    same = same_image_mask([0, 1, 0, 2])
    params = [audio.tokens, image.tokens] + list(model.cross_encoder.parameters())

    fast = model.fine_scores(audio, image, chunk_size=None)
    g_fast = torch.autograd.grad(masked_margin_softmax_loss(fast, same), params)  # every parameter is in the graph
    p = all_pairs(4, 4)
    ref = model.cross_encoder(audio.tokens[p[:, 0]], audio.mask[p[:, 0]], image.tokens[p[:, 1]]).view(4, 4)
    g_ref = torch.autograd.grad(masked_margin_softmax_loss(ref, same), params)
    assert torch.allclose(fast, ref, atol=1e-5)
    for a, b in zip(g_fast, g_ref):
        assert torch.allclose(a, b, atol=1e-5, rtol=1e-4)


def test_folded_attention_equals_full_attention():
    from s3prl_vgs.modules.transformer import BertAttention

    torch.manual_seed(0)
    att = BertAttention(32, 4, 0.0)
    perturb_(att, std=0.3)
    x = torch.randn(3, 7, 32)
    mask = additive_mask(torch.arange(7)[None] >= torch.tensor([7, 3, 1])[:, None])
    ctx = torch.randn(3, 9, 32)
    ctx_mask = additive_mask(torch.arange(9)[None] >= torch.tensor([9, 5, 2])[:, None])
    with torch.no_grad():
        assert torch.allclose(att.forward_first_query(x, mask), att(x, x, mask)[:, 0], atol=1e-5)
        assert torch.allclose(att.forward_folded(x[:, :4], ctx, ctx_mask), att(x[:, :4], ctx, ctx_mask), atol=1e-5)
        ctx, probs = att(x, x, mask, need_weights=True)
    assert torch.allclose(probs.sum(-1), torch.ones(3, 4, 7), atol=1e-6)
    assert probs[2, :, :, 1:].abs().max() == 0  # only the CLS is valid in row 2


def test_coarse_to_fine_with_all_candidates_is_fine_ranking(model):
    audio, image = random_outputs(model, Na=5, Ni=4)
    with torch.no_grad():
        full = model.fine_scores(audio, image)
    from s3prl_vgs.retrieval import coarse_to_fine, fine_fn_for

    res = coarse_to_fine(audio.coarse, image.coarse, fine_fn_for(model, audio, image, chunk_size=3), k_coarse=100, keep=4)
    assert torch.equal(res.a2i, full.topk(4, dim=1).indices)
    assert torch.equal(res.i2a, full.t().topk(4, dim=1).indices)
    assert torch.allclose(res.a2i_scores, full.topk(4, dim=1).values, atol=1e-6)


# ----------------------------------------------------------------------------- training


def test_training_forward_losses(model):
    wavs, lengths, feats, boxes = batch()
    with torch.no_grad():
        out = model(wavs, lengths, feats, boxes, image_ids=["x", "y", "x"])
        a, v = model.encode_audio(wavs, lengths), model.encode_image(feats, boxes)
        fine = model.fine_scores(a, v)
    same = same_image_mask(["x", "y", "x"])
    assert torch.allclose(out.coarse_scores, a.coarse @ v.coarse.t(), atol=1e-6)
    assert torch.allclose(out.fine_scores, fine, atol=1e-6)  # all B^2 pairs, audios as rows
    lc = masked_margin_softmax_loss(out.coarse_scores, same)
    lf = masked_margin_softmax_loss(out.fine_scores, same)
    assert out.coarse_loss.item() == pytest.approx(lc.item(), abs=1e-6)
    assert out.loss.item() == pytest.approx(0.1 * lc.item() + 1.0 * lf.item(), abs=1e-6)
    with torch.no_grad():
        out2 = model(wavs, lengths, feats, boxes, same_image=same)
    assert out2.loss.item() == pytest.approx(out.loss.item(), abs=1e-6)
    with pytest.raises(ValueError, match="image_ids"):
        model(wavs, lengths, feats, boxes, image_ids=["x"])


def test_frozen_conv_gets_no_gradient_and_the_rest_does():
    torch.manual_seed(0)
    model = s3prl_vgs.build_model("fast_vgs", preset="tiny").train()
    wavs, lengths, feats, boxes = batch()
    model(wavs, lengths, feats, boxes, image_ids=[0, 1, 2]).loss.backward()
    for name, p in model.trunk.feature_extractor.named_parameters():
        assert not p.requires_grad and p.grad is None, name
    groups = {
        "Trm1": model.trunk.layers, "Conv2": model.conv2, "Trm2": model.trm2, "Trm2 CLS": model.audio_cls_token_proj_pre,
        "audio proj": model.trm2_proj, "RoI": model.visn_fc, "image Trm": model.trm,
        "image proj": model.visual_cls_token_proj_coarse, "cross": model.cross_encoder.xtrm, "head": model.cross_encoder.fc,
    }
    for group, module in groups.items():
        for name, p in module.named_parameters():
            assert p.grad is not None and p.grad.abs().sum() > 0, f"{group}: {name}"
    for p in (model.trunk.cls_token, model.visual_cls_token):
        assert p.grad.abs().sum() > 0


def test_save_load_gives_identical_outputs(model, tmp_path):
    model.save(tmp_path / "m")
    loaded = s3prl_vgs.load_model(tmp_path / "m").eval()
    assert type(loaded) is FaSTVGS and loaded.config == model.config
    wavs, lengths, feats, boxes = batch()
    with torch.no_grad():
        a, b = model(wavs, lengths, feats, boxes), loaded(wavs, lengths, feats, boxes)
    assert torch.equal(a.fine_scores, b.fine_scores) and torch.equal(a.coarse_scores, b.coarse_scores)
    assert torch.equal(a.audio.tokens, b.audio.tokens)


def test_tiny_loss_goes_down_on_a_fixed_batch():
    torch.manual_seed(0)
    model = s3prl_vgs.build_model("fast_vgs", preset="tiny")
    wavs, lengths, feats, boxes = batch(B=4, L=8000, lengths=(8000, 6000, 7000, 5000), seed=1)
    ids = [0, 1, 2, 0]
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=3e-3)

    def eval_loss():
        model.eval()
        with torch.no_grad():
            return model(wavs, lengths, feats, boxes, image_ids=ids).loss.item()

    before = eval_loss()
    model.train()
    for _ in range(15):
        loss = model(wavs, lengths, feats, boxes, image_ids=ids).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    after = eval_loss()
    # from chance level (about 2 * (log(3 + e^-1) + 1) = 4.4) to well below it
    assert before > 4.0 and after < 0.75 * before, (before, after)


# ----------------------------------------------------------------------------- official parity (non-trunk)


@pytest.mark.skipif(not FIXTURE.exists(), reason="parity fixture not present")
def test_conv2_trm2_image_cross_match_official_fixture():
    """Official weights for everything after Trm1, fed the official Trm1 outputs."""
    from safetensors.torch import load_file

    t = load_file(str(FIXTURE))
    model = FaSTVGS(FaSTVGSConfig.preset("tiny", keep_dead_params=True, speech={"official_compat": True})).eval()
    sd = {k[len("dual_encoder."):]: w for k, w in t.items() if k.startswith("dual_encoder.") and "conv1_trm1_trm3" not in k}
    sd.update({k: w for k, w in t.items() if k.startswith("cross_encoder.")})
    missing, unexpected = model.load_state_dict(sd, strict=False)
    assert unexpected == [] and all(k.startswith("trunk.") for k in missing)
    with torch.no_grad():
        a = model.encode_audio_frames(t["out.trm1_layers_cls"][1], t["out.trm1_layers"][1], t["out.frame_padding_mask"])
        v = model.encode_image(t["in.visual_feats"], t["in.boxes"])
        B = 3
        ref_a, ref_v = model.cross_encoder.xtrm[0](
            a.tokens.repeat_interleave(B, 0), additive_mask(a.mask.repeat_interleave(B, 0)), v.tokens.repeat(B, 1, 1), None)
        out = model.compute_loss(a, v, image_ids=t["in.img_id_index"])
    close = dict(atol=1e-4, rtol=1e-4)
    assert torch.allclose(a.trm2_hidden_states[0], t["out.conv2"], **close)
    assert torch.equal(a.mask.float() * -10000.0, t["out.audio_extended_mask"].view(B, -1))
    assert torch.allclose(a.tokens, t["out.trm2"], **close)
    assert torch.allclose(v.hidden_states[0], t["out.visn_fc"], **close)
    assert torch.allclose(v.tokens, t["out.visual_feats"], **close)
    assert torch.allclose(ref_a, t["out.xtrm_layer0_audio"], **close)
    assert torch.allclose(ref_v, t["out.xtrm_layer0_visual"], **close)
    tight = dict(atol=1e-5, rtol=1e-4)
    assert torch.allclose(a.coarse, t["out.audio_coarse"], **tight)
    assert torch.allclose(v.coarse, t["out.image_coarse"], **tight)
    assert torch.allclose(out.coarse_scores, t["out.coarse_scores"].t(), **tight)  # official: images as rows
    assert torch.allclose(out.fine_scores, t["out.fine_scores"], **tight)
    assert out.loss.item() == pytest.approx(t["out.total_loss"].item(), abs=1e-5)

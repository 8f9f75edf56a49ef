"""Speech-guided MIM (``vg_mim``): masking, summary, momentum encoder, ablations, training.

All models are the ``tiny`` preset (16 kHz audio, 320x downsampling, 32x32
images with 8x8 patches -> N = 16 patches, 12 of them masked).
"""

import math

import pytest
import torch

from s3prl_vgs.checkpoint import load_model
from s3prl_vgs.config import ConfigError
from s3prl_vgs.losses import info_nce_loss, masked_margin_softmax_loss
from s3prl_vgs.models import build_model
from s3prl_vgs.models.vg_mim import (
    MIM_MODES,
    SpeechGuidedMIMConfig,
    momentum_schedule,
    random_masking,
    speech_summary,
)

N_PATCHES = 16


def tiny(seed=0, **overrides):
    torch.manual_seed(seed)
    return build_model("vg_mim", preset="tiny", **overrides)


def batch(seed=0, B=3):
    g = torch.Generator().manual_seed(seed)
    wavs = torch.randn(B, 8000, generator=g)
    lengths = torch.tensor([8000, 6400, 4800][:B])
    wavs[1, 6400:] = 0
    wavs[2, 4800:] = 0
    images = torch.randn(B, 3, 32, 32, generator=g)
    noise = torch.rand(B, N_PATCHES, generator=g)
    return wavs, lengths, images, noise


# ----------------------------------------------------------------------------- masking


@pytest.mark.parametrize("n", [16, 196])
def test_random_masking_masks_exactly_75_percent(n):
    x = torch.randn(4, n, 5)
    kept, mask, ids_restore = random_masking(x, 0.75)
    assert mask.sum(1).tolist() == [n * 3 // 4] * 4  # 12 of 16, 147 of 196
    assert kept.shape == (4, n // 4, 5)
    # the kept rows are exactly the unmasked patches (each appears once)
    for b in range(4):
        visible = x[b, mask[b] == 0]
        assert sorted(map(tuple, visible.tolist())) == sorted(map(tuple, kept[b].tolist()))
    # ids_restore puts [kept, dropped] back into patch order
    dropped = torch.stack([x[b, mask[b] == 1] for b in range(4)])
    shuffled = torch.cat([kept, torch.zeros_like(dropped)], dim=1)
    restored = torch.gather(shuffled, 1, ids_restore[..., None].expand(-1, -1, 5))
    torch.testing.assert_close(restored[mask == 0], x[mask == 0])


def test_random_masking_keeps_the_smallest_noise():
    x = torch.arange(8.0).view(1, 8, 1)
    noise = torch.tensor([[0.9, 0.1, 0.8, 0.7, 0.2, 0.6, 0.5, 0.4]])
    kept, mask, _ = random_masking(x, 0.75, noise=noise)
    assert kept.flatten().tolist() == [1.0, 4.0]  # noise 0.1 then 0.2
    assert mask.tolist() == [[1, 0, 1, 1, 0, 1, 1, 1]]


def test_model_masks_12_of_16_patches():
    out = tiny()(*batch()[:3], epoch=5)
    assert out.mask.shape == (3, N_PATCHES)
    assert out.mask.sum(1).tolist() == [12.0, 12.0, 12.0]


# ----------------------------------------------------------------------------- MIM loss


@pytest.mark.parametrize("reduction,scale", [("sum", 1.0), ("mean", 0.5)])
def test_mim_loss_covers_only_masked_positions(reduction, scale):
    model = tiny(mim_reduction=reduction)
    pred = torch.zeros(1, 4, 2)
    target = torch.zeros(1, 4, 2)
    mask = torch.tensor([[1.0, 0.0, 1.0, 0.0]])
    target[0, 0] = torch.tensor([3.0, 4.0])  # masked: squared error 25, over 2 masked patches; "mean" / D = 2
    assert model.forward_loss(pred, target, mask).item() == pytest.approx(12.5 * scale)
    changed = target.clone()
    changed[0, 1] = torch.tensor([100.0, -100.0])  # visible position
    pred_changed = pred.clone()
    pred_changed[0, 3] = 7.0  # visible position
    assert model.forward_loss(pred_changed, changed, mask).item() == pytest.approx(12.5 * scale)
    pred_changed[0, 2] = torch.tensor([1.0, 1.0])  # masked position: adds 2 / 2
    assert model.forward_loss(pred_changed, changed, mask).item() == pytest.approx(13.5 * scale)


def test_model_mim_loss_is_mean_squared_error_over_masked_patches():
    out = tiny()(*batch()[:3], epoch=5, noise=batch()[3])
    err = (out.pred - out.target).pow(2).mean(-1)  # (B, N) per-patch MSE (the default "mean")
    by_hand = err[out.mask == 1].mean()
    torch.testing.assert_close(out.mim_loss, by_hand)
    torch.testing.assert_close(out.loss, out.nce_loss + 2.0 * out.mim_loss)


def test_encoder_sees_visible_patches_only():
    model = tiny().eval()
    wavs, lengths, images, noise = batch()
    _, mask, _ = random_masking(torch.zeros(3, N_PATCHES, 1), 0.75, noise)
    ref = model(wavs, lengths, images, noise=noise)
    masked_patch = int((mask[0] == 1).nonzero()[0])
    visible_patch = int((mask[0] == 0).nonzero()[0])

    def perturb(patch):
        im = images.clone()
        r, c = divmod(patch, 4)
        im[0, :, 8 * r:8 * r + 8, 8 * c:8 * c + 8] += 3.0
        return model(wavs, lengths, im, noise=noise)

    hidden = perturb(masked_patch)
    torch.testing.assert_close(hidden.pred, ref.pred)  # decoder input unchanged
    assert not torch.allclose(hidden.target, ref.target)  # the momentum encoder sees the full image
    assert not torch.allclose(perturb(visible_patch).pred[0], ref.pred[0])


# ----------------------------------------------------------------------------- speech summary


def test_speech_summary_by_hand():
    att = torch.zeros(1, 2, 4, 4)
    att[0, 0, 0] = torch.tensor([0.1, 0.2, 0.3, 0.4])  # head 0: CLS query over [CLS, f1, f2, f3]
    att[0, 1, 0] = torch.tensor([0.5, 0.25, 0.25, 0.0])
    frames = torch.tensor([[[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]])
    # raw W: head 0 = 0.2*f1 + 0.3*f2 + 0.4*f3 = [0.6, 0.7]; head 1 = 0.25*(f1+f2) = [0.25, 0.25]
    raw = speech_summary(att, frames, renormalize=False)
    torch.testing.assert_close(raw, torch.tensor([[[0.6, 0.7], [0.25, 0.25]]]))
    # renormalised over frames: head 0 / 0.9, head 1 / 0.5
    norm = speech_summary(att, frames)
    torch.testing.assert_close(norm, torch.tensor([[[0.6 / 0.9, 0.7 / 0.9], [0.5, 0.5]]]))
    # a padded frame leaves W: head 0 = (0.2*f1 + 0.3*f2) / 0.5 = [0.4, 0.6]
    padded = speech_summary(att, frames, padding_mask=torch.tensor([[False, False, True]]))
    torch.testing.assert_close(padded[0, 0], torch.tensor([0.4, 0.6]))


def test_model_summary_is_the_cls_attention_weighted_sum_per_head():
    model = tiny().eval()
    wavs, lengths, images, noise = batch()
    out = model(wavs, lengths, images, noise=noise)
    audio = model.encode_audio(wavs, lengths, output_attentions=True)
    H, D = model.config.audio.num_heads, model.config.audio.hidden_size
    assert out.speech_context.shape == (3, H, D)  # one vector per head
    n_valid = (~audio.padding_mask).sum(1)
    for b in range(3):
        T = int(n_valid[b])
        for h in range(H):
            w = audio.attentions[b, h, 0, 1:1 + T]
            expected = sum(w[t] * audio.tokens[b, t] for t in range(T)) / w.sum()
            torch.testing.assert_close(out.speech_context[b, h], expected, rtol=1e-5, atol=1e-6)


# ----------------------------------------------------------------------------- momentum encoder


def test_momentum_encoder_is_not_optimised_and_moves_by_ema():
    model = tiny()
    ids = {id(p) for p in model.parameters()}
    momentum = dict(model.momentum_image_encoder.named_buffers())
    online = dict(model.image_encoder.named_parameters())
    assert set(momentum) == set(online)
    assert not any(id(t) in ids for t in momentum.values())
    saved = [k for k in model.state_dict() if k.startswith("momentum_image_encoder.")]
    assert len(saved) == len(online)  # saved with the model
    assert all(torch.equal(momentum[k], online[k]) for k in online)  # starts as a copy

    wavs, lengths, images, noise = batch()
    out = model(wavs, lengths, images, noise=noise)
    out.loss.backward()
    assert all(t.grad is None and not t.requires_grad for t in momentum.values())
    assert online["embeddings.patch_embeddings.projection.weight"].grad is not None
    torch.optim.SGD(model.trainable_parameters(), lr=0.1).step()

    before = {k: v.clone() for k, v in momentum.items()}
    assert any(not torch.equal(before[k], online[k]) for k in online)  # the step moved theta only
    model.update_momentum_encoder(0.9)
    for k in online:  # the EMA rule in float64, to float32 rounding (two ulps)
        expected = 0.9 * before[k].double() + 0.1 * online[k].detach().double()
        torch.testing.assert_close(momentum[k].double(), expected, rtol=2.4e-7, atol=1e-9)

    frozen = {k: v.clone() for k, v in momentum.items()}
    model.update_momentum_encoder(1.0)
    assert all(torch.equal(frozen[k], momentum[k]) for k in momentum)


def test_schedule_updates_the_momentum_encoder_after_the_step_and_forward_does_not():
    model = tiny()
    wavs, lengths, images, noise = batch()
    with torch.no_grad():
        for p in model.image_encoder.parameters():
            p.add_(0.01)
    before = {k: v.clone() for k, v in model.momentum_image_encoder.named_buffers()}
    out = model(wavs, lengths, images, noise=noise)  # no side effects
    assert all(torch.equal(before[k], v) for k, v in model.momentum_image_encoder.named_buffers())
    torch.testing.assert_close(out.target, model.momentum_image_encoder(images).patches)
    schedule = model.training_schedule()
    schedule.set_total_steps(4)
    schedule.num_updates.fill_(2)  # cosine midpoint: alpha = (0.999 + 1) / 2
    alpha = schedule.momentum()
    assert alpha == pytest.approx(0.9995, abs=1e-12) == model.momentum_at(2, 4)
    schedule.after_optimizer_step(model)
    assert int(schedule.num_updates) == 3
    after = dict(model.momentum_image_encoder.named_buffers())
    for k, p in model.image_encoder.named_parameters():
        expected = alpha * before[k].double() + (1 - alpha) * p.detach().double()
        torch.testing.assert_close(after[k].double(), expected, rtol=2.4e-7, atol=1e-9)
    schedule.total_steps = None
    with pytest.raises(RuntimeError, match="total_steps"):
        schedule.after_optimizer_step(model)


def test_schedule_switches_the_mim_weight_on_by_epoch():
    schedule = tiny().training_schedule()
    assert schedule.forward_kwargs() == {"mim_weight": 2.0}  # epoch unknown: the full weight
    schedule.set_epoch(2)
    assert schedule.forward_kwargs() == {"mim_weight": 0.0}
    schedule.set_epoch(3)
    assert schedule.forward_kwargs() == {"mim_weight": 2.0}
    assert tiny(mim="none").training_schedule().forward_kwargs() == {"mim_weight": 0.0}


def test_momentum_schedule_end_points():
    assert momentum_schedule(0, 1000) == pytest.approx(0.999, abs=1e-12)
    assert momentum_schedule(1000, 1000) == 1.0
    assert momentum_schedule(500, 1000) == pytest.approx(0.9995, abs=1e-12)  # cosine midpoint
    # a quarter of the way: 1 - 0.001 * (cos(pi/4) + 1) / 2
    assert momentum_schedule(250, 1000) == pytest.approx(1 - 0.001 * (math.cos(math.pi / 4) + 1) / 2, abs=1e-12)
    values = [momentum_schedule(s, 100) for s in range(101)]
    assert all(a <= b for a, b in zip(values, values[1:]))
    assert momentum_schedule(2000, 1000) == 1.0  # clamped past the end
    assert tiny().momentum_at(0, 10) == pytest.approx(0.999)


def test_mim_weight_switches_on_after_3_epochs():
    model = tiny()
    assert [model.mim_weight_at(e) for e in range(5)] == [0.0, 0.0, 0.0, 2.0, 2.0]
    wavs, lengths, images, noise = batch()
    early = model(wavs, lengths, images, epoch=2, noise=noise)
    assert early.mim_loss is None and early.loss is early.nce_loss
    late = model(wavs, lengths, images, epoch=3, noise=noise)
    assert late.mim_weight == 2.0
    torch.testing.assert_close(late.loss, late.nce_loss + 2.0 * late.mim_loss)
    explicit = model(wavs, lengths, images, epoch=0, mim_weight=0.5, noise=noise)  # mim_weight wins
    torch.testing.assert_close(explicit.loss, explicit.nce_loss + 0.5 * explicit.mim_loss)


# ----------------------------------------------------------------------------- ablations


def test_ablation_modules():
    none = tiny(mim="none")
    assert none.decoder is None and none.momentum_image_encoder is None
    assert not any("momentum" in k or "decoder" in k for k in none.state_dict())
    recon = tiny(mim="recon")
    assert all(layer.cross_attn is None for layer in recon.decoder.layers)
    for mode in ("speech_frames", "speech_summary"):
        layer = tiny(mim=mode).decoder.layers[0]
        assert layer.cross_attn.key.in_features == 64  # keys/values come from the audio width


@pytest.mark.parametrize("mode,sees_speech", [("recon", False), ("speech_frames", True), ("speech_summary", True)])
def test_decoder_sees_speech_only_when_speech_guided(mode, sees_speech):
    model = tiny(mim=mode).eval()
    wavs, lengths, images, noise = batch()
    a = model(wavs, lengths, images, noise=noise)
    b = model(torch.flip(wavs, [0]) * 0.5, lengths, images, noise=noise)  # different audio, same images
    assert torch.allclose(a.pred, b.pred) is not sees_speech
    torch.testing.assert_close(a.target, b.target)
    if mode == "speech_frames":
        assert a.speech_context.shape == (3, 24, 64)  # all 24 frames of 0.5 s (CLS excluded)
    if mode == "speech_summary":
        assert a.speech_context.shape == (3, 4, 64)  # one vector per head
    if mode == "recon":
        assert a.speech_context is None


@pytest.mark.parametrize("mode", ["speech_frames", "speech_summary"])
def test_speech_guidance_ignores_padding(mode):
    model = tiny(mim=mode).eval()
    wavs, lengths, images, noise = batch()
    ref = model(wavs, lengths, images, noise=noise)
    longer = torch.cat([wavs, torch.zeros(3, 1600)], dim=1)  # 0.1 s more padding, same lengths
    out = model(longer, lengths, images, noise=noise)
    torch.testing.assert_close(out.pred, ref.pred, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("mode", MIM_MODES)
def test_every_ablation_trains_a_step(mode):
    model = tiny(mim=mode)
    wavs, lengths, images, noise = batch()
    out = model(wavs, lengths, images, epoch=3, noise=noise)
    assert (out.mim_loss is None) == (mode == "none")
    assert torch.isfinite(out.loss)
    out.loss.backward()
    trainable = [p for p in model.trainable_parameters()]
    assert all(p.grad is not None for p in trainable)  # every parameter takes part
    before = [p.detach().clone() for p in trainable]
    torch.optim.AdamW(trainable, lr=1e-3).step()
    assert all(not torch.equal(b, p) for b, p in zip(before, trainable))
    frozen = [p for n, p in model.named_parameters() if "feature_extractor" in n]
    assert frozen and all(not p.requires_grad for p in frozen)  # the conv stays frozen


# ----------------------------------------------------------------------------- contrastive branch, VG-HuBERT switches


def test_contrastive_branch_scores_audio_rows_and_pools_patches():
    model = tiny().eval()
    wavs, lengths, images, _ = batch()
    audio, image = model.encode_audio(wavs, lengths), model.encode_image(images)
    torch.testing.assert_close(image.coarse, model.image_proj(image.tokens.mean(1)))  # mean of patch tokens
    torch.testing.assert_close(audio.coarse, model.audio_proj(audio.cls))
    assert len(audio.hidden_states) == model.config.audio.num_layers + 1
    assert audio.hidden_states[0].shape == audio.tokens.shape == (3, 24, 64)  # 8000 samples -> 24 frames, CLS removed
    scores = model.coarse_scores(audio, image)
    torch.testing.assert_close(scores[1, 2], audio.coarse[1] @ image.coarse[2])  # audios as rows
    assert audio.mask.tolist() == [[False] * 24, [False] * 19 + [True] * 5, [False] * 14 + [True] * 10]
    assert image.mask.shape == (3, 16) and not image.mask.any()
    out = model(wavs, lengths, images, epoch=0)
    torch.testing.assert_close(out.scores, scores)
    torch.testing.assert_close(out.loss, info_nce_loss(scores))


def test_coarse_retrieval_through_the_retrieval_module():
    from s3prl_vgs.retrieval import recall_at_k

    model = tiny().eval()
    wavs, lengths, images, _ = batch()
    with torch.no_grad():
        scores = model.coarse_scores(model.encode_audio(wavs, lengths), model.encode_image(images[:2]))
    audio_to_image = torch.tensor([0, 1, 1])  # captions 1 and 2 describe image 1
    r = recall_at_k(scores, audio_to_image, ks=(1, 2))
    a2i_hits = (scores.argmax(1) == audio_to_image).double().mean().item() * 100  # brute force
    i2a_hits = sum(int(audio_to_image[scores[:, j].argmax()] == j) for j in range(2)) / 2 * 100
    assert r["A2I"][1] == pytest.approx(a2i_hits) and r["I2A"][1] == pytest.approx(i2a_hits)
    assert r["A2I"][2] == r["I2A"][2] == 100.0  # two images: everything is in the top 2


def test_vg_hubert_switches():
    model = tiny(mim="none", image_pooling="cls", projection="mlp", loss="masked_margin", embed_dim=96).eval()
    assert [type(m).__name__ for m in model.audio_proj] == ["Linear", "GELU", "Linear"]
    assert model.audio_proj[0].out_features == 128 and model.image_proj[2].out_features == 96
    wavs, lengths, images, _ = batch()
    image = model.encode_image(images)
    torch.testing.assert_close(image.coarse, model.image_proj(image.cls))
    same = torch.tensor([[True, True, False], [True, True, False], [False, False, True]])
    out = model(wavs, lengths, images, same_image=same)
    torch.testing.assert_close(out.loss, masked_margin_softmax_loss(out.scores, same, margin=1.0))


# ----------------------------------------------------------------------------- training, save/load, config


def test_tiny_model_loss_goes_down_on_a_fixed_batch():
    model = tiny(seed=1)
    wavs, lengths, images, noise = batch(seed=1, B=3)
    opt = torch.optim.AdamW(model.trainable_parameters(), lr=2e-3, weight_decay=0.0)
    first = None
    for step in range(30):
        out = model(wavs, lengths, images, epoch=3, noise=noise)
        if first is None:
            first = (out.nce_loss.item(), out.mim_loss.item())
        opt.zero_grad()
        out.loss.backward()
        opt.step()
        model.update_momentum_encoder(model.momentum_at(step, 30))
    model.eval()
    last = model(wavs, lengths, images, epoch=3, noise=noise)
    assert last.nce_loss.item() < 0.5 * first[0]
    assert last.mim_loss.item() < 0.8 * first[1]


def test_save_load_identical(tmp_path):
    model = tiny(mim="speech_summary")
    model.update_momentum_encoder(0.0)  # make sure the momentum buffers are saved, not rebuilt
    with torch.no_grad():
        model.momentum_image_encoder.layernorm.weight.mul_(1.5)
    model.eval()
    model.save(tmp_path / "m")
    loaded = load_model(tmp_path / "m").eval()
    assert loaded.config == model.config
    sd, ld = model.state_dict(), loaded.state_dict()
    assert sd.keys() == ld.keys()
    assert any(k.startswith("momentum_image_encoder.") for k in sd)
    assert all(torch.equal(sd[k], ld[k]) for k in sd)
    wavs, lengths, images, noise = batch()
    a, b = model(wavs, lengths, images, noise=noise), loaded(wavs, lengths, images, noise=noise)
    assert torch.equal(a.loss, b.loss) and torch.equal(a.pred, b.pred) and torch.equal(a.target, b.target)


def test_config_presets_round_trip_and_validate():
    for name in SpeechGuidedMIMConfig.PRESETS:
        cfg = SpeechGuidedMIMConfig.preset(name)
        assert SpeechGuidedMIMConfig.from_yaml(cfg.to_yaml()) == cfg
    base = SpeechGuidedMIMConfig.preset("base")
    assert (base.audio.backbone, base.audio.num_layers, base.audio.reinit_last, base.audio.cls_position) == ("hubert", 12, 3, "after_pos_conv")
    assert base.audio.normalize_waveform is False and base.audio.freeze_conv is True
    assert (base.image.patch_size, base.image.hidden_size, base.image.num_layers, base.embed_dim) == (16, 768, 12, 768)
    assert (base.mim, base.mask_ratio, base.mim_weight, base.mim_start_epoch, base.num_masked) == ("speech_summary", 0.75, 2.0, 3, 147)
    vgh = SpeechGuidedMIMConfig.preset("vg_hubert")
    assert (vgh.image.hidden_size, vgh.image.num_heads, vgh.image.patch_size, vgh.image.layer_norm_eps) == (384, 6, 8, 1e-6)
    assert (vgh.image_pooling, vgh.projection, vgh.embed_dim, vgh.loss, vgh.mim) == ("cls", "mlp", 2048, "masked_margin", "none")
    for bad in (dict(mim="full"), dict(image_pooling="max"), dict(loss="triplet"), dict(mask_ratio=1.0), dict(unknown=1)):
        with pytest.raises(ConfigError):
            SpeechGuidedMIMConfig.preset("tiny", **bad)

"""Every registered family x preset honours the one model contract (``s3prl_vgs.models.base``).

Real tiny models, real shapes and masks: what evaluation, the ESPnet wrapper
and the S3PRL expert rely on without knowing the family.
"""

import pytest
import torch

from s3prl_vgs.checkpoint import load_model
from s3prl_vgs.models import AudioOutput, ImageOutput, TrainOutput, available_models, build_model
from s3prl_vgs.models.base import TrainingSchedule
from s3prl_vgs.modules.speech_trunk import conv_output_lengths

# (registry name, preset): every family, and VG-HuBERT as a configuration of the MIM family.
CASES = [("fast_vgs", "tiny"), ("vg_mim", "tiny"), ("vg_mim", "vg_hubert_tiny")]
LENGTHS = [8000, 5000, 3300]


def test_every_registered_family_is_covered():
    assert sorted({name for name, _ in CASES}) == available_models()


def image_inputs(spec, n, seed=0):
    g = torch.Generator().manual_seed(seed)
    if spec.image_input == "roi":
        boxes = torch.rand(n, spec.max_rois, spec.roi_pos_dim, generator=g)
        boxes = torch.cat([boxes[..., :2] * 0.5, 0.5 + boxes[..., 2:] * 0.5], -1)  # x1 < x2, y1 < y2
        return {"feats": torch.randn(n, spec.max_rois, spec.roi_feat_dim, generator=g), "boxes": boxes}
    return {"images": torch.randn(n, 3, spec.image_size, spec.image_size, generator=g)}


def waves(seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(len(LENGTHS), max(LENGTHS), generator=g)
    for i, n in enumerate(LENGTHS):
        x[i, n:] = 0
    return x, torch.tensor(LENGTHS)


@pytest.fixture(scope="module", params=CASES, ids=lambda c: f"{c[0]}-{c[1]}")
def case(request):
    name, preset = request.param
    torch.manual_seed(0)
    return name, build_model(name, preset=preset).eval()


def test_input_spec_comes_from_the_config(case):
    _, model = case
    spec = model.input_spec
    assert spec == model.config.input_spec
    assert spec.downsample_rate == 320 and spec.sample_rate == 16000
    assert spec.min_audio_samples == 400  # wav2vec2/HuBERT conv: one frame needs 400 samples (25 ms)
    assert set(spec.image_args) <= {"feats", "boxes", "images"}
    assert (model.image_transform(train=False) is None) == (spec.image_input == "roi")
    from s3prl_vgs.modules.speech_trunk import SpeechTrunk

    trunks = [m for m in model.modules() if isinstance(m, SpeechTrunk)]
    assert trunks == [model.speech_trunk] and model.speech_trunk.downsample_rate == spec.downsample_rate


@torch.no_grad()
def test_encode_audio(case):
    _, model = case
    spec = model.input_spec
    wavs, lengths = waves()
    a = model.encode_audio(wavs, lengths)
    assert isinstance(a, AudioOutput) and len(a) == 3
    assert a.coarse.shape == (3, spec.embed_dim)
    # hidden_states: the 20 ms trunk frames, CLS removed; padding_mask True exactly at their pads
    trunk = getattr(model.config, "speech", None) or model.config.audio
    frames = conv_output_lengths(lengths, trunk.conv_kernel, trunk.conv_stride)
    assert frames.tolist() == [24, 15, 10]
    T = int(frames.max())
    assert a.padding_mask.dtype == torch.bool and a.padding_mask.shape == (3, T)
    assert (~a.padding_mask).sum(-1).tolist() == frames.tolist()
    assert all(h.shape[:2] == (3, T) for h in a.hidden_states) and len(a.hidden_states) >= 2
    assert a.downsample_rate == spec.downsample_rate and a.frame_rate == 50.0
    # tokens: what the fine scorer reads, with its own mask (never True at a CLS)
    assert a.tokens_padding_mask.dtype == torch.bool and a.tokens_padding_mask.shape == a.tokens.shape[:2]
    assert a.mask is a.tokens_padding_mask  # the old name
    assert not a.tokens_padding_mask[0].any() and a.tokens_padding_mask[2].any()
    # every hidden-state stream has a downsample rate
    sets = a.hidden_state_sets()
    assert set(sets) == set(spec.downsample_rates)
    for key, states in sets.items():
        n = -(-max(LENGTHS) // spec.downsample_rates[key])
        assert all(abs(h.size(1) - n) <= 1 for h in states), key
    # padding does not change an utterance's retrieval vector
    alone = model.encode_audio(wavs[2:3, :LENGTHS[2]], lengths[2:])
    torch.testing.assert_close(alone.coarse[0], a.coarse[2], atol=1e-4, rtol=1e-4)
    # a row subset keeps what retrieval needs
    sub = a[1:]
    assert type(sub) is type(a) and torch.equal(sub.coarse, a.coarse[1:]) and torch.equal(sub.tokens, a.tokens[1:])


@torch.no_grad()
def test_minimum_audio_length(case):
    _, model = case
    n = model.input_spec.min_audio_samples
    a = model.encode_audio(torch.randn(1, n), torch.tensor([n]))
    assert a.hidden_states[-1].size(1) == 1
    with pytest.raises(ValueError, match="too short"):
        model.encode_audio(torch.randn(1, n - 1), torch.tensor([n - 1]))


@torch.no_grad()
def test_encode_image_and_scores(case):
    _, model = case
    spec = model.input_spec
    v = model.encode_image(**image_inputs(spec, 4))
    assert isinstance(v, ImageOutput) and len(v) == 4 and v.coarse.shape == (4, spec.embed_dim)
    assert v.tokens_padding_mask.shape == v.tokens.shape[:2] and not v.tokens_padding_mask.any()
    a = model.encode_audio(*waves())
    S = model.coarse_scores(a, v)
    assert S.shape == (3, 4)
    torch.testing.assert_close(S, a.coarse @ v.coarse.t())
    torch.testing.assert_close(model.coarse_scores(a.coarse, v.coarse), S)  # tensors work too
    if not spec.has_fine_scores:
        return
    F = model.fine_scores(a, v)
    assert F.shape == (3, 4) and torch.isfinite(F).all()
    pairs = torch.tensor([[2, 3], [0, 0], [1, 2]])
    torch.testing.assert_close(model.fine_scores(a, v, pairs), F[pairs[:, 0], pairs[:, 1]], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(model.fine_scores(a[1:], v[2:]), F[1:, 2:], atol=1e-5, rtol=1e-5)


def test_training_forward_and_schedule(case):
    _, model = case
    model.train()
    try:
        schedule = model.training_schedule()
        assert isinstance(schedule, TrainingSchedule)
        schedule.set_epoch(100)
        schedule.set_total_steps(10)
        wavs, lengths = waves()
        same = torch.eye(3, dtype=torch.bool)
        torch.manual_seed(0)
        out = model(wavs, lengths, **image_inputs(model.input_spec, 3), same_image=same, **schedule.forward_kwargs())
        assert isinstance(out, TrainOutput)
        assert out.loss.dim() == 0 and torch.isfinite(out.loss)
        assert out.losses and all(v.dim() == 0 and torch.isfinite(v) for v in out.losses.values())
        assert out.batch_scores["coarse"].shape == (3, 3)
        torch.testing.assert_close(out.batch_scores["coarse"], out.audio.coarse @ out.image.coarse.t())
        out.loss.backward()
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())
        # forward has no side effects on the model's state; the schedule's step does its update
        state = {k: v.clone() for k, v in model.state_dict().items()}
        model(wavs, lengths, **image_inputs(model.input_spec, 3), same_image=same, **schedule.forward_kwargs())
        assert all(torch.equal(state[k], v) for k, v in model.state_dict().items() if not k.endswith("num_batches_tracked")
                   and "running_" not in k)
        schedule.after_optimizer_step(model)
        assert int(schedule.num_updates) == 1
    finally:
        model.zero_grad(set_to_none=True)
        model.eval()


@torch.no_grad()
def test_save_load_keeps_the_contract(case, tmp_path):
    _, model = case
    model.save(tmp_path / "m")
    loaded = load_model(tmp_path / "m")
    assert loaded.input_spec == model.input_spec
    wavs, lengths = waves()
    torch.testing.assert_close(loaded.encode_audio(wavs, lengths).coarse, model.encode_audio(wavs, lengths).coarse)

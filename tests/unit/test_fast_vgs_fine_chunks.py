"""FaST-VGS fine loss in checkpointed chunks (``fine_chunk_size``): the same loss and gradients as all pairs at once."""

import pytest
import torch

import s3prl_vgs

B = 6


def _batch(seed=0):
    g = torch.Generator().manual_seed(seed)
    lengths = torch.tensor([16000, 14400, 12800, 11200, 9600, 8000])
    wavs = torch.randn(B, 16000, generator=g) * (torch.arange(16000)[None] < lengths[:, None])
    feats, boxes = torch.randn(B, 36, 32, generator=g), torch.rand(B, 36, 4, generator=g)
    image_ids = [0, 1, 1, 2, 3, 4]  # captions 1 and 2 describe the same image: masked pairs in the softmaxes
    return wavs, lengths, feats, boxes, image_ids


def _loss_and_grads(model, fine_chunk_size, seed=0, **fine_kwargs):
    model.config.fine_chunk_size = fine_chunk_size
    model.zero_grad(set_to_none=True)
    torch.manual_seed(seed)  # the dropout draws
    out = model(*_batch()[:4], image_ids=_batch()[4])
    out.loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return out, grads


def _model(**overrides):
    torch.manual_seed(0)
    return s3prl_vgs.build_model("fast_vgs", preset="tiny", **overrides).train()


@pytest.mark.parametrize("chunk", [1, 5, 36, 100])  # 5 leaves a short last chunk; 36 = B^2 in one chunk
def test_chunked_fine_loss_equals_all_pairs(chunk):
    model = _model(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    ref, ref_grads = _loss_and_grads(model, 0)
    got, grads = _loss_and_grads(model, chunk)
    assert ref.fine_loss.item() > 0.1  # a real loss, not a degenerate zero
    torch.testing.assert_close(got.losses["fine"], ref.losses["fine"], rtol=0, atol=1e-6)
    torch.testing.assert_close(got.loss, ref.loss, rtol=0, atol=1e-6)
    torch.testing.assert_close(got.batch_scores["fine"], ref.batch_scores["fine"], rtol=0, atol=1e-6)
    assert grads.keys() == ref_grads.keys() and any(n.startswith("cross_encoder.") for n in grads)
    for name in ref_grads:
        assert ref_grads[name].abs().max() > 0 or name.startswith("trunk.")  # gradients that could differ
        torch.testing.assert_close(grads[name], ref_grads[name], rtol=0, atol=1e-6, msg=name)


def test_checkpointed_chunks_replay_dropout():
    """With dropout on, the recomputed chunks use the forward's masks: gradients equal the chunks kept in memory."""
    model = _model()
    ckpt, ckpt_grads = _loss_and_grads(model, 5)
    # The same chunks without checkpointing, called the way compute_loss calls them.
    orig = model.fine_scores
    model.fine_scores = lambda a, v, pairs=None, chunk_size=None, checkpoint=False: orig(a, v, pairs, chunk_size, False)
    try:
        kept, kept_grads = _loss_and_grads(model, 5)
    finally:
        del model.fine_scores
    torch.testing.assert_close(ckpt.loss, kept.loss, rtol=0, atol=1e-6)
    for name in kept_grads:
        torch.testing.assert_close(ckpt_grads[name], kept_grads[name], rtol=0, atol=1e-6, msg=name)
    again, _ = _loss_and_grads(model, 5, seed=1)
    assert (again.losses["fine"] - ckpt.losses["fine"]).abs() > 1e-4  # dropout is on: other draws, other loss


def test_chunks_keep_fewer_activations_for_backward():
    """What autograd saves outside the checkpointed chunks is smaller than the all-pairs graph."""
    model = _model()
    saved = {}
    for chunk in (0, 4):
        model.config.fine_chunk_size = chunk
        audio = model.encode_audio(*_batch()[:2])
        image = model.encode_image(*_batch()[2:4])
        total = [0]

        def pack(t):
            total[0] += t.numel() * t.element_size()
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            model.compute_loss(audio, image, image_ids=_batch()[4])
        saved[chunk] = total[0]
    assert saved[4] < 0.5 * saved[0], saved


def test_bad_fine_chunk_size_is_refused():
    with pytest.raises(s3prl_vgs.config.ConfigError, match="fine_chunk_size must be >= 0"):
        s3prl_vgs.build_model("fast_vgs", preset="tiny", fine_chunk_size=-1)

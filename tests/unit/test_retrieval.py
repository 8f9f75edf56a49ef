"""recall@k against brute force, both protocols; coarse-to-fine against full fine ranking."""

import pytest
import torch

from s3prl_vgs.retrieval import (
    CoarseIndex,
    coarse_to_fine,
    rankings_from_scores,
    recall_at_k,
    recall_from_rankings,
)


def brute_force_recall(S, a2i, ks):
    """Loops over sorted lists, as the official calc_recalls_from_S_one_to_many does."""
    S = S.tolist()
    a2i = a2i.tolist()
    Na, Ni = len(S), len(S[0])
    out = {"A2I": {}, "I2A": {}}
    for k in ks:
        hits = 0
        for i in range(Na):
            top = sorted(range(Ni), key=lambda j: -S[i][j])[:k]
            hits += a2i[i] in top
        out["A2I"][k] = 100.0 * hits / Na
        imgs = sorted(set(a2i))
        hits = 0
        for j in imgs:
            top = sorted(range(Na), key=lambda i: -S[i][j])[:k]
            hits += any(a2i[i] == j for i in top)
        out["I2A"][k] = 100.0 * hits / len(imgs)
    return out


def assert_recalls_equal(a, b):
    assert a.keys() == b.keys()
    for d in a:
        assert a[d].keys() == b[d].keys()
        for k in a[d]:
            assert a[d][k] == pytest.approx(b[d][k], abs=1e-9), (d, k)


def test_hand_example_one_to_many():
    # 3 images, captions 0,1 -> image 0, 2 -> image 1, 3,4 -> image 2
    S = torch.tensor([
        [0.9, 0.1, 0.0],   # caption 0: image 0 first (hit@1)
        [0.2, 0.8, 0.3],   # caption 1: image 0 is third (hit only @3)
        [0.5, 0.4, 0.1],   # caption 2: image 1 second
        [0.0, 0.1, 0.7],   # caption 3: image 2 first
        [0.6, 0.0, 0.5],   # caption 4: image 2 second
    ])
    a2i = torch.tensor([0, 0, 1, 2, 2])
    r = recall_at_k(S, a2i, ks=(1, 2, 3))
    assert r["A2I"] == pytest.approx({1: 40.0, 2: 80.0, 3: 100.0})
    # image 0 column: 0.9 (own) first -> hit@1; image 1 column: 0.8 (cap1), 0.4 (cap2 own) -> hit@2;
    # image 2 column: 0.7 (own) first -> hit@1
    assert r["I2A"] == pytest.approx({1: 200 / 3, 2: 100.0, 3: 100.0})


@pytest.mark.parametrize("protocol", ["one_to_many", "one_to_one"])
def test_recall_matches_brute_force(protocol):
    g = torch.Generator().manual_seed(0)
    if protocol == "one_to_many":
        Ni = 12
        a2i = torch.arange(Ni).repeat_interleave(5)[torch.randperm(5 * Ni, generator=g)]
    else:
        Ni = 30
        a2i = torch.randperm(Ni, generator=g)
    S = torch.randn(a2i.numel(), Ni, generator=g)
    S[torch.arange(a2i.numel()), a2i] += 1.0  # informative but imperfect
    ks = (1, 5, 10)
    expected = brute_force_recall(S, a2i, ks)
    assert_recalls_equal(recall_at_k(S, a2i, ks), expected)
    assert 0 < expected["A2I"][1] < 100
    # the same from ranked lists
    assert_recalls_equal(recall_from_rankings(*rankings_from_scores(S, 10), a2i, ks), expected)


def test_row_blocking_does_not_change_ranks():
    from s3prl_vgs.retrieval import retrieval_ranks

    g = torch.Generator().manual_seed(1)
    a2i = torch.arange(7).repeat_interleave(3)
    S = torch.randn(21, 7, generator=g)
    full = retrieval_ranks(S, a2i, block=4096)
    small = retrieval_ranks(S, a2i, block=2)
    for x, y in zip(full, small):
        assert torch.equal(x, y)


def test_ties_count_against_the_query():
    S = torch.zeros(4, 4)
    r = recall_at_k(S, torch.arange(4), ks=(1, 4))
    assert r["A2I"] == {1: 0.0, 4: 100.0} and r["I2A"] == {1: 0.0, 4: 100.0}


def test_images_without_captions_are_left_out_of_i2a():
    S = torch.tensor([[1.0, 0.0, 2.0], [0.0, 1.0, 2.0]])  # image 2 is a distractor with no caption
    r = recall_at_k(S, torch.tensor([0, 1]), ks=(1, 2))
    assert r["A2I"] == {1: 0.0, 2: 100.0}
    assert r["I2A"] == {1: 100.0, 2: 100.0}


def test_bad_input():
    with pytest.raises(ValueError, match="audio_to_image"):
        recall_at_k(torch.zeros(3, 2), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="outside"):
        recall_at_k(torch.zeros(2, 2), torch.tensor([0, 2]))
    with pytest.raises(ValueError, match="NaN"):
        recall_at_k(torch.tensor([[float("nan"), 0.0]]), torch.tensor([0]))
    with pytest.raises(ValueError, match="ks"):
        recall_at_k(torch.zeros(2, 2), torch.tensor([0, 1]), ks=(0,))


def _problem(Na=40, Ni=10, D=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    a2i = torch.arange(Ni).repeat_interleave(Na // Ni)
    img = torch.randn(Ni, D, generator=g)
    aud = img[a2i] + 0.8 * torch.randn(Na, D, generator=g)
    fine = torch.randn(Na, Ni, generator=g)
    fine[torch.arange(Na), a2i] += 1.5
    calls = []

    def fine_fn(pairs):
        calls.append(pairs.size(0))
        return fine[pairs[:, 0], pairs[:, 1]]

    return aud, img, fine, a2i, fine_fn, calls


@pytest.mark.parametrize("index", ["exact", "flat"])
@pytest.mark.parametrize("dedupe", [True, False])
def test_ctf_equals_fine_when_k_covers_everything(index, dedupe):
    aud, img, fine, a2i, fine_fn, calls = _problem()
    res = coarse_to_fine(aud, img, fine_fn, k_coarse=100, keep=10, index=index, query_block=7, dedupe=dedupe)
    a2i_rank, i2a_rank = rankings_from_scores(fine, 10)
    assert torch.equal(res.a2i, a2i_rank)
    assert torch.equal(res.i2a, i2a_rank)
    assert torch.allclose(res.a2i_scores, fine.topk(10, dim=1).values)
    assert_recalls_equal(res.recall(a2i), recall_at_k(fine, a2i))
    # every pair is a candidate in both directions; dedupe scores each once
    assert res.n_pairs == sum(calls) == (40 * 10 if dedupe else 2 * 40 * 10)
    assert set(res.timing) >= {"coarse", "fine", "total", "per_query_ms"}


def test_ctf_small_k_matches_brute_force_rerank():
    aud, img, fine, a2i, fine_fn, _ = _problem(Na=60, Ni=20, seed=3)
    k = 4
    res = coarse_to_fine(aud, img, fine_fn, k_coarse=k, keep=3, query_block=5)
    coarse = aud @ img.t()
    for i in range(60):
        cand = coarse[i].topk(k).indices
        expected = cand[fine[i, cand].argsort(descending=True)][:3]
        assert res.a2i[i].tolist() == expected.tolist()
    for j in range(20):
        cand = coarse[:, j].topk(k).indices
        expected = cand[fine[cand, j].argsort(descending=True)][:3]
        assert res.i2a[j].tolist() == expected.tolist()
    # a caption whose image is not in its coarse top-k is a miss at every k
    missed = [(a2i[i] not in coarse[i].topk(k).indices) for i in range(60)]
    r = res.recall(a2i, ks=(3,))
    assert r["A2I"][3] <= 100.0 * (60 - sum(missed)) / 60


def test_faiss_ivf_with_all_lists_probed_is_exact_and_hnsw_runs():
    g = torch.Generator().manual_seed(0)
    gallery, queries = torch.randn(200, 16, generator=g), torch.randn(30, 16, generator=g)
    exact_vals, exact_idx = CoarseIndex(gallery, "exact").search(queries, 5)
    vals, idx = CoarseIndex(gallery, "ivf", nlist=4, nprobe=4).search(queries, 5)
    assert torch.equal(idx, exact_idx)
    assert torch.allclose(vals, exact_vals, atol=1e-5)
    vals, idx = CoarseIndex(gallery, "hnsw", ef_search=200).search(queries, 5)
    assert idx.shape == (30, 5) and (idx[:, 0] == exact_idx[:, 0]).float().mean() > 0.9
    with pytest.raises(ValueError, match="unknown index kind"):
        CoarseIndex(gallery, "lsh")

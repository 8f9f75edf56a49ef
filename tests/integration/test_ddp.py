"""Global-batch losses under real torch.distributed (gloo, two CPU processes).

Each test spawns two ranks (``torch.multiprocessing.spawn``), runs the same
computation as one process on the concatenated (global) batch, and compares
values and gradients. The ranks hold batches of different sizes (3 and 2) and
different padded lengths, as DDP ranks do.
"""

from __future__ import annotations

import traceback
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from torch.nn.parallel import DistributedDataParallel

from s3prl_vgs import distributed
from s3prl_vgs.losses import global_same_image_mask, image_id_codes
from s3prl_vgs.models import build_model

WORLD = 2
SIZES = (3, 2)  # rows per rank: unequal on purpose


def _entry(rank: int, fn, tmp: str, args) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{tmp}/rendezvous", rank=rank, world_size=WORLD)
    try:
        torch.save(fn(rank, *args), f"{tmp}/result.{rank}.pt")
    except BaseException:
        Path(f"{tmp}/error.{rank}.txt").write_text(traceback.format_exc())
        raise
    finally:
        dist.destroy_process_group()


def run_ranks(fn, tmp_path: Path, *args) -> list:
    """``fn(rank, *args)`` on WORLD gloo ranks; returns each rank's (torch.save-able) result."""
    tmp = str(tmp_path)
    try:
        mp.spawn(_entry, args=(fn, tmp, args), nprocs=WORLD, join=True)
    except Exception as e:  # the child's traceback, not only "process 0 terminated"
        errors = [p.read_text() for p in sorted(tmp_path.glob("error.*.txt"))]
        raise AssertionError("a rank failed:\n" + "\n".join(errors)) from e
    return [torch.load(f"{tmp}/result.{r}.pt", weights_only=True) for r in range(WORLD)]


def rows_of(rank: int) -> slice:
    start = sum(SIZES[:rank])
    return slice(start, start + SIZES[rank])


# ----------------------------------------------------------------------------- all_gather itself


def _gather_loss(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """A loss that mixes every row with every other (as a contrastive loss does), pads excluded."""
    x = x.masked_fill(mask[..., None], 0.0)
    pooled = x.sum(1) / (~mask).sum(1, keepdim=True)  # (B, D)
    return torch.logsumexp(pooled @ pooled.t(), dim=1).sum() + pooled.pow(3).sum()


def _global_inputs():
    g = torch.Generator().manual_seed(0)
    lengths = [4, 2, 3, 6, 5]  # rank 0's longest is 4, rank 1's is 6
    x = torch.randn(sum(SIZES), max(lengths), 3, generator=g, dtype=torch.float64)
    mask = torch.arange(max(lengths))[None] >= torch.tensor(lengths)[:, None]
    return x, mask, lengths


def _gather_rank(rank: int):
    x_all, mask_all, lengths = _global_inputs()
    rows = rows_of(rank)
    T = max(lengths[rows])
    x = x_all[rows, :T].clone().requires_grad_(True)
    mask = mask_all[rows, :T]
    gx, gm = distributed.all_gather(x), distributed.all_gather(mask, pad_value=True)
    loss = _gather_loss(gx, gm)
    loss.backward()  # every rank backpropagates its own copy of the global loss
    offset, total = distributed.batch_offset(x.size(0))
    return dict(loss=loss.detach(), grad=x.grad, gathered=gx.detach(), gmask=gm, offset=offset, total=total,
                world=distributed.world_size(), rank=distributed.rank())


def test_all_gather_values_and_gradients(ddp):
    results = [r["gather"] for r in ddp]
    x_all, mask_all, lengths = _global_inputs()
    x_ref = x_all.clone().requires_grad_(True)
    ref = _gather_loss(x_ref, mask_all)
    ref.backward()
    for r, res in enumerate(results):
        rows = rows_of(r)
        assert (res["world"], res["rank"], res["offset"], res["total"]) == (WORLD, r, rows.start, sum(SIZES))
        assert res["gathered"].shape == x_all.shape and torch.equal(res["gmask"], mask_all)
        assert torch.equal(res["gathered"].masked_fill(mask_all[..., None], 0), x_all.masked_fill(mask_all[..., None], 0))
        torch.testing.assert_close(res["loss"], ref.detach(), rtol=0, atol=1e-12)
        # sum over ranks of c_r * L with c_r = 1: each rank's rows get WORLD x dL/dx
        T = res["grad"].size(1)
        torch.testing.assert_close(res["grad"], WORLD * x_ref.grad[rows, :T], rtol=1e-12, atol=1e-12)


def test_single_process_is_identity():
    x = torch.randn(3, 2, requires_grad=True)
    assert distributed.all_gather(x) is x
    assert distributed.batch_offset(3) == (0, 3) and distributed.world_size() == 1 and distributed.rank() == 0
    with pytest.raises(ValueError, match="0-dim"):
        distributed.all_gather(torch.tensor(1.0))


# ----------------------------------------------------------------------------- same-image mask


GLOBAL_IDS = ["img_a", "img_b", "img_c", "img_a", "img_c"]  # img_a and img_c on both ranks


def _mask_rank(rank: int):
    ids = GLOBAL_IDS[rows_of(rank)]
    int_ids = torch.tensor([7, 8, 9, 7, 9])[rows_of(rank)]
    out = dict(str_mask=global_same_image_mask(len(ids), image_ids=ids),
               int_mask=global_same_image_mask(len(ids), image_ids=int_ids))
    try:
        global_same_image_mask(len(ids), same_image=torch.eye(len(ids), dtype=torch.bool))
    except ValueError as e:
        out["error"] = str(e)
    return out


def test_same_image_mask_uses_global_ids(ddp):
    codes = image_id_codes(GLOBAL_IDS)
    expected = codes[:, None] == codes[None, :]
    assert expected.sum() == 5 + 4  # the diagonal + (0,3),(3,0),(2,4),(4,2)
    for res in [r["mask"] for r in ddp]:
        assert torch.equal(res["str_mask"], expected) and torch.equal(res["int_mask"], expected)
        assert "under DDP give image_ids" in res["error"]


def test_image_id_codes():
    assert image_id_codes(torch.tensor([[3], [5]])).tolist() == [3, 5]
    assert image_id_codes([3, 5]).tolist() == [3, 5]
    a, b = image_id_codes(["x", "y"]).tolist()
    assert a != b and image_id_codes(["x"]).tolist() == [a]  # stable across calls (and processes)
    with pytest.raises(ValueError, match="integers or strings"):
        image_id_codes(torch.tensor([0.5]))


# ----------------------------------------------------------------------------- both models, several steps

STEPS, LR = 3, 0.05
IMAGE_IDS = [0, 1, 2, 0, 2]  # captions of images 0 and 2 on both ranks


def _batch(name: str, model, step: int) -> dict:
    """The global batch of ``step``: waveforms of different lengths, image inputs, ids, MIM noise."""
    g = torch.Generator().manual_seed(100 + step)
    B = sum(SIZES)
    lengths = torch.randint(6000, 12000, (B,), generator=g)
    wavs = torch.randn(B, int(lengths.max()), generator=g) * (torch.arange(int(lengths.max()))[None] < lengths[:, None])
    batch = dict(wavs=wavs, lengths=lengths, image_ids=torch.tensor(IMAGE_IDS))
    c = model.config
    if name == "fast_vgs":
        batch["feats"] = torch.rand(B, c.img_feat_len, c.visual_feat_dim, generator=g)
        lo = torch.rand(B, c.img_feat_len, 2, generator=g) * 0.5
        batch["boxes"] = torch.cat([lo, lo + 0.5], dim=-1)
    else:
        S = c.image.image_size
        batch["images"] = torch.randn(B, 3, S, S, generator=g)
        batch["noise"] = torch.rand(B, c.image.num_patches, generator=g)
        batch["mim_weight"] = 1.0
    return batch


def _local(batch: dict, rows: slice) -> dict:
    """A rank's share: its rows, waveforms cut to its own longest (DDP ranks pad differently)."""
    out = {k: (v[rows] if torch.is_tensor(v) else v) for k, v in batch.items()}
    out["wavs"] = out["wavs"][:, : int(out["lengths"].max())]
    return out


# run name -> (model, overrides); fast_vgs_chunked: the fine loss in checkpointed chunks of 4 pairs
RUNS = {"fast_vgs": ("fast_vgs", {}), "vg_mim": ("vg_mim", {}), "fast_vgs_chunked": ("fast_vgs", {"fine_chunk_size": 4})}


def _train_steps(name: str, rank=None) -> dict:
    """STEPS SGD steps of run ``name``; ``rank`` None: one process on the global batch, else this rank inside DDP.

    The backward follows ESPnet's trainer exactly: the returned loss times
    ``weight / sum(weights) * world_size`` (weight = local batch size), and
    DDP averages the gradients.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny ops: threads only fight over the busy cores
    try:
        return _train_steps_1(name, rank)
    finally:
        torch.set_num_threads(threads)


def _train_steps_1(run: str, rank) -> dict:
    name, overrides = RUNS[run]
    torch.manual_seed(0)
    model = build_model(name, "tiny", **overrides).eval()  # eval: no dropout, no per-rank BatchNorm statistics
    net = model if rank is None else DistributedDataParallel(model, find_unused_parameters=True)
    opt = torch.optim.SGD(model.parameters(), lr=LR)
    record = dict(loss=[], losses=[], scores=[], grads=[])
    for step in range(STEPS):
        batch = _batch(name, model, step)
        if rank is not None:
            batch = _local(batch, rows_of(rank))
        out = net(**batch)
        loss = out.loss
        if rank is not None:
            weight = torch.tensor(float(batch["wavs"].size(0)))
            total = weight.clone()
            dist.all_reduce(total)
            loss = loss * weight / total * dist.get_world_size()
        opt.zero_grad()
        loss.backward()
        opt.step()
        record["loss"].append(out.loss.detach())
        record["losses"].append({k: v.detach() for k, v in out.losses.items()})
        record["scores"].append(out.batch_scores["coarse"].detach())
        record["grads"].append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
    return record


def _local_fine(rank=None) -> dict:
    """FaST-VGS with fine_pairs=local: losses of step 0 (rank None: one process per rank's rows, no DDP)."""
    torch.manual_seed(0)
    model = build_model("fast_vgs", "tiny", fine_pairs="local").eval()
    batch = _batch("fast_vgs", model, 0)
    with torch.no_grad():
        if rank is not None:
            return {k: v for k, v in model(**_local(batch, rows_of(rank))).losses.items()}
        return [model(**_local(batch, rows_of(r))).losses for r in range(WORLD)], model(**batch).losses


def _all_rank(rank: int) -> dict:
    """Everything the tests need from one rank, in one spawn (starting ranks is the slow part)."""
    return dict(gather=_gather_rank(rank), mask=_mask_rank(rank), local_fine=_local_fine(rank),
                **{run: _train_steps(run, rank) for run in RUNS})


@pytest.fixture(scope="module")
def ddp(tmp_path_factory):
    return run_ranks(_all_rank, tmp_path_factory.mktemp("ddp"))


@pytest.mark.parametrize("name", list(RUNS))
def test_ddp_equals_single_process(ddp, name):
    """Two gloo ranks (3 + 2 items) give the one-process loss, scores and gradients of the 5-item batch.

    fast_vgs_chunked (ranks score their B_r x B_global fine pairs in checkpointed chunks) is held to the
    single process without chunks.
    """
    ref = _train_steps(RUNS[name][0])
    B = sum(SIZES)
    for step in range(STEPS):
        # ESPnet reports the batch-size-weighted mean of the ranks' stats
        stat = sum(SIZES[r] / B * ddp[r][name]["loss"][step] for r in range(WORLD))
        torch.testing.assert_close(stat, ref["loss"][step], rtol=1e-5, atol=1e-6)
        for term, value in ref["losses"][step].items():
            ranks = [ddp[r][name]["losses"][step][term] for r in range(WORLD)]
            torch.testing.assert_close(sum(SIZES[r] / B * ranks[r] for r in range(WORLD)), value, rtol=1e-5, atol=1e-6)
            if term != "mim":  # contrastive terms are global: the same value on every rank
                torch.testing.assert_close(ranks[0], value, rtol=1e-5, atol=1e-6)
        for r in range(WORLD):  # every rank scores the whole global batch
            torch.testing.assert_close(ddp[r][name]["scores"][step], ref["scores"][step], rtol=1e-5, atol=1e-5)
        grads = ddp[0][name]["grads"][step]
        assert grads.keys() == ref["grads"][step].keys() and len(grads) > 10
        for n, g in ref["grads"][step].items():
            torch.testing.assert_close(grads[n], g, rtol=1e-5, atol=1e-5, msg=lambda m: f"step {step} {n}: {m}")
            torch.testing.assert_close(ddp[1][name]["grads"][step][n], grads[n], rtol=0, atol=0)
    # the steps changed the model
    assert not torch.allclose(ref["loss"][0], ref["loss"][-1])


def test_fine_pairs_local_scores_each_ranks_own_block(ddp):
    """fine_pairs=local: each rank's fine loss is its own B_r^2 block's; the coarse loss stays global."""
    per_rank, whole = _local_fine()
    for r in range(WORLD):
        got = ddp[r]["local_fine"]
        torch.testing.assert_close(got["fine"], per_rank[r]["fine"], rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(got["coarse"], whole["coarse"], rtol=1e-5, atol=1e-6)
        assert abs(float(got["fine"] - whole["fine"])) > 1e-3  # not the global fine loss

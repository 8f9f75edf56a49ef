"""Coarse vs fine vs coarse-to-fine (CTF) retrieval: time per query and recall, one run.

One model, one synthetic gallery (default: the tiny preset on CPU, 1000 images
x 5 captions), every method timed in the same process:

  * coarse, torch: the full (N_audio, N_image) dot-product matrix + top-10 lists;
  * coarse, FAISS ``IndexFlatIP``: build + search, both directions;
  * fine, all pairs: the cross encoder on every (caption, image) pair;
  * CTF: top ``--k-coarse`` candidates by coarse score (torch or FAISS), re-ranked
    by the cross encoder, streamed ``--query-block`` queries at a time.

Synthetic task (cached encoder outputs are built directly; no audio is encoded).
Images come in families of ``--family-size`` that share two "gist" concepts
(no two families of a split share one) and differ in one "detail" concept. The cached tokens hold every concept: audio
tokens (``--audio-tokens`` = CLS + frames, some padded) and image tokens
(``--image-tokens`` = CLS + RoIs) carry the three concept vectors plus noise at
random positions, and their CLS position carries the concept sum. The cached
*coarse* vectors are built to know only the gist (gist + noise), so coarse
search finds the family but not the member, as a dual encoder's gist-level
vector would. The cross encoder is then trained briefly (``--train-steps``,
fine loss only, batches of several members of several families) to tell family members apart. So
coarse and fine agree on the family and the fine stage adds the detail.

Goals (performance.md): CTF recall within 0.5 points of fine, and CTF faster
than fine by at least 0.8 x the pair-count bound (fine pairs / CTF pairs).

Usage:
    python benchmarks/retrieval_speed.py                               # tiny, CPU
    python benchmarks/retrieval_speed.py --preset base --device cuda   # GPU
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time

import torch


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def make_task(D, n_gist=800, n_detail=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n_gist, D, generator=g), torch.randn(n_detail, D, generator=g)


def make_split(vocab, n_images, captions_per_image, family_size, Ta, Tv, seed, token_noise=0.3, coarse_noise=0.5,
               background=0.2):
    """Cached outputs of a synthetic split; returns (audio fields, image fields, audio_to_image)."""
    gist_vocab, detail_vocab = vocab
    D = gist_vocab.size(1)
    g = torch.Generator().manual_seed(seed)
    if n_images % family_size or family_size > detail_vocab.size(0):
        raise SystemExit(f"--n-images must be a multiple of --family-size (<= {detail_vocab.size(0)})")
    n_fam = n_images // family_size
    if 2 * n_fam > gist_vocab.size(0):
        raise SystemExit(f"at most {gist_vocab.size(0) // 2 * family_size} images with this vocabulary")
    # families of one split share no gist concept: their pairs are disjoint
    fam_gist = torch.randperm(gist_vocab.size(0), generator=g)[: 2 * n_fam].view(n_fam, 2)  # (F, 2)
    fam_detail = torch.stack([torch.randperm(detail_vocab.size(0), generator=g)[:family_size] for _ in range(n_fam)])
    C = torch.cat([gist_vocab[fam_gist].repeat_interleave(family_size, 0),
                   detail_vocab[fam_detail.reshape(-1)][:, None]], dim=1)  # (N, 3, D) concepts of each image
    gist = C[:, :2].sum(1) / math.sqrt(2)  # (N, D)
    R = Tv - 1
    img = background * torch.randn(n_images, Tv, D, generator=g)
    pos = torch.stack([torch.randperm(R, generator=g)[:3] for _ in range(n_images)]) + 1
    img[torch.arange(n_images)[:, None], pos] = C + token_noise * torch.randn(n_images, 3, D, generator=g)
    img[:, 0] = C.sum(1) / math.sqrt(3) + token_noise * torch.randn(n_images, D, generator=g)
    a2i = torch.arange(n_images).repeat_interleave(captions_per_image)
    Na = a2i.numel()
    aud = background * torch.randn(Na, Ta, D, generator=g)
    n_valid = torch.randint(min(5, Ta), Ta + 1, (Na,), generator=g)  # CLS + 4 .. Ta-1 frames
    mask = torch.arange(Ta)[None] >= n_valid[:, None]
    pos = torch.stack([torch.randperm(int(n), generator=g)[:3] + 1 for n in (n_valid - 1).tolist()])
    aud[torch.arange(Na)[:, None], pos] = C[a2i] + token_noise * torch.randn(Na, 3, D, generator=g)
    aud[:, 0] = C[a2i].sum(1) / math.sqrt(3) + token_noise * torch.randn(Na, D, generator=g)
    a_coarse = gist[a2i] + coarse_noise * torch.randn(Na, D, generator=g)
    v_coarse = gist + coarse_noise * torch.randn(n_images, D, generator=g)
    return (a_coarse, aud, mask), (v_coarse, img), a2i


def to_outputs(audio_fields, image_fields, device, index=None):
    from s3prl_vgs.models.fast_vgs import FaSTVGSAudioOutput, FaSTVGSImageOutput

    (ac, at, am), (vc, vt) = audio_fields, image_fields
    if index is not None:
        ac, at, am, vc, vt = ac[index], at[index], am[index], vc[index], vt[index]
    audio = FaSTVGSAudioOutput(coarse=ac.to(device), tokens=at.to(device), tokens_padding_mask=am.to(device))
    image = FaSTVGSImageOutput(coarse=vc.to(device), tokens=vt.to(device),
                               tokens_padding_mask=torch.zeros(vt.shape[:2], dtype=torch.bool, device=device))
    return audio, image


def train_cross_encoder(model, vocab, args, device):
    """Fine loss only; batches hold several members of several families (hard and easy negatives)."""
    from s3prl_vgs.losses import masked_margin_softmax_loss

    n_train = 4000 - 4000 % args.family_size
    audio_f, image_f, _ = make_split(vocab, n_train, 1, args.family_size, args.audio_tokens, args.image_tokens, seed=1)
    opt = torch.optim.Adam(model.cross_encoder.parameters(), lr=args.lr)
    n_fam, per = n_train // args.family_size, min(args.train_members, args.family_size)
    g = torch.Generator().manual_seed(2)
    model.train()
    t0, losses = time.perf_counter(), []
    for step in range(args.train_steps):
        fams = torch.randperm(n_fam, generator=g)[: args.train_families]
        members = torch.stack([torch.randperm(args.family_size, generator=g)[:per] for _ in fams])
        idx = (fams[:, None] * args.family_size + members).reshape(-1)
        audio, image = to_outputs(audio_f, image_f, device, idx)
        loss = masked_margin_softmax_loss(model.fine_scores(audio, image, chunk_size=None), margin=model.config.margin)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    model.eval()
    k = max(1, len(losses) // 10)
    print(f"trained the cross encoder {args.train_steps} steps (batches of {args.train_families}x{per}) in "
          f"{time.perf_counter() - t0:.1f} s; fine loss {sum(losses[:k]) / k:.3f} -> {sum(losses[-k:]) / k:.3f}")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--preset", default="tiny")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--n-images", type=int, default=1000)
    p.add_argument("--captions-per-image", type=int, default=5)
    p.add_argument("--family-size", type=int, default=10)
    p.add_argument("--audio-tokens", type=int, default=11, help="CLS + Trm2 frames (3 s of audio: 11)")
    p.add_argument("--image-tokens", type=int, default=37, help="CLS + RoIs")
    p.add_argument("--k-coarse", type=int, default=100)
    p.add_argument("--chunk-size", type=int, default=2048, help="cross-encoder pairs per chunk")
    p.add_argument("--query-block", type=int, default=1024, help="CTF queries per fine-scoring call")
    p.add_argument("--train-steps", type=int, default=400)
    p.add_argument("--train-families", type=int, default=8, help="families per training batch")
    p.add_argument("--train-members", type=int, default=4, help="members of each family per training batch")
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--json", help="also write the results here")
    args = p.parse_args(argv)

    import s3prl_vgs
    from s3prl_vgs.retrieval import CoarseIndex, rankings_from_scores, recall_at_k, recall_from_rankings

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    device = torch.device(args.device)
    model = s3prl_vgs.build_model("fast_vgs", preset=args.preset).to(device)
    D = model.config.hidden_size
    vocab = make_task(D)
    train_cross_encoder(model, vocab, args, device)
    audio_f, image_f, a2i = make_split(vocab, args.n_images, args.captions_per_image, args.family_size,
                                       args.audio_tokens, args.image_tokens, seed=3)
    audio, image = to_outputs(audio_f, image_f, device)
    Na, Ni = len(audio), len(image)
    n_queries = Na + Ni
    keep = 10
    ks = (1, 5, 10)
    rows = {}

    def run(fn):
        sync(device)
        t = time.perf_counter()
        out = fn()
        sync(device)
        return out, time.perf_counter() - t

    def coarse_torch():  # full matrix + top-10 lists in both directions
        S = model.coarse_scores(audio, image)
        rankings_from_scores(S, keep)
        return S

    def coarse_faiss():
        a2i_list = CoarseIndex(image.coarse, "flat").search(audio.coarse, keep)[1]
        i2a_list = CoarseIndex(audio.coarse, "flat").search(image.coarse, keep)[1]
        return a2i_list, i2a_list

    def fine_all_pairs():
        F = model.fine_scores(audio, image, chunk_size=args.chunk_size)
        rankings_from_scores(F, keep)
        return F

    with torch.no_grad():
        S, t = run(coarse_torch)
        rows["coarse (torch)"] = dict(pairs=0, seconds=t, recall=recall_at_k(S.cpu(), a2i, ks))
        (a2i_list, i2a_list), t = run(coarse_faiss)
        rows["coarse (FAISS flat)"] = dict(pairs=0, seconds=t, recall=recall_from_rankings(a2i_list.cpu(), i2a_list.cpu(), a2i, ks))
        print(f"scoring all {Na * Ni:,} pairs with the cross encoder ...", flush=True)
        F, t = run(fine_all_pairs)
        rows["fine (all pairs)"] = dict(pairs=Na * Ni, seconds=t, recall=recall_at_k(F.cpu(), a2i, ks))
        del F
    for index in ("exact", "flat"):
        res = model.coarse_to_fine(audio, image, k_coarse=args.k_coarse, keep=keep, index=index,
                                   chunk_size=args.chunk_size, query_block=args.query_block)
        name = f"CTF k={args.k_coarse} ({'torch' if index == 'exact' else 'FAISS flat'})"
        rows[name] = dict(pairs=res.n_pairs, seconds=res.timing["total"], recall=res.recall(a2i.to(res.a2i.device), ks),
                          coarse_seconds=res.timing["coarse"], fine_seconds=res.timing["fine"])

    dev = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {args.threads} threads"
    print(f"\npreset={args.preset} on {dev}: {Ni} images x {Na} captions, {args.audio_tokens} audio / "
          f"{args.image_tokens} image tokens; per-query time = total / ({Na} + {Ni}) queries (both directions)\n")
    head = f"| {'method':26s} | {'pairs scored':>12s} | {'total s':>8s} | {'ms/query':>9s} | " + " | ".join(
        f"{d} R@{k:<2d}" for d in ("A2I", "I2A") for k in ks) + " |"
    print(head)
    print("|" + "|".join("-" * len(c) for c in head.split("|")[1:-1]) + "|")
    for name, r in rows.items():
        rec = " | ".join(f"{r['recall'][d][k]:8.2f}" for d in ("A2I", "I2A") for k in ks)
        print(f"| {name:26s} | {r['pairs']:12,d} | {r['seconds']:8.2f} | {1000 * r['seconds'] / n_queries:9.3f} | {rec} |")
    fine = rows["fine (all pairs)"]
    summary = {}
    print()
    for name, r in rows.items():
        if not name.startswith("CTF"):
            continue
        speedup = fine["seconds"] / r["seconds"]
        bound = fine["pairs"] / max(r["pairs"], 1)
        drift = max(abs(r["recall"][d][k] - fine["recall"][d][k]) for d in ("A2I", "I2A") for k in ks)
        rates = (fine["pairs"] / fine["seconds"], r["pairs"] / r["fine_seconds"])
        summary[name] = dict(speedup=speedup, pair_bound=bound, of_bound=speedup / bound, max_recall_diff=drift,
                             fine_pairs_per_s=rates[0], ctf_pairs_per_s=rates[1])
        print(f"{name}: {speedup:.2f}x faster than fine; pair-count bound {bound:.2f}x; "
              f"{speedup / bound:.2f} of the bound (goal >= 0.8); max |recall - fine| {drift:.2f} points (goal <= 0.5); "
              f"coarse stage {r['coarse_seconds']:.2f} s, fine stage {r['fine_seconds']:.2f} s; cross-encoder "
              f"{rates[0]:,.0f} pairs/s (all pairs) vs {rates[1]:,.0f} pairs/s (CTF)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"args": vars(args), "device": dev, "rows": rows, "summary": summary}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())

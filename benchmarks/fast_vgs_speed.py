"""FaST-VGS speed at the base size, next to the official code's figures.

Measures, in one process on one machine (best of ``--repeats`` runs after a
warm-up), for the base preset with every utterance padded to 3.0 s (149 Trm1
frames, 10 Conv2 frames: 11 audio tokens, 37 image tokens):

  * training forward + backward (0.1 coarse + 1.0 fine loss, fine over all B^2 pairs), B = 4 and 8;
  * audio encoding (eval, no_grad), 8 x 3 s;
  * image encoding, 8 x 36 RoIs;
  * fine scoring (eval, no_grad, chunks of 256, 2048 pairs = 64 captions x 32
    images, gathers and per-item projections included): our fast path and our
    re-implementation of the official per-pair computation, and the largest
    difference between their scores;
  * the 1000 x 5000 coarse score matrix.

The "official" column is the reference table in
``../shared/reference/performance.md`` (unmodified official code, 2 vCPU,
torch 2.8, fp32, 2 threads): it was not re-run here, so its ratio compares
against that machine kind.

Usage:
    python benchmarks/fast_vgs_speed.py [--device cpu] [--threads 2] [--repeats 3] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time

import torch

OFFICIAL = {  # reference/performance.md
    "train_b4_s": 2.00,
    "train_b4_fwd_s": 0.93,
    "train_b8_s": 4.15,
    "train_b8_fwd_s": 1.91,
    "audio_utt_per_s": 6.43,
    "image_img_per_s": 79.8,
    "fine_pairs_per_s": 143.0,
    "coarse_ms": 21.8,
}


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def timed(fn, device, repeats, warmup=1):
    """Best of ``repeats`` after ``warmup`` calls: on a shared machine the minimum is the
    least disturbed estimate (the official figures are medians on a quiet machine)."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        sync(device)
        t = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - t)
    return min(times)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--preset", default="base")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--seconds", type=float, default=3.0, help="padded utterance length")
    p.add_argument("--skip-reference", action="store_true", help="do not time the per-pair reference fine path")
    p.add_argument("--json", help="also write the results here")
    args = p.parse_args(argv)

    import s3prl_vgs
    from s3prl_vgs.models.fast_vgs import all_pairs

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    device = torch.device(args.device)
    model = s3prl_vgs.build_model("fast_vgs", preset=args.preset).to(device)
    cfg = model.config
    L = int(16000 * args.seconds)
    R, F = cfg.img_feat_len, cfg.visual_feat_dim

    def inputs(B):
        wavs = torch.randn(B, L, device=device)
        lengths = torch.full((B,), L, device=device)
        lengths[1:] = (L * torch.linspace(1.0, 0.6, B)[1:]).long()  # some padding, as in a real batch
        feats = torch.randn(B, R, F, device=device).relu()
        boxes = torch.rand(B, R, 4, device=device).sort(-1).values
        return wavs, lengths, feats, boxes

    rows = []  # (name, ours, official, unit, higher_is_better)
    results = {}

    # ---------------------------------------------------------------- training
    for B in (4, 8):
        wavs, lengths, feats, boxes = inputs(B)
        model.train()
        fwd_times = []

        def step():
            model.zero_grad(set_to_none=True)
            sync(device)
            t = time.perf_counter()
            out = model(wavs, lengths, feats, boxes, image_ids=list(range(B)))
            sync(device)
            fwd_times.append(time.perf_counter() - t)
            out.loss.backward()

        total = timed(step, device, args.repeats)
        fwd = min(fwd_times[1:])
        results[f"train_b{B}_s"], results[f"train_b{B}_fwd_s"] = total, fwd
        rows.append((f"train fwd+bwd B={B} (s/step)", total, OFFICIAL[f"train_b{B}_s"], "s", False))
        rows.append((f"  of which forward B={B} (s)", fwd, OFFICIAL[f"train_b{B}_fwd_s"], "s", False))
    model.zero_grad(set_to_none=True)
    model.eval()

    # ---------------------------------------------------------------- encoders
    wavs, lengths, feats, boxes = inputs(8)
    with torch.no_grad():
        t_audio = timed(lambda: model.encode_audio(wavs, torch.full((8,), L, device=device)), device, args.repeats)
        t_image = timed(lambda: model.encode_image(feats, boxes), device, args.repeats)
    results["audio_utt_per_s"], results["image_img_per_s"] = 8 / t_audio, 8 / t_image
    rows.append(("audio encoding 8 x 3 s (utt/s)", 8 / t_audio, OFFICIAL["audio_utt_per_s"], "/s", True))
    rows.append(("image encoding 8 x 36 RoIs (img/s)", 8 / t_image, OFFICIAL["image_img_per_s"], "/s", True))

    # ---------------------------------------------------------------- fine scoring
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        wavs = torch.randn(64, L, generator=g).to(device)
        lens = (L * torch.linspace(1.0, 0.5, 64)).long().to(device)
        parts = [model.encode_audio(wavs[s:s + 8], lens[s:s + 8]) for s in range(0, 64, 8)]  # 8 at a time: bounded memory
        audio = type(parts[0])(coarse=torch.cat([o.coarse for o in parts]), tokens=torch.cat([o.tokens for o in parts]),
                               mask=torch.cat([o.mask for o in parts]))
        image = model.encode_image(torch.randn(32, R, F, generator=g).relu().to(device),
                                   torch.rand(32, R, 4, generator=g).sort(-1).values.to(device))
        pairs = all_pairs(64, 32, device)  # 2048 pairs
        def fast_path():
            return model.fine_scores(audio, image, pairs, chunk_size=256)

        def reference():  # the official computation: every pair through every position of every layer
            out = []
            for s in range(0, pairs.size(0), 256):
                a, v = pairs[s:s + 256, 0], pairs[s:s + 256, 1]
                out.append(model.cross_encoder(audio.tokens[a], audio.mask[a], image.tokens[v], image.mask[v]))
            return torch.cat(out)

        fast = fast_path()
        if args.skip_reference:
            t_fast = timed(fast_path, device, args.repeats)
        else:  # interleaved, so that both see the same machine load
            t_fast = t_ref = float("inf")
            for _ in range(args.repeats):
                t_fast = min(t_fast, timed(fast_path, device, 1, warmup=0))
                t_ref = min(t_ref, timed(reference, device, 1, warmup=0))
        results["fine_pairs_per_s"] = pairs.size(0) / t_fast
        rows.append(("fine scoring, 2048 pairs, chunks of 256 (pairs/s)", pairs.size(0) / t_fast, OFFICIAL["fine_pairs_per_s"], "/s", True))
        if not args.skip_reference:
            diff = (reference() - fast).abs().max().item()
            results["fine_reference_pairs_per_s"] = pairs.size(0) / t_ref
            results["fine_max_abs_diff"] = diff
            results["fine_score_abs_max"] = fast.abs().max().item()

        # ------------------------------------------------------------ coarse
        a = torch.randn(5000, cfg.hidden_size, device=device)
        v = torch.randn(1000, cfg.hidden_size, device=device)
        t_coarse = timed(lambda: model.coarse_scores(v, a), device, max(args.repeats, 5))
    results["coarse_ms"] = 1000 * t_coarse
    rows.append(("coarse score matrix 1000 x 5000 (ms)", 1000 * t_coarse, OFFICIAL["coarse_ms"], "ms", False))
    results["peak_rss_gib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20

    # ---------------------------------------------------------------- report
    dev = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {args.threads} threads"
    print(f"FaST-VGS preset={args.preset} on {dev}; {args.seconds:.1f} s audio; best of {args.repeats} after warm-up")
    print("official = reference table of performance.md (unmodified official code, 2 vCPU, fp32, 2 threads), not re-run here")
    print()
    print(f"| {'measurement':52s} | {'ours':>9s} | {'official':>9s} | {'speed-up':>8s} |")
    print(f"|{'-' * 54}|{'-' * 11}|{'-' * 11}|{'-' * 10}|")
    for name, ours, off, unit, higher in rows:
        ratio = ours / off if higher else off / ours
        print(f"| {name:52s} | {ours:9.3f} | {off:9.3f} | {ratio:7.2f}x |")
        results[f"speedup::{name}"] = ratio
    if "fine_reference_pairs_per_s" in results:
        r = results
        print()
        print(f"fine scoring, same run: fast path {r['fine_pairs_per_s']:.1f} pairs/s vs per-pair reference "
              f"(official algorithm) {r['fine_reference_pairs_per_s']:.1f} pairs/s = "
              f"{r['fine_pairs_per_s'] / r['fine_reference_pairs_per_s']:.2f}x; max |diff| {r['fine_max_abs_diff']:.2e} "
              f"(scores up to {r['fine_score_abs_max']:.2e})")
    print(f"process peak RSS {results['peak_rss_gib']:.2f} GiB")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"args": vars(args), "device": dev, "official": OFFICIAL, "results": results}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())

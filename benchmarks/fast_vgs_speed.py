"""FaST-VGS speed at the base size: our paths against in-run references, next to the official figures.

These 2-vCPU VMs drift (the same fp32 GEMM ran at 100 and at 150 GFLOP/s
minutes apart) and are shared, so the only robust ratio is one against a
baseline timed in the same run. Every row therefore alternates single timed
calls of our path and of an in-run reference that computes what the official
code computes, and reports medians and the median of the per-round ratios:

  * training forward + backward (0.1 coarse + 1.0 fine loss over all B^2 pairs),
    B = 4 and 8. Reference: the official computation with stock modules
    (official padding semantics, the HF/fairseq-style trunk run layer by layer on
    the padded batch, weight-norm recomputed per call, Conv2 without masks, the
    fine loss over ``repeat``/``repeat_interleave`` pairs through every position
    of every cross layer);
  * audio encoding 8 x 3 s (eval, no_grad). Reference: the same stock-module
    audio path (what ``official_compat`` computes);
  * image encoding 8 x 36 RoIs. Reference: explicit softmax(QK^T)V attention, as
    LXMERT's BertAttention;
  * fine scoring, 2048 pairs (64 captions x 32 images) in chunks of 256, gathers
    and per-item projections included. Reference: the per-pair computation
    (measured at 1.03x the official code's speed);
  * the 1000 x 5000 coarse score matrix.

Beside them: the official figures of the matching CPU table of
``../shared/reference/performance.md`` (AMD EPYC or Intel Xeon, read from
/proc/cpuinfo), scaled by this run's machine-speed probe (fp32 GEMM GFLOP/s on
AMD; the coarse-matrix time on Intel, the only probe that table has). Those
ratios are estimates, not measurements. Peak memory is the process's peak RSS
while running our path only (``/proc/self/clear_refs``), weights included.

Opt-in rows: ``--bf16`` (autocast bf16 with losses and softmaxes in fp32:
speed-up over our fp32 path and the max score / loss difference), ``--mim``
(speech-guided MIM base: training step and encodes, absolute), ``--scale N``
(FAISS IVF coarse search over N x 768 items: ms/query batched and recall@10
against exact search; N = 1000000 is the goal's size, ~3 GiB and minutes).

Usage:
    python benchmarks/fast_vgs_speed.py [--repeats 5] [--bf16] [--mim] [--scale 1000000] [--json OUT]
    python benchmarks/fast_vgs_speed.py --quick     # smaller batches/pairs, 3 rounds: a smoke run
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import re
import statistics
import sys
import time
from types import SimpleNamespace

import torch

# performance.md. "probe": that run's machine-speed probe; "scale_by": which probe scales the figures.
OFFICIAL_TABLES = {
    "amd_epyc": {
        "source": "performance.md, AMD EPYC (Zen 4) 2 vCPU, official code side by side (2026-12-02), medians",
        "probe": {"gemm_gflops": 101.0, "linear_gflops": 118.0, "coarse_ms": 57.7},
        "scale_by": "gemm_gflops",
        "train_b4_s": 4.229, "train_b4_fwd_s": 1.874, "train_b8_s": 8.624, "train_b8_fwd_s": 3.574,
        "audio_s": 1.998, "image_s": 0.218, "fine_s": 28.86, "peak_rss_gib": 3.9,
    },
    "intel_xeon": {
        "source": "performance.md, Intel Xeon 2 vCPU, official code (2026-11-21), medians",
        "probe": {"coarse_ms": 21.8},
        "scale_by": "coarse_ms",
        "train_b4_s": 2.00, "train_b4_fwd_s": 0.93, "train_b8_s": 4.15, "train_b8_fwd_s": 1.91,
        "audio_s": 8 / 6.43, "image_s": 8 / 79.8, "fine_s": 2048 / 143.0, "peak_rss_gib": 3.54,
    },
}
GOALS = {"train": 1.3, "audio": 1.2, "image": 1.2, "fine": 2.0}  # ratio to the official, performance.md


# ----------------------------------------------------------------------------- machine


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            m = re.search(r"^model name\s*:\s*(.+)$", f.read(), re.M)
        return m.group(1).strip() if m else "unknown CPU"
    except OSError:
        return "unknown CPU"


def machine_kind(model_name: str) -> str:
    if "AMD" in model_name and "EPYC" in model_name:
        return "amd_epyc"
    if "Intel" in model_name or "Xeon" in model_name:
        return "intel_xeon"
    return "unknown"


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def once(fn, device) -> float:
    sync(device)
    t = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - t


def probe(device, repeats: int = 5) -> dict:
    """fp32 GEMM 2048^3 GFLOP/s, F.linear (296, 768) -> 3072 GFLOP/s, 1000 x 5000 x 768 coarse ms (medians)."""
    g = torch.Generator().manual_seed(1)
    a = torch.randn(2048, 2048, generator=g).to(device)
    x = torch.randn(296, 768, generator=g).to(device)
    w = torch.randn(3072, 768, generator=g).to(device)
    q = torch.randn(1000, 768, generator=g).to(device)
    d = torch.randn(5000, 768, generator=g).to(device)
    out = {}
    for name, fn, flops in (
        ("gemm_gflops", lambda: a @ a, 2 * 2048 ** 3),
        ("linear_gflops", lambda: torch.nn.functional.linear(x, w), 2 * 296 * 768 * 3072),
        ("coarse_ms", lambda: q @ d.t(), None),
    ):
        fn()
        t = statistics.median(once(fn, device) for _ in range(repeats))
        out[name] = flops / t / 1e9 if flops else 1000 * t
    return out


def official_scale(table: dict, measured: dict) -> float:
    """Factor that turns the table's official time into this machine's expected official time."""
    key = table["scale_by"]
    ref, now = table["probe"][key], measured[key]
    return ref / now if key.endswith("gflops") else now / ref


class PeakRSS:
    """Peak RSS of a code block (GiB): resets the kernel's high-water mark first."""

    @staticmethod
    def reset() -> bool:
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")
            return True
        except OSError:
            return False

    @staticmethod
    def read() -> float:
        try:
            with open("/proc/self/status") as f:
                return int(re.search(r"VmHWM:\s+(\d+)", f.read()).group(1)) / 2 ** 20
        except (OSError, AttributeError):
            import resource

            return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20


def alternate(fns: dict, device, repeats: int, warmup: int = 1) -> dict:
    """Single timed calls of each fn, alternating (order flipped every round): name -> list of seconds."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    times = {k: [] for k in fns}
    for r in range(repeats):
        for k in (list(fns) if r % 2 == 0 else list(reversed(list(fns)))):
            times[k].append(once(fns[k], device))
    return times


def peak_of(fn) -> float:
    gc.collect()
    PeakRSS.reset()
    fn()
    return PeakRSS.read()


# ----------------------------------------------------------------------------- references


def reference_audio(model, wavs, lengths):
    """What the official code computes for audio, with stock modules and no fast path.

    Official padding semantics (GroupNorm over the padded length, sample-chunk
    frame rule, padded frames into pos_conv and Conv2, round(T/T2) ratio), the
    transformers layers' own forward on the padded batch, weight-norm
    recomputed by the parametrisation, Conv2 without masks.
    """
    from s3prl_vgs.data.audio import normalize_waveform
    from s3prl_vgs.models.fast_vgs import conv2_frame_lengths
    from s3prl_vgs.modules.speech_trunk import lengths_to_padding_mask, official_frame_lengths, padding_to_additive
    from s3prl_vgs.modules.transformer import additive_mask

    tr, c = model.trunk, model.config
    B, L = wavs.shape
    w = normalize_waveform(wavs, lengths)
    with torch.no_grad():  # frozen conv, as --feature_grad_mult 0
        feats = tr.feature_extractor(w).transpose(1, 2)
    T = feats.size(1)
    n = official_frame_lengths(lengths, L, T)
    pad = lengths_to_padding_mask(n, T)
    x = tr.feature_projection(feats)[0]
    x = torch.cat([tr.cls_token.expand(B, -1, -1), x], dim=1)
    x = x + tr.pos_conv_embed(x)
    x = tr.dropout(tr.layer_norm(x))
    mask = padding_to_additive(torch.cat([pad.new_zeros(B, 1), pad], 1), x.dtype)
    for layer in tr.layers[: c.layer_use + 1]:
        x = layer(x, attention_mask=mask)[0]
    x2 = model.conv2(x[:, 1:])
    n2 = conv2_frame_lengths(n, T, x2.size(1), model.conv2.num_stages, official_compat=True)
    pad2 = lengths_to_padding_mask(n2, x2.size(1))
    seq = torch.cat([model.audio_cls_token_proj_pre(x[:, 0])[:, None], x2], dim=1)
    mask2 = torch.cat([pad2.new_zeros(B, 1), pad2], dim=1)
    out = model.trm2(seq, additive_mask(mask2, seq.dtype))
    return SimpleNamespace(coarse=model.trm2_proj(out[:, 0]), tokens=out, tokens_padding_mask=mask2)


def reference_image(model, feats, boxes):
    """Image encoding with explicit softmax(QK^T)V attention (LXMERT's BertAttention)."""
    x = model.visn_fc(feats, boxes)
    x = torch.cat([model.visual_cls_token.expand(x.size(0), -1, -1), x], dim=1)
    for layer in model.trm:
        att = layer.attention
        a = att.output(att.self(x, x, None, need_weights=True)[0], x)
        x = layer.output(layer.intermediate(a), a)
    return SimpleNamespace(coarse=model.visual_cls_token_proj_coarse(x[:, 0]), tokens=x,
                           tokens_padding_mask=torch.zeros(x.shape[:2], dtype=torch.bool, device=x.device))


def reference_fine_all_pairs(model, audio, image):
    """Official fine loss input: every pair through every position of every cross layer, (B, B)."""
    B = audio.tokens.size(0)
    a_tok, a_mask = audio.tokens.repeat_interleave(B, 0), audio.tokens_padding_mask.repeat_interleave(B, 0)
    v_tok = image.tokens.repeat(B, 1, 1)
    return model.cross_encoder(a_tok, a_mask, v_tok, None).view(B, B)


def reference_loss(model, audio, image, same_image):
    from s3prl_vgs.losses import masked_margin_softmax_loss

    c = model.config
    coarse = audio.coarse @ image.coarse.t()
    fine = reference_fine_all_pairs(model, audio, image)
    return (c.coarse_matching_weight * masked_margin_softmax_loss(coarse, same_image, c.margin)
            + c.fine_matching_weight * masked_margin_softmax_loss(fine, same_image, c.margin))


def bf16_loss(model, wavs, lengths, feats, boxes, same_image):
    """Opt-in bf16: the encoders and the cross encoder under autocast, the losses in fp32."""
    from s3prl_vgs.losses import masked_margin_softmax_loss

    c = model.config
    dev = wavs.device.type
    with torch.autocast(dev, dtype=torch.bfloat16):
        audio = model.encode_audio(wavs, lengths)
        image = model.encode_image(feats, boxes)
        coarse = model.coarse_scores(audio, image)
        fine = model.fine_scores(audio, image, chunk_size=None)
    return (c.coarse_matching_weight * masked_margin_softmax_loss(coarse.float(), same_image, c.margin)
            + c.fine_matching_weight * masked_margin_softmax_loss(fine.float(), same_image, c.margin)), coarse, fine


# ----------------------------------------------------------------------------- retrieval at scale


# One implementation of the FAISS row: benchmarks/retrieval_scale.py (through the package's CoarseIndex,
# with exact torch and IndexFlatIP baselines timed in the same run).


# ----------------------------------------------------------------------------- main


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--preset", default="base")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=5, help="alternating rounds per row")
    p.add_argument("--seconds", type=float, default=3.0, help="padded utterance length")
    p.add_argument("--batches", type=int, nargs="+", default=[4, 8], help="training batch sizes")
    p.add_argument("--quick", action="store_true", help="B = 4 only, 512 fine pairs, 3 rounds: a smoke run")
    p.add_argument("--skip-train", action="store_true")
    p.add_argument("--bf16", action="store_true", help="also time the opt-in bf16 autocast path")
    p.add_argument("--mim", action="store_true", help="also time the speech-guided MIM (base)")
    p.add_argument("--mim-preset", default="base")
    p.add_argument("--scale", type=int, default=0, help="FAISS search over this many 768-d items (0: skip)")
    p.add_argument("--scale-nlist", type=int, default=0, help="IVF lists (0: 4 sqrt(N))")
    p.add_argument("--json", help="also write the results here")
    args = p.parse_args(argv)
    if args.quick:
        args.batches, args.repeats = [4], min(args.repeats, 3)
    n_audio_fine, n_image_fine = (32, 16) if args.quick else (64, 32)

    import s3prl_vgs
    from s3prl_vgs.models.fast_vgs import all_pairs
    from s3prl_vgs.losses import same_image_mask

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    device = torch.device(args.device)
    cpu = cpu_model()
    kind = machine_kind(cpu) if device.type == "cpu" else "gpu"
    table = OFFICIAL_TABLES.get(kind)
    probe_start = probe(device)
    model = s3prl_vgs.build_model("fast_vgs", preset=args.preset).to(device)
    cfg = model.config
    L = int(16000 * args.seconds)
    R, F = cfg.img_feat_len, cfg.visual_feat_dim
    med = statistics.median

    def inputs(B, seed=0):
        g = torch.Generator().manual_seed(seed)
        wavs = torch.randn(B, L, generator=g)
        lengths = torch.full((B,), L)
        lengths[1:] = (L * torch.linspace(1.0, 0.6, B)[1:]).long()  # some padding, as in a real batch
        feats = torch.randn(B, R, F, generator=g).relu()
        boxes = torch.rand(B, R, 4, generator=g).sort(-1).values
        return wavs.to(device), lengths.to(device), feats.to(device), boxes.to(device)

    rows = []  # dict(name, key, ours, ref, ratio, ratio_range, official, goal, unit)
    results = {"rows": rows}
    peaks = {}

    def add_row(name, key, t_ours, t_ref, official_key=None, goal=None, count=None):
        ratios = [r / o for o, r in zip(t_ours, t_ref)] if t_ref else []
        row = {"name": name, "key": key, "ours_s": med(t_ours), "ref_s": med(t_ref) if t_ref else None,
               "ratio_ref": med(ratios) if ratios else None,
               "ratio_ref_range": [min(ratios), max(ratios)] if ratios else None, "count": count}
        if table and official_key:
            row["official_table_s"] = table[official_key]
            row["official_est_s"] = table[official_key] * scale
            row["ratio_official_est"] = row["official_est_s"] / row["ours_s"]
            row["goal"] = goal
        rows.append(row)
        print(f"[{time.strftime('%H:%M:%S')}] {name}: ours {row['ours_s']:.3f} s"
              + (f", in-run ref {row['ref_s']:.3f} s ({row['ratio_ref']:.2f}x)" if t_ref else ""), file=sys.stderr, flush=True)
        return row

    scale = official_scale(table, probe_start) if table else None

    # ---------------------------------------------------------------- training
    if not args.skip_train:
        for B in args.batches:
            wavs, lengths, feats, boxes = inputs(B)
            same = same_image_mask(list(range(B))).to(device)
            model.train()
            fwd = {"ours": [], "ref": []}

            def ours_step():
                model.zero_grad(set_to_none=True)
                t = time.perf_counter()
                out = model(wavs, lengths, feats, boxes, same_image=same)
                fwd["ours"].append(time.perf_counter() - t)
                out.loss.backward()

            def ref_step():
                model.zero_grad(set_to_none=True)
                t = time.perf_counter()
                loss = reference_loss(model, reference_audio(model, wavs, lengths), reference_image(model, feats, boxes), same)
                fwd["ref"].append(time.perf_counter() - t)
                loss.backward()

            peaks[f"train_b{B}"] = peak_of(ours_step)
            t = alternate({"ours": ours_step, "ref": ref_step}, device, args.repeats, warmup=0)
            f_ours, f_ref = fwd["ours"][-args.repeats:], fwd["ref"][-args.repeats:]
            add_row(f"train fwd+bwd B={B} (s/step)", f"train_b{B}", t["ours"], t["ref"], f"train_b{B}_s", GOALS["train"])
            add_row(f"  of which forward B={B} (s)", f"train_b{B}_fwd", f_ours, f_ref, f"train_b{B}_fwd_s")
            model.zero_grad(set_to_none=True)
            if args.bf16:
                def bf16_step():
                    model.zero_grad(set_to_none=True)
                    bf16_loss(model, wavs, lengths, feats, boxes, same)[0].backward()

                t16 = alternate({"fp32": ours_step, "bf16": bf16_step}, device, args.repeats)
                add_row(f"bf16 train fwd+bwd B={B} (s/step; ref = our fp32)", f"bf16_train_b{B}", t16["bf16"], t16["fp32"])
                model.zero_grad(set_to_none=True)
        model.zero_grad(set_to_none=True)
    model.eval()

    # ---------------------------------------------------------------- encoders
    wavs, _, feats, boxes = inputs(8, seed=1)
    full = torch.full((8,), L, device=device)
    with torch.no_grad():
        peaks["audio"] = peak_of(lambda: model.encode_audio(wavs, full))
        t = alternate({"ours": lambda: model.encode_audio(wavs, full), "ref": lambda: reference_audio(model, wavs, full)},
                      device, args.repeats)
        add_row("audio encoding 8 x 3 s (s)", "audio", t["ours"], t["ref"], "audio_s", GOALS["audio"], count=8)
        t = alternate({"ours": lambda: model.encode_image(feats, boxes), "ref": lambda: reference_image(model, feats, boxes)},
                      device, max(args.repeats, 5))
        add_row("image encoding 8 x 36 RoIs (s)", "image", t["ours"], t["ref"], "image_s", GOALS["image"], count=8)
        if args.bf16:
            def a16():
                with torch.autocast(device.type, dtype=torch.bfloat16):
                    return model.encode_audio(wavs, full)

            def i16():
                with torch.autocast(device.type, dtype=torch.bfloat16):
                    return model.encode_image(feats, boxes)

            t = alternate({"fp32": lambda: model.encode_audio(wavs, full), "bf16": a16}, device, args.repeats)
            add_row("bf16 audio encoding 8 x 3 s (s; ref = our fp32)", "bf16_audio", t["bf16"], t["fp32"])
            t = alternate({"fp32": lambda: model.encode_image(feats, boxes), "bf16": i16}, device, max(args.repeats, 5))
            add_row("bf16 image encoding (s; ref = our fp32)", "bf16_image", t["bf16"], t["fp32"])

        # ------------------------------------------------------------ fine scoring
        g = torch.Generator().manual_seed(0)
        Na, Ni = n_audio_fine, n_image_fine
        wavs_f = torch.randn(Na, L, generator=g).to(device)
        lens_f = (L * torch.linspace(1.0, 0.5, Na)).long().to(device)
        parts = [model.encode_audio(wavs_f[s:s + 8], lens_f[s:s + 8]) for s in range(0, Na, 8)]  # bounded memory
        audio = type(parts[0])(coarse=torch.cat([o.coarse for o in parts]), tokens=torch.cat([o.tokens for o in parts]),
                               tokens_padding_mask=torch.cat([o.tokens_padding_mask for o in parts]))
        del parts
        image = model.encode_image(torch.randn(Ni, R, F, generator=g).relu().to(device),
                                   torch.rand(Ni, R, 4, generator=g).sort(-1).values.to(device))
        pairs = all_pairs(Na, Ni, device)
        P = pairs.size(0)

        def fast_path():
            return model.fine_scores(audio, image, pairs, chunk_size=256)

        def per_pair():
            out = []
            for s in range(0, P, 256):
                a, v = pairs[s:s + 256, 0], pairs[s:s + 256, 1]
                out.append(model.cross_encoder(audio.tokens[a], audio.tokens_padding_mask[a], image.tokens[v], image.tokens_padding_mask[v]))
            return torch.cat(out)

        peaks["fine"] = peak_of(fast_path)
        t = alternate({"ours": fast_path, "ref": per_pair}, device, args.repeats)
        add_row(f"fine scoring {P} pairs, chunks of 256 (s)", "fine", t["ours"], t["ref"],
                      "fine_s" if P == 2048 else None, GOALS["fine"], count=P)
        fast = fast_path()
        results["fine_max_abs_diff"] = (per_pair() - fast).abs().max().item()
        results["fine_score_abs_max"] = fast.abs().max().item()
        if args.bf16:
            def fine16():
                with torch.autocast(device.type, dtype=torch.bfloat16):
                    return model.fine_scores(audio, image, pairs, chunk_size=256)

            t = alternate({"fp32": fast_path, "bf16": fine16}, device, args.repeats)
            add_row(f"bf16 fine scoring {P} pairs (s; ref = our fp32)", "bf16_fine", t["bf16"], t["fp32"])
            results["bf16_fine_max_abs_diff"] = (fine16().float() - fast).abs().max().item()

        # ------------------------------------------------------------ coarse
        a = torch.randn(5000, cfg.hidden_size, device=device)
        v = torch.randn(1000, cfg.hidden_size, device=device)
        t = alternate({"ours": lambda: model.coarse_scores(v, a)}, device, max(args.repeats, 5))
        add_row("coarse score matrix 1000 x 5000 (s)", "coarse", t["ours"], None)

        # ------------------------------------------------------------ agreement of the references
        wv, ln, ft, bx = inputs(4, seed=2)
        same = same_image_mask(list(range(4))).to(device)
        ra, ri = reference_audio(model, wv, ln), reference_image(model, ft, bx)
        oi = model.encode_image(ft, bx)
        results["check_image_ref_max_abs_diff"] = (ri.tokens - oi.tokens).abs().max().item()
        fl_ref = reference_fine_all_pairs(model, ra, ri)
        fl_ours = model.fine_scores(ra, ri, chunk_size=None)
        results["check_fine_loss_scores_max_abs_diff"] = (fl_ref - fl_ours).abs().max().item()
        results["check_loss_ref"] = reference_loss(model, ra, ri, same).item()
        results["check_loss_ours"] = model.compute_loss(ra, ri, same_image=same).loss.item()
        compat = s3prl_vgs.build_model("fast_vgs", preset=args.preset, speech={"official_compat": True}).to(device).eval()
        compat.load_state_dict(model.state_dict())
        results["check_official_compat_vs_ref_coarse_max_abs_diff"] = (compat.encode_audio(wv, ln).coarse - ra.coarse).abs().max().item()
        compat = None
        if args.bf16:
            ours_loss = model.compute_loss(model.encode_audio(wv, ln), oi, same_image=same)
            loss16, c16, f16 = bf16_loss(model, wv, ln, ft, bx, same)
            results["bf16_loss_abs_diff"] = abs(loss16.item() - ours_loss.loss.item())
            results["bf16_loss_fp32"] = ours_loss.loss.item()
            results["bf16_coarse_max_abs_diff"] = (c16.float() - ours_loss.batch_scores["coarse"]).abs().max().item()
            results["bf16_fine_b4_max_abs_diff"] = (f16.float() - ours_loss.batch_scores["fine"]).abs().max().item()
        audio = image = None
    model = None  # free the weights before the MIM and FAISS rows
    gc.collect()

    # ---------------------------------------------------------------- MIM base (no official code: absolute)
    if args.mim:
        mim = s3prl_vgs.build_model("vg_mim", preset=args.mim_preset).to(device)
        size = mim.config.image.image_size
        g = torch.Generator().manual_seed(3)
        B = 4
        mw = torch.randn(B, L, generator=g).to(device)
        ml = torch.full((B,), L, device=device)
        ml[1:] = (L * torch.linspace(1.0, 0.6, B)[1:]).long()
        imgs = torch.randn(B, 3, size, size, generator=g).to(device)
        mim.train()

        def mim_step():
            mim.zero_grad(set_to_none=True)
            mim(mw, ml, imgs, image_ids=list(range(B)), mim_weight=mim.config.mim_weight).loss.backward()

        peaks["mim_train_b4"] = peak_of(mim_step)
        t = alternate({"ours": mim_step}, device, max(3, args.repeats // 2), warmup=0)
        add_row(f"MIM {args.mim_preset} train fwd+bwd B={B} (s/step)", "mim_train_b4", t["ours"], None)
        mim.zero_grad(set_to_none=True)
        mim.eval()
        w8, i8 = torch.randn(8, L, generator=g).to(device), torch.randn(8, 3, size, size, generator=g).to(device)
        with torch.no_grad():
            t = alternate({"ours": lambda: mim.encode_audio(w8)}, device, args.repeats)
            add_row(f"MIM {args.mim_preset} audio encoding 8 x 3 s (s)", "mim_audio", t["ours"], None, count=8)
            t = alternate({"ours": lambda: mim.encode_image(i8)}, device, args.repeats)
            add_row(f"MIM {args.mim_preset} image encoding 8 x {size}^2 (s)", "mim_image", t["ours"], None, count=8)
        mim = None
        gc.collect()

    # ---------------------------------------------------------------- retrieval at scale
    if args.scale:
        nlist = args.scale_nlist or int(4 * math.sqrt(args.scale))
        import faiss

        from retrieval_scale import coarse_args, coarse_rows

        faiss.omp_set_num_threads(args.threads)
        scale_args = coarse_args(n=args.scale, dim=768, queries=1000, nlist=nlist, nprobe=[4, 8, 16, 32])
        results["faiss"] = {"args": vars(scale_args), "rows": coarse_rows(scale_args)}

    probe_end = probe(device)
    results.update(cpu=cpu, machine_kind=kind, threads=args.threads, probe_start=probe_start, probe_end=probe_end,
                   official_table=table["source"] if table else None, official_scale=scale, peak_rss_gib=peaks,
                   load_average=os.getloadavg())
    print_report(args, results, table)
    if args.json:
        from s3prl_vgs.io import atomic_write_text

        atomic_write_text(args.json, json.dumps({"args": vars(args), "results": results}, indent=1))
    return 0


def print_report(args, r, table):
    rows = r["rows"]
    dev = args.device if args.device != "cpu" else f"{r['cpu']}, {args.threads} threads"
    ps, pe = r["probe_start"], r["probe_end"]
    print(f"FaST-VGS preset={args.preset} on {dev}; {args.seconds:.1f} s audio; {args.repeats} alternating rounds, medians")
    print(f"machine-speed probe (start / end): fp32 GEMM 2048^3 {ps['gemm_gflops']:.0f} / {pe['gemm_gflops']:.0f} GFLOP/s, "
          f"linear (296,768)->3072 {ps['linear_gflops']:.0f} / {pe['linear_gflops']:.0f} GFLOP/s, "
          f"coarse 1000x5000x768 {ps['coarse_ms']:.1f} / {pe['coarse_ms']:.1f} ms; load average {r['load_average'][0]:.1f}")
    if table:
        key = table["scale_by"]
        drift = abs(pe[key] / ps[key] - 1)
        print(f"official column: {table['source']}; ESTIMATE = table time x probe factor {r['official_scale']:.2f} "
              f"({key}: table {table['probe'][key]} vs this run {ps[key]:.1f}); not measured here"
              + (f"; the probe drifted {100 * drift:.0f}% during the run" if drift > 0.1 else ""))
        if ps[key] < 0.6 * table["probe"][key] if key.endswith("gflops") else ps[key] > table["probe"][key] / 0.6:
            print("WARNING: the probe is far below the table's: the machine is contended (shared cores), so the "
                  "estimates scale by contention too; trust the in-run ref/ours ratios")
    else:
        print("no official table for this machine kind: in-run references only")
    print()
    print(f"| {'measurement':50s} | {'ours':>8s} | {'in-run ref':>10s} | {'ref/ours':>16s} | {'official est.':>13s} | {'vs official (est.)':>18s} |")
    print(f"|{'-' * 52}|{'-' * 10}|{'-' * 12}|{'-' * 18}|{'-' * 15}|{'-' * 20}|")
    for row in rows:
        ref = f"{row['ref_s']:.3f}" if row["ref_s"] is not None else "-"
        rat = (f"{row['ratio_ref']:.2f}x [{row['ratio_ref_range'][0]:.2f}-{row['ratio_ref_range'][1]:.2f}]"
               if row["ratio_ref"] is not None else "-")
        off = f"{row['official_est_s']:.3f}" if "official_est_s" in row else "-"
        vs = "-"
        if "ratio_official_est" in row:
            goal = row.get("goal")
            vs = f"~{row['ratio_official_est']:.2f}x" + (f" (goal {goal}x)" if goal else "")
        print(f"| {row['name']:50s} | {row['ours_s']:8.3f} | {ref:>10s} | {rat:>16s} | {off:>13s} | {vs:>18s} |")
    print()
    print("in-run references (ref/ours > 1: ours faster): training and audio = the official computation with stock "
          "modules (official padding semantics); image = explicit attention; fine = per-pair computation; "
          "bf16 rows: ref = our fp32 path")
    print(f"fine scores, fast path vs per-pair: max |diff| {r['fine_max_abs_diff']:.2e} (scores up to {r['fine_score_abs_max']:.2e})")
    print(f"checks: fine-loss scores ours vs per-pair {r['check_fine_loss_scores_max_abs_diff']:.2e}; loss ours "
          f"{r['check_loss_ours']:.6f} vs reference {r['check_loss_ref']:.6f}; official_compat path vs reference audio "
          f"{r['check_official_compat_vs_ref_coarse_max_abs_diff']:.2e}; image vs explicit attention {r['check_image_ref_max_abs_diff']:.2e}")
    if "bf16_loss_abs_diff" in r:
        print(f"bf16 (opt-in): |loss diff| {r['bf16_loss_abs_diff']:.3e} (fp32 loss {r['bf16_loss_fp32']:.4f}); max |score diff| "
              f"coarse {r['bf16_coarse_max_abs_diff']:.3e}, fine {r['bf16_fine_b4_max_abs_diff']:.3e} (B=4), "
              f"fine scoring {r.get('bf16_fine_max_abs_diff', float('nan')):.3e}")
    peaks = ", ".join(f"{k} {v:.2f}" for k, v in r["peak_rss_gib"].items())
    official_peak = f"; official {table['peak_rss_gib']} GiB" if table else ""
    print(f"peak RSS of our path (GiB, weights included): {peaks}{official_peak}")
    if "faiss" in r:
        from retrieval_scale import coarse_args, print_coarse

        print_coarse(r["faiss"]["rows"], coarse_args(**r["faiss"]["args"]))


if __name__ == "__main__":
    sys.exit(main())

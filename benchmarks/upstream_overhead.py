"""Feature extraction through our S3PRL expert vs the bare transformers model (goal: <= 5% overhead).

Both sides have the same weights and the same layers: the bare side is a
``transformers`` ``Wav2Vec2Model`` / ``HubertModel`` built from the trunk's own
``hf_config()`` (``num_hidden_layers`` = the layers the trunk keeps) with the
trunk's conv, projection, positional conv and layer weights copied in. Both
get the same B waveforms (equal length, so no padding on either side), in eval
mode without grad, one thread count for both. Our side is the full S3PRL path:
``hub.<model>_local(ckpt=DIR)`` on a speech-only export, called with a list of
wavs, returning every hidden layer (plus what the family computes on top in
``encode_audio``: the CLS token everywhere; FaST-VGS's Conv2 + Trm2 stream).
``trunk`` times our speech trunk alone, to tell the trunk from the family head.

One warm-up, then ``--repeats`` timed runs of each, interleaved (default 1:
one run); the best of each is reported with the ratio.

Usage:
    python benchmarks/upstream_overhead.py [--model vg_mim|fast_vgs] [--batch 4] [--seconds 4]
        [--threads 2] [--repeats 1] [--preset base] [--clock wall|cpu] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time

import torch


def bare_model(trunk) -> torch.nn.Module:
    """The transformers model with the trunk's weights and layer count (no CLS)."""
    from transformers import HubertModel, Wav2Vec2Model

    cfg = trunk.config
    cls = Wav2Vec2Model if cfg.backbone == "wav2vec2" else HubertModel
    hf = cls(cfg.hf_config()).eval()
    hf.feature_extractor.load_state_dict(trunk.feature_extractor.state_dict())
    hf.feature_projection.load_state_dict(trunk.feature_projection.state_dict())
    hf.encoder.pos_conv_embed.load_state_dict(trunk.pos_conv_embed.state_dict())
    hf.encoder.layer_norm.load_state_dict(trunk.layer_norm.state_dict())
    assert len(hf.encoder.layers) == len(trunk.layers)
    for a, b in zip(hf.encoder.layers, trunk.layers):
        a.load_state_dict(b.state_dict())
    return hf


def _time(fn, clock) -> float:
    t = clock()
    fn()
    return clock() - t


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="vg_mim", choices=["vg_mim", "fast_vgs"])
    p.add_argument("--preset", default="base")
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--seconds", type=float, default=4.0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument("--clock", default="wall", choices=["wall", "cpu"],
                   help="wall: perf_counter; cpu: this process's CPU time (all threads), robust on a busy "
                        "machine where other jobs steal the cores (use with --threads 1)")
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)

    import s3prl.hub as hub

    import s3prl_vgs
    from s3prl_vgs.modules.speech_trunk import SpeechTrunk
    from s3prl_vgs.upstream.export import export_speech_only

    torch.manual_seed(0)
    model = s3prl_vgs.build_model(args.model, preset=args.preset).eval()  # random init: no download
    with tempfile.TemporaryDirectory() as d:
        export_speech_only(model, d)
        expert = getattr(hub, f"{args.model}_local")(ckpt=d).eval()
    del model
    trunk = next(m for m in expert.modules() if isinstance(m, SpeechTrunk))
    hf = bare_model(trunk)

    n = int(args.seconds * 16000)
    wavs = torch.randn(args.batch, n)
    wav_list = list(wavs)
    with torch.inference_mode():
        ours_out = expert(wav_list)["hidden_states"]
        bare_out = hf(wavs, output_hidden_states=True).hidden_states
        trunk(wavs)
        assert len(ours_out) == len(bare_out), (len(ours_out), len(bare_out))
        clock = time.perf_counter if args.clock == "wall" else time.process_time
        times = {"ours": float("inf"), "bare": float("inf"), "trunk": float("inf")}
        for _ in range(args.repeats):  # interleaved, so a busy neighbour hurts both sides alike
            times["bare"] = min(times["bare"], _time(lambda: hf(wavs, output_hidden_states=True), clock))
            times["ours"] = min(times["ours"], _time(lambda: expert(wav_list), clock))
            times["trunk"] = min(times["trunk"], _time(lambda: trunk(wavs), clock))
    result = {
        "model": args.model, "preset": args.preset, "batch": args.batch, "seconds": args.seconds,
        "threads": args.threads, "repeats": args.repeats, "clock": args.clock, "layers": len(ours_out),
        "bare_s": round(times["bare"], 4), "ours_s": round(times["ours"], 4), "trunk_s": round(times["trunk"], 4),
        "ratio": round(times["ours"] / times["bare"], 4), "trunk_ratio": round(times["trunk"] / times["bare"], 4),
    }
    print(f"{args.model} ({args.preset}, {len(ours_out)} hidden states) {args.batch} x {args.seconds:g} s, "
          f"{args.threads} thread(s), {args.clock} clock, best of {args.repeats}:")
    print(f"  bare transformers {result['bare_s']:.3f} s | our expert {result['ours_s']:.3f} s "
          f"| our trunk alone {result['trunk_s']:.3f} s")
    print(f"  ratio expert/bare {result['ratio']:.3f} ({(result['ratio'] - 1) * 100:+.1f}%; goal <= +5%), "
          f"trunk/bare {result['trunk_ratio']:.3f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Peak memory of a FaST-VGS training step per batch size: the fine loss at once vs in checkpointed chunks.

The fine loss scores all B^2 (caption, image) pairs through the cross encoder,
so its activations grow with B^2; ``fine_chunk_size`` scores them in chunks and
recomputes each chunk in backward (``torch.utils.checkpoint``). Each row runs
one training forward + backward (loss = 0.1 coarse + 1.0 fine) in a fresh
subprocess, so no row inherits another's allocator state. A third row per
batch size runs the coarse loss only (``fine_matching_weight`` 0): the step
memory that is not the fine loss's (encoders, parameter gradients), so the
table also gives the fine loss's own share, at once and chunked:

* CPU: the process's peak RSS (``resource.getrusage(RUSAGE_SELF).ru_maxrss``)
  and its rise over the RSS before the step (weights, inputs and the imported
  libraries excluded). tracemalloc does not see torch's allocations. Each row
  runs with ``MALLOC_MMAP_THRESHOLD_=131072`` (unless set): glibc otherwise
  raises its mmap threshold after the first large free and keeps freed blocks
  up to 32 MiB in its heap, so RSS would count memory that torch has already
  released (measured: the chunked fine loss then seemed to keep 4x its
  actual activations);
* GPU (``--device cuda``, the default when CUDA is available):
  ``torch.cuda.max_memory_allocated`` during the step, and its rise over the
  memory allocated before it.

Presets: ``small`` (default) = the paper's cross encoder (2 layers, width 768,
12 heads, FFN 3072), the image Trm 1 layer, on the tiny preset's speech trunk
and 32-d RoIs, so the table isolates the fine loss at its real width and a CPU
can run it; ``tiny`` and ``base`` are the model presets (``base`` = the paper's
sizes, for a GPU). Audio: ``--seconds`` (default 4, about SpokenCOCO's mean)
for every caption. Dropout is on (training mode), so the chunked and the
unchunked losses differ by their dropout draws; their equality without dropout
is tested (tests/unit/test_fast_vgs_fine_chunks.py). Timings are wall seconds
of the step, contended on shared machines (compare within a run).

Usage:
    python benchmarks/memory.py                               # small preset, B = 8 16 24, CPU
    python benchmarks/memory.py --preset base --batch 16 32 64 --device cuda --chunk 256
    python benchmarks/memory.py --json OUT.json
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SMALL = {"hidden_size": 768, "num_attention_heads": 12, "intermediate_size": 3072, "xtrm_layers": 2,
         "trm_layers": 1, "resdavenet_widths": [16, 16, 32, 64, 768]}


def _rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB


def _current_rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def run_row(preset: str, batch: int, chunk: int, seconds: float, device: str, amp: bool) -> dict:
    """``chunk`` -1: no fine loss (fine_matching_weight 0)."""
    # One training step in this process; the parent prints it as a row.
    import torch

    sys.path.insert(0, ROOT)
    import s3prl_vgs

    torch.manual_seed(0)
    overrides = dict(SMALL) if preset == "small" else {}
    if chunk < 0:
        overrides["fine_matching_weight"] = 0.0
    model = s3prl_vgs.build_model("fast_vgs", preset="tiny" if preset == "small" else preset,
                                  fine_chunk_size=max(chunk, 0), **overrides).to(device).train()
    c = model.config
    n = int(seconds * 16000)
    wavs = torch.randn(batch, n, device=device)
    lengths = torch.full((batch,), n, dtype=torch.long, device=device)
    feats = torch.randn(batch, c.img_feat_len, c.visual_feat_dim, device=device)
    lo = torch.rand(batch, c.img_feat_len, 2, device=device) * 0.5
    boxes = torch.cat([lo, lo + 0.5], -1)
    image_ids = torch.arange(batch, device=device)
    cuda = device.startswith("cuda")
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
    else:
        before = _current_rss_bytes()
    t0 = time.perf_counter()
    with torch.autocast("cuda", dtype=torch.bfloat16, enabled=amp and cuda):
        out = model(wavs, lengths, feats, boxes, image_ids=image_ids)
    out.loss.backward()
    if cuda:
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated()
    else:
        peak = _rss_bytes()
    return {"preset": preset, "batch": batch, "pairs": batch * batch, "fine_chunk_size": chunk, "device": device,
            "amp": amp and cuda, "seconds": time.perf_counter() - t0, "peak_bytes": peak,
            "step_bytes": max(peak - before, 0), "loss": out.loss.item(),
            "measure": "cuda max_memory_allocated" if cuda else "ru_maxrss"}


def _child(args, batch: int, chunk: int) -> dict:
    cmd = [sys.executable, os.path.abspath(__file__), "--_row", str(batch), str(chunk), "--preset", args.preset,
           "--seconds", str(args.seconds), "--device", args.device] + (["--amp"] if args.amp else [])
    env = dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", str(args.threads)),
               MALLOC_MMAP_THRESHOLD_=os.environ.get("MALLOC_MMAP_THRESHOLD_", "131072"))
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        tail = (proc.stderr.strip().splitlines() or ["(no output)"])[-1]
        return {"batch": batch, "fine_chunk_size": chunk, "error": tail}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def gib(x: float) -> str:
    return f"{x / 2**30:.2f}"


def table(rows: list, chunk: int) -> str:
    by = {(r["batch"], r["fine_chunk_size"]): r for r in rows}
    head = ["B", "pairs", "coarse only: step GiB", "fine at once: peak GiB", "step GiB", "s",
            f"fine in chunks of {chunk}: peak GiB", "step GiB", "s", "step ratio", "fine-loss ratio"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---:|" * len(head)]
    for b in sorted({r["batch"] for r in rows}):
        none, full, part = (by.get((b, k), {}) for k in (-1, 0, chunk))
        cells = [str(b), str(b * b), gib(none["step_bytes"]) if "step_bytes" in none else none.get("error", "-")[:40]]
        for r in (full, part):
            cells += ([r["error"][:40], "", ""] if "error" in r else
                      [gib(r["peak_bytes"]), gib(r["step_bytes"]), f"{r['seconds']:.1f}"] if r else ["-", "-", "-"])
        ok = "step_bytes" in full and "step_bytes" in part
        cells.append(f"{part['step_bytes'] / max(full['step_bytes'], 1):.2f}" if ok else "-")
        fine_full = full.get("step_bytes", 0) - none.get("step_bytes", 0)
        ok = ok and "step_bytes" in none and fine_full > 0
        cells.append(f"{(part['step_bytes'] - none['step_bytes']) / fine_full:.2f}" if ok else "-")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--preset", choices=("small", "tiny", "base"), default="small")
    p.add_argument("--batch", type=int, nargs="+", default=[8, 16, 24], help="batch sizes (default 8 16 24)")
    p.add_argument("--chunk", type=int, default=64, help="fine_chunk_size of the chunked rows (default 64)")
    p.add_argument("--seconds", type=float, default=4.0, help="audio seconds per caption (default 4)")
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    p.add_argument("--amp", action="store_true", help="CUDA only: the forward under bf16 autocast (losses stay fp32)")
    p.add_argument("--threads", type=int, default=1, help="OMP threads per row when OMP_NUM_THREADS is unset (1)")
    p.add_argument("--json", default=None, help="also write the rows here")
    p.add_argument("--_row", nargs=2, type=int, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.device is None:
        import torch

        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    if args._row:
        print(json.dumps(run_row(args.preset, args._row[0], args._row[1], args.seconds, args.device, args.amp)))
        return 0
    rows = []
    for b in args.batch:
        for chunk in (-1, 0, args.chunk):  # alternating, so a drift in machine load hits every column alike
            rows.append(_child(args, b, chunk))
            r = rows[-1]
            what = "coarse loss only" if chunk < 0 else f"fine_chunk_size={chunk}"
            print(f"B={b} {what}: " +
                  (r["error"] if "error" in r else f"peak {gib(r['peak_bytes'])} GiB, step {gib(r['step_bytes'])} GiB, "
                                                   f"{r['seconds']:.1f} s"), file=sys.stderr, flush=True)
    measure = next((r["measure"] for r in rows if "measure" in r), "?")
    print(f"FaST-VGS training step, preset {args.preset}, {args.seconds:g} s captions, device {args.device}"
          f"{' bf16 autocast' if args.amp else ''}; peak = {measure} (process), step = its rise during forward + "
          f"backward; step ratio = chunked / at once; fine-loss ratio = the same of the step minus coarse only.\n")
    print(table(rows, args.chunk))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"rows": rows, "args": {k: v for k, v in vars(args).items() if k != "_row"}}, f, indent=2)
    return 0 if all("error" not in r for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())

"""``vgs-zerospeech``: ZeroSpeech 2021 phonetic ABX and semantic sSIMI of any layer of a model directory.

    vgs-zerospeech --model exp/fast_vgs_tiny/upstream --dataset zr2021 --out exp/fast_vgs_tiny/zerospeech/trained
    vgs-zerospeech ... --phonetic-layer all        # ABX of every 20 ms layer + abx_per_layer.png
    vgs-zerospeech ... --random-init 0             # the same architecture with random weights

Writes ``OUT/submission/`` (the ZR2021 submission: ``meta.yaml`` +
features, accepted by ``zerospeech2021-evaluate --no-lexical
--no-syntactic``), then ``OUT/scores.json`` and ``OUT/scores.md`` beside it
(the validator allows nothing else inside a submission). Rerunning resumes:
features already written are kept, ABX results already computed are reused.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

from ..cli import console_script
from ..errors import VGSError
from .abx import ABXConfig, mean_error, score_abx
from .dataset import read_dataset
from .export import SUBMISSION, ExportPlan, export, fingerprint, model_fingerprint, open_run, save_state
from .features import FeatureModel
from .layers import Layer, default_layers
from .report import SCHEMA, markdown, plot_sweep, write_json
from .ssimi import POOLING_FNS, load_pooled, ssimi
from .submission import build_meta

TOOL = "vgs-zerospeech"


def _meta_value(text: str) -> Any:
    import yaml

    return yaml.safe_load(text) if text.strip() else ""


def parse_args(argv):
    head, _, rest = __doc__.partition("\n\n")
    p = argparse.ArgumentParser(prog=TOOL, description=head.replace("``", "").split(": ", 1)[1],
                                epilog=rest.replace("``", ""), formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, type=Path, help="model directory (config.yaml + model.safetensors)")
    p.add_argument("--dataset", required=True, type=Path, help="ZR2021 dataset root (phonetic/, semantic/)")
    p.add_argument("--out", required=True, type=Path,
                   help="output directory: OUT/submission (ZR2021 layout), OUT/scores.json, OUT/scores.md")
    p.add_argument("--phonetic-layer", default=None,
                   help="[STREAM:]INDEX (e.g. 6, trm1:6, trm2:1) or 'all' (ABX of every hidden_states layer). "
                        "Default: FaST-VGS Trm1 layer 6 (the paper's; the deepest if fewer), MIM family layer L/2")
    p.add_argument("--semantic-layer", default=None,
                   help="[STREAM:]INDEX. Default: FaST-VGS trm2:1 (Trm2 output, the paper's), MIM family the last layer")
    p.add_argument("--pooling", default="max", choices=sorted(POOLING_FNS), help="sSIMI pooling over time (default max)")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (cuda if available); model and ABX")
    p.add_argument("--random-init", type=int, default=None, metavar="SEED",
                   help="score the model's architecture with fresh random weights (seeded), not its trained weights")
    p.add_argument("--tasks", nargs="+", default=["phonetic", "semantic"], choices=["phonetic", "semantic"])
    p.add_argument("--with-test", action="store_true",
                   help="also export the test parts present in the dataset (for a full submission; never scored)")
    p.add_argument("--meta", action="append", default=[], metavar="KEY=VALUE",
                   help="meta.yaml field: author, affiliation, description, open_source, train_set, gpu_budget")
    p.add_argument("--abx-seed", type=int, default=ABXConfig.seed, help="libriabx2 sampling seed (default 3459)")
    p.add_argument("--overwrite", action="store_true", help="replace the features of another run in OUT")
    p.add_argument("--threads", type=int, default=None,
                   help="CPU threads of torch (default: torch's; use 1 on a busy machine, where more threads spin)")
    p.add_argument("--list-layers", action="store_true", help="print the model's layers and exit")
    p.add_argument("--no-progress", action="store_true")
    return p.parse_args(argv)


def _device(name: str) -> str:
    import torch

    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise VGSError(f"--device {name}: CUDA is not available on this machine")
    if name != "cpu" and not name.startswith("cuda"):
        raise VGSError(f"--device {name}: expected cpu, cuda, cuda:N or auto")
    return name


def _versions() -> Dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for pkg in ("s3prl-vgs", "zerospeech-libriabx2", "torch", "scipy", "numpy"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            out[pkg] = "not installed"
    return out


def _layer_info(layer: Optional[Layer]) -> Dict[str, Any]:
    return {"layer": layer.name, "short": layer.short_name, "frame_shift": layer.frame_shift} if layer else {}


@console_script(TOOL)
def main(argv=None) -> int:
    args = parse_args(argv)
    device = _device(args.device)
    if args.threads is not None:
        import torch

        torch.set_num_threads(max(1, args.threads))
    t0 = time.time()
    fm = FeatureModel.from_dir(args.model, device=device, random_init=args.random_init)
    inv = fm.inventory
    if args.list_layers:
        for stream, (n, _) in inv.streams.items():
            for i in range(n):
                layer = inv.layer(stream, i)
                print(f"{layer.name}\t{layer.short_name}\tframe_shift {layer.frame_shift:g} s")
        return 0
    default_ph, default_se = default_layers(fm.model, inv)
    sweep: List[Layer] = []
    phonetic = semantic = None
    if "phonetic" in args.tasks:
        if args.phonetic_layer == "all":
            sweep = inv.all_layers("hidden_states")
            phonetic = default_ph
        else:
            phonetic = inv.parse(args.phonetic_layer, "phonetic-layer") if args.phonetic_layer else default_ph
    if "semantic" in args.tasks:
        semantic = inv.parse(args.semantic_layer, "semantic-layer") if args.semantic_layer else default_se
    meta_overrides = {}
    for spec in args.meta:
        key, sep, value = spec.partition("=")
        if not sep:
            raise VGSError(f"--meta {spec!r}: expected KEY=VALUE")
        meta_overrides[key.strip()] = _meta_value(value)

    dataset = read_dataset(args.dataset, tasks=args.tasks, include_test=args.with_test)
    plan = ExportPlan(args.out, phonetic, semantic, sweep)
    weights = "random_init" if args.random_init is not None else "trained"
    state = open_run(args.out, fingerprint(plan, model_fingerprint(args.model, args.random_init), dataset),
                     overwrite=args.overwrite)
    description = (f"s3prl-vgs {fm.model_name} ({weights}) from {args.model.resolve().name}; "
                   f"phonetic {phonetic.short_name if phonetic else '-'}, "
                   f"semantic {semantic.short_name if semantic else '-'} ({args.pooling} pooling)")
    meta = build_meta(phonetic, semantic, args.pooling, description, meta_overrides)
    command = [TOOL] + [str(a) for a in (argv if argv is not None else sys.argv[1:])]
    counts = export(fm, dataset, plan, state, meta, command, _versions(), progress=not args.no_progress)
    t_export = time.time() - t0
    sub = args.out / SUBMISSION

    abx_cfg = ABXConfig(seed=args.abx_seed, device=device)
    abx_key = f"seed={abx_cfg.seed},group={abx_cfg.max_size_group},x_across={abx_cfg.max_x_across}"
    cache = state.setdefault("abx", {}).setdefault(abx_key, {})
    t1 = time.time()

    def abx_of(layer: Layer) -> Dict[str, dict]:
        res = {}
        for name, subset in dataset.phonetic.items():
            if subset.item_file is None:
                continue  # test: no public item file
            key = f"{layer.name}/{name}"
            if key not in cache:
                if not args.no_progress:
                    print(f"{TOOL}: ABX {layer.short_name} on {name} ...", file=sys.stderr, flush=True)
                cache[key] = score_abx(plan.phonetic_dir(layer, name), subset.item_file, subset.items,
                                       layer.frame_shift, abx_cfg)
                r = cache[key]
                if r["items_scored"] < r["items"]:
                    print(f"{TOOL}: warning: {layer.short_name} on {name}: only {r['items_scored']} of {r['items']} "
                          f"items span a whole {layer.frame_shift:g} s frame; the others are not scored",
                          file=sys.stderr)
                save_state(args.out, state)  # a killed sweep keeps the layers already scored
            res[name] = cache[key]
        return res

    phonetic_scores = sweep_scores = best = None
    if phonetic is not None:
        sweep_scores = [dict(_layer_info(layer), abx=abx_of(layer)) for layer in sweep] or None
        for s in sweep_scores or ():
            s["mean"] = mean_error(s["abx"].values())
        abx = abx_of(phonetic)
        phonetic_scores = dict(_layer_info(phonetic), metric="cosine", abx=abx, mean=mean_error(abx.values()))
        if sweep_scores:
            best = min(sweep_scores, key=lambda s: s["mean"])["layer"]
    t_abx = time.time() - t1
    semantic_scores = None
    if semantic is not None:
        sem = dataset.semantic["dev"]
        vectors = load_pooled(sub / "semantic" / "dev", sem.gold, args.pooling)
        semantic_scores = dict(_layer_info(semantic), pooling=args.pooling, metric="cosine",
                               ssimi=ssimi(sem.gold, sem.pairs, vectors, "cosine"))
    scores = {
        "schema": SCHEMA,
        "model": {"dir": str(args.model.resolve()), "name": fm.model_name, "weights": weights, "seed": args.random_init},
        "dataset": str(args.dataset.resolve()),
        "submission": str(sub.resolve()),
        "phonetic": phonetic_scores,
        "semantic": semantic_scores,
        "sweep": sweep_scores,
        "best_layer": best,
        "abx_settings": {"distance": abx_cfg.distance, "max_size_group": abx_cfg.max_size_group,
                         "max_x_across": abx_cfg.max_x_across, "seed": abx_cfg.seed, "context": "within (triphone)",
                         "device": device},
        "versions": _versions(),
        "elapsed_s": {"export": round(t_export, 2), "abx": round(t_abx, 2), "total": round(time.time() - t0, 2)},
        "features": counts,
    }
    write_json(args.out / "scores.json", scores)
    table = markdown(scores)
    from ..io import atomic_write_text

    atomic_write_text(args.out / "scores.md", table)
    if sweep_scores:
        png = plot_sweep(scores, args.out / "abx_per_layer.png")
        if png is None:
            print(f"{TOOL}: matplotlib not installed; no plot (pip install matplotlib)", file=sys.stderr)
    print(table, end="")
    print(f"{TOOL}: wrote {sub} and {args.out / 'scores.json'}", file=sys.stderr)
    return 0


__all__ = ["main"]


if __name__ == "__main__":
    raise SystemExit(main())

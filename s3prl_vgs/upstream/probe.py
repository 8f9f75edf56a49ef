"""SUPERB-style probing of an exported upstream with s3prl's own runner (recipe stage 8).

For one task (``-d`` of s3prl's ``run_downstream.py``) and one upstream
directory, three probes run with the same downstream, budget and seed:

* ``trained``: the exported VGS upstream;
* ``random``: the same architecture, randomly initialised (seed 0);
* ``fbank``: s3prl's own ``fbank`` upstream (no learned features at all).

Each is s3prl's legacy runner through ``s3prl-vgs-downstream`` (its ``main``,
called in this process so that ``s3prl.hub`` is imported once): ``-m train``
with the weighted sum over *all* hidden layers (s3prl's Featurizer), then the
best dev checkpoint (``dev-best.ckpt``; the last ``states-*.ckpt`` when dev
never improved) and ``-m evaluate -e CKPT`` on test. Written, atomically:

* ``OUT/<variant>/``: s3prl's own experiment directory (checkpoints, logs);
* ``OUT/results.json``: per variant the test metric, the checkpoint used, its
  step, and the learned layer weights (softmax of the Featurizer's weights:
  they sum to 1; one layer gives ``[1.0]``);
* ``OUT/layer_weights.png``: the learned layer weights of the trained and the
  random upstream, as bars;
* ``python -m s3prl_vgs.upstream.probe rows --exp EXP`` prints the demo
  table rows of every ``EXP/*/probe/*/results.json`` and writes them to
  ``EXP/probe_rows.json`` (see ``/work/notes/h10-api.md``).

Example:
    python -m s3prl_vgs.upstream.probe run --upstream exp/fast_vgs_tiny/upstream \\
        --task fluent_commands --data corpus/fluent_commands --out exp/fast_vgs_tiny/probe/fluent_commands \\
        --steps 300 --eval_step 50
"""

from __future__ import annotations

import argparse
import contextlib
import glob
import io
import json
import math
import re
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

from ..errors import VGSError

VARIANTS = ("trained", "random", "fbank")
# Where each SUPERB task's config takes its data root (the -o key under config.downstream_expert.datarc).
DATA_KEYS = {
    "fluent_commands": "file_path",
    "speech_commands": "speech_commands_root",
    "emotion": "root",
    "voxceleb1": "file_path",
}
_METRIC_LINE = re.compile(r"^test[ _-]([A-Za-z_][\w-]*)\s*[:=]\s*([-+0-9.eE]+|nan)\s*$")
ROWS_FILE = "probe_rows.json"


class ProbeError(VGSError, RuntimeError):
    """A probe that could not run or whose outputs are missing; the message names the file."""


@dataclass
class ProbeConfig:
    """One probe's task, data and budget (shared by the three variants)."""

    task: str = "fluent_commands"
    data: str = ""  # the task's data root (DATA_KEYS) unless it is set in `config`/`overrides`
    config: Optional[str] = None  # downstream yaml (default: the one shipped for the task)
    steps: Optional[int] = None  # runner.total_steps (default: the config's)
    eval_step: Optional[int] = None  # dev/test evaluation and checkpoint interval
    batch_size: Optional[int] = None  # datarc.train_batch_size
    num_workers: Optional[int] = None
    lr: Optional[float] = None
    device: str = "cpu"
    seed: int = 1337  # s3prl's default
    overrides: List[str] = field(default_factory=list)  # extra -o items, "config.a.b=v"

    def runner_overrides(self) -> str:
        items = []
        if self.data:
            key = DATA_KEYS.get(self.task)
            if key is None:
                raise ProbeError(f"task {self.task!r}: no known data key (known: {sorted(DATA_KEYS)}); "
                                 "set it with --override config.downstream_expert.datarc.<key>=DIR")
            items.append(f"config.downstream_expert.datarc.{key}={Path(self.data).resolve()}")
        if self.steps is not None:
            items.append(f"config.runner.total_steps={self.steps}")
        if self.eval_step is not None:
            items += [f"config.runner.eval_step={self.eval_step}", f"config.runner.save_step={self.eval_step}",
                      f"config.runner.log_step={self.eval_step}"]
        if self.batch_size is not None:
            items.append(f"config.downstream_expert.datarc.train_batch_size={self.batch_size}")
        if self.num_workers is not None:
            items.append(f"config.downstream_expert.datarc.num_workers={self.num_workers}")
        if self.lr is not None:
            items.append(f"config.optimizer.lr={self.lr}")
        items.append("config.runner.eval_dataloaders=['dev']")  # test is only seen once, by -m evaluate
        items.append(f"args.seed={self.seed}")
        return ",,".join(items + list(self.overrides))


class _Tee(io.TextIOBase):
    def __init__(self, *streams):
        self.streams = streams

    def write(self, s):
        for st in self.streams:
            st.write(s)
        return len(s)

    def flush(self):
        for st in self.streams:
            st.flush()


def _run(argv: List[str]) -> str:
    """One s3prl-vgs-downstream run in this process; returns what it printed."""
    from .run_downstream import main

    buf = io.StringIO()
    with contextlib.redirect_stdout(_Tee(sys.stdout, buf)):
        try:
            rc = main(argv)  # the console-script wrapper: errors come back as a status, printed
        except SystemExit as e:
            rc = e.code
    if rc not in (None, 0):
        raise ProbeError(f"s3prl-vgs-downstream {' '.join(argv[:6])} ...: exited with status {rc} (see the lines above)")
    return buf.getvalue()


def pick_checkpoint(expdir: Path) -> Path:
    """``dev-best.ckpt`` if dev ever improved, else the last ``states-*.ckpt``."""
    best = expdir / "dev-best.ckpt"
    if best.is_file():
        return best
    states = sorted(glob.glob(str(expdir / "states-*.ckpt")), key=lambda p: int(re.findall(r"\d+", Path(p).name)[-1]))
    if not states:
        raise ProbeError(f"{expdir}: no dev-best.ckpt or states-*.ckpt; did training save a checkpoint "
                         "(runner.save_step <= total_steps)?")
    return Path(states[-1])


def read_checkpoint(path: Path) -> Dict[str, Any]:
    """Step and learned layer weights of an s3prl runner checkpoint (weights-only load)."""
    import torch

    from s3prl_vgs_startup import admit_s3prl_checkpoints

    admit_s3prl_checkpoints()
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 -- truncated or foreign files
        raise ProbeError(f"{path}: not a readable s3prl runner checkpoint ({type(e).__name__}: {e})") from None
    feat = state.get("Featurizer") or {}
    weights = feat.get("weights")
    layer_weights = torch.softmax(weights.float(), dim=-1).tolist() if weights is not None else [1.0]
    return {"step": int(state.get("Step", 0)), "layer_weights": layer_weights}


def parse_metric(printed: str, where: str) -> Dict[str, float]:
    """The ``test <name>: <value>`` lines s3prl's downstream experts print at evaluation."""
    found = {}
    for line in printed.splitlines():
        m = _METRIC_LINE.match(line.strip())
        if m:
            found[m.group(1)] = float(m.group(2))
    if not found:
        raise ProbeError(f"{where}: the evaluation printed no 'test <metric>: <value>' line")
    return found


def random_upstream(upstream_dir: str | Path, out: str | Path, seed: int = 0) -> Path:
    """The architecture of ``upstream_dir`` with fresh random weights, exported speech-only to ``out``."""
    import torch

    from ..checkpoint import read_model_config, without_pretrained
    from ..models import get_model_class
    from .export import export_speech_only

    meta = read_model_config(upstream_dir)
    cls = get_model_class(meta["model"])
    torch.manual_seed(seed)
    model = cls(cls.config_class.from_dict(without_pretrained(meta["config"]))).eval()
    return export_speech_only(model, out, extra={"random_init": {"seed": seed, "architecture_of": str(upstream_dir)}})


def probe_one(variant: str, entry: str, ckpt: Optional[str], expdir: Path, cfg: ProbeConfig) -> Dict[str, Any]:
    """Train, pick the best dev checkpoint, evaluate on test; one variant."""
    import shutil

    if expdir.exists():  # a rerun starts clean: s3prl would otherwise mix old checkpoints in
        shutil.rmtree(expdir)
    start = time.time()
    train = ["-m", "train", "-u", entry, "-d", cfg.task, "-p", str(expdir), "--device", cfg.device,
             "-o", cfg.runner_overrides()]
    if ckpt:
        train += ["-k", str(ckpt)]
    if cfg.config:
        train += ["-c", str(cfg.config)]
    print(f"[probe] {cfg.task} / {variant}: training ({entry})", file=sys.stderr, flush=True)
    _run(train)
    chosen = pick_checkpoint(expdir)
    print(f"[probe] {cfg.task} / {variant}: evaluating {chosen.name} on test", file=sys.stderr, flush=True)
    printed = _run(["-m", "evaluate", "-e", str(chosen), "-t", "test", "--device", cfg.device])
    metrics = parse_metric(printed, str(chosen))
    info = read_checkpoint(chosen)
    name = "acc" if "acc" in metrics else sorted(metrics)[0]
    return {
        "variant": variant, "upstream": entry, "upstream_dir": ckpt, "task": cfg.task,
        "metric": name, "value": metrics[name], "metrics": metrics,
        "checkpoint": str(chosen), "checkpoint_step": info["step"],
        "dev_improved": chosen.name == "dev-best.ckpt",
        "layer_weights": info["layer_weights"], "num_layers": len(info["layer_weights"]),
        "seconds": round(time.time() - start, 1),
    }


def plot_layer_weights(results: Dict[str, Dict[str, Any]], out: Path, title: str) -> Path:
    """Bars of the learned layer weights of every variant with more than one layer."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ..io import atomic_write_bytes

    shown = [(v, r) for v, r in results.items() if r["num_layers"] > 1]
    fig, axes = plt.subplots(1, max(1, len(shown)), figsize=(4.5 * max(1, len(shown)), 3.2), squeeze=False)
    for ax, (variant, r) in zip(axes[0], shown):
        w = r["layer_weights"]
        ax.bar(range(len(w)), w, color="tab:blue" if variant == "trained" else "tab:gray")
        ax.axhline(1 / len(w), color="k", lw=0.8, ls="--", label="uniform")
        ax.set_xticks(range(len(w)))
        ax.set_xticklabels(["conv"] + [str(i) for i in range(1, len(w))])
        ax.set_xlabel("layer (conv projection, then transformer layers)")
        ax.set_ylabel("softmax weight")
        ax.set_title(f"{variant}: {r['metric']} {r['value']:.3f}")
        ax.legend(fontsize=7)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    atomic_write_bytes(out, buf.getvalue())
    return out


def probe_task(upstream_dir: str | Path, out: str | Path, cfg: ProbeConfig, variants: Sequence[str] = VARIANTS,
               model_name: Optional[str] = None) -> Dict[str, Any]:
    """The three probes of one task; writes OUT/results.json and OUT/layer_weights.png."""
    from ..checkpoint import read_model_config
    from ..io import atomic_write_text

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    family = model_name or read_model_config(upstream_dir)["model"]
    entry = f"{family}_local"
    results: Dict[str, Dict[str, Any]] = {}
    for variant in variants:
        if variant == "trained":
            results[variant] = probe_one(variant, entry, str(upstream_dir), out / variant, cfg)
        elif variant == "random":
            rand = random_upstream(upstream_dir, out / "random_upstream")
            results[variant] = probe_one(variant, entry, str(rand), out / variant, cfg)
        elif variant == "fbank":
            results[variant] = probe_one(variant, "fbank", None, out / variant, cfg)
        else:
            raise ProbeError(f"unknown probe variant {variant!r}; known: {VARIANTS}")
    for r in results.values():
        if not math.isclose(sum(r["layer_weights"]), 1.0, abs_tol=1e-4):
            raise ProbeError(f"{r['checkpoint']}: layer weights sum to {sum(r['layer_weights'])}, not 1")
    summary = {"task": cfg.task, "model": family, "upstream_dir": str(upstream_dir), "config": asdict(cfg),
               "results": results}
    plot = plot_layer_weights(results, out / "layer_weights.png", f"{family} upstream, {cfg.task} probe")
    summary["plot"] = str(plot)
    atomic_write_text(out / "results.json", json.dumps(summary, indent=2) + "\n")
    return summary


# ----------------------------------------------------------------------------- demo table rows


def probe_rows(exp: str | Path) -> List[Dict[str, Any]]:
    """One row per (experiment tag, task, variant) from ``EXP/*/probe/*/results.json``."""
    from ..io import load_json

    rows = []
    for path in sorted(Path(exp).glob("*/probe/*/results.json")):
        summary = load_json(path)
        tag = path.parents[2].name
        for variant in VARIANTS:
            r = summary.get("results", {}).get(variant)
            if r is None:
                continue
            rows.append({"tag": tag, "model": summary.get("model"), "task": summary.get("task"), "upstream": variant,
                         "metric": r["metric"], "value": r["value"], "checkpoint": r["checkpoint"],
                         "checkpoint_step": r["checkpoint_step"], "num_layers": r["num_layers"],
                         "top_layer": max(range(r["num_layers"]), key=r["layer_weights"].__getitem__),
                         "results": str(path)})
    return rows


def rows_markdown(rows: List[Dict[str, Any]]) -> str:
    lines = ["| experiment | task | upstream | metric | test | checkpoint (step) | layers | top layer |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['tag']} | {r['task']} | {r['upstream']} | {r['metric']} | {r['value']:.3f} | "
                     f"{Path(r['checkpoint']).name} ({r['checkpoint_step']}) | {r['num_layers']} | {r['top_layer']} |")
    return "\n".join(lines)


def write_rows(exp: str | Path) -> Path:
    from ..io import atomic_write_text

    rows = probe_rows(exp)
    out = Path(exp) / ROWS_FILE
    atomic_write_text(out, json.dumps({"rows": rows}, indent=2) + "\n")
    return out


# ----------------------------------------------------------------------------- CLI


def get_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m s3prl_vgs.upstream.probe", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run", help="probe one task: trained, random-init and fbank upstreams")
    r.add_argument("--upstream", required=True, help="exported upstream dir (stage 7)")
    r.add_argument("--out", required=True, help="output dir, e.g. EXP/probe/TASK")
    r.add_argument("--task", default="fluent_commands", help="s3prl downstream (-d); default fluent_commands")
    r.add_argument("--data", default="", help="the task's data root (e.g. the fluent_commands dir)")
    r.add_argument("--config", default=None, help="downstream yaml (default: shipped for the task)")
    r.add_argument("--steps", type=int, default=None, help="total training steps (default: the config's)")
    r.add_argument("--eval_step", type=int, default=None, help="dev evaluation / checkpoint interval")
    r.add_argument("--batch_size", type=int, default=None)
    r.add_argument("--num_workers", type=int, default=None)
    r.add_argument("--lr", type=float, default=None)
    r.add_argument("--device", default="cpu")
    r.add_argument("--variants", default=",".join(VARIANTS), help="comma list of trained,random,fbank")
    r.add_argument("--override", action="append", default=[], help="extra runner -o item (repeatable)")
    w = sub.add_parser("rows", help="print the probe rows of EXP/*/probe/*/results.json, write EXP/probe_rows.json")
    w.add_argument("--exp", default="exp")
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    from ..cli import console_script

    @console_script("vgs-probe")
    def _main(args_list):
        args = get_parser().parse_args(args_list)
        if args.cmd == "rows":
            out = write_rows(args.exp)
            print(rows_markdown(probe_rows(args.exp)))
            print(f"vgs-probe: wrote {out}", file=sys.stderr)
            return 0
        if not Path(args.upstream, "config.yaml").is_file():
            raise ProbeError(f"{args.upstream}: not a model directory (no config.yaml); run stage 7 first")
        cfg = ProbeConfig(task=args.task, data=args.data, config=args.config, steps=args.steps,
                          eval_step=args.eval_step, batch_size=args.batch_size, num_workers=args.num_workers,
                          lr=args.lr, device=args.device, overrides=args.override)
        summary = probe_task(args.upstream, args.out, cfg, [v for v in args.variants.split(",") if v])
        for v, r in summary["results"].items():
            print(f"[probe] {cfg.task} {v:8s} test {r['metric']} {r['value']:.4f} "
                  f"({Path(r['checkpoint']).name}, step {r['checkpoint_step']}, {r['seconds']} s)")
        print(f"[probe] wrote {Path(args.out) / 'results.json'} and {summary['plot']}")
        return 0

    return _main(argv)


if __name__ == "__main__":
    sys.exit(main())

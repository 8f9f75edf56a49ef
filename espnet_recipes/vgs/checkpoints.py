"""Safe, atomic, resumable ESPnet checkpoints for VGS training.

ESPnet 202511 loads every checkpoint with ``torch.load(..., weights_only=False)``
(the trainer's ``--resume``, n-best averaging, ``--init_param``), which runs
any code a pickle asks for, and writes ``checkpoint.pth`` in place, so a kill
during the write leaves a truncated file that the next ``--resume`` cannot
read. :func:`install` (run when :mod:`espnet_recipes.vgs.trainer` is
imported) gives exactly those three ESPnet modules a ``torch`` whose

- ``load`` is weights-only whatever the caller asked: tensors, containers
  and plain numbers, plus the few data-only types ESPnet's reporter stores
  (numpy scalars and dtypes, ``datetime.timedelta``); anything else is
  refused with :class:`UnsafeCheckpointError`, naming the file;
- ``save`` to a path writes a temporary sibling, fsyncs it and renames it
  over the target, so the target is always either the old or the new file.

Everything else of ``torch`` is the real module. :func:`repair_after_resume`
(run by ``VGSTrainer.resume``) completes what a kill between ESPnet's
``checkpoint.pth`` write and the epoch's ``<N>epoch.pth`` / ``latest.pth`` /
best-model links left undone, so n-best averaging finds every epoch.
"""

from __future__ import annotations

import datetime
import logging
import os
import pickle
import types
from pathlib import Path
from typing import Iterable, Optional, Sequence

import numpy as np
import torch

from s3prl_vgs.errors import VGSError


class UnsafeCheckpointError(VGSError, RuntimeError):
    """A checkpoint that needs arbitrary-code unpickling; the message names the file and the offending globals."""


def _numpy_safe_globals() -> list:
    try:
        from numpy._core.multiarray import scalar  # numpy >= 2
    except ImportError:  # pragma: no cover - numpy 1.x
        from numpy.core.multiarray import scalar
    dtypes = {type(np.dtype(t)) for t in (np.float16, np.float32, np.float64, np.int32, np.int64, np.bool_)}
    return [scalar, np.dtype, *dtypes]


# Data-only types in ESPnet's checkpoint.pth: the reporter keeps np.nanmean() values and epoch times.
SAFE_GLOBALS = [*_numpy_safe_globals(), datetime.timedelta]


def _describe(f) -> str:
    return str(f) if isinstance(f, (str, os.PathLike)) else type(f).__name__


def safe_load(f, map_location=None, *args, weights_only: Optional[bool] = None, **kwargs):
    """``torch.load(f, map_location, weights_only=True)`` with :data:`SAFE_GLOBALS` allowed.

    ``weights_only`` is accepted and ignored: ESPnet passes ``False``. A
    ``.safetensors`` file, or a model directory (``s3prl_vgs.save_model``,
    ``vgs-convert``) holding ``model.safetensors``, loads as its state dict,
    so ``--init_param <model dir>/model.safetensors::model`` starts training
    from a converted official checkpoint.
    """
    if isinstance(f, (str, os.PathLike)):
        path = Path(f)
        if path.is_dir() and (path / "model.safetensors").is_file():
            path = path / "model.safetensors"
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            device = map_location if isinstance(map_location, (str, torch.device)) else "cpu"
            try:
                return load_file(str(path), device=str(device))
            except Exception as e:  # SafetensorError, OSError
                raise UnsafeCheckpointError(f"{path}: unreadable safetensors file ({str(e).strip()[:200]})") from None
    with torch.serialization.safe_globals(SAFE_GLOBALS):
        try:
            return torch.load(f, map_location, *args, weights_only=True, **kwargs)
        except pickle.UnpicklingError as e:
            if hasattr(f, "seek"):
                f.seek(0)
            try:
                names = torch.serialization.get_unsafe_globals_in_checkpoint(f)
            except Exception:  # not a zip checkpoint at all
                names = []
            what = f"it pickles {', '.join(names)}" if names else f"{str(e).strip().splitlines()[-1][:200]}"
            raise UnsafeCheckpointError(
                f"{_describe(f)}: refusing to load a checkpoint that is not weights-only ({what}); loading it "
                "could run arbitrary code. Use a checkpoint written by this trainer, or re-save the model's state dict "
                "of tensors where the file's source is trusted"
            ) from None


def atomic_save(obj, f, *args, **kwargs) -> None:
    """``torch.save``; to a path through a temporary sibling + fsync + rename (never a half-written ``f``)."""
    if not isinstance(f, (str, os.PathLike)):
        return torch.save(obj, f, *args, **kwargs)
    path = Path(f)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        torch.save(obj, tmp, *args, **kwargs)
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    try:  # the rename itself survives a crash once the directory entry is on disk
        fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError:
        pass


class _CheckpointTorch(types.ModuleType):
    """``torch`` for ESPnet's checkpoint code: safe ``load``, atomic ``save``, the rest delegated."""

    def __init__(self):
        super().__init__("torch")
        self.load = safe_load
        self.save = atomic_save

    def __getattr__(self, name):
        return getattr(torch, name)


# The ESPnet modules whose torch.load / torch.save calls are the trainer's checkpoints.
PATCHED_MODULES = (
    "espnet2.train.trainer",  # checkpoint.pth, <N>epoch.pth, --resume
    "espnet2.main_funcs.average_nbest_models",  # n-best averaging at the end of training
    "espnet2.torch_utils.load_pretrained_model",  # --init_param
)


def install(modules: Iterable[str] = PATCHED_MODULES) -> None:
    """Give ``modules`` the safe ``torch`` (idempotent)."""
    import importlib

    for name in modules:
        module = importlib.import_module(name)
        if not isinstance(module.torch, _CheckpointTorch):
            module.torch = _CheckpointTorch()


def repair_after_resume(output_dir: Path, states: dict, best_model_criterion: Sequence = (),
                        reporter=None) -> None:
    """Finish the epoch bookkeeping that a kill after ``checkpoint.pth`` was written may have cut short.

    ESPnet writes ``checkpoint.pth`` (epoch N finished), then ``<N>epoch.pth``,
    ``latest.pth`` and the ``<phase>.<metric>.best.pth`` links. Resuming
    from such a checkpoint starts epoch N+1; without ``<N>epoch.pth`` the
    final n-best averaging would fail, and a stale best link would survive.
    """
    epoch = int(states["reporter"]["epoch"])
    if epoch < 1:
        return
    epoch_file = output_dir / f"{epoch}epoch.pth"
    if not epoch_file.exists():
        logging.warning(f"{epoch_file} is missing (interrupted while saving): writing it from checkpoint.pth")
        atomic_save(states["model"], epoch_file)
    latest = output_dir / "latest.pth"
    if not (latest.is_symlink() and os.readlink(latest) == epoch_file.name):
        latest.unlink(missing_ok=True)
        latest.symlink_to(epoch_file.name)
    if reporter is None:
        return
    for phase, key, mode in best_model_criterion:
        if not reporter.has(phase, key):
            continue
        best = reporter.get_best_epoch(phase, key, mode)
        link = output_dir / f"{phase}.{key}.best.pth"
        target = f"{best}epoch.pth"
        if (output_dir / target).exists() and not (link.is_symlink() and os.readlink(link) == target):
            link.unlink(missing_ok=True)
            link.symlink_to(target)


__all__ = ["UnsafeCheckpointError", "SAFE_GLOBALS", "safe_load", "atomic_save", "install", "repair_after_resume",
           "PATCHED_MODULES"]

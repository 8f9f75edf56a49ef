"""Hub entries: ``<model>``, ``<model>_local`` and ``<model>_custom``, all taking ``ckpt=MODEL_DIR``.

There is no published s3prl-vgs checkpoint to download yet, so the plain name
also needs ``ckpt``; the three spellings follow s3prl's naming conventions.
"""

from __future__ import annotations

import os

from .expert import UpstreamExpert as _UpstreamExpert


def _local(ckpt: str | None = None, *args, **kwargs):
    if not ckpt:
        raise ValueError("pass ckpt=MODEL_DIR (-k in run_downstream.py, path_or_url in S3PRLUpstream): "
                         "a directory written by model.save() or vgs-convert")
    if not os.path.isdir(ckpt):
        raise FileNotFoundError(f"{ckpt}: not a model directory")
    return _UpstreamExpert(ckpt, *args, **kwargs)


def _entries():
    out = {}
    for name in ("fast_vgs", "vg_mim", "vg_hubert"):
        for suffix in ("", "_local", "_custom"):
            def entry(ckpt=None, *args, _name=name + suffix, **kwargs):
                return _local(ckpt, *args, **kwargs)
            entry.__name__ = name + suffix
            entry.__doc__ = f"s3prl-vgs {name} upstream from a model directory (ckpt=MODEL_DIR)."
            out[name + suffix] = entry
    return out


ENTRIES = _entries()
globals().update(ENTRIES)

__all__ = list(ENTRIES)

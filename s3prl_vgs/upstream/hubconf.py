"""Hub entries, named as s3prl names its own: for each of ``fast_vgs``, ``vg_mim``, ``vg_hubert``:

* ``<name>_local``: ``ckpt`` is a model directory (``config.yaml`` + ``model.safetensors``,
  full or speech-only).
* ``<name>_url``: ``ckpt`` is the URL of such a directory (``.../config.yaml`` and
  ``.../model.safetensors`` beside each other) or a Hugging Face repo id
  (``org/name`` or ``org/name@revision``; ``$HF_ENDPOINT`` is honoured). The two files
  are fetched through s3prl's own download helper (``s3prl.util.download``: its
  cache directory, its file lock, ``refresh``), so they are downloaded once.
* ``<name>_custom``: either (an existing directory wins).
* ``<name>``: there is no published s3prl-vgs checkpoint, so the plain name needs
  ``ckpt`` too; without one it raises a one-line ``ValueError`` saying what to
  pass, so loops over ``s3prl.hub.options()`` can skip it like any failed entry.

Every entry accepts s3prl's factory keywords (``ckpt``, ``model_config``,
``refresh``, extra ones from ``extra_conf``).
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import tempfile
from pathlib import Path

from ..checkpoint import CONFIG_NAME, WEIGHTS_NAME
from .expert import UpstreamExpert as _UpstreamExpert

FAMILIES = ("fast_vgs", "vg_mim", "vg_hubert")
_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+(@[\w./-]+)?$")
_HOW = ("pass ckpt=MODEL_DIR (run_downstream.py -k DIR, S3PRLUpstream(name, path_or_url=DIR), "
        "ESPnet frontend_conf.path_or_url)")


def _is_url(ckpt: str) -> bool:
    return "://" in ckpt


def _remote_files(source: str) -> dict:
    """URLs of the two files of a remote model directory (a URL or an HF repo id)."""
    if _is_url(source):
        base = source.rstrip("/")
        if base.endswith("/" + CONFIG_NAME) or base.endswith("/" + WEIGHTS_NAME):
            base = base.rsplit("/", 1)[0]
        return {name: f"{base}/{name}" for name in (CONFIG_NAME, WEIGHTS_NAME)}
    if not _REPO_ID.match(source):
        raise ValueError(f"{source!r}: not a URL (scheme://...) or a Hugging Face repo id (org/name[@revision])")
    repo, _, revision = source.partition("@")
    endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co").rstrip("/")
    return {name: f"{endpoint}/{repo}/resolve/{revision or 'main'}/{name}" for name in (CONFIG_NAME, WEIGHTS_NAME)}


def _place(src: str, dst: Path) -> None:
    """Hard-link (else copy) a downloaded file into the model directory view, atomically."""
    if dst.exists() and os.path.samefile(src, dst):
        return
    tmp = Path(tempfile.mkdtemp(dir=dst.parent, prefix=".tmp")) / dst.name
    try:
        try:
            os.link(src, tmp)
        except OSError:
            shutil.copyfile(src, tmp)
        os.replace(tmp, dst)
    finally:
        shutil.rmtree(tmp.parent, ignore_errors=True)


def download_model_dir(source: str, refresh: bool = False) -> str:
    """A local model directory for a URL or HF repo id, through s3prl's download cache."""
    from s3prl.util.download import _urls_to_filepaths, get_dir

    urls = _remote_files(source)
    try:
        paths = _urls_to_filepaths(*urls.values(), refresh=refresh)
    except Exception as e:  # urllib/requests errors differ by scheme; one line that names the source
        raise ValueError(f"{source}: could not download the model directory ({type(e).__name__}: {e})") from None
    view = get_dir() / "s3prl_vgs" / hashlib.sha256(source.encode()).hexdigest()[:32]
    view.mkdir(parents=True, exist_ok=True)
    for name, path in zip(urls, paths):
        _place(path, view / name)
    return str(view)


def _local(name: str, ckpt) -> str:
    if not ckpt:
        raise ValueError(f"{name}: {_HOW}: a directory written by model.save(), vgs-export or vgs-convert")
    if not os.path.isdir(ckpt):
        raise FileNotFoundError(f"{ckpt}: not a model directory ({name} wants a directory with {CONFIG_NAME} "
                                f"and {WEIGHTS_NAME}; use {name.rsplit('_', 1)[0]}_url for a URL or repo id)")
    return str(ckpt)


def _url(name: str, ckpt, refresh: bool) -> str:
    if not ckpt:
        raise ValueError(f"{name}: pass ckpt=URL of a model directory or a Hugging Face repo id (org/name[@revision])")
    return download_model_dir(str(ckpt), refresh=refresh)


def _resolve(name: str, kind: str, ckpt, refresh: bool) -> str:
    if kind == "_local":
        return _local(name, ckpt)
    if kind == "_url":
        return _url(name, ckpt, refresh)
    if not ckpt:  # plain and _custom
        family = name[: -len(kind)] if kind else name
        raise ValueError(f"{name}: s3prl-vgs publishes no default checkpoint; {_HOW}, or a URL / Hugging Face "
                         f"repo id (also {family}_local, {family}_url)")
    ckpt = str(ckpt)
    if os.path.isdir(ckpt):
        return ckpt
    if not (_is_url(ckpt) or _REPO_ID.match(ckpt)):
        return _local(name, ckpt)
    try:
        return _url(name, ckpt, refresh)
    except ValueError as e:
        raise ValueError(f"{ckpt}: not a local model directory; as a URL / repo id: {e}") from None


def _make_entry(family: str, kind: str):
    name = family + kind

    def entry(ckpt=None, model_config=None, refresh=False, *args, **kwargs):
        return _UpstreamExpert(_resolve(name, kind, ckpt, refresh), model_config=model_config, **kwargs)

    entry.__name__ = entry.__qualname__ = name
    entry.__doc__ = f"s3prl-vgs {family} upstream ({kind.lstrip('_') or 'plain'} entry; see s3prl_vgs.upstream.hubconf)."
    return entry


ENTRIES = {family + kind: _make_entry(family, kind) for family in FAMILIES for kind in ("", "_local", "_url", "_custom")}
globals().update(ENTRIES)

__all__ = list(ENTRIES)

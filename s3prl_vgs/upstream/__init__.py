"""S3PRL glue: register our hub entries on ``s3prl.hub``.

Registration is a ``setattr`` on the imported hub module (s3prl has no plugin
mechanism); ``run_downstream.py -u``, ``s3prl.nn.S3PRLUpstream`` and ESPnet's
``S3prlFrontend`` all resolve names with ``getattr(hub, name)`` at call time.
"""

from __future__ import annotations

import importlib.abc
import importlib.util
import sys


def register(force: bool = False) -> list:
    """Add our entries to ``s3prl.hub``; returns the names. Idempotent.

    An entry that s3prl itself already defines (e.g. a future ``fast_vgs``)
    is left alone unless ``force``.
    """
    import s3prl.hub as hub

    from .hubconf import ENTRIES

    added = []
    for name, fn in ENTRIES.items():
        existing = getattr(hub, name, None)
        if existing is not None and existing is not fn and not getattr(existing, "__module__", "").startswith("s3prl_vgs") and not force:
            continue
        setattr(hub, name, fn)
        added.append(name)
    return added


class _HubHook(importlib.abc.MetaPathFinder):
    """Registers our entries right after ``s3prl.hub`` is first imported.

    Importing ``s3prl.hub`` loads every s3prl upstream (seconds), so
    ``import s3prl_vgs`` does not do it; it arranges for the registration to
    happen whenever, and in whichever process, s3prl.hub gets imported.
    """

    def find_spec(self, fullname, path=None, target=None):
        if fullname != "s3prl.hub":
            return None
        sys.meta_path.remove(self)  # find the real spec without recursing
        try:
            spec = importlib.util.find_spec(fullname)
        finally:
            sys.meta_path.insert(0, self)
        if spec is None or spec.loader is None:
            return spec
        loader = spec.loader
        original_exec = loader.exec_module

        def exec_module(module):
            original_exec(module)
            register()

        loader.exec_module = exec_module
        return spec


def install() -> None:
    """Make ``s3prl.hub`` carry our entries, now or as soon as it is imported."""
    if "s3prl.hub" in sys.modules:
        register()
    elif not any(isinstance(f, _HubHook) for f in sys.meta_path):
        sys.meta_path.insert(0, _HubHook())


__all__ = ["register", "install"]

"""S3PRL glue: register our hub entries on ``s3prl.hub``.

Registration is a ``setattr`` on the imported hub module (s3prl has no plugin
mechanism); ``run_downstream.py -u``, ``s3prl.nn.S3PRLUpstream`` and ESPnet's
``S3prlFrontend`` all resolve names with ``getattr(hub, name)`` at call time.
When it happens is decided by the import hook in the top-level module
``s3prl_vgs_startup`` (installed with a ``.pth`` start-up line, and also
installed by ``import s3prl_vgs``): right after ``s3prl.hub`` is imported.
"""

from __future__ import annotations

import sys


def register(hub=None, force: bool = False) -> list:
    """Add our entries to ``s3prl.hub``; returns the names added. Idempotent.

    An entry that s3prl itself already defines (e.g. a future ``fast_vgs``)
    is left alone unless ``force``: we never shadow an s3prl name.
    """
    if hub is None:
        import s3prl.hub as hub

    from .hubconf import ENTRIES

    added = []
    for name, fn in ENTRIES.items():
        existing = getattr(hub, name, None)
        ours = getattr(existing, "__module__", "").startswith("s3prl_vgs")
        if existing is not None and not ours and not force:
            continue
        if existing is not fn:
            setattr(hub, name, fn)
            added.append(name)
    return added


def install() -> None:
    """Make ``s3prl.hub`` carry our entries, now or as soon as it is imported."""
    try:
        from s3prl_vgs_startup import install as install_hook
    except ImportError:  # running from a source tree that was never installed
        if "s3prl.hub" in sys.modules:
            register(sys.modules["s3prl.hub"])
        return
    install_hook()


__all__ = ["register", "install"]

"""Start-up hook: s3prl-vgs hub entries in every interpreter, without ``import s3prl_vgs``.

``s3prl_vgs_startup.pth`` (installed into site-packages by ``pip install`` or
``pip install -e .``) runs ``install()`` when Python starts. That only puts a
finder on ``sys.meta_path``; nothing of s3prl, torch or s3prl_vgs is imported.
The finder acts on two imports and steps aside for every other one:

* ``s3prl.hub``: right after s3prl's module runs, our entries are added to it
  (``s3prl_vgs.upstream.register``: idempotent, never replaces an s3prl name).
  So stock ``run_downstream.py -u fast_vgs_local``, ``s3prl.nn.S3PRLUpstream``
  and ESPnet's ``S3prlFrontend`` (also in spawned DDP children) find them.
* ``s3prl.downstream.runner``: s3prl's legacy runner saves ``argparse.Namespace``
  in its checkpoints and ``torch.load``s them with torch's weights-only default
  (torch >= 2.6); we admit exactly that one class to the weights-only
  allow-list, in processes that run that runner, so ``-e`` works.

This file must stay tiny and import nothing heavy: it runs at every start-up.
Set ``S3PRL_VGS_NO_STARTUP=1`` to switch the hook off.
"""

from __future__ import annotations

import os
import sys

HUB = "s3prl.hub"
RUNNERS = ("s3prl.downstream.runner", "s3prl.run_downstream")


def admit_s3prl_checkpoints() -> None:
    """Let weights-only ``torch.load`` read s3prl runner checkpoints (``Args`` is a Namespace)."""
    import argparse

    import torch.serialization

    if argparse.Namespace not in torch.serialization.get_safe_globals():
        torch.serialization.add_safe_globals([argparse.Namespace])


def _after_hub(module) -> None:
    try:
        from s3prl_vgs.upstream import register
    except ImportError:  # s3prl_vgs uninstalled but this hook left behind: stay silent
        return
    register(module)


def _after_runner(module) -> None:
    admit_s3prl_checkpoints()


_ACTIONS = {HUB: _after_hub, **{name: _after_runner for name in RUNNERS}}


class S3PRLImportHook:
    """Runs an action right after s3prl's own module code for the names in ``_ACTIONS``.

    A ``sys.meta_path`` finder by protocol (``find_spec``); not derived from
    ``importlib.abc.MetaPathFinder``, whose import costs more than this whole hook.
    """

    def find_spec(self, fullname, path=None, target=None):
        action = _ACTIONS.get(fullname)
        if action is None:
            return None
        # Find the real spec with every other finder (we are skipped while asking).
        finders = [f for f in sys.meta_path if not isinstance(f, S3PRLImportHook)]
        spec = None
        for finder in finders:
            find = getattr(finder, "find_spec", None)
            spec = find(fullname, path, target) if find else None
            if spec is not None:
                break
        if spec is None or spec.loader is None or not hasattr(spec.loader, "exec_module"):
            return spec
        original = spec.loader.exec_module

        def exec_module(module, _original=original, _action=action):
            _original(module)
            _action(module)

        spec.loader.exec_module = exec_module
        return spec


def install() -> None:
    """Idempotent: one hook per interpreter; acts at once for modules already imported."""
    if not any(isinstance(f, S3PRLImportHook) for f in sys.meta_path):
        sys.meta_path.insert(0, S3PRLImportHook())
    for name, action in _ACTIONS.items():
        if name in sys.modules:
            action(sys.modules[name])


def startup() -> None:
    """What the ``.pth`` line calls at interpreter start-up."""
    if not os.environ.get("S3PRL_VGS_NO_STARTUP"):
        install()

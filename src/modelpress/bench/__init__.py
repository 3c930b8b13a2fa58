"""The benchmark: compress a model with each method, save, load back and measure every row
(``runner``), and write the reports (``report``).

This package is also callable: ``modelpress.bench(model, methods, data=..., eval_fn=...)``
is ``bench.user.bench``, the programmatic bench for a user's own module and data.
"""

from __future__ import annotations

import sys
import types
from typing import Any


class _CallableModule(types.ModuleType):
    """``modelpress.bench(...)`` runs ``bench.user.bench``; ``modelpress.bench.runner`` and
    the other submodules stay reachable as attributes."""

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        from .user import bench

        return bench(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule

"""rasa-omnidesk under a name no package of a bot can hide.

The connector lives in ``connectors.omnidesk``, and ``connectors`` is a
namespace package. A bot that keeps its own channels in a regular
``connectors/`` package (one with an ``__init__.py``) hides it: Python takes
the bot's ``connectors`` and looks no further, so Rasa says "Failed to find
input channel class for 'connectors.omnidesk.OmnideskInput'" and the action
server "No module named 'connectors.omnidesk'". Importing this module first
joins the installed ``connectors/omnidesk`` to the bot's ``connectors``, as
``pkgutil.extend_path`` would (the bot's own modules still come first), and
offers the two names a bot uses: ``rasa_omnidesk.OmnideskInput`` in
credentials.yml and ``rasa_omnidesk.ActionEscalateToHuman`` in its actions
package. Both are imported lazily, as ``connectors.omnidesk`` does.
"""

import importlib
import os
from typing import Any

__all__ = ["ActionEscalateToHuman", "OmnideskInput"]

# Where this module is installed; the wheel puts connectors/omnidesk beside it.
_BESIDE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _join_connectors() -> None:
    try:
        importlib.import_module("connectors.omnidesk")
        return
    except ModuleNotFoundError as error:
        if error.name not in ("connectors", "connectors.omnidesk"):
            raise
    import connectors  # the bot's own, which hides the installed one

    path = getattr(connectors, "__path__", None)
    if not isinstance(path, list):
        raise ImportError(
            f"{getattr(connectors, '__file__', 'connectors')} is a module, not a package, "
            "and hides rasa-omnidesk's connectors.omnidesk: rename it, or make it a "
            "package (a connectors/ folder)"
        )
    installed = os.path.join(_BESIDE, "connectors")
    if installed not in path:
        path.append(installed)
    importlib.import_module("connectors.omnidesk")


_join_connectors()


def __getattr__(name: str) -> Any:
    if name == "OmnideskInput":
        from connectors.omnidesk.channel.input import OmnideskInput

        return OmnideskInput
    if name == "ActionEscalateToHuman":
        from connectors.omnidesk.action.escalate_to_human import ActionEscalateToHuman

        return ActionEscalateToHuman
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

"""Where Rasa Open Source 3.6 and Rasa Pro 3.x differ, in one place.

The connector runs on both lines: Rasa Open Source 3.6.21 (Sanic 21.12,
rasa-sdk 3.6) and Rasa Pro 3.x (Sanic 22.12 to 25, rasa-sdk of the same
number). Every difference the code meets is bridged here, each by a shim that
says which version it is for, so the rest of the connector reads as if there
were one Rasa. Nothing here patches Rasa: each shim looks at what the installed
Rasa has, never at its version number.

Rasa is imported inside the shims, not at the top: the action server has
rasa_sdk but no rasa, and its tests use ``action_result`` from here.
"""

from typing import Any, Callable, Dict, Optional, Type, TypeVar

__all__ = [
    "action_result",
    "attach_tracker_state",
    "in_memory_tracker_store",
    "pass_on_output_members",
    "read_yaml",
    "socketio_server",
]

T = TypeVar("T")


# -- socket.io ---------------------------------------------------------------------


def socketio_server(channel: Any) -> Any:
    """The socket.io ``AsyncServer`` of a ``SocketIOInput``; None before its blueprint is built.

    Rasa 3.6 and Rasa Pro up to 3.13 keep it in ``channel.sio``; Rasa Pro 3.14
    renamed the attribute to ``channel.sio_server``.
    """
    for attribute in ("sio_server", "sio"):
        server = getattr(channel, attribute, None)
        if server is not None:
            return server
    return None


# -- Sanic -------------------------------------------------------------------------

# Listeners are written ``async def listener(app, _loop=None)``: Sanic 21.12
# (Rasa 3.6) calls every listener with ``(app, loop)``; Sanic 22.9 on calls it
# with ``(app)`` first and only falls back to ``(app, loop)`` with a deprecation
# warning (Sanic 25; the fallback goes in 26.6). A loop argument with a default
# is the one form both accept without a warning.


# -- output channels ---------------------------------------------------------------


def pass_on_output_members(cls: Type[T]) -> Type[T]:
    """Give a wrapping output channel every public member of Rasa's ``OutputChannel``.

    For Rasa Pro 3.x, whose ``OutputChannel`` grew members Rasa 3.6's lacks:
    ``hangup``, the streaming calls (``supports_streaming``,
    ``send_response_chunk_start`` / ``_chunk`` / ``_end``), the response
    writer, the ``notify_message_processing_*`` calls and more. A wrapper that
    inherits them would answer them itself, as the plain base class, and the
    wrapped channel would never hear of them. Each member the installed
    ``OutputChannel`` has and ``cls`` does not define is passed on to
    ``self.inner``: methods are called on it, properties read from it. On
    Rasa 3.6 the wrapper defines every public member already, so nothing is added.
    """
    from rasa.core.channels.channel import OutputChannel

    seen = set(vars(cls))
    for klass in OutputChannel.__mro__:
        if klass is object:
            continue
        for name, member in vars(klass).items():
            if name.startswith("_") or name in seen:
                continue
            seen.add(name)
            if isinstance(member, property):
                setattr(cls, name, property(_read_from_inner(name)))
            elif callable(member) and not isinstance(member, (classmethod, staticmethod)):
                setattr(cls, name, _call_on_inner(name))
    return cls


def _read_from_inner(name: str) -> Callable[[Any], Any]:
    def read(self: Any) -> Any:
        return getattr(self.inner, name)

    read.__name__ = name
    return read


def _call_on_inner(name: str) -> Callable[..., Any]:
    def call(self: Any, *args: Any, **kwargs: Any) -> Any:
        return getattr(self.inner, name)(*args, **kwargs)

    call.__name__ = name
    return call


def attach_tracker_state(wrapper: Any, inner: Any, tracker: Any) -> None:
    """Rasa Pro 3.x: hand the tracker to the wrapped output, and show its state on the wrapper.

    Pro calls ``attach_tracker_state`` on the output channel of every turn; the
    wrapped output reads its own ``tracker_state`` (socket.io's silence timeout,
    for one) and Rasa reads the wrapper's. The state is computed once, by the
    wrapped output. Rasa 3.6 never calls it.
    """
    attach = getattr(inner, "attach_tracker_state", None)
    if callable(attach):
        attach(tracker)
    wrapper._tracker = tracker
    wrapper.tracker_state = getattr(inner, "tracker_state", None)


# -- stores and YAML ---------------------------------------------------------------


def in_memory_tracker_store(domain: Any) -> Any:
    """Rasa's ``InMemoryTrackerStore`` for ``domain``.

    Rasa 3.6: ``rasa.core.tracker_store``; Rasa Pro 3.x:
    ``rasa.core.tracker_stores.tracker_store``.
    """
    try:
        from rasa.core.tracker_stores.tracker_store import InMemoryTrackerStore
    except ImportError:
        from rasa.core.tracker_store import InMemoryTrackerStore
    return InMemoryTrackerStore(domain)


def read_yaml(content: str) -> Any:
    """Rasa's own YAML reading, with its ``${VAR}`` expansion.

    Rasa 3.6: ``rasa.shared.utils.io.read_yaml``; Rasa Pro 3.x:
    ``rasa.shared.utils.yaml.read_yaml``.
    """
    try:
        from rasa.shared.utils.yaml import read_yaml as read
    except ImportError:
        from rasa.shared.utils.io import read_yaml as read
    return read(content)


# -- rasa_sdk ----------------------------------------------------------------------


def action_result(result: Any) -> Optional[Dict[str, Any]]:
    """What ``ActionExecutor.run`` returned, as the JSON body the action server answers.

    rasa-sdk 3.6 returns that dict; rasa-sdk of Rasa Pro 3.x returns an
    ``ActionExecutorRunResult`` (pydantic), which the server dumps.
    """
    if result is None:
        return None
    dump = getattr(result, "model_dump", None)
    if callable(dump):
        return dict(dump())
    return dict(result)

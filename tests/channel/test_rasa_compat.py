"""What the installed Rasa line (3.6 or Pro) sees of the channel: no deprecations, no missing parts."""

import warnings

from rasa.core.channels.socketio import SocketIOInput

from connectors.omnidesk.channel import rasa_compat
from tests.channel.conftest import channel_server


async def test_sanic_starts_and_stops_the_channel_without_a_listener_deprecation() -> None:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        async with channel_server({"socketio": {"session_persistence": True}}) as server:
            assert server.channel.relay is not None
    listener_warnings = [w for w in caught if "listener" in str(w.message).lower()]
    assert listener_warnings == []


async def test_the_socket_io_server_is_found_under_either_name() -> None:
    async with channel_server({"socketio": {}}) as server:
        [socketio] = server.channel.customer_channels
        assert isinstance(socketio, SocketIOInput)
        assert rasa_compat.socketio_server(socketio) is not None


def test_the_action_result_reads_as_the_json_body_on_either_rasa_sdk() -> None:
    class Dumped:
        def model_dump(self) -> dict:  # type: ignore[type-arg]
            return {"events": [], "responses": []}

    assert rasa_compat.action_result(Dumped()) == {"events": [], "responses": []}
    assert rasa_compat.action_result({"events": []}) == {"events": []}
    assert rasa_compat.action_result(None) is None

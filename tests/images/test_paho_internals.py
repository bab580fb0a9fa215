"""bus/fast_client.py subclasses paho's Client and reaches into its internals; this
test names each one it relies on, so a paho release that changes them fails here with a
clear message instead of as a silent slowdown or a stalled agent. pyproject.toml pins
paho-mqtt to the range this passed with; widen the pin only after it passes again."""

from __future__ import annotations

import collections
import inspect
import tomllib
from importlib.metadata import version

import paho.mqtt.client as mqtt
from packaging.requirements import Requirement

from tests.manifests.rendering import REPO


def _source(name: str) -> str:
    member = getattr(mqtt.Client, name, None)
    assert member is not None, f"paho-mqtt {version('paho-mqtt')}: Client.{name} is gone"
    return inspect.getsource(member)


def test_installed_paho_is_in_the_pinned_range() -> None:
    deps = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    req = next(Requirement(d) for d in deps if Requirement(d).name == "paho-mqtt")
    assert req.specifier, "paho-mqtt must be pinned (bus/fast_client.py uses internals)"
    assert req.specifier.contains(version("paho-mqtt")), (req, version("paho-mqtt"))


def test_the_internals_the_fast_client_uses_exist() -> None:
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="internals")
    v = version("paho-mqtt")
    # State it reads and writes.
    assert client._sock is None, f"paho {v}: Client._sock (the socket) changed"
    assert isinstance(client._in_packet, dict) and client._in_packet.get("command") == 0, (
        f"paho {v}: Client._in_packet['command'] no longer 0 between packets"
    )
    assert isinstance(client._out_packet, collections.deque), f"paho {v}: _out_packet not a deque"
    for attr in ("_last_msg_out", "_last_bytes_received"):
        assert isinstance(getattr(client, attr, None), float), f"paho {v}: Client.{attr} is gone"
    # Methods it overrides or calls, with the signatures it uses.
    params = list(inspect.signature(mqtt.Client._sock_recv).parameters)
    assert params == ["self", "bufsize"], f"paho {v}: _sock_recv{params}"
    assert "max_packets" in inspect.signature(mqtt.Client.loop_read).parameters
    assert list(inspect.signature(mqtt.Client.loop_write).parameters) == ["self"]
    assert list(inspect.signature(mqtt.Client.reconnect).parameters) == ["self"]
    for name in ("MQTT_ERR_SUCCESS", "MQTT_ERR_CONN_LOST"):
        assert hasattr(mqtt.MQTTErrorCode, name), f"paho {v}: MQTTErrorCode.{name} is gone"


def test_paho_still_routes_through_the_overridden_hooks() -> None:
    """The overrides only work if paho's own code goes through them."""
    v = version("paho-mqtt")
    read = _source("_packet_read")
    assert "self._sock_recv(" in read, f"paho {v}: _packet_read no longer calls _sock_recv"
    assert '"command": 0' in read or "'command': 0" in read, (
        f"paho {v}: _packet_read no longer resets _in_packet to command 0"
    )
    keepalive = _source("_check_keepalive")
    for attr in ("_last_msg_out", "_last_bytes_received"):
        assert attr in keepalive, f"paho {v}: keep-alive no longer reads {attr}"
    assert "_packet_read" in _source("loop_read"), f"paho {v}: loop_read bypasses _packet_read"
    assert "_out_packet" in _source("_packet_write"), f"paho {v}: _packet_write changed"

"""Without mosquitto the demo scales its load to the embedded amqtt broker and says so."""

from __future__ import annotations

import pytest

from models.errors import ConfigError
from simulators.report import broker_line, summary_rows
from simulators.scenario import apply_overrides, load_scenario, pin_broker
from simulators.settings import SimSettings


def test_demo_on_amqtt_runs_the_amqtt_load() -> None:
    demo = load_scenario("demo")
    assert demo.amqtt is not None and demo.amqtt.sensors < demo.sensors.count
    pinned = pin_broker(demo, None)  # auto, and mosquitto is not on PATH
    assert pinned.stack.broker_kind == "amqtt"
    assert pinned.sensors.count == demo.amqtt.sensors
    assert pinned.amqtt is not None and pinned.amqtt.scaled_from == demo.sensors.count
    assert pin_broker(pinned, None) == pinned, "pinning twice scales once"


def test_demo_on_mosquitto_is_unchanged() -> None:
    demo = load_scenario("demo")
    pinned = pin_broker(demo, "/usr/sbin/mosquitto")
    assert pinned.stack.broker_kind == "mosquitto"
    assert pinned.sensors.count == demo.sensors.count and pinned.amqtt == demo.amqtt


def test_explicit_sensors_win_over_the_amqtt_load() -> None:
    demo = apply_overrides(load_scenario("demo"), SimSettings(sensors=100, broker_kind="amqtt"))
    pinned = pin_broker(demo, "/usr/sbin/mosquitto")
    assert pinned.stack.broker_kind == "amqtt" and pinned.sensors.count == 100


def test_explicit_mosquitto_without_it_is_an_error() -> None:
    sc = apply_overrides(load_scenario("demo"), SimSettings(broker_kind="mosquitto"))
    with pytest.raises(ConfigError):
        pin_broker(sc, None)


def test_the_summary_table_says_which_broker_in_its_first_line() -> None:
    figures = {
        "broker": {"kind": "amqtt", "sensors": 42, "scaled_from": 252},
        "latency_ms": {"p50": 1.0, "p95": 2.0, "p99": 3.0, "max": 4.0},
        "loss": {"expected": 10, "received": 10, "missing": 0, "duplicates": 0},
        "readings_published": 100,
        "results": 10,
        "slo_ms": 100.0,
        "slo_attainment": 1.0,
        "agent_deadline_met": 1.0,
        "offload_share": 0.0,
        "throughput_per_s": 10.0,
        "versions": {},
    }
    first = summary_rows(figures)[0]
    assert first == (
        "broker",
        "embedded amqtt (mosquitto not used): numbers are not comparable to the README's; "
        "load scaled to 42 of 252 sensors; install mosquitto for the full load",
    )
    assert broker_line({"kind": "mosquitto"}) == "mosquitto"

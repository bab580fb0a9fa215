"""fleet-sim CLI: flags map 1:1 to SimSettings, env works, scenarios load and override."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from simulators.capacity import capacity_figures, describe
from simulators.cli import build_parser, main
from simulators.compare import SECTION, markdown, replace_section
from simulators.edge_device import EdgeDevice
from simulators.scenario import apply_overrides, builtin_names, load_scenario
from simulators.settings import SimSettings


def test_every_flag_maps_to_a_settings_field() -> None:
    parser = build_parser()
    flags = {a.dest for a in parser._actions if a.option_strings and a.dest != "help"}
    assert flags == set(SimSettings.model_fields) - {"scenario"}
    for action in parser._actions:
        for opt in action.option_strings:
            if opt.startswith("--") and opt != "--help":
                assert opt == "--" + action.dest.replace("_", "-")


def test_env_prefix_and_flags_override_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SIM_AGENTS", "7")
    assert SimSettings().agents == 7
    ns = build_parser().parse_args(["run", "ci", "--agents", "2", "--live", "false"])
    assert ns.agents == 2 and ns.live is False and ns.scenario == "ci"


def test_builtin_scenarios_load_and_overrides_apply() -> None:
    names = builtin_names()
    assert {"ci", "demo", "compare"} <= set(names)
    for name in names:
        assert load_scenario(name).name == name
    demo = load_scenario("demo")
    assert demo.stack.agents == 3 and 250 <= demo.sensors.count <= 350
    assert demo.duration_s == 60 and demo.rollouts and demo.sensors.shape.kind == "burst"
    settings = SimSettings(agents=5, policy="cloud-only", wan_delay_ms=7, duration_s=3, sensors=9)
    sc = apply_overrides(demo, settings)
    assert (sc.stack.agents, sc.stack.policy, sc.stack.wan.delay_ms) == (5, "cloud-only", 7)
    assert sc.duration_s == 3 and sc.sensors.count == 9
    assert demo.stack.agents == 3  # the original is untouched


def test_edge_table_sets_every_agents_device_and_capacity(tmp_path: Path) -> None:
    path = tmp_path / "edge.toml"
    path.write_text(
        'name = "e"\n[stack]\nagents = 2\nmax_batch = 4\n'
        "[edge]\nemulate_ms_per_batch = 2\nemulate_ms_per_item = 8\nworkers = 2\n"
        "[sensors]\ncount = 100\nrate_hz = 10\n"
        'shape = { kind = "burst", at = [5], length_s = 2, multiplier = 3 }\n'
    )
    sc = load_scenario(path)
    edge = sc.stack.edge
    assert (edge.emulate_ms_per_batch, edge.emulate_ms_per_item, edge.workers) == (2, 8, 2)
    assert edge.capacity_per_s(1) == 200.0 and edge.capacity_per_s(4) == 2 * 4000 / 34
    c = capacity_figures(sc, hop=10)
    assert c["offered_per_s_base"] == 50.0 and c["offered_per_s_peak"] == 150.0
    assert c["peak_over_capacity"] == 150.0 / (8000 / 34)
    assert "200-235 windows/s" in describe(c) and "0.6x capacity at peak" in describe(c)
    assert "--emulate-ms-per-item" in edge.argv() and EdgeDevice().capacity_per_s(4) is None
    path.write_text(path.read_text() + "[stack.edge]\nworkers = 1\n")
    with pytest.raises(ValueError, match="edge"):
        load_scenario(path)
    # The CI and demo bursts exceed local capacity through the emulated device, no CPU hog.
    for name in ("ci", "demo", "compare"):
        builtin = load_scenario(name)
        assert not [f for f in builtin.faults if f.kind == "cpu-hog"]
        assert capacity_figures(builtin, hop=10)["peak_over_capacity"] > 1.5, name


def test_bad_scenario_is_a_clear_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text('name = "x"\n[stack]\nagents = 0\n')
    with pytest.raises(ValueError, match="agents"):
        load_scenario(bad)
    assert main(["run", "no-such-scenario"]) == 1
    assert "built-in scenarios" in capsys.readouterr().err


def test_list_command_runs_as_a_module() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "simulators", "list"], capture_output=True, text=True, check=True
    ).stdout.split()
    assert "demo" in out and "ci" in out


def test_benchmarks_section_is_replaced_in_place(tmp_path: Path) -> None:
    path = tmp_path / "benchmarks.md"
    path.write_text("# Benchmarks\n\n## Edge agent\n\nkeep me\n\n" + SECTION + "\n\nold\n")
    body = markdown(load_scenario("compare"), [["local-only"] + ["1"] * 11], "fleet-sim compare")
    replace_section(path, body)
    replace_section(path, body)
    text = path.read_text()
    assert "keep me" in text and "old" not in text
    assert text.count(SECTION) == 1 and "| local-only |" in text

"""Acknowledged readings delivered out of order are put back in order (edge_agent.ingest.reorder).

The case from the reliability suite: a broker restoring a persistent session delivered a
block of each stream's readings after newer ones; the agent took the newer ones as a gap
and dropped the block as late, losing its windows although every reading was acknowledged.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from edge_agent.durability.stream_state import load_streams, save_streams
from edge_agent.ingest.core import AgentCore
from models.manifest import Manifest
from models.repository import ModelRepository
from tests.edge_agent.test_journal import ROWS, TOPIC, _core, _crash, _open, _payload, _taken

# motion-edge: windows of 100 rows every 10.
IN_ORDER = [99, 109, 119, 129, 139, 149]


@pytest.fixture(scope="module")
def manifest(built_models: Any) -> Manifest:
    return ModelRepository(built_models.repository, check=False).manifest("motion-edge")


def _send(core: AgentCore, seqs: list[int], arrival: float, acked: bool = True) -> None:
    for seq in seqs:
        if acked:
            core.ingest_acked(TOPIC, _payload(seq), arrival)
        else:
            core.ingest(TOPIC, _payload(seq), arrival)


def _check(windows: list[Any], seqs: list[int]) -> None:
    assert [w.seq for w in windows] == seqs
    for w in windows:
        np.testing.assert_array_equal(w.window, ROWS[w.seq - 99 : w.seq + 1])


def test_a_block_delivered_after_newer_readings_is_put_back_in_order(manifest: Manifest) -> None:
    core = _core(manifest)
    now = time.monotonic()
    order = [*range(100), *range(140, 150), *range(100, 140)]  # 100..139 come last
    _send(core, order, now)
    _check(sorted(_taken(core), key=lambda w: w.seq), IN_ORDER)
    st = core.stats
    assert (st.gaps, st.missing, st.late, st.duplicates) == (0, 0, 0, 0)
    assert st.held == 10 and st.reordered == 40  # before: 40 late, their windows lost
    assert not core.streams[TOPIC].holding()


def test_qos0_readings_are_never_held(manifest: Manifest) -> None:
    """Nothing redelivers a QoS-0 reading: a gap is a loss, waiting would add latency only."""
    core = _core(manifest)
    now = time.monotonic()
    _send(core, [*range(100), *range(140, 150), *range(100, 140)], now, acked=False)
    assert core.stats.held == 0 and core.stats.gaps == 1 and core.stats.late == 40


def test_missing_readings_that_never_come_open_the_gap_after_the_wait(manifest: Manifest) -> None:
    core = _core(manifest)
    now = time.monotonic()
    _send(core, list(range(100)), now)
    _send(core, list(range(110, 310)), now + 0.01)  # 100..109 were really lost
    assert [w.seq for w in _taken(core)] == [99]
    core.release_expired(now + 0.01 + core.reorder_s / 2)
    assert not _taken(core) and core.stats.gaps == 0  # still waiting
    core.release_expired(now + 0.02 + core.reorder_s)  # the tick after the wait
    got = _taken(core)
    # A new run starts at 110: its first window ends at 209, then every 10.
    assert [w.seq for w in got] == list(range(209, 310, 10))
    assert core.stats.gaps == 1 and core.stats.missing == 10 and core.stats.reordered == 0
    np.testing.assert_array_equal(got[0].window, ROWS[110:210])
    _send(core, [105], now + 1)  # the lost one after all: too late now
    assert core.stats.late == 1 and not _taken(core)


def test_held_rows_are_bounded(manifest: Manifest) -> None:
    core = _core(manifest)
    core.reorder_rows = 50
    now = time.monotonic()
    _send(core, [*range(100), *range(110, 170)], now)  # 60 rows held > 50: stop waiting
    assert core.stats.gaps == 1 and not core.streams[TOPIC].holding()
    assert [w.seq for w in _taken(core)] == [99]  # 110..169 is a new run, not a window yet


def test_a_redelivered_held_reading_is_a_duplicate(manifest: Manifest) -> None:
    core = _core(manifest)
    now = time.monotonic()
    _send(core, [*range(100), 120, 120, *range(100, 120)], now)
    assert core.stats.duplicates == 1 and core.stats.held == 1 and core.stats.reordered == 20
    assert core.streams[TOPIC].next_seq == 121


def test_disabled_with_zero_wait(manifest: Manifest) -> None:
    core = _core(manifest)
    core.reorder_s = 0.0
    _send(core, [*range(100), *range(140, 150), *range(100, 140)], time.monotonic())
    assert core.stats.held == 0 and core.stats.gaps == 1 and core.stats.late == 40


def test_held_readings_survive_a_crash_through_the_journal(
    manifest: Manifest, tmp_path: Path
) -> None:
    """Held readings were acknowledged: after kill -9 the journal feeds them again, also
    once a compaction has dropped the segment that recorded them."""
    core1 = _core(manifest)
    core1.reorder_s = 1000.0  # the journal's clock is the arrival times: jump 100 s ahead
    j1, _ = _open(core1, tmp_path / "j", lag_s=0.0, compact_s=50.0)
    now = time.monotonic()
    _send(core1, list(range(100)), now)
    _send(core1, list(range(140, 150)), now + 0.001)  # held
    _send(core1, [150], now + 100.0)  # past compact_s: the new segment's snapshot holds them
    assert len(list((tmp_path / "j").glob("seg-*.wal"))) == 1
    assert len(core1.streams[TOPIC].held()) == 11
    _crash(j1)

    core2 = _core(manifest)
    _open(core2, tmp_path / "j", lag_s=0.0)
    assert len(core2.streams[TOPIC].held()) == 11 and core2.stats.gaps == 0
    _taken(core2)  # the window ending at 99, re-emitted (never answered)
    _send(core2, list(range(100, 140)), time.monotonic())  # the block, redelivered late
    _check(_taken(core2), [109, 119, 129, 139, 149])
    assert core2.stats.gaps == 0 and core2.stats.late == 0


def test_held_readings_survive_a_graceful_restart(manifest: Manifest, tmp_path: Path) -> None:
    core1 = _core(manifest)
    now = time.monotonic()
    _send(core1, [*range(100), *range(140, 150)], now)
    _taken(core1)
    save_streams(core1, tmp_path / "streams.npz")

    core2 = _core(manifest)
    assert load_streams(core2, tmp_path / "streams.npz") == 1
    assert [h.first for h in core2.streams[TOPIC].held()] == list(range(140, 150))
    _send(core2, list(range(100, 140)), time.monotonic())
    _check(_taken(core2), [109, 119, 129, 139, 149])
    assert core2.stats.gaps == 0 and core2.stats.late == 0


def test_a_layout_swap_drops_held_readings_of_the_old_layout(manifest: Manifest) -> None:
    core = _core(manifest)
    now = time.monotonic()
    _send(core, [*range(100), *range(110, 211)], now)  # 101 held: a window's worth
    _taken(core)
    core.hop_override = 5
    core.use_manifest(manifest)  # another hop: a new layout, streams start over
    core.release_expired(now + 10 * core.reorder_s)
    assert not _taken(core) and core.stats.gaps == 0  # nothing of the old layout emitted
    _send(core, list(range(300, 400)), now + 11 * core.reorder_s)  # the new layout's stream
    assert [w.seq for w in _taken(core)] == [399]

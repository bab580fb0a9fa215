"""Sliding windows per stream and the sequence rules (duplicates, late readings, gaps)."""

from __future__ import annotations

import numpy as np

from bus.topics import StreamId
from edge_agent.ingest.windows import StreamWindow

SID = StreamId("s", "d", "x")


def _stream(window: int = 5, hop: int = 2) -> StreamWindow:
    return StreamWindow(SID, window, hop, 2, 0)


def _feed(st: StreamWindow, seqs: list[int]) -> list[tuple[int, np.ndarray]]:
    out = []
    for s in seqs:
        kind, _ = st.classify(s, 1)
        if kind == "gap":
            st.reset(s, 1)
        elif kind in ("dup", "late"):
            continue
        elif st.next_seq is None:
            st.reset(s, 1)
        win = st.push_row([float(s), -float(s)], s)
        if win is not None:
            out.append((s, win))
    return out


def test_window_then_every_hop_with_exact_content() -> None:
    st = _stream()
    wins = _feed(st, list(range(12)))
    assert [s for s, _ in wins] == [4, 6, 8, 10]
    for s, w in wins:
        np.testing.assert_array_equal(w[:, 0], np.arange(s - 4, s + 1, dtype=np.float32))


def test_buffer_wraps_many_times() -> None:
    st = _stream(window=3, hop=1)
    wins = _feed(st, list(range(1000)))
    assert len(wins) == 998
    np.testing.assert_array_equal(wins[-1][1][:, 0], [997, 998, 999])


def test_duplicates_late_and_gaps() -> None:
    st = _stream()
    _feed(st, [0, 1, 2, 3])
    assert st.classify(2, 1) == ("dup", 0)
    assert st.classify(4, 1) == ("ok", 0)
    assert st.classify(7, 1) == ("gap", 3)
    _feed(st, [7])  # gap resets the run at 7
    assert st.classify(5, 1) == ("late", 0)
    assert st.classify(7, 1) == ("dup", 0)
    wins = _feed(st, [8, 9, 10, 11])
    assert [s for s, _ in wins] == [11]  # a full window of consecutive samples after the gap


def test_export_restore_continues_the_window() -> None:
    a = _stream()
    _feed(a, list(range(7)))
    b = _stream()
    b.restore(*a.export())
    assert [s for s, _ in _feed(b, [7, 8])] == [8]
    assert [s for s, _ in _feed(a, [7, 8])] == [8]

"""Inline batches: cheap local batches run on the MQTT thread itself.

For a cheap model, skipping three thread hand-offs (event loop, executor, back) is worth
more than overlapping compute with reading: on a busy node every hand-off waits for the
scheduler. After each drained socket read the MQTT thread calls :func:`run_inline`; the
dispatcher decides per batch (``Dispatcher.try_inline``) and declines expensive batches,
remote routes and anything while the loop has a backlog (EDF order is kept there).
During a long read :func:`flush_waited` answers windows that have already waited
``flush_after_s``: without it, a window completed at the start of a 256-packet read
waits for the whole read to be parsed (several ms on a busy node).
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from edge_agent.core import AgentCore

log = logging.getLogger(__name__)


def run_inline(core: AgentCore) -> None:
    """Batch what the read produced: inline where the dispatcher agrees, else the loop."""
    pending = core._pending
    dispatcher = core.dispatcher
    if not core.inline or not pending or dispatcher is None:
        return
    if core._wake:
        return  # the loop is already draining: keep EDF order there
    limit = dispatcher.max_batch
    while pending:
        batch = [pending.popleft() for _ in range(min(limit, len(pending)))]
        try:
            ran = dispatcher.try_inline(batch)
        except Exception:  # a bug guard: the loop path still answers every request
            log.exception("inline batch failed; handing it to the dispatcher")
            ran = False
        if not ran:
            pending.extendleft(reversed(batch))
            core.wake()
            return


def flush_waited(core: AgentCore) -> None:
    """Run the pending batches once the oldest window has waited ``flush_after_s``."""
    pending = core._pending
    if core.inline and pending and time.monotonic() - pending[0].arrival >= core.flush_after_s:
        run_inline(core)

"""The task scheduler process: ``python -m corral.controller.scheduler``.

A thin entry point around :class:`~corral.controller.scheduler_shell.SchedulerShell` (the socket
shell, which drives :class:`~corral.controller.scheduling.SchedulerCore`). The controller starts
it with its settings as one JSON line on stdin; it answers with one JSON line
``{"task": port, "task_engine": port}``, and when it stops writes one more,
``{"counts": {...}}`` (tasks submitted, completed, failed, and messages rejected). It stops on
SIGTERM, at once (the signal wakes its loop), and when its controller is gone (the
controller's pidfd is a reader on the same loop: :func:`corral.lifetime.watch_owner`); SIGINT
is the controller's to decide on.
"""

from __future__ import annotations

import json
import logging
import signal
import sys

from corral import heap
from corral.controller.scheduler_shell import SchedulerShell
from corral.lifetime import watch_owner


def main() -> int:
    """Run the scheduler until SIGTERM or its controller is gone; exit status 0."""
    settings = json.loads(sys.stdin.readline())
    logging.basicConfig(
        level=settings.get("log_level") or logging.WARNING,
        format="%(asctime)s %(name)s %(levelname)s %(message)s",
    )
    scheduler = SchedulerShell(settings)
    scheduler.loop.handle_signals((signal.SIGTERM,), lambda _signum: scheduler.loop.stop())
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the controller decides when we stop
    watch_owner(scheduler.loop, settings.get("parent_pid"), scheduler.loop.stop)
    sys.stdout.write(
        json.dumps({"task": scheduler.client_port, "task_engine": scheduler.engine_port}) + "\n"
    )
    sys.stdout.flush()
    heap.settle(heap.SCHEDULER_YOUNG_THRESHOLD)
    try:
        scheduler.loop.run()
    finally:
        scheduler.close()
        counts = {
            **scheduler.counts,
            "rejected": scheduler.loop.rejected,
            "sends": scheduler.sends(),
            "packing": scheduler.core.packing_counts(),
        }
        try:  # the controller reads this last line into its stats file
            sys.stdout.write(json.dumps({"counts": counts}) + "\n")
            sys.stdout.flush()
        except OSError:  # the controller is gone
            pass
    return 0


if __name__ == "__main__":
    sys.exit(main())

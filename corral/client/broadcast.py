"""BroadcastView: ipyparallel's view that sends one request to many engines.

ipyparallel routes it through a tree of broadcast schedulers. corral's MUX already fans a
request out to engines without copying its buffers (the packed call is shared by every
per-engine message), so a BroadcastView is a DirectView with ipyparallel's constructor: the
same results, in target order, with the same errors. ``is_coalescing`` is accepted and
recorded; results are always gathered per engine, in target order.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from corral.client.view import DirectView

if TYPE_CHECKING:
    from corral.client.submitter import Submitter, Targets

__all__ = ["BroadcastView"]


class BroadcastView(DirectView):
    """A DirectView created by ``Client.broadcast_view`` (see the module doc)."""

    def __init__(
        self,
        client: Submitter,
        targets: Targets = "all",
        block: bool = False,
        is_coalescing: bool = False,
    ) -> None:
        super().__init__(client, targets, block)
        self.is_coalescing = is_coalescing

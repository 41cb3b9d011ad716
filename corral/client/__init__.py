"""The client role: connect to a controller and drive its engines.

``Client`` holds the connection; ``DirectView`` and ``LoadBalancedView`` address work;
every submission returns an ``AsyncResult``. ``depend`` and ``require`` add conditions a task
checks where it runs.
"""

from corral.client.asyncmapresult import AsyncMapResult
from corral.client.asyncresult import AsyncResult
from corral.client.balanced import LoadBalancedView
from corral.client.client import Client
from corral.client.dependencies import depend, require
from corral.client.records import ExecuteReply, Metadata
from corral.client.remotefunction import ParallelFunction, RemoteFunction
from corral.client.view import DirectView, View

__all__ = [
    "AsyncMapResult",
    "AsyncResult",
    "Client",
    "DirectView",
    "ExecuteReply",
    "LoadBalancedView",
    "Metadata",
    "ParallelFunction",
    "RemoteFunction",
    "View",
    "depend",
    "require",
]

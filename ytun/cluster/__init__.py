"""Every core of one machine: ``ytun server --workers N``.

A supervising parent (:mod:`.supervisor`) runs N worker processes that share the public
port (:mod:`.sharing`). A client's session lives in the worker that accepted its control
connection; which worker holds which client is :mod:`.ownership`, kept by the parent and
announced to the workers over their channels (:mod:`.channel`). A public connection that
lands on another worker is handed to the holder as a file descriptor (:mod:`.handoff`).
:mod:`.worker` is a worker's side of all this.
"""

from .ownership import Ownership, OwnershipTable, ParentOwnership
from .sharing import listen_shared, reserve_port, reuse_port_available, sharing
from .supervisor import Supervisor
from .worker import Worker, WorkerPeers, WorkerSettings

__all__ = [
    "Ownership",
    "OwnershipTable",
    "ParentOwnership",
    "Supervisor",
    "Worker",
    "WorkerPeers",
    "WorkerSettings",
    "listen_shared",
    "reserve_port",
    "reuse_port_available",
    "sharing",
]

"""Work messages sent from the control plane to the workers.

Each message is JSON with the ids the worker needs and nothing else: the
worker reads everything else from the database, so a stale or duplicated
message cannot carry stale state.
"""

from __future__ import annotations

__all__ = ["CREATE_SNAPSHOT", "DELETE_SNAPSHOT", "PROVISION_FILE_SYSTEM", "RELEASE_FILE_SYSTEM", "ROUTING_KEYS"]

# Routing keys, which are also the queue names' suffixes.
CREATE_SNAPSHOT = "snapshot.create"
DELETE_SNAPSHOT = "snapshot.delete"
PROVISION_FILE_SYSTEM = "file_system.provision"
RELEASE_FILE_SYSTEM = "file_system.release"

ROUTING_KEYS = (CREATE_SNAPSHOT, DELETE_SNAPSHOT, PROVISION_FILE_SYSTEM, RELEASE_FILE_SYSTEM)

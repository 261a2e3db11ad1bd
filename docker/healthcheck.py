#!/usr/bin/env python3
"""Container health checks of the freshet image (stdlib only, so they work before anything else is imported).

    freshet-healthcheck jobmanager [URL]      the REST API (default http://127.0.0.1:8081) answers /overview
    freshet-healthcheck taskmanager           this TaskManager is registered with the JobManager
    freshet-healthcheck http URL              URL answers 2xx (a replica's /readyz)

Exit status 0 is healthy, 1 is not; one line on stdout says why (Docker keeps it in `docker inspect`).
"""

from __future__ import annotations

import json
import os
import socket
import sys
import urllib.request

TIMEOUT_S = 5.0
REST = os.environ.get("FRESHET_FLINK_REST", "http://jobmanager:8081")


def _get(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=TIMEOUT_S) as response:
        return bytes(response.read())


def jobmanager(rest: str = "http://127.0.0.1:8081") -> str:
    overview = json.loads(_get(f"{rest}/overview"))
    return f"jobmanager up: {overview['taskmanagers']} taskmanager(s), {overview['slots-available']} free slot(s)"


def taskmanager() -> str:
    """Registered means the JobManager lists a TaskManager whose address is this container's."""
    addresses = {socket.gethostname()}
    addresses.update(info[4][0] for info in socket.getaddrinfo(socket.gethostname(), None))
    for tm in json.loads(_get(f"{REST}/taskmanagers"))["taskmanagers"]:
        if any(
            f"@{address}:" in tm.get("path", "") or tm.get("id", "").startswith(f"{address}:")
            for address in addresses
        ):
            return f"taskmanager {tm['id']} registered, {tm['freeSlots']}/{tm['slotsNumber']} slot(s) free"
    raise RuntimeError(f"no taskmanager with address {sorted(addresses)} registered at {REST}")


def http(url: str) -> str:
    _get(url)
    return f"{url} ok"


def main(argv: list[str]) -> int:
    checks = {"jobmanager": jobmanager, "taskmanager": taskmanager, "http": http}
    if not argv or argv[0] not in checks:
        print(__doc__, file=sys.stderr)
        return 2
    try:
        print(checks[argv[0]](*argv[1:]))
    except Exception as exc:  # any failure is "unhealthy", with the reason
        print(f"unhealthy: {type(exc).__name__}: {exc}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

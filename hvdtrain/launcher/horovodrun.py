"""``horovodrun`` with its Gloo rendezvous server bound to one address: ``python -m hvdtrain.launcher.horovodrun``.

Horovod 0.28.1 binds the rendezvous server (an HTTP key-value store that answers GET and PUT from
anyone, without authentication) to every address of the machine. ``hvdtrain run`` starts horovodrun
through this module with ``HVDTRAIN_RENDEZVOUS_ADDRESS`` set to the job's address (loopback for a
job on one machine), so the server listens there only. Everything else is horovodrun unchanged.
"""
from __future__ import annotations

import os
import sys
from typing import Any

BIND_ENV = "HVDTRAIN_RENDEZVOUS_ADDRESS"


def bind_rendezvous_to(address: str) -> None:
    """Make Horovod's HTTP servers (rendezvous, key-value store) listen on ``address`` only.

    Raises:
        RuntimeError: this Horovod no longer has the port search this replaces.
    """
    from horovod.runner.http import http_server

    if not callable(getattr(http_server, "find_port", None)):
        raise RuntimeError("horovod.runner.http.http_server.find_port is gone: this Horovod binds its rendezvous "
                           "server differently; hvdtrain.launcher.horovodrun needs updating for it")
    search = http_server.find_port

    def find_port_on_address(server_factory: Any) -> Any:
        return search(lambda addr: server_factory((address, addr[1])))

    http_server.find_port = find_port_on_address


def main() -> int:
    address = os.environ.get(BIND_ENV)
    if address:
        bind_rendezvous_to(address)
    from horovod.runner.launch import run_commandline

    sys.argv[0] = "horovodrun"
    return run_commandline() or 0


if __name__ == "__main__":
    sys.exit(main())

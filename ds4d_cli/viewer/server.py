"""``ds4d view``: make sure the workspace's viewer page is exported, then serve it on localhost.

The server is Python's standard ``http.server`` over the ``export/html`` folder -- the very
page ``ds4d export --format html`` writes -- so what ``ds4d view`` shows is what a user shares.
It binds 127.0.0.1 by default; reach it from another machine with an SSH tunnel
(``ssh -L 8000:127.0.0.1:8000 host``) rather than by exposing it with ``--host 0.0.0.0``.
"""

from __future__ import annotations

import errno
import functools
import socket
from dataclasses import dataclass
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Callable, Optional

from ds4d_cli.errors import Ds4dError


@dataclass
class ViewOptions:
    host: str = "127.0.0.1"
    port: int = 8000  # 0 = any free port
    background: str = "white"


class _Handler(SimpleHTTPRequestHandler):
    """Static files with the MIME types module-less pages need, no caching, no request log."""

    extensions_map = {**SimpleHTTPRequestHandler.extensions_map, ".js": "text/javascript", ".css": "text/css",
                      ".html": "text/html", ".png": "image/png", ".json": "application/json"}

    def end_headers(self) -> None:
        self.send_header("Cache-Control", "no-cache")
        super().end_headers()

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base class's name
        pass


class _Server(ThreadingHTTPServer):
    daemon_threads = True


def make_server(folder: Path, host: str, port: int) -> ThreadingHTTPServer:
    """An HTTP server over ``folder`` bound to ``host:port`` (a user error if it cannot bind)."""
    handler = functools.partial(_Handler, directory=str(folder))
    server_class = _Server
    if ":" in host:  # an IPv6 address such as ::1
        server_class = type("_Server6", (_Server,), {"address_family": socket.AF_INET6})
    try:
        return server_class((host, port), handler)
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            raise Ds4dError(f"port {port} on {host} is already in use",
                            hint="choose another with --port, or --port 0 for any free port") from None
        raise Ds4dError(f"cannot listen on {host}:{port}: {exc.strerror or exc}",
                        hint="check --host (e.g. 127.0.0.1) and --port") from None


def url_of(server: ThreadingHTTPServer) -> str:
    host, port = server.server_address[:2]
    shown = f"[{host}]" if ":" in str(host) else str(host)
    return f"http://{shown}:{port}/"


def run(ws: Any, opts: ViewOptions, on_ready: Optional[Callable[[str], None]] = None) -> None:
    """Export the page if it is missing or stale (cached otherwise), then serve it until Ctrl-C."""
    from ds4d_cli.stages import export as export_stage

    result = export_stage.run(ws, export_stage.ExportOptions(format="html", background=opts.background))
    server = make_server(Path(result.dir), opts.host, int(opts.port))
    try:
        if on_ready is not None:
            on_ready(url_of(server))
        server.serve_forever(poll_interval=0.2)
    except KeyboardInterrupt:  # Ctrl-C is how a user stops the viewer: not an interruption of work
        pass
    finally:
        server.server_close()

"""Serve the app with waitress (a production WSGI server that streams unbuffered)."""
from __future__ import annotations

import sys
import threading

from waitress.server import create_server

from kbgate.config import Config
from kbgate.errors import ModelError
from web import create_app

# waitress (3.x) hands every chunk the app yields to the socket as it comes (send_bytes=1 is
# its default), so SSE tokens reach the client as they are generated; tests check it.
# channel_request_lookahead > 0 keeps reading the socket while a request runs, so waitress sees a
# client hang up and `environ["waitress.client_disconnected"]()` turns true (web.client_gone).
WAITRESS = {"channel_timeout": 300, "connection_limit": 200, "ident": "kbgate", "channel_request_lookahead": 1}
SPARE_THREADS = 4  # beyond everything admission lets in: refusals, /healthz and pages never wait for a thread


def threads_for(app, threads: int) -> int:
    """Enough WSGI threads that the admission queue, not waitress, is where requests wait."""
    st = app.extensions.get("kbgate")
    admitted = st.cfg.server.max_pending if st is not None else 0
    return max(threads, admitted + SPARE_THREADS)


def make_server(app, host: str = "127.0.0.1", port: int = 0, threads: int = 8):
    """A waitress server bound now (port 0 = any free port; see `.effective_port`)."""
    return create_server(app, host=host, port=port, threads=threads_for(app, threads), **WAITRESS)


def serve_in_thread(app, host: str = "127.0.0.1", port: int = 0, threads: int = 8):
    """Start serving in a daemon thread; return (server, base_url). Tests call server.close()."""
    server = make_server(app, host, port, threads)
    threading.Thread(target=server.run, name="kbgate-waitress", daemon=True).start()
    return server, f"http://{host}:{server.effective_port}"


def stop(server) -> None:
    """Close a server from serve_in_thread in its own loop thread (closing from another races select())."""
    from waitress import wasyncore
    server.trigger.pull_trigger(lambda: wasyncore.close_all(server._map))


def run(cfg: Config, host: str, port: int, index_dir=None) -> None:
    """Bind, load models and index in the background, and serve until interrupted.

    A failed load stops the server and raises ModelError: never a process that stays up answering 503.
    """
    from kbgate import service

    app = create_app(cfg, loader=lambda: service.load_services(cfg, index_dir))
    server = make_server(app, host, port, cfg.server.threads)
    st = app.extensions["kbgate"]

    def stop_if_failed():
        st.ready.wait()
        if st.services is None:
            stop(server)
    threading.Thread(target=stop_if_failed, name="kbgate-load-watch", daemon=True).start()
    print(f"kbgate serving on http://{host}:{server.effective_port} (readyz is 503 until models load)",
          file=sys.stderr, flush=True)
    serve_forever(server)
    if st.services is None and st.error:
        raise ModelError(f"stopped: the models or the index failed to load: {st.error}")


def serve_forever(server) -> None:
    """Run a bound server until Ctrl-C, then close it."""
    try:
        server.run()
    except KeyboardInterrupt:
        pass
    finally:
        server.close()

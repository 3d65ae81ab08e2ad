"""``tagsearch dashboard``: optuna-dashboard on a study storage and its artifact folder.

Each trial's intermediate values are its learning curve (the study's validation metric per epoch,
``[study] metric``: Hamming loss unless the spec names another); its
user attributes hold the metrics (micro/macro/per-class F1, epochs, seconds, parameters, device,
worker, the full parameter dict, and why it was pruned or failed). Loopback by default: the
dashboard can edit and delete studies, so anything else gets a warning.
"""

from __future__ import annotations

from pathlib import Path

from tagsearch.errors import UserError
from tagsearch.log import log, warning
from tagsearch.study.spec import DEFAULT_STORAGE, load_spec
from tagsearch.runtime.proxy import is_loopback
from tagsearch.runtime.location import artifact_dir, artifact_store, masked
from tagsearch.runtime.storage import open_storage


def serve(spec: str | Path | None = None, *, storage: str | None = None, host: str = "127.0.0.1",
          port: int = 8080) -> None:
    """``tagsearch dashboard``: serve the study storage ``storage`` (default: the spec's, else the
    default storage) until Ctrl-C. The storage must exist: browsing never creates one."""
    url = storage or (load_spec(spec).storage if spec else DEFAULT_STORAGE)
    if not 1 <= port <= 65535:
        raise UserError(f"--port {port} is out of range; expected 1..65535")
    opened = open_storage(url, create=False, read_only=True)  # browsing never takes SQLite's write lock
    store = artifact_store(url)
    if not is_loopback(host):
        warning(f"warning: serving on {host}, reachable from other machines; the dashboard has no login and "
                f"can delete studies (use --host 127.0.0.1 to keep it local)")
    log(f"optuna-dashboard for {masked(url)} (artifacts in {artifact_dir(url)}) at {url_for(host, port)}")
    run_server(opened, store, host, port)


def run_server(storage, store, host: str, port: int) -> None:
    """optuna-dashboard's server on an opened storage and artifact store, until Ctrl-C."""
    from optuna_dashboard import run_server as run_dashboard

    try:
        run_dashboard(storage, host=host, port=port, artifact_store=store)
    except OSError as exc:
        raise UserError(f"cannot serve on {host}:{port}: {exc.strerror or exc}; "
                        f"expected a free port (try another --port)") from None
    except KeyboardInterrupt:
        pass


def url_for(host: str, port: int) -> str:
    shown = f"[{host}]" if ":" in host else host
    return f"http://{shown}:{port}/dashboard/"

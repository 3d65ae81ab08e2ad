"""``tagsearch dashboard``: optuna-dashboard on a study storage and its artifact folder.

Each trial's intermediate values are its learning curve (the study's validation metric per epoch,
``[study] metric``: Hamming loss unless the spec names another); its
user attributes hold the metrics (micro/macro/per-class F1, epochs, seconds, parameters, device,
worker, the full parameter dict, and why it was pruned or failed). Loopback by default: the
dashboard can edit and delete studies, so anything else gets a warning.
"""

from __future__ import annotations

import ipaddress
import sys

from tagsearch.errors import UserError
from tagsearch.study.spec import DEFAULT_STORAGE, load_spec
from tagsearch.runtime.storage import artifact_dir, artifact_store, masked, open_storage


def cmd_dashboard(args) -> int:
    url = args.storage or (load_spec(args.spec).storage if args.spec else DEFAULT_STORAGE)
    if not 1 <= args.port <= 65535:
        raise UserError(f"--port {args.port} is out of range; expected 1..65535")
    storage = open_storage(url, create=False, read_only=True)  # browsing never takes SQLite's write lock
    store = artifact_store(url)
    if not is_loopback(args.host):
        print(f"warning: serving on {args.host}, reachable from other machines; the dashboard has no login and "
              f"can delete studies (use --host 127.0.0.1 to keep it local)", file=sys.stderr)
    print(f"optuna-dashboard for {masked(url)} (artifacts in {artifact_dir(url)}) at {url_for(args.host, args.port)}",
          file=sys.stderr, flush=True)
    return serve(storage, store, args.host, args.port)


def serve(storage, store, host: str, port: int) -> int:
    from optuna_dashboard import run_server

    try:
        run_server(storage, host=host, port=port, artifact_store=store)
    except OSError as exc:
        raise UserError(f"cannot serve on {host}:{port}: {exc.strerror or exc}; "
                        f"expected a free port (try another --port)") from None
    except KeyboardInterrupt:
        pass
    return 0


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def url_for(host: str, port: int) -> str:
    shown = f"[{host}]" if ":" in host else host
    return f"http://{shown}:{port}/dashboard/"

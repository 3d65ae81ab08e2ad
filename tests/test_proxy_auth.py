"""The storage proxy admits only its cluster: a shared token on every call, a non-loopback bind
without one refused (``--insecure`` overrides, loudly), lease lengths capped on the server."""

from __future__ import annotations

import json

import optuna
import pytest

from tagsearch.cli import main
from tagsearch.errors import UserError
from tagsearch.runtime import proxy
from tagsearch.runtime.storage import open_storage
from tagsearch.testing.processes import free_port, start_proxy, stop_proxy
from test_stress import check_study, run_workers, start_stub, wait_all

pytestmark = pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning")
TOKEN = "a-shared-token-for-this-test"


@pytest.fixture
def no_token(monkeypatch):
    monkeypatch.delenv("TAGSEARCH_PROXY_TOKEN", raising=False)
    monkeypatch.delenv("TAGSEARCH_PROXY_TOKEN_FILE", raising=False)


class Served(Exception):
    """Raised instead of serving: the proxy got past its checks."""


@pytest.fixture
def never_serve(monkeypatch):
    def refuse(*args, **kwargs):
        raise Served()

    monkeypatch.setattr(proxy, "make_server", refuse)


def test_a_non_loopback_bind_without_a_token_is_refused(no_token, never_serve, tmp_path, capsys):
    argv = ["storage-proxy", "--storage", f"sqlite:///{tmp_path}/s.db", "--host", "0.0.0.0", "--port", "13999"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --host 0.0.0.0") and err.count("\n") == 1 and "token" in err
    assert not (tmp_path / "s.db").exists(), "refused before the database is opened"
    with pytest.raises(Served):  # --insecure overrides, loudly
        main([*argv, "--insecure"])
    assert "WITHOUT A TOKEN" in capsys.readouterr().err


def test_a_token_file_readable_by_others_is_refused(no_token, never_serve, tmp_path, capsys):
    token = tmp_path / "token"
    token.write_text(TOKEN + "\n")
    token.chmod(0o644)
    argv = ["storage-proxy", "--storage", f"sqlite:///{tmp_path}/s.db", "--host", "0.0.0.0", "--token-file", str(token)]
    assert main(argv) == 2
    assert "0644" in capsys.readouterr().err
    token.chmod(0o600)
    with pytest.raises(Served):
        main(argv)


def test_every_call_needs_the_token(no_token, monkeypatch):
    """Optuna's storage service and the lock service alike: without the token (or with another
    one) a client is refused with one clear error; with it, it works."""
    import grpc

    port = free_port()
    server = proxy.make_server(optuna.storages.InMemoryStorage(), "127.0.0.1", port, TOKEN)
    server.start()
    url = f"grpc://127.0.0.1:{port}"
    try:
        with pytest.raises(UserError, match="refused this client: no token"):
            open_storage(url)
        monkeypatch.setenv("TAGSEARCH_PROXY_TOKEN", "another token")
        with pytest.raises(UserError, match="refused this client: its token differs"):
            open_storage(url)
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:  # a stranger's lock call
            acquire = channel.unary_unary(f"/{proxy.SERVICE}/Acquire", request_serializer=lambda r: json.dumps(r).encode(),
                                          response_deserializer=json.loads)
            with pytest.raises(grpc.RpcError) as refused:
                acquire({"name": "x", "holder": "stranger", "lease": 1e9}, timeout=10)
            assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
        monkeypatch.setenv("TAGSEARCH_PROXY_TOKEN", TOKEN)
        study = optuna.create_study(storage=open_storage(url), study_name="admitted")
        study.optimize(lambda trial: trial.suggest_float("x", 0, 1), n_trials=2)
        assert len(study.trials) == 2
        from tagsearch.runtime.locks import BudgetLock

        with BudgetLock(url, "admitted"):  # the lock client bears the token too
            pass
    finally:
        server.stop(grace=None)


def test_lease_lengths_are_capped_on_the_server(monkeypatch):
    """An endless lease asked for (a hostile or broken client) expires after MAX_LEASE_SECONDS."""
    now = [1000.0]
    monkeypatch.setattr(proxy.time, "monotonic", lambda: now[0])
    leases = proxy.Leases()
    assert leases.acquire({"name": "study", "holder": "greedy", "lease": float("inf")}, None) == {"ok": True}
    assert leases.acquire({"name": "study", "holder": "other", "lease": 30}, None) == {"ok": False}
    now[0] += 3600  # an hour: far past any lease tagsearch asks for
    assert leases.acquire({"name": "study", "holder": "other", "lease": 30}, None) == {"ok": True}
    for bad in (float("nan"), -1, 0, "many"):
        assert leases.acquire({"name": "n2", "holder": "h", "lease": bad}, None) == {"ok": False}


@pytest.mark.slow
@pytest.mark.timeout(420)
def test_eight_workers_with_the_token_reach_the_exact_budget(no_token, monkeypatch, tmp_path):
    """A proxy with a token (a SQLite file behind it): a stub worker without the token stops with
    one error, eight with it run the study to exactly its budget."""
    monkeypatch.setenv("TAGSEARCH_PROXY_TOKEN", TOKEN)
    server, url = start_proxy(f"sqlite:///{tmp_path}/study.db", tmp_path / "proxy.log", seconds=150)
    try:
        monkeypatch.delenv("TAGSEARCH_PROXY_TOKEN")
        stranger = start_stub(tmp_path / "stranger.log", "worker", url, "guarded", 16, "--epochs", "1")
        assert wait_all([stranger], 60) == [2]
        text = (tmp_path / "stranger.log").read_text()
        assert "refused this client: no token" in text and "Traceback" not in text, text
        monkeypatch.setenv("TAGSEARCH_PROXY_TOKEN", TOKEN)
        run_workers(tmp_path, url, "guarded", 8, 16, 180, "--epochs", "1", "--epoch-seconds", "0.1")
        check_study(optuna.load_study(study_name="guarded", storage=open_storage(url)), 16)
    finally:
        assert stop_proxy(server) == 0, (tmp_path / "proxy.log").read_text()

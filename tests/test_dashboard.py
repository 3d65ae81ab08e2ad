"""``tagsearch dashboard``: serves the study storage over HTTP, loopback unless told otherwise."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request

import optuna
import pytest

from tagsearch.study import dashboard
from tagsearch.cli import main
from tagsearch.runtime.storage import open_storage


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def get_json(url: str, seconds: float = 60):
    """GET ``url`` as JSON, retrying while the server starts."""
    deadline = time.monotonic() + seconds
    while True:
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                return json.load(response)
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.3)


@pytest.fixture
def study_url(tmp_path):
    """A SQLite storage holding one small study with a learning curve and attributes."""
    url = f"sqlite:///{tmp_path}/dash.db"
    study = optuna.create_study(storage=url, study_name="dash-study")
    trial = study.ask()
    trial.suggest_float("lr", 1e-4, 1e-1, log=True)
    for epoch, value in enumerate([0.3, 0.2, 0.15], start=1):
        trial.report(value, epoch)
    trial.set_user_attr("val_micro_f1", 0.42)
    study.tell(trial, 0.15)
    return url


def test_dashboard_serves_the_study(study_url, tmp_path):
    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "tagsearch.cli", "dashboard", "--storage", study_url,
                               "--port", str(port)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              env={**os.environ, "OMP_NUM_THREADS": "1"})
    try:
        studies = get_json(f"http://127.0.0.1:{port}/api/studies")["study_summaries"]
        assert [s["study_name"] for s in studies] == ["dash-study"]
        detail = get_json(f"http://127.0.0.1:{port}/api/studies/{studies[0]['study_id']}")
        trial = detail["trials"][0]
        assert [v["value"] for v in trial["intermediate_values"]] == [0.3, 0.2, 0.15]
        assert {"key": "val_micro_f1", "value": "0.42"} in trial["user_attrs"]
    finally:
        server.terminate()
        _, err = server.communicate(timeout=30)
    assert f"http://127.0.0.1:{port}/dashboard/" in err and "warning" not in err
    assert (tmp_path / "dash-artifacts").is_dir()


def test_public_host_warns_and_prints_the_url(study_url, monkeypatch, capsys):
    served = []
    monkeypatch.setattr(dashboard, "run_server", lambda storage, store, host, port: served.append((host, port)))
    assert main(["dashboard", "--storage", study_url, "--host", "0.0.0.0", "--port", "9999"]) == 0
    err = capsys.readouterr().err
    assert served == [("0.0.0.0", 9999)] and "warning: serving on 0.0.0.0" in err
    assert "http://0.0.0.0:9999/dashboard/" in err


def test_storage_from_the_spec(spec_factory, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(dashboard, "run_server", lambda *args: None)
    url = f"sqlite:///{tmp_path}/from-spec.db"
    open_storage(url)
    assert main(["dashboard", str(spec_factory(storage=url))]) == 0
    assert url in capsys.readouterr().err


def test_missing_storage_or_bad_port_exits_2(tmp_path, capsys):
    assert main(["dashboard", "--storage", f"sqlite:///{tmp_path}/none.db"]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["dashboard", "--storage", "sqlite:///x.db", "--port", "70000"]) == 2
    assert "--port 70000" in capsys.readouterr().err


@pytest.mark.parametrize("host, loopback", [("127.0.0.1", True), ("localhost", True), ("::1", True),
                                            ("0.0.0.0", False), ("192.168.1.5", False), ("example.org", False)])
def test_loopback_hosts(host, loopback):
    assert dashboard.is_loopback(host) is loopback


def test_dashboard_shows_the_metric_curves_and_threshold_variants(spec_factory, tmp_path):
    """A real tagsearch trial, read back through the dashboard's HTTP API: the objective's name is
    the study's metric, each trial has its learning curve and its threshold variants."""
    from tagsearch.study import search
    from tagsearch.study import objective
    from tagsearch.data.corpus import load_corpus
    from tagsearch.study.spec import load_spec
    from tagsearch.runtime.trials import run_trials

    url = f"sqlite:///{tmp_path}/real.db"
    spec = load_spec(spec_factory("tfidf", storage=url))
    corpus = load_corpus(spec.data_config())
    run_trials(search.open_study(spec, corpus, url), objective.Objective(spec, corpus), 1, wait_for_running=False)
    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "tagsearch.cli", "dashboard", "--storage", url, "--port",
                               str(port)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        study_id = get_json(f"http://127.0.0.1:{port}/api/studies")["study_summaries"][0]["study_id"]
        detail = get_json(f"http://127.0.0.1:{port}/api/studies/{study_id}")
        assert detail["objective_names"] == ["val_hamming_loss"]
        trial = detail["trials"][0]
        attrs = {a["key"]: a["value"] for a in trial["user_attrs"]}
        assert len(trial["intermediate_values"]) == int(attrs["epochs_run"]) >= 1
        assert attrs["metric"] == "hamming_loss" and attrs["threshold_choice"] in ("fixed", "global", "per_tag")
        assert {"fixed", "global", "per_tag"} <= set(json.loads(attrs["threshold_scores"].replace("'", '"')))
        assert "val_hamming_loss" in attrs["learning_curve"]
    finally:
        server.terminate()
        server.communicate(timeout=30)

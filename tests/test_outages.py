"""Database outages: the connection between workers and PostgreSQL / MariaDB is cut mid-study by a
loopback TCP relay the test controls (``tagsearch.testing.relay``: open connections reset, new ones
refused). The workers are the real runtime around a stub objective (``tagsearch.testing.stub_worker``,
no torch).

A 5 s cut costs the workers a pause (a log line per retry, exponential backoff), not a trial: no
worker exits, no trial is lost, failed or duplicated, the budget is exact. A cut longer than
TAGSEARCH_OUTAGE_LIMIT ends each worker with one ``error:`` line and exit code 2; the trials they
were running stay RUNNING with a stale heartbeat, and the next worker fails them, reruns each once
and meets the budget exactly.
"""

from __future__ import annotations

import time
import uuid
from urllib.parse import urlsplit

import optuna
import pytest
from sqlalchemy.engine import make_url

from tagsearch.runtime.storage import open_storage
from tagsearch.testing.relay import Relay
from test_services import server_url
from test_stress import FINISHED, State, assert_clean_logs, check_study, start_stub, stop_all, wait_all

optuna.logging.set_verbosity(optuna.logging.WARNING)
pytestmark = [pytest.mark.services, pytest.mark.slow,
              pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning")]
PORTS = {"postgresql": 5432, "mysql": 3306}


class Relayed:
    """The study URL through a relay, the direct URL for the test's own reads, and the cleanup."""

    def __init__(self, kind: str):
        self.direct = server_url(kind)
        parts = urlsplit(self.direct)
        self.relay = Relay(parts.hostname, parts.port or PORTS[kind])
        self.url = make_url(self.direct).set(host="127.0.0.1", port=self.relay.port).render_as_string(
            hide_password=False)
        self.name = f"tagsearch-outage-{uuid.uuid4().hex[:10]}"

    def trials(self) -> list:
        try:
            return optuna.load_study(study_name=self.name, storage=open_storage(self.direct)).get_trials()
        except KeyError:
            return []

    def wait(self, condition, seconds: float, what: str):
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            trials = self.trials()
            if condition(trials):
                return trials
            time.sleep(0.3)
        raise AssertionError(f"timed out after {seconds}s waiting for {what}")

    def close(self) -> None:
        self.relay.close()
        storage = open_storage(self.direct)
        if self.name in optuna.get_all_study_names(storage):
            optuna.delete_study(study_name=self.name, storage=storage)


def finished(trials) -> int:
    return sum(t.state in FINISHED for t in trials)


def wait_for_text(logs, text: str, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while not any(text in log.read_text() for log in logs):
        assert time.monotonic() < deadline, f"no worker logged {text!r} within {seconds}s"
        time.sleep(0.2)


@pytest.mark.timeout(240)
@pytest.mark.parametrize("kind", ["postgresql", "mysql"])
def test_a_five_second_database_cut_costs_a_pause_not_a_trial(kind, tmp_path):
    db, target, processes = Relayed(kind), 10, []
    logs = [tmp_path / f"w{i}.log" for i in (0, 1)]
    try:
        processes = [start_stub(log, "worker", db.url, db.name, target, "--epochs", "3", "--epoch-seconds", "0.4",
                                index=i, env={"TAGSEARCH_OUTAGE_LIMIT": "60"}) for i, log in enumerate(logs)]
        db.wait(lambda trials: finished(trials) >= 2, 120, "two finished trials")
        db.relay.cut()
        wait_for_text(logs, "storage unreachable during", 60)  # a worker noticed the cut
        time.sleep(5)  # the cut lasts 5 s (what the test is about, not an assertion)
        db.relay.restore()
        assert wait_all(processes, 150) == [0, 0], [log.read_text()[-3000:] for log in logs]
        study = optuna.load_study(study_name=db.name, storage=open_storage(db.direct))
        check_study(study, target)  # exact budget, no FAIL, nothing RUNNING, no duplicated numbers
        text = "".join(log.read_text() for log in logs)
        assert "storage unreachable during" in text and "storage reachable again after" in text, text[-3000:]
        assert_clean_logs(logs)
    finally:
        stop_all(processes)
        db.close()


@pytest.mark.timeout(240)
def test_an_outage_beyond_the_limit_ends_workers_with_one_error_and_the_next_worker_recovers(tmp_path):
    db, target, processes = Relayed("postgresql"), 4, []
    logs = [tmp_path / f"w{i}.log" for i in (0, 1)]
    fast = {"TAGSEARCH_OUTAGE_LIMIT": "3", "TAGSEARCH_HEARTBEAT": "1", "TAGSEARCH_GRACE": "3"}
    try:
        control = tmp_path / "control"
        control.mkdir()
        (control / "hang").touch()  # trials hang after their first epoch: the cut lands mid-trial
        processes = [start_stub(log, "worker", db.url, db.name, target, "--control", str(control), index=i, env=fast)
                     for i, log in enumerate(logs)]
        db.wait(lambda trials: sum(t.state == State.RUNNING and bool(t.intermediate_values) for t in trials) == 2,
                120, "both workers mid-trial")
        db.relay.cut()
        codes = wait_all(processes, 60)
        assert codes == [2, 2], [log.read_text()[-3000:] for log in logs]
        for log in logs:
            lines = log.read_text().splitlines()
            errors = [line for line in lines if line.startswith("error:")]
            assert len(errors) == 1 and "unreachable for" in errors[0] and "TAGSEARCH_OUTAGE_LIMIT=3" in errors[0], lines
            assert "Traceback" not in log.read_text()
        stranded = [t for t in db.trials() if t.state == State.RUNNING]
        assert len(stranded) == 2, [(t.number, t.state.name, t.user_attrs.get("fail_reason")) for t in db.trials()]
        db.relay.restore()
        (control / "hang").unlink()
        last = start_stub(tmp_path / "w2.log", "worker", db.url, db.name, target, index=2, env=fast)
        processes.append(last)
        assert wait_all([last], 150) == [0], (tmp_path / "w2.log").read_text()[-3000:]
        study = optuna.load_study(study_name=db.name, storage=open_storage(db.direct))
        trials = check_study(study, target, allowed_fail=2)
        for lost in stranded:
            assert trials[lost.number].user_attrs["fail_reason"].startswith("worker lost: no heartbeat")
            reruns = [t for t in trials if t.system_attrs.get("failed_trial") == lost.number]
            assert len(reruns) == 1 and reruns[0].params == lost.params and reruns[0].state in FINISHED
    finally:
        stop_all(processes)
        db.close()

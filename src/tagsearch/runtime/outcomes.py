"""How a trial ends: its outcome told, with a ``fail_reason`` on every FAIL, and queued again when
it was stopped without a fault of its own — interrupted (Ctrl-C/SIGTERM), backed off (its worker's
budget lock lapsed while it was created) or lost (its worker died: ``heartbeat.fail_stale_trials``,
or Optuna's own stale-trial check on RDB storages, which calls ``requeue_lost`` as its
``heartbeat_stale_trial_callback``).

A trial another worker finished meanwhile (failed it as lost) is left as it is and said so
(``tell`` with ``skip_if_finished``): its worker moves on.

The copy is WAITING with the same parameters (those suggested, and those the original was queued
with), the ``config`` user attribute (``"defaults"`` for trial 0) and ``retry_of`` = the trial it
repeats; its system attributes are Optuna's RetryHeartbeatStaleTrialCallback's: ``failed_trial``
(the first trial of the chain) and ``retry_history``, which lists the trials of the chain whose
worker was lost. A lost worker's trial is queued again only while that list is shorter than
``MAX_RETRY`` (a trial that kills its worker twice is not run a third time); an interrupted or
backed-off trial is always queued again (the trial did nothing wrong). A trial stopped before it
had any parameter (suggested or queued) has nothing to repeat and is not queued again; its
``fail_reason`` says so.
"""

from __future__ import annotations

import optuna

from tagsearch.log import log
from tagsearch.runtime._optuna import queued_params

State = optuna.trial.TrialState
QUEUED_AGAIN = "; queued again with the same parameters"

MAX_RETRY = 1
HEARTBEAT_KEY = "tagsearch:heartbeat"  # heartbeat.py's trial system attribute; not copied to a retry
NOT_COPIED = (HEARTBEAT_KEY, "tagsearch:create", "tagsearch:claim")  # nor storage.py's client tokens


def may_retry_lost(trial: optuna.trial.FrozenTrial) -> bool:
    """Whether a trial whose worker was lost may still be queued again."""
    return len(trial.system_attrs.get("retry_history", [])) < MAX_RETRY


def requeue(study: optuna.Study, trial: optuna.trial.FrozenTrial, lost: bool) -> bool:
    """Queue ``trial`` (FAIL) again; ``lost``: its worker died, which counts towards MAX_RETRY.
    Returns whether a copy was queued."""
    if lost and not (may_retry_lost(trial) and repeatable(trial)):
        return False  # lost twice, or lost before it had a parameter: nothing to repeat
    history = list(trial.system_attrs.get("retry_history", [])) + ([trial.number] if lost else [])
    system_attrs = {"failed_trial": trial.number, **trial.system_attrs, "retry_history": history}
    for key in NOT_COPIED:
        system_attrs.pop(key, None)
    user_attrs = {"retry_of": trial.number, **{k: v for k, v in trial.user_attrs.items() if k == "config"}}
    study.add_trial(optuna.create_trial(state=State.WAITING, params=trial.params,
                                        distributions=trial.distributions, user_attrs=user_attrs,
                                        system_attrs=system_attrs))
    return True


def repeatable(trial: optuna.trial.FrozenTrial) -> bool:
    """Whether a stopped trial has anything to repeat: parameters suggested or queued."""
    return bool(trial.params or queued_params(trial))


def requeue_lost(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
    """Optuna's ``heartbeat_stale_trial_callback``: queue a trial of a dead worker again (once)."""
    requeue(study, trial, lost=True)


class Asked:
    """A trial this worker asked for, with its heartbeat, which knows the trial's storage id and
    the study's storage (read once): what telling it and reading it back need."""

    def __init__(self, trial: optuna.Trial, beat):
        self.trial, self.beat = trial, beat

    @property
    def number(self) -> int:
        return self.trial.number

    def stored(self) -> optuna.trial.FrozenTrial:
        """The trial as the storage holds it now."""
        return self.beat.storage.get_trial(self.beat.trial_id)


def tell(study: optuna.Study, trial: Asked, value: float | None = None, state: State | None = None,
         reason: str | None = None, replace: bool = False) -> optuna.trial.FrozenTrial:
    """Tell ``trial``'s outcome; a FAIL gets ``reason`` as its ``fail_reason`` unless it has one (the
    objective's own; ``replace``: ours wins). Returns the trial as stored (another worker may have
    finished it first: then it is left as it is, and said so)."""
    if state == State.FAIL:
        try:
            frozen = trial.stored()
            if frozen.state == State.RUNNING and (replace or "fail_reason" not in frozen.user_attrs):
                trial.trial.set_user_attr("fail_reason", reason)
        except optuna.exceptions.UpdateFinishedTrialError:
            pass
    try:
        study.tell(trial.trial, value, state=state, skip_if_finished=True)
    except optuna.exceptions.UpdateFinishedTrialError:
        pass  # finished by another worker between tell's check and its write
    frozen = trial.stored()
    told = state or State.COMPLETE
    if frozen.state != told:
        log(f"trial {trial.number} was finished elsewhere while it ran ({frozen.state.name}: "
            f"{frozen.user_attrs.get('fail_reason', 'no reason given')}); this worker moves on")
    return frozen


def fail_and_requeue(study: optuna.Study, trial: Asked, reason: str, nothing_to_repeat: str,
                     replace: bool = False) -> optuna.trial.FrozenTrial:
    """FAIL ``trial`` (stopped through no fault of its own) and queue it again if it has anything
    to repeat; its ``fail_reason`` (and the log line): ``reason`` and then whether it was queued
    again (else ``nothing_to_repeat``)."""
    again = repeatable(trial.stored())
    frozen = tell(study, trial, state=State.FAIL, reason=reason + (QUEUED_AGAIN if again else nothing_to_repeat),
                  replace=replace)
    if frozen.state == State.FAIL:
        if again:
            requeue(study, frozen, lost=False)
        log(f"trial {trial.number} {frozen.user_attrs.get('fail_reason')}")
    return frozen

"""Queueing a trial again: the one rule for a trial interrupted by Ctrl-C/SIGTERM and for a trial
whose worker was lost (no heartbeat; ``heartbeat.fail_stale_trials``, or Optuna's own stale-trial
check on RDB storages, which calls ``requeue_lost`` as its ``heartbeat_stale_trial_callback``).

The copy is WAITING with the same parameters (those suggested, and those the original was queued
with), the ``config`` user attribute (``"defaults"`` for trial 0) and ``retry_of`` = the trial it
repeats; its system attributes are Optuna's RetryHeartbeatStaleTrialCallback's: ``failed_trial``
(the first trial of the chain) and ``retry_history``, which lists the trials of the chain whose
worker was lost. A lost worker's trial is queued again only while that list is shorter than
``MAX_RETRY`` (a trial that kills its worker twice is not run a third time); an interrupted trial
is always queued again (the user stopped it, the trial did nothing wrong). A trial stopped before it
had any parameter (suggested or queued) has nothing to repeat and is not queued again; its
``fail_reason`` says so.
"""

from __future__ import annotations

import optuna

from tagsearch.log import log
from tagsearch.runtime._optuna import queued_params

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
    study.add_trial(optuna.create_trial(state=optuna.trial.TrialState.WAITING, params=trial.params,
                                        distributions=trial.distributions, user_attrs=user_attrs,
                                        system_attrs=system_attrs))
    return True


def repeatable(trial: optuna.trial.FrozenTrial) -> bool:
    """Whether a stopped trial has anything to repeat: parameters suggested or queued."""
    return bool(trial.params or queued_params(trial))


def requeue_interrupted(study: optuna.Study, number: int | None) -> None:
    """Queue the trial numbered ``number`` again if a signal failed it (None: nothing was interrupted)."""
    if number is None:
        return
    trial = next((t for t in study.get_trials(deepcopy=False) if t.number == number), None)
    if trial is None or trial.state != optuna.trial.TrialState.FAIL:
        return
    if not repeatable(trial):
        return  # stopped before it had any parameter: nothing to repeat (its fail_reason says so)
    requeue(study, trial, lost=False)
    log(f"trial {number} was interrupted; queued again with the same parameters")


def requeue_lost(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
    """Optuna's ``heartbeat_stale_trial_callback``: queue a trial of a dead worker again (once)."""
    requeue(study, trial, lost=True)

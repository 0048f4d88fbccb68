"""The restart decision table, the intensity window and the worker state machine, without processes."""

from __future__ import annotations

from typing import get_args

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bussdcc.kernel import RestartPolicy, Service, Strategy
from bussdcc.kernel._vocab import ExitCause
from bussdcc.supervisor._groups import affected
from bussdcc.supervisor._policy import (
    ACTIONS,
    ExitKind,
    GiveUp,
    History,
    Policy,
    Respawn,
    Stop,
    decide,
    exit_kind,
    intensity,
)
from bussdcc.supervisor._states import TRANSITIONS, IllegalTransition, WorkerState, transition
from bussdcc.supervisor._workers import Worker

POLICIES: tuple[RestartPolicy, ...] = get_args(RestartPolicy)
KINDS: tuple[ExitKind, ...] = get_args(ExitKind)
CAUSES: tuple[ExitCause, ...] = get_args(ExitCause)
S = WorkerState

# ---- the decision table ------------------------------------------------------------

#: The table as the README states it, one row per restart type (r: respawn, s: stop, g: give up).
EXPECTED = {
    #             requested normal abnormal gave_up unloadable refused unhealthy
    "permanent": ("s", "r", "r", "g", "g", "r", "r"),
    "transient": ("s", "s", "r", "g", "g", "r", "r"),
    "temporary": ("s", "s", "g", "g", "g", "g", "g"),
}
COLUMNS = ("requested", "normal", "abnormal", "gave_up", "unloadable", "refused", "unhealthy")
LETTER = {"respawn": "r", "stop": "s", "give_up": "g"}


def verdict_letter(verdict: Respawn | Stop | GiveUp) -> str:
    return {Respawn: "r", Stop: "s", GiveUp: "g"}[type(verdict)]


def test_the_table_names_every_restart_type_and_exit_kind_once() -> None:
    assert set(COLUMNS) == set(KINDS)
    assert set(ACTIONS) == {(p, k) for p in POLICIES for k in KINDS}


@pytest.mark.parametrize("policy", POLICIES)
@pytest.mark.parametrize("kind", KINDS)
def test_every_clause_of_the_table(policy: RestartPolicy, kind: ExitKind) -> None:
    expected = EXPECTED[policy][COLUMNS.index(kind)]
    assert LETTER[ACTIONS[policy, kind]] == expected
    # With an empty history, decide does exactly what the table says.
    verdict = decide(Policy(policy), kind, History(), 100.0, error="boom")
    assert verdict_letter(verdict) == expected
    if isinstance(verdict, GiveUp):
        assert verdict.reason == "boom"


@pytest.mark.parametrize(
    ("cause", "requested", "environmental", "kind"),
    [
        ("exited", False, False, "normal"),
        ("stopped", False, False, "normal"),
        ("error", False, False, "gave_up"),
        ("spawn_failed", False, False, "unloadable"),
        ("spawn_failed", False, True, "refused"),
        ("exit_code", False, False, "abnormal"),
        ("signal", False, False, "abnormal"),
        ("hung", False, False, "abnormal"),
        ("rss_limit", False, False, "abnormal"),
        ("cpu_limit", False, False, "abnormal"),
        ("start_timeout", False, False, "abnormal"),
        ("start_failed", False, False, "abnormal"),
        ("unhealthy", False, False, "unhealthy"),
        ("unhealthy", True, False, "requested"),
        ("signal", True, False, "requested"),
        ("error", True, False, "requested"),
    ],
)
def test_exits_are_classified(cause: ExitCause, requested: bool, environmental: bool, kind: ExitKind) -> None:
    assert exit_kind(cause, requested=requested, environmental=environmental) == kind


def test_every_cause_has_a_kind() -> None:
    for cause in CAUSES:
        assert exit_kind(cause) in KINDS


times = st.lists(st.floats(0.0, 1000.0, allow_nan=False), max_size=20).map(lambda ts: tuple(sorted(ts)))
policies = st.builds(
    Policy,
    st.sampled_from(POLICIES),
    st.integers(0, 10),
    st.floats(0.0, 500.0, allow_nan=False),
    st.floats(0.0, 10.0, allow_nan=False),
    st.floats(0.0, 60.0, allow_nan=False),
)
histories = st.builds(History, times, st.integers(0, 10**6))


@settings(max_examples=200, deadline=None)
@given(
    policies,
    st.sampled_from(KINDS),
    histories,
    st.tuples(st.floats(1000.0, 2000.0), st.floats(0.75, 1.25), st.booleans()),
)
def test_decisions_follow_the_policy(
    policy: Policy, kind: ExitKind, history: History, when: tuple[float, float, bool]
) -> None:
    now, jitter, closing = when
    verdict = decide(policy, kind, history, now, error="why", closing=closing, jitter=jitter)
    if policy.restart == "temporary" or kind in ("requested", "gave_up", "unloadable"):
        assert not isinstance(verdict, Respawn)
    if policy.restart == "transient" and kind == "normal":
        assert isinstance(verdict, Stop)
    if closing:
        assert not isinstance(verdict, Respawn)  # nothing comes back once shutdown has begun
    if isinstance(verdict, Respawn):
        assert 0.0 <= verdict.delay <= max(0.0, policy.backoff_max)
        assert verdict.history.streak == history.streak + 1
        assert verdict.history.times[-1] == now
        assert len(verdict.history.times) <= policy.max_restarts
    allowed, _ = intensity(history.times, now, policy.max_restarts, policy.restart_window)
    wants = ACTIONS[policy.restart, kind] == "respawn" and not closing
    # Permanent (and transient on an abnormal end) respawns exactly while within the intensity.
    assert isinstance(verdict, Respawn) == (wants and allowed)
    if wants and not allowed:
        assert isinstance(verdict, GiveUp) and "restarts within" in verdict.reason


@settings(max_examples=100, deadline=None)
@given(st.integers(-5, 10**9), st.floats(0.0, 1e6), st.floats(0.0, 1e6), st.floats(0.75, 1.25))
def test_any_streak_gives_a_capped_delay(streak: int, initial: float, maximum: float, jitter: float) -> None:
    verdict = decide(Policy("permanent", 1, 1.0, initial, maximum), "abnormal", History((), streak), 5.0, jitter=jitter)
    assert isinstance(verdict, Respawn)
    assert 0.0 <= verdict.delay <= maximum


def test_a_permanent_worker_respawns_until_the_intensity_then_gives_up() -> None:
    policy = Policy("permanent", max_restarts=3, restart_window=10.0)
    history, now = History(), 0.0
    for _ in range(3):
        verdict = decide(policy, "abnormal", history, now, error="crash")
        assert isinstance(verdict, Respawn)
        history, now = verdict.history, now + 1.0
    verdict = decide(policy, "abnormal", history, now, error="crash")
    assert verdict == GiveUp("3 restarts within 10s; last: crash")
    # Once the oldest restart leaves the window, one more is allowed.
    assert isinstance(decide(policy, "abnormal", history, 10.5, error="crash"), Respawn)


# ---- the intensity window -----------------------------------------------------------


def test_intensity_keeps_only_the_window() -> None:
    assert intensity((), 5.0, 1, 10.0) == (True, ())
    assert intensity((1.0, 2.0, 9.0), 12.0, 2, 10.0) == (False, (2.0, 9.0))
    assert intensity((1.0, 2.0, 9.0), 12.5, 2, 10.0) == (True, (9.0,))
    assert intensity((1.0,), 2.0, 0, 10.0) == (False, (1.0,))


@settings(max_examples=150, deadline=None)
@given(times, st.floats(0.0, 2000.0), st.integers(0, 25), st.floats(0.0, 1000.0))
def test_intensity_is_a_count_of_recent_restarts(ts: tuple[float, ...], now: float, most: int, window: float) -> None:
    allowed, kept = intensity(ts, now, most, window)
    assert kept == tuple(t for t in ts if now - t <= window)
    assert allowed == (len(kept) < most)


# ---- group strategies -------------------------------------------------------------


@pytest.mark.parametrize(
    ("strategy", "failed", "expected"),
    [
        ("one_for_one", "b", ["b"]),
        ("one_for_all", "b", ["a", "b", "c"]),
        ("rest_for_one", "b", ["b", "c"]),
        ("rest_for_one", "a", ["a", "b", "c"]),
    ],
)
def test_group_strategies_decide_who_restarts(strategy: Strategy, failed: str, expected: list[str]) -> None:
    assert affected(strategy, ["a", "b", "c"], failed) == expected


# ---- the worker state machine ------------------------------------------------------

ALLOWED = [
    (S.STOPPED, S.STARTING),
    (S.STARTING, S.RUNNING),
    (S.RUNNING, S.STOPPING),
    (S.STOPPING, S.STOPPED),
    (S.STOPPING, S.BACKOFF),
    (S.RUNNING, S.BACKOFF),
    (S.BACKOFF, S.STARTING),
    (S.RUNNING, S.FAILED),
    (S.FAILED, S.STARTING),
]
REFUSED = [
    (S.STOPPED, S.RUNNING),
    (S.STOPPED, S.STOPPING),
    (S.STOPPED, S.BACKOFF),
    (S.RUNNING, S.STARTING),
    (S.BACKOFF, S.RUNNING),
    (S.FAILED, S.RUNNING),
    (S.FAILED, S.STOPPED),
    (S.BACKOFF, S.STOPPING),
    (S.RUNNING, S.RUNNING),
]


@pytest.mark.parametrize(("current", "new"), ALLOWED)
def test_allowed_transitions(current: WorkerState, new: WorkerState) -> None:
    assert transition(current, new) is new


@pytest.mark.parametrize(("current", "new"), REFUSED)
def test_refused_transitions_are_bugs(current: WorkerState, new: WorkerState) -> None:
    with pytest.raises(IllegalTransition, match=f"from {current} to {new}"):
        transition(current, new)


def test_every_state_has_its_moves_and_every_move_lands_on_a_state() -> None:
    assert set(TRANSITIONS) == set(WorkerState)
    for moves in TRANSITIONS.values():
        assert moves <= set(WorkerState)
        assert S.FAILED in moves  # any worker can be given up on
    # Only the states with a process may become running or stopping: ready, or recovered.
    assert {s for s, moves in TRANSITIONS.items() if S.RUNNING in moves} == {S.STARTING, S.UNHEALTHY}


@settings(max_examples=150, deadline=None)
@given(st.lists(st.sampled_from(list(WorkerState)), max_size=60))
def test_a_random_walk_never_leaves_the_machine(targets: list[WorkerState]) -> None:
    state = S.STOPPED
    for target in targets:
        try:
            state = transition(state, target)
        except IllegalTransition:
            assert target not in TRANSITIONS[state]
        else:
            assert state is target
        assert state in TRANSITIONS
        assert S.STARTING in reachable(state)  # no dead end: whatever happened, it can be started again


def reachable(state: WorkerState) -> set[WorkerState]:
    seen: set[WorkerState] = set()
    todo = [state]
    while todo:
        for nxt in TRANSITIONS[todo.pop()] - seen:
            seen.add(nxt)
            todo.append(nxt)
    return seen


def state_of(worker: Worker) -> WorkerState:
    return worker.state


class _Idle(Service):
    name = "idle"


def test_a_worker_changes_state_only_through_the_machine() -> None:
    worker = Worker(_Idle(), forked=True)
    assert state_of(worker) is S.STOPPED
    with pytest.raises(IllegalTransition):
        worker.move(S.RUNNING)
    assert state_of(worker) is S.STOPPED
    worker.move(S.STARTING)
    worker.move(S.RUNNING)
    assert state_of(worker) is S.RUNNING
    with pytest.raises(AttributeError):
        worker.state = S.STOPPED  # type: ignore[misc]


# ---- health: the unhealthy state and exit kind ------------------------------------------


def test_only_a_running_worker_becomes_unhealthy() -> None:
    assert {s for s, moves in TRANSITIONS.items() if S.UNHEALTHY in moves} == {S.RUNNING}


def test_an_unhealthy_worker_ends_as_a_running_one_does_or_recovers() -> None:
    # Whatever ends a running worker ends an unhealthy one (a stop, a kill, a crash, giving up).
    assert TRANSITIONS[S.UNHEALTHY] == (TRANSITIONS[S.RUNNING] - {S.UNHEALTHY}) | {S.RUNNING}
    for new in (S.RUNNING, S.STOPPING, S.STOPPED, S.BACKOFF, S.FAILED):
        assert transition(S.UNHEALTHY, new) is new
    for new in (S.STARTING, S.UNHEALTHY):
        with pytest.raises(IllegalTransition):
            transition(S.UNHEALTHY, new)
    for old in (S.STOPPED, S.STARTING, S.STOPPING, S.BACKOFF, S.FAILED):
        with pytest.raises(IllegalTransition):
            transition(old, S.UNHEALTHY)


def test_a_worker_goes_unhealthy_and_back_through_the_machine() -> None:
    worker = Worker(_Idle(), forked=True)
    for state in (S.STARTING, S.RUNNING, S.UNHEALTHY, S.RUNNING, S.UNHEALTHY, S.BACKOFF, S.STARTING):
        worker.move(state)
        assert state_of(worker) is state


@pytest.mark.parametrize("policy", POLICIES)
def test_an_unhealthy_end_is_decided_as_an_abnormal_one(policy: RestartPolicy) -> None:
    # Killed for its health, a worker comes back exactly when a crashed one would: same intensity, same backoff.
    assert ACTIONS[policy, "unhealthy"] == ACTIONS[policy, "abnormal"]
    history = History((1.0, 2.0), 2)
    for now in (3.0, 100.0):
        pol = Policy(policy, max_restarts=2, restart_window=10.0)
        assert decide(pol, "unhealthy", history, now, error="e", jitter=1.0) == decide(
            pol, "abnormal", history, now, error="e", jitter=1.0
        )

"""The escalation ladder, inhibitions and silences in virtual time (pure core, no I/O)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from alerts.escalation import ActionKind, Escalator, Phase, advance, on_transition, start
from alerts.lifecycle import AlertBook
from alerts.model import (
    Alert,
    AlertTransition,
    Finding,
    FindingKind,
    RuleId,
    Tier,
    TransitionKind,
)
from alerts.policy import (
    AlertingConfig,
    Directory,
    EscalationPolicy,
    EscalationStep,
    InhibitionRule,
    InhibitScope,
    OfficerInfo,
    Role,
)
from alerts.suppression import Silence, mute_for

T0 = datetime(2026, 11, 20, 2, 15, tzinfo=UTC)

DIRECTORY = Directory(
    {
        "off-li": OfficerInfo("off-li", Role.OFFICER, "sup-wang"),
        "off-chen": OfficerInfo("off-chen", Role.OFFICER, None),  # no supervisor
        "sup-wang": OfficerInfo("sup-wang", Role.SUPERVISOR, "cmd-futian"),
        "cmd-futian": OfficerInfo("cmd-futian", Role.COMMAND),
    }
)
LADDER = EscalationPolicy(
    steps=(
        EscalationStep(("officer",), 300),
        EscalationStep(("supervisor",), 600),
        EscalationStep(("command",), 300),
    ),
    reminder_interval_seconds=900,
    max_reminders=2,
    ack_timeout_seconds=3600,
    ack_timeout_targets=("acknowledger", "supervisor"),
    max_ack_renotifications=None,
)
CONFIG = AlertingConfig(
    policies={Tier.CRITICAL: LADDER, Tier.HIGH: LADDER, Tier.LOW: LADDER},
    inhibitions=(
        InhibitionRule(frozenset({"strap_open"}), frozenset({"gnss_lost"}), InhibitScope.DEVICE),
    ),
    leave_muted_rules=frozenset({"boundary_exit"}),
    directory=DIRECTORY,
)
OFFICER_OF = {"s001": "off-li", "s002": "off-li", "s003": "off-chen"}


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def finding(
    rule: RuleId, kind: FindingKind, seconds: float, subject: str = "s001",
    device: str = "tag-s001", tier: Tier = Tier.CRITICAL,
) -> Finding:
    return Finding(subject, device, rule, None, tier, kind, at(seconds), {"event": {}}, "test")


class World:
    """AlertBook + Escalator wired as in replay, with silences and a leave calendar."""

    def __init__(self, config: AlertingConfig = CONFIG) -> None:
        self.book = AlertBook(OFFICER_OF.get, config.tier_policies())
        self.silences: list[Silence] = []
        self.leave: set[str] = set()
        self.escalator = Escalator(config, self.book.get, self._mute)
        self.config = config

    def on_leave(self, subject_id: str, _at: datetime) -> bool:
        return subject_id in self.leave

    def _mute(self, alert: Alert, now: datetime) -> Any:
        return mute_for(
            alert, now, config=self.config, unresolved=self.book.unresolved(),
            silences=self.silences, leave=self,
        )

    def apply(self, f: Finding) -> list[AlertTransition]:
        transitions = self.book.apply(f)
        self.escalator.observe(transitions)
        return transitions

    def act(self, transitions: list[AlertTransition]) -> None:
        self.escalator.observe(transitions)

    def tick(self, seconds: float) -> list[tuple[str, float, tuple[str, ...]]]:
        out = self.escalator.tick(at(seconds))
        return [
            (t.kind.value, (t.at - T0).total_seconds(),
             tuple(t.detail["recipients"]) if t.detail else ())
            for t in out
        ]


def test_full_ladder_step_by_step_in_virtual_time() -> None:
    world = World()
    [opened] = world.apply(finding(RuleId.STRAP_OPEN, FindingKind.RAISED, 0))
    alert_id = opened.alert.alert_id
    assert world.tick(0) == [("notified", 0, ("off-li",))]
    assert world.tick(299) == []
    assert world.tick(300) == [("escalated", 300, ("sup-wang",))]
    assert world.tick(899.9) == []
    assert world.tick(900) == [("escalated", 900, ("cmd-futian",))]
    assert world.tick(1199) == []
    # Past the last step: everyone told so far is reminded, twice at most (max_reminders).
    everyone = ("off-li", "sup-wang", "cmd-futian")
    assert world.tick(1200) == [("reminded", 1200, everyone)]
    assert world.tick(2100) == [("reminded", 2100, everyone)]
    assert world.tick(9000) == []
    # The supervisor takes it; not resolved within the ack timeout: re-notified, repeatedly.
    world.act(world.book.acknowledge(alert_id, "sup-wang", at(9000)))
    assert world.tick(12599) == []
    assert world.tick(12600) == [("renotified", 12600, ("sup-wang",))]
    assert world.tick(16200) == [("renotified", 16200, ("sup-wang",))]
    world.act(world.book.resolve(alert_id, "sup-wang", "confirmed_violation", at(16300)))
    assert world.tick(100_000) == []
    assert world.escalator.state(alert_id) is None


def test_acknowledgement_stops_the_ladder() -> None:
    world = World()
    [opened] = world.apply(finding(RuleId.STRAP_OPEN, FindingKind.RAISED, 0))
    assert world.tick(1) == [("notified", 0, ("off-li",))]
    world.act(world.book.acknowledge(opened.alert.alert_id, "off-li", at(120)))
    assert world.tick(3719) == []
    # Re-notified: the acknowledger and the officer's supervisor.
    assert world.tick(3720) == [("renotified", 3720, ("off-li", "sup-wang"))]


def test_a_late_sweep_sends_every_missed_step_at_its_due_time_and_one_reminder() -> None:
    world = World()
    world.apply(finding(RuleId.STRAP_OPEN, FindingKind.RAISED, 0))
    # The daemon was down for an hour: both escalations are still sent, each marked with the
    # time it was due; the missed reminders collapse into the latest one.
    got = world.tick(3600)
    assert [(k, s) for k, s, _ in got] == [
        ("notified", 0), ("escalated", 300), ("escalated", 900), ("reminded", 3000),
    ]
    assert world.tick(3899) == []
    assert world.tick(3900) == [("reminded", 3900, ("off-li", "sup-wang", "cmd-futian"))]


def test_a_step_with_nobody_is_passed_over_at_once() -> None:
    world = World()
    world.apply(finding(RuleId.STRAP_OPEN, FindingKind.RAISED, 0, subject="s003",
                        device="tag-s003"))
    assert world.tick(0) == [("notified", 0, ("off-chen",))]
    # off-chen has no supervisor: the command step follows step 1's timeout directly.
    assert world.tick(300) == [("escalated", 300, ("cmd-futian",))]


def test_reopen_restarts_the_ladder() -> None:
    world = World()
    [opened] = world.apply(finding(RuleId.STRAP_OPEN, FindingKind.RAISED, 0))
    world.tick(0)
    world.act(world.book.resolve(opened.alert.alert_id, "off-li", "false_alarm", at(60)))
    assert world.tick(1000) == []
    [reopened] = world.apply(finding(RuleId.STRAP_OPEN, FindingKind.RAISED, 1200))
    assert reopened.kind is TransitionKind.REOPENED
    assert world.tick(1200) == [("notified", 1200, ("off-li",))]
    assert world.tick(1500) == [("escalated", 1500, ("sup-wang",))]


def test_silence_mutes_then_the_pending_step_goes_out_when_it_expires() -> None:
    world = World()
    world.silences.append(
        Silence("sil-1", "s001", None, "hospital visit", "sup-wang", at(-10), at(1000))
    )
    [opened] = world.apply(finding(RuleId.BOUNDARY_EXIT, FindingKind.RAISED, 0, tier=Tier.HIGH))
    got = world.escalator.tick(at(0))
    assert [t.kind for t in got] == [TransitionKind.SUPPRESSED]
    assert got[0].note == "muted: silence sil-1 by sup-wang: hospital visit"
    assert world.tick(500) == []  # recorded once per mute, not once per sweep
    state = world.escalator.state(opened.alert.alert_id)
    # Looked at again within a minute (a silence may be ended early), at the latest at its end.
    assert state is not None
    assert state.wake_at == at(560)
    assert world.tick(1000) == [("notified", 1000, ("off-li",))]
    assert world.tick(1300) == [("escalated", 1300, ("sup-wang",))]


def test_silence_matches_subject_or_rule_and_expires() -> None:
    world = World()
    [t] = world.apply(finding(RuleId.CURFEW_AWAY, FindingKind.RAISED, 0, tier=Tier.HIGH))
    alert = t.alert
    by_rule = Silence("r", None, "curfew_away", "curfew suspended", "cmd-futian", at(0), at(60))
    other_rule = Silence("o", None, "strap_open", "x", "cmd-futian", at(0), at(60))
    other_subject = Silence("s", "s002", None, "x", "sup-wang", at(0), at(60))
    ended = Silence("e", "s001", None, "x", "sup-wang", at(0), at(60), ended_at=at(30))

    def muted(silence: Silence, seconds: float) -> bool:
        return mute_for(alert, at(seconds), config=CONFIG, unresolved=[],
                        silences=[silence]) is not None

    assert muted(by_rule, 10)
    assert not muted(by_rule, 60)
    assert not muted(other_rule, 10)
    assert not muted(other_subject, 10)
    assert muted(ended, 10)
    assert not muted(ended, 30)


def test_tamper_inhibits_gnss_loss_of_the_same_device_until_it_is_resolved() -> None:
    world = World()
    [strap] = world.apply(finding(RuleId.STRAP_OPEN, FindingKind.RAISED, 0))
    [gnss] = world.apply(finding(RuleId.GNSS_LOST, FindingKind.RAISED, 30, tier=Tier.HIGH))
    # Another device of another subject loses GNSS too: not inhibited.
    [other] = world.apply(finding(RuleId.GNSS_LOST, FindingKind.RAISED, 30, subject="s002",
                                  device="tag-s002", tier=Tier.HIGH))
    out = world.escalator.tick(at(30))
    by_alert = {(t.alert.alert_id, t.kind) for t in out}
    assert (strap.alert.alert_id, TransitionKind.NOTIFIED) in by_alert
    assert (gnss.alert.alert_id, TransitionKind.SUPPRESSED) in by_alert
    assert (other.alert.alert_id, TransitionKind.NOTIFIED) in by_alert
    suppressed = next(t for t in out if t.kind is TransitionKind.SUPPRESSED)
    assert suppressed.note == f"muted: inhibited by strap_open alert {strap.alert.alert_id}"
    world.act(world.book.acknowledge(strap.alert.alert_id, "off-li", at(40)))
    assert [t.kind for t in world.escalator.tick(at(60))] == []  # still inhibited (unresolved)
    world.act(world.book.resolve(strap.alert.alert_id, "off-li", "device_fault", at(70)))
    # The mute has no known end, so it is re-checked within MUTE_RECHECK_SECONDS (60 s).
    resumed = world.escalator.tick(at(90))
    assert [(t.alert.alert_id, t.kind, t.at) for t in resumed] == [
        (gnss.alert.alert_id, TransitionKind.NOTIFIED, at(90))
    ]


def test_approved_leave_mutes_boundary_alerts_only() -> None:
    world = World()
    world.leave.add("s001")
    [boundary] = world.apply(finding(RuleId.BOUNDARY_EXIT, FindingKind.RAISED, 0, tier=Tier.HIGH))
    [strap] = world.apply(finding(RuleId.STRAP_OPEN, FindingKind.RAISED, 0))
    kinds = {(t.alert.alert_id, t.kind) for t in world.escalator.tick(at(0))}
    assert kinds == {
        (boundary.alert.alert_id, TransitionKind.SUPPRESSED),
        (strap.alert.alert_id, TransitionKind.NOTIFIED),
    }


def test_on_transition_and_advance_are_plain_functions() -> None:
    state = start("a1", Tier.CRITICAL, at(0))
    assert state.phase is Phase.LADDER
    assert state.wake_at == at(0)
    state, actions = advance(state, LADDER, at(0), officer_id="off-li", directory=DIRECTORY)
    assert [(a.kind, a.step, a.recipients) for a in actions] == [
        (ActionKind.NOTIFY, 0, ("off-li",))
    ]
    assert state.next_due_at == state.wake_at == at(300)
    again, none = advance(state, LADDER, at(299), officer_id="off-li", directory=DIRECTORY)
    assert again == state
    assert none == []


@settings(max_examples=200, deadline=None)
@given(
    ticks=st.lists(st.floats(0, 20_000), min_size=1, max_size=40),
    ack_at=st.one_of(st.none(), st.floats(0, 20_000)),
)
def test_each_step_once_in_order_on_time_and_nothing_after_ack(
    ticks: list[float], ack_at: float | None
) -> None:
    world = World()
    [opened] = world.apply(finding(RuleId.STRAP_OPEN, FindingKind.RAISED, 0))
    seen: list[tuple[str, float]] = []
    acked = False
    for seconds in sorted(ticks):
        if ack_at is not None and not acked and ack_at <= seconds:
            world.act(world.book.acknowledge(opened.alert.alert_id, "off-li", at(ack_at)))
            acked = True
        seen += [(k, s) for k, s, _ in world.tick(seconds)]
    ladder = [(k, s) for k, s in seen if k in ("notified", "escalated")]
    # Steps are due at 0, 300 and 900: each once, in order, at its due time.
    assert ladder == [("notified", 0.0), ("escalated", 300.0), ("escalated", 900.0)][: len(ladder)]
    if ack_at is not None:
        assert all(s <= ack_at for k, s in seen if k != "renotified")
        assert all(s >= ack_at + 3600 - 1e-5 for k, s in seen if k == "renotified")
    reminders = [s for k, s in seen if k == "reminded"]
    assert len(reminders) <= 2
    assert reminders == sorted(set(reminders))


def test_transitions_without_state_start_one() -> None:
    world = World()
    [opened] = world.apply(finding(RuleId.STRAP_OPEN, FindingKind.RAISED, 0))
    [updated] = world.apply(finding(RuleId.STRAP_OPEN, FindingKind.RAISED, 10))
    state = on_transition(None, updated, LADDER)
    assert state is not None
    assert state.phase is Phase.LADDER
    assert state.alert_id == opened.alert.alert_id


def test_replay_escalates_in_virtual_time_like_the_daemon() -> None:
    """`emon replay` runs the ladder with the daemon's pure functions: each alert of the
    scripted day gets its first step when it opens and its second one step later."""
    import io
    import json
    from datetime import date
    from pathlib import Path

    from daemon.configfiles import load_config
    from daemon.replay import replay_lines
    from simulators.scripted_day import replay_record, scripted_day

    loaded = load_config(Path(__file__).resolve().parent.parent / "config", env={})
    lines = [json.dumps(replay_record(m)) for m in scripted_day(date(2026, 11, 20))]
    out = io.StringIO()
    replay_lines(lines, loaded.core, 15.0, out, None, escalation=True)
    records = [json.loads(line) for line in out.getvalue().splitlines()]
    opened = {r["alert_id"]: r for r in records if r["transition"] == "opened"}
    assert opened
    for alert_id, alert in opened.items():
        ladder = [r for r in records if r["alert_id"] == alert_id
                  and r["transition"] in ("notified", "escalated")]
        assert ladder, alert_id
        assert ladder[0]["transition"] == "notified"
        # When emon learned of it: the opening ping's arrival (upload latency after its ts).
        learned = datetime.fromisoformat(ladder[0]["transition_at"])
        lag = learned - datetime.fromisoformat(alert["opened_at"])
        assert timedelta(0) <= lag <= timedelta(minutes=5)
        policy = loaded.core.alerting.policy(Tier(alert["tier"]))
        if len(ladder) > 1:
            gap = datetime.fromisoformat(ladder[1]["transition_at"]) - datetime.fromisoformat(
                ladder[0]["transition_at"]
            )
            assert gap.total_seconds() == policy.steps[0].timeout_seconds
    quiet = io.StringIO()
    replay_lines(lines, loaded.core, 15.0, quiet, None)
    assert {json.loads(line)["transition"] for line in quiet.getvalue().splitlines()} <= {
        "opened", "updated", "cleared", "resolved", "reopened"
    }


def test_a_late_upload_starts_the_ladder_when_emon_learns_of_it() -> None:
    """Pings stored on the device for 3 h open an alert stamped 3 h ago; the officer still
    gets the full first-step timeout before the supervisor is called."""
    world = World()
    opened = world.book.apply(finding(RuleId.STRAP_OPEN, FindingKind.RAISED, 0))
    world.escalator.observe(opened, now=at(3 * 3600))
    assert world.tick(3 * 3600) == [("notified", 3 * 3600, ("off-li",))]
    assert world.tick(3 * 3600 + 299) == []
    assert world.tick(3 * 3600 + 300) == [("escalated", 3 * 3600 + 300, ("sup-wang",))]

"""Issue 4 device rules in the pure core: tamper (strap, case) that is never silently
cleared, power, battery with thresholds and charger, silence (脱管) and GNSS lost driven by
the clock, with recovery noted on the alert."""

from __future__ import annotations

from datetime import datetime, timedelta

from alerts.lifecycle import AlertBook
from alerts.model import AlertState, Finding, RuleId, Tier, TransitionKind
from geofence.config import DeviceThresholds, RuleParams
from geofence.engine import Engine
from geofence.observation import DeviceEventType, DeviceKind, FixSource, LocationFix
from tests.core_helpers import DAY, local
from tests.rules_helpers import (
    CLEARED,
    HOME,
    MINUTE,
    PHONE,
    RAISED,
    SECOND,
    TAG,
    device_event,
    every,
    feed,
    gps,
    make_rules_config,
    of_rule,
    run,
    summary,
)

SUNDAY = DAY + timedelta(days=2)
TOWN = (0.0, 0.0)  # inside the district, away from home, work and the exclusions


def sun(hour: int, minute: int = 0, second: int = 0) -> datetime:
    return local(hour, minute, second, day=SUNDAY)


def engine(
    thresholds: dict[DeviceKind, DeviceThresholds] | None = None,
    subject_thresholds: dict[DeviceKind, DeviceThresholds] | None = None,
) -> Engine:
    return Engine(
        make_rules_config(thresholds=thresholds, subject_thresholds=subject_thresholds)
    )


def book_of(findings: list[Finding]) -> AlertBook:
    book = AlertBook(officer_of=lambda _subject: "off1")
    for f in findings:
        book.apply(f)
    return book


# ---------------------------------------------------------------------- tamper


def test_strap_opened_and_closed_within_minutes_stays_an_open_alert() -> None:
    e = engine()
    found = feed(e, [device_event(DeviceEventType.STRAP_OPEN, sun(10, 15)),
                     device_event(DeviceEventType.STRAP_CLOSED, sun(10, 17))])
    assert summary(found) == [
        (RAISED, RuleId.STRAP_OPEN, None, sun(10, 15)),
        (CLEARED, RuleId.STRAP_OPEN, None, sun(10, 17)),
    ]
    book = book_of(found)
    (alert,) = book.unresolved()
    assert alert.state is AlertState.OPEN  # a person must look at it: a taped strap
    assert alert.condition_active is False
    assert alert.cleared_at == sun(10, 17)
    assert alert.tier is Tier.CRITICAL


def test_case_open_is_a_critical_tamper_alert() -> None:
    e = engine()
    found = feed(e, [device_event(DeviceEventType.CASE_OPEN, sun(11)),
                     device_event(DeviceEventType.CASE_CLOSED, sun(11, 1))])
    assert [s[:2] for s in summary(found)] == [(RAISED, RuleId.CASE_OPEN),
                                               (CLEARED, RuleId.CASE_OPEN)]
    assert found[0].tier is Tier.CRITICAL
    assert found[0].reason == f"Case opened on device {TAG}"


def test_tamper_events_arriving_out_of_order_are_still_an_alert() -> None:
    e = engine()
    closed = device_event(DeviceEventType.STRAP_CLOSED, sun(10, 17))
    opened = device_event(DeviceEventType.STRAP_OPEN, sun(10, 15))
    assert e.observe(closed, sun(10, 20)) == []
    found = e.observe(opened, sun(10, 21))
    assert summary(found) == [
        (RAISED, RuleId.STRAP_OPEN, None, sun(10, 15)),
        (CLEARED, RuleId.STRAP_OPEN, None, sun(10, 17)),
    ]
    assert book_of(found).unresolved()[0].state is AlertState.OPEN


def test_power_off_raises_and_any_later_message_says_it_is_on_again() -> None:
    e = engine()
    found = feed(e, [gps(TOWN, sun(9)), device_event(DeviceEventType.POWER_OFF, sun(9, 1))])
    assert summary(found) == [(RAISED, RuleId.POWER_OFF, None, sun(9, 1))]
    assert found[0].tier is Tier.HIGH
    # No silence alert while the device says it is off: the power-off alert says more.
    assert e.tick(sun(11)) == []
    back = feed(e, [gps(TOWN, sun(11, 30))])
    assert summary(back) == [(CLEARED, RuleId.POWER_OFF, None, sun(11, 30))]
    assert back[0].reason == f"Device {TAG} reporting again after power off"


# ---------------------------------------------------------------------- battery


def battery_fixes(levels: list[float], start: datetime, device_id: str = TAG) -> list[LocationFix]:
    return [gps(TOWN, start + k * MINUTE, battery_pct=level, device_id=device_id)
            for k, level in enumerate(levels)]


def test_battery_low_needs_two_readings_and_clears_with_hysteresis() -> None:
    e = engine()
    t0 = sun(12)
    found = feed(e, battery_fixes([25, 21, 19, 22, 19, 18, 21, 24, 26], t0))
    assert of_rule(found, RuleId.BATTERY_LOW) == [
        (RAISED, RuleId.BATTERY_LOW, None, t0 + 4 * MINUTE),  # 19, 18: the run began at 19
        (CLEARED, RuleId.BATTERY_LOW, None, t0 + 8 * MINUTE),  # 26 >= 20 + 5
    ]
    assert found[0].tier is Tier.LOW
    # The reason quotes the reading that confirmed it.
    assert found[0].reason == f"Battery of device {TAG} at 18 % (threshold 20 %)"


def test_battery_critical_covers_low_and_the_charger_clears_both() -> None:
    e = engine()
    t0 = sun(12)
    found = feed(e, battery_fixes([9, 8], t0))
    assert summary(found) == [(RAISED, RuleId.BATTERY_CRITICAL, None, t0)]
    assert found[0].tier is Tier.HIGH
    charged = feed(e, [device_event(DeviceEventType.CHARGER_CONNECTED, t0 + 3 * MINUTE)])
    assert summary(charged) == [(CLEARED, RuleId.BATTERY_CRITICAL, None, t0 + 3 * MINUTE)]
    assert charged[0].reason == f"Charger connected to device {TAG} at 8 %"
    # Charging: low readings raise nothing; unplugged, two readings raise again.
    assert feed(e, battery_fixes([8, 9], t0 + 4 * MINUTE)) == []
    feed(e, [device_event(DeviceEventType.CHARGER_DISCONNECTED, t0 + 6 * MINUTE)])
    again = feed(e, battery_fixes([9, 9], t0 + 7 * MINUTE))
    assert summary(again) == [(RAISED, RuleId.BATTERY_CRITICAL, None, t0 + 7 * MINUTE)]


def test_battery_low_event_counts_at_once_with_or_without_a_level() -> None:
    e = engine()
    found = feed(e, [device_event(DeviceEventType.BATTERY_LOW, sun(12), level=12)])
    assert summary(found) == [(RAISED, RuleId.BATTERY_LOW, None, sun(12))]
    e = engine()
    found = feed(e, [device_event(DeviceEventType.BATTERY_LOW, sun(12), level=7)])
    assert summary(found) == [(RAISED, RuleId.BATTERY_CRITICAL, None, sun(12))]
    e = engine()
    found = feed(e, [device_event(DeviceEventType.BATTERY_LOW, sun(12), level="low")])
    assert summary(found) == [(RAISED, RuleId.BATTERY_LOW, None, sun(12))]
    assert found[0].reason == f"Battery of device {TAG} at low (device event) (threshold 20 %)"
    assert e.stats["battery_level_unusable"] == 1


def test_battery_thresholds_are_per_device_kind() -> None:
    e = engine()
    t0 = sun(12)
    assert feed(e, battery_fixes([17, 16], t0, device_id=PHONE)) == []  # phone: 15 %
    found = feed(e, battery_fixes([17, 16], t0))  # tag: 20 %
    assert summary(found) == [(RAISED, RuleId.BATTERY_LOW, None, t0)]


def test_a_bare_rule_set_has_no_device_thresholds() -> None:
    assert RuleParams().devices == {}
    e = engine(thresholds={})
    found = run(e, [*battery_fixes([5, 5], sun(12)), gps(TOWN, sun(14))], until=sun(15))
    assert found == []


# ---------------------------------------------------------------------- silence (脱管)


def test_silence_is_raised_by_the_clock_and_the_next_message_notes_recovery() -> None:
    e = engine()
    fixes = every(TOWN, sun(11), sun(12))  # last fix 11:59, arrives 11:59:01
    found = run(e, fixes, until=sun(12, 30))
    assert summary(found) == [(RAISED, RuleId.DEVICE_SILENT, None, sun(12, 14, 1))]
    assert found[0].tier is Tier.HIGH
    assert found[0].evidence["last_heard"]["received_at"] == sun(11, 59, 1).isoformat()
    assert found[0].reason == f"Nothing received from device {TAG} for 15 min (脱管)"
    recovered = e.observe(gps(TOWN, sun(12, 40)), sun(12, 40, 1))
    assert summary(recovered) == [(CLEARED, RuleId.DEVICE_SILENT, None, sun(12, 40, 1))]
    assert recovered[0].evidence["ping"]["ts"] == sun(12, 40).isoformat()
    book = book_of(found)
    (cleared,) = book.apply(recovered[0])
    assert cleared.kind is TransitionKind.CLEARED
    assert cleared.alert.opened_at == sun(12, 14, 1)
    assert cleared.alert.last_evidence["received_at"] == sun(12, 40, 1).isoformat()


def test_silence_that_no_tick_saw_is_still_reported_when_the_device_returns() -> None:
    e = engine()
    found = feed(e, [gps(TOWN, sun(12)), gps(TOWN, sun(12, 20))])
    assert summary(found) == [
        (RAISED, RuleId.DEVICE_SILENT, None, sun(12, 15, 1)),
        (CLEARED, RuleId.DEVICE_SILENT, None, sun(12, 20, 1)),
    ]


def test_short_gaps_and_store_and_forward_bursts_are_not_silence() -> None:
    e = engine()
    fixes = every(TOWN, sun(11), sun(12))
    # Out of coverage 12:00-12:10: the fixes of those minutes arrive together at 12:10:30.
    burst = every(TOWN, sun(12), sun(12, 11))
    found = run(e, fixes, until=sun(12, 10))
    for f in burst:
        found += e.observe(f, sun(12, 10, 30))
    found += run(e, every(TOWN, sun(12, 11), sun(12, 30)), until=sun(12, 30))
    assert found == []


def test_silence_threshold_per_device_kind_and_per_subject() -> None:
    # The phone is allowed an hour.
    e = engine()
    assert run(e, [gps(TOWN, sun(12), device_id=PHONE)], until=sun(12, 50)) == []
    assert [s[:2] for s in summary(e.tick(sun(13, 5)))] == [(RAISED, RuleId.DEVICE_SILENT)]
    # This subject's tag is allowed 30 minutes.
    slow = DeviceThresholds(silence_seconds=30 * 60.0)
    e = engine(subject_thresholds={DeviceKind.WEARABLE: slow})
    assert run(e, [gps(TOWN, sun(12))], until=sun(12, 25)) == []
    assert summary(e.tick(sun(12, 31))) == [(RAISED, RuleId.DEVICE_SILENT, None, sun(12, 30, 1))]


# ---------------------------------------------------------------------- GNSS lost


def test_gnss_lost_when_only_cell_fixes_arrive_and_cleared_by_a_gnss_fix() -> None:
    e = engine()
    fixes = every(TOWN, sun(11), sun(12))  # last GNSS 11:59, arriving 11:59:01
    fixes += every(TOWN, sun(12), sun(12, 30), accuracy_m=400.0, source=FixSource.CELL)
    found = run(e, fixes, until=sun(12, 30))
    assert summary(found) == [(RAISED, RuleId.GNSS_LOST, None, sun(12, 19, 1))]
    assert found[0].tier is Tier.LOW
    back = e.observe(gps(TOWN, sun(12, 31)), sun(12, 31, 1))
    assert summary(back) == [(CLEARED, RuleId.GNSS_LOST, None, sun(12, 31, 1))]


def test_gnss_loss_at_home_is_expected_indoors() -> None:
    e = engine()
    fixes = every(HOME, sun(11), sun(12))
    fixes += every(HOME, sun(12), sun(13), accuracy_m=30.0, source=FixSource.WIFI)
    assert run(e, fixes, until=sun(13)) == []


def test_gnss_lost_is_raised_once_the_person_leaves_home_without_gnss() -> None:
    e = engine()
    fixes = every(HOME, sun(11), sun(12))
    fixes += every(HOME, sun(12), sun(12, 30), accuracy_m=30.0, source=FixSource.WIFI)
    # Cell fixes 1.4 km away: precise enough to prove they left home.
    fixes += every(TOWN, sun(12, 30), sun(12, 40), accuracy_m=300.0, source=FixSource.CELL)
    found = run(e, fixes, until=sun(12, 40))
    gnss = of_rule(found, RuleId.GNSS_LOST)
    assert len(gnss) == 1
    assert gnss[0][0] is RAISED
    assert sun(12, 30) < gnss[0][3] <= sun(12, 33)


def test_phones_have_no_gnss_rule() -> None:
    e = engine()
    fixes = [gps(TOWN, sun(11), device_id=PHONE)]
    fixes += every(TOWN, sun(11, 10), sun(12, 30), 10 * MINUTE, accuracy_m=50.0,
                   source=FixSource.WIFI, device_id=PHONE)
    assert run(e, fixes, until=sun(12, 30)) == []
    assert e.config.thresholds(e.config.subjects["s1"], DeviceKind.PHONE).gnss_lost_seconds is None


def test_recovery_times_are_arrival_times_in_order() -> None:
    e = engine()
    found = feed(e, [gps(TOWN, sun(12)), gps(TOWN, sun(12, 40))])
    raised, cleared = found
    assert raised.at < cleared.at
    assert cleared.at == sun(12, 40) + SECOND

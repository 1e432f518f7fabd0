"""`config/policies.yaml`: escalation policies per tier, inhibitions, notifier endpoints and
officers' contacts. Validated whole with pydantic (extra keys refused, every field bounded)
and compiled into the pure core's `AlertingConfig` plus the shell's notifier specs.

Secrets (webhook signing keys, robot URLs that embed a key, SMTP passwords) are never in the
file: an endpoint names the environment variable that holds each one.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Literal

from pydantic import Field, model_validator

from alerts.model import Tier, TransitionKind
from alerts.policy import (
    DEFAULT_ACK_TIMEOUT_SECONDS,
    DEFAULT_POLICY,
    DEFAULT_REMINDER_INTERVAL_SECONDS,
    DEFAULT_STEP_TIMEOUT_SECONDS,
    TARGET_ACKNOWLEDGER,
    TARGET_KEYWORDS,
    AlertingConfig,
    Directory,
    EscalationPolicy,
    EscalationStep,
    InhibitionRule,
    InhibitScope,
    OfficerInfo,
    Role,
)
from alerts.suppression import MAX_SILENCE_SECONDS
from daemon.strictmodel import StrictModel

POLICIES_FILE = "policies.yaml"
MQTT_ENDPOINT = "mqtt"  # built in: emon/v1/officers/<officer_id>/notifications

DEFAULT_SWEEP_INTERVAL_SECONDS = 5.0
DAY_SECONDS = 24 * 3600.0

Identifier = Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}$")]
EnvName = Annotated[str, Field(pattern=r"^[A-Z_][A-Z0-9_]{0,127}$")]
HttpUrl = Annotated[str, Field(pattern=r"^https?://[^\s]+$", max_length=2048)]




class StepModel(StrictModel):
    targets: list[Identifier] = Field(
        min_length=1, max_length=16,
        title="Who is notified: officer, supervisor, command, or officer ids",
    )
    timeout_seconds: float = Field(
        DEFAULT_STEP_TIMEOUT_SECONDS, ge=1, le=DAY_SECONDS,
        title="Time to acknowledge before the next step",
    )


class TierPolicyModel(StrictModel):
    steps: list[StepModel] = Field(min_length=1, max_length=10, title="Escalation ladder")
    reminder_interval_seconds: float | None = Field(
        DEFAULT_REMINDER_INTERVAL_SECONDS, ge=10, le=DAY_SECONDS,
        title="Remind everyone notified this often after the last step (null: never)",
    )
    max_reminders: int | None = Field(None, ge=0, le=1000, title="Cap on reminders (null: none)")
    ack_timeout_seconds: float | None = Field(
        DEFAULT_ACK_TIMEOUT_SECONDS, ge=10, le=30 * DAY_SECONDS,
        title="Re-notify when acknowledged but not resolved after this long (null: never)",
    )
    ack_timeout_targets: list[Identifier] = Field(
        default_factory=lambda: [TARGET_ACKNOWLEDGER, "supervisor"], min_length=1, max_length=16,
        title="Who is re-notified after the acknowledgement timeout",
    )
    max_ack_renotifications: int | None = Field(
        None, ge=0, le=1000, title="Cap on re-notifications after acknowledgement (null: none)"
    )
    auto_resolve_on_clear: bool = Field(
        False, title="Resolve when the condition clears (never for tamper: a taped strap clears)"
    )
    reopen_window_seconds: float = Field(
        3600.0, ge=0, le=30 * DAY_SECONDS, title="A recurrence this soon after resolution reopens"
    )

    def compile(self) -> EscalationPolicy:
        return EscalationPolicy(
            steps=tuple(EscalationStep(tuple(s.targets), s.timeout_seconds) for s in self.steps),
            reminder_interval_seconds=self.reminder_interval_seconds,
            max_reminders=self.max_reminders,
            ack_timeout_seconds=self.ack_timeout_seconds,
            ack_timeout_targets=tuple(self.ack_timeout_targets),
            max_ack_renotifications=self.max_ack_renotifications,
            auto_resolve_on_clear=self.auto_resolve_on_clear,
            reopen_window_seconds=self.reopen_window_seconds,
        )


class InhibitionModel(StrictModel):
    source: list[Identifier] = Field(min_length=1, title="Rules whose unresolved alert mutes")
    targets: list[Identifier] = Field(min_length=1, title="Rules that are muted")
    scope: InhibitScope = Field(InhibitScope.DEVICE, title="Same device, or same subject")


class _EndpointBase(StrictModel):
    max_attempts: int = Field(6, ge=1, le=20, title="Tries before giving up")
    initial_backoff_seconds: float = Field(1.0, ge=0.01, le=600, title="First retry delay")
    max_backoff_seconds: float = Field(120.0, ge=0.01, le=3600, title="Longest retry delay")
    timeout_seconds: float = Field(10.0, ge=0.1, le=120, title="One attempt's time limit")
    workers: int = Field(2, ge=1, le=32, title="Concurrent deliveries to this endpoint")
    queue_size: int = Field(1000, ge=1, le=100_000, title="Deliveries held in memory")
    feed: list[TransitionKind] = Field(
        default_factory=list,
        title="Transitions of every alert sent here regardless of targets (a feed)",
    )

    @model_validator(mode="after")
    def _backoff_order(self) -> _EndpointBase:
        if self.max_backoff_seconds < self.initial_backoff_seconds:
            raise ValueError("max_backoff_seconds must not be below initial_backoff_seconds")
        return self


class WebhookEndpoint(_EndpointBase):
    kind: Literal["webhook"]
    url: HttpUrl | None = Field(None, title="Receiver URL (or url_env)")
    url_env: EnvName | None = Field(None, title="Environment variable holding the URL")
    secret_env: EnvName = Field(title="Environment variable holding the HMAC-SHA256 key")
    include_evidence: bool = Field(False, title="Send trigger/last evidence (coordinates)")

    @model_validator(mode="after")
    def _one_url(self) -> WebhookEndpoint:
        if (self.url is None) == (self.url_env is None):
            raise ValueError("give exactly one of url, url_env")
        return self


class EmailEndpoint(_EndpointBase):
    kind: Literal["email"]
    host: str = Field(min_length=1, max_length=255, title="SMTP server")
    port: int = Field(587, ge=1, le=65535, title="SMTP port")
    security: Literal["none", "starttls", "tls"] = Field("starttls", title="Transport security")
    username: str | None = Field(None, max_length=255, title="SMTP user")
    password_env: EnvName | None = Field(None, title="Environment variable holding the password")
    from_address: str = Field(pattern=r"^[^@\s]+@[^@\s]+$", title="Sender address")
    feed_to: list[Annotated[str, Field(pattern=r"^[^@\s]+@[^@\s]+$")]] = Field(
        default_factory=list, max_length=50, title="Addresses that receive the feed"
    )


class _RobotEndpoint(_EndpointBase):
    url: HttpUrl | None = Field(None, title="Robot webhook URL (holds the key: prefer url_env)")
    url_env: EnvName | None = Field(None, title="Environment variable holding the URL")

    @model_validator(mode="after")
    def _one_url(self) -> _RobotEndpoint:
        if (self.url is None) == (self.url_env is None):
            raise ValueError("give exactly one of url, url_env")
        return self


class WecomEndpoint(_RobotEndpoint):
    kind: Literal["wecom"]


class DingtalkEndpoint(_RobotEndpoint):
    kind: Literal["dingtalk"]
    secret_env: EnvName | None = Field(None, title="Environment variable of the 加签 secret")


EndpointModel = Annotated[
    WebhookEndpoint | EmailEndpoint | WecomEndpoint | DingtalkEndpoint,
    Field(discriminator="kind"),
]


class ContactModel(StrictModel):
    endpoint: Identifier = Field(title="Notifier endpoint id")
    address: str | None = Field(
        None, pattern=r"^[^@\s]+@[^@\s]+$", title="E-mail address (email endpoints)"
    )
    mobile: str | None = Field(
        None, pattern=r"^\+?[0-9]{5,20}$", title="Mobile number to @-mention (robots)"
    )


class SilenceSettings(StrictModel):
    max_seconds: float = Field(
        7 * DAY_SECONDS, ge=60, le=MAX_SILENCE_SECONDS, title="Longest silence allowed"
    )


class PoliciesFile(StrictModel):
    sweep_interval_seconds: float = Field(
        DEFAULT_SWEEP_INTERVAL_SECONDS, ge=0.2, le=60,
        title="How often due escalations are swept (bounds lateness of a step)",
    )
    console_url: str = Field("", max_length=512, title="Link put in messages ('' for none)")
    tiers: dict[Tier, TierPolicyModel] = Field(default_factory=dict, title="Policy per tier")
    inhibitions: list[InhibitionModel] = Field(default_factory=list)
    leave_mutes: list[Identifier] = Field(
        default_factory=list, title="Rules muted while the subject is on approved leave"
    )
    notifiers: dict[Identifier, EndpointModel] = Field(default_factory=dict)
    mqtt_officer_topics: bool = Field(
        True, title="Also publish each officer's notifications on emon/v1/officers/<id>/..."
    )
    contacts: dict[Identifier, list[ContactModel]] = Field(
        default_factory=dict, title="Officer id -> where that officer is notified"
    )
    silences: SilenceSettings = SilenceSettings()

    @model_validator(mode="after")
    def _references(self) -> PoliciesFile:
        if MQTT_ENDPOINT in self.notifiers:
            raise ValueError(f"notifiers: {MQTT_ENDPOINT!r} is reserved for the MQTT topics")
        for officer_id, contacts in self.contacts.items():
            for contact in contacts:
                endpoint = self.notifiers.get(contact.endpoint)
                if endpoint is None:
                    raise ValueError(
                        f"contacts.{officer_id}: endpoint {contact.endpoint!r} not defined"
                    )
                if isinstance(endpoint, EmailEndpoint) and contact.address is None:
                    raise ValueError(f"contacts.{officer_id}: e-mail endpoint needs an address")
        return self


def compile_alerting(
    policies: PoliciesFile, officers: Mapping[str, tuple[str, str | None]]
) -> AlertingConfig:
    """The pure core's view; `officers` maps id -> (role, supervisor id)."""
    directory = Directory(
        {oid: OfficerInfo(oid, Role(role), sup) for oid, (role, sup) in officers.items()}
    )
    return AlertingConfig(
        policies={tier: policies.tiers[tier].compile() if tier in policies.tiers
                  else DEFAULT_POLICY for tier in Tier},
        inhibitions=tuple(
            InhibitionRule(frozenset(i.source), frozenset(i.targets), i.scope)
            for i in policies.inhibitions
        ),
        leave_muted_rules=frozenset(policies.leave_mutes),
        directory=directory,
    )


def reference_problems(
    policies: PoliciesFile,
    officers: Mapping[str, tuple[str, str | None]],
    subject_officers: Mapping[str, str],
    env: Mapping[str, str],
) -> list[tuple[str, str, str]]:
    """(key, value, reason) for what only the whole directory can check."""
    problems: list[tuple[str, str, str]] = []
    keywords = TARGET_KEYWORDS
    for officer_id in officers:
        if officer_id in keywords:
            problems.append(("officers", officer_id, "an officer id may not be a target keyword"))
    for tier, model in policies.tiers.items():
        for s_index, step in enumerate(model.steps):
            for target in step.targets:
                where = f"tiers.{tier.value}.steps.{s_index}.targets"
                if target == TARGET_ACKNOWLEDGER:
                    problems.append((where, target, "nobody has acknowledged during the ladder"))
                elif target not in keywords and target not in officers:
                    problems.append((where, target, "officer not defined"))
        for target in model.ack_timeout_targets:
            if target not in keywords and target not in officers:
                problems.append(
                    (f"tiers.{tier.value}.ack_timeout_targets", target, "officer not defined")
                )
    alerting = compile_alerting(policies, officers)
    for tier in Tier:
        policy = alerting.policy(tier)
        targets = [t for step in policy.steps for t in step.targets]
        # An undefined officer is reported by subjects.yaml's own check.
        for officer_id in sorted(set(subject_officers.values()) & set(officers)):
            if not alerting.directory.resolve(targets, officer_id):
                problems.append(
                    (f"tiers.{tier.value}.steps", officer_id,
                     "no step reaches anyone for this officer's subjects")
                )
    for officer_id in policies.contacts:
        if officer_id not in officers:
            problems.append(("contacts", officer_id, "officer not defined"))
    for endpoint_id, endpoint in policies.notifiers.items():
        needed: list[tuple[str, str | None]] = []
        if isinstance(endpoint, WebhookEndpoint):
            needed = [("secret_env", endpoint.secret_env), ("url_env", endpoint.url_env)]
        elif isinstance(endpoint, EmailEndpoint):
            needed = [("password_env", endpoint.password_env)]
        elif isinstance(endpoint, DingtalkEndpoint):
            needed = [("url_env", endpoint.url_env), ("secret_env", endpoint.secret_env)]
        elif isinstance(endpoint, WecomEndpoint):
            needed = [("url_env", endpoint.url_env)]
        for key, name in needed:
            if name is not None and not env.get(name):
                problems.append(
                    (f"notifiers.{endpoint_id}.{key}", name, "environment variable not set")
                )
    return problems

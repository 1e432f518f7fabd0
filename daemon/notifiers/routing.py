"""Who gets which notification where: transitions and recipients in, outbox items out.

No I/O (the store writes the items, the dispatcher delivers them). Two kinds of item:
  - targeted: an escalation action named officers; each is reached on their MQTT topic and
    on every contact listed for them in policies.yaml;
  - feed: endpoints that subscribe to transition kinds get every alert's (a command centre's
    system, a team's group robot).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from alerts.model import AlertTransition, TransitionKind
from daemon.policyfile import MQTT_ENDPOINT, EmailEndpoint, PoliciesFile


@dataclass(frozen=True, slots=True)
class OutboxItem:
    endpoint: str
    recipient: str  # e-mail address, officer id, or '' for a feed
    officer_id: str | None
    message: dict[str, Any]


class Router:
    def __init__(self, policies: PoliciesFile, subject_timezones: Mapping[str, str]) -> None:
        self._policies = policies
        self._timezones = subject_timezones
        self._feeds: dict[TransitionKind, list[str]] = {}
        for endpoint_id, endpoint in policies.notifiers.items():
            for kind in endpoint.feed:
                self._feeds.setdefault(kind, []).append(endpoint_id)

    @property
    def endpoints(self) -> list[str]:
        out = list(self._policies.notifiers)
        if self._policies.mqtt_officer_topics:
            out.append(MQTT_ENDPOINT)
        return out

    def _message(self, transition: AlertTransition, mentions: Sequence[str]) -> dict[str, Any]:
        return {
            "transition": transition.to_wire(),
            "mentions": list(mentions),
            "timezone": self._timezones.get(transition.alert.subject_id, "UTC"),
        }

    def feed(self, transition: AlertTransition) -> list[OutboxItem]:
        items: list[OutboxItem] = []
        for endpoint_id in self._feeds.get(transition.kind, ()):
            endpoint = self._policies.notifiers[endpoint_id]
            message = self._message(transition, [])
            if isinstance(endpoint, EmailEndpoint):
                items += [OutboxItem(endpoint_id, to, None, message) for to in endpoint.feed_to]
            else:
                items.append(OutboxItem(endpoint_id, "", None, message))
        return items

    def targeted(
        self, transition: AlertTransition, recipients: Sequence[str]
    ) -> list[OutboxItem]:
        items: list[OutboxItem] = []
        for officer_id in recipients:
            if self._policies.mqtt_officer_topics:
                items.append(
                    OutboxItem(MQTT_ENDPOINT, officer_id, officer_id,
                               self._message(transition, []))
                )
            for contact in self._policies.contacts.get(officer_id, ()):
                recipient = contact.address or officer_id
                mentions = [contact.mobile] if contact.mobile else []
                items.append(
                    OutboxItem(contact.endpoint, recipient, officer_id,
                               self._message(transition, mentions))
                )
        return items

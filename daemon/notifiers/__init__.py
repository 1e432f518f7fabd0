"""Notifiers: deliver alert notifications to MQTT topics, webhooks, e-mail, WeCom and
DingTalk group robots. They do I/O, so they live in the shell; what a message says is
decided by the pure `alerts.messages`.

Every error a notifier raises derives from `NotifierError`; `DeliveryError.permanent`
tells the dispatcher not to retry (a 4xx answer, a refused address).
"""

from __future__ import annotations


class NotifierError(Exception):
    """Root of the notifiers' errors."""


class DeliveryError(NotifierError):
    def __init__(self, message: str, *, permanent: bool = False) -> None:
        super().__init__(message)
        self.permanent = permanent

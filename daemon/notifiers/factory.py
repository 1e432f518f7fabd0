"""Build the configured notifiers (with their secrets from the environment)."""

from __future__ import annotations

from collections.abc import Mapping

from daemon.notifiers import NotifierError
from daemon.notifiers.base import Notifier
from daemon.notifiers.dispatcher import EndpointPolicy, endpoint_policy
from daemon.notifiers.email import EmailNotifier
from daemon.notifiers.http import DingtalkNotifier, WebhookNotifier, WecomNotifier
from daemon.notifiers.mqtt import MqttNotifier, Publish
from daemon.policyfile import (
    MQTT_ENDPOINT,
    DingtalkEndpoint,
    EmailEndpoint,
    PoliciesFile,
    WebhookEndpoint,
    WecomEndpoint,
)

# The daemon's own MQTT connection: retried through a broker restart (reconnects back off
# to 30 s), then given up and counted.
MQTT_ENDPOINT_POLICY = EndpointPolicy(
    max_attempts=10, initial_backoff_seconds=1.0, max_backoff_seconds=60.0,
    timeout_seconds=30.0, workers=1, queue_size=1000,
)


def _env(env: Mapping[str, str], name: str | None, what: str) -> str | None:
    if name is None:
        return None
    value = env.get(name)
    if not value:
        raise NotifierError(f"{what}: environment variable {name} is not set")
    return value


def build_notifiers(
    policies: PoliciesFile, env: Mapping[str, str], mqtt_publish: Publish | None
) -> tuple[dict[str, Notifier], dict[str, EndpointPolicy]]:
    notifiers: dict[str, Notifier] = {}
    specs: dict[str, EndpointPolicy] = {}
    console = policies.console_url
    for endpoint_id, model in policies.notifiers.items():
        what = f"notifier {endpoint_id}"
        notifier: Notifier
        if isinstance(model, WebhookEndpoint):
            url = model.url or _env(env, model.url_env, what)
            secret = _env(env, model.secret_env, what)
            assert url is not None
            assert secret is not None
            notifier = WebhookNotifier(
                endpoint_id, url, secret.encode(), model.timeout_seconds, model.include_evidence
            )
        elif isinstance(model, EmailEndpoint):
            notifier = EmailNotifier(
                endpoint_id, host=model.host, port=model.port, security=model.security,
                username=model.username, password=_env(env, model.password_env, what),
                from_address=model.from_address, timeout_seconds=model.timeout_seconds,
                console_url=console,
            )
        elif isinstance(model, WecomEndpoint):
            url = model.url or _env(env, model.url_env, what)
            assert url is not None
            notifier = WecomNotifier(endpoint_id, url, model.timeout_seconds, console)
        elif isinstance(model, DingtalkEndpoint):
            url = model.url or _env(env, model.url_env, what)
            assert url is not None
            notifier = DingtalkNotifier(
                endpoint_id, url, _env(env, model.secret_env, what), model.timeout_seconds,
                console,
            )
        else:  # pragma: no cover - the discriminated union is exhaustive
            raise NotifierError(f"{what}: unknown kind")
        notifiers[endpoint_id] = notifier
        specs[endpoint_id] = endpoint_policy(model)
    if policies.mqtt_officer_topics and mqtt_publish is not None:
        notifiers[MQTT_ENDPOINT] = MqttNotifier(MQTT_ENDPOINT, mqtt_publish)
        specs[MQTT_ENDPOINT] = MQTT_ENDPOINT_POLICY
    return notifiers, specs

"""What a notification says, per channel. Pure: a transition's wire form in, text or JSON out.

Location data may be used only for community corrections (Art. 29), and e-mail, WeCom and
DingTalk pass through third parties' servers: those messages carry ids, rule, tier, the
reason and times, never coordinates or evidence. A webhook (an agency's own system) gets the
evidence only when its endpoint sets `include_evidence`.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from datetime import datetime, tzinfo
from typing import Any
from urllib.parse import quote_plus

WECOM_MARKDOWN_MAX_BYTES = 4096  # WeCom group robot limits (its documentation)
WECOM_TEXT_MAX_BYTES = 2048
DINGTALK_TEXT_MAX_BYTES = 18000  # DingTalk rejects messages above 20,000 bytes
EVIDENCE_KEYS = ("trigger", "last_evidence")

_HEADLINES = {
    "opened": "new alert",
    "reopened": "alert reopened",
    "updated": "alert updated",
    "cleared": "condition cleared (alert still open)",
    "notified": "new alert for you",
    "escalated": "ESCALATED: not acknowledged",
    "reminded": "REMINDER: still not acknowledged",
    "renotified": "acknowledged but not resolved",
    "suppressed": "notification muted",
    "acknowledged": "alert acknowledged",
    "resolved": "alert resolved",
    "noted": "note added",
}


def strip_evidence(wire: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in wire.items() if k not in EVIDENCE_KEYS}


def _local(iso: str | None, zone: tzinfo | None) -> str:
    if not iso:
        return "-"
    at = datetime.fromisoformat(iso)
    if zone is not None:
        at = at.astimezone(zone)
    return at.strftime("%Y-%m-%d %H:%M:%S %Z")


def title(wire: dict[str, Any]) -> str:
    kind = str(wire.get("transition", ""))
    headline = _HEADLINES.get(kind, kind)
    return (
        f"[{str(wire.get('tier', '')).upper()}] {wire.get('rule')} · subject "
        f"{wire.get('subject_id')} · {headline}"
    )


def _facts(wire: dict[str, Any], zone: tzinfo | None) -> list[tuple[str, str]]:
    facts = [
        ("Alert", str(wire.get("alert_id"))),
        ("Subject", str(wire.get("subject_id"))),
        ("Device", str(wire.get("device_id"))),
        ("Rule", str(wire.get("rule"))),
        ("Tier", str(wire.get("tier"))),
        ("State", str(wire.get("state"))),
        ("Officer", str(wire.get("officer_id") or "-")),
        ("Opened", _local(wire.get("opened_at"), zone)),
        ("This notice", _local(wire.get("transition_at"), zone)),
        ("Count", str(wire.get("count"))),
    ]
    if wire.get("zone_id"):
        facts.insert(4, ("Zone", str(wire["zone_id"])))
    notification = wire.get("notification")
    if isinstance(notification, dict) and notification.get("reason"):
        facts.append(("Escalation", str(notification["reason"])))
    if wire.get("acknowledged_by"):
        facts.append(("Acknowledged by", str(wire["acknowledged_by"])))
    if wire.get("disposition"):
        facts.append(("Disposition", str(wire["disposition"])))
    if wire.get("note"):
        facts.append(("Note", str(wire["note"])))
    return facts


def plain_text(wire: dict[str, Any], zone: tzinfo | None = None, console_url: str = "") -> str:
    lines = [title(wire), "", str(wire.get("reason") or ""), ""]
    lines += [f"{name}: {value}" for name, value in _facts(wire, zone)]
    if console_url:
        lines += ["", f"Open it: {console_url.rstrip('/')}/alerts/{wire.get('alert_id')}"]
    lines += ["", "Acknowledge: emon alerts ack " + str(wire.get("alert_id"))]
    return "\n".join(lines) + "\n"


def markdown(wire: dict[str, Any], zone: tzinfo | None = None, console_url: str = "") -> str:
    lines = [f"### {title(wire)}", f"> {wire.get('reason') or ''}", ""]
    lines += [f"- **{name}**: {value}" for name, value in _facts(wire, zone)]
    if console_url:
        lines.append(f"\n[Open]({console_url.rstrip('/')}/alerts/{wire.get('alert_id')})")
    return "\n".join(lines)


def truncate_utf8(text: str, max_bytes: int) -> str:
    raw = text.encode("utf-8")
    if len(raw) <= max_bytes:
        return text
    return raw[: max_bytes - 3].decode("utf-8", errors="ignore") + "..."


def webhook_body(
    wire: dict[str, Any],
    *,
    delivery_id: str,
    endpoint: str,
    recipient: str | None,
    attempt: int,
    include_evidence: bool,
) -> dict[str, Any]:
    return {
        "delivery_id": delivery_id,  # the same on every attempt: receivers deduplicate on it
        "endpoint": endpoint,
        "recipient": recipient or None,
        "attempt": attempt,
        "alert": wire if include_evidence else strip_evidence(wire),
    }


def sign_body(secret: bytes, body: bytes) -> str:
    """The webhook signature header value: `sha256=<hex HMAC-SHA256 of the body>`."""
    return "sha256=" + hmac.new(secret, body, hashlib.sha256).hexdigest()


def wecom_payload(
    wire: dict[str, Any], mobiles: list[str], zone: tzinfo | None = None, console_url: str = ""
) -> dict[str, Any]:
    """WeCom (企业微信) group robot: markdown, or text when someone is to be @-mentioned
    (only text messages carry `mentioned_mobile_list`)."""
    if mobiles:
        content = truncate_utf8(plain_text(wire, zone, console_url), WECOM_TEXT_MAX_BYTES)
        return {
            "msgtype": "text",
            "text": {"content": content, "mentioned_mobile_list": mobiles},
        }
    content = truncate_utf8(markdown(wire, zone, console_url), WECOM_MARKDOWN_MAX_BYTES)
    return {"msgtype": "markdown", "markdown": {"content": content}}


def dingtalk_payload(
    wire: dict[str, Any], mobiles: list[str], zone: tzinfo | None = None, console_url: str = ""
) -> dict[str, Any]:
    """DingTalk (钉钉) group robot markdown; a mention renders only if `@mobile` is in the text."""
    text = markdown(wire, zone, console_url)
    if mobiles:
        text += "\n\n" + " ".join(f"@{m}" for m in mobiles)
    return {
        "msgtype": "markdown",
        "markdown": {"title": title(wire), "text": truncate_utf8(text, DINGTALK_TEXT_MAX_BYTES)},
        "at": {"atMobiles": mobiles, "isAtAll": False},
    }


def dingtalk_signed_query(secret: str, timestamp_ms: int) -> str:
    """`&timestamp=..&sign=..` for a DingTalk robot with 加签 (its documented algorithm:
    base64(HMAC-SHA256(key=secret, msg=f"{timestamp}\\n{secret}")), URL-encoded)."""
    to_sign = f"{timestamp_ms}\n{secret}".encode()
    digest = hmac.new(secret.encode(), to_sign, hashlib.sha256).digest()
    return f"&timestamp={timestamp_ms}&sign={quote_plus(base64.b64encode(digest))}"

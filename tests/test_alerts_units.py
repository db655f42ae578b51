"""Alert payload parsing (fuzzed), matchers, durations and rendering limits."""

from __future__ import annotations

import json
from datetime import timedelta
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bot.errors import UserError
from bot.mentions import NOBODY, Mentions
from commands.alerts.matchers import parse_duration, parse_matchers
from commands.alerts.payload import Notification, WebhookError, parse_notification
from commands.alerts.render import (
    MAX_RENDERED_BYTES,
    REMINDER,
    Renderer,
    digest_line,
    render_batch,
    with_reminder,
)

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4)
    ),
    max_leaves=20,
)

ALERT_KEYS = [
    "status",
    "labels",
    "annotations",
    "startsAt",
    "endsAt",
    "generatorURL",
    "fingerprint",
]
PAYLOAD_KEYS = [
    "version",
    "groupKey",
    "status",
    "receiver",
    "groupLabels",
    "commonLabels",
    "commonAnnotations",
    "externalURL",
    "alerts",
    "truncatedAlerts",
]


def _almost_valid() -> st.SearchStrategy[dict[str, Any]]:
    alert = st.fixed_dictionaries(
        {},
        optional={k: json_values | st.just("firing") | st.just({"a": "b"}) for k in ALERT_KEYS},
    )
    return st.fixed_dictionaries(
        {"version": st.sampled_from(["4", "3", 4, None])},
        optional={
            **{k: json_values for k in PAYLOAD_KEYS if k not in ("version", "alerts")},
            "alerts": st.lists(alert, max_size=3),
        },
    )


@settings(max_examples=1500, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(st.binary(max_size=200) | json_values.map(lambda v: json.dumps(v).encode()))
def test_arbitrary_bodies_are_rejected_cleanly(body: bytes) -> None:
    try:
        parse_notification(body)
    except WebhookError as exc:
        assert exc.status == 400 and exc.reason


@settings(max_examples=1500, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(_almost_valid())
def test_almost_valid_payloads_parse_or_get_a_reason(data: dict[str, Any]) -> None:
    try:
        n = parse_notification(json.dumps(data).encode())
    except WebhookError as exc:
        assert exc.status == 400 and len(exc.reason) < 2000
        return
    text, html = Renderer().render(n)
    assert text and html


def test_matchers_and_durations() -> None:
    ms = parse_matchers('alertname=NotUp,instance=~"pluto.*",job!=node,name!~"a,b"')
    assert [(m.name, m.op, m.value) for m in ms] == [
        ("alertname", "=", "NotUp"),
        ("instance", "=~", "pluto.*"),
        ("job", "!=", "node"),
        ("name", "!~", "a,b"),
    ]
    assert ms[1].api() == {"name": "instance", "value": "pluto.*", "isRegex": True, "isEqual": True}
    assert parse_matchers('{alertname="X"}')[0].value == "X"
    for bad in ("", "alertname", "=x", 'a=~"("'):
        with pytest.raises(UserError):
            parse_matchers(bad)
    assert parse_duration("1h30m") == timedelta(hours=1, minutes=30)
    assert parse_duration("2d") == timedelta(days=2)
    for bad in ("", "forever", "10", "30s", "100d"):
        with pytest.raises(UserError):
            parse_duration(bad)


def _group(n: int, summary: str = "x") -> Notification:
    alerts = [
        {
            "status": "firing",
            "labels": {"alertname": "Big", "instance": f"h{i}"},
            "annotations": {"summary": summary},
            "startsAt": "2026-11-25T10:00:00Z",
        }
        for i in range(n)
    ]
    return Notification.model_validate(
        {"version": "4", "groupKey": "k", "status": "firing", "receiver": "r", "alerts": alerts}
    )


def test_huge_group_is_cut_with_and_more() -> None:
    text, html = Renderer().render(_group(2000, "s" * 100))
    assert len(text.encode()) + len(html.encode()) <= MAX_RENDERED_BYTES
    assert "more firing" in text and "more firing" in html
    text, _ = Renderer().render(_group(3))
    assert "more" not in text


def test_template_override_and_escaping() -> None:
    r = Renderer(
        text_template="{{ title }}: {{ firing|length }}", html_template="<b>{{ title }}</b>"
    )
    n = _group(2)
    assert r.render(n) == ("alerts: 2", "<b>alerts</b>")
    evil = _group(1, "<script>alert(1)</script>")
    _, html = Renderer().render(evil)
    assert "<script>" not in html and "&lt;script&gt;" in html


def test_groups_sharing_a_message_show_in_full_when_they_fit_else_a_line_each() -> None:
    r = Renderer()
    small = [_group(2, "disk full"), _group(1, "<b>unit failed</b>")]
    pings = Mentions(["@alice:x"], room=True)
    text, html = render_batch([r.render(n) for n in small], [digest_line(n) for n in small], pings)
    assert text.startswith("@room @alice:x 🔔 2 alert groups started firing")
    assert text.count("FIRING") == 2 and "<hr>" in html and "&lt;b&gt;unit failed" in html
    big = [_group(400, "s" * 60) for _ in range(3)]
    text, html = render_batch([r.render(n) for n in big], [digest_line(n) for n in big], pings)
    assert text.startswith("@room @alice:x 🌩️ Alert storm: 3 alert groups started firing")
    assert text.count("\n• ") == 3 and len(text.encode()) + len(html.encode()) <= MAX_RENDERED_BYTES
    text, _ = render_batch(None, [digest_line(n) for n in small], NOBODY)
    assert text.startswith("🌩️ Alert storm: 2 alert groups") and "disk full" in text
    # Alertmanager's reminders (repeat_interval) say so, as a whole and per line.
    reminded = [digest_line(n, repeat=True) for n in small]
    text, _ = render_batch(None, reminded, NOBODY, repeats=2)
    assert text.startswith("🌩️ Alert storm: 2 alert groups still firing, unchanged")
    assert "— 2 still firing — disk full" in text
    text, _ = render_batch(None, [digest_line(small[0]), reminded[1]], NOBODY, repeats=1)
    assert "2 alert groups: 1 started firing, 1 still firing" in text
    text, html = with_reminder(*r.render(small[0]))
    assert text.startswith(REMINDER + "\n") and "FIRING (2)" in text
    assert html.startswith("<p>🔁 Still firing")

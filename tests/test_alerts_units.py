"""Alert payload parsing (fuzzed), matchers, durations and rendering limits."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace
from typing import Any, cast

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bot import messages
from bot.context import Runtime
from bot.errors import UserError
from bot.mentions import NOBODY, Mentions
from bot.registry import Command
from bot.store import Store
from commands.alerts import db
from commands.alerts import router as alerts_router
from commands.alerts.config import AlertsConfig
from commands.alerts.matchers import Matcher, parse_duration, parse_matchers
from commands.alerts.payload import Notification, WebhookError, parse_notification
from commands.alerts.render import (
    MAX_RENDERED_BYTES,
    REMINDER,
    Renderer,
    digest_line,
    http_url,
    render_batch,
    with_reminder,
)
from commands.alerts.rules import (
    Decision,
    Drop,
    Edit,
    Post,
    Previous,
    decide,
    incarnation,
    learn,
    older_copy,
)
from commands.alerts.silencing import (
    could_be_silence_id,
    decode_plan,
    encode_plan,
    group_matchers,
)


def _nested(inner: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4)


_json_leaves = (
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20)
)
# Three levels spelt out rather than st.recursive: on this Hypothesis (6.170) the recursive form
# failed with FlakyStrategyDefinition in the generate phase, with no database and no shrinking.
json_values = _json_leaves | _nested(_json_leaves) | _nested(_json_leaves | _nested(_json_leaves))

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


@settings(max_examples=500, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(st.binary(max_size=200) | json_values.map(lambda v: json.dumps(v).encode()))
def test_arbitrary_bodies_are_rejected_cleanly(body: bytes) -> None:
    try:
        parse_notification(body)
    except WebhookError as exc:
        assert exc.status == 400 and exc.reason


@settings(max_examples=500, suppress_health_check=[HealthCheck.too_slow], deadline=None)
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


def _alert(labels: dict[str, str], **more: Any) -> dict[str, Any]:
    return {
        "status": "firing",
        "labels": labels,
        "startsAt": "2026-11-25T10:00:00Z",
        **more,
    }


def _notification(alerts: list[dict[str, Any]], **more: Any) -> Notification:
    return Notification.model_validate(
        {"version": "4", "groupKey": "k", "status": "firing", "receiver": "r", "alerts": alerts}
        | more
    )


def test_truncated_alerts_are_counted_and_never_resolve_the_group() -> None:
    shown = [_alert({"alertname": "Big", "instance": f"h{i}"}) for i in range(50)]
    n = _notification(shown, truncatedAlerts=250, groupLabels={"alertname": "Big"})
    text, html = Renderer().render(n)
    assert text.startswith("⚠️ FIRING (300) · NONE · Big")
    assert "300 firing (250 not in this notification)" in text
    assert "300 firing (250 not in this notification)" in html
    assert "300 firing (250 not in this notification)" in digest_line(n)[0]
    # Alertmanager computes `status` from the 50 it kept (webhook.go, 0.25): a "resolved"
    # with alerts left out speaks for those 50 only.
    gone = [a | {"status": "resolved", "endsAt": "2026-11-25T11:00:00Z"} for a in shown]
    partly = _notification(gone, status="resolved", truncatedAlerts=250)
    assert not partly.all_resolved
    text, html = Renderer().render(partly)
    assert text.startswith("⚠️ PARTLY RESOLVED · NONE")
    assert "250 not in this notification, so the group is not known to be resolved" in text
    assert "partly resolved (250 not in this notification)" in digest_line(partly)[0]
    assert partly.state_digest() != _notification(gone, status="resolved").state_digest()
    whole = _notification(gone, status="resolved")
    assert whole.all_resolved and Renderer().render(whole)[0].startswith("✅ RESOLVED")


def test_only_http_urls_become_links() -> None:
    hostile = {
        "runbook_url": "javascript:alert(1)",
        "grafana": " JaVaScRiPt:alert(2)",
        "dashboard": "https://grafana.example/d/1?a=1&b=2",
        "summary": "s",
    }
    n = _notification(
        [_alert({"alertname": "X"}, annotations=hostile, generatorURL="data:text/html,<b>x</b>")],
        externalURL="vbscript:msgbox(1)",
    )
    text, html = Renderer().render(n)
    hrefs = re.findall(r'href="([^"]*)"', html)
    assert hrefs == ["https://grafana.example/d/1?a=1&amp;b=2"]
    # Shown as text, so nothing is lost.
    assert "javascript:alert(1)" in html and "Runbook: javascript:alert(1)" in text
    assert "Silence" not in text, "no silence form link under a non-http(s) externalURL"
    # The helpers templates get do the same.
    custom = Renderer(
        text_template="{{ link(n.externalURL, 'am') }} {{ n.externalURL|http_url }}.",
        html_template="{{ link(n.externalURL, 'am') }}|{{ link('https://a.example/', 'ok') }}",
    )
    text, html = custom.render(n)
    assert text == "am: vbscript:msgbox(1) ."
    assert html == 'am|<a href="https://a.example/">ok</a>'
    for bad in ("javascript:x", "http:/x", "https://", "ftp://h/x", "http://h/\nx", "//h/x", ""):
        assert http_url(bad) is None, bad
    assert http_url("HTTPS://h.example:8443/x?y=1#z") == "HTTPS://h.example:8443/x?y=1#z"


def test_description_is_in_both_bodies_with_its_lines() -> None:
    described = {"summary": "disk full", "description": "line one\nline <two>\r\nline three"}
    n = _notification([_alert({"alertname": "X"}, annotations=described)])
    text, html = Renderer().render(n)
    assert "  line one\n  line <two>\n  line three" in text
    assert "line one<br>line &lt;two&gt;<br>line three" in html


def test_one_oversized_annotation_is_shortened_and_the_html_kept() -> None:
    huge = {"summary": "s", "description": "d" * 63_000}
    n = _notification([_alert({"alertname": "X"}, annotations=huge)])
    text, html = Renderer().render(n)
    assert "… 61,000 more characters" in text and "… 61,000 more characters" in html
    content = messages.fit(messages.notice(text, html))
    assert content["formatted_body"] == html
    # Many long values on one alert: each shortened further rather than the HTML dropped.
    many = {f"label{i}": "v" * 5_000 for i in range(20)}
    n = _notification([_alert({"alertname": "X", **many}, annotations=huge)])
    text, html = Renderer().render(n)
    assert len(text.encode()) + len(html.encode()) <= MAX_RENDERED_BYTES


def test_silence_matchers_for_a_group() -> None:
    def plan(alerts: list[dict[str, str]], **more: Any) -> list[str] | str:
        found = group_matchers(_notification([_alert(a) for a in alerts], **more))
        return found if isinstance(found, str) else [str(m) for m in found]

    node = {"alertname": "NodeDown", "job": "node"}
    assert plan([node], groupLabels={"alertname": "NodeDown"}) == ['alertname="NodeDown"']
    # No group labels: the group's alerts, not everything with job="node".
    two = [node | {"instance": "pluto:9100"}, node | {"instance": "a.b|c"}]
    assert plan(two, commonLabels=node) == [
        'alertname="NodeDown"',
        'job="node"',
        'instance=~"a\\\\.b\\\\|c|pluto:9100"',
    ]
    assert plan([node | {"instance": "x"}]) == [
        'alertname="NodeDown"',
        'instance="x"',
        'job="node"',
    ]
    # A label only some alerts have: the others match it empty.
    assert plan([node, node | {"instance": "x"}])[-1] == 'instance=~"|x"'
    crossed = [node | {"instance": "x", "name": "a"}, node | {"instance": "y", "name": "b"}]
    refused = plan(crossed)
    assert isinstance(refused, str) and "differ in instance, name at once" in refused
    square = [node | {"instance": i, "name": u} for i in "xy" for u in "ab"]
    assert plan(square)[-2:] == ['instance=~"x|y"', 'name=~"a|b"']
    cut = plan(two, truncatedAlerts=3)
    assert isinstance(cut, str) and "left out of the notification" in cut
    stored = encode_plan(group_matchers(_notification([_alert(a) for a in two])))
    assert decode_plan(stored, "{}") == group_matchers(_notification([_alert(a) for a in two]))
    assert decode_plan(None, '{"alertname": "X"}') == [Matcher("alertname", "=", "X")]


def test_silence_ids_are_uuids_or_their_prefixes() -> None:
    for good in ("3f2a9c1e", "3F2A9C1E-1234", "3f2a9c1e-1234-4abc-8def-0123456789ab", "0"):
        assert could_be_silence_id(good), good
    for bad in ("", "../x", "3f2a9c1g", "3f2a9c1e1", "3f2a9c1e-1234-4abc-8def-0123456789abc", "x"):
        assert not could_be_silence_id(bad), bad


# --- the relay's rules: one pure function, one row per rule --------------------------------

NOW = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)
OPENED = NOW - timedelta(hours=1)
ONCALL = Mentions(["@oncall:x"])
CFG = AlertsConfig.model_validate(
    {"dedupe_window_s": 600, "mentions": [{"severity": ["critical"], "users": ["@oncall:x"]}]}
)


def _n(status: str = "firing", count: int = 1, **more: Any) -> Notification:
    alerts = [
        _alert({"alertname": "Disk", "instance": f"h{i}", "severity": "critical"})
        | ({"status": "resolved", "endsAt": "2026-11-25T11:00:00Z"} if status == "resolved" else {})
        for i in range(count)
    ]
    return _notification(alerts, status=status, commonLabels={"severity": "critical"}, **more)


def _before(n: Notification, ago: timedelta, **more: Any) -> Previous:
    """The group as it was after `n`, `ago` before NOW."""
    state: dict[str, Any] = {
        "open": not n.all_resolved,
        "digest": n.state_digest(),
        "created_at": OPENED,
        "updated_at": NOW - ago,
    }
    return Previous(**(state | more))


FIRING, FIRING2, RESOLVED = _n(), _n(count=2), _n("resolved")
CUT = _n("resolved", truncatedAlerts=3)
RULES: list[tuple[str, Previous | None, Notification, AlertsConfig, Decision]] = [
    ("new firing group pings", None, FIRING, CFG, Post("posted", ONCALL, False, False, NOW, True)),
    (
        "new group seen resolved",
        None,
        RESOLVED,
        CFG,
        Post("posted", NOBODY, False, False, NOW, False),
    ),
    (
        "HA twin of a resolve",
        _before(RESOLVED, timedelta(seconds=1)),
        RESOLVED,
        CFG,
        Drop("resolved already"),
    ),
    (
        "late resolve of a closed group, days later",
        _before(RESOLVED, timedelta(days=3)),
        RESOLVED,
        CFG,
        Drop("resolved already"),
    ),
    (
        "fires again after a resolve: a new group",
        _before(RESOLVED, timedelta(minutes=5)),
        FIRING,
        CFG,
        Post("posted", ONCALL, False, False, NOW, True),
    ),
    (
        "duplicate in the window",
        _before(FIRING, timedelta(minutes=9)),
        FIRING,
        CFG,
        Drop("same state"),
    ),
    (
        "duplicate in the window, reminders off",
        _before(FIRING, timedelta(minutes=9)),
        FIRING,
        CFG.model_copy(update={"reminders": False}),
        Drop("same state"),
    ),
    (
        "reminder after the window: posted again, no pings",
        _before(FIRING, timedelta(minutes=11)),
        FIRING,
        CFG,
        Post("reminded", NOBODY, True, True, OPENED, True),
    ),
    (
        "reminders off: dropped at any age",
        _before(FIRING, timedelta(days=1)),
        FIRING,
        CFG.model_copy(update={"reminders": False}),
        Drop("reminders off"),
    ),
    (
        "change: the message is edited",
        _before(FIRING, timedelta(minutes=1)),
        FIRING2,
        CFG,
        Edit("updated", True, None),
    ),
    (
        "resolve: edited, with a reply saying how long",
        _before(FIRING2, timedelta(minutes=1)),
        RESOLVED,
        CFG,
        Edit("resolved", False, NOW - OPENED),
    ),
    (
        "resolve without resolved_reply",
        _before(FIRING2, timedelta(minutes=1)),
        RESOLVED,
        CFG.model_copy(update={"resolved_reply": False}),
        Edit("resolved", False, None),
    ),
    (
        "truncatedAlerts: a resolve of the visible part leaves it open",
        _before(FIRING, timedelta(minutes=1)),
        CUT,
        CFG,
        Edit("updated", True, None),
    ),
    (
        "change before the first send: changed in that message, ping kept",
        _before(FIRING, timedelta(seconds=5), unsent=True, pings=ONCALL),
        FIRING2,
        CFG,
        Post("updated", ONCALL, False, True, OPENED, True),
    ),
    (
        "resolve before the first send",
        _before(FIRING, timedelta(seconds=5), unsent=True, pings=ONCALL),
        RESOLVED,
        CFG,
        Post("resolved", ONCALL, False, True, OPENED, False),
    ),
    (
        "unchanged after the window, still unsent: not a reminder",
        _before(FIRING, timedelta(minutes=11), unsent=True, pings=ONCALL),
        FIRING,
        CFG,
        Post("updated", ONCALL, False, True, OPENED, True),
    ),
    (
        "change of a group sharing a message: its own message, no pings",
        _before(FIRING, timedelta(minutes=1), shared=True),
        FIRING2,
        CFG,
        Post("updated", NOBODY, False, True, OPENED, True),
    ),
    (
        "reminder of a group sharing a message",
        _before(FIRING, timedelta(minutes=11), shared=True),
        FIRING,
        CFG,
        Post("reminded", NOBODY, True, True, OPENED, True),
    ),
]


@pytest.mark.parametrize(
    ("previous", "n", "cfg", "expected"),
    [case[1:] for case in RULES],
    ids=[case[0] for case in RULES],
)
def test_the_relays_rules(
    previous: Previous | None, n: Notification, cfg: AlertsConfig, expected: Decision
) -> None:
    assert decide(previous, n, cfg, NOW) == expected


# --- declared arguments ---------------------------------------------------------------------

ALERTS_RT = cast(Runtime, SimpleNamespace(prefix="?"))


def _command(name: str) -> Command:
    (cmd,) = [c for c in alerts_router.commands if c.name == name]
    return cmd


def test_silence_arguments_are_declared_and_converted() -> None:
    silence = _command("silence")
    assert silence.usage("?") == "?silence <matchers…> <duration> [comment…]"
    bound = silence.bind(
        ["alertname=NotUp,job!=node", "instance=~pluto.*", "2h", "planned", "x"], ALERTS_RT
    )
    assert bound.values == {
        "matchers": [
            Matcher("alertname", "=", "NotUp"),
            Matcher("job", "!=", "node"),
            Matcher("instance", "=~", "pluto.*"),
        ],
        "duration": timedelta(hours=2),
        "comment": "planned x",
    }
    wrong = {
        ("2h", "because"): "matchers: `2h` is not a matcher",
        ("instance=~pluto(", "2h"): "matchers: `pluto(` is not a valid regular expression",
        ("a=b", "instance=~pluto(", "2h"): "matchers: `pluto(` is not a valid regular expression",
        ("a=b", "c=d"): "say how long after the matchers",
        ("a=b", "forever"): "duration: `forever` is not a duration",
        ("a=b", "30s"): "at least 1 minute",
        ("a=b",): "missing duration",
    }
    for words, reason in wrong.items():
        with pytest.raises(UserError) as caught:
            silence.bind(list(words), ALERTS_RT)
        assert reason in str(caught.value), (words, str(caught.value))
        assert "usage: `?silence <matchers…> <duration> [comment…]`" in str(caught.value)


def test_alerts_and_unsilence_arguments() -> None:
    alerts = _command("alerts")
    assert alerts.usage("!") == "!alerts [matchers…]"
    assert alerts.bind([], ALERTS_RT).values == {"matchers": []}
    assert alerts.bind(["{severity=warning,job=node}"], ALERTS_RT).values["matchers"] == [
        Matcher("severity", "=", "warning"),
        Matcher("job", "=", "node"),
    ]
    with pytest.raises(UserError, match="`warning` is not a matcher"):
        alerts.bind(["warning"], ALERTS_RT)
    unsilence = _command("unsilence")
    assert unsilence.bind(["3F2A9C1E"], ALERTS_RT).values == {"id": "3f2a9c1e"}
    for bad in ("../../status", "3f2a9c1g", "x" * 40):
        with pytest.raises(UserError) as caught:
            unsilence.bind([bad], ALERTS_RT)
        assert "cannot be a silence id" in str(caught.value)
        assert "`?silences` lists the active ones" in str(caught.value)


def test_no_help_text_hard_codes_the_prefix() -> None:
    for cmd in alerts_router.commands:
        assert "!" not in cmd.help and "!" not in cmd.usage("?"), cmd.name
    for reaction in alerts_router.reactions:
        assert "!" not in reaction.help


# --- the feature's table, through its one module ------------------------------------------


async def test_alert_groups_through_the_db_module(any_store: Store) -> None:
    store = any_store
    plan = encode_plan([Matcher("alertname", "=", "Disk")])
    firing = db.GroupState("d1", "firing", 2, True, plan)
    first = await db.open_group(
        store,
        "!r:x",
        "k",
        7,
        firing,
        created_at=OPENED,
        updated_at=NOW,
        shared=False,
        labels='{"alertname": "Disk"}',
    )
    row = await db.newest_group(store, "!r:x", "k")
    assert row == db.GroupRow(
        first, "!r:x", "k", True, 7, "d1", "firing", 2, OPENED, NOW, False,
        '{"alertname": "Disk"}', plan, "{}",
    )  # fmt: skip
    assert await db.newest_group(store, "!other:x", "k") is None
    await db.mark_shared(store, 7)
    later = NOW + timedelta(hours=1)
    known = '{"f1@2026-11-25T10:00:00+00:00": 1795000000.0}'
    await db.update_group(
        store, first, db.GroupState("d2", "resolved", 2, False, plan, known), later
    )
    (closed,) = await db.groups_of_message(store, 7, "!r:x")
    assert (closed.open, closed.in_digest, closed.digest, closed.updated_at, closed.known) == (
        False, True, "d2", later, known,
    )  # fmt: skip
    # It fires again: a new row, which is now the group's newest.
    second = await db.open_group(
        store, "!r:x", "k", 8, firing, created_at=later, updated_at=later, shared=True,
        labels="{}",
    )  # fmt: skip
    newest = await db.newest_group(store, "!r:x", "k")
    assert newest is not None and newest.id == second and newest.in_digest
    assert await db.groups_of_message(store, 7, "!elsewhere:x") == []
    assert await db.prune_closed(store, later) == 0, "updated at `later`, not before"
    assert await db.prune_closed(store, later + timedelta(seconds=1)) == 1
    await db.delete_group(store, second)
    assert await db.newest_group(store, "!r:x", "k") is None


# --- HA: an Alertmanager replica's older copy ---------------------------------------------
# Payloads as Alertmanager 0.25 sends them (notify/webhook/webhook.go Message: template.Data
# plus version "4", groupKey, truncatedAlerts; template/template.go Data: per alert status,
# labels, annotations, startsAt, endsAt, generatorURL, fingerprint; types.Alerts zeroes
# endsAt while the alert still fires, hence "0001-01-01T00:00:00Z"). Checked against a webhook
# captured from Debian's prometheus-alertmanager 0.25.0 on the dev machine.

HA_KEY = '{}:{alertname="DomainExpiry"}'
STARTED = "2026-11-25T11:50:00Z"
ZERO = "0001-01-01T00:00:00Z"


def _am_alert(
    fingerprint: str, domain: str, *, ended: str | None = None, started: str = STARTED
) -> dict[str, Any]:
    return {
        "status": "resolved" if ended else "firing",
        "labels": {"alertname": "DomainExpiry", "domain": domain, "severity": "warning"},
        "annotations": {"summary": f"{domain} expires in 13 days"},
        "startsAt": started,
        "endsAt": ended or ZERO,
        "generatorURL": "http://prometheus.example:9090/graph?g0.expr=DomainExpiry",
        "fingerprint": fingerprint,
    }


def _am(*alerts: dict[str, Any]) -> Notification:
    status = "firing" if any(a["status"] == "firing" for a in alerts) else "resolved"
    common = {"alertname": "DomainExpiry", "severity": "warning"}
    return Notification.model_validate(
        {
            "receiver": "infrabot",
            "status": status,
            "alerts": list(alerts),
            "groupLabels": {"alertname": "DomainExpiry"},
            "commonLabels": common,
            "commonAnnotations": {},
            "externalURL": "http://127.0.0.1:9093",
            "version": "4",
            "groupKey": HA_KEY,
            "truncatedAlerts": 0,
        }
    )


ORG = _am_alert("5b3e3f0c1d2a4e6f", "nixos.org")
ORG_DONE = _am_alert("5b3e3f0c1d2a4e6f", "nixos.org", ended="2026-11-25T12:00:01Z")
DEV = _am_alert("9a8b7c6d5e4f3a2b", "nixos.dev")
DEV_DONE = _am_alert("9a8b7c6d5e4f3a2b", "nixos.dev", ended="2026-11-25T12:00:01Z")


def _replay(steps: list[tuple[timedelta, Notification]], cfg: AlertsConfig = CFG) -> list[str]:
    """Each notification through decide() the way Intake.record keeps the group's row:
    returns each step's result (or the Drop's reason)."""
    row: Previous | None = None
    out: list[str] = []
    for at, n in steps:
        now = NOW + at
        decision = decide(row, n, cfg, now)
        if isinstance(decision, Drop):
            out.append(decision.why)
            continue
        out.append(decision.result)
        known = learn(row.known if row else {}, n, timedelta(seconds=cfg.dedupe_window_s), now)
        if isinstance(decision, Post):
            opened = decision.opened_at
        else:
            assert row is not None, "an edit needs a message"
            opened = row.created_at
        row = Previous(decision.open, n.state_digest(), opened, now, known=known)
    return out


S = timedelta(seconds=1)


def test_a_clustered_pairs_stale_firing_after_the_resolve_is_dropped() -> None:
    """Fire, change, resolve; the lagging replica's "firing" 11 s after the resolve (issues
    #4008, #2447) neither reopens the group nor posts it; its own resolve is a twin."""
    assert _replay(
        [
            (0 * S, _am(ORG)),
            (1 * S, _am(ORG)),  # the twin (partition)
            (30 * S, _am(ORG, DEV)),  # an alert joins the group
            (60 * S, _am(ORG_DONE, DEV_DONE)),
            (71 * S, _am(ORG, DEV)),  # the stale copy: same alerts, same startsAt
            (72 * S, _am(ORG)),  # an even older one
            (90 * S, _am(ORG_DONE, DEV_DONE)),  # the lagging replica's own resolve
        ]
    ) == ["posted", "same state", "updated", "resolved", "older copy", "older copy",
          "resolved already"]  # fmt: skip


def test_a_new_firing_after_the_resolve_opens_the_group_again() -> None:
    again = _am_alert("5b3e3f0c1d2a4e6f", "nixos.org", started="2026-11-25T12:00:40Z")
    assert _replay([(0 * S, _am(ORG)), (60 * S, _am(ORG_DONE)), (70 * S, _am(again))]) == [
        "posted",
        "resolved",
        "posted",
    ]
    # The old firing's late copy after the new one opened: still recognised as older.
    assert (
        _replay(
            [(0 * S, _am(ORG)), (60 * S, _am(ORG_DONE)), (70 * S, _am(again)), (75 * S, _am(ORG))]
        )[-1]
        == "older copy"
    )


def test_a_copy_older_than_a_partial_resolve_leaves_the_message_alone() -> None:
    assert _replay(
        [
            (0 * S, _am(ORG, DEV)),
            (60 * S, _am(ORG_DONE, DEV)),
            (71 * S, _am(ORG, DEV)),  # from before nixos.org resolved
            (80 * S, _am(DEV)),  # nixos.org left the group after its resolve was sent
        ]
    ) == ["posted", "updated", "older copy", "updated"]


def test_a_copy_with_anything_new_is_not_taken_for_an_older_one() -> None:
    third = _am_alert("0f1e2d3c4b5a6978", "nixos.net")
    assert _replay(
        [(0 * S, _am(ORG, DEV)), (60 * S, _am(ORG_DONE, DEV_DONE)), (70 * S, _am(ORG, third))]
    ) == ["posted", "resolved", "posted"]


def test_the_same_firing_after_the_window_opens_the_group_again() -> None:
    """Alertmanager resolves an alert Prometheus stopped resending (resolve_timeout); when
    Prometheus comes back it sends the same startsAt, and that firing is real."""
    assert _replay(
        [(0 * S, _am(ORG)), (60 * S, _am(ORG_DONE)), (60 * S + 10 * timedelta(minutes=1), _am(ORG))]
    ) == ["posted", "resolved", "posted"]
    no_window = CFG.model_copy(update={"dedupe_window_s": 0})
    assert _replay([(0 * S, _am(ORG)), (60 * S, _am(ORG_DONE)), (71 * S, _am(ORG))], no_window) == [
        "posted",
        "resolved",
        "posted",
    ]


def test_what_a_group_knows_is_bounded_and_a_resolve_sticks() -> None:
    window = timedelta(minutes=10)
    org, dev = (
        "5b3e3f0c1d2a4e6f@2026-11-25T11:50:00+00:00",
        "9a8b7c6d5e4f3a2b@2026-11-25T11:50:00+00:00",
    )
    assert [incarnation(a) for a in _am(ORG, DEV).alerts] == [org, dev]
    known = learn({}, _am(ORG, DEV), window, NOW)
    assert known == {org: None, dev: None}
    known = learn(known, _am(ORG_DONE, DEV), window, NOW + S)
    assert known == {org: (NOW + S).timestamp(), dev: None}
    # A firing of the same incarnation does not undo the resolve; a later resolve keeps the time.
    assert learn(known, _am(ORG, DEV), window, NOW + 2 * S) == known
    assert learn(known, _am(ORG_DONE, DEV), window, NOW + 3 * S) == known
    assert older_copy(known, _am(ORG, DEV), window, NOW + 2 * S)
    # Resolves older than the window are forgotten, as are firings no longer reported.
    later = NOW + timedelta(minutes=11)
    assert learn(known, _am(DEV_DONE), window, later) == {dev: later.timestamp()}
    assert not older_copy(known, _am(ORG, DEV), window, later)

"""Alert notifications as room messages: Jinja2 templates for HTML and plain text.

Every label and annotation value reaches the HTML through autoescaping. Only absolute http(s)
URLs from a payload become links (`javascript:`, `data:` and the like are shown as text). One
oversized value is shortened ("… 61,000 more characters") and a group too large for one Matrix
event is cut, with "and N more" saying what was left out, so a message always keeps its HTML.

Templates (`alertmanager.templates`) get: `n` (the Notification), `title`, `severity`,
`status_word`, `icon`, `colour`, `resolved_colour`, `firing`/`resolved` (lists of AlertView:
each with its links, and its own severity and colour where they differ from the group's),
`firing_total`, `more_firing`, `more_resolved`, `truncated_note`, `mention_text`,
`mention_html`; the helpers
`link(url, text)` (an <a> only for http(s) URLs, else text), the filter `http_url` (the URL, or
"" when it is not http(s)) and, for HTML, the filter `nl2br` (escape, then newlines → <br>).
"""

from __future__ import annotations

import re
import urllib.parse
from dataclasses import dataclass
from datetime import UTC, datetime

from markupsafe import Markup

from bot.mentions import NOBODY, Mentions
from bot.messages import escape, human_duration
from commands.alerts.payload import Alert, Notification

# An edit carries the content twice (fallback + m.new_content) and an event may be 64 KiB.
MAX_RENDERED_BYTES = 28_000
# Heads a group posted again because Alertmanager repeated it unchanged (repeat_interval).
REMINDER = "🔁 Still firing, unchanged (Alertmanager's reminder)"

SEVERITY_COLOURS = {
    "critical": "#d32f2f",
    "error": "#d32f2f",
    "warning": "#f57c00",
    "info": "#1976d2",
    "resolved": "#2e7d32",
}
# Any other severity (or none).
OTHER_COLOUR = "#616161"
HIDDEN_LABELS = {"alertname", "severity"}
LINK_ANNOTATIONS = (("runbook_url", "Runbook"), ("grafana", "Grafana"), ("dashboard", "Dashboard"))
# A label or annotation value longer than this is shortened: the event keeps its other alerts
# and its HTML (bot.messages.fit would drop the HTML of an event that cannot fit).
MAX_VALUE_CHARS = 2_000
# A URL longer than this is shown shortened, as text, rather than as a link that cannot work.
MAX_URL_CHARS = 4_000
# A shared digest line's summary.
DIGEST_SUMMARY_CHARS = 200

DEFAULT_TEXT = """\
{% macro links(a) %}{% if a.links or a.unlinked %}  {% for name, url in a.links + a.unlinked %}\
{{ name }}: {{ url }}{% if not loop.last %} | {% endif %}{% endfor %}
{% endif %}{% endmacro -%}
{% if mention_text %}{{ mention_text }} {% endif -%}
{{ icon }} {{ status_word }}{% if firing_total %} ({{ firing_total }}){% endif %} · \
{{ severity|upper }} · {{ title }}
{% for a in firing %}• {% if a.severity %}[{{ a.severity|upper }}] {% endif %}{{ a.headline }}\
{% if a.summary %} — {{ a.summary }}{% endif %} (since {{ a.since }})
{% if a.description %}  {{ a.description|indent(2) }}
{% endif %}{% if a.labels %}  {{ a.labels }}
{% endif %}{{ links(a) }}{% endfor %}{% if more_firing %}… and {{ more_firing }} more firing
{% endif %}{% if truncated_note %}… {{ truncated_note }}
{% endif %}{% if resolved %}✅ resolved ({{ resolved|length + more_resolved }}):
{% for a in resolved %}• {{ a.headline }}{% if a.summary %} — {{ a.summary }}{% endif %} \
(after {{ a.duration }})
{{ links(a) }}{% endfor %}{% if more_resolved %}… and {{ more_resolved }} more resolved
{% endif %}{% endif %}"""

DEFAULT_HTML = """\
{% macro links(a) %}{% if a.links or a.unlinked %}<br>{% for name, url in a.links %}\
{{ link(url, name) }}{% if not loop.last or a.unlinked %} · {% endif %}{% endfor %}\
{% for name, text in a.unlinked %}{{ name }}: <code>{{ text }}</code>\
{% if not loop.last %} · {% endif %}{% endfor %}{% endif %}{% endmacro -%}
{% if mention_html %}{{ mention_html|safe }} {% endif -%}
<b><font color="{{ colour }}" data-mx-color="{{ colour }}">{{ icon }} {{ status_word }}\
{% if firing_total %} ({{ firing_total }}){% endif %} · {{ severity|upper }}</font> · \
{{ title }}</b>
{% if firing or truncated_note %}<ul>{% for a in firing %}<li>{% if a.severity %}\
<font color="{{ a.colour }}" data-mx-color="{{ a.colour }}"><b>[{{ a.severity|upper }}]</b></font> \
{% endif %}<b>{{ a.headline }}</b>\
{% if a.summary %} — {{ a.summary|nl2br }}{% endif %} <i>(since {{ a.since }})</i>\
{% if a.description %}<br>{{ a.description|nl2br }}{% endif %}\
{% if a.labels %}<br><code>{{ a.labels }}</code>{% endif %}{{ links(a) }}</li>{% endfor %}\
{% if more_firing %}<li>… and {{ more_firing }} more firing</li>{% endif %}\
{% if truncated_note %}<li>… {{ truncated_note }}</li>{% endif %}</ul>{% endif %}\
{% if resolved %}<p><font color="{{ resolved_colour }}" data-mx-color="{{ resolved_colour }}">\
✅ resolved ({{ resolved|length + more_resolved }}):</font></p><ul>\
{% for a in resolved %}<li><s>{{ a.headline }}</s>{% if a.summary %} — {{ a.summary }}{% endif %} \
<i>(after {{ a.duration }})</i>{{ links(a) }}</li>{% endfor %}\
{% if more_resolved %}<li>… and {{ more_resolved }} more resolved</li>{% endif %}</ul>{% endif %}"""


@dataclass(frozen=True)
class AlertView:
    """What a template gets for one alert."""

    headline: str
    summary: str
    description: str
    labels: str
    since: str
    duration: str
    links: list[tuple[str, str]]  # (name, http(s) URL)
    unlinked: list[tuple[str, str]]  # (name, text): URLs that must not become links
    # The alert's own severity (lower case) where it differs from the group's, else "": a
    # group by alertname may hold a warning and a critical alert, each shown in its colour.
    severity: str = ""
    colour: str = ""  # of `severity`, as "#rrggbb"


def http_url(url: str) -> str | None:
    """The URL if it is an absolute http(s) URL with a host, else None.

    Anything else (`javascript:`, `data:`, `vbscript:`, relative, or with control characters or
    spaces a browser would strip before reading the scheme) must not become an href.
    """
    if not url or any(ord(c) <= 0x20 or c == "\x7f" for c in url):
        return None
    try:
        parts = urllib.parse.urlsplit(url)
    except ValueError:
        return None
    if parts.scheme.lower() not in ("http", "https") or not parts.hostname:
        return None
    return url


def shorten(value: str, limit: int = MAX_VALUE_CHARS) -> str:
    """The value, or its first `limit` characters and how many more there were."""
    if len(value) <= limit:
        return value
    return f"{value[:limit]}… {len(value) - limit:,} more characters"


def _link_html(url: str, text: str) -> Markup:
    safe = http_url(url)
    if safe is None:
        return Markup("{}").format(text)
    return Markup('<a href="{}">{}</a>').format(safe, text)


def _link_text(url: str, text: str) -> str:
    return f"{text}: {url}"


def _nl2br(value: object) -> Markup:
    lines = str(value).replace("\r\n", "\n").split("\n")
    return Markup("<br>").join(Markup("{}").format(line) for line in lines)


def severity_of(n: Notification) -> str:
    """The group's severity, lower-cased ('WARNING' and 'warning' are the same)."""
    common = n.commonLabels.get("severity", "").lower()
    if common:
        return common
    found = {a.labels.get("severity", "").lower() for a in n.alerts} - {""}
    for sev in ("critical", "error", "warning", "info"):
        if sev in found:
            return sev
    return sorted(found)[0] if found else "none"


def silence_url(external_url: str, alert: Alert) -> str:
    """A link to Alertmanager's new-silence form, prefilled with the alert's labels."""
    matchers = ",".join(f'{k}="{v}"' for k, v in sorted(alert.labels.items()))
    query = urllib.parse.quote("{" + matchers + "}", safe="")
    return f"{external_url.rstrip('/')}/#/silences/new?filter={query}"


def colour_of(severity: str) -> str:
    """The colour a severity (lower case, or "resolved") is shown in, as "#rrggbb"."""
    return SEVERITY_COLOURS.get(severity, OTHER_COLOUR)


def _view(alert: Alert, n: Notification, now: datetime, cap: int = MAX_VALUE_CHARS) -> AlertView:
    labels = alert.labels
    host = labels.get("instance") or labels.get("host") or labels.get("hostname") or ""
    host = re.sub(r":\d+$", "", host)  # "pluto:9100" reads better as "pluto"
    name = labels.get("alertname", "alert")
    headline = f"{name} on {host}" if host else name
    shown = {
        k: v for k, v in sorted(labels.items()) if k not in HIDDEN_LABELS and k not in n.groupLabels
    }
    candidates: list[tuple[str, str]] = []
    if alert.generatorURL:
        candidates.append(("Prometheus", alert.generatorURL))
    for key, title in LINK_ANNOTATIONS:
        if alert.annotations.get(key):
            candidates.append((title, alert.annotations[key]))
    if n.externalURL and alert.status == "firing" and http_url(n.externalURL):
        candidates.append(("Silence", silence_url(n.externalURL, alert)))
    links: list[tuple[str, str]] = []
    unlinked: list[tuple[str, str]] = []
    for title, url in candidates:
        if http_url(url) is not None and len(url) <= max(cap, MAX_URL_CHARS):
            links.append((title, url))
        else:
            unlinked.append((title, shorten(url, min(cap, 300))))
    started = alert.startsAt.astimezone(UTC)
    ended = alert.endsAt.astimezone(UTC) if alert.endsAt else now
    own = labels.get("severity", "").lower()
    if own == severity_of(n):
        own = ""
    return AlertView(
        headline=headline,
        summary=shorten(alert.annotations.get("summary", ""), cap),
        description=shorten(alert.annotations.get("description", ""), cap),
        labels=" ".join(f"{k}={shorten(v, cap)}" for k, v in shown.items()),
        since=f"{human_duration(max(0.0, (now - started).total_seconds()))}, "
        f"{started:%Y-%m-%d %H:%M} UTC",
        duration=human_duration(max(0.0, (ended - started).total_seconds())),
        links=links,
        unlinked=unlinked,
        severity=shorten(own, 40),
        colour=colour_of(own) if own else "",
    )


class Renderer:
    """Turns a notification into (text, html); templates may be overridden from config."""

    def __init__(self, text_template: str | None = None, html_template: str | None = None):
        import jinja2  # on the first notification, not at start-up

        # Plain-text bodies are not HTML: escaping them would show &lt; to readers.
        self._text = jinja2.Environment(autoescape=False, undefined=jinja2.StrictUndefined)  # noqa: S701
        self._html = jinja2.Environment(autoescape=True, undefined=jinja2.StrictUndefined)
        self._text.globals["link"] = _link_text
        self._html.globals["link"] = _link_html
        for env in (self._text, self._html):
            env.filters["http_url"] = lambda url: http_url(str(url)) or ""
        self._html.filters["nl2br"] = _nl2br
        self.text_template = self._text.from_string(text_template or DEFAULT_TEXT)
        self.html_template = self._html.from_string(html_template or DEFAULT_HTML)

    def render(
        self,
        n: Notification,
        mentions: Mentions = NOBODY,
        now: datetime | None = None,
    ) -> tuple[str, str]:
        """Plain text and HTML for the group, cut to fit one event."""
        now = now or datetime.now(UTC)
        cap = MAX_VALUE_CHARS
        while True:
            firing = [_view(a, n, now, cap) for a in n.firing] if not n.all_resolved else []
            resolved = [_view(a, n, now, cap) for a in (n.alerts if n.all_resolved else n.resolved)]
            keep_f, keep_r = len(firing), len(resolved)
            while True:
                text, html = self._render(n, firing, resolved, keep_f, keep_r, mentions)
                if (
                    len(text.encode()) + len(html.encode()) <= MAX_RENDERED_BYTES
                    or keep_f + keep_r <= 1
                ):
                    break
                # Drop resolved ones first, then firing, a tenth at a time.
                if keep_r > 0:
                    keep_r = max(0, keep_r - max(1, keep_r // 10))
                else:
                    keep_f = max(1, keep_f - max(1, keep_f // 10))
            if len(text.encode()) + len(html.encode()) <= MAX_RENDERED_BYTES or cap <= 100:
                return text, html
            # One alert alone is too large (many long values): shorten every value further.
            cap //= 4

    def _render(
        self,
        n: Notification,
        firing: list[AlertView],
        resolved: list[AlertView],
        keep_f: int,
        keep_r: int,
        mentions: Mentions,
    ) -> tuple[str, str]:
        severity = severity_of(n)
        is_resolved = n.all_resolved
        truncated = n.truncatedAlerts
        firing_total = len(firing) + truncated if n.status == "firing" else 0
        truncated_note = ""
        if truncated and n.status == "firing":
            truncated_note = f"{firing_total:,} firing ({truncated:,} not in this notification)"
        elif truncated:
            truncated_note = (
                f"{len(n.alerts):,} shown resolved; {truncated:,} not in this notification, "
                "so the group is not known to be resolved"
            )
        values = {
            "n": n,
            "title": group_title(n),
            "severity": severity,
            "status_word": "RESOLVED"
            if is_resolved
            else ("FIRING" if n.status == "firing" else "PARTLY RESOLVED"),
            "icon": _icon(n),
            "colour": colour_of("resolved" if is_resolved else severity),
            "resolved_colour": colour_of("resolved"),
            "firing": firing[:keep_f],
            "resolved": resolved[:keep_r],
            "firing_total": firing_total,
            "more_firing": len(firing) - keep_f,
            "more_resolved": len(resolved) - keep_r,
            "truncated_note": truncated_note,
            "mention_text": mentions.text(),
            "mention_html": mentions.html(),
        }
        return self.text_template.render(values).strip(), self.html_template.render(values).strip()


def _icon(n: Notification) -> str:
    if n.all_resolved:
        return "✅"
    return "🔥" if severity_of(n) in ("critical", "error") else "⚠️"


def group_title(n: Notification) -> str:
    """The group's name as headers show it."""
    return (
        n.groupLabels.get("alertname")
        or n.commonLabels.get("alertname")
        or ", ".join(f"{k}={v}" for k, v in sorted(n.groupLabels.items()))
        or "alerts"
    )


def digest_line(n: Notification, repeat: bool = False) -> tuple[str, str]:
    """One group as a line of a storm digest: (text, html); `repeat` if it is a reminder."""
    firing = len(n.firing) + n.truncatedAlerts
    summary = next((a.annotations.get("summary", "") for a in n.alerts if a.annotations), "")
    summary = shorten(summary, DIGEST_SUMMARY_CHARS)
    if n.all_resolved:
        state = "resolved"
    elif n.status == "resolved":
        state = f"partly resolved ({n.truncatedAlerts} not in this notification)"
    else:
        state = f"{firing} {'still ' if repeat else ''}firing"
        if n.truncatedAlerts:
            state += f" ({n.truncatedAlerts} not in this notification)"
    head = f"{_icon(n)} {severity_of(n).upper()} · {group_title(n)}"
    text = f"• {head} — {state}" + (f" — {summary}" if summary else "")
    html = f"<li><b>{escape(head)}</b> — {state}" + (f" — {escape(summary)}" if summary else "")
    return text, html + "</li>"


def with_reminder(text: str, html: str) -> tuple[str, str]:
    """A group's message marked as Alertmanager's reminder that it still fires, unchanged."""
    return f"{REMINDER}\n{text}", f"<p>{escape(REMINDER)}</p>{html}"


def _batch_subject(groups: int, repeats: int) -> str:
    if repeats == 0:
        return f"{groups} alert groups started firing"
    if repeats == groups:
        return f"{groups} alert groups still firing, unchanged"
    return f"{groups} alert groups: {groups - repeats} started firing, {repeats} still firing"


def render_batch(
    full: list[tuple[str, str]] | None,
    lines: list[tuple[str, str]],
    pings: Mentions,
    repeats: int = 0,
) -> tuple[str, str]:
    """One message for several groups: each in full when that fits, else a line each.

    `repeats` of them are reminders of groups that still fire unchanged.
    """
    later = "each gets its own message when it changes"
    if full is not None:
        subject = _batch_subject(len(full), repeats)
        head = f"🔔 {subject} ({later})"
        text = "\n\n".join([f"{pings.text()} {head}".strip(), *(t for t, _ in full)])
        html = f"<p>{pings.html()} <b>{escape(head)}</b></p>" + "<hr>".join(h for _, h in full)
        if len(text.encode()) + len(html.encode()) <= MAX_RENDERED_BYTES:
            return text, html
    head = f"🌩️ Alert storm: {_batch_subject(len(lines), repeats)} ({later})"
    text = "\n".join([f"{pings.text()} {head}".strip(), *(t for t, _ in lines)])
    html = f"<p>{pings.html()} <b>{escape(head)}</b></p><ul>{''.join(h for _, h in lines)}</ul>"
    return text, html

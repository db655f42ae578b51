"""Builders for the event contents the bot sends (plain `body` plus HTML `formatted_body`)."""

from __future__ import annotations

import html
import json
from typing import Any

Content = dict[str, Any]


def escape(text: object) -> str:
    """HTML-escape any value for use inside formatted_body."""
    return html.escape(str(text), quote=True)


def notice(text: str, html_body: str | None = None) -> Content:
    """An m.notice; without explicit HTML the text is escaped and newlines become <br>."""
    return {
        "msgtype": "m.notice",
        "body": text,
        "format": "org.matrix.custom.html",
        "formatted_body": html_body
        if html_body is not None
        else escape(text).replace("\n", "<br>"),
    }


# Matrix refuses events over 65,536 bytes; the envelope (ids, hashes, signatures) needs the rest.
MAX_CONTENT_BYTES = 60_000
CUT_NOTE = "\n… (cut: too long for one Matrix message)"


def _size(content: Content) -> int:
    return len(json.dumps(content, ensure_ascii=False).encode())


def fit(content: Content) -> Content:
    """The content, or (when too large for one event) plain text cut to fit with a note."""
    if _size(content) <= MAX_CONTENT_BYTES:
        return content
    # HTML cannot be cut safely and is the larger half: keep the text and cut that.
    small = {k: v for k, v in content.items() if k not in ("format", "formatted_body")}
    inner = small.get("m.new_content")
    if isinstance(inner, dict):
        inner = {k: v for k, v in inner.items() if k not in ("format", "formatted_body")}
        small["m.new_content"] = inner
    texts = [c for c in (small, inner) if isinstance(c, dict) and isinstance(c.get("body"), str)]
    originals = [part["body"].encode() for part in texts]
    cut = _size(small) - MAX_CONTENT_BYTES + len(CUT_NOTE.encode())
    while cut > 0 and any(originals):
        for part, raw in zip(texts, originals, strict=True):
            part["body"] = raw[: max(0, len(raw) - cut)].decode(errors="ignore") + CUT_NOTE
        over = _size(small) - MAX_CONTENT_BYTES
        if over <= 0 or cut >= max(map(len, originals)):
            break
        cut += over + 64  # escaping in JSON makes some characters count more than once
    return small


def as_reply(content: Content, event_id: str) -> Content:
    """The same content as a reply to event_id."""
    return {**content, "m.relates_to": {"m.in_reply_to": {"event_id": event_id}}}


def in_thread(content: Content, root: str, reply_to: str | None = None) -> Content:
    """The same content inside the thread rooted at `root`."""
    return {
        **content,
        "m.relates_to": {
            "rel_type": "m.thread",
            "event_id": root,
            "is_falling_back": True,
            "m.in_reply_to": {"event_id": reply_to or root},
        },
    }


def edit(new_content: Content, event_id: str) -> Content:
    """An m.replace edit of event_id to new_content (keeping the original's relation)."""
    fallback = {k: v for k, v in new_content.items() if k != "m.relates_to"}
    return {
        **fallback,
        "body": f"* {new_content.get('body', '')}",
        "formatted_body": f"* {new_content.get('formatted_body', '')}",
        "m.new_content": fallback,
        "m.relates_to": {"rel_type": "m.replace", "event_id": event_id},
    }


def reaction(event_id: str, key: str) -> Content:
    """An m.reaction annotating event_id with key (an emoji)."""
    return {"m.relates_to": {"rel_type": "m.annotation", "event_id": event_id, "key": key}}


def media(mxc: str, filename: str, size: int, mimetype: str) -> Content:
    """An m.image (for image/*) or m.file event pointing at uploaded media."""
    return {
        "msgtype": "m.image" if mimetype.startswith("image/") else "m.file",
        "body": filename,
        "filename": filename,
        "url": mxc,
        "info": {"size": size, "mimetype": mimetype},
    }


def table(headers: list[str], rows: list[list[str]]) -> tuple[str, str]:
    """A table as (monospace plain text, HTML)."""
    widths = [
        max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)
    ]

    def line(cells: list[str]) -> str:
        return "  ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)).rstrip()

    text = "\n".join([line(headers), *(line(r) for r in rows)])
    head = "".join(f"<th>{escape(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{escape(c)}</td>" for c in r) + "</tr>" for r in rows)
    return text, f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def human_duration(seconds: float) -> str:
    """'3 d 4 h', '5 min 2 s', '850 ms' — two units at most."""
    if seconds < 1:
        return f"{seconds * 1000:.0f} ms"
    units = (("d", 86400), ("h", 3600), ("min", 60), ("s", 1))
    parts: list[str] = []
    rest = int(seconds)
    for name, size in units:
        if rest >= size or (parts and len(parts) < 2):
            qty, rest = divmod(rest, size)
            if qty or parts:
                parts.append(f"{qty} {name}")
        if len(parts) == 2:
            break
    return " ".join(p for p in parts if not p.startswith("0 ")) or "0 s"

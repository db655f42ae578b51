"""Deploy output as a terminal would show it: `\\r` progress, a last line without newline."""

from __future__ import annotations

from commands.deploy.runner import MAX_PENDING_BYTES, OutputLines


def test_carriage_return_progress_shows_what_stays_on_screen() -> None:
    out = OutputLines()
    assert out.feed(b"copying path 10%\rcopying path 20%\r") == []
    assert out.partial() == "copying path 20%"
    # The next redraw arrives in another chunk after a trailing \r: it replaces, not appends.
    assert out.feed(b"copying path 30%") == []
    assert out.partial() == "copying path 30%"
    assert out.feed(b"\r\nwarning: the following units failed: a.service\r\n") == [
        "copying path 30%",
        "warning: the following units failed: a.service",
    ]


def test_the_last_line_without_newline_is_kept_at_exit() -> None:
    out = OutputLines()
    assert out.feed(b"building\n[sudo] password for deploy: ") == ["building"]
    assert out.partial() == "[sudo] password for deploy: "
    assert out.close() == "[sudo] password for deploy: "
    assert out.close() == ""


def test_progress_without_newline_keeps_bounded_memory() -> None:
    out = OutputLines()
    for i in range(50_000):
        out.feed(b"\rdownloading %d%%" % i)
    assert out.partial() == "downloading 49999%"
    assert len(out._pending) < 100
    # One endless line is passed on in pieces rather than held whole.
    lines = out.feed(b"y" * (MAX_PENDING_BYTES + 1))
    assert len(lines) == 1 and out.partial() == ""

"""A loopback TCP proxy that a test can cut, to split one process from a server.

`cut()` is a black hole, not a refusal: connections stay open and new ones are accepted, but
no byte passes in either direction, the way a dead switch or a partition looks to both ends
(they learn it only from their own timeouts). `mend()` ends the connections that lived through
the cut (by then both ends have given up on them) and lets new ones through.
"""

from __future__ import annotations

import asyncio
import contextlib

from devstack.synapse import free_port


class TcpProxy:
    """Forwards 127.0.0.1:`port` to `target_host`:`target_port`."""

    def __init__(self, target_host: str, target_port: int, port: int | None = None) -> None:
        self.target = (target_host, target_port)
        self.port = port or free_port()
        self._open = asyncio.Event()
        self._open.set()
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._handlers: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        """Listen on 127.0.0.1:`port`."""
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", self.port)

    async def stop(self) -> None:
        """Stop listening, close every connection and wait for their handlers to end."""
        if self._server is not None:
            self._server.close()
        self._open.set()  # handlers held by a cut see their connection closed and end
        self._close_all()
        if self._handlers:
            await asyncio.wait(self._handlers)
        if self._server is not None:
            await self._server.wait_closed()

    def cut(self) -> None:
        """From now on nothing passes (both ends wait for their own timeouts)."""
        self._open.clear()

    def mend(self) -> None:
        """Close the connections that lived through the cut; new ones pass again."""
        self._close_all()
        self._open.set()

    def _close_all(self) -> None:
        for writer in list(self._writers):
            writer.close()
        self._writers.clear()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._handlers.add(task)
            task.add_done_callback(self._handlers.discard)
        self._writers.add(writer)
        await self._open.wait()
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.close()
            return
        self._writers.add(up_writer)
        await asyncio.gather(
            self._pipe(reader, up_writer), self._pipe(up_reader, writer), return_exceptions=True
        )
        for w in (writer, up_writer):
            self._writers.discard(w)
            w.close()

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError, ConnectionError):
            while data := await reader.read(65536):
                await self._open.wait()  # what is read during a cut is held, then dropped
                if writer.is_closing():
                    return
                writer.write(data)
                await writer.drain()
        writer.close()

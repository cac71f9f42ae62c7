"""A helper process of a benchmark (a publisher, websocket clients), driven over its stdin and
stdout, one line per command or answer."""

from __future__ import annotations

import contextlib
import subprocess

import trio
from common import BenchError, say  # bench/ is on sys.path when run as a script


class Helper:
    """A helper process (publisher or websocket clients) driven over its stdin and stdout."""

    def __init__(self, name: str, process: trio.Process) -> None:
        self.name = name
        self.process = process
        self._buffer = bytearray()
        self.pid = process.pid

    async def send(self, line: str) -> None:
        assert self.process.stdin is not None
        await self.process.stdin.send_all(line.encode() + b"\n")

    async def readline(self) -> str:
        assert self.process.stdout is not None
        while (end := self._buffer.find(b"\n")) < 0:
            data = await self.process.stdout.receive_some(1 << 20)
            if not data:
                raise BenchError(f"{self.name} exited early (status {self.process.poll()})")
            self._buffer += data
        line = bytes(self._buffer[:end])
        del self._buffer[:end + 1]
        return line.decode()

    async def read_until_end(self) -> list[str]:
        """Lines up to ``end`` (excluded); one bulk read, not line by line."""
        assert self.process.stdout is not None
        start = 0
        while (end := self._buffer.find(b"\nend\n", start)) < 0 and not self._buffer.startswith(
                b"end\n"):
            start = max(0, len(self._buffer) - 4)
            data = await self.process.stdout.receive_some(1 << 20)
            if not data:
                raise BenchError(f"{self.name} exited early (status {self.process.poll()})")
            self._buffer += data
        if end < 0:  # nothing before ``end``
            del self._buffer[:4]
            return []
        lines = bytes(self._buffer[:end]).decode().split("\n")
        del self._buffer[:end + 5]
        return lines

    async def stop(self) -> None:
        """Close stdin (the helper's signal to finish), then wait 15 s at most, then kill."""
        with trio.CancelScope(shield=True):
            with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
                if self.process.stdin is not None:
                    await self.process.stdin.aclose()
            with trio.move_on_after(15):
                await self.process.wait()
            if self.process.poll() is None:
                say(f"{self.name} did not stop within 15 s; killing it")
                self.process.kill()
                with trio.move_on_after(5):
                    await self.process.wait()


async def start_helper(name: str, cmd: list[str], ready: str, within: float) -> Helper:
    process = await trio.lowlevel.open_process(cmd, stdin=subprocess.PIPE,
                                               stdout=subprocess.PIPE, start_new_session=True)
    helper = Helper(name, process)
    try:
        with trio.fail_after(within):
            line = await helper.readline()
        if not line.startswith(ready):
            raise BenchError(f"{name} said {line!r} instead of {ready!r}")
    except BaseException:
        await helper.stop()
        raise
    return helper

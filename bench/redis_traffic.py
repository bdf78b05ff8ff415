"""Redis round trips and commands per relayed turn and per agent message, as redis-server counts them.

``RedisCounter`` reads ``INFO stats commandstats`` from the benchmark's
redis-server over a connection of its own:

- commands: the ``cmdstat_<name>`` call counts. Every command counts, the ones
  a Lua script calls too (an EVALSHA of a script that calls HMGET and HSET
  counts EVALSHA, HMGET and HSET) and the ones of a MULTI/EXEC (MULTI, each
  command, EXEC);
- round trips: ``total_reads_processed``, the reads redis-server made from
  client sockets. A client that sends a request and waits for the answer gives
  one read per request; a pipeline or a MULTI/EXEC sent in one write is one
  read, a script one read, whatever it calls. It is exact up to a request that
  arrives in several pieces: over about 16 KB (redis-server's read buffer)
  one request takes several reads. No request of the connector's is near that
  (bytes per round trip are in the results to show it), and a connection that
  closes adds one read; the connector's pools keep theirs open;
- bytes: ``total_net_input_bytes`` (sent to Redis) and
  ``total_net_output_bytes`` (its answers and pub/sub messages).

The counter's own INFO calls are taken off exactly (one read, one INFO call,
its request's and its answer's bytes each). What runs in the background at a
steady rate (the outbox poll, the sweeper's tick, pub/sub health checks) is
measured over a window with no traffic and taken off in proportion to each
window's length: ``Traffic.minus``.
"""

import asyncio
import contextlib
import re
import shlex
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable, Dict, List, Optional, Tuple

_REQUEST = b"*3\r\n$4\r\nINFO\r\n$5\r\nstats\r\n$12\r\ncommandstats\r\n"
TIMEOUT = 10.0


@dataclass
class Snapshot:
    at: float  # the event loop's clock
    reads: int
    bytes_in: int
    bytes_out: int
    calls: Dict[str, int]
    # What this counter's own INFO calls had added to the figures above when they were read.
    own_reads: int
    own_calls: int
    own_in: int
    own_out: int


@dataclass
class Traffic:
    """What clients made redis-server do over ``seconds``: rates when ``seconds`` is 1."""

    seconds: float
    reads: float
    bytes_in: float
    bytes_out: float
    calls: Dict[str, float] = field(default_factory=dict)

    @property
    def commands(self) -> float:
        return sum(self.calls.values())

    def rate(self) -> "Traffic":
        """Per second."""
        scale = 1.0 / self.seconds if self.seconds > 0 else 0.0
        return self.scaled(scale, seconds=1.0)

    def scaled(self, factor: float, seconds: Optional[float] = None) -> "Traffic":
        return Traffic(
            seconds=self.seconds if seconds is None else seconds,
            reads=self.reads * factor,
            bytes_in=self.bytes_in * factor,
            bytes_out=self.bytes_out * factor,
            calls={name: calls * factor for name, calls in self.calls.items()},
        )

    def minus(self, background: "Traffic") -> "Traffic":
        """This window less ``background`` (a rate) over the same length of time."""
        steady = background.scaled(self.seconds)
        names = set(self.calls) | set(steady.calls)
        return Traffic(
            seconds=self.seconds,
            reads=self.reads - steady.reads,
            bytes_in=self.bytes_in - steady.bytes_in,
            bytes_out=self.bytes_out - steady.bytes_out,
            calls={n: self.calls.get(n, 0.0) - steady.calls.get(n, 0.0) for n in names},
        )

    def plus(self, other: "Traffic") -> "Traffic":
        names = set(self.calls) | set(other.calls)
        return Traffic(
            seconds=self.seconds + other.seconds,
            reads=self.reads + other.reads,
            bytes_in=self.bytes_in + other.bytes_in,
            bytes_out=self.bytes_out + other.bytes_out,
            calls={n: self.calls.get(n, 0.0) + other.calls.get(n, 0.0) for n in names},
        )

    def per(self, units: int) -> Dict[str, Any]:
        """Per unit (turn, message), commands by name, most first; tiny remainders dropped."""
        if units <= 0:
            return {"round_trips": None, "commands": None, "by_command": {}}
        by_command = {
            name: round(calls / units, 3)
            for name, calls in sorted(self.calls.items(), key=lambda item: -item[1])
            if round(calls / units, 2) != 0
        }
        return {
            "round_trips": round(self.reads / units, 3),
            "commands": round(self.commands / units, 3),
            "by_command": by_command,
            "bytes_sent": round(self.bytes_in / units, 1),
            "bytes_received": round(self.bytes_out / units, 1),
        }

    def as_dict(self) -> Dict[str, Any]:
        return {
            "seconds": round(self.seconds, 3),
            "round_trips": round(self.reads, 2),
            "commands": round(self.commands, 2),
            "by_command": {n: round(c, 2) for n, c in sorted(self.calls.items()) if c},
            "bytes_sent": round(self.bytes_in, 1),
            "bytes_received": round(self.bytes_out, 1),
        }


class RedisCounter:
    """Reads redis-server's counters over one connection of its own (plain RESP, no client)."""

    def __init__(self, host: str, port: int) -> None:
        self.host = host
        self.port = port
        self._reader: Optional[asyncio.StreamReader] = None
        self._writer: Optional[asyncio.StreamWriter] = None
        self._taken = 0
        self._answers = 0  # bytes of every answer read so far

    async def _connect(self) -> Tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        if self._reader is None or self._writer is None:
            self._reader, self._writer = await asyncio.wait_for(
                asyncio.open_connection(self.host, self.port), TIMEOUT
            )
        reader, writer = self._reader, self._writer
        assert reader is not None and writer is not None
        return reader, writer

    async def snapshot(self) -> Snapshot:
        reader, writer = await self._connect()
        writer.write(_REQUEST)
        await writer.drain()
        header = await asyncio.wait_for(reader.readline(), TIMEOUT)
        if not header.startswith(b"$"):
            raise RuntimeError(f"redis-server answered INFO with {header[:200]!r}")
        length = int(header[1:].strip())
        body = await asyncio.wait_for(reader.readexactly(length + 2), TIMEOUT)
        at = asyncio.get_running_loop().time()
        fields: Dict[str, str] = {}
        calls: Dict[str, int] = {}
        for line in body.decode("utf-8", "replace").splitlines():
            name, _, value = line.partition(":")
            if name.startswith("cmdstat_"):
                parts = dict(item.split("=", 1) for item in value.split(",") if "=" in item)
                calls[name[len("cmdstat_") :]] = int(parts.get("calls", "0"))
            elif value:
                fields[name] = value
        taken = self._taken
        answers = self._answers
        self._taken += 1
        self._answers += len(header) + length + 2
        return Snapshot(
            at=at,
            reads=int(fields["total_reads_processed"]),
            bytes_in=int(fields["total_net_input_bytes"]),
            bytes_out=int(fields["total_net_output_bytes"]),
            calls=calls,
            # This INFO's read and request bytes are counted before it answers;
            # its call and its answer's bytes only after.
            own_reads=taken + 1,
            own_calls=taken,
            own_in=(taken + 1) * len(_REQUEST),
            own_out=answers,
        )

    @staticmethod
    def between(first: Snapshot, last: Snapshot) -> Traffic:
        """What the clients other than this counter did between two snapshots."""
        calls = {
            name: float(last.calls.get(name, 0) - first.calls.get(name, 0))
            for name in set(first.calls) | set(last.calls)
        }
        calls["info"] = calls.get("info", 0.0) - (last.own_calls - first.own_calls)
        return Traffic(
            seconds=last.at - first.at,
            reads=float(last.reads - first.reads - (last.own_reads - first.own_reads)),
            bytes_in=float(last.bytes_in - first.bytes_in - (last.own_in - first.own_in)),
            bytes_out=float(last.bytes_out - first.bytes_out - (last.own_out - first.own_out)),
            calls={name: count for name, count in calls.items() if count},
        )

    async def over(self, seconds: float) -> Traffic:
        """What the clients did over the next ``seconds``."""
        first = await self.snapshot()
        await asyncio.sleep(seconds)
        return self.between(first, await self.snapshot())

    async def quiet(
        self, background: Traffic, at_least: float, at_most: float, sample: float = 1.0
    ) -> float:
        """Wait ``at_least`` seconds, then until a ``sample`` has no more round trips than
        ``background`` (a rate) gives, with a little slack; at most ``at_most``. Seconds waited."""
        loop = asyncio.get_running_loop()
        began = loop.time()
        await asyncio.sleep(at_least)
        while loop.time() - began < at_most:
            window = await self.over(sample)
            if window.reads <= background.reads * window.seconds * 1.5 + 3:
                break
        return loop.time() - began

    async def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            # A connection the server already dropped has nothing left to close.
            with contextlib.suppress(ConnectionError, OSError):
                await self._writer.wait_closed()
            self._writer = self._reader = None


def top_commands(per_unit: Dict[str, Any], count: int = 6) -> str:
    """``EVALSHA 3.00, HSET 2.00, ...``: the most frequent commands per unit, for printing."""
    items: List[Tuple[str, float]] = list(per_unit.get("by_command", {}).items())[:count]
    return ", ".join(f"{name.upper()} {calls:.2f}" for name, calls in items)


@dataclass
class Traced:
    """One command as MONITOR showed it: who sent it (a connection, or ``lua``), what, on which keys."""

    client: str
    command: str
    keys: List[str]


class Monitor:
    """The commands redis-server runs while a coroutine runs, from MONITOR, in order.

    MONITOR shows each command a client sent and, marked ``lua``, each one a
    script called; a MULTI/EXEC shows as its commands between MULTI and EXEC.
    It cannot show how a pipeline without MULTI was batched (``RedisCounter``
    counts round trips exactly); it serves to show what one turn sends. Only
    keys are kept, never values (message texts).
    """

    def __init__(self, host: str, port: int) -> None:
        self.host = host
        self.port = port

    async def trace(self, run: Callable[[], Awaitable[Any]], tail: float = 0.0) -> List[Traced]:
        token = f"benchmark-trace-{id(run):x}"
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection(self.host, self.port), TIMEOUT
        )
        marker_reader, marker = await asyncio.wait_for(
            asyncio.open_connection(self.host, self.port), TIMEOUT
        )
        try:
            writer.write(b"*1\r\n$7\r\nMONITOR\r\n")
            await writer.drain()
            if (await asyncio.wait_for(reader.readline(), TIMEOUT)).strip() != b"+OK":
                raise RuntimeError("redis-server refused MONITOR")
            for step in ("begin", "end"):
                if step == "end":
                    await run()
                    await asyncio.sleep(tail)
                text = f"{token}-{step}".encode()
                marker.write(b"*2\r\n$4\r\nECHO\r\n$%d\r\n%s\r\n" % (len(text), text))
                await marker.drain()
                await asyncio.wait_for(marker_reader.readline(), TIMEOUT)
                await asyncio.wait_for(marker_reader.readline(), TIMEOUT)
            return await self._between(reader, token)
        finally:
            for closing in (writer, marker):
                closing.close()
                with contextlib.suppress(ConnectionError, OSError):
                    await closing.wait_closed()

    @staticmethod
    async def _between(reader: asyncio.StreamReader, token: str) -> List[Traced]:
        traced: List[Traced] = []
        inside = False
        clients: Dict[str, str] = {}
        while True:
            line = (await asyncio.wait_for(reader.readline(), TIMEOUT)).decode("utf-8", "replace")
            found = _MONITOR_LINE.match(line.rstrip("\r\n"))
            if found is None:
                continue
            source, args = found.group(1), shlex.split(found.group(2))
            if args[:2] == ["ECHO", f"{token}-begin"]:
                inside = True
                continue
            if args[:2] == ["ECHO", f"{token}-end"]:
                return traced
            if not inside or not args:
                continue
            client = (
                "lua" if source == "lua" else clients.setdefault(source, f"#{len(clients) + 1}")
            )
            traced.append(Traced(client, args[0].upper(), _keys(args)))


_MONITOR_LINE = re.compile(r"^\+\d+\.\d+ \[\d+ ([^\]]+)\] (.*)$")


def _keys(args: List[str]) -> List[str]:
    command = args[0].upper()
    if command in {"EVALSHA", "EVAL", "EVALSHA_RO", "EVAL_RO"} and len(args) > 2:
        try:
            count = int(args[2])
        except ValueError:
            return []
        return args[3 : 3 + count]
    if command in {"MULTI", "EXEC", "PING", "TIME"}:
        return []
    return args[1:2]


def trace_requests(traced: List[Traced], names: Dict[str, str]) -> List[str]:
    """A trace for printing: one line per request a client sent, a MULTI/EXEC as one, and in
    brackets what a script called or what the transaction held.

    ``names`` replaces ids in keys (``{"<conversation>": "abc..."}``).
    """

    def shown(keys: List[str]) -> str:
        text = " ".join(keys)
        for name, value in names.items():
            if value:
                text = text.replace(value, name)
        return text

    requests: List[Dict[str, Any]] = []
    open_multi: Optional[Dict[str, Any]] = None
    for entry in traced:
        if entry.client == "lua" and requests:
            requests[-1]["inner"].append(entry.command)
            continue
        if open_multi is not None and entry.client == open_multi["client"]:
            if entry.command == "EXEC":
                open_multi = None
            else:
                open_multi["inner"].append(f"{entry.command} {shown(entry.keys)}".strip())
            continue
        request = {"client": entry.client, "line": f"{entry.command} {shown(entry.keys)}".strip()}
        request["inner"] = []
        requests.append(request)
        if entry.command == "MULTI":
            request["line"] = "MULTI/EXEC"
            open_multi = request
    return [
        f"{r['client']} {r['line']}" + (f" [{', '.join(r['inner'])}]" if r["inner"] else "")
        for r in requests
    ]

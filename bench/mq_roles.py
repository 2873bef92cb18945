"""Child processes for the pub/sub and RPC benchmarks: macula, NATS and Zenoh roles.

python -m mq_roles ROLE ARGS...   prints JSON lines ({"ready": 1}, then results).

Roles (SYS is macula, nats or zenoh; ADDR is host:port):
  macula-node NAME [SEED]      a node on 127.0.0.1, embedded defaults; prints {"port": p}
  zenoh-router PORT            a Zenoh session in router mode
  SYS-sub ADDR N SIZE          count N messages on bench.data; prints msgs/s
  SYS-pub ADDR N SIZE          publish N messages of SIZE bytes as fast as allowed
  SYS-lat-sub ADDR N           one-way latency of N timestamped messages (p50/p99 us)
  SYS-lat-pub ADDR N SIZE      N messages at ~2 kHz carrying CLOCK_MONOTONIC
  SYS-echo ADDR                serve "echo"
  SYS-caller ADDR SEQ INFLIGHT SECONDS   SEQ sequential calls, then INFLIGHT concurrent
"""

from __future__ import annotations

import asyncio
import signal
import json
import os
import statistics
import sys
import tempfile
import threading
import time

TOPIC = os.environ.get("MQ_TOPIC", "bench.data")  # benchlib gives each run its own
IDLE_GIVE_UP = 4.0  # a subscriber that hears nothing this long reports what it has


def say(**kw) -> None:
    print(json.dumps(kw), flush=True)


def pct(values: list[float], p: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(p / 100 * len(s)))] if s else 0.0


class Counter:
    """Counts deliveries; reports rate between the first and the last one."""

    def __init__(self, n: int) -> None:
        self.n, self.seen, self.t0, self.t1 = n, 0, 0.0, 0.0
        self.done = threading.Event()

    def hit(self) -> None:
        now = time.perf_counter()
        if self.seen == 0:
            self.t0 = now
        self.seen += 1
        self.t1 = now
        if self.seen >= self.n:
            self.done.set()

    def report(self) -> None:
        span = self.t1 - self.t0
        say(msgs_s=(self.seen - 1) / span if span > 0 else 0.0, received=self.seen)


def latency_payload(size: int) -> bytes:
    return time.monotonic_ns().to_bytes(8, "big") + b"x" * max(0, size - 8)


def latency_of(payload: bytes) -> float:
    return (time.monotonic_ns() - int.from_bytes(payload[:8], "big")) / 1000.0


def latency_report(lat: list[float]) -> None:
    say(p50_us=statistics.median(lat) if lat else 0.0, p99_us=pct(lat, 99), received=len(lat))


# ---- macula ------------------------------------------------------------------------------
async def macula_node(name: str, seed: str | None) -> None:
    from macula.config import load_config, replace
    from macula.node import Node

    cfg = load_config(system_file=False, env={})
    cfg = replace(cfg, node={"name": name, "realm": "bench",
                             "state_dir": tempfile.mkdtemp(prefix="macula-bench-")},
                  network={"listen_host": "127.0.0.1", "listen_port": 0,
                           "seeds": (seed,) if seed else ()})
    node = Node(cfg, control=False)
    await node.start()
    import signal

    def dump() -> None:  # counters on demand, for profiling
        links = []
        for link in node.endpoint.links:
            core = link.conn._core  # qh3 internals: diagnostics only
            links.append({k: getattr(core, k, None) for k in (
                "congestion_window", "bytes_in_flight", "smoothed_rtt", "loss_total",
                "pto_total")} | {"unsent": link._unsent, "pending": link._pending_bytes})
        print(json.dumps({"endpoint": node.endpoint.stats, "pubsub": node.pubsub.status(),
                          "links": links}, default=str), file=sys.stderr, flush=True)

    asyncio.get_running_loop().add_signal_handler(signal.SIGUSR1, dump)
    say(port=node.listen_address[1])
    seconds = float(os.environ.get("MQ_NODE_SECONDS", "0"))  # for profiling runs
    if seconds:
        await asyncio.sleep(seconds)
        await node.stop()
        return
    await asyncio.Event().wait()


async def _macula(addr: str):
    from macula.client import connect

    return await connect(addr, realm="bench")


async def macula_sub(addr: str, n: int, lat: bool) -> None:
    c = await _macula(addr)
    sub = c.subscribe(TOPIC, queue=1 << 20)
    await c.flush()
    say(ready=1)
    counter, lats = Counter(n), []

    async def consume() -> None:
        async for msg in sub:
            counter.hit()
            if lat:
                lats.append(latency_of(msg.payload))
            if counter.seen >= n:
                return

    await until_idle(asyncio.ensure_future(consume()), counter)
    latency_report(lats) if lat else counter.report()
    await c.close()


async def until_idle(task: asyncio.Future, counter: Counter) -> None:
    """Wait for ``task``, giving up once the counter stops moving for IDLE_GIVE_UP s."""
    last = -1
    while not task.done() and counter.seen != last:
        last = counter.seen
        await asyncio.wait([task], timeout=IDLE_GIVE_UP)
    task.cancel()


async def macula_pub(addr: str, n: int, size: int, lat: bool) -> None:
    c = await _macula(addr)
    payload = b"x" * size
    for i in range(n):
        if lat:
            await c.publish(TOPIC, latency_payload(size))
            await asyncio.sleep(0.0005)
        else:
            await c.publish(TOPIC, payload)
            if i % 64 == 63:
                await asyncio.sleep(0)  # let the transport flush this tick's frames
    await c.flush(30)
    say(sent=n)
    await c.close()


async def macula_echo(addr: str) -> None:
    c = await _macula(addr)
    c.register("echo", lambda args: args)
    await c.flush()
    say(ready=1)
    stop = asyncio.Event()  # a provider that stops cleanly unregisters at once
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    await stop.wait()
    await c.close()


async def macula_caller(addr: str, seq: int, inflight: int, seconds: float) -> None:
    c = await _macula(addr)
    await caller_loop(lambda data: c.call("echo", data), seq, inflight, seconds)
    await c.close()


async def caller_loop(call, seq: int, inflight: int, seconds: float) -> None:
    data = b"x" * 64
    for _ in range(50):  # warm up: connections, discovery caches
        await call(data)
    lat = []
    for _ in range(seq):
        t0 = time.perf_counter()
        await call(data)
        lat.append((time.perf_counter() - t0) * 1e6)
    done = 0
    stop_at = time.perf_counter() + seconds

    async def worker() -> None:
        nonlocal done
        while time.perf_counter() < stop_at:
            await call(data)
            done += 1

    t0 = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(inflight)))
    say(seq_p50_us=statistics.median(lat), seq_p99_us=pct(lat, 99),
        calls_s=done / (time.perf_counter() - t0))


# ---- NATS (nats-server + nats-py) ----------------------------------------------------
async def _nats(addr: str):
    import nats

    return await nats.connect(f"nats://{addr}", pending_size=64 << 20)


async def nats_sub(addr: str, n: int, lat: bool) -> None:
    nc = await _nats(addr)
    counter, lats = Counter(n), []
    done = asyncio.Event()

    async def cb(msg) -> None:
        counter.hit()
        if lat:
            lats.append(latency_of(msg.data))
        if counter.seen >= n:
            done.set()

    await nc.subscribe(TOPIC, cb=cb, pending_msgs_limit=-1, pending_bytes_limit=-1)
    await nc.flush()
    say(ready=1)
    await until_idle(asyncio.ensure_future(done.wait()), counter)
    latency_report(lats) if lat else counter.report()
    await nc.close()


async def nats_pub(addr: str, n: int, size: int, lat: bool) -> None:
    nc = await _nats(addr)
    payload = b"x" * size
    for i in range(n):
        if lat:
            await nc.publish(TOPIC, latency_payload(size))
            await nc.flush()
            await asyncio.sleep(0.0005)
        else:
            await nc.publish(TOPIC, payload)
    await nc.flush(30)
    say(sent=n)
    await nc.close()


async def nats_echo(addr: str) -> None:
    nc = await _nats(addr)

    async def cb(msg) -> None:
        await msg.respond(msg.data)

    await nc.subscribe("echo", cb=cb)
    await nc.flush()
    say(ready=1)
    await asyncio.Event().wait()


async def nats_caller(addr: str, seq: int, inflight: int, seconds: float) -> None:
    nc = await _nats(addr)
    await caller_loop(lambda data: nc.request("echo", data, timeout=5), seq, inflight, seconds)
    await nc.close()


# ---- Zenoh (router + clients, congestion control BLOCK) ------------------------------
def _zenoh_conf(mode: str, addr: str):
    import zenoh

    conf = zenoh.Config()
    conf.insert_json5("mode", json.dumps(mode))
    key = "listen/endpoints" if mode == "router" else "connect/endpoints"
    conf.insert_json5(key, json.dumps([f"tcp/{addr}"]))
    conf.insert_json5("scouting/multicast/enabled", "false")
    return conf


def zenoh_router(port: int) -> None:
    import zenoh

    session = zenoh.open(_zenoh_conf("router", f"127.0.0.1:{port}"))  # noqa: F841 - keep it open
    say(port=port)
    threading.Event().wait()


def zenoh_sub(addr: str, n: int, lat: bool) -> None:
    import zenoh

    s = zenoh.open(_zenoh_conf("client", addr))
    counter, lats = Counter(n), []

    def cb(sample) -> None:
        counter.hit()
        if lat:
            lats.append(latency_of(sample.payload.to_bytes()))

    sub = s.declare_subscriber(TOPIC.replace(".", "/"), cb)
    time.sleep(0.3)  # declaration reaches the router (no flush primitive in the Python API)
    say(ready=1)
    last = -1
    while not counter.done.is_set() and counter.seen != last:
        last = counter.seen
        counter.done.wait(IDLE_GIVE_UP)
    latency_report(lats) if lat else counter.report()
    sub.undeclare()
    s.close()


def zenoh_pub(addr: str, n: int, size: int, lat: bool) -> None:
    import zenoh

    s = zenoh.open(_zenoh_conf("client", addr))
    pub = s.declare_publisher(TOPIC.replace(".", "/"),
                              congestion_control=zenoh.CongestionControl.BLOCK)
    payload = b"x" * size
    for _ in range(n):
        if lat:
            pub.put(latency_payload(size))
            time.sleep(0.0005)
        else:
            pub.put(payload)
    say(sent=n)
    time.sleep(0.5)
    s.close()


def zenoh_echo(addr: str) -> None:
    import zenoh

    s = zenoh.open(_zenoh_conf("client", addr))
    queryable = s.declare_queryable("echo", lambda q: q.reply("echo", q.payload.to_bytes()))  # noqa: F841
    time.sleep(0.3)
    say(ready=1)
    threading.Event().wait()


def zenoh_caller(addr: str, seq: int, inflight: int, seconds: float) -> None:
    import zenoh

    s = zenoh.open(_zenoh_conf("client", addr))
    data = b"x" * 64

    def get_one() -> None:
        for reply in s.get("echo", payload=data, consolidation=zenoh.ConsolidationMode.NONE):
            reply.ok  # noqa: B018 - raises if the reply is an error

    for _ in range(50):
        get_one()
    lat = []
    for _ in range(seq):
        t0 = time.perf_counter()
        get_one()
        lat.append((time.perf_counter() - t0) * 1e6)
    # Session.get blocks its caller in this API (~0.4 ms here), with the GIL released:
    # 32 threads, each with one call in flight, keep 32 calls in flight.
    done = [0] * inflight
    stop_at = time.perf_counter() + seconds

    def worker(i: int) -> None:
        while time.perf_counter() < stop_at:
            get_one()
            done[i] += 1

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(inflight)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    done = [sum(done)]
    say(seq_p50_us=statistics.median(lat), seq_p99_us=pct(lat, 99),
        calls_s=done[0] / (time.perf_counter() - t0))
    s.close()


def main(argv: list[str]) -> None:
    role, args = argv[0], argv[1:]
    system, _, kind = role.partition("-")
    if role == "macula-node":
        asyncio.run(macula_node(args[0], args[1] if len(args) > 1 else None))
        return
    if role == "zenoh-router":
        zenoh_router(int(args[0]))
        return
    fn = globals()[f"{system}_{kind.replace('lat-', '')}"]
    lat = kind.startswith("lat-")
    if kind in ("sub", "lat-sub"):
        call = (fn, args[0], int(args[1]), lat)
    elif kind in ("pub", "lat-pub"):
        call = (fn, args[0], int(args[1]), int(args[2]), lat)
    elif kind == "echo":
        call = (fn, args[0])
    else:
        call = (fn, args[0], int(args[1]), int(args[2]), float(args[3]))
    result = call[0](*call[1:])
    if asyncio.iscoroutine(result):
        asyncio.run(result)


if __name__ == "__main__":
    main(sys.argv[1:])

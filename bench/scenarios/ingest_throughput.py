"""Ingest throughput through StreamEvents, IngestEvents and REST events:batch via Envoy, each as
a ratio to the raw producer ceiling measured in the same run, plus the ingest process's memory.

Starts its own ingest process (and an Envoy routing to it) on the local stack's Kafka, with a
topic prefix of its own. Clients send pre-serialized requests (identity serializers), so the
figures measure the server rather than the load generator; the generator still shares the two
cores with the server and the broker. Each path's note says how many cores the ingest
processes used while it ran (their CPU time from /proc over the wall time), so a ratio on a
shared machine can be read per core.
"""

from __future__ import annotations

import http.client
import json
import os
import statistics
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from concurrent import futures
from pathlib import Path

import grpc
from eventpipe.common.v1 import event_pb2
from eventpipe.core.config import CommonSettings
from eventpipe.ingest.v1 import ingest_pb2
from eventpipe.stack.components import SERVICE_NAMES, Envoy, GrpcService
from eventpipe.stack.probes import free_port
from google.protobuf import json_format

from bench.harness import BenchContext, Measurement
from bench.scenarios.kafka_producer_ceiling import (
    bench_settings,
    ceiling,
    ceiling_cores,
    demo_events,
    event_count,
)

NAME = "ingest_throughput"
BATCH = 1000
CLIENT_THREADS = 4
TENANT = "bench"
SERVICE_PREFIX = "/eventpipe.ingest.v1.IngestService/"


def _identity(data: bytes) -> bytes:
    return data


class MemoryWatch:
    """Samples a process's VmRSS; VmHWM is its peak resident set."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.samples: list[int] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _status(self, field: str) -> int:
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
        return 0

    def _sample(self) -> None:
        while not self._stop.wait(0.2):
            self.samples.append(self._status("VmRSS"))

    def rss(self) -> int:
        return self._status("VmRSS")

    def peak(self) -> int:
        return self._status("VmHWM")

    def __enter__(self) -> MemoryWatch:
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        self._thread.join()


def ingest_cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of ``pid`` and its live descendants (worker processes)."""
    seconds, pending = 0.0, [pid]
    while pending:
        current = pending.pop()
        try:
            stat = Path(f"/proc/{current}/stat").read_text()
            children = Path(f"/proc/{current}/task/{current}/children").read_text().split()
        except OSError:
            continue
        utime, stime = stat[stat.rindex(")") + 2 :].split()[11:13]
        seconds += (int(utime) + int(stime)) / os.sysconf("SC_CLK_TCK")
        pending += [int(child) for child in children]
    return seconds


def _with_cores(pid: int, count: int, measure: Callable[[], float]) -> tuple[float, float]:
    """Runs one path's measurement; returns its events/s and the cores ingest used."""
    cpu_before = ingest_cpu_seconds(pid)
    rate = measure()
    return rate, (ingest_cpu_seconds(pid) - cpu_before) * rate / count


def _batches(events: list[event_pb2.Event]) -> Iterator[list[event_pb2.Event]]:
    for offset in range(0, len(events), BATCH):
        yield events[offset : offset + BATCH]


def _check(accepted: int, expected: int, what: str) -> None:
    if accepted != expected:
        raise RuntimeError(f"{what}: {accepted} of {expected} events accepted")


def measure_stream(channel: grpc.Channel, payloads: list[bytes], count: int) -> float:
    call = channel.stream_stream(
        SERVICE_PREFIX + "StreamEvents",
        request_serializer=_identity,
        response_deserializer=ingest_pb2.StreamEventsResponse.FromString,
    )
    started = time.perf_counter()
    accepted = sum(r.summary.accepted_count for r in call(iter(payloads), timeout=600))
    elapsed = time.perf_counter() - started
    _check(accepted, count, "StreamEvents")
    return count / elapsed


def _parallel(payloads: list[bytes], send: Callable[[bytes], int]) -> tuple[int, float]:
    started = time.perf_counter()
    with futures.ThreadPoolExecutor(CLIENT_THREADS) as pool:
        accepted = sum(pool.map(send, payloads))
    return accepted, time.perf_counter() - started


def measure_unary(channel: grpc.Channel, payloads: list[bytes], count: int) -> float:
    call = channel.unary_unary(
        SERVICE_PREFIX + "IngestEvents",
        request_serializer=_identity,
        response_deserializer=ingest_pb2.IngestEventsResponse.FromString,
    )
    accepted, elapsed = _parallel(payloads, lambda p: call(p, timeout=120).summary.accepted_count)
    _check(accepted, count, "IngestEvents")
    return count / elapsed


def measure_rest(port: int, bodies: list[bytes], count: int) -> float:
    local = threading.local()

    def send(body: bytes) -> int:
        if not hasattr(local, "conn"):
            local.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
        local.conn.request(
            "POST",
            f"/v1/tenants/{TENANT}/events:batch",
            body=body,
            headers={"content-type": "application/json"},
        )
        reply = local.conn.getresponse()
        data = reply.read()
        if reply.status != 200:
            raise RuntimeError(f"REST events:batch: HTTP {reply.status} {data[:200]!r}")
        return int(json.loads(data)["summary"]["accepted_count"])

    accepted, elapsed = _parallel(bodies, send)
    _check(accepted, count, "REST events:batch")
    return count / elapsed


def _start(settings: CommonSettings, run_dir: Path) -> tuple[GrpcService, Envoy]:
    port = free_port()
    service = GrpcService(
        "ingest",
        run_dir,
        port,
        {
            "EVENTPIPE_KAFKA_BOOTSTRAP_SERVERS": settings.kafka_bootstrap_servers,
            "EVENTPIPE_TOPIC_PREFIX": settings.topic_prefix,
            "EVENTPIPE_INGEST_HOST": "127.0.0.1",
            "EVENTPIPE_INGEST_PORT": str(port),
            "EVENTPIPE_INGEST_METRICS_PORT": str(free_port()),
            "EVENTPIPE_LOG_LEVEL": "WARNING",
        },
    )
    service.start()
    upstreams = {name: free_port() for name in SERVICE_NAMES} | {"ingest": port}
    envoy = Envoy(run_dir, free_port(), free_port(), upstreams, name="bench-envoy")
    try:
        envoy.start()
    except Exception:
        service.stop()
        raise
    return service, envoy


def run(ctx: BenchContext) -> list[Measurement]:
    raw = ceiling(ctx)
    count = event_count(ctx)
    settings = bench_settings(ctx)
    events = demo_events(count)
    chunks = list(_batches(events))
    stream_payloads = [
        ingest_pb2.StreamEventsRequest(
            batch_id=str(n), tenant_id=TENANT, events=c
        ).SerializeToString()
        for n, c in enumerate(chunks)
    ]
    unary_payloads = [
        ingest_pb2.IngestEventsRequest(tenant_id=TENANT, events=c).SerializeToString()
        for c in chunks
    ]
    rest_bodies = [
        json.dumps(
            {"events": [json_format.MessageToDict(e, preserving_proto_field_name=True) for e in c]}
        ).encode()
        for c in chunks
    ]
    del events, chunks

    with tempfile.TemporaryDirectory(prefix="bench-ingest-") as tmp:
        service, envoy = _start(settings, Path(tmp))
        try:
            assert service.pid is not None
            pid = service.pid
            with (
                MemoryWatch(service.pid) as memory,
                grpc.insecure_channel(
                    service.address, options=[("grpc.max_send_message_length", 16 << 20)]
                ) as channel,
            ):
                measure_stream(channel, stream_payloads[:5], 5 * BATCH)  # warm-up
                after_warmup = memory.rss()
                paths: dict[str, Callable[[], float]] = {
                    "stream": lambda: measure_stream(channel, stream_payloads, count),
                    "unary": lambda: measure_unary(channel, unary_payloads, count),
                    "rest": lambda: measure_rest(envoy.port, rest_bodies, count),
                }
                rates: dict[str, list[float]] = {name: [] for name in paths}
                cores: dict[str, list[float]] = {name: [] for name in paths}
                rss_after_round = []
                for _ in range(ctx.rounds):
                    for name, measure in paths.items():
                        rate, cores_used = _with_cores(pid, count, measure)
                        rates[name].append(rate)
                        cores[name].append(cores_used)
                    rss_after_round.append(memory.rss())
                peak = memory.peak()
        finally:
            envoy.stop()
            service.stop()

    baseline = "raw producer"
    mib = 1024 * 1024
    total = 3 * count * ctx.rounds

    def used(name: str) -> str:
        return f"ingest used {statistics.median(cores[name]):.2f} cores (median of the rounds)"

    return [
        Measurement(
            "StreamEvents",
            statistics.median(rates["stream"]),
            "events/s",
            baseline,
            raw,
            note=f"StreamEvents: {used('stream')}; the raw producer used "
            f"{ceiling_cores(ctx):.2f} cores",
        ),
        Measurement(
            f"IngestEvents ({CLIENT_THREADS} clients)",
            statistics.median(rates["unary"]),
            "events/s",
            baseline,
            raw,
            note=f"IngestEvents: {used('unary')}",
        ),
        Measurement(
            f"REST events:batch via Envoy ({CLIENT_THREADS} clients)",
            statistics.median(rates["rest"]),
            "events/s",
            baseline,
            raw,
            note=f"REST: {used('rest')} (Envoy's own CPU not counted)",
        ),
        Measurement(
            "ingest peak RSS (VmHWM)",
            peak / mib,
            "MiB",
            higher_is_better=False,
            note=f"{total:,} events in {ctx.rounds} rounds of {count:,} per path; RSS after "
            f"warm-up {after_warmup / mib:.0f} MiB, after each round "
            + ", ".join(f"{r / mib:.0f}" for r in rss_after_round)
            + " MiB (flat means bounded)",
        ),
        Measurement(
            "ingest RSS growth, first to last round",
            (rss_after_round[-1] - rss_after_round[0]) / mib,
            "MiB",
            higher_is_better=False,
        ),
    ]

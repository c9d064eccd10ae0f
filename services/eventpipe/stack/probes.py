"""Readiness probes: each answers "is this component serving?" with one cheap real call."""

from __future__ import annotations

import socket
import urllib.error
import urllib.request

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc


def tcp_open(host: str, port: int, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def free_port(host: str = "127.0.0.1") -> int:
    """A port nothing listens on right now (the kernel picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def kafka_ready(bootstrap_servers: str, timeout: float = 3.0, min_brokers: int = 1) -> bool:
    """True once the (first) broker answers a metadata request naming ``min_brokers`` brokers."""
    from confluent_kafka.admin import AdminClient

    host, _, port = bootstrap_servers.split(",")[0].rpartition(":")
    if not tcp_open(host, int(port)):
        return False
    admin = AdminClient({"bootstrap.servers": bootstrap_servers, "log_level": 0})
    return len(admin.list_topics(timeout=timeout).brokers) >= min_brokers


def bigtable_emulator_ready(host: str, port: int, timeout: float = 3.0) -> bool:
    """True once the emulator answers a table-admin call (ListTables)."""
    from google.cloud.bigtable_admin_v2 import BigtableTableAdminClient
    from google.cloud.bigtable_admin_v2.services.bigtable_table_admin.transports import (
        BigtableTableAdminGrpcTransport,
    )

    if not tcp_open(host, port):
        return False
    with grpc.insecure_channel(f"{host}:{port}") as channel:
        client = BigtableTableAdminClient(
            transport=BigtableTableAdminGrpcTransport(channel=channel)
        )
        list(client.list_tables(parent="projects/probe/instances/probe", timeout=timeout))
    return True


def http_ok(url: str, timeout: float = 2.0) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return int(response.status) == 200
    except (urllib.error.URLError, OSError):
        return False


def grpc_health(address: str, service: str = "", timeout: float = 2.0) -> str:
    """The health status name (SERVING, NOT_SERVING, ...) or the gRPC error code's name."""
    with grpc.insecure_channel(address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        try:
            response = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=timeout)
        except grpc.RpcError as exc:
            code = exc.code() if hasattr(exc, "code") else None
            return code.name if code is not None else "UNAVAILABLE"
    return str(health_pb2.HealthCheckResponse.ServingStatus.Name(response.status))

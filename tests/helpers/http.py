"""Plain HTTP for tests: requests whose error statuses come back as replies, and metrics."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Reply:
    """An HTTP answer, whatever its status."""

    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)

    @property
    def text(self) -> str:
        return self.body.decode()

    @property
    def content_type(self) -> str:
        # HTTP header names are case-insensitive; urllib keeps the server's spelling.
        lowered = {name.lower(): value for name, value in self.headers.items()}
        return lowered.get("content-type", "")


def http(
    url: str,
    *,
    method: str = "GET",
    body: bytes | None = None,
    headers: dict[str, str] | None = None,
    timeout: float = 30,
) -> Reply:
    """Sends one request; a 4xx or 5xx answer is returned like any other, never raised."""
    request = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return Reply(response.status, dict(response.headers.items()), response.read())
    except urllib.error.HTTPError as error:
        return Reply(error.code, dict(error.headers.items()), error.read())


def json_body(body: Any) -> tuple[bytes | None, dict[str, str]]:
    """``body`` as JSON bytes with its content-type header (bytes pass through as they are)."""
    if body is None:
        return None, {}
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    return data, {"content-type": "application/json"}


def metrics_text(metrics_port: int) -> str:
    """The Prometheus text a service exports on its metrics port."""
    reply = http(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5)
    assert reply.status == 200, reply.text
    return reply.text


def metric_values(metrics_port: int) -> dict[str, float]:
    """The service's metrics as {"name{labels}": value}."""
    values: dict[str, float] = {}
    for line in metrics_text(metrics_port).splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            values[name] = float(value)
    return values

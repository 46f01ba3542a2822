"""A gRPC client for a Pixels sink server's ``PollEvents``, with retries and TLS.

One :class:`PixelsClient` owns one channel and reuses it for every poll. A poll
that fails with a transient status (``UNAVAILABLE``, ``DEADLINE_EXCEEDED``,
``RESOURCE_EXHAUSTED``) is retried with exponential backoff and full jitter;
when the attempts run out it raises :class:`PixelsUnavailableError`. Any other
status raises :class:`PixelsClientError` at once with the server's message.

Reads are destructive on the server: a response lost after the server sent it
(say, to a deadline that expired in flight) cannot be polled again. Keep the
deadline well above the time a full response takes to arrive. A response larger
than ``max_receive_mb`` is such a loss too, so it is never retried (a retry would
quietly return what came after it): it raises :class:`PixelsResponseTooLargeError`.

Channels do not pickle: create the client where it is used (a DoFn's ``setup``).
"""

from __future__ import annotations

import logging
import random
import threading
from typing import Callable, Sequence, TypeVar

import grpc

from beam_pixels.protocol import POLL_EVENTS_METHOD, sink_pb2, sink_pb2_grpc

_LOG = logging.getLogger(__name__)

RETRYABLE_CODES = frozenset(
    {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.RESOURCE_EXHAUSTED}
)
"""Status codes a poll is retried on: the server is down, slow or shedding load."""

DEFAULT_RETRY_ATTEMPTS = 6

# How gRPC words a RESOURCE_EXHAUSTED raised by this client's own receive limit.
_TOO_LARGE = "Received message larger than max"

_T = TypeVar("_T")


class PixelsClientError(RuntimeError):
    """A poll failed. ``code`` is the gRPC status code when the server gave one."""

    def __init__(self, message: str, code: grpc.StatusCode | None = None):
        super().__init__(message)
        self.code = code


class PixelsUnavailableError(PixelsClientError):
    """The server stayed unreachable (or overloaded) through every retry."""


class PixelsStoppedError(PixelsClientError):
    """Retrying was abandoned because the client's ``stop`` event was set."""


class PixelsResponseTooLargeError(PixelsClientError):
    """A response exceeded ``max_receive_mb``; the server had already handed its records out."""


class PixelsClient:
    """Polls one Pixels sink server over a single reused gRPC channel.

    ``retry_attempts`` is how many times a failed poll is retried after the first
    try (``None``: retry forever, for a long-running source). The wait before
    retry ``n`` (from 0) is uniform in ``[0, min(max_backoff_s, initial_backoff_s * 2**n)]``.
    TLS is used when ``tls`` is true or any certificate is given: ``tls_root_cert``
    (PEM) verifies the server (system roots when None), ``tls_client_cert`` and
    ``tls_client_key`` (PEM) authenticate the client to a server that asks.
    Setting the ``stop`` event ends a retry wait at once with :class:`PixelsStoppedError`.
    """

    def __init__(
        self,
        host: str,
        port: int,
        *,
        deadline_s: float = 10.0,
        max_receive_mb: int = 256,
        retry_attempts: int | None = DEFAULT_RETRY_ATTEMPTS,
        initial_backoff_s: float = 0.2,
        max_backoff_s: float = 10.0,
        tls: bool = False,
        tls_root_cert: bytes | None = None,
        tls_client_cert: bytes | None = None,
        tls_client_key: bytes | None = None,
        stop: threading.Event | None = None,
    ):
        if deadline_s <= 0:
            raise ValueError(f"deadline_s must be positive, got {deadline_s}")
        if max_receive_mb < 1:
            raise ValueError(f"max_receive_mb must be at least 1, got {max_receive_mb}")
        if retry_attempts is not None and retry_attempts < 0:
            raise ValueError(f"retry_attempts must be >= 0 or None (retry forever), got {retry_attempts}")
        if not 0 < initial_backoff_s <= max_backoff_s:
            raise ValueError(
                f"need 0 < initial_backoff_s <= max_backoff_s, got {initial_backoff_s} and {max_backoff_s}"
            )
        if (tls_client_cert is None) != (tls_client_key is None):
            raise ValueError("tls_client_cert and tls_client_key go together: give both or neither")

        self.host = host
        self.port = port
        self.deadline_s = deadline_s
        self.retry_attempts = retry_attempts
        self.initial_backoff_s = initial_backoff_s
        self.max_backoff_s = max_backoff_s
        self.max_receive_mb = max_receive_mb
        self.tls = tls or any(c is not None for c in (tls_root_cert, tls_client_cert))
        self._random = random.Random()
        self._closed = False
        self._stop = stop or threading.Event()

        options = [
            ("grpc.max_receive_message_length", max_receive_mb * 1024 * 1024),
            # Reconnect about as eagerly as we retry, so a restarted server is found quickly.
            ("grpc.initial_reconnect_backoff_ms", int(initial_backoff_s * 1000)),
            ("grpc.min_reconnect_backoff_ms", int(initial_backoff_s * 1000)),
            ("grpc.max_reconnect_backoff_ms", int(max_backoff_s * 1000)),
        ]
        if self.tls:
            credentials = grpc.ssl_channel_credentials(
                root_certificates=tls_root_cert, private_key=tls_client_key, certificate_chain=tls_client_cert
            )
            self._channel = grpc.secure_channel(self.target, credentials, options=options)
        else:
            self._channel = grpc.insecure_channel(self.target, options=options)
        self._poll = sink_pb2_grpc.PixelsPollingServiceStub(self._channel).PollEvents
        self._poll_raw = self._channel.unary_unary(
            POLL_EVENTS_METHOD,
            request_serializer=sink_pb2.PollRequest.SerializeToString,
            response_deserializer=None,
        )

    @property
    def target(self) -> str:
        """``host:port`` as gRPC addresses it (IPv6 hosts in brackets)."""
        host = f"[{self.host}]" if ":" in self.host and not self.host.startswith("[") else self.host
        return f"{host}:{self.port}"

    def poll(self, schema_name: str, table_name: str, buckets: Sequence[int]) -> sink_pb2.PollResponse:
        """Drain what the server holds for ``buckets`` now (an empty response means nothing now)."""
        return self._call(self._poll, _request(schema_name, table_name, buckets))

    def poll_raw(self, schema_name: str, table_name: str, buckets: Sequence[int]) -> bytes:
        """As :meth:`poll`, but the serialized ``PollResponse``, unparsed."""
        return self._call(self._poll_raw, _request(schema_name, table_name, buckets))

    def close(self) -> None:
        """Close the channel; later polls raise :class:`PixelsClientError`."""
        self._closed = True
        self._channel.close()

    def __enter__(self) -> "PixelsClient":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"PixelsClient({self.target}, tls={self.tls})"

    def _call(self, method: Callable[..., _T], request: sink_pb2.PollRequest) -> _T:
        retry = 0
        while True:
            if self._closed:
                raise PixelsClientError(f"the PixelsClient for {self.target} is closed; create a new one")
            try:
                return method(request, timeout=self.deadline_s)
            except grpc.RpcError as e:
                code, details = e.code(), e.details()
                if code is grpc.StatusCode.RESOURCE_EXHAUSTED and _TOO_LARGE in (details or ""):
                    raise PixelsResponseTooLargeError(
                        f"a PollEvents response from {self.target} exceeded max_receive_mb={self.max_receive_mb} "
                        f"({details}); the server has already handed those records out and cannot resend them. "
                        f"Raise max_receive_mb (pixels.server.max.message.mb) or poll fewer buckets per poll group",
                        code,
                    ) from e
                if code not in RETRYABLE_CODES:
                    raise PixelsClientError(
                        f"PollEvents on {self.target} failed with {code.name}: {details}", code
                    ) from e
                if self.retry_attempts is not None and retry >= self.retry_attempts:
                    raise PixelsUnavailableError(
                        f"Pixels server {self.target} still failing with {code.name} ({details}) after "
                        f"{retry + 1} attempt(s); check that it is running and reachable at this address",
                        code,
                    ) from e
                wait = self._random.uniform(0, min(self.max_backoff_s, self.initial_backoff_s * 2 ** min(retry, 32)))
                retry += 1
                limit = "unlimited" if self.retry_attempts is None else self.retry_attempts
                _LOG.warning(
                    "PollEvents on %s failed with %s (%s); retry %d of %s in %.2fs",
                    self.target, code.name, details, retry, limit, wait,
                )
                if self._stop.wait(wait):
                    raise PixelsStoppedError(
                        f"stopped while waiting to retry PollEvents on {self.target} ({code.name})", code
                    ) from e


def _request(schema_name: str, table_name: str, buckets: Sequence[int]) -> sink_pb2.PollRequest:
    if not buckets:
        raise ValueError(
            "buckets is empty: a Pixels server returns nothing for an empty bucket list; "
            "pass the buckets to poll, e.g. range(128) for all of a default table"
        )
    return sink_pb2.PollRequest(schema_name=schema_name, table_name=table_name, buckets=buckets)

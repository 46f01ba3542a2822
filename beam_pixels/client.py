"""A gRPC client for a Pixels sink server's ``PollEvents``, with retries and TLS.

One :class:`PixelsClient` owns one channel and reuses it for every poll. A poll
that fails with a transient status (:data:`RETRYABLE_CODES`) is retried with
exponential backoff and full jitter; when the attempts run out it raises
:class:`PixelsUnavailableError`. Any other status raises :class:`PixelsClientError`
at once with the server's message.

A caller that must not block for long (a streaming source that still has to move
its watermark while the server is down) passes ``give_up_at``: the poll then
raises :class:`PixelsRetryDeadlineError` once its next try would come after that
time, and the next poll continues its retries where they stopped. The failures
since the server last answered are kept in an :class:`Outage`, which clients of
one server can share so that retry numbers and back-off go on across them.

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
import time
from typing import Callable, Sequence, TypeVar

import grpc

from beam_pixels.protocol import POLL_EVENTS_METHOD, sink_pb2, sink_pb2_grpc

_LOG = logging.getLogger(__name__)

RETRYABLE_CODES = frozenset(
    {
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        grpc.StatusCode.CANCELLED,
    }
)
"""Status codes a poll is retried on: the server is down, slow or shedding load, or cancelled
the call (as a gRPC server does with calls that reach it while it shuts down; this client
never cancels its own)."""

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


class PixelsRetryDeadlineError(PixelsUnavailableError):
    """The poll was not answered before ``give_up_at``; nothing was handed out. Polling again
    continues its retries."""


class PixelsStoppedError(PixelsClientError):
    """Retrying was abandoned because the client's ``stop`` event was set."""


class PixelsResponseTooLargeError(PixelsClientError):
    """A response exceeded ``max_receive_mb``; the server had already handed its records out."""


class Outage:
    """The failed tries of one server since it last answered: how many, since when, the last
    status and when the next try is due. Thread-safe; shared by the clients given the same one."""

    def __init__(self):
        self._lock = threading.Lock()
        self._failures = 0
        self._since = 0.0
        self._retry_at = 0.0
        self.code: grpc.StatusCode | None = None
        """The status of the last failed try (None: the server answered the last one)."""

    def retry_at(self) -> float:
        """``time.monotonic()`` before which the next try is not due (0: no outage)."""
        with self._lock:
            return self._retry_at

    def failed(self, code: grpc.StatusCode, backoff: Callable[[int], float]) -> tuple[int, float, float]:
        """Record a failed try; returns (failures so far, seconds since the first, wait before
        the next try), the wait being ``backoff(failures before this one)``."""
        now = time.monotonic()
        with self._lock:
            if self._failures == 0:
                self._since = now
            wait = backoff(self._failures)
            self._failures += 1
            self._retry_at = now + wait
            self.code = code
            return self._failures, now - self._since, wait

    def answered(self) -> tuple[int, float]:
        """Record an answer; returns (failures, seconds) of the outage it ends, (0, 0.0) if none."""
        with self._lock:
            ended = (self._failures, time.monotonic() - self._since if self._failures else 0.0)
            self._failures, self._since, self._retry_at, self.code = 0, 0.0, 0.0, None
            return ended


class PixelsClient:
    """Polls one Pixels sink server over a single reused gRPC channel.

    ``retry_attempts`` is how many times a failed poll is retried after the first
    try (``None``: retry forever, for a long-running source). The wait before the
    try after the ``n``-th failure (from 0) since the server last answered is uniform
    in ``[0, min(max_backoff_s, initial_backoff_s * 2**n)]``.
    TLS is used when ``tls`` is true or any certificate is given: ``tls_root_cert``
    (PEM) verifies the server (system roots when None), ``tls_client_cert`` and
    ``tls_client_key`` (PEM) authenticate the client to a server that asks.
    Setting the ``stop`` event ends a retry wait at once with :class:`PixelsStoppedError`.
    ``outage`` (default: one of this client's own) records the failures since the server
    last answered; every failed try is logged once with its number in that outage and how
    long the server has been unreachable, and counted in :attr:`failed_polls`.
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
        outage: Outage | None = None,
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
        self._outage = outage or Outage()
        self.failed_polls = 0
        """Tries of this client that failed with a retryable status, ever."""

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

    def poll(
        self, schema_name: str, table_name: str, buckets: Sequence[int], *, give_up_at: float | None = None
    ) -> sink_pb2.PollResponse:
        """Drain what the server holds for ``buckets`` now (an empty response means nothing now).

        ``give_up_at`` (a ``time.monotonic()`` value; None: no limit) ends the retries with
        :class:`PixelsRetryDeadlineError` once the next try would come after it."""
        return self._call(self._poll, _request(schema_name, table_name, buckets), give_up_at)

    def poll_raw(
        self, schema_name: str, table_name: str, buckets: Sequence[int], *, give_up_at: float | None = None
    ) -> bytes:
        """As :meth:`poll`, but the serialized ``PollResponse``, unparsed."""
        return self._call(self._poll_raw, _request(schema_name, table_name, buckets), give_up_at)

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

    def _call(self, method: Callable[..., _T], request: sink_pb2.PollRequest, give_up_at: float | None) -> _T:
        retry = 0  # retries of this call, for retry_attempts
        while True:
            self._wait_for_retry(give_up_at)
            if self._closed:
                raise PixelsClientError(f"the PixelsClient for {self.target} is closed; create a new one")
            try:
                response = method(request, timeout=self.deadline_s)
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
                self.failed_polls += 1
                failures, unreachable_s, wait = self._outage.failed(code, self._backoff)
                if self.retry_attempts is not None and retry >= self.retry_attempts:
                    raise PixelsUnavailableError(
                        f"Pixels server {self.target} still failing with {code.name} ({details}) after "
                        f"{retry + 1} attempt(s); check that it is running and reachable at this address",
                        code,
                    ) from e
                retry += 1
                number = failures if self.retry_attempts is None else retry
                limit = "unlimited" if self.retry_attempts is None else self.retry_attempts
                _LOG.warning(
                    "PollEvents on %s failed with %s (%s); retry %d of %s in %.2fs; unreachable for %.1fs",
                    self.target, code.name, details, number, limit, wait, unreachable_s,
                )
            else:
                failures, unreachable_s = self._outage.answered()
                if failures:
                    _LOG.info(
                        "PollEvents on %s answered again after %d failed attempt(s) over %.1fs",
                        self.target, failures, unreachable_s,
                    )
                return response

    def _wait_for_retry(self, give_up_at: float | None) -> None:
        """Sleep until the outage's next try is due; at ``give_up_at`` raise instead."""
        retry_at = self._outage.retry_at()
        now = time.monotonic()
        if retry_at <= now:
            return
        code = self._outage.code or grpc.StatusCode.UNAVAILABLE
        if self._stop.wait(retry_at - now if give_up_at is None else max(0.0, min(retry_at, give_up_at) - now)):
            raise PixelsStoppedError(f"stopped while waiting to retry PollEvents on {self.target} ({code.name})", code)
        if give_up_at is not None and retry_at > give_up_at:
            raise PixelsRetryDeadlineError(
                f"PollEvents on {self.target} not answered ({code.name}): its next retry is due after the caller's "
                f"deadline", code
            )

    def _backoff(self, retry: int) -> float:
        """The wait before retry ``retry`` (from 0): uniform in [0, min(max, initial * 2**retry)]."""
        return self._random.uniform(0, min(self.max_backoff_s, self.initial_backoff_s * 2 ** min(retry, 32)))

def _request(schema_name: str, table_name: str, buckets: Sequence[int]) -> sink_pb2.PollRequest:
    if not buckets:
        raise ValueError(
            "buckets is empty: a Pixels server returns nothing for an empty bucket list; "
            "pass the buckets to poll, e.g. range(128) for all of a default table"
        )
    return sink_pb2.PollRequest(schema_name=schema_name, table_name=table_name, buckets=buckets)

"""PixelsClient against the mock server: what arrives, retries through outages, TLS."""

import logging
import re
import threading
import time

import grpc
import pytest
from app_helpers import free_port
from tls_helpers import TestPki

from beam_pixels.buckets import bucket_of
from beam_pixels.changes import Op
from beam_pixels.client import (
    PixelsClient,
    PixelsClientError,
    PixelsResponseTooLargeError,
    PixelsRetryDeadlineError,
    PixelsUnavailableError,
)
from beam_pixels.codec import RowCodec
from beam_pixels.protocol import sink_pb2
from beam_pixels.schema import SourceSchema
from beam_pixels.testing.mock_data import comparable, final_state, generate_cdc, generate_rows
from beam_pixels.testing.mock_server import MockPixelsServer

SCHEMA = SourceSchema.parse(
    "id:INT, data:STRING, price:DECIMAL(10,2), f:DOUBLE, day:DATE, ts:TIMESTAMPTZ, raw:VARBINARY", ["id"]
)
ALL_BUCKETS = list(range(128))
FAST_RETRY = dict(deadline_s=2.0, initial_backoff_s=0.02, max_backoff_s=0.1)


def _bucket(i: int) -> int:
    return bucket_of(i.to_bytes(4, "big", signed=True))


def _rows(ids) -> list[tuple]:
    """Generated rows with the given ``id`` values."""
    return [(i, *row[1:]) for i, row in zip(ids, generate_rows(SCHEMA, len(ids), seed=0))]


def _ids(response: sink_pb2.PollResponse) -> list[int]:
    return [after[0] for _, _, after in _decoded(response)]


def _decoded(response: sink_pb2.PollResponse) -> list[tuple]:
    """``(op, before, after)`` per record, images decoded to Python values."""
    codec = RowCodec(SCHEMA)

    def image(record, name):
        return comparable(tuple(codec.decode_row(getattr(record, name).values))) if record.HasField(name) else None

    return [(Op(r.op), image(r, "before"), image(r, "after")) for r in response.records]


@pytest.fixture
def server():
    with MockPixelsServer(SCHEMA, batch_size=3) as s:
        yield s


@pytest.fixture
def client(server):
    with PixelsClient(server.host, server.port, **FAST_RETRY) as c:
        yield c


def test_poll_delivers_exactly_the_queued_records(server, client):
    events = generate_cdc(SCHEMA, n_keys=30, n_events=200, seed=1)
    server.batch_size = 200
    server.load_cdc(events)
    delivered = _decoded(client.poll("public", "orders", ALL_BUCKETS))
    assert len(delivered) == 200 and server.pending() == 0
    handed = [(h.op, comparable(h.before) if h.before else None, comparable(h.after) if h.after else None)
              for h in server.handed_out()]
    assert delivered == handed
    assert sorted(map(repr, delivered)) == sorted(
        repr((op, comparable(b) if b else None, comparable(a) if a else None)) for op, b, a in events
    )
    assert final_state(SCHEMA, delivered) == {k: comparable(v) for k, v in final_state(SCHEMA, events).items()}


def test_records_carry_source_and_op(server, client):
    server.load_rows(generate_rows(SCHEMA, 1, seed=0))
    (record,) = client.poll("public", "orders", ALL_BUCKETS).records
    assert record.op == sink_pb2.INSERT
    assert (record.source.schema, record.source.table) == ("public", "orders")


def test_polls_are_destructive(server, client):
    server.load_rows(generate_rows(SCHEMA, 5, seed=0))
    assert len(client.poll("public", "orders", ALL_BUCKETS).records) == 5
    assert len(client.poll("public", "orders", ALL_BUCKETS).records) == 0


def test_at_most_batch_size_per_bucket_per_poll(server, client):
    ids = {b: [i for i in range(5000) if _bucket(i) == b][:5] for b in (_bucket(0), _bucket(1))}
    a, b = ids.values()
    server.load_rows(_rows(a + b))
    first = _ids(client.poll("public", "orders", list(ids)))
    second = _ids(client.poll("public", "orders", list(ids)))
    assert first == a[:3] + b[:3]  # batch_size=3 per bucket, buckets in request order
    assert second == a[3:] + b[3:]


def test_buckets_are_drained_in_request_order(server, client):
    a, b = 0, next(i for i in range(1, 100) if _bucket(i) != _bucket(0))
    server.load_rows(_rows([a, b]))
    assert _ids(client.poll("public", "orders", [_bucket(b), _bucket(a)])) == [b, a]


def test_only_requested_buckets_are_drained(server, client):
    server.load_rows(_rows(range(40)))
    assert _ids(client.poll("public", "orders", [_bucket(7)])) == [7]
    assert server.pending() == 39


def test_empty_bucket_list_is_refused_before_any_rpc(server, client):
    server.load_rows(generate_rows(SCHEMA, 3, seed=0))
    with pytest.raises(ValueError, match="buckets is empty"):
        client.poll("public", "orders", [])
    with pytest.raises(ValueError, match="buckets is empty"):
        client.poll_raw("public", "orders", [])
    assert server.handed_out() == [] and server.pending() == 3


def test_poll_raw_returns_the_serialized_response(server, client):
    server.load_rows(_rows(range(4)))
    raw = client.poll_raw("public", "orders", ALL_BUCKETS)
    assert isinstance(raw, bytes)
    assert sorted(_ids(sink_pb2.PollResponse.FromString(raw))) == [0, 1, 2, 3]
    assert client.poll_raw("public", "orders", ALL_BUCKETS) == b""


def test_client_recovers_when_a_server_comes_back_on_the_same_port(server, caplog):
    port = server.port
    server.stop()
    result: list = []
    with PixelsClient("127.0.0.1", port, retry_attempts=None, **FAST_RETRY) as client:
        poller = threading.Thread(target=lambda: result.append(client.poll("public", "orders", ALL_BUCKETS)))
        with caplog.at_level(logging.WARNING, logger="beam_pixels.client"):
            poller.start()
            _wait_for(lambda: len(caplog.records) >= 2)  # the client is retrying
            with MockPixelsServer(SCHEMA, port=port) as replacement:
                replacement.load_rows(_rows(range(10)))
                poller.join(10)
    assert not poller.is_alive()
    assert sorted(_ids(result[0])) == list(range(10))
    warning = caplog.records[0].getMessage()
    assert f"127.0.0.1:{port}" in warning and "UNAVAILABLE" in warning and "retry 1 of unlimited in" in warning


def test_retries_run_out_into_pixels_unavailable_error(caplog):
    port = free_port()
    with PixelsClient("127.0.0.1", port, retry_attempts=2, **FAST_RETRY) as client:
        with caplog.at_level(logging.WARNING, logger="beam_pixels.client"):
            with pytest.raises(PixelsUnavailableError, match=f"127.0.0.1:{port} still failing with UNAVAILABLE") as e:
                client.poll("public", "orders", ALL_BUCKETS)
    assert isinstance(e.value, PixelsClientError) and e.value.code is grpc.StatusCode.UNAVAILABLE
    assert "after 3 attempt(s)" in str(e.value)
    assert [re.search(r"retry \d+ of \d+", r.getMessage()).group() for r in caplog.records] == [
        "retry 1 of 2",
        "retry 2 of 2",
    ]


def test_a_poll_gives_up_at_its_deadline_and_the_next_one_goes_on_with_the_retries(server, caplog):
    port = server.port
    server.stop()
    retries = dict(deadline_s=2.0, initial_backoff_s=0.2, max_backoff_s=0.4)
    with PixelsClient("127.0.0.1", port, retry_attempts=None, **retries) as client:
        with caplog.at_level(logging.INFO, logger="beam_pixels.client"):
            for _ in range(3):
                started = time.monotonic()
                with pytest.raises(PixelsRetryDeadlineError, match=f"127.0.0.1:{port} not answered \\(UNAVAILABLE\\)"):
                    client.poll("public", "orders", ALL_BUCKETS, give_up_at=started + 0.3)
                assert 0.25 < time.monotonic() - started < 1.0  # neither at once nor after the back-off
            server.start()
            client.poll("public", "orders", ALL_BUCKETS)  # retried until answered
    messages = [r.getMessage() for r in caplog.records]
    numbers = [int(re.search(r"retry (\d+) of unlimited", m).group(1)) for m in messages[:-1]]
    assert numbers == list(range(1, len(numbers) + 1)) and len(numbers) >= 3  # counted across the polls
    assert client.failed_polls == len(numbers)
    assert re.search(r"unreachable for [0-9.]+s$", messages[-2])
    answered = rf"PollEvents on 127.0.0.1:{port} answered again after {len(numbers)} failed attempt\(s\) over .*s"
    assert re.fullmatch(answered, messages[-1])


@pytest.mark.parametrize(
    "code, message",
    [(grpc.StatusCode.RESOURCE_EXHAUSTED, "server busy"), (grpc.StatusCode.CANCELLED, "server shutting down")],
)
def test_a_busy_or_cancelling_server_is_retried(server, client, caplog, code, message):
    server.load_rows(generate_rows(SCHEMA, 2, seed=0))
    server.fail_next(code, times=2, message=message)
    with caplog.at_level(logging.WARNING, logger="beam_pixels.client"):
        assert len(client.poll("public", "orders", ALL_BUCKETS).records) == 2
    assert len(caplog.records) == 2 and f"{code.name} ({message})" in caplog.text


def test_other_status_codes_raise_at_once_with_the_servers_message(server, client, caplog):
    server.fail_next(grpc.StatusCode.PERMISSION_DENIED, times=2, message="not allowed to read public.orders")
    with caplog.at_level(logging.WARNING, logger="beam_pixels.client"):
        with pytest.raises(PixelsClientError, match="PERMISSION_DENIED: not allowed to read public.orders") as e:
            client.poll("public", "orders", ALL_BUCKETS)
    assert not isinstance(e.value, PixelsUnavailableError)
    assert e.value.code is grpc.StatusCode.PERMISSION_DENIED
    assert caplog.records == []  # no retry


def test_oversized_response_is_not_retried_because_its_records_are_gone(server):
    server.load_rows((i, "x" * 20_000, None, None, None, None, None) for i in range(100))
    server.batch_size = 200
    with PixelsClient(server.host, server.port, max_receive_mb=1, **FAST_RETRY) as client:
        with pytest.raises(PixelsResponseTooLargeError, match="max_receive_mb=1"):
            client.poll("public", "orders", ALL_BUCKETS)
    assert server.pending() == 0 and len(server.handed_out()) == 100


def test_closed_client_refuses_to_poll(server):
    client = PixelsClient(server.host, server.port)
    with client:
        pass
    with pytest.raises(PixelsClientError, match="closed"):
        client.poll("public", "orders", ALL_BUCKETS)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(tls_client_cert=b"cert"), "tls_client_cert and tls_client_key go together"),
        (dict(retry_attempts=-1), "retry_attempts"),
        (dict(initial_backoff_s=5, max_backoff_s=1), "initial_backoff_s <= max_backoff_s"),
        (dict(deadline_s=0), "deadline_s"),
    ],
)
def test_bad_arguments_say_what_is_wrong(kwargs, message):
    with pytest.raises(ValueError, match=message):
        PixelsClient("127.0.0.1", 1, **kwargs)


def test_repr_shows_no_secrets():
    with PixelsClient("127.0.0.1", 1, tls_root_cert=b"ROOT", tls_client_cert=b"CERT", tls_client_key=b"KEY") as c:
        assert repr(c) == "PixelsClient(127.0.0.1:1, tls=True)"


# --- TLS ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def pki():
    return TestPki()


def test_tls_poll_with_a_private_ca(pki):
    with MockPixelsServer(SCHEMA, tls_cert=pki.pem(pki.server_cert), tls_key=pki.pem(pki.server_key)) as server:
        server.load_rows(generate_rows(SCHEMA, 3, seed=0))
        with PixelsClient(server.host, server.port, tls_root_cert=pki.pem(pki.ca_cert), **FAST_RETRY) as client:
            assert len(client.poll("public", "orders", ALL_BUCKETS).records) == 3
        with PixelsClient(server.host, server.port, retry_attempts=0, **FAST_RETRY) as plaintext:
            with pytest.raises(PixelsUnavailableError):
                plaintext.poll("public", "orders", ALL_BUCKETS)


def test_mutual_tls_needs_the_client_certificate(pki):
    with MockPixelsServer(
        SCHEMA,
        tls_cert=pki.pem(pki.server_cert),
        tls_key=pki.pem(pki.server_key),
        tls_client_ca=pki.pem(pki.ca_cert),
    ) as server:
        server.load_rows(generate_rows(SCHEMA, 2, seed=0))
        root = pki.pem(pki.ca_cert)
        with PixelsClient(server.host, server.port, tls_root_cert=root, retry_attempts=0, **FAST_RETRY) as anonymous:
            with pytest.raises(PixelsUnavailableError):
                anonymous.poll("public", "orders", ALL_BUCKETS)
        assert server.pending() == 2
        with PixelsClient(
            server.host,
            server.port,
            tls_root_cert=root,
            tls_client_cert=pki.pem(pki.client_cert),
            tls_client_key=pki.pem(pki.client_key),
            **FAST_RETRY,
        ) as client:
            assert len(client.poll("public", "orders", ALL_BUCKETS).records) == 2


# --- helpers --------------------------------------------------------------------------


def _wait_for(condition, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "timed out waiting"
        time.sleep(0.01)

"""``beam-pixels mock-server`` as a user starts it, polled by a real-protocol client."""

import signal
import subprocess
import sys
import time

from app_helpers import free_port

from beam_pixels.client import PixelsClient
from beam_pixels.codec import RowCodec
from beam_pixels.config import PixelsConfig


def test_the_mock_server_command_serves_the_configured_table(tmp_path):
    properties = tmp_path / "pixels-client.properties"
    properties.write_text(
        "schema.name=shop\ntable.name=orders\n"
        "source.schema=id:BIGINT, name:STRING, price:DECIMAL(10,2)\nsource.primary.key=id\n"
    )
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "beam_pixels", "mock-server", "--config", str(properties),
         "--port", str(port), "--rows", "300", "--cdc", "--seed", "5"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        config = PixelsConfig.load(str(properties))
        codec = RowCodec(config.source_schema)
        records = []
        with PixelsClient("127.0.0.1", port, retry_attempts=50, initial_backoff_s=0.1, max_backoff_s=0.5) as client:
            deadline = time.time() + 60
            while time.time() < deadline:
                response = client.poll("shop", "orders", list(range(128)))
                if not response.records and records:
                    break
                records.extend(response.records)
            assert client.poll("public", "orders", list(range(128))).records == []  # another table: nothing
        assert len(records) == 900  # --cdc: 3 change events per generated key by default
        ops = {r.op for r in records}
        assert ops >= {0, 1, 2}
        assert {r.source.schema for r in records} == {"shop"} and {r.source.table for r in records} == {"orders"}
        assert all(len(codec.decode_row(r.after.values)) == 3 for r in records if r.HasField("after"))
    finally:
        server.send_signal(signal.SIGINT)
        output, _ = server.communicate(timeout=30)
    assert server.returncode == 0, output
    assert f"{port}" in output and "shop.orders" in output

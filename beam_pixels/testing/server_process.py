"""A Pixels polling server in its own (spawned) process, as the benchmark and soak servers run.

:class:`SpawnedServer` starts ``target(*args, ready, commands)`` in a fresh
process: the target binds a gRPC server with :func:`start_poll_server`, sends
its port on ``ready``, then answers the parent's commands with
:func:`answer_commands` until told to quit. The parent side is a context
manager: entering waits for the port, :meth:`SpawnedServer.ask` sends a command
and waits for its answer, leaving stops the process (killed if it lingers).
"""

from __future__ import annotations

import multiprocessing
from collections.abc import Callable, Mapping
from concurrent import futures

import grpc

from beam_pixels.protocol import sink_pb2

SERVICE = "sink.proto.PixelsPollingService"
CONTEXT = multiprocessing.get_context("spawn")
"""The multiprocessing context of every spawned server: make shared counters with it."""


def start_poll_server(
    poll: Callable[[sink_pb2.PollRequest, grpc.ServicerContext], bytes], workers: int
) -> tuple[grpc.Server, int]:
    """A started gRPC server on 127.0.0.1 (a free port) whose ``PollEvents`` answers with
    ``poll``'s bytes, a serialized ``PollResponse`` sent as is. Returns the server and its port."""
    handler = grpc.method_handlers_generic_handler(
        SERVICE,
        {
            "PollEvents": grpc.unary_unary_rpc_method_handler(
                poll, request_deserializer=sink_pb2.PollRequest.FromString, response_serializer=None
            )
        },
    )
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=workers), handlers=[handler])
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    return server, port


def answer_commands(commands, handlers: Mapping[str, Callable[..., None]]) -> None:
    """Child side: run each command ``(name, *args)`` the parent sends with ``handlers[name]`` and
    acknowledge it, until ``("quit",)`` or until the parent is gone."""
    try:
        while True:
            name, *args = commands.recv()
            if name == "quit":
                return
            handlers[name](*args)
            commands.send("ok")
    except EOFError:
        return


class SpawnedServer:
    """``target(*args, ready, commands)`` in a spawned daemon process; use as a context manager."""

    def __init__(self, target: Callable[..., None], args: tuple, *, name: str, start_timeout_s: float):
        self._ready, child_ready = CONTEXT.Pipe(duplex=False)
        self._commands, child_commands = CONTEXT.Pipe(duplex=True)
        self._process = CONTEXT.Process(target=target, args=(*args, child_ready, child_commands), name=name, daemon=True)
        self._start_timeout_s = start_timeout_s
        self.port = 0

    def __enter__(self):
        self._process.start()
        if not self._ready.poll(self._start_timeout_s):
            self._process.kill()
            raise RuntimeError(f"the {self._process.name} process did not start within {self._start_timeout_s:g} s")
        self.port = self._ready.recv()
        return self

    def ask(self, *command, timeout: float = 300) -> None:
        """Send ``command`` (a name and its arguments) and wait until the server has carried it out."""
        self._commands.send(command)
        if not self._commands.poll(timeout):
            raise RuntimeError(f"the {self._process.name} process did not answer {command[0]!r} within {timeout} s")
        self._commands.recv()

    @property
    def pid(self) -> int:
        return self._process.pid

    def __exit__(self, *exc_info) -> None:
        try:
            self._commands.send(("quit",))
        except OSError:
            pass
        self._process.join(10)
        if self._process.is_alive():
            self._process.kill()
            self._process.join()

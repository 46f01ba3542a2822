#!/usr/bin/env bash
# Regenerate beam_pixels/protocol/sink_pb2.py, sink_pb2_grpc.py and sink_pb2.pyi
# from proto/sink.proto, and sink_lazy_pb2.py and sink_lazy_pb2.pyi from
# proto/sink_lazy.proto (wire-compatible views used for fast decoding; no service).
# The generated files are committed; never edit them by hand.
#
# The include mapping -Ibeam_pixels/protocol=proto makes protoc see the file as
# beam_pixels/protocol/sink.proto, so the grpc module imports the message module
# as `beam_pixels.protocol.sink_pb2` (the wire package stays `sink.proto`).
#
# Uses $PYTHON if set, else the active virtualenv's python, else python3 from
# PATH. Needs grpcio-tools 1.76.* (newer releases generate code that requires
# protobuf 7, which Beam does not accept).
set -euo pipefail
cd "$(dirname "$0")/.."

if [[ -z "${PYTHON:-}" ]]; then
  if [[ -n "${VIRTUAL_ENV:-}" ]]; then PYTHON=$VIRTUAL_ENV/bin/python; else PYTHON=python3; fi
fi
if ! "$PYTHON" -c "import grpc_tools" 2>/dev/null; then
  echo "error: $PYTHON cannot import grpc_tools; install 'grpcio-tools==1.76.*' or set PYTHON=/path/to/python" >&2
  exit 1
fi

"$PYTHON" -m grpc_tools.protoc \
  -Ibeam_pixels/protocol=proto \
  --python_out=. \
  --pyi_out=. \
  --grpc_python_out=. \
  beam_pixels/protocol/sink.proto

"$PYTHON" -m grpc_tools.protoc \
  -Ibeam_pixels/protocol=proto \
  --python_out=. \
  --pyi_out=. \
  beam_pixels/protocol/sink_lazy.proto

echo "generated:" beam_pixels/protocol/sink_pb2* beam_pixels/protocol/sink_lazy_pb2*

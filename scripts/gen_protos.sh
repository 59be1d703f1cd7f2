#!/usr/bin/env bash
# Regenerate the Python code beside the .proto files. Run after editing protos/stoker/v1/*.proto
# and commit the result; the test suite fails when the committed code differs from what this makes.
set -euo pipefail
cd "$(dirname "$0")/.."
python="${PYTHON:-python3}"
"$python" -m grpc_tools.protoc -I protos \
  --python_out=protos --pyi_out=protos --grpc_python_out=protos \
  protos/stoker/v1/*.proto

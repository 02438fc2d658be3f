#!/usr/bin/env bash
# Fetches NVIDIA's cuDNN frontend (the header-only C++ graph API over cuDNN 9's backend; what llm.c uses for its
# flash attention) into .deps/cudnn-frontend/include, where CMake looks for it. The CUDA build uses it for cuDNN's
# fused attention (SDPA) forward and backward; without it the CUDA build runs zerolora's own attention kernels.
# The headers come from NVIDIA's PyPI wheel `nvidia-cudnn-frontend` (a pinned version, checked by its sha256):
# only the wheel's include/ folder is unpacked, nothing is installed into any Python.
#   bash scripts/fetch-cudnn-frontend.sh        (idempotent; needs python3 with pip, and unzip)
set -euo pipefail
cd "$(dirname "$0")/.."
VERSION=1.16.0
WHEEL=nvidia_cudnn_frontend-${VERSION}-cp311-cp311-manylinux_2_27_x86_64.manylinux_2_28_x86_64.whl
SHA256=5c4a8fc573d85a86e08b15d9bf37f729e2487298781867a492a59cde6ac295e2
DEST=.deps/cudnn-frontend
if [ -f "$DEST/include/cudnn_frontend.h" ] && [ "$(cat "$DEST/VERSION" 2>/dev/null)" = "$VERSION" ]; then
  echo "cuDNN frontend $VERSION already in $DEST"; exit 0
fi
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
python3 -m pip --version > /dev/null 2>&1 ||
  { echo "fetch-cudnn-frontend: needs python3 with pip (apt-get install python3-pip) to download the wheel"; exit 1; }
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.11 --implementation cp \
  --platform manylinux_2_28_x86_64 -d "$tmp" "nvidia-cudnn-frontend==$VERSION"
whl="$tmp/$WHEEL"
echo "$SHA256  $whl" | sha256sum -c --quiet - || { echo "fetch-cudnn-frontend: $whl: sha256 mismatch (expected $SHA256)"; exit 1; }
rm -rf "$DEST"; mkdir -p "$DEST"
unzip -q "$whl" 'include/*' -d "$DEST"
echo "$VERSION" > "$DEST/VERSION"
echo "cuDNN frontend $VERSION -> $DEST/include"

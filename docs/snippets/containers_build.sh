#!/usr/bin/env bash
# Containers: build a component folder's image, serve it, write an OCI archive, load it back
# (run by tests/test_docs_site.py with PORT set; needs podman, see docs/guide/containers.md).
set -euo pipefail
PORT=${PORT:-8000}
chainrule new my_component --backend numpy 2>/dev/null
# --8<-- [start:build]
chainrule build my_component --quiet            # prints localhost/chainrule-my_component:0.1.0
chainrule build my_component --quiet --archive my_component.tar   # and writes an OCI archive
# --8<-- [end:build]
# --8<-- [start:serve]
chainrule serve --image chainrule-my_component:0.1.0 --port $PORT &   # 127.0.0.1, in a container
# --8<-- [end:serve]
SERVER=$!
trap 'kill $SERVER 2>/dev/null || true' EXIT
for _ in $(seq 150); do chainrule schema http://127.0.0.1:$PORT >/dev/null 2>&1 && break; sleep 0.2; done
chainrule call http://127.0.0.1:$PORT apply '{"inputs": {"x": [0.0, 1.0]}}'
kill $SERVER                                    # the container goes with the command
wait $SERVER || true
# --8<-- [start:archive]
tar -tf my_component.tar | grep -Ex 'index.json|oci-layout'   # an OCI layout (and blobs/)
podman load -i my_component.tar                 # the image back, on another machine
# --8<-- [end:archive]

#!/usr/bin/env bash
# The CLI: serve a component, call it, stop it (run by tests/test_docs_site.py with PORT set).
set -euo pipefail
PORT=${PORT:-8000}
chainrule new my_component --backend numpy 2>/dev/null
# --8<-- [start:serve]
chainrule serve my_component --port $PORT &      # 127.0.0.1 unless --host (then --token)
# --8<-- [end:serve]
SERVER=$!
trap 'kill $SERVER 2>/dev/null || true' EXIT
for _ in $(seq 100); do chainrule schema http://127.0.0.1:$PORT >/dev/null 2>&1 && break; sleep 0.2; done
# --8<-- [start:call]
chainrule schema http://127.0.0.1:$PORT           # schemas, endpoints and where each comes from
chainrule call http://127.0.0.1:$PORT apply '{"inputs": {"x": [0.0, 1.0]}}'
chainrule call http://127.0.0.1:$PORT vjp \
    '{"inputs": {"x": [0.0, 1.0]}, "cotangents": {"y": [1.0, 1.0]}}'
echo '{"inputs": {"x": [0.0, 1.0]}}' | chainrule call http://127.0.0.1:$PORT eval_shape
# --8<-- [end:call]
grep -q '"y"' <<<"$(chainrule call http://127.0.0.1:$PORT apply '{"inputs": {"x": [0.0]}}')"
# --8<-- [start:error]
chainrule call http://127.0.0.1:$PORT apply '{"inputs": {"x": [[1.0]]}}' || echo "exit $?"
# ValidationError: invalid inputs to component 'my_component': 'x': expected ..., got float64[1,1]
# --8<-- [end:error]
if chainrule call http://127.0.0.1:$PORT apply '{"inputs": {}}' 2>/dev/null; then exit 1; fi
# --8<-- [start:stop]
kill %1                                            # stop the server
# --8<-- [end:stop]
wait $SERVER || true

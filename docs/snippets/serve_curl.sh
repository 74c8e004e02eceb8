#!/usr/bin/env bash
# curl a served component: plain JSON lists in, plain JSON lists out (run by
# tests/test_docs_site.py with PORT set).
set -euo pipefail
PORT=${PORT:-8000}
chainrule new my_component --backend numpy 2>/dev/null
chainrule serve my_component --port $PORT 2>/dev/null &
SERVER=$!
trap 'kill $SERVER 2>/dev/null || true' EXIT
for _ in $(seq 100); do curl -sf http://127.0.0.1:$PORT/health >/dev/null && break; sleep 0.2; done
# --8<-- [start:lists]
curl -s http://127.0.0.1:$PORT/vjp -H 'Content-Type: application/json' \
    -d '{"inputs": {"x": [0.0, 1.0]}, "cotangents": {"y": [1.0, 1.0]}}'
# {"result":{"x":[...two numbers...]}}          plain lists in, plain lists out
curl -s http://127.0.0.1:$PORT/apply -H 'Content-Type: application/json' \
    -H 'Accept: application/json; arrays=base64' -d '{"inputs": {"x": [0.0, 1.0]}}'
# {"outputs":{"y":{"$array":{"dtype":"float64","shape":[2],"data":"..."}}}}   exact bytes
# --8<-- [end:lists]
answer=$(curl -s http://127.0.0.1:$PORT/apply -H 'Content-Type: application/json' \
    -d '{"inputs": {"x": [0.0, 1.0]}}')
grep -Eq '^\{"outputs":\{"y":\[[-0-9.e]+,[-0-9.e]+\]\}\}$' <<<"$answer" || { echo "$answer"; exit 1; }
answer=$(curl -s http://127.0.0.1:$PORT/apply -H 'Content-Type: application/json' \
    -H 'Accept: application/json; arrays=base64' -d '{"inputs": {"x": [0.0, 1.0]}}')
grep -q '"\$array"' <<<"$answer" || { echo "$answer"; exit 1; }

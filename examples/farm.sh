#!/usr/bin/env bash
# The job-posting pipeline (examples/postings) on the distributed farm, all on this
# machine: `orchestrator serve`, two GPU workers next to two model servers with
# different models, a script worker that saves to the postings tables, over RabbitMQ
# (or WAVEFARM_BROKER_URL), then the batch's status.
#
#   bash examples/farm.sh
#
# The model servers are the test server that speaks Ollama's API (synthetic answers);
# point the GPU workers at real Ollama hosts to run real models.
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x .venv/bin/orchestrator ] || { python3 -m venv .venv && .venv/bin/pip install -q -e '.[test]'; }
bin=.venv/bin
logs=$(mktemp -d)

if [ -z "${WAVEFARM_DATABASE_URL:-}" ]; then
    psql -h 127.0.0.1 -U postgres -qc "DROP DATABASE IF EXISTS wavefarm_farm" -c "CREATE DATABASE wavefarm_farm"
    export WAVEFARM_DATABASE_URL=postgresql://postgres@127.0.0.1:5432/wavefarm_farm
fi
export WAVEFARM_BROKER_URL=${WAVEFARM_BROKER_URL:-amqp://guest:guest@127.0.0.1:5672//}

pids=()
start() { local name=$1; shift; "$@" >"$logs/$name.log" 2>&1 & pids+=($!); }
trap 'kill "${pids[@]}" 2>/dev/null; wait 2>/dev/null; echo "logs: $logs"' EXIT

start host-a $bin/python -m tests.model_server --port 11511 --models gemma3:1b,phi3 --latency 0.05 --slots 4
start host-b $bin/python -m tests.model_server --port 11512 --models qwen2.5:7b,gemma2 --latency 0.05 --slots 4
$bin/orchestrator db upgrade
start serve $bin/orchestrator serve --metrics-port 9300
start gpu-a env -u WAVEFARM_DATABASE_URL $bin/gpu-worker --ollama-url http://127.0.0.1:11511 --concurrency 4 --name gpu-a
start gpu-b env -u WAVEFARM_DATABASE_URL $bin/gpu-worker --ollama-url http://127.0.0.1:11512 --concurrency 4 --name gpu-b
start scripts $bin/script-worker --scripts-dir examples/postings/scripts --concurrency 4 --name scripts
sleep 4
$bin/orchestrator status
$bin/orchestrator workflow load examples/postings/workflow.yaml --scripts-dir examples/postings/scripts
status=0
$bin/orchestrator submit --batch examples/postings/postings.csv --key source_id --workflow postings --wait || status=$?
batch=$($bin/orchestrator submit --batch examples/postings/postings.csv --key source_id --workflow postings --json 2>/dev/null | tail -n1 \
        | $bin/python -c 'import json,sys; print(json.load(sys.stdin)["batch_id"])')
$bin/orchestrator status --batch "$batch"
exit $status

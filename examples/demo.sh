#!/usr/bin/env bash
# The main job, end to end on one machine: the example pipeline over the sample
# postings, executed by the local executor against a model server.
#
#   bash examples/demo.sh
#
# Uses WAVEFARM_DATABASE_URL if set, else a database `wavefarm_demo` on the local
# Postgres (created if missing). Uses the model server at WAVEFARM_OLLAMA_URL if set
# (a real Ollama with gemma3:1b and qwen2.5:7b), else starts the test model server
# that speaks Ollama's API (answers are synthetic: it shows the farm, not a model).
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x .venv/bin/orchestrator ] || { python3 -m venv .venv && .venv/bin/pip install -q -e '.[test]'; }
bin=.venv/bin

if [ -z "${WAVEFARM_DATABASE_URL:-}" ]; then
    psql -h 127.0.0.1 -U postgres -tAc "SELECT 1 FROM pg_database WHERE datname = 'wavefarm_demo'" | grep -q 1 \
        || psql -h 127.0.0.1 -U postgres -qc "CREATE DATABASE wavefarm_demo"
    export WAVEFARM_DATABASE_URL=postgresql://postgres@127.0.0.1:5432/wavefarm_demo
fi

server_pid=""
if [ -z "${WAVEFARM_OLLAMA_URL:-}" ]; then
    port=11435
    $bin/python -m tests.model_server --port "$port" --models gemma3:1b,qwen2.5:7b --latency 0.02 --slots 8 &
    server_pid=$!
    trap '[ -n "$server_pid" ] && kill "$server_pid" 2>/dev/null' EXIT
    export WAVEFARM_OLLAMA_URL="http://127.0.0.1:$port"
    for _ in $(seq 50); do curl -sf "$WAVEFARM_OLLAMA_URL/api/version" >/dev/null && break; sleep 0.1; done
fi

$bin/orchestrator db upgrade
$bin/orchestrator workflow load examples/posting_pipeline.yaml --scripts-dir examples/scripts
status=0
$bin/orchestrator submit --batch examples/postings.csv --workflow posting_pipeline --local \
    --scripts-dir examples/scripts --concurrency 8 || status=$?
batch=$($bin/orchestrator submit --batch examples/postings.csv --workflow posting_pipeline --json 2>/dev/null | tail -n1 \
        | $bin/python -c 'import json,sys; print(json.load(sys.stdin)["batch_id"])')
$bin/orchestrator status --batch "$batch"
echo
echo "next: orchestrator show RUN_ID   |   orchestrator export --batch $batch --format csv"
exit $status

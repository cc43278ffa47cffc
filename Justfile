# durable-emitter tasks. `just --list` shows them all.

python := env_var_or_default("PYTHON", "python")

# (no-exit-message: run-local says itself why it stopped, just adds no "recipe failed" line)
# Start Postgres (embedded unless DATABASE_URL) and chipmock (unless CHIP_INGRESS_ENDPOINT), then cron workflows emitting
[no-exit-message]
run-local *ARGS:
    exec {{python}} -m scripts.run_local {{ARGS}}

# Run the Chip Ingress stand-in, e.g. `just chipmock --latency 50ms`
chipmock *ARGS:
    exec {{python}} -m chipmock {{ARGS}}

# Lint and type-check, then the whole test suite (real Postgres, real gRPC)
test *ARGS:
    {{python}} -m ruff check .
    {{python}} -m mypy --strict actors chipmock
    {{python}} -m pytest {{ARGS}}

# Regenerate chippb/ from proto/ (the generated stubs are committed)
proto:
    {{python}} scripts/gen_proto.py

# 100,000 events of 1 KiB: emit and emit_many(100) from 10 and 100 callers, baselines; claimed (outbox rows, a 60 s outage's backlog) vs emit_many
bench *ARGS:
    {{python}} -m scripts.load sustained --events 100000 --concurrency 10,100 --batch 1,100 --size 1024 --chip-latency 0 --compare --claimed --rate 1000 --duration 60s {{ARGS}}

# Load tests: `just load ramp|sustained|tps|latency|payload|backlog|ratelimit|outbox|mixed|claimsize [--compare] ...` (report in results/)
load SCENARIO *ARGS:
    {{python}} -m scripts.load {{SCENARIO}} {{ARGS}}

# Faults drawn from a seed against everything real, checked from outside: `just soak --seconds 120 --seed 1`
soak *ARGS:
    {{python}} -m scripts.soak {{ARGS}}

# The fault suite, longer: more SIGKILL rounds and events (CHAOS_SCALE=N multiplies them)
chaos *ARGS:
    CHAOS_SCALE=${CHAOS_SCALE:-5} {{python}} -m pytest tests/faults -n 0 -s -q {{ARGS}}

# Build the documentation site from docs/ into docs/_build/html (warnings as errors, as `just test` does)
docs *ARGS:
    {{python}} -m sphinx -E -W --keep-going -n -b html docs docs/_build/html {{ARGS}}

"""durable-emitter: emit() commits to Postgres, then actors publish to Chip Ingress."""

"""The I/O: Postgres (driver, queries, store, operations, schema, postgres), Chip (chip), Prometheus."""

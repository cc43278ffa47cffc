"""Decisions without I/O: CloudEvent framing, failure classification, what to do after each Chip answer,
backoff, admission, the outage model, schema plans, counters.

Nothing here imports psycopg or grpc, or waits on a socket: the actors and
adapters perform the I/O and ask these modules what to do, so every decision
is unit-tested without a database, a network or real time. Trio appears only
for its events and timeouts (admission's wait, instruments' wake-ups), never
for I/O.
"""

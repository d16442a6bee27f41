"""Tooling only the dev stack, the tests and the benchmarks use: local Kafka, PostgreSQL
and Redis servers, ``ampgate dev`` and a topic tail. No service imports it at run time."""

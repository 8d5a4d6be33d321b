"""The admin listener: ingest, events, customers, keys, billing, health and metrics."""

"""Benchmarks of meterproxy against baselines measured in the same run (`make bench`)."""

"""Reproducible speed and memory benchmarks for Janus on OpenVINO (see README.md here)."""

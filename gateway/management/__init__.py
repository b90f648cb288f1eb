"""The management API: JSON over HTTP with bearer tokens; never on the ingest hot path."""

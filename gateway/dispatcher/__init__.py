"""Outgoing hooks: templates, SSRF guard, retry policy, signing and the delivery loop."""

"""The reference executor (``gateway executor``) and run maintenance (``gateway prune``)."""

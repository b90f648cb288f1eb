"""Password hashing and opaque bearer tokens."""

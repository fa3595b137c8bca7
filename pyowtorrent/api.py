"""The façade (filled in below)."""

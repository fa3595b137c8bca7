"""The owmeta-core data loader (filled in below)."""

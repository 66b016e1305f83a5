"""`mmsr cache`: filled in by the cache work (issue 4)."""

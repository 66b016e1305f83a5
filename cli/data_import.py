"""`mmsr data import`: filled in by the importers work (issue 3)."""

"""`mmsr models`: filled in by the encoders work (issue 4)."""

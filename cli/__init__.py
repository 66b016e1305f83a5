"""The `mmsr` command line (installed as `mmsr_cli`): parses options, calls the library, draws output."""

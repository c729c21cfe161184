"""The command line (click only): shared options and one module per command area."""

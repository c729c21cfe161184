"""The Filespooler engine: packet format, sequence files, queues, the executor, the
on-disk layout of a queue and file-system helpers.  Imports nothing above it (no
gateway, no transport, no click)."""

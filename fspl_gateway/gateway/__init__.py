"""The gateway: pull and push engines with their run frame, retry policy, quarantine and
journal; media export/import; dispersal, workers and multi-host; status; watch.  Uses the
core and the transports; never imports click."""

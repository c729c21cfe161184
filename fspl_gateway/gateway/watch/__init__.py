"""``fspl-gw watch``: the gateway as a long-running service, driven by the config file's
``[pipelines.NAME]`` tables and its ``[watch]`` table (:mod:`.pipelines`).  One module
per service:

* :mod:`.service` — the gateway: starts a runner per pipeline and the media watcher,
  signals (SIGTERM/SIGINT stop gracefully, SIGHUP reloads the config), the metrics file;
* :mod:`.runner` — one pipeline's thread, which drives the three below;
* :mod:`.remote` — polling a remote (pull or push every ``interval`` seconds) and, where
  the transport can wait for changes (Dropbox's longpoll), a thread that wakes the
  pipeline as soon as the remote changes;
* :mod:`.processing` — running a queue's jobs at start, when a job lands and every
  ``rescan`` seconds;
* :mod:`.workerproc` — keeping a ``workers = N`` pool running in a child process;
* :mod:`.media` — importing export media mounted under ``media_root``;
* :mod:`.inotify` — the file watcher (watchdog) that wakes runners and the media
  watcher;
* helpers: :mod:`.backoff` (how long a failing remote or job waits), :mod:`.queues`
  (a pipeline's queue is created when missing), :mod:`.stopaware` (the transport
  wrapper that starts no download once stopping).

A failing remote is logged and retried with exponential backoff (up to 32 intervals, at
most 10 minutes); it never stops the other pipelines.  A failing job (``on_error =
"retry"``) is retried with backoff too, not in a tight loop.

Signals: SIGTERM/SIGINT stop gracefully — no new transfers or jobs start, the running
transfer or job finishes (at most ``grace`` seconds; then exit 1), exit 0.  A pull that is
interrupted is never half-moved: a transfer lands in the queue's staging area and is
linked into ``jobs/`` only when complete.  SIGHUP re-reads the config file: new pipelines
start, removed ones stop (after their running job), changed ones restart; a config file
with an error is logged and the running configuration kept.
"""

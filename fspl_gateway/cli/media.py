"""CLI: ``fspl-gw export`` (outbox → USB directory or ISO image) and ``fspl-gw import``
(USB directory or ISO image → queue), over :mod:`fspl_gateway.gateway.media`."""

from __future__ import annotations

import click

from fspl_gateway.cli.main import CONTEXT, queuedir_opt


@click.command("export", context_settings=CONTEXT)
@queuedir_opt
@click.option("--to", "dest", required=True, metavar="DIR|FILE.iso",
              help="A mounted stick's directory, or an ISO image to create (ready to burn).")
@click.option("--keep", is_flag=True, help="Keep the exported jobs in the outbox.")
@click.option("--overwrite", is_flag=True, help="Replace an existing ISO image.")
@click.option("--volume-id", default="FSPL_JOBS", show_default=True, help="ISO volume label.")
def export_cmd(queuedir: str, dest: str, keep: bool, overwrite: bool, volume_id: str) -> None:
    """Write the outbox's jobs and a MANIFEST.sha256 to removable media."""
    from fspl_gateway.core.log import log
    from fspl_gateway.gateway.media import export_dir, export_iso

    if dest.lower().endswith(".iso"):
        res = export_iso(queuedir, dest, keep=keep, overwrite=overwrite, volume_id=volume_id)
    else:
        res = export_dir(queuedir, dest, keep=keep)
    log.info("export: %d written, %d already there, %d removed from the outbox, %d bad "
             "skipped → %s", res.exported, res.already_present, res.removed, res.skipped_bad,
             res.target or dest)


@click.command("import", context_settings=CONTEXT)
@queuedir_opt
@click.option("--from", "source", required=True, metavar="DIR|FILE.iso",
              help="A mounted stick/CD directory or an ISO image (read without mounting).")
@click.option("--good-only", is_flag=True,
              help="If the manifest check fails for some jobs, import the good ones anyway.")
@click.option("--no-manifest", is_flag=True, help="Import media that carries no manifest.")
@click.option("--decoder", default=None, metavar="CMD", help="Decoder for reading headers.")
@click.option("--wait-lock", type=click.FloatRange(min=0), default=None, metavar="SECONDS",
              help="Wait for another sync/import of the same queue.")
def import_cmd(queuedir: str, source: str, good_only: bool, no_manifest: bool,
               decoder: str | None, wait_lock: float | None) -> None:
    """Verify the media's MANIFEST.sha256 and import its jobs (never writes the media)."""
    from fspl_gateway.core.errors import EXIT_PARTIAL, FsplError
    from fspl_gateway.core.log import log
    from fspl_gateway.gateway.media import import_media
    from fspl_gateway.gateway.pull import SyncOptions

    opts = SyncOptions(after_fetch="keep", decoder=decoder, wait_lock=wait_lock)
    res = import_media(source, queuedir, good_only=good_only,
                       require_manifest=not no_manifest, opts=opts)
    if res.sync is not None:
        log.info("import: %s", res.sync.summary())
    if res.rejected:
        log.warning("import: %d jobs rejected by the manifest check: %s", len(res.rejected),
                    ", ".join(res.rejected[:10]))
    bad = res.rejected or (res.sync is not None and bool(getattr(res.sync, "exit_code", 0)))
    if bad:
        err = FsplError("import finished, but some jobs were rejected or quarantined")
        err.exit_code = EXIT_PARTIAL
        raise err

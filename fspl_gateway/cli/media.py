"""CLI: ``fspl-gw export`` (outbox → USB directory or ISO image) and ``fspl-gw import``
(USB directory or ISO image → queue), over :mod:`fspl_gateway.gateway.media`."""

from __future__ import annotations

import click

from fspl_gateway.cli import options as opt
from fspl_gateway.cli.options import CONTEXT


@click.command("export", context_settings=CONTEXT)
@opt.queuedir("The outbox queue to export.", metavar="OUTBOX")
@click.option("--to", "dest", required=True, metavar="DIR|FILE.iso",
              shell_complete=opt.complete_file,
              help="A mounted stick's directory, or an ISO image to create (ready to burn).")
@click.option("--keep", is_flag=True, help="Keep the exported jobs in the outbox.")
@click.option("--overwrite", is_flag=True, help="Replace an existing ISO image.")
@click.option("--volume-id", default="FSPL_JOBS", show_default=True, help="ISO volume label.")
@opt.trust_send(encrypt=False)
def export_cmd(queuedir: str, dest: str, keep: bool, overwrite: bool, volume_id: str,
               sign: str | None, queue_id: str | None) -> None:
    """Write the outbox's jobs and a MANIFEST.sha256 to removable media.

    --sign writes each job's signature beside it and signs the manifest."""
    from fspl_gateway.core.log import log
    from fspl_gateway.gateway.media import export_dir, export_iso
    from fspl_gateway.gateway.trust import sign_policy_from

    policy = sign_policy_from({}, sign=sign, queue_id=queue_id)
    if dest.lower().endswith(".iso"):
        res = export_iso(queuedir, dest, keep=keep, overwrite=overwrite, volume_id=volume_id,
                         sign=policy)
    else:
        res = export_dir(queuedir, dest, keep=keep, sign=policy)
    log.info("export: %d written, %d already there, %d removed from the outbox, %d bad "
             "skipped → %s", res.exported, res.already_present, res.removed, res.skipped_bad,
             res.target or dest)


@click.command("import", context_settings=CONTEXT)
@opt.queuedir("The queue to import into.", metavar="QUEUE")
@click.option("--from", "source", required=True, metavar="DIR|FILE.iso",
              shell_complete=opt.complete_file,
              help="A mounted stick/CD directory or an ISO image (read without mounting).")
@click.option("--good-only", is_flag=True,
              help="If the manifest check fails for some jobs, import the good ones anyway "
                   "(exit 3).")
@click.option("--no-manifest", is_flag=True, help="Import media that carries no manifest.")
@click.option("--receipts", is_flag=True,
              help="Turn receipts on for QUEUE first (send them back with `receipts send "
                   "-t media -r DIR`).")
@opt.decoder()
@opt.wait_lock()
@opt.trust_receive(routes=False)
def import_cmd(queuedir: str, source: str, good_only: bool, no_manifest: bool,
               receipts: bool, decoder: str | None, wait_lock: float | None,
               trust: tuple[str, ...], queue_id: str | None, identity: tuple[str, ...],
               signature_wait: float | None) -> None:
    """Verify the media's MANIFEST.sha256 and import its jobs (never writes the media)."""
    from fspl_gateway.cli.sync import finish
    from fspl_gateway.core.errors import PartialFailure
    from fspl_gateway.core.log import log
    from fspl_gateway.gateway.media import import_media
    from fspl_gateway.gateway.pull import SyncOptions
    from fspl_gateway.gateway.trust import policy_from

    if receipts:
        from fspl_gateway.gateway.receipts import enable

        enable(queuedir)  # before the import: what it delivers is receipted

    # a medium is complete when it arrives: a missing signature waits for nothing
    policy = policy_from({}, trust=trust, queue_id=queue_id, identities=identity,
                         signature_wait=0.0 if signature_wait is None else signature_wait)

    res = import_media(source, queuedir, good_only=good_only,
                       require_manifest=not no_manifest,
                       opts=SyncOptions(decoder=decoder, wait_lock=wait_lock, trust=policy))
    if res.rejected:
        log.warning("import: %d jobs rejected by the manifest check: %s", len(res.rejected),
                    ", ".join(res.rejected[:10]))
    if res.sync is not None:
        finish(res.sync, "import")
    if res.rejected:
        raise PartialFailure(f"import: {len(res.rejected)} rejected by the manifest check "
                             "(see the messages above)")

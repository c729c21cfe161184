"""The media format: what export writes to a USB stick or a CD image and what import and
the ``media`` transport read — below the transports, above the core.

Media layout (directory media and ISO images alike)::

    <root>/jobs/fspl-*.fspl     job files, byte-identical to the outbox
    <root>/MANIFEST.sha256      "<sha256 hex>  jobs/<name>" per job (sha256sum format,
                                paths relative to <root>; `cd <root> && sha256sum -c
                                MANIFEST.sha256` checks a mounted stick or CD)

* :mod:`fspl_gateway.mediafmt.manifest` — ``MANIFEST.sha256``: parse, format, read,
  write, and verify a media against it;
* :mod:`fspl_gateway.mediafmt.iso` — ISO 9660 images (Rock Ridge + Joliet) read
  without mounting and written, through pycdlib (imported only there, on demand).
"""

"""SFTP transport: a remote queue directory on any SSH server, through the system ``ssh``
(the OpenSSH data path, the default where there is one) or paramiko.

One module per concern:

* :mod:`.location` — ``[user@]host[:port]/path`` and ``sftp://…`` locations, the SSH
  config (``HostName``, ``User``, ``Port``, ``IdentityFile``, ``UserKnownHostsFile``);
* :mod:`.hostkeys` — the known_hosts policy (unknown host refused with its fingerprint
  unless ``accept_new_host_key``; a changed key always refused);
* :mod:`.auth` — public keys: identity files, the ssh-agent, a passphrase from the
  environment;
* :mod:`.pool` — one SSH connection per transport, a pool of SFTP channels, reconnects;
* :mod:`.openssh` — the OpenSSH data path: one ``ssh -s HOST sftp`` per channel, our
  options mapped onto ssh's, its failures summarised in one line;
* :mod:`.protocol` — the SFTP requests, pipelined (reads, writes, removes), fsync and the
  no-clobber rename, with errors mapped to ours;
* :mod:`.transport` — :class:`SFTPTransport`, the Transport interface over them, and the
  clean-up of our temporaries.

The entry point ``fspl_gateway.transports.sftp:SFTPTransport`` names the class here.
"""

from fspl_gateway.transports.sftp.hostkeys import fingerprint
from fspl_gateway.transports.sftp.location import Location, parse_location
from fspl_gateway.transports.sftp.transport import MAX_AUTO_CHANNELS, OPTIONS, SFTPTransport

__all__ = ["MAX_AUTO_CHANNELS", "OPTIONS", "Location", "SFTPTransport", "fingerprint",
           "parse_location"]

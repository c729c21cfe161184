"""Authentication: public keys only.

Identity files (the option ``identity_file``, else the SSH config's ``IdentityFile``,
else ``~/.ssh/id_ed25519``, ``id_ecdsa``, ``id_rsa``), then the ssh-agent's keys
(``SSH_AUTH_SOCK``; option ``allow_agent``).  A passphrase for encrypted keys comes from
the environment variable named by ``passphrase_env`` (default ``FSPL_GW_SSH_PASSPHRASE``);
it is never logged.
"""

from __future__ import annotations

import os

import paramiko

from fspl_gateway.core.errors import AuthError
from fspl_gateway.transports.sftp.hostkeys import fingerprint

DEFAULT_PASSPHRASE_ENV = "FSPL_GW_SSH_PASSPHRASE"
DEFAULT_IDENTITIES = ("ed25519", "ecdsa", "rsa")


class Authenticator:
    """Offers our keys to one server as ``user``."""

    def __init__(self, user: str, entry: str, identity_files: list[str], explicit: bool,
                 passphrase_env: str, allow_agent: bool) -> None:
        self.user = user
        self.entry = entry
        self.identity_files = identity_files
        #: The files were named (option or config): a missing one is an error.
        self.explicit = explicit
        self.passphrase_env = passphrase_env
        self.allow_agent = allow_agent

    def check_files(self) -> None:
        """AuthError for a named identity file that does not exist (both data paths)."""
        if self.explicit:
            for path in self.identity_files:
                if not os.path.exists(path):
                    raise AuthError(f"identity file {path} does not exist")

    def identity_keys(self) -> list[tuple[str, paramiko.PKey]]:
        files = self.identity_files
        if not files:
            files = [os.path.expanduser(f"~/.ssh/id_{k}") for k in DEFAULT_IDENTITIES]
        self.check_files()
        pw = os.environ.get(self.passphrase_env) or None
        passphrase = pw.encode() if pw else None  # bytes: paramiko 5 fails on str
        keys: list[tuple[str, paramiko.PKey]] = []
        for path in files:
            if not os.path.exists(path):
                continue
            try:
                keys.append((path, paramiko.PKey.from_path(path, passphrase)))
            except paramiko.PasswordRequiredException:
                raise AuthError(
                    f"identity file {path} is encrypted: put its passphrase in the environment "
                    f"variable {self.passphrase_env}"
                ) from None
            except (paramiko.SSHException, ValueError, TypeError) as e:
                # paramiko ≥ 5 reports a missing passphrase as TypeError (from cryptography)
                if passphrase:
                    hint = f"wrong passphrase in {self.passphrase_env}, or not a private key"
                else:
                    hint = (f"encrypted (put its passphrase in the environment variable "
                            f"{self.passphrase_env}) or not a private key")
                raise AuthError(f"cannot load identity file {path}: {hint} "
                                f"({type(e).__name__})") from None
            except OSError as e:
                raise AuthError(f"cannot read identity file {path}: {e.strerror}") from None
        return keys

    def try_key(self, t: paramiko.Transport, key: paramiko.PKey) -> bool:
        """Offer one public key; True once authenticated."""
        try:
            t.auth_publickey(self.user, key)
            return bool(t.is_authenticated())
        except paramiko.BadAuthenticationType as e:
            raise AuthError(f"{self.entry} does not accept public keys for "
                            f"{self.user} (it allows: {', '.join(e.allowed_types)})") from None
        except paramiko.AuthenticationException:
            return False

    def authenticate(self, t: paramiko.Transport) -> None:
        tried: list[str] = []
        for path, key in self.identity_keys():
            tried.append(path)
            if self.try_key(t, key):
                return
        if self.allow_agent:
            agent = paramiko.Agent()
            try:
                for key in agent.get_keys():
                    tried.append(f"agent key {fingerprint(key)}")
                    if self.try_key(t, key):
                        return
            finally:
                agent.close()
        what = ", ".join(tried) if tried else "no identity file and no ssh-agent key"
        raise AuthError(f"SSH authentication as {self.user}@{self.entry} failed "
                        f"(tried: {what})")

"""Client certificates from the server's built-in CA: enrollment and renewal.

With ``server.tls.enroll: true`` an agent without a (valid) client certificate makes an
ECDSA P-256 key on its own host and sends a certificate signing request: with its
registration when it registers (``csr`` in the body), else to
``POST /agents/{id}/certificate``. The key never leaves the host: it stays in memory
until the certificate for it arrives, and is then written next to the certificate (mode
0600). Once two thirds of the certificate's lifetime have passed, the heartbeat loop
renews it the same way with a new key; the old pair stays in place and in use until
the new pair is stored.

A pair is replaced as two files: both are written under ``<name>.new`` first, then
renamed key first. A crash between the two renames leaves the new key with the old
certificate; loading notices the mismatch and finishes the rename from ``.new``.

When ``server.tls.ca_cert`` is not set, the CA certificate the server sends is stored
in the state directory and the agent from then on verifies the server against the
default CA bundle plus that CA: the first connection worked with the default CAs, and
a server certificate issued by the built-in CA works from now on too.

Only :func:`tls_files` is light; everything else imports ``cryptography`` when called.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from agent import defaults
from agent.errors import AgentError, RetryLater, TransportError
from agent.fileio import atomic_write
from agent.transport.base import IssuedCertificate

if TYPE_CHECKING:
    from agent.config import Config

log = logging.getLogger(__name__)

#: The server's error code when it has no CA to sign with (docs/agent-api.md).
CA_NOT_CONFIGURED = "ca_not_configured"


class EnrollmentError(AgentError):
    """A certificate from the server is unusable, or cannot be stored."""


def tls_files(config: Config) -> tuple[str | None, str | None, str | None]:
    """``(client_cert, client_key, ca_bundle)`` for the transport, from paths alone.

    An enrolling agent presents its certificate only once both files exist (the
    :class:`CertificateManager` vets them further before the agent starts talking).
    """
    tls = config.server.tls
    ca = str(tls.ca_cert) if tls.ca_cert else None
    cert = str(tls.client_cert) if tls.client_cert else None
    key = str(tls.client_key) if tls.client_key else None
    if not tls.enroll:
        return cert, key, ca
    bundle = config.agent.state_dir / defaults.ENROLLED_CA_BUNDLE
    if ca is None and bundle.is_file():
        ca = str(bundle)
    if cert and key and os.path.isfile(cert) and os.path.isfile(key):
        return cert, key, ca
    return None, None, ca


def default_ca_bundle() -> str | None:
    """The bundle requests verifies with when given no CA of ours (certifi's)."""
    try:
        from requests.utils import DEFAULT_CA_BUNDLE_PATH
    except ImportError:  # pragma: no cover - requests is a dependency of the agent
        return None
    return str(DEFAULT_CA_BUNDLE_PATH)


class CertificateManager:
    """Holds the agent's client certificate: says when to enroll or renew, makes the
    CSRs and stores what the server's CA sent back. Thread-safe."""

    def __init__(
        self,
        cert_path: Path,
        key_path: Path,
        *,
        ca_path: Path | None = None,
        bundle_path: Path | None = None,
        configured_ca: Path | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        """``ca_path``/``bundle_path``: where to keep the server's CA certificate and
        the bundle built from it (None when ``configured_ca`` is set: that one wins)."""
        self.cert_path = cert_path
        self.key_path = key_path
        self.ca_path = ca_path
        self.bundle_path = bundle_path
        self.configured_ca = configured_ca
        self._clock = clock
        self._lock = threading.Lock()
        self._pending: dict[bytes, Any] = {}  # public key (DER) -> private key
        self._next_attempt = 0.0
        self._failures = 0
        self.on_change: Callable[[], None] = lambda: None
        """Called after a new certificate was stored (the agent points the transport
        at it)."""
        self._validity = self._load()

    @classmethod
    def from_config(cls, config: Config, *, clock: Callable[[], float] = time.time
                    ) -> CertificateManager:
        """Raises ImportError when ``cryptography`` is not installed (checked without
        importing it: that happens at the first request for a certificate)."""
        import importlib.util

        if importlib.util.find_spec("cryptography") is None:
            raise ImportError("No module named 'cryptography'")
        tls, state = config.server.tls, config.agent.state_dir
        assert tls.enroll and tls.client_cert and tls.client_key
        own_ca = tls.ca_cert is None
        return cls(
            tls.client_cert,
            tls.client_key,
            ca_path=state / defaults.ENROLLED_CA_FILE if own_ca else None,
            bundle_path=state / defaults.ENROLLED_CA_BUNDLE if own_ca else None,
            configured_ca=tls.ca_cert,
            clock=clock,
        )

    # -- state --------------------------------------------------------------------------

    def has_certificate(self) -> bool:
        """Whether a usable pair (a certificate and its own key) is on disk."""
        return self._validity is not None

    @property
    def expires_at(self) -> float | None:
        return self._validity[1] if self._validity else None

    @property
    def renew_at(self) -> float | None:
        """When two thirds of the certificate's lifetime have passed; None without one."""
        if self._validity is None:
            return None
        start, end = self._validity
        return start + (end - start) * defaults.CERT_RENEW_FRACTION

    def files(self) -> tuple[str | None, str | None, str | None]:
        """``(client_cert, client_key, ca_bundle)`` the transport should use now."""
        ca: str | None = str(self.configured_ca) if self.configured_ca else None
        if ca is None and self.bundle_path is not None and self.bundle_path.is_file():
            ca = str(self.bundle_path)
        if self._validity is None:
            return None, None, ca
        return str(self.cert_path), str(self.key_path), ca

    def due(self) -> bool:
        """Whether to ask for a certificate now: none yet, or renewal time, and no
        recent failure holds us back."""
        now = self._clock()
        if now < self._next_attempt:
            return False
        renew_at = self.renew_at
        return renew_at is None or now >= renew_at

    # -- requests -----------------------------------------------------------------------

    def make_csr(self, common_name: str) -> str:
        """A PEM CSR for a new P-256 key; the key stays here until its certificate comes."""
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import NameOID

        key = ec.generate_private_key(ec.SECP256R1())
        csr = (
            x509.CertificateSigningRequestBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
            .sign(key, hashes.SHA256())
        )
        with self._lock:
            # A request whose reply never came must not pin its key forever.
            while len(self._pending) >= 4:
                self._pending.pop(next(iter(self._pending)))
            self._pending[_public_der(key.public_key())] = key
        return csr.public_bytes(serialization.Encoding.PEM).decode()

    def registration_csr(self, agent_id: str | None) -> str | None:
        """A CSR to send with a registration, when a certificate is wanted."""
        if not self.due():
            return None
        return self.make_csr(agent_id or "aami-agent")

    def store(self, issued: IssuedCertificate) -> None:
        """Keep a certificate the CA issued for one of our requests; raises
        EnrollmentError (and keeps the current pair) when it is unusable."""
        from cryptography import x509
        from cryptography.hazmat.primitives import serialization

        try:
            certificate = x509.load_pem_x509_certificate(issued.certificate.encode())
        except ValueError as exc:
            raise EnrollmentError(f"the server sent an unreadable certificate: {exc}") \
                from None
        with self._lock:
            key = self._pending.pop(_public_der(certificate.public_key()), None)
        if key is None:
            raise EnrollmentError("the certificate the server sent is not for the key of "
                                  "any request this agent made; ignoring it")
        key_pem = key.private_bytes(serialization.Encoding.PEM,
                                    serialization.PrivateFormat.PKCS8,
                                    serialization.NoEncryption())
        cert_pem = certificate.public_bytes(serialization.Encoding.PEM)
        try:
            if issued.ca_certificate and self.ca_path is not None:
                self._store_ca(issued.ca_certificate)
            self._replace_pair(key_pem, cert_pem)
        except OSError as exc:
            raise EnrollmentError(f"cannot store the client certificate in "
                                  f"{self.cert_path}: {exc}") from None
        self._validity = _validity(certificate)
        self._failures = 0
        self._next_attempt = 0.0
        log.info("stored a new client certificate %s, valid until %s", self.cert_path,
                 certificate.not_valid_after_utc.isoformat())
        self.on_change()

    def failed(self, exc: Exception) -> float:
        """Note a failed enrollment or renewal and log it; returns the seconds until the
        next attempt."""
        self._failures += 1
        if isinstance(exc, TransportError) and exc.code == CA_NOT_CONFIGURED:
            delay = defaults.CERT_NO_CA_RETRY
            log.error("the server has no CA to sign client certificates "
                      "(server.tls.enroll is on; run `aami-server ca init` on the server); "
                      "carrying on without a client certificate, asking again in %.0fs",
                      delay)
        else:
            delay = min(defaults.CERT_RETRY * 2 ** min(self._failures - 1, 20),
                        defaults.CERT_RETRY_CAP)
            if isinstance(exc, RetryLater) and exc.retry_after:
                delay = max(delay, exc.retry_after)
            if self._validity is None:
                log.error("could not get a client certificate: %s; retrying in %.0fs",
                          exc, delay)
            else:
                log.warning("could not renew the client certificate (valid until %s): %s; "
                            "retrying in %.0fs",
                            _iso(self._validity[1]), exc, delay)
        self._next_attempt = self._clock() + delay
        return delay

    # -- files --------------------------------------------------------------------------

    def _store_ca(self, ca_pem: str) -> None:
        from cryptography import x509

        try:
            x509.load_pem_x509_certificate(ca_pem.encode())
        except ValueError:
            log.warning("the server sent an unreadable CA certificate; not storing it")
            return
        assert self.ca_path is not None and self.bundle_path is not None
        atomic_write(self.ca_path, ca_pem.encode())
        bundle = b""
        default = default_ca_bundle()
        if default:
            try:
                bundle = Path(default).read_bytes().rstrip(b"\n") + b"\n"
            except OSError as exc:
                log.warning("cannot read the default CA bundle %s: %s", default, exc)
        atomic_write(self.bundle_path, bundle + ca_pem.encode())

    def _replace_pair(self, key_pem: bytes, cert_pem: bytes) -> None:
        new_key, new_cert = _pending_name(self.key_path), _pending_name(self.cert_path)
        atomic_write(new_key, key_pem, mode=0o600)
        atomic_write(new_cert, cert_pem, mode=0o644)
        os.replace(new_key, self.key_path)
        os.replace(new_cert, self.cert_path)

    def _load(self) -> tuple[float, float] | None:
        """Validity of the pair on disk, or None when there is no usable pair."""
        if not self.cert_path.exists() and not self.key_path.exists():
            return None
        validity = self._read_pair(self.cert_path)
        if validity is None:
            # An interrupted replacement: the new key is in place, its certificate not yet.
            pending = _pending_name(self.cert_path)
            if pending.exists() and self._read_pair(pending) is not None:
                with contextlib.suppress(OSError):
                    os.replace(pending, self.cert_path)
                    validity = self._read_pair(self.cert_path)
        if validity is None:
            log.warning("no usable client certificate in %s / %s: asking the server's CA "
                        "for a new one", self.cert_path, self.key_path)
        return validity

    def _read_pair(self, cert_path: Path) -> tuple[float, float] | None:
        from cryptography import x509
        from cryptography.hazmat.primitives import serialization

        try:
            certificate = x509.load_pem_x509_certificate(cert_path.read_bytes())
            key = serialization.load_pem_private_key(self.key_path.read_bytes(), password=None)
        except (OSError, ValueError, TypeError):
            return None
        if _public_der(key.public_key()) != _public_der(certificate.public_key()):
            return None
        return _validity(certificate)


def _pending_name(path: Path) -> Path:
    return path.with_name(path.name + ".new")


def _public_der(public_key: Any) -> bytes:
    from cryptography.hazmat.primitives import serialization

    data: bytes = public_key.public_bytes(serialization.Encoding.DER,
                                          serialization.PublicFormat.SubjectPublicKeyInfo)
    return data


def _validity(certificate: Any) -> tuple[float, float]:
    start: datetime = certificate.not_valid_before_utc
    end: datetime = certificate.not_valid_after_utc
    return start.timestamp(), end.timestamp()


def _iso(timestamp: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(timestamp))

"""The built-in certificate authority: server certificates and agent client certificates.

Keys are ECDSA P-256 (what every TLS stack accepts). The CA's private key is written
with mode 0600 and never leaves the server. Agents send a CSR made on their own host and
get back a certificate whose subject CN is their agent id, with the id also as a SAN
URI (``urn:aami:agent:<id>``) so a TLS front end can map certificate to agent.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import uuid
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

CA_CERT_FILE = "ca.crt"
CA_KEY_FILE = "ca.key"
AGENT_URI_PREFIX = "urn:aami:agent:"
MAX_CSR_BYTES = 8192


class CaError(Exception):
    """The CA is missing, or a request to it is unacceptable; the message says which."""


def _write_private(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)
    os.chmod(path, 0o600)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


@dataclass(frozen=True)
class CertificateAuthority:
    certificate: x509.Certificate
    key: ec.EllipticCurvePrivateKey

    @property
    def certificate_pem(self) -> str:
        return self.certificate.public_bytes(serialization.Encoding.PEM).decode()

    def _builder(
        self, subject: x509.Name, public_key: object, days: int
    ) -> x509.CertificateBuilder:
        now = _now()
        return (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(self.certificate.subject)
            .public_key(public_key)  # type: ignore[arg-type]
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=days))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self.key.public_key()),
                critical=False,
            )
        )

    def issue_server_certificate(self, hosts: list[str], days: int = 397) -> tuple[bytes, bytes]:
        """A key and certificate for the config-server's TLS, valid for ``hosts``
        (names or IP addresses). Returns (key PEM, certificate PEM)."""
        if not hosts:
            raise CaError("a server certificate needs at least one host name or IP address")
        key = ec.generate_private_key(ec.SECP256R1())
        names: list[x509.GeneralName] = []
        for host in hosts:
            try:
                names.append(x509.IPAddress(ipaddress.ip_address(host)))
            except ValueError:
                names.append(x509.DNSName(host))
        certificate = (
            self._builder(
                x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hosts[0])]),
                key.public_key(),
                days,
            )
            .add_extension(x509.SubjectAlternativeName(names), critical=False)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .sign(self.key, hashes.SHA256())
        )
        return _key_pem(key), certificate.public_bytes(serialization.Encoding.PEM)

    def sign_agent_csr(self, agent_id: str, csr_pem: str, days: int) -> str:
        """A client certificate for ``agent_id`` from the agent's CSR (its key stays home).

        Whatever subject the CSR asks for is ignored: the certificate names the agent id
        the caller proved, nothing else.
        """
        if len(csr_pem) > MAX_CSR_BYTES:
            raise CaError(f"the CSR is larger than {MAX_CSR_BYTES} bytes")
        try:
            csr = x509.load_pem_x509_csr(csr_pem.encode())
        except ValueError:
            raise CaError("the CSR is not a PEM-encoded certificate signing request") from None
        if not csr.is_signature_valid:
            raise CaError("the CSR's signature does not match its public key")
        public_key = csr.public_key()
        if not isinstance(public_key, ec.EllipticCurvePublicKey) or public_key.curve.key_size < 256:
            raise CaError("the CSR must carry an ECDSA key of at least 256 bits (P-256)")
        return self.issue_agent_certificate(agent_id, public_key, days)

    def issue_agent_certificate(
        self, agent_id: str, public_key: ec.EllipticCurvePublicKey, days: int
    ) -> str:
        try:
            agent_id = str(uuid.UUID(agent_id))
        except ValueError:
            raise CaError(f"{agent_id!r} is not an agent id (a UUID)") from None
        certificate = (
            self._builder(
                x509.Name(
                    [
                        x509.NameAttribute(NameOID.ORGANIZATION_NAME, "AAMI agents"),
                        x509.NameAttribute(NameOID.COMMON_NAME, agent_id),
                    ]
                ),
                public_key,
                days,
            )
            .add_extension(
                x509.SubjectAlternativeName(
                    [x509.UniformResourceIdentifier(AGENT_URI_PREFIX + agent_id)]
                ),
                critical=False,
            )
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
            .sign(self.key, hashes.SHA256())
        )
        return certificate.public_bytes(serialization.Encoding.PEM).decode()


def new_agent_key_pair(
    authority: CertificateAuthority, agent_id: str, days: int
) -> tuple[bytes, bytes]:
    """A key made here and its certificate, for operators who deliver both to the host."""
    key = ec.generate_private_key(ec.SECP256R1())
    certificate = authority.issue_agent_certificate(agent_id, key.public_key(), days)
    return _key_pem(key), certificate.encode()


def write_key_pair(
    directory: Path, name: str, key_pem: bytes, cert_pem: bytes
) -> tuple[Path, Path]:
    key_path, cert_path = directory / f"{name}.key", directory / f"{name}.crt"
    _write_private(key_path, key_pem)
    cert_path.write_bytes(cert_pem)
    return key_path, cert_path


def init_ca(directory: Path, name: str = "AAMI CA", days: int = 3650) -> CertificateAuthority:
    """Create a new CA in ``directory``; refuses to overwrite an existing one."""
    if (directory / CA_KEY_FILE).exists():
        raise CaError(f"a CA already exists in {directory}: move it away to make a new one")
    key = ec.generate_private_key(ec.SECP384R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = _now()
    certificate = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA384())
    )
    _write_private(directory / CA_KEY_FILE, _key_pem(key))
    (directory / CA_CERT_FILE).write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    return CertificateAuthority(certificate, key)


def load_ca(directory: Path) -> CertificateAuthority:
    try:
        certificate = x509.load_pem_x509_certificate((directory / CA_CERT_FILE).read_bytes())
        key = serialization.load_pem_private_key(
            (directory / CA_KEY_FILE).read_bytes(), password=None
        )
    except FileNotFoundError:
        raise CaError(f"no CA in {directory}: create one with 'aami-server ca init'") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise CaError(f"{directory / CA_KEY_FILE} is not an ECDSA key")
    return CertificateAuthority(certificate, key)


def agent_id_from_x509(certificate: x509.Certificate) -> str | None:
    """The agent id a certificate names (SAN URI first, then CN), as for ``getpeercert``."""
    try:
        san = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    except x509.ExtensionNotFound:
        uris: list[str] = []
    else:
        uris = san.value.get_values_for_type(x509.UniformResourceIdentifier)
    for uri in uris:
        if uri.startswith(AGENT_URI_PREFIX):
            return uri[len(AGENT_URI_PREFIX) :]
    for attribute in certificate.subject.get_attributes_for_oid(NameOID.COMMON_NAME):
        return str(attribute.value)
    return None


def agent_id_from_pem(pem: str) -> str | None:
    """The agent id named by a PEM certificate; None if it names none or is unreadable."""
    try:
        certificate = x509.load_pem_x509_certificate(pem.encode())
    except ValueError:
        return None
    return agent_id_from_x509(certificate)


def expires_at(certificate_pem: str) -> dt.datetime:
    return x509.load_pem_x509_certificate(certificate_pem.encode()).not_valid_after_utc


def serial_number(certificate_pem: str) -> str:
    return format(x509.load_pem_x509_certificate(certificate_pem.encode()).serial_number, "x")


def agent_id_from_certificate(der_or_dict: dict[str, object]) -> str | None:
    """The agent id named by a peer certificate as Python's ``ssl`` reports it."""
    for kind, value in der_or_dict.get("subjectAltName", ()):  # type: ignore[attr-defined]
        if kind == "URI" and str(value).startswith(AGENT_URI_PREFIX):
            return str(value)[len(AGENT_URI_PREFIX) :]
    for rdn in der_or_dict.get("subject", ()):  # type: ignore[attr-defined]
        for key, value in rdn:
            if key == "commonName":
                return str(value)
    return None

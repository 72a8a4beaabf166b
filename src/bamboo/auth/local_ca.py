"""The embedded server's own certificate authority.

A stand-alone Bamboo has no grid CA to rely on, so on first start it creates a small CA under
its home directory, issues the HTTPS server certificate from it and, through ``bamboo cert
issue``, user certificates and RFC 3820 or legacy proxies, optionally carrying VOMS FQANs signed
by the same CA acting as VOMS server. Private keys are created with mode 0600 from the start.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import secrets
import socket
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from bamboo.auth.voms import VOMS_EXTENSION_OID, AcHolder, build_voms_extension_value
from bamboo.auth.x509 import PROXY_CERT_INFO_OID, parse_slash_dn, proxy_cert_info_value

logger = logging.getLogger(__name__)

CA_CERT_FILE = "ca.pem"
CA_KEY_FILE = "ca.key"
SERVER_CERT_FILE = "server.pem"
SERVER_KEY_FILE = "server.key"

KEY_BITS = 2048
PUBLIC_EXPONENT = 65537
CA_LIFETIME = timedelta(days=3650)
SERVER_LIFETIME = timedelta(days=365)
SERVER_RENEWAL_MARGIN = timedelta(days=7)
USER_LIFETIME = timedelta(days=7)
PROXY_MAX_LIFETIME = timedelta(hours=12)
# Certificates start slightly in the past so that a client whose clock lags still accepts them.
CLOCK_SKEW = timedelta(minutes=5)
VOMS_URI = "localhost:15000"

_CN_MAX_LENGTH = 64
_PROXY_SERIAL_BITS = 31


@dataclass
class LocalCA:
    """The local CA's certificate and private key."""

    cert: x509.Certificate
    key: rsa.RSAPrivateKey

    @classmethod
    def load_or_create(cls, home: Path) -> LocalCA:
        """Load ``home/ca.pem`` and ``home/ca.key``, creating both on first use.

        Args:
            home: the Bamboo home directory (created if missing).

        Returns:
            The CA.

        Raises:
            ValueError: only one of the two files exists, or they do not belong together.
        """
        cert_path, key_path = home / CA_CERT_FILE, home / CA_KEY_FILE
        if cert_path.exists() and key_path.exists():
            cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
            key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
            if not isinstance(key, rsa.RSAPrivateKey) or key.public_key() != cert.public_key():
                raise ValueError(f"{key_path} does not match {cert_path}")
            return cls(cert=cert, key=key)
        if cert_path.exists() or key_path.exists():
            raise ValueError(f"found only one of {cert_path} and {key_path}; remove it to create a new CA")
        home.mkdir(parents=True, exist_ok=True)
        ca = cls._create()
        # The key goes first and exclusively, so a concurrent first start cannot clobber it.
        _write_private_key(key_path, ca.key, replace=False)
        _write_public(cert_path, _pem(ca.cert))
        logger.info("created local CA %s in %s", ca.cert.subject.rfc4514_string(), home)
        return ca

    @classmethod
    def _create(cls) -> LocalCA:
        key = _new_key()
        name = x509.Name(
            [
                x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Bamboo"),
                x509.NameAttribute(
                    NameOID.COMMON_NAME, f"Bamboo Local CA {socket.gethostname()}"[:_CN_MAX_LENGTH]
                ),
            ]
        )
        now = datetime.now(UTC)
        cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - CLOCK_SKEW)
            .not_valid_after(now + CA_LIFETIME)
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(_key_usage(key_cert_sign=True, crl_sign=True), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .sign(key, hashes.SHA256())
        )
        return cls(cert=cert, key=key)

    def authority_key_identifier(self) -> x509.AuthorityKeyIdentifier:
        """The AKI extension for certificates this CA signs."""
        ski = self.cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
        return x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski)


def ensure_server_certificate(
    ca: LocalCA,
    home: Path,
    hostnames: Sequence[str] = ("localhost",),
    ips: Sequence[str] = ("127.0.0.1", "::1"),
) -> tuple[Path, Path]:
    """Make sure ``home/server.pem`` and ``home/server.key`` hold a usable server certificate.

    A new certificate is issued when either file is missing, the certificate expires within
    :data:`SERVER_RENEWAL_MARGIN`, was not issued by ``ca``, or does not cover every requested
    host name and address.

    Args:
        ca: the issuing CA.
        home: the Bamboo home directory.
        hostnames: DNS names for the subject alternative name; the first is also the CN.
        ips: IP addresses for the subject alternative name.

    Returns:
        The certificate and key paths.

    Raises:
        ValueError: no host name given, or an entry of ``ips`` is not an IP address.
    """
    if not hostnames:
        raise ValueError("at least one host name is required")
    cert_path, key_path = home / SERVER_CERT_FILE, home / SERVER_KEY_FILE
    wanted: list[x509.GeneralName] = [x509.DNSName(name) for name in hostnames]
    wanted += [x509.IPAddress(ipaddress.ip_address(ip)) for ip in ips]
    now = datetime.now(UTC)
    if key_path.exists() and _server_certificate_usable(cert_path, ca, wanted, now):
        return cert_path, key_path

    key = _new_key()
    cert = (
        _builder(
            ca, key, x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hostnames[0])]), now, SERVER_LIFETIME
        )
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_key_usage(digital_signature=True, key_encipherment=True), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectAlternativeName(wanted), critical=False)
        .sign(ca.key, hashes.SHA256())
    )
    home.mkdir(parents=True, exist_ok=True)
    _write_private_key(key_path, key, replace=True)
    _write_public(cert_path, _pem(cert))
    logger.info(
        "issued server certificate for %s, valid until %s", ", ".join(hostnames), cert.not_valid_after_utc
    )
    return cert_path, key_path


def issue_user_credentials(
    ca: LocalCA,
    *,
    dn: str,
    out_prefix: Path,
    proxy: bool = False,
    legacy_proxy: bool = False,
    limited: bool = False,
    fqans: Sequence[str] = (),
    vo: str | None = None,
    lifetime: timedelta = USER_LIFETIME,
    now: datetime | None = None,
) -> tuple[Path, Path]:
    """Issue a user certificate, optionally with a proxy and VOMS FQANs.

    ``PREFIX.pem`` holds the leaf first, then the rest of the chain without the CA (proxy,
    user certificate); ``PREFIX.key`` holds the leaf's key (unencrypted PKCS#8, mode 0600).
    That layout loads with ``ssl.SSLContext.load_cert_chain`` and httpx ``cert=(pem, key)``.

    Args:
        ca: the issuing CA.
        dn: the user DN in slash form, e.g. ``/DC=ch/DC=cern/OU=Users/CN=John Doe``.
        out_prefix: output path without suffix.
        proxy: also issue an RFC 3820 proxy and make it the leaf.
        legacy_proxy: issue a legacy GT2 proxy (``CN=proxy``) instead; implies ``proxy``.
        limited: make the proxy limited (``CN=limited proxy`` or the limited policy).
        fqans: VOMS FQANs, e.g. ``/atlas/Role=production``; signed by the CA as VOMS server
            and put into the proxy, or into the user certificate when there is no proxy.
        vo: the VO of the FQANs; defaults to the first group of the first FQAN.
        lifetime: validity of the user certificate; a proxy lives at most
            :data:`PROXY_MAX_LIFETIME`.
        now: issuing time (defaults to the current time).

    Returns:
        The certificate and key paths.

    Raises:
        ValueError: a malformed DN or FQAN, ``limited`` without a proxy, or a non-positive
            lifetime.
    """
    with_proxy = proxy or legacy_proxy
    if limited and not with_proxy:
        raise ValueError("limited requires a proxy")
    if lifetime <= timedelta(0):
        raise ValueError("lifetime must be positive")
    subject = parse_slash_dn(dn)
    issued_at = now or datetime.now(UTC)
    # A malformed first FQAN yields a nonsense VO here, but build_voms_extension_value rejects it.
    vo_name = vo if vo is not None else (fqans[0].lstrip("/").split("/")[0] if fqans else "")

    user_key = _new_key()
    user_serial = x509.random_serial_number()
    user_builder = (
        _builder(ca, user_key, subject, issued_at, lifetime, serial=user_serial)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_key_usage(digital_signature=True, key_encipherment=True), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
    )
    if fqans and not with_proxy:
        holder = AcHolder(issuer=ca.cert.subject, serial=user_serial)
        user_builder = _with_voms(user_builder, ca, holder, fqans, vo_name, issued_at, issued_at + lifetime)
    user_cert = user_builder.sign(ca.key, hashes.SHA256())
    if not with_proxy:
        return _write_credentials(out_prefix, [user_cert], user_key)

    proxy_key = _new_key()
    proxy_serial = secrets.randbits(_PROXY_SERIAL_BITS) or 1
    if legacy_proxy:
        proxy_cn = "limited proxy" if limited else "proxy"
    else:
        proxy_cn = str(proxy_serial)
    proxy_rdn = x509.RelativeDistinguishedName([x509.NameAttribute(NameOID.COMMON_NAME, proxy_cn)])
    proxy_subject = x509.Name([*subject.rdns, proxy_rdn])
    proxy_not_after = min(issued_at + min(lifetime, PROXY_MAX_LIFETIME), user_cert.not_valid_after_utc)
    proxy_builder = (
        x509.CertificateBuilder()
        .subject_name(proxy_subject)
        .issuer_name(user_cert.subject)
        .public_key(proxy_key.public_key())
        .serial_number(proxy_serial)
        .not_valid_before(issued_at - CLOCK_SKEW)
        .not_valid_after(proxy_not_after)
        .add_extension(_key_usage(digital_signature=True, key_encipherment=True), critical=True)
    )
    if not legacy_proxy:
        proxy_builder = proxy_builder.add_extension(
            x509.UnrecognizedExtension(PROXY_CERT_INFO_OID, proxy_cert_info_value(limited=limited)),
            critical=True,
        )
    if fqans:
        proxy_builder = _with_voms(
            proxy_builder, ca, AcHolder.of(user_cert), fqans, vo_name, issued_at, proxy_not_after
        )
    proxy_cert = proxy_builder.sign(user_key, hashes.SHA256())
    return _write_credentials(out_prefix, [proxy_cert, user_cert], proxy_key)


def _with_voms(
    builder: x509.CertificateBuilder,
    ca: LocalCA,
    holder: AcHolder,
    fqans: Sequence[str],
    vo: str,
    not_before: datetime,
    not_after: datetime,
) -> x509.CertificateBuilder:
    value = build_voms_extension_value(
        holder=holder,
        fqans=fqans,
        vo=vo,
        signer_cert=ca.cert,
        signer_key=ca.key,
        not_before=not_before - CLOCK_SKEW,
        not_after=not_after,
        uri=VOMS_URI,
    )
    return builder.add_extension(x509.UnrecognizedExtension(VOMS_EXTENSION_OID, value), critical=False)


def _new_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=PUBLIC_EXPONENT, key_size=KEY_BITS)


def _key_usage(
    *,
    digital_signature: bool = False,
    key_encipherment: bool = False,
    key_cert_sign: bool = False,
    crl_sign: bool = False,
) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=digital_signature,
        content_commitment=False,
        key_encipherment=key_encipherment,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=key_cert_sign,
        crl_sign=crl_sign,
        encipher_only=False,
        decipher_only=False,
    )


def _builder(
    ca: LocalCA,
    key: rsa.RSAPrivateKey,
    subject: x509.Name,
    now: datetime,
    lifetime: timedelta,
    *,
    serial: int | None = None,
) -> x509.CertificateBuilder:
    """A builder for a certificate signed by ``ca``, with the fields every such certificate has."""
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(ca.cert.subject)
        .public_key(key.public_key())
        .serial_number(serial if serial is not None else x509.random_serial_number())
        .not_valid_before(now - CLOCK_SKEW)
        .not_valid_after(now + lifetime)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(ca.authority_key_identifier(), critical=False)
    )


def _server_certificate_usable(
    cert_path: Path, ca: LocalCA, wanted: Sequence[x509.GeneralName], now: datetime
) -> bool:
    try:
        cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
        cert.verify_directly_issued_by(ca.cert)
        names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except (OSError, ValueError, TypeError, InvalidSignature, x509.ExtensionNotFound):
        return False
    return cert.not_valid_after_utc - now >= SERVER_RENEWAL_MARGIN and all(name in names for name in wanted)


def _pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def _write_credentials(
    out_prefix: Path, chain: Sequence[x509.Certificate], key: rsa.RSAPrivateKey
) -> tuple[Path, Path]:
    cert_path = out_prefix.parent / f"{out_prefix.name}.pem"
    key_path = out_prefix.parent / f"{out_prefix.name}.key"
    out_prefix.parent.mkdir(parents=True, exist_ok=True)
    _write_private_key(key_path, key, replace=True)
    _write_public(cert_path, b"".join(_pem(cert) for cert in chain))
    return cert_path, key_path


def _write_private_key(path: Path, key: rsa.RSAPrivateKey, *, replace: bool) -> None:
    """Write ``key`` as PKCS#8 PEM into a file that is mode 0600 from the moment it exists.

    With ``replace`` the key goes to a fresh temporary file renamed over ``path``, otherwise
    ``path`` itself is created exclusively (failing if it exists).
    """
    data = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    target = path.with_name(f".{path.name}.{secrets.token_hex(8)}.tmp") if replace else path
    _write_new_file(target, data, 0o600)
    if replace:
        os.replace(target, path)


def _write_public(path: Path, data: bytes) -> None:
    """Atomically replace ``path`` with world-readable ``data``."""
    temporary = path.with_name(f".{path.name}.{secrets.token_hex(8)}.tmp")
    _write_new_file(temporary, data, 0o644)
    os.chmod(temporary, 0o644)
    os.replace(temporary, path)


def _write_new_file(path: Path, data: bytes, mode: int) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
    except BaseException:
        path.unlink(missing_ok=True)
        raise

"""Client certificate identity: DN formatting, trust anchors and grid proxy chain verification.

PanDA authenticates X.509 clients through mod_ssl/gridsite, which hand the application the
subject in OpenSSL's legacy slash form and accept RFC 3820 and legacy (GT2) proxy certificates.
This module reproduces that view: :func:`verify_client_chain` builds and checks the path from a
client's leaf certificate to a trusted CA itself (for deployments where the TLS terminator only
forwards the certificates), while :func:`describe_verified_chain` only interprets a chain that
OpenSSL already verified during the handshake. VOMS attributes are decoded by
:mod:`bamboo.auth.voms`.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TypeVar
from urllib.parse import unquote

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from pyasn1.codec.der import decoder as der_decoder
from pyasn1.codec.der import encoder as der_encoder
from pyasn1.error import PyAsn1Error
from pyasn1.type import namedtype, univ

logger = logging.getLogger(__name__)

MAX_CHAIN_LENGTH = 10
MAX_PEM_BYTES = 64 * 1024

PROXY_CERT_INFO_OID = x509.ObjectIdentifier("1.3.6.1.5.5.7.1.14")
INHERIT_ALL_POLICY_OID = x509.ObjectIdentifier("1.3.6.1.5.5.7.21.1")
LIMITED_PROXY_POLICY_OID = x509.ObjectIdentifier("1.3.6.1.4.1.3536.1.1.1.9")

_LEGACY_PROXY_CNS = {"proxy": False, "limited proxy": True}

_SHORT_NAMES: dict[x509.ObjectIdentifier, str] = {
    NameOID.COUNTRY_NAME: "C",
    NameOID.STATE_OR_PROVINCE_NAME: "ST",
    NameOID.LOCALITY_NAME: "L",
    NameOID.ORGANIZATION_NAME: "O",
    NameOID.ORGANIZATIONAL_UNIT_NAME: "OU",
    NameOID.COMMON_NAME: "CN",
    NameOID.DOMAIN_COMPONENT: "DC",
    NameOID.EMAIL_ADDRESS: "emailAddress",
    NameOID.USER_ID: "UID",
    NameOID.SERIAL_NUMBER: "serialNumber",
}
_OIDS_BY_SHORT_NAME = {short: oid for oid, short in _SHORT_NAMES.items()}
# The legacy form does not escape separators, so "/" and "+" only start a new attribute when
# followed by an attribute type and "="; anything else (e.g. "CN=host/x.example.org") is value.
_ATTRIBUTE_TYPE = "(?:" + "|".join(sorted(_OIDS_BY_SHORT_NAME, key=len, reverse=True)) + r"|\d+(?:\.\d+)+)="
_RDN_SEPARATOR = re.compile(r"/(?=" + _ATTRIBUTE_TYPE + ")")
_ATTRIBUTE_SEPARATOR = re.compile(r"\+(?=" + _ATTRIBUTE_TYPE + ")")
_DOTTED_OID = re.compile(r"\d+(?:\.\d+)+")
# OpenSSL hash links such as 1a2b3c4d.0; CRLs (.r0) and IGTF metadata files do not match.
_HASH_FILE = re.compile(r".+\.[0-9]")

_PEM_BEGIN = b"-----BEGIN CERTIFICATE-----"

_E = TypeVar("_E", bound=x509.ExtensionType)


class CertificateRejected(Exception):
    """The client's certificate chain is not acceptable; the message is safe to show the client."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class _ProxyPolicy(univ.Sequence):
    componentType = namedtype.NamedTypes(
        namedtype.NamedType("policyLanguage", univ.ObjectIdentifier()),
        namedtype.OptionalNamedType("policy", univ.OctetString()),
    )


class _ProxyCertInfo(univ.Sequence):
    componentType = namedtype.NamedTypes(
        namedtype.OptionalNamedType("pCPathLenConstraint", univ.Integer()),
        namedtype.NamedType("proxyPolicy", _ProxyPolicy()),
    )


@dataclass(frozen=True, slots=True)
class _ProxyInfo:
    limited: bool
    path_length: int | None
    rfc3820: bool


@dataclass(frozen=True)
class VerifiedCertificate:
    """What a client certificate chain proves.

    Attributes:
        dn: slash DN of the leaf; proxies keep their ``/CN=proxy``, ``/CN=limited proxy`` or
            numeric RFC 3820 components, as ``SSL_CLIENT_S_DN`` does.
        end_entity_dn: slash DN of the first certificate that is not a proxy.
        is_proxy: the leaf is a proxy certificate.
        is_limited: some proxy in the chain is limited.
        fqans: VOMS FQANs from a trusted attribute certificate in the chain, short form
            (``/atlas`` rather than ``/atlas/Role=NULL/Capability=NULL``).
        not_after: when the credential stops being usable: the earliest expiry in the chain.
    """

    dn: str
    end_entity_dn: str
    is_proxy: bool
    is_limited: bool
    fqans: tuple[str, ...]
    not_after: datetime


def slash_dn(name: x509.Name) -> str:
    """Format a name the way mod_ssl/gridsite export ``SSL_CLIENT_S_DN`` (OpenSSL legacy form).

    Args:
        name: a certificate subject or issuer.

    Returns:
        The RDNs in certificate order, e.g. ``/DC=ch/DC=cern/OU=Users/CN=jdoe``; multi-valued
        RDNs joined with ``+``; attribute types without a short name as dotted OIDs.
    """
    return "".join("/" + "+".join(_attribute_text(attribute) for attribute in rdn) for rdn in name.rdns)


def _attribute_text(attribute: x509.NameAttribute) -> str:
    short = _SHORT_NAMES.get(attribute.oid, attribute.oid.dotted_string)
    # Only x500UniqueIdentifier carries bytes; hex keeps the DN printable.
    value = attribute.value if isinstance(attribute.value, str) else "#" + attribute.value.hex()
    return f"{short}={value}"


def parse_slash_dn(dn: str) -> x509.Name:
    """Parse a slash-form DN into a name; the inverse of :func:`slash_dn`.

    Args:
        dn: e.g. ``/DC=ch/DC=cern/OU=Users/CN=John Doe``.

    Returns:
        The name with RDNs in the order written.

    Raises:
        ValueError: the DN is empty, does not start with ``/TYPE=``, has an unknown attribute
            type or an empty value, or a value the attribute type does not allow.
    """
    pieces = _RDN_SEPARATOR.split(dn)
    if len(pieces) < 2 or pieces[0]:
        raise ValueError(f"malformed DN {dn!r}: expected /TYPE=value components")
    rdns = []
    for piece in pieces[1:]:
        attributes = []
        for assignment in _ATTRIBUTE_SEPARATOR.split(piece):
            short, _, value = assignment.partition("=")
            if not value:
                raise ValueError(f"malformed DN {dn!r}: empty value for {short}")
            oid = _OIDS_BY_SHORT_NAME.get(short)
            if oid is None:
                if not _DOTTED_OID.fullmatch(short):
                    raise ValueError(f"malformed DN {dn!r}: unknown attribute type {short!r}")
                oid = x509.ObjectIdentifier(short)
            attributes.append(x509.NameAttribute(oid, value))
        rdns.append(x509.RelativeDistinguishedName(attributes))
    return x509.Name(rdns)


class TrustStore:
    """A set of trusted CA certificates, looked up by subject name."""

    def __init__(self, certificates: Iterable[x509.Certificate] = ()) -> None:
        """Index certificates, ignoring duplicates.

        Args:
            certificates: the trust anchors.
        """
        self._by_der: dict[bytes, x509.Certificate] = {}
        self._by_subject: dict[x509.Name, list[x509.Certificate]] = {}
        for cert in certificates:
            der = cert.public_bytes(Encoding.DER)
            if der in self._by_der:
                continue
            self._by_der[der] = cert
            self._by_subject.setdefault(cert.subject, []).append(cert)

    @classmethod
    def from_paths(cls, files_and_dirs: Iterable[Path]) -> TrustStore:
        """Load PEM files and IGTF-style CA directories.

        A directory contributes its ``*.pem`` files and OpenSSL hash files (``*.0`` .. ``*.9``);
        signing policies, namespaces, CRLs and unreadable or non-PEM files in it are skipped
        with a warning. A file named explicitly must hold at least one certificate.

        Args:
            files_and_dirs: PEM files (each may hold several certificates) and directories.

        Returns:
            The store holding every distinct certificate found.

        Raises:
            OSError: an explicitly named file cannot be read.
            ValueError: an explicitly named file holds no valid PEM certificate.
        """
        certificates: list[x509.Certificate] = []
        for path in files_and_dirs:
            if path.is_dir():
                certificates.extend(_scan_ca_directory(path))
            else:
                certificates.extend(x509.load_pem_x509_certificates(path.read_bytes()))
        return cls(certificates)

    def by_subject(self, name: x509.Name) -> tuple[x509.Certificate, ...]:
        """Trusted certificates whose subject is ``name`` (candidates for an issuer)."""
        return tuple(self._by_subject.get(name, ()))

    def __contains__(self, cert: object) -> bool:
        return isinstance(cert, x509.Certificate) and cert.public_bytes(Encoding.DER) in self._by_der

    def __iter__(self) -> Iterator[x509.Certificate]:
        return iter(self._by_der.values())

    def __len__(self) -> int:
        return len(self._by_der)


def _scan_ca_directory(directory: Path) -> list[x509.Certificate]:
    found: list[x509.Certificate] = []
    for entry in sorted(directory.iterdir()):
        if not (entry.suffix == ".pem" or _HASH_FILE.fullmatch(entry.name)):
            continue
        try:
            if not entry.is_file():
                continue
            found.extend(x509.load_pem_x509_certificates(entry.read_bytes()))
        except (OSError, ValueError) as exc:
            logger.warning("skipping CA file %s: %s", entry, type(exc).__name__)
    return found


def load_pem_chain(data: bytes) -> list[x509.Certificate]:
    """Parse one or more PEM certificates, leaf first.

    Args:
        data: PEM text; other PEM blocks (e.g. keys) are ignored.

    Returns:
        The certificates in the order given.

    Raises:
        CertificateRejected: the data is larger than :data:`MAX_PEM_BYTES` or holds no valid
            certificate.
    """
    if len(data) > MAX_PEM_BYTES:
        raise CertificateRejected("certificate data too large")
    if _PEM_BEGIN not in data:
        raise CertificateRejected("no certificate in client data")
    try:
        return x509.load_pem_x509_certificates(data)
    except ValueError:
        raise CertificateRejected("malformed client certificate") from None


def chain_from_escaped_pem(header_value: str) -> list[x509.Certificate]:
    """Decode nginx's ``$ssl_client_escaped_cert`` (URL-encoded PEM, possibly several blocks).

    Args:
        header_value: the header as received.

    Returns:
        The certificates in the order given, leaf first.

    Raises:
        CertificateRejected: the value is too large, not ASCII once unescaped, or not PEM.
    """
    if len(header_value) > MAX_PEM_BYTES:
        raise CertificateRejected("certificate data too large")
    try:
        # Plain unquote: base64 uses "+", which must not become a space.
        data = unquote(header_value, encoding="ascii", errors="strict").encode("ascii")
    except UnicodeError:
        raise CertificateRejected("malformed client certificate") from None
    return load_pem_chain(data)


def proxy_cert_info_value(*, limited: bool, path_length: int | None = None) -> bytes:
    """DER value of an RFC 3820 ProxyCertInfo extension.

    Args:
        limited: use the limited-proxy policy instead of inherit-all.
        path_length: how many further proxies may be signed below this one; ``None`` for any.

    Returns:
        The extension value, to be added critical under :data:`PROXY_CERT_INFO_OID`.
    """
    info = _ProxyCertInfo()
    if path_length is not None:
        info["pCPathLenConstraint"] = path_length
    language = LIMITED_PROXY_POLICY_OID if limited else INHERIT_ALL_POLICY_OID
    info["proxyPolicy"]["policyLanguage"] = language.dotted_string
    return der_encoder.encode(info)


def verify_client_chain(
    chain: Sequence[x509.Certificate],
    trust: TrustStore,
    *,
    now: datetime,
    voms_trust: TrustStore | None = None,
) -> VerifiedCertificate:
    """Verify a client chain up to a trust anchor, accepting RFC 3820 and legacy proxies.

    Args:
        chain: the leaf first, then any intermediates the client sent, in any order.
        trust: the trusted CAs; the path ends at the first certificate found here.
        now: the time to check validity at (timezone-aware).
        voms_trust: trusted VOMS signers; without it attribute certificates give no FQANs.

    Returns:
        The identity the chain proves.

    Raises:
        CertificateRejected: with the reason the chain is not acceptable.
        ValueError: ``now`` is naive.
    """
    _require_aware(now)
    if not chain:
        raise CertificateRejected("no client certificate")
    if len(chain) > MAX_CHAIN_LENGTH:
        raise CertificateRejected("certificate chain too long")
    path, anchor = _build_path(chain, trust)
    for cert in (*path, anchor):
        _check_validity(cert, now)
        _check_critical_extensions(cert)
    end_entity_index, limited = _check_path_roles(path, anchor)
    return _describe(path, end_entity_index, limited, voms_trust=voms_trust, now=now)


def describe_verified_chain(
    chain: Sequence[x509.Certificate], *, voms_trust: TrustStore | None, now: datetime
) -> VerifiedCertificate:
    """Interpret a chain OpenSSL already verified during the TLS handshake.

    The CA path is not checked again; proxies are recognised by their ProxyCertInfo extension
    or, for legacy proxies, by their subject. When the chain is only a proxy leaf, the end
    entity is taken to be the proxy's issuer and VOMS holder checks are skipped.

    Args:
        chain: the verified chain, leaf first (may be the leaf alone).
        voms_trust: trusted VOMS signers; without it attribute certificates give no FQANs.
        now: the time to check VOMS attribute validity at (timezone-aware).

    Returns:
        The identity the chain proves.

    Raises:
        CertificateRejected: the chain is empty or a proxy or VOMS extension is malformed.
        ValueError: ``now`` is naive.
    """
    _require_aware(now)
    if not chain:
        raise CertificateRejected("no client certificate")
    limited = False
    end_entity_index = len(chain)
    for index, cert in enumerate(chain):
        issuer = chain[index + 1] if index + 1 < len(chain) else None
        info = _proxy_info(cert)
        # Something a CA signed is never a proxy, whatever its last CN says.
        if info is None or (not info.rfc3820 and issuer is not None and _is_ca(issuer)):
            end_entity_index = index
            break
        limited = limited or info.limited
    return _describe(list(chain), end_entity_index, limited, voms_trust=voms_trust, now=now)


def _describe(
    path: Sequence[x509.Certificate],
    end_entity_index: int,
    limited: bool,
    *,
    voms_trust: TrustStore | None,
    now: datetime,
) -> VerifiedCertificate:
    # voms builds on this module's TrustStore and CertificateRejected, so it is imported late.
    from bamboo.auth.voms import fqans_from_certificate

    if end_entity_index < len(path):
        end_entity: x509.Certificate | None = path[end_entity_index]
        end_entity_dn = slash_dn(path[end_entity_index].subject)
    else:
        end_entity = None
        end_entity_dn = slash_dn(path[-1].issuer)
    fqans: tuple[str, ...] = ()
    # The attribute certificate closest to the leaf wins, as voms-proxy-info reports it.
    for cert in path[: end_entity_index + 1]:
        fqans = fqans_from_certificate(cert, voms_trust=voms_trust, now=now, holder=end_entity)
        if fqans:
            break
    return VerifiedCertificate(
        dn=slash_dn(path[0].subject),
        end_entity_dn=end_entity_dn,
        is_proxy=end_entity_index > 0,
        is_limited=limited,
        fqans=fqans,
        not_after=min(cert.not_valid_after_utc for cert in path),
    )


def _require_aware(now: datetime) -> None:
    if now.tzinfo is None:
        raise ValueError("now must be timezone-aware")


def _fingerprint(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(Encoding.DER)


def _signed_by(cert: x509.Certificate, issuer: x509.Certificate) -> bool:
    try:
        cert.verify_directly_issued_by(issuer)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


def _build_path(
    chain: Sequence[x509.Certificate], trust: TrustStore
) -> tuple[list[x509.Certificate], x509.Certificate]:
    """Follow issuer names from the leaf to a trust anchor; returns (path without anchor, anchor)."""
    path = [chain[0]]
    used = {_fingerprint(chain[0])}
    pool = {_fingerprint(cert): cert for cert in chain[1:]}
    while True:
        current = path[-1]
        trusted = trust.by_subject(current.issuer)
        anchor = next((ca for ca in trusted if _signed_by(current, ca)), None)
        if anchor is not None:
            return path, anchor
        named = [cert for cert in pool.values() if cert.subject == current.issuer]
        unused = [cert for cert in named if _fingerprint(cert) not in used]
        issuer = next((cert for cert in unused if _signed_by(current, cert)), None)
        if issuer is None:
            if trusted or unused:
                raise CertificateRejected(f"signature does not verify: {slash_dn(current.subject)}")
            if named and current.issuer != current.subject:
                raise CertificateRejected("certificate chain contains a loop")
            raise CertificateRejected(f"unknown issuer: {slash_dn(current.issuer)}")
        path.append(issuer)
        used.add(_fingerprint(issuer))


def _check_validity(cert: x509.Certificate, now: datetime) -> None:
    if now < cert.not_valid_before_utc:
        raise CertificateRejected(f"certificate not yet valid: {slash_dn(cert.subject)}")
    if now > cert.not_valid_after_utc:
        raise CertificateRejected(f"certificate expired: {slash_dn(cert.subject)}")


def _extensions(cert: x509.Certificate) -> x509.Extensions:
    try:
        return cert.extensions
    except ValueError:
        raise CertificateRejected(f"malformed certificate extensions: {slash_dn(cert.subject)}") from None


def _check_critical_extensions(cert: x509.Certificate) -> None:
    for extension in _extensions(cert):
        if (
            extension.critical
            and isinstance(extension.value, x509.UnrecognizedExtension)
            and extension.oid != PROXY_CERT_INFO_OID
        ):
            raise CertificateRejected(
                f"unsupported critical extension {extension.oid.dotted_string}: {slash_dn(cert.subject)}"
            )


def _extension_value(cert: x509.Certificate, extension_type: type[_E]) -> _E | None:
    try:
        return _extensions(cert).get_extension_for_class(extension_type).value
    except x509.ExtensionNotFound:
        return None


def _is_ca(cert: x509.Certificate) -> bool:
    constraints = _extension_value(cert, x509.BasicConstraints)
    return constraints is not None and constraints.ca


def _ca_path_length(cert: x509.Certificate) -> int | None:
    constraints = _extension_value(cert, x509.BasicConstraints)
    return None if constraints is None else constraints.path_length


def _key_usage_allows(cert: x509.Certificate, usage: str) -> bool:
    # Without a KeyUsage extension every usage is allowed (RFC 5280 §4.2.1.3).
    key_usage = _extension_value(cert, x509.KeyUsage)
    return key_usage is None or bool(getattr(key_usage, usage))


def _proxy_info(cert: x509.Certificate) -> _ProxyInfo | None:
    """The proxy properties of ``cert``, or ``None`` when it does not look like a proxy."""
    try:
        extension = _extensions(cert).get_extension_for_oid(PROXY_CERT_INFO_OID)
    except x509.ExtensionNotFound:
        return _legacy_proxy_info(cert)
    assert isinstance(extension.value, x509.UnrecognizedExtension)
    try:
        info, rest = der_decoder.decode(extension.value.value, asn1Spec=_ProxyCertInfo())
    except (PyAsn1Error, OverflowError):
        raise CertificateRejected(f"malformed ProxyCertInfo extension: {slash_dn(cert.subject)}") from None
    if rest:
        raise CertificateRejected(f"malformed ProxyCertInfo extension: {slash_dn(cert.subject)}")
    path_length = int(info["pCPathLenConstraint"]) if info["pCPathLenConstraint"].isValue else None
    if path_length is not None and path_length < 0:
        raise CertificateRejected(f"malformed ProxyCertInfo extension: {slash_dn(cert.subject)}")
    language = x509.ObjectIdentifier(str(info["proxyPolicy"]["policyLanguage"]))
    if language == LIMITED_PROXY_POLICY_OID:
        return _ProxyInfo(limited=True, path_length=path_length, rfc3820=True)
    if language == INHERIT_ALL_POLICY_OID:
        return _ProxyInfo(limited=False, path_length=path_length, rfc3820=True)
    raise CertificateRejected(f"unsupported proxy policy {language.dotted_string}: {slash_dn(cert.subject)}")


def _legacy_proxy_info(cert: x509.Certificate) -> _ProxyInfo | None:
    if not _extends_by_one_cn(cert.subject, cert.issuer):
        return None
    (last,) = cert.subject.rdns[-1]
    limited = _LEGACY_PROXY_CNS.get(str(last.value))
    return None if limited is None else _ProxyInfo(limited=limited, path_length=None, rfc3820=False)


def _extends_by_one_cn(subject: x509.Name, issuer_subject: x509.Name) -> bool:
    """RFC 3820 naming: the proxy subject is its issuer's subject plus one trailing CN."""
    rdns = subject.rdns
    if len(rdns) < 2 or len(rdns[-1]) != 1:
        return False
    (last,) = rdns[-1]
    return last.oid == NameOID.COMMON_NAME and x509.Name(rdns[:-1]) == issuer_subject


def _check_path_roles(path: list[x509.Certificate], anchor: x509.Certificate) -> tuple[int, bool]:
    """Check CA, end-entity and proxy rules top-down; returns (end-entity index, limited)."""
    cas = [anchor]
    end_entity_index: int | None = None
    limited = False
    for index in range(len(path) - 1, -1, -1):
        cert = path[index]
        issuer = path[index + 1] if index + 1 < len(path) else anchor
        dn = slash_dn(cert.subject)
        if end_entity_index is None:
            if not _key_usage_allows(issuer, "key_cert_sign"):
                raise CertificateRejected(f"issuer may not sign certificates: {slash_dn(issuer.subject)}")
            if _has_proxy_cert_info(cert):
                raise CertificateRejected(f"proxy certificate issued by a CA: {dn}")
            if _is_ca(cert):
                cas.append(cert)
                continue
            _check_client_usage(cert)
            end_entity_index = index
            continue
        info = _proxy_info(cert)
        if info is None:
            raise CertificateRejected(f"certificate issued by an end-entity certificate is not a proxy: {dn}")
        if not _extends_by_one_cn(cert.subject, issuer.subject):
            raise CertificateRejected(f"proxy subject is not its issuer's subject plus one CN: {dn}")
        if _is_ca(cert):
            raise CertificateRejected(f"proxy certificate must not be a CA: {dn}")
        if not _key_usage_allows(issuer, "digital_signature"):
            raise CertificateRejected(f"issuer may not sign proxies: {slash_dn(issuer.subject)}")
        # Proxies sit below the end entity, so all certificates with a lower index are proxies too.
        if info.path_length is not None and index > info.path_length:
            raise CertificateRejected(f"proxy path length constraint exceeded: {dn}")
        limited = limited or info.limited
    if end_entity_index is None:
        raise CertificateRejected("a CA certificate cannot be used as a client certificate")
    for position, ca in enumerate(cas):
        path_length = _ca_path_length(ca)
        if path_length is not None and len(cas) - position - 1 > path_length:
            raise CertificateRejected(f"CA path length constraint exceeded: {slash_dn(ca.subject)}")
    return end_entity_index, limited


def _has_proxy_cert_info(cert: x509.Certificate) -> bool:
    return any(extension.oid == PROXY_CERT_INFO_OID for extension in _extensions(cert))


def _check_client_usage(cert: x509.Certificate) -> None:
    usage = _extension_value(cert, x509.ExtendedKeyUsage)
    if usage is not None and not (
        ExtendedKeyUsageOID.CLIENT_AUTH in usage or ExtendedKeyUsageOID.ANY_EXTENDED_KEY_USAGE in usage
    ):
        raise CertificateRejected(
            f"certificate not valid for client authentication: {slash_dn(cert.subject)}"
        )

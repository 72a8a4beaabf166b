"""VOMS attribute certificates: reading FQANs from grid proxies and issuing them locally.

A VOMS proxy carries, in extension 1.3.6.1.4.1.8005.100.100.5, one or more RFC 5755 attribute
certificates (ACs) signed by the VO's VOMS server; their FQANs decide roles such as
``/atlas/Role=production``. The embedded server's local CA stands in for a VOMS server so that
tests and single-node installations can hand out role-bearing proxies. The ASN.1 structures are
declared here with pyasn1 because cryptography does not parse attribute certificates.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from pyasn1.codec.der import decoder as der_decoder
from pyasn1.codec.der import encoder as der_encoder
from pyasn1.error import PyAsn1Error
from pyasn1.type import char, namedtype, tag, univ, useful

from bamboo.auth.x509 import CertificateRejected, TrustStore, slash_dn

logger = logging.getLogger(__name__)

VOMS_EXTENSION_OID = x509.ObjectIdentifier("1.3.6.1.4.1.8005.100.100.5")
FQAN_ATTRIBUTE_OID = x509.ObjectIdentifier("1.3.6.1.4.1.8005.100.100.4")

_AC_VERSION_2 = 1
_SHA256_WITH_RSA = "1.2.840.113549.1.1.11"
_RSA_SIGNATURE_HASHES: dict[str, type[hashes.HashAlgorithm]] = {
    "1.2.840.113549.1.1.5": hashes.SHA1,
    "1.2.840.113549.1.1.14": hashes.SHA224,
    _SHA256_WITH_RSA: hashes.SHA256,
    "1.2.840.113549.1.1.12": hashes.SHA384,
    "1.2.840.113549.1.1.13": hashes.SHA512,
}
_DER_NULL = b"\x05\x00"
_NO_REV_AVAIL_OID = "2.5.29.56"
_AUTHORITY_KEY_ID_OID = "2.5.29.35"
_GENERALIZED_TIME_FORMAT = "%Y%m%d%H%M%SZ"
_NULL_CAPABILITY = "/Capability=NULL"
_NULL_ROLE = "/Role=NULL"
# VOMS group and role names: letters, digits, "-", "_" and ".".
_FQAN = re.compile(
    r"(?P<groups>(?:/[A-Za-z0-9_.-]+)+)"
    r"(?:/Role=(?P<role>[A-Za-z0-9_.-]+))?"
    r"(?:/Capability=(?P<cap>[A-Za-z0-9_.-]+))?"
)
_VO_NAME = re.compile(r"[A-Za-z0-9_.-]+")


def _context(number: int, *, constructed: bool) -> tag.Tag:
    return tag.Tag(
        tag.tagClassContext, tag.tagFormatConstructed if constructed else tag.tagFormatSimple, number
    )


class _AttributeTypeAndValue(univ.Sequence):
    componentType = namedtype.NamedTypes(
        namedtype.NamedType("type", univ.ObjectIdentifier()),
        namedtype.NamedType("value", univ.Any()),
    )


class _RelativeDistinguishedName(univ.SetOf):
    componentType = _AttributeTypeAndValue()


class _RDNSequence(univ.SequenceOf):
    componentType = _RelativeDistinguishedName()


class _AnotherName(univ.Sequence):
    componentType = namedtype.NamedTypes(
        namedtype.NamedType("type-id", univ.ObjectIdentifier()),
        namedtype.NamedType("value", univ.Any().subtype(explicitTag=_context(0, constructed=True))),
    )


class _GeneralName(univ.Choice):
    # x400Address and ediPartyName are left out: nothing in VOMS uses them.
    componentType = namedtype.NamedTypes(
        namedtype.NamedType("otherName", _AnotherName().subtype(implicitTag=_context(0, constructed=True))),
        namedtype.NamedType(
            "rfc822Name", char.IA5String().subtype(implicitTag=_context(1, constructed=False))
        ),
        namedtype.NamedType("dNSName", char.IA5String().subtype(implicitTag=_context(2, constructed=False))),
        # Name is a CHOICE, so its tag is explicit even in an implicitly tagged module.
        namedtype.NamedType(
            "directoryName", _RDNSequence().subtype(explicitTag=_context(4, constructed=True))
        ),
        namedtype.NamedType(
            "uniformResourceIdentifier", char.IA5String().subtype(implicitTag=_context(6, constructed=False))
        ),
        namedtype.NamedType(
            "iPAddress", univ.OctetString().subtype(implicitTag=_context(7, constructed=False))
        ),
        namedtype.NamedType(
            "registeredID", univ.ObjectIdentifier().subtype(implicitTag=_context(8, constructed=False))
        ),
    )


class _GeneralNames(univ.SequenceOf):
    componentType = _GeneralName()


class _AlgorithmIdentifier(univ.Sequence):
    componentType = namedtype.NamedTypes(
        namedtype.NamedType("algorithm", univ.ObjectIdentifier()),
        namedtype.OptionalNamedType("parameters", univ.Any()),
    )


class _IssuerSerial(univ.Sequence):
    componentType = namedtype.NamedTypes(
        namedtype.NamedType("issuer", _GeneralNames()),
        namedtype.NamedType("serial", univ.Integer()),
        namedtype.OptionalNamedType("issuerUID", univ.BitString()),
    )


class _ObjectDigestInfo(univ.Sequence):
    componentType = namedtype.NamedTypes(
        namedtype.NamedType("digestedObjectType", univ.Enumerated()),
        namedtype.OptionalNamedType("otherObjectTypeID", univ.ObjectIdentifier()),
        namedtype.NamedType("digestAlgorithm", _AlgorithmIdentifier()),
        namedtype.NamedType("objectDigest", univ.BitString()),
    )


class _Holder(univ.Sequence):
    componentType = namedtype.NamedTypes(
        namedtype.OptionalNamedType(
            "baseCertificateID", _IssuerSerial().subtype(implicitTag=_context(0, constructed=True))
        ),
        namedtype.OptionalNamedType(
            "entityName", _GeneralNames().subtype(implicitTag=_context(1, constructed=True))
        ),
        namedtype.OptionalNamedType(
            "objectDigestInfo", _ObjectDigestInfo().subtype(implicitTag=_context(2, constructed=True))
        ),
    )


class _V2Form(univ.Sequence):
    componentType = namedtype.NamedTypes(
        namedtype.OptionalNamedType("issuerName", _GeneralNames()),
        namedtype.OptionalNamedType(
            "baseCertificateID", _IssuerSerial().subtype(implicitTag=_context(0, constructed=True))
        ),
        namedtype.OptionalNamedType(
            "objectDigestInfo", _ObjectDigestInfo().subtype(implicitTag=_context(1, constructed=True))
        ),
    )


class _AttCertIssuer(univ.Choice):
    componentType = namedtype.NamedTypes(
        namedtype.NamedType("v1Form", _GeneralNames()),
        namedtype.NamedType("v2Form", _V2Form().subtype(implicitTag=_context(0, constructed=True))),
    )


class _AttCertValidityPeriod(univ.Sequence):
    componentType = namedtype.NamedTypes(
        namedtype.NamedType("notBeforeTime", useful.GeneralizedTime()),
        namedtype.NamedType("notAfterTime", useful.GeneralizedTime()),
    )


class _Attribute(univ.Sequence):
    componentType = namedtype.NamedTypes(
        namedtype.NamedType("type", univ.ObjectIdentifier()),
        namedtype.NamedType("values", univ.SetOf(componentType=univ.Any())),
    )


class _Extension(univ.Sequence):
    componentType = namedtype.NamedTypes(
        namedtype.NamedType("extnID", univ.ObjectIdentifier()),
        namedtype.DefaultedNamedType("critical", univ.Boolean(False)),
        namedtype.NamedType("extnValue", univ.OctetString()),
    )


class _AttributeCertificateInfo(univ.Sequence):
    componentType = namedtype.NamedTypes(
        namedtype.NamedType("version", univ.Integer()),
        namedtype.NamedType("holder", _Holder()),
        namedtype.NamedType("issuer", _AttCertIssuer()),
        namedtype.NamedType("signature", _AlgorithmIdentifier()),
        namedtype.NamedType("serialNumber", univ.Integer()),
        namedtype.NamedType("attrCertValidityPeriod", _AttCertValidityPeriod()),
        namedtype.NamedType("attributes", univ.SequenceOf(componentType=_Attribute())),
        namedtype.OptionalNamedType("issuerUniqueID", univ.BitString()),
        namedtype.OptionalNamedType("extensions", univ.SequenceOf(componentType=_Extension())),
    )


class _AttributeCertificate(univ.Sequence):
    # acinfo stays opaque here so the signature is checked over the exact bytes received.
    componentType = namedtype.NamedTypes(
        namedtype.NamedType("acinfo", univ.Any()),
        namedtype.NamedType("signatureAlgorithm", _AlgorithmIdentifier()),
        namedtype.NamedType("signatureValue", univ.BitString()),
    )


class _VomsExtension(univ.SequenceOf):
    componentType = univ.SequenceOf(componentType=univ.Any())


class _IetfAttrValue(univ.Choice):
    componentType = namedtype.NamedTypes(
        namedtype.NamedType("octets", univ.OctetString()),
        namedtype.NamedType("oid", univ.ObjectIdentifier()),
        namedtype.NamedType("string", char.UTF8String()),
    )


class _IetfAttrSyntax(univ.Sequence):
    componentType = namedtype.NamedTypes(
        namedtype.OptionalNamedType(
            "policyAuthority", _GeneralNames().subtype(implicitTag=_context(0, constructed=True))
        ),
        namedtype.NamedType("values", univ.SequenceOf(componentType=_IetfAttrValue())),
    )


@dataclass(frozen=True, slots=True)
class AcHolder:
    """The certificate an attribute certificate is bound to, named by issuer and serial number."""

    issuer: x509.Name
    serial: int

    @classmethod
    def of(cls, cert: x509.Certificate) -> AcHolder:
        """The holder reference for an existing certificate."""
        return cls(issuer=cert.issuer, serial=cert.serial_number)


@dataclass(frozen=True, slots=True)
class _ParsedAC:
    tbs: bytes
    signature: bytes
    signature_algorithm: str
    issuer: x509.Name
    holder: AcHolder | None
    not_before: datetime
    not_after: datetime
    fqans: tuple[str, ...]


def build_voms_extension_value(
    *,
    holder: x509.Certificate | AcHolder,
    fqans: Sequence[str],
    vo: str,
    signer_cert: x509.Certificate,
    signer_key: rsa.RSAPrivateKey,
    not_before: datetime,
    not_after: datetime,
    uri: str = "localhost:15000",
) -> bytes:
    """Issue a VOMS attribute certificate and wrap it as a proxy extension value.

    Args:
        holder: the end-entity certificate the attributes belong to (or a reference to it when
            the AC goes into that certificate itself and it does not exist yet).
        fqans: FQANs such as ``/atlas`` or ``/atlas/Role=production``; stored in the canonical
            VOMS form with ``/Role=NULL`` and ``/Capability=NULL`` filled in.
        vo: the VO every FQAN must belong to.
        signer_cert: the certificate playing the VOMS server; its subject becomes the AC issuer.
        signer_key: the signer's RSA key; the AC is signed with sha256WithRSAEncryption.
        not_before: start of the AC validity.
        not_after: end of the AC validity.
        uri: ``host:port`` of the VOMS service, recorded in the policy authority.

    Returns:
        DER for extension :data:`VOMS_EXTENSION_OID` (to be added non-critical).

    Raises:
        ValueError: no FQANs, a malformed FQAN or VO name, or an FQAN of another VO.
    """
    if not _VO_NAME.fullmatch(vo):
        raise ValueError(f"invalid VO name {vo!r}")
    if not fqans:
        raise ValueError("at least one FQAN is required")
    canonical = [_canonical_fqan(fqan, vo) for fqan in fqans]
    reference = holder if isinstance(holder, AcHolder) else AcHolder.of(holder)

    info = _AttributeCertificateInfo()
    info["version"] = _AC_VERSION_2
    base_id = info["holder"]["baseCertificateID"]
    base_id["issuer"].append(_directory_name(reference.issuer))
    base_id["serial"] = reference.serial
    info["issuer"]["v2Form"]["issuerName"].append(_directory_name(signer_cert.subject))
    _set_sha256_with_rsa(info["signature"])
    info["serialNumber"] = x509.random_serial_number()
    validity = info["attrCertValidityPeriod"]
    validity["notBeforeTime"] = not_before.astimezone(UTC).strftime(_GENERALIZED_TIME_FORMAT)
    validity["notAfterTime"] = not_after.astimezone(UTC).strftime(_GENERALIZED_TIME_FORMAT)

    syntax = _IetfAttrSyntax()
    authority = _GeneralName()
    authority["uniformResourceIdentifier"] = f"{vo}://{uri}"
    syntax["policyAuthority"].append(authority)
    for fqan in canonical:
        value = _IetfAttrValue()
        value["octets"] = fqan.encode("ascii")
        syntax["values"].append(value)
    attribute = _Attribute()
    attribute["type"] = FQAN_ATTRIBUTE_OID.dotted_string
    attribute["values"].append(univ.Any(der_encoder.encode(syntax)))
    info["attributes"].append(attribute)
    # The VOMS C library refuses ACs without these two extensions.
    authority_key_id = x509.AuthorityKeyIdentifier.from_issuer_public_key(signer_cert.public_key())
    info["extensions"].append(_extension(_NO_REV_AVAIL_OID, _DER_NULL))
    info["extensions"].append(_extension(_AUTHORITY_KEY_ID_OID, authority_key_id.public_bytes()))

    tbs = der_encoder.encode(info)
    certificate = _AttributeCertificate()
    certificate["acinfo"] = univ.Any(tbs)
    _set_sha256_with_rsa(certificate["signatureAlgorithm"])
    signature = signer_key.sign(tbs, padding.PKCS1v15(), hashes.SHA256())
    certificate["signatureValue"] = univ.BitString.fromOctetString(signature)

    extension = _VomsExtension()
    acs = extension.getComponentByPosition(0, instantiate=True)
    acs.append(univ.Any(der_encoder.encode(certificate)))
    return der_encoder.encode(extension)


def fqans_from_certificate(
    cert: x509.Certificate,
    *,
    voms_trust: TrustStore | None,
    now: datetime,
    holder: x509.Certificate | None,
) -> tuple[str, ...]:
    """FQANs from the trusted, valid VOMS attribute certificates in ``cert``.

    An AC that cannot be trusted (unknown signer, bad signature, outside its validity window,
    signer certificate expired, or bound to another holder) contributes nothing and is logged:
    the certificate itself is still a valid credential, just without VO roles.

    Args:
        cert: a proxy (or, for locally issued test credentials, end-entity) certificate.
        voms_trust: certificates of trusted VOMS servers; ``None`` trusts no AC at all.
        now: the time to check validity at.
        holder: the chain's end-entity certificate, which the AC must name as its holder (by
            serial number and issuer, or subject as VOMS also accepts); ``None`` skips that check.

    Returns:
        FQANs in the order issued, without ``/Role=NULL`` and ``/Capability=NULL`` suffixes
        (``/atlas/Role=NULL/Capability=NULL`` becomes ``/atlas``).

    Raises:
        CertificateRejected: the VOMS extension is present but malformed.
    """
    try:
        extension = cert.extensions.get_extension_for_oid(VOMS_EXTENSION_OID)
    except x509.ExtensionNotFound:
        return ()
    except ValueError:
        raise CertificateRejected(f"malformed certificate extensions: {slash_dn(cert.subject)}") from None
    if voms_trust is None:
        return ()
    assert isinstance(extension.value, x509.UnrecognizedExtension)
    found: list[str] = []
    for ac in _parse_extension(extension.value.value):
        problem = _untrusted_because(ac, voms_trust=voms_trust, now=now, holder=holder)
        if problem:
            logger.warning(
                "ignoring VOMS attribute certificate from %s in %s: %s",
                slash_dn(ac.issuer),
                slash_dn(cert.subject),
                problem,
            )
            continue
        found.extend(_short_fqan(fqan) for fqan in ac.fqans)
    return tuple(dict.fromkeys(found))


def _canonical_fqan(fqan: str, vo: str) -> str:
    match = _FQAN.fullmatch(fqan)
    if match is None:
        raise ValueError(f"malformed FQAN {fqan!r}")
    groups = match.group("groups")
    if groups.split("/")[1] != vo:
        raise ValueError(f"FQAN {fqan!r} does not belong to VO {vo!r}")
    return f"{groups}/Role={match.group('role') or 'NULL'}/Capability={match.group('cap') or 'NULL'}"


def _short_fqan(fqan: str) -> str:
    fqan = fqan.removesuffix(_NULL_CAPABILITY)
    return fqan.removesuffix(_NULL_ROLE)


def _set_sha256_with_rsa(algorithm: univ.Sequence) -> None:
    algorithm["algorithm"] = _SHA256_WITH_RSA
    algorithm["parameters"] = univ.Any(_DER_NULL)


def _extension(oid: str, value: bytes) -> _Extension:
    extension = _Extension()
    extension["extnID"] = oid
    extension["extnValue"] = value
    return extension


def _directory_name(name: x509.Name) -> _GeneralName:
    rdns, _ = der_decoder.decode(name.public_bytes(), asn1Spec=_RDNSequence())
    general_name = _GeneralName()
    directory = general_name["directoryName"]
    for rdn in rdns:
        directory.append(rdn)
    return general_name


def _name_from_general_names(names: univ.SequenceOf) -> x509.Name | None:
    for general_name in names:
        if general_name.getName() == "directoryName":
            return _name_from_rdns(general_name["directoryName"])
    return None


def _name_from_rdns(rdns: univ.SequenceOf) -> x509.Name:
    converted = []
    for rdn in rdns:
        attributes = []
        for atv in rdn:
            value, rest = der_decoder.decode(bytes(atv["value"]))
            if rest or not isinstance(value, char.AbstractCharacterString):
                raise ValueError("unsupported name attribute value")
            attributes.append(x509.NameAttribute(x509.ObjectIdentifier(str(atv["type"])), str(value)))
        converted.append(x509.RelativeDistinguishedName(attributes))
    return x509.Name(converted)


def _parse_extension(value: bytes) -> list[_ParsedAC]:
    try:
        outer, rest = der_decoder.decode(value, asn1Spec=_VomsExtension())
        if rest:
            raise ValueError("trailing data")
        return [_parse_ac(bytes(raw)) for acs in outer for raw in acs]
    except (PyAsn1Error, ValueError, OverflowError):
        raise CertificateRejected("malformed VOMS extension") from None


def _parse_ac(raw: bytes) -> _ParsedAC:
    certificate, rest = der_decoder.decode(raw, asn1Spec=_AttributeCertificate())
    if rest:
        raise ValueError("trailing data")
    tbs = bytes(certificate["acinfo"])
    info, rest = der_decoder.decode(tbs, asn1Spec=_AttributeCertificateInfo())
    if rest or int(info["version"]) != _AC_VERSION_2:
        raise ValueError("not a version 2 attribute certificate")
    signature_algorithm = str(certificate["signatureAlgorithm"]["algorithm"])
    if str(info["signature"]["algorithm"]) != signature_algorithm:
        raise ValueError("signature algorithm mismatch")

    issuer_choice = info["issuer"]
    issuer_names = (
        issuer_choice["v2Form"]["issuerName"]
        if issuer_choice.getName() == "v2Form"
        else issuer_choice["v1Form"]
    )
    issuer = _name_from_general_names(issuer_names) if issuer_names.isValue else None
    if issuer is None:
        raise ValueError("attribute certificate without issuer name")

    holder = None
    base_id = info["holder"]["baseCertificateID"]
    if base_id.isValue:
        holder_issuer = _name_from_general_names(base_id["issuer"])
        if holder_issuer is not None:
            holder = AcHolder(issuer=holder_issuer, serial=int(base_id["serial"]))

    fqans: list[str] = []
    for attribute in info["attributes"]:
        if str(attribute["type"]) != FQAN_ATTRIBUTE_OID.dotted_string:
            continue
        for encoded in attribute["values"]:
            syntax, rest = der_decoder.decode(bytes(encoded), asn1Spec=_IetfAttrSyntax())
            if rest:
                raise ValueError("trailing data")
            for item in syntax["values"]:
                kind = item.getName()
                if kind == "octets":
                    fqans.append(bytes(item["octets"]).decode("utf-8"))
                elif kind == "string":
                    fqans.append(str(item["string"]))

    validity = info["attrCertValidityPeriod"]
    return _ParsedAC(
        tbs=tbs,
        signature=certificate["signatureValue"].asOctets(),
        signature_algorithm=signature_algorithm,
        issuer=issuer,
        holder=holder,
        not_before=validity["notBeforeTime"].asDateTime,
        not_after=validity["notAfterTime"].asDateTime,
        fqans=tuple(fqans),
    )


def _untrusted_because(
    ac: _ParsedAC, *, voms_trust: TrustStore, now: datetime, holder: x509.Certificate | None
) -> str | None:
    """Why ``ac`` must not be believed, or ``None`` when it is trustworthy."""
    if not ac.not_before <= now <= ac.not_after:
        return "outside its validity period"
    if holder is not None and not _names_holder(ac, holder):
        return "issued for another certificate"
    hash_type = _RSA_SIGNATURE_HASHES.get(ac.signature_algorithm)
    if hash_type is None:
        return f"unsupported signature algorithm {ac.signature_algorithm}"
    signers = voms_trust.by_subject(ac.issuer)
    if not signers:
        return "signer is not a trusted VOMS server"
    for signer in signers:
        public_key = signer.public_key()
        if not isinstance(public_key, rsa.RSAPublicKey):
            continue
        try:
            public_key.verify(ac.signature, ac.tbs, padding.PKCS1v15(), hash_type())
        except InvalidSignature:
            continue
        if not signer.not_valid_before_utc <= now <= signer.not_valid_after_utc:
            return "signer certificate is not valid now"
        return None
    return "signature does not verify"


def _names_holder(ac: _ParsedAC, holder: x509.Certificate) -> bool:
    # VOMS itself also accepts the holder's subject in place of its issuer: the Java VOMS
    # implementation records the subject there, and such ACs are in circulation.
    return (
        ac.holder is not None
        and ac.holder.serial == holder.serial_number
        and ac.holder.issuer in (holder.issuer, holder.subject)
    )

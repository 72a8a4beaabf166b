"""Tests for certificate identity, proxy chain verification, VOMS attributes and the local CA."""

from __future__ import annotations

import asyncio
import logging
import re
import ssl
import stat
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import quote

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from hypothesis import given, settings
from hypothesis import strategies as st

from bamboo.auth.local_ca import (
    PROXY_MAX_LIFETIME,
    LocalCA,
    ensure_server_certificate,
    issue_user_credentials,
)
from bamboo.auth.voms import (
    VOMS_EXTENSION_OID,
    AcHolder,
    build_voms_extension_value,
    fqans_from_certificate,
)
from bamboo.auth.x509 import (
    MAX_PEM_BYTES,
    PROXY_CERT_INFO_OID,
    CertificateRejected,
    TrustStore,
    chain_from_escaped_pem,
    describe_verified_chain,
    load_pem_chain,
    parse_slash_dn,
    proxy_cert_info_value,
    slash_dn,
    verify_client_chain,
)

NOW = datetime.now(UTC).replace(microsecond=0)
HOUR = timedelta(hours=1)
DAY = timedelta(days=1)
USER_DN = "/DC=ch/DC=cern/OU=Organic Units/OU=Users/CN=jdoe/CN=123456/CN=John Doe"


def _pem(*certs: x509.Certificate) -> bytes:
    return b"".join(cert.public_bytes(serialization.Encoding.PEM) for cert in certs)


def make_cert(
    subject: str | x509.Name,
    issuer: str | x509.Name,
    key: rsa.RSAPrivateKey,
    signer: rsa.RSAPrivateKey,
    *,
    ca: bool | None = False,
    path_length: int | None = None,
    not_before: datetime = NOW - DAY,
    not_after: datetime = NOW + DAY,
    extensions: tuple[tuple[x509.ExtensionType, bool], ...] = (),
) -> x509.Certificate:
    """A certificate with exactly the properties a test needs; ``ca=None`` omits BasicConstraints."""
    builder = (
        x509.CertificateBuilder()
        .subject_name(parse_slash_dn(subject) if isinstance(subject, str) else subject)
        .issuer_name(parse_slash_dn(issuer) if isinstance(issuer, str) else issuer)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
    )
    if ca is not None:
        builder = builder.add_extension(
            x509.BasicConstraints(ca=ca, path_length=path_length if ca else None), critical=True
        )
    for extension, critical in extensions:
        builder = builder.add_extension(extension, critical=critical)
    return builder.sign(signer, hashes.SHA256())


def pci(*, limited: bool = False, path_length: int | None = None) -> tuple[x509.ExtensionType, bool]:
    value = proxy_cert_info_value(limited=limited, path_length=path_length)
    return x509.UnrecognizedExtension(PROXY_CERT_INFO_OID, value), True


def make_proxy(
    issuer: x509.Certificate,
    issuer_key: rsa.RSAPrivateKey,
    key: rsa.RSAPrivateKey,
    *,
    cn: str = "424242",
    rfc: bool = True,
    limited: bool = False,
    path_length: int | None = None,
    subject: x509.Name | None = None,
    extensions: tuple[tuple[x509.ExtensionType, bool], ...] = (),
) -> x509.Certificate:
    if subject is None:
        last = x509.RelativeDistinguishedName([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
        subject = x509.Name([*issuer.subject.rdns, last])
    proxy_extensions = (pci(limited=limited, path_length=path_length),) if rfc else ()
    return make_cert(
        subject, issuer.subject, key, issuer_key, ca=None, extensions=proxy_extensions + extensions
    )


@dataclass
class Pki:
    keys: list[rsa.RSAPrivateKey]
    root: x509.Certificate
    root_key: rsa.RSAPrivateKey
    inter: x509.Certificate
    inter_key: rsa.RSAPrivateKey
    ee: x509.Certificate
    ee_key: rsa.RSAPrivateKey
    trust: TrustStore


@pytest.fixture(scope="module")
def pki() -> Pki:
    keys = [rsa.generate_private_key(public_exponent=65537, key_size=2048) for _ in range(6)]
    root_key, inter_key, ee_key = keys[:3]
    root = make_cert(
        "/DC=org/DC=test/CN=Test Root CA", "/DC=org/DC=test/CN=Test Root CA", root_key, root_key, ca=True
    )
    inter = make_cert("/DC=org/DC=test/CN=Test Issuing CA", root.subject, inter_key, root_key, ca=True)
    ee = make_cert(
        USER_DN,
        inter.subject,
        ee_key,
        inter_key,
        extensions=((x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), False),),
    )
    return Pki(keys, root, root_key, inter, inter_key, ee, ee_key, TrustStore([root]))


# --- slash DNs -----------------------------------------------------------------------------------


def test_slash_dn_formats_in_certificate_order_with_short_names() -> None:
    name = x509.Name(
        [
            x509.RelativeDistinguishedName([x509.NameAttribute(NameOID.DOMAIN_COMPONENT, "ch")]),
            x509.RelativeDistinguishedName([x509.NameAttribute(NameOID.COUNTRY_NAME, "CH")]),
            x509.RelativeDistinguishedName(
                [
                    x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, "Users"),
                    x509.NameAttribute(NameOID.USER_ID, "jdoe"),
                ]
            ),
            x509.RelativeDistinguishedName([x509.NameAttribute(NameOID.EMAIL_ADDRESS, "j@example.org")]),
            x509.RelativeDistinguishedName([x509.NameAttribute(NameOID.TITLE, "Dr")]),
            x509.RelativeDistinguishedName([x509.NameAttribute(NameOID.SERIAL_NUMBER, "42")]),
            x509.RelativeDistinguishedName([x509.NameAttribute(NameOID.COMMON_NAME, "John Doe")]),
        ]
    )
    assert (
        slash_dn(name)
        == "/DC=ch/C=CH/OU=Users+UID=jdoe/emailAddress=j@example.org/2.5.4.12=Dr/serialNumber=42/CN=John Doe"
    )
    assert parse_slash_dn(slash_dn(name)) == name


def test_slash_dn_of_a_real_certificate_subject(pki: Pki) -> None:
    assert slash_dn(pki.ee.subject) == USER_DN
    assert slash_dn(pki.ee.issuer) == "/DC=org/DC=test/CN=Test Issuing CA"


def test_parse_slash_dn_keeps_slashes_that_do_not_start_an_attribute() -> None:
    name = parse_slash_dn("/DC=org/CN=host/node1.example.org/CN=a+b")
    assert [attribute.value for attribute in name] == ["org", "host/node1.example.org", "a+b"]
    assert slash_dn(name) == "/DC=org/CN=host/node1.example.org/CN=a+b"


@pytest.mark.parametrize(
    "dn",
    ["", "/", "CN=John", "DC=ch/CN=John", "/XX=1", "/CN=", "/C=CHE", "/CN=" + "x" * 65, "//CN=x"],
)
def test_parse_slash_dn_rejects_malformed(dn: str) -> None:
    with pytest.raises(ValueError):
        parse_slash_dn(dn)


_VALUE_TEXT = st.text(
    st.characters(blacklist_characters="/+", blacklist_categories=("Cs", "Cc")), min_size=1, max_size=16
)
_ASCII_TEXT = st.text(
    st.characters(min_codepoint=0x20, max_codepoint=0x7E, blacklist_characters="/+"), min_size=1, max_size=16
)
_ATTRIBUTE = st.one_of(
    st.tuples(st.just("C"), st.text(st.sampled_from("ABCDEFGHIJKLMNOPQRSTUVWXYZ"), min_size=2, max_size=2)),
    st.tuples(st.sampled_from(["ST", "L", "O", "OU", "CN", "UID", "1.2.3.4", "2.5.4.12"]), _VALUE_TEXT),
    st.tuples(st.sampled_from(["DC", "emailAddress", "serialNumber"]), _ASCII_TEXT),
)
_DN = st.lists(
    st.lists(_ATTRIBUTE, min_size=1, max_size=3, unique_by=lambda attribute: attribute[0]),
    min_size=1,
    max_size=6,
).map(lambda rdns: "".join("/" + "+".join(f"{k}={v}" for k, v in rdn) for rdn in rdns))


@settings(derandomize=True, database=None, max_examples=200)
@given(_DN)
def test_slash_dn_round_trip_property(dn: str) -> None:
    name = parse_slash_dn(dn)
    assert slash_dn(name) == dn
    assert parse_slash_dn(slash_dn(name)) == name


# --- trust store -----------------------------------------------------------------------------------


def test_trust_store_scans_igtf_directory_and_skips_junk(pki: Pki, tmp_path: Path) -> None:
    ca_dir = tmp_path / "certificates"
    ca_dir.mkdir()
    (ca_dir / "TestRoot.pem").write_bytes(_pem(pki.root))
    (ca_dir / "1a2b3c4d.0").symlink_to(ca_dir / "TestRoot.pem")
    (ca_dir / "TestIssuing.pem").write_bytes(_pem(pki.inter))
    (ca_dir / "1a2b3c4d.signing_policy").write_text("access_id_CA X509 '/DC=org/DC=test/CN=Test Root CA'\n")
    (ca_dir / "1a2b3c4d.namespaces").write_text("TO Issuer ...\n")
    (ca_dir / "1a2b3c4d.crl_r0").write_bytes(b"not a crl")
    (ca_dir / "1a2b3c4d.r0").write_bytes(b"not a crl either")
    (ca_dir / "junk.pem").write_bytes(b"this is not PEM")
    (ca_dir / "bad.1").write_bytes(b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n")
    (ca_dir / "dangling.2").symlink_to(tmp_path / "missing")
    (ca_dir / "subdir.pem").mkdir()

    store = TrustStore.from_paths([ca_dir])

    assert len(store) == 2
    assert pki.root in store and pki.inter in store and pki.ee not in store
    assert store.by_subject(pki.root.subject) == (pki.root,)
    assert store.by_subject(pki.ee.subject) == ()


def test_trust_store_loads_bundles_and_dedupes(pki: Pki, tmp_path: Path) -> None:
    bundle = tmp_path / "bundle.pem"
    bundle.write_bytes(_pem(pki.root, pki.inter, pki.root))
    store = TrustStore.from_paths([bundle, bundle])
    assert sorted(slash_dn(cert.subject) for cert in store) == [
        "/DC=org/DC=test/CN=Test Issuing CA",
        "/DC=org/DC=test/CN=Test Root CA",
    ]


def test_trust_store_explicit_file_must_be_pem(tmp_path: Path) -> None:
    junk = tmp_path / "junk.pem"
    junk.write_bytes(b"junk")
    with pytest.raises(ValueError):
        TrustStore.from_paths([junk])


# --- PEM input -------------------------------------------------------------------------------------


def test_chain_from_escaped_pem_decodes_several_blocks(pki: Pki) -> None:
    header = quote(_pem(pki.ee, pki.inter).decode("ascii"), safe="")
    assert "+" not in header or "%2B" in header
    assert chain_from_escaped_pem(header) == [pki.ee, pki.inter]


@pytest.mark.parametrize("header", ["", "garbage", "%FF%FE", "-----BEGIN CERTIFICATE-----%0AAAAA%0A", "é"])
def test_chain_from_escaped_pem_rejects_garbage(header: str) -> None:
    with pytest.raises(CertificateRejected):
        chain_from_escaped_pem(header)


def test_pem_input_size_is_bounded(pki: Pki) -> None:
    big = _pem(pki.ee) + b"#" * MAX_PEM_BYTES
    with pytest.raises(CertificateRejected, match="too large"):
        load_pem_chain(big)
    with pytest.raises(CertificateRejected, match="too large"):
        chain_from_escaped_pem(quote(big.decode("ascii")))


# --- chain verification ----------------------------------------------------------------------------


def test_good_end_entity_chain_in_any_order(pki: Pki) -> None:
    result = verify_client_chain([pki.ee, pki.root, pki.inter], pki.trust, now=NOW)
    assert result.dn == USER_DN
    assert result.end_entity_dn == USER_DN
    assert not result.is_proxy and not result.is_limited
    assert result.fqans == ()
    assert result.not_after == pki.ee.not_valid_after_utc


def test_trusted_intermediate_is_enough(pki: Pki) -> None:
    assert verify_client_chain([pki.ee], TrustStore([pki.inter]), now=NOW).dn == USER_DN


def test_missing_intermediate_is_unknown_issuer(pki: Pki) -> None:
    with pytest.raises(CertificateRejected, match="unknown issuer: /DC=org/DC=test/CN=Test Issuing CA"):
        verify_client_chain([pki.ee], pki.trust, now=NOW)


def test_empty_and_overlong_chains(pki: Pki) -> None:
    with pytest.raises(CertificateRejected, match="no client certificate"):
        verify_client_chain([], pki.trust, now=NOW)
    with pytest.raises(CertificateRejected, match="too long"):
        verify_client_chain([pki.ee] + [pki.inter] * 10, pki.trust, now=NOW)


def test_naive_time_is_refused(pki: Pki) -> None:
    with pytest.raises(ValueError):
        verify_client_chain([pki.ee, pki.inter], pki.trust, now=NOW.replace(tzinfo=None))


@pytest.mark.parametrize(
    ("not_before", "not_after", "reason"),
    [(NOW - 2 * DAY, NOW - DAY, "certificate expired"), (NOW + HOUR, NOW + DAY, "certificate not yet valid")],
)
def test_validity_window(pki: Pki, not_before: datetime, not_after: datetime, reason: str) -> None:
    ee = make_cert(
        USER_DN, pki.inter.subject, pki.ee_key, pki.inter_key, not_before=not_before, not_after=not_after
    )
    with pytest.raises(CertificateRejected, match=reason):
        verify_client_chain([ee, pki.inter], pki.trust, now=NOW)


def test_expired_intermediate_is_rejected(pki: Pki) -> None:
    inter = make_cert(
        "/DC=org/DC=test/CN=Test Issuing CA",
        pki.root.subject,
        pki.inter_key,
        pki.root_key,
        ca=True,
        not_before=NOW - 2 * DAY,
        not_after=NOW - DAY,
    )
    with pytest.raises(CertificateRejected, match="certificate expired: /DC=org/DC=test/CN=Test Issuing CA"):
        verify_client_chain([pki.ee, inter], pki.trust, now=NOW)


def test_forged_signature_with_the_right_issuer_name(pki: Pki) -> None:
    forged = make_cert(USER_DN, pki.root.subject, pki.ee_key, pki.keys[5])
    with pytest.raises(CertificateRejected, match="signature does not verify"):
        verify_client_chain([forged], pki.trust, now=NOW)


def test_forged_intermediate_is_not_used(pki: Pki) -> None:
    fake_inter = make_cert(
        "/DC=org/DC=test/CN=Test Issuing CA", pki.root.subject, pki.keys[5], pki.keys[5], ca=True
    )
    with pytest.raises(CertificateRejected, match="signature does not verify"):
        verify_client_chain([pki.ee, fake_inter], pki.trust, now=NOW)


def test_certificate_issued_by_a_non_ca_is_rejected(pki: Pki) -> None:
    not_ca = make_cert("/DC=org/DC=test/CN=Not A CA", pki.root.subject, pki.keys[3], pki.root_key, ca=False)
    victim = make_cert("/DC=org/DC=test/CN=Victim", not_ca.subject, pki.keys[4], pki.keys[3])
    with pytest.raises(CertificateRejected, match="not a proxy"):
        verify_client_chain([victim, not_ca], pki.trust, now=NOW)


def test_issuer_without_key_cert_sign_is_rejected(pki: Pki) -> None:
    key_usage = x509.KeyUsage(True, False, True, False, False, False, False, False, False)
    inter = make_cert(
        "/DC=org/DC=test/CN=Test Issuing CA",
        pki.root.subject,
        pki.inter_key,
        pki.root_key,
        ca=True,
        extensions=((key_usage, True),),
    )
    with pytest.raises(CertificateRejected, match="may not sign certificates"):
        verify_client_chain([pki.ee, inter], pki.trust, now=NOW)


def test_ca_path_length_is_honoured(pki: Pki) -> None:
    root = make_cert("/CN=Short Root", "/CN=Short Root", pki.root_key, pki.root_key, ca=True, path_length=0)
    inter = make_cert("/CN=Sub CA", root.subject, pki.inter_key, pki.root_key, ca=True)
    ee = make_cert("/CN=User", inter.subject, pki.ee_key, pki.inter_key)
    with pytest.raises(CertificateRejected, match="CA path length"):
        verify_client_chain([ee, inter], TrustStore([root]), now=NOW)
    direct = make_cert("/CN=User", root.subject, pki.ee_key, pki.root_key)
    assert verify_client_chain([direct], TrustStore([root]), now=NOW).dn == "/CN=User"


def test_chain_loop_is_detected(pki: Pki) -> None:
    key_x, key_y = pki.keys[3], pki.keys[4]
    x_cert = make_cert("/CN=X", "/CN=Y", key_x, key_y, ca=True)
    y_cert = make_cert("/CN=Y", "/CN=X", key_y, key_x, ca=True)
    leaf = make_cert("/CN=Leaf", "/CN=X", pki.ee_key, key_x)
    with pytest.raises(CertificateRejected, match="loop"):
        verify_client_chain([leaf, x_cert, y_cert], pki.trust, now=NOW)


def test_untrusted_self_signed_certificate(pki: Pki) -> None:
    self_signed = make_cert("/CN=Me", "/CN=Me", pki.ee_key, pki.ee_key)
    with pytest.raises(CertificateRejected, match="unknown issuer"):
        verify_client_chain([self_signed], pki.trust, now=NOW)


def test_ca_certificate_is_not_a_client_certificate(pki: Pki) -> None:
    with pytest.raises(CertificateRejected, match="CA certificate cannot be used"):
        verify_client_chain([pki.inter], pki.trust, now=NOW)


def test_server_only_certificate_is_not_a_client_certificate(pki: Pki) -> None:
    server_eku = (x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), False)
    ee = make_cert(
        "/CN=server.example.org", pki.inter.subject, pki.keys[3], pki.inter_key, extensions=(server_eku,)
    )
    with pytest.raises(CertificateRejected, match="client authentication"):
        verify_client_chain([ee, pki.inter], pki.trust, now=NOW)


def test_unknown_critical_extension_is_rejected(pki: Pki) -> None:
    odd = (x509.UnrecognizedExtension(x509.ObjectIdentifier("1.3.6.1.4.1.99999.1"), b"\x05\x00"), True)
    ee = make_cert(USER_DN, pki.inter.subject, pki.ee_key, pki.inter_key, extensions=(odd,))
    with pytest.raises(
        CertificateRejected, match=re.escape("unsupported critical extension 1.3.6.1.4.1.99999.1")
    ):
        verify_client_chain([ee, pki.inter], pki.trust, now=NOW)


# --- proxies ---------------------------------------------------------------------------------------


def test_rfc3820_proxy(pki: Pki) -> None:
    proxy = make_proxy(pki.ee, pki.ee_key, pki.keys[3])
    result = verify_client_chain([proxy, pki.ee, pki.inter], pki.trust, now=NOW)
    assert result.dn == USER_DN + "/CN=424242"
    assert result.end_entity_dn == USER_DN
    assert result.is_proxy and not result.is_limited


def test_proxy_of_proxy(pki: Pki) -> None:
    first = make_proxy(pki.ee, pki.ee_key, pki.keys[3], cn="111")
    second = make_proxy(first, pki.keys[3], pki.keys[4], cn="222")
    result = verify_client_chain([second, pki.inter, first, pki.ee], pki.trust, now=NOW)
    assert result.dn == USER_DN + "/CN=111/CN=222"
    assert result.end_entity_dn == USER_DN
    assert result.is_proxy and not result.is_limited


def test_legacy_proxy(pki: Pki) -> None:
    proxy = make_proxy(pki.ee, pki.ee_key, pki.keys[3], cn="proxy", rfc=False)
    result = verify_client_chain([proxy, pki.ee, pki.inter], pki.trust, now=NOW)
    assert result.dn == USER_DN + "/CN=proxy"
    assert result.end_entity_dn == USER_DN
    assert result.is_proxy and not result.is_limited


@pytest.mark.parametrize("rfc", [True, False])
def test_limited_proxy(pki: Pki, rfc: bool) -> None:
    cn = "333" if rfc else "limited proxy"
    proxy = make_proxy(pki.ee, pki.ee_key, pki.keys[3], cn=cn, rfc=rfc, limited=True)
    result = verify_client_chain([proxy, pki.ee, pki.inter], pki.trust, now=NOW)
    assert result.is_proxy and result.is_limited
    assert result.dn == f"{USER_DN}/CN={cn}"


def test_proxy_below_a_limited_proxy_is_limited(pki: Pki) -> None:
    limited = make_proxy(pki.ee, pki.ee_key, pki.keys[3], cn="limited proxy", rfc=False)
    full = make_proxy(limited, pki.keys[3], pki.keys[4], cn="proxy", rfc=False)
    assert verify_client_chain([full, limited, pki.ee, pki.inter], pki.trust, now=NOW).is_limited


@pytest.mark.parametrize(
    "subject",
    [
        USER_DN + "/CN=1/CN=2",
        "/DC=ch/DC=cern/OU=Users/CN=someone else/CN=444",
        USER_DN + "/OU=444",
        USER_DN + "/CN=444+UID=x",
    ],
)
def test_rfc_proxy_subject_must_extend_the_issuer_by_one_cn(pki: Pki, subject: str) -> None:
    proxy = make_proxy(pki.ee, pki.ee_key, pki.keys[3], subject=parse_slash_dn(subject))
    with pytest.raises(CertificateRejected, match="issuer's subject plus one CN"):
        verify_client_chain([proxy, pki.ee, pki.inter], pki.trust, now=NOW)


def test_legacy_proxy_with_wrong_subject_is_not_a_proxy(pki: Pki) -> None:
    proxy = make_proxy(pki.ee, pki.ee_key, pki.keys[3], cn="not a proxy", rfc=False)
    with pytest.raises(CertificateRejected, match="not a proxy"):
        verify_client_chain([proxy, pki.ee, pki.inter], pki.trust, now=NOW)


def test_proxy_path_length(pki: Pki) -> None:
    capped = make_proxy(pki.ee, pki.ee_key, pki.keys[3], cn="1", path_length=0)
    below = make_proxy(capped, pki.keys[3], pki.keys[4], cn="2")
    assert verify_client_chain([capped, pki.ee, pki.inter], pki.trust, now=NOW).is_proxy
    with pytest.raises(CertificateRejected, match="proxy path length"):
        verify_client_chain([below, capped, pki.ee, pki.inter], pki.trust, now=NOW)
    allowed = make_proxy(pki.ee, pki.ee_key, pki.keys[3], cn="1", path_length=1)
    below_allowed = make_proxy(allowed, pki.keys[3], pki.keys[4], cn="2")
    assert verify_client_chain([below_allowed, allowed, pki.ee, pki.inter], pki.trust, now=NOW).is_proxy


def test_rfc_proxy_issued_by_a_ca_is_rejected(pki: Pki) -> None:
    proxy = make_proxy(pki.inter, pki.inter_key, pki.keys[3])
    with pytest.raises(CertificateRejected, match="proxy certificate issued by a CA"):
        verify_client_chain([proxy, pki.inter], pki.trust, now=NOW)


def test_proxy_named_certificate_issued_by_a_ca_is_a_normal_end_entity(pki: Pki) -> None:
    cert = make_proxy(pki.inter, pki.inter_key, pki.keys[3], cn="proxy", rfc=False)
    result = verify_client_chain([cert, pki.inter], pki.trust, now=NOW)
    assert not result.is_proxy
    assert result.end_entity_dn == result.dn == "/DC=org/DC=test/CN=Test Issuing CA/CN=proxy"


def test_proxy_must_not_be_a_ca(pki: Pki) -> None:
    subject = x509.Name(
        [*pki.ee.subject.rdns, x509.RelativeDistinguishedName([x509.NameAttribute(NameOID.COMMON_NAME, "5")])]
    )
    proxy = make_cert(subject, pki.ee.subject, pki.keys[3], pki.ee_key, ca=True, extensions=(pci(),))
    with pytest.raises(CertificateRejected, match="must not be a CA"):
        verify_client_chain([proxy, pki.ee, pki.inter], pki.trust, now=NOW)


def test_unsupported_proxy_policy_is_rejected(pki: Pki) -> None:
    # ProxyCertInfo with the "independent" policy 1.3.6.1.5.5.7.21.2, which grants no rights.
    independent = bytes.fromhex("300c300a06082b06010505071502")
    extension = (x509.UnrecognizedExtension(PROXY_CERT_INFO_OID, independent), True)
    proxy = make_proxy(pki.ee, pki.ee_key, pki.keys[3], rfc=False, cn="6", extensions=(extension,))
    with pytest.raises(CertificateRejected, match="unsupported proxy policy"):
        verify_client_chain([proxy, pki.ee, pki.inter], pki.trust, now=NOW)


def test_malformed_proxy_cert_info_is_rejected(pki: Pki) -> None:
    extension = (x509.UnrecognizedExtension(PROXY_CERT_INFO_OID, b"\x30\x03\x02\x01"), True)
    proxy = make_proxy(pki.ee, pki.ee_key, pki.keys[3], rfc=False, cn="7", extensions=(extension,))
    with pytest.raises(CertificateRejected, match="malformed ProxyCertInfo"):
        verify_client_chain([proxy, pki.ee, pki.inter], pki.trust, now=NOW)


def test_expired_proxy_is_rejected(pki: Pki) -> None:
    last = x509.RelativeDistinguishedName([x509.NameAttribute(NameOID.COMMON_NAME, "8")])
    proxy = make_cert(
        x509.Name([*pki.ee.subject.rdns, last]),
        pki.ee.subject,
        pki.keys[3],
        pki.ee_key,
        ca=None,
        not_before=NOW - DAY,
        not_after=NOW - HOUR,
        extensions=(pci(),),
    )
    with pytest.raises(CertificateRejected, match="certificate expired"):
        verify_client_chain([proxy, pki.ee, pki.inter], pki.trust, now=NOW)


def test_describe_verified_chain_without_reverification(pki: Pki) -> None:
    first = make_proxy(pki.ee, pki.ee_key, pki.keys[3], cn="limited proxy", rfc=False)
    second = make_proxy(first, pki.keys[3], pki.keys[4], cn="99")
    full = describe_verified_chain([second, first, pki.ee, pki.inter, pki.root], voms_trust=None, now=NOW)
    assert full.dn == USER_DN + "/CN=limited proxy/CN=99"
    assert full.end_entity_dn == USER_DN
    assert full.is_proxy and full.is_limited

    leaf_only = describe_verified_chain([first], voms_trust=None, now=NOW)
    assert leaf_only.end_entity_dn == USER_DN and leaf_only.is_proxy and leaf_only.is_limited

    plain = describe_verified_chain([pki.ee], voms_trust=None, now=NOW)
    assert plain.dn == plain.end_entity_dn == USER_DN and not plain.is_proxy


# --- VOMS ------------------------------------------------------------------------------------------


def _voms_proxy(
    pki: Pki,
    *,
    signer: x509.Certificate,
    signer_key: rsa.RSAPrivateKey,
    holder: x509.Certificate | AcHolder,
    fqans: tuple[str, ...] = ("/atlas/Role=production", "/atlas"),
    not_before: datetime = NOW - HOUR,
    not_after: datetime = NOW + HOUR,
) -> x509.Certificate:
    value = build_voms_extension_value(
        holder=holder,
        fqans=fqans,
        vo="atlas",
        signer_cert=signer,
        signer_key=signer_key,
        not_before=not_before,
        not_after=not_after,
    )
    voms = (x509.UnrecognizedExtension(VOMS_EXTENSION_OID, value), False)
    return make_proxy(pki.ee, pki.ee_key, pki.keys[3], extensions=(voms,))


@pytest.fixture(scope="module")
def voms_server(pki: Pki) -> tuple[x509.Certificate, rsa.RSAPrivateKey]:
    key = pki.keys[4]
    return make_cert("/DC=org/DC=test/CN=voms.test.org", pki.inter.subject, key, pki.inter_key), key


def test_voms_round_trip(pki: Pki, voms_server: tuple[x509.Certificate, rsa.RSAPrivateKey]) -> None:
    signer, signer_key = voms_server
    proxy = _voms_proxy(
        pki,
        signer=signer,
        signer_key=signer_key,
        holder=pki.ee,
        fqans=("/atlas/Role=production", "/atlas", "/atlas/usatlas"),
    )
    raw = proxy.extensions.get_extension_for_oid(VOMS_EXTENSION_OID).value.value
    assert b"/atlas/Role=production/Capability=NULL" in raw
    assert b"/atlas/Role=NULL/Capability=NULL" in raw
    assert b"atlas://localhost:15000" in raw

    result = verify_client_chain(
        [proxy, pki.ee, pki.inter], pki.trust, now=NOW, voms_trust=TrustStore([signer])
    )
    assert result.fqans == ("/atlas/Role=production", "/atlas", "/atlas/usatlas")
    assert (
        fqans_from_certificate(proxy, voms_trust=TrustStore([signer]), now=NOW, holder=None) == result.fqans
    )


def test_voms_without_trust_gives_no_fqans(
    pki: Pki, voms_server: tuple[x509.Certificate, rsa.RSAPrivateKey]
) -> None:
    signer, signer_key = voms_server
    proxy = _voms_proxy(pki, signer=signer, signer_key=signer_key, holder=pki.ee)
    assert verify_client_chain([proxy, pki.ee, pki.inter], pki.trust, now=NOW).fqans == ()


def _ignored_reason(
    caplog: pytest.LogCaptureFixture, proxy: x509.Certificate, trust: TrustStore, holder: x509.Certificate
) -> str:
    with caplog.at_level(logging.WARNING, logger="bamboo.auth.voms"):
        assert fqans_from_certificate(proxy, voms_trust=trust, now=NOW, holder=holder) == ()
    return caplog.text


def test_voms_ac_from_untrusted_signer_is_ignored(
    pki: Pki, voms_server: tuple[x509.Certificate, rsa.RSAPrivateKey], caplog: pytest.LogCaptureFixture
) -> None:
    signer, signer_key = voms_server
    proxy = _voms_proxy(pki, signer=signer, signer_key=signer_key, holder=pki.ee)
    assert "not a trusted VOMS server" in _ignored_reason(caplog, proxy, pki.trust, pki.ee)


def test_voms_ac_with_forged_signature_is_ignored(
    pki: Pki, voms_server: tuple[x509.Certificate, rsa.RSAPrivateKey], caplog: pytest.LogCaptureFixture
) -> None:
    signer, _ = voms_server
    proxy = _voms_proxy(pki, signer=signer, signer_key=pki.keys[5], holder=pki.ee)
    assert "signature does not verify" in _ignored_reason(caplog, proxy, TrustStore([signer]), pki.ee)


@pytest.mark.parametrize(
    ("not_before", "not_after"), [(NOW - 2 * HOUR, NOW - HOUR), (NOW + HOUR, NOW + 2 * HOUR)]
)
def test_voms_ac_outside_validity_is_ignored(
    pki: Pki,
    voms_server: tuple[x509.Certificate, rsa.RSAPrivateKey],
    caplog: pytest.LogCaptureFixture,
    not_before: datetime,
    not_after: datetime,
) -> None:
    signer, signer_key = voms_server
    proxy = _voms_proxy(
        pki, signer=signer, signer_key=signer_key, holder=pki.ee, not_before=not_before, not_after=not_after
    )
    assert "outside its validity period" in _ignored_reason(caplog, proxy, TrustStore([signer]), pki.ee)


def test_voms_ac_for_another_holder_is_ignored(
    pki: Pki, voms_server: tuple[x509.Certificate, rsa.RSAPrivateKey], caplog: pytest.LogCaptureFixture
) -> None:
    signer, signer_key = voms_server
    proxy = _voms_proxy(pki, signer=signer, signer_key=signer_key, holder=AcHolder(pki.ee.issuer, 12345))
    assert "issued for another certificate" in _ignored_reason(caplog, proxy, TrustStore([signer]), pki.ee)
    # Without a holder to compare with (leaf-only chains) the AC is accepted.
    assert fqans_from_certificate(proxy, voms_trust=TrustStore([signer]), now=NOW, holder=None)


def test_voms_ac_naming_the_holder_subject_is_accepted(
    pki: Pki, voms_server: tuple[x509.Certificate, rsa.RSAPrivateKey]
) -> None:
    # VOMS Java records the holder's subject instead of its issuer; VOMS accepts either.
    signer, signer_key = voms_server
    holder = AcHolder(pki.ee.subject, pki.ee.serial_number)
    proxy = _voms_proxy(pki, signer=signer, signer_key=signer_key, holder=holder, fqans=("/atlas",))
    assert fqans_from_certificate(proxy, voms_trust=TrustStore([signer]), now=NOW, holder=pki.ee) == (
        "/atlas",
    )


def test_malformed_voms_extension_is_rejected(
    pki: Pki, voms_server: tuple[x509.Certificate, rsa.RSAPrivateKey]
) -> None:
    signer, _ = voms_server
    bad = (x509.UnrecognizedExtension(VOMS_EXTENSION_OID, b"\x30\x03\x30\x01\x00"), False)
    proxy = make_proxy(pki.ee, pki.ee_key, pki.keys[3], extensions=(bad,))
    with pytest.raises(CertificateRejected, match="malformed VOMS extension"):
        fqans_from_certificate(proxy, voms_trust=TrustStore([signer]), now=NOW, holder=pki.ee)
    with pytest.raises(CertificateRejected, match="malformed VOMS extension"):
        verify_client_chain([proxy, pki.ee, pki.inter], pki.trust, now=NOW, voms_trust=TrustStore([signer]))


@pytest.mark.parametrize(
    ("fqans", "vo"),
    [
        ((), "atlas"),
        (("/cms/Role=production",), "atlas"),
        (("atlas",), "atlas"),
        (("/atlas/Role=",), "atlas"),
        (("/atlas",), "at las"),
    ],
)
def test_build_voms_extension_validates_input(
    pki: Pki, voms_server: tuple[x509.Certificate, rsa.RSAPrivateKey], fqans: tuple[str, ...], vo: str
) -> None:
    signer, signer_key = voms_server
    with pytest.raises(ValueError):
        build_voms_extension_value(
            holder=pki.ee,
            fqans=fqans,
            vo=vo,
            signer_cert=signer,
            signer_key=signer_key,
            not_before=NOW,
            not_after=NOW + HOUR,
        )


# --- local CA --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def local_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("bamboo-home")


@pytest.fixture(scope="module")
def local_ca(local_home: Path) -> LocalCA:
    return LocalCA.load_or_create(local_home)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_local_ca_files_and_reload(local_ca: LocalCA, local_home: Path) -> None:
    assert _mode(local_home / "ca.key") == 0o600
    assert _mode(local_home / "ca.pem") == 0o644
    constraints = local_ca.cert.extensions.get_extension_for_class(x509.BasicConstraints)
    assert constraints.critical and constraints.value.ca
    assert local_ca.cert.extensions.get_extension_for_class(x509.KeyUsage).value.key_cert_sign
    assert slash_dn(local_ca.cert.subject).startswith("/O=Bamboo/CN=Bamboo Local CA")
    again = LocalCA.load_or_create(local_home)
    assert again.cert == local_ca.cert


def test_local_ca_refuses_a_lone_file(local_ca: LocalCA, tmp_path: Path) -> None:
    (tmp_path / "ca.pem").write_bytes(_pem(local_ca.cert))
    with pytest.raises(ValueError, match="only one"):
        LocalCA.load_or_create(tmp_path)


def test_server_certificate(local_ca: LocalCA, local_home: Path) -> None:
    cert_path, key_path = ensure_server_certificate(
        local_ca, local_home, hostnames=("localhost", "bamboo.test")
    )
    assert _mode(key_path) == 0o600
    first = cert_path.read_bytes()
    cert = x509.load_pem_x509_certificate(first)
    names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert names.get_values_for_type(x509.DNSName) == ["localhost", "bamboo.test"]
    assert [str(ip) for ip in names.get_values_for_type(x509.IPAddress)] == ["127.0.0.1", "::1"]
    assert (
        ExtendedKeyUsageOID.SERVER_AUTH
        in cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    )

    ensure_server_certificate(local_ca, local_home, hostnames=("localhost", "bamboo.test"))
    assert cert_path.read_bytes() == first
    ensure_server_certificate(local_ca, local_home, hostnames=("localhost",))
    assert cert_path.read_bytes() == first
    ensure_server_certificate(local_ca, local_home, hostnames=("localhost", "other.test"))
    assert cert_path.read_bytes() != first


@pytest.fixture
def now() -> datetime:
    """The time of the test itself: the local CA is created when its fixture runs, which can be
    minutes after this module's NOW in a long session (its certificate would not be valid yet)."""
    return datetime.now(UTC).replace(microsecond=0)


def test_user_certificate_without_proxy(local_ca: LocalCA, tmp_path: Path, now: datetime) -> None:
    pem, key = issue_user_credentials(local_ca, dn=USER_DN, out_prefix=tmp_path / "user", now=now)
    assert (pem.name, key.name) == ("user.pem", "user.key")
    assert _mode(key) == 0o600
    chain = load_pem_chain(pem.read_bytes())
    assert len(chain) == 1
    result = verify_client_chain(chain, TrustStore([local_ca.cert]), now=now)
    assert result.dn == USER_DN and not result.is_proxy
    ssl.create_default_context(ssl.Purpose.SERVER_AUTH).load_cert_chain(pem, key)


def test_user_certificate_with_fqans_in_the_end_entity(
    local_ca: LocalCA, tmp_path: Path, now: datetime
) -> None:
    pem, _ = issue_user_credentials(
        local_ca, dn=USER_DN, out_prefix=tmp_path / "user", fqans=["/atlas/Role=pilot"], now=now
    )
    trust = TrustStore([local_ca.cert])
    result = verify_client_chain(load_pem_chain(pem.read_bytes()), trust, now=now, voms_trust=trust)
    assert result.fqans == ("/atlas/Role=pilot",)


@pytest.mark.parametrize(
    ("options", "last_cn", "limited"),
    [
        ({"proxy": True}, None, False),
        ({"proxy": True, "limited": True}, None, True),
        ({"legacy_proxy": True}, "proxy", False),
        ({"legacy_proxy": True, "limited": True}, "limited proxy", True),
    ],
)
def test_user_proxy(
    local_ca: LocalCA,
    tmp_path: Path,
    now: datetime,
    options: dict[str, bool],
    last_cn: str | None,
    limited: bool,
) -> None:
    pem, key = issue_user_credentials(
        local_ca,
        dn=USER_DN,
        out_prefix=tmp_path / "x509up_u1000.proxy",
        fqans=["/atlas/Role=production", "/atlas"],
        lifetime=3 * DAY,
        now=now,
        **options,
    )
    assert pem.name == "x509up_u1000.proxy.pem"
    assert _mode(key) == 0o600
    chain = load_pem_chain(pem.read_bytes())
    assert len(chain) == 2
    proxy, user = chain
    assert proxy.not_valid_after_utc - now <= PROXY_MAX_LIFETIME
    proxy_key = serialization.load_pem_private_key(key.read_bytes(), password=None)
    assert proxy_key.public_key() == proxy.public_key()

    trust = TrustStore([local_ca.cert])
    result = verify_client_chain(chain, trust, now=now, voms_trust=trust)
    assert result.is_proxy and result.is_limited is limited
    assert result.end_entity_dn == USER_DN == slash_dn(user.subject)
    proxy_cn = proxy.subject.rdns[-1].get_attributes_for_oid(NameOID.COMMON_NAME)[0].value
    if last_cn is None:
        assert proxy_cn.isdigit() and int(proxy_cn) < 2**31
    else:
        assert proxy_cn == last_cn
    assert result.dn == f"{USER_DN}/CN={proxy_cn}"
    assert result.fqans == ("/atlas/Role=production", "/atlas")
    ssl.create_default_context(ssl.Purpose.SERVER_AUTH).load_cert_chain(pem, key)


def test_issue_rejects_bad_input(local_ca: LocalCA, tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        issue_user_credentials(local_ca, dn="CN=no slash", out_prefix=tmp_path / "u")
    with pytest.raises(ValueError):
        issue_user_credentials(local_ca, dn=USER_DN, out_prefix=tmp_path / "u", limited=True)
    with pytest.raises(ValueError):
        issue_user_credentials(local_ca, dn=USER_DN, out_prefix=tmp_path / "u", fqans=["/cms"], vo="atlas")


# --- real TLS --------------------------------------------------------------------------------------


async def test_tls_handshake_with_rfc_proxy_and_verified_chain(
    local_ca: LocalCA, local_home: Path, tmp_path: Path
) -> None:
    server_pem, server_key = ensure_server_certificate(local_ca, local_home)
    client_pem, client_key = issue_user_credentials(
        local_ca, dn=USER_DN, out_prefix=tmp_path / "proxy", proxy=True, fqans=["/atlas/Role=production"]
    )
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_context.load_cert_chain(server_pem, server_key)
    server_context.load_verify_locations(cafile=str(local_home / "ca.pem"))
    server_context.verify_mode = ssl.CERT_REQUIRED
    server_context.verify_flags |= ssl.VERIFY_ALLOW_PROXY_CERTS

    seen: asyncio.Future[list[x509.Certificate]] = asyncio.get_running_loop().create_future()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        ssl_object = writer.get_extra_info("ssl_object")
        # Python 3.11 has no public accessor; the private _SSLSocket method exists since 3.10.
        verified = ssl_object._sslobj.get_verified_chain()
        seen.set_result(
            [x509.load_der_x509_certificate(c.public_bytes(ssl._ssl.ENCODING_DER)) for c in verified]
        )
        writer.write(b"hello")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0, ssl=server_context)
    try:
        port = server.sockets[0].getsockname()[1]
        client_context = ssl.create_default_context(cafile=str(local_home / "ca.pem"))
        client_context.load_cert_chain(client_pem, client_key)
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection("127.0.0.1", port, ssl=client_context, server_hostname="localhost"), 10
        )
        assert await asyncio.wait_for(reader.read(), 10) == b"hello"
        writer.close()
        chain = await asyncio.wait_for(seen, 10)
    finally:
        server.close()
        await server.wait_closed()

    assert [slash_dn(cert.subject) for cert in chain[1:]] == [USER_DN, slash_dn(local_ca.cert.subject)]
    result = describe_verified_chain(chain, voms_trust=TrustStore([local_ca.cert]), now=datetime.now(UTC))
    assert result.dn.startswith(USER_DN + "/CN=") and result.dn == slash_dn(chain[0].subject)
    assert result.end_entity_dn == USER_DN
    assert result.is_proxy and not result.is_limited
    assert result.fqans == ("/atlas/Role=production",)

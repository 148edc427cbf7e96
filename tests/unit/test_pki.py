"""The stack's certificates: right names, right usages, and really signed by the CA."""

from __future__ import annotations

import ipaddress
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from hack.stack.pki import CertificateAuthority, signing_key_pem


@pytest.fixture(scope="module")
def ca() -> CertificateAuthority:
    return CertificateAuthority("test-ca")


def _load(pem: bytes) -> x509.Certificate:
    return x509.load_pem_x509_certificate(pem)


def test_ca_is_a_ca(ca: CertificateAuthority) -> None:
    cert = _load(ca.cert_pem)
    assert cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert cert.subject == cert.issuer


def test_serving_cert_covers_loopback_and_is_signed_by_ca(ca: CertificateAuthority) -> None:
    leaf = _load(ca.serving("etcd").cert_pem)
    sans = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sans.get_values_for_type(x509.DNSName) == ["localhost"]
    assert sans.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("127.0.0.1")]
    usages = leaf.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert ExtendedKeyUsageOID.SERVER_AUTH in usages
    leaf.verify_directly_issued_by(_load(ca.cert_pem))  # raises if the signature is wrong


def test_client_cert_carries_groups_for_rbac(ca: CertificateAuthority) -> None:
    pair = ca.issue("admin", organizations=("system:masters",), client=True)
    leaf = _load(pair.cert_pem)
    orgs = [a.value for a in leaf.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)]
    assert orgs == ["system:masters"]
    usages = leaf.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(usages) == [ExtendedKeyUsageOID.CLIENT_AUTH]


def test_cert_from_another_ca_does_not_verify(ca: CertificateAuthority) -> None:
    other = CertificateAuthority("other")
    leaf = _load(other.serving("x").cert_pem)
    with pytest.raises(ValueError, match="issuer"):
        leaf.verify_directly_issued_by(_load(ca.cert_pem))


def test_key_file_is_private(ca: CertificateAuthority, tmp_path: Path) -> None:
    crt, key = ca.serving("x").write(tmp_path, "x")
    assert key.stat().st_mode & 0o077 == 0
    assert crt.read_bytes().startswith(b"-----BEGIN CERTIFICATE-----")


def test_signing_key_pair_matches() -> None:
    private_pem, public_pem = signing_key_pem()
    private = serialization.load_pem_private_key(private_pem, password=None)
    assert isinstance(private, ec.EllipticCurvePrivateKey)
    public = serialization.load_pem_public_key(public_pem)
    assert isinstance(public, ec.EllipticCurvePublicKey)
    assert public.public_numbers() == private.public_key().public_numbers()

"""The network's certificate authority: the identities behind mutual TLS.

The coordinator's operator keeps the CA (`bridgestat ca init`). Every member's node and the
coordinator get a certificate whose common name and DNS subject alternative name is their
name in the network file, so a node can check who calls it (its allow-list) and the
coordinator can check that the node at a member's address is that member.

Two ways to a member certificate:

- `issue`: the CA makes key and certificate (local demos, tests, the coordinator itself);
- `make_csr` at the member, `sign_csr` at the CA: the member's private key never leaves it.

Certificates have a lifetime (members' and the coordinator's `MEMBER_DAYS`, the CA's
`CA_DAYS`); `status` lists the days left on each, and `renew` replaces one before it expires,
always with a new key:

- `renew` at the CA, for an identity whose key the CA made (the coordinator's own, local
  demos): a new key and certificate for the same name, replacing both files atomically;
- `renew_request` at the member: a new key and a signing request for the name of its current
  certificate, written apart from the files in use; the CA signs it with `sign_csr`, and the
  member puts certificate and key in place and sends the node SIGHUP.

Keys are EC P-256, written unencrypted with mode 0600; certificates carry serverAuth and
clientAuth, since a node is a server and the coordinator a client of the same CA.
`check_identity` (from `bridgestat.common.certs`, shared with the node) validates a
certificate, key and CA triple before first use, naming the file that is wrong.
"""

from __future__ import annotations

import datetime as dt
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from bridgestat.common import names
from bridgestat.common.certs import (
    CertificateError,
    Expiry,
    certificate_names,
    check_identity,
    common_name,
    expiry,
    issuer_problem,
    load_certificate,
    load_private_key,
)
from bridgestat.common.names import NAME_RULE, is_name

# check_identity and common_name are the shared checks (bridgestat.common.certs), re-exported
# here for the callers that import them from the CA module.
__all__ = ["CA_CERT", "CA_DAYS", "CA_KEY", "CA_NAME", "COORDINATOR", "MEMBER_DAYS", "CaError",
           "Identity", "check_identity", "common_name", "init_ca", "issue", "make_csr",
           "renew", "renew_request", "sign_csr", "status"]

CA_NAME = "bridgestat network CA"
CA_KEY = "ca.key"
CA_CERT = "ca.pem"
CA_DAYS = 3650
MEMBER_DAYS = 730
COORDINATOR = names.COORDINATOR

PrivateKey = ec.EllipticCurvePrivateKey
SubjectKey = ec.EllipticCurvePublicKey | rsa.RSAPublicKey


class CaError(ValueError):
    """A CA operation or certificate check failed; the message names the file."""


@dataclass(frozen=True)
class Identity:
    """A certificate and its private key on disk."""

    name: str
    cert: Path
    key: Path


def init_ca(directory: Path, *, days: int = CA_DAYS) -> Path:
    """Create the CA key and self-signed certificate in `directory`; refuse to overwrite."""
    directory = Path(directory)
    if (directory / CA_KEY).exists():
        raise CaError(f"{directory / CA_KEY}: a CA already exists here; not overwritten")
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, CA_NAME)])
    start = _now() - dt.timedelta(minutes=5)  # tolerate small clock skew between machines
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(start).not_valid_after(start + dt.timedelta(days=days))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(_key_usage(key_cert_sign=True, crl_sign=True), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()),
                           critical=False)
            .sign(key, hashes.SHA256()))
    directory.mkdir(parents=True, exist_ok=True)
    _write_key(directory / CA_KEY, key)
    _write(directory / CA_CERT, cert.public_bytes(serialization.Encoding.PEM))
    return directory / CA_CERT


def issue(directory: Path, name: str, out: Path | None = None, *, days: int = MEMBER_DAYS,
          valid_from: dt.datetime | None = None) -> Identity:
    """Make a key and a certificate for `name` signed by the CA in `directory`; write
    <out>/<name>.key and <out>/<name>.pem (out defaults to the CA directory)."""
    _check_name(name)
    key = ec.generate_private_key(ec.SECP256R1())
    out = Path(out or directory)
    out.mkdir(parents=True, exist_ok=True)
    cert = _sign(Path(directory), name, key.public_key(), days, valid_from)
    _write_key(out / f"{name}.key", key)
    _write(out / f"{name}.pem", cert)
    return Identity(name, out / f"{name}.pem", out / f"{name}.key")


def make_csr(name: str, out: Path) -> tuple[Path, Path]:
    """At the member: a new key and a certificate signing request for `name`; returns
    (key, csr). Send only the .csr to the CA; the key stays."""
    _check_name(name)
    key = ec.generate_private_key(ec.SECP256R1())
    csr = (x509.CertificateSigningRequestBuilder()
           .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
           .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
           .sign(key, hashes.SHA256()))
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    _write_key(out / f"{name}.key", key)
    _write(out / f"{name}.csr", csr.public_bytes(serialization.Encoding.PEM))
    return out / f"{name}.key", out / f"{name}.csr"


def sign_csr(directory: Path, csr_path: Path, out: Path | None = None, *,
             days: int = MEMBER_DAYS) -> Path:
    """At the CA: sign a member's request; the certificate names the request's common name
    (the CA sets every extension itself). Writes <out>/<name>.pem beside the .csr by default."""
    csr_path = Path(csr_path)
    try:
        csr = x509.load_pem_x509_csr(csr_path.read_bytes())
    except (OSError, ValueError) as exc:
        raise CaError(f"{csr_path}: not a readable PEM certificate signing request: "
                      f"{exc}") from exc
    if not csr.is_signature_valid:
        raise CaError(f"{csr_path}: the request's signature is invalid")
    names = csr.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    if not names:
        raise CaError(f"{csr_path}: the request has no common name")
    name = str(names[0].value)
    _check_name(name)
    public = csr.public_key()
    if not isinstance(public, (ec.EllipticCurvePublicKey, rsa.RSAPublicKey)):
        raise CaError(f"{csr_path}: the request's key must be an EC or RSA key")
    cert_path = Path(out or csr_path.parent) / f"{name}.pem"
    cert_path.parent.mkdir(parents=True, exist_ok=True)
    _write(cert_path, _sign(Path(directory), name, public, days, None))
    return cert_path


def status(directory: Path, extra: tuple[Path, ...] = ()) -> list[Expiry]:
    """Days left on the CA's certificate in `directory`, every other certificate there
    (those the CA issued into it), and the certificates `extra` names; sorted soonest first
    after the CA's."""
    directory = Path(directory)
    ca_cert = _load_cert(directory / CA_CERT)
    found = [expiry(ca_cert, directory / CA_CERT, "CA certificate")]
    paths = sorted(p for p in directory.glob("*.pem") if p.name != CA_CERT)
    others = [expiry(_load_cert(p), p) for p in dict.fromkeys([*paths, *map(Path, extra)])]
    return found + sorted(others, key=lambda e: e.days)


def renew(directory: Path, cert_path: Path, key_path: Path | None = None, *,
          days: int = MEMBER_DAYS) -> Identity:
    """At the CA: a new key and a certificate valid from now for the name of the certificate
    at `cert_path` (which this CA must have signed), replacing the certificate and its key
    (default: beside it, <name>.key) atomically. A serving node picks them up on SIGHUP."""
    cert_path = Path(cert_path)
    key_path = Path(key_path or cert_path.with_suffix(".key"))
    name = _name_of(cert_path, Path(directory))
    key = ec.generate_private_key(ec.SECP256R1())
    cert = _sign(Path(directory), name, key.public_key(), days, None)
    _replace(key_path, _key_bytes(key), 0o600)
    _replace(cert_path, cert, 0o644)
    return Identity(name, cert_path, key_path)


def renew_request(cert_path: Path, out: Path) -> tuple[Path, Path]:
    """At the member: a new key and a signing request for the name of the certificate at
    `cert_path`, written to `out` as <name>.key and <name>.csr; refused when that would
    overwrite the key in use (beside the certificate). Returns (key, csr)."""
    cert_path, out = Path(cert_path), Path(out)
    name = _single_name(_load_cert(cert_path), cert_path)
    if (out / f"{name}.key").resolve() == cert_path.with_suffix(".key").resolve():
        raise CaError(f"{out / f'{name}.key'}: is the key in use beside {cert_path}; choose "
                      "another --out folder (the new key replaces it only with the new "
                      "certificate)")
    return make_csr(name, out)


# -- helpers ---------------------------------------------------------------------------------

def _sign(directory: Path, name: str, public: SubjectKey, days: int,
          valid_from: dt.datetime | None) -> bytes:
    ca_key, ca_cert = _load_ca(directory)
    start = valid_from or _now() - dt.timedelta(minutes=5)
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
            .issuer_name(ca_cert.subject).public_key(public)
            .serial_number(x509.random_serial_number())
            .not_valid_before(start).not_valid_after(start + dt.timedelta(days=days))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH,
                                                  ExtendedKeyUsageOID.CLIENT_AUTH]),
                           critical=False)
            .add_extension(_key_usage(digital_signature=True, key_agreement=True),
                           critical=True)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
                ca_cert.public_key()), critical=False)  # type: ignore[arg-type]
            .sign(ca_key, hashes.SHA256()))
    return cert.public_bytes(serialization.Encoding.PEM)


def _name_of(cert_path: Path, directory: Path) -> str:
    """The name of a certificate this CA signed; CaError naming the file otherwise."""
    cert = _load_cert(cert_path)
    ca_cert = _load_cert(directory / CA_CERT)
    if problem := issuer_problem(cert, cert_path, ca_cert, directory / CA_CERT):
        raise CaError(problem.replace("tls.ca", "--dir"))
    return _single_name(cert, cert_path)


def _single_name(cert: x509.Certificate, path: Path) -> str:
    names = certificate_names(cert)
    if len(names) != 1:
        raise CaError(f"{path}: a renewal needs a certificate for exactly one name, this one "
                      f"is for {', '.join(names) or 'no name'}")
    _check_name(names[0])
    return names[0]


def _key_usage(**allowed: bool) -> x509.KeyUsage:
    """KeyUsage with the named uses on and every other off."""
    uses = ("digital_signature", "content_commitment", "key_encipherment", "data_encipherment",
            "key_agreement", "key_cert_sign", "crl_sign", "encipher_only", "decipher_only")
    return x509.KeyUsage(**{use: allowed.get(use, False) for use in uses})


def _load_ca(directory: Path) -> tuple[PrivateKey, x509.Certificate]:
    key_path, cert_path = directory / CA_KEY, directory / CA_CERT
    if not key_path.is_file():
        raise CaError(f"{key_path}: no CA here; create one with `bridgestat ca init --dir "
                      f"{directory}`")
    key = _load_key(key_path)
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise CaError(f"{key_path}: the CA key must be an EC key")
    return key, _load_cert(cert_path)


def _load_cert(path: Path) -> x509.Certificate:
    try:
        return load_certificate(path)
    except CertificateError as exc:
        raise CaError(str(exc)) from exc


def _load_key(path: Path) -> PrivateKeyTypes:
    try:
        return load_private_key(path)
    except CertificateError as exc:
        raise CaError(str(exc)) from exc


def _check_name(name: str) -> None:
    if not is_name(name):
        raise CaError(f"name {name!r}: {NAME_RULE}, as in the network file")


def _key_bytes(key: PrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _write_key(path: Path, key: PrivateKey) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(_key_bytes(key))


def _replace(path: Path, data: bytes, mode: int) -> None:
    """Write `path` whole or not at all: a reader (a node reloading) sees the old file or
    the new one, never part of it."""
    fd, temp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temp, path)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise


def _write(path: Path, data: bytes) -> None:
    path.write_bytes(data)


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)

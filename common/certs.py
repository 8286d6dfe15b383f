"""Certificate checks both sides make before first use, so that a broken identity stops a
node or a coordinator at start-up naming the file, not a TLS handshake on the first call.

The network's identities (`bridgestat ca`): a CA certificate, and per member or coordinator a
certificate signed by it, whose DNS subject alternative name (else common name) is the
member's name, with its private key. `check_identity` checks such a triple in a fixed order
and returns the first problem as (role, message), role "ca", "cert" or "key": the key under
`tls` of the node config or network file that names the file at fault.

Certificates have a lifetime (`bridgestat ca` issues members' for two years): `expiry`
gives the days left on one, and every place that shows it (`bridgestat-node check` and
`budget`, the node's metric and log, `bridgestat ca status`) warns from `WARN_DAYS` on.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes
from cryptography.x509.oid import NameOID

Problem = tuple[str, str]  # (role: "ca" | "cert" | "key", message naming the file)
WARN_DAYS = 30  # warn when a certificate expires within this many days
RENEW_HINT = "renew it with `bridgestat ca renew` (see the README, Certificates with a lifetime)"


class CertificateError(ValueError):
    """A certificate or key file that cannot be read or parsed; the message names it."""


def load_certificate(path: Path) -> x509.Certificate:
    """The PEM certificate at `path`; CertificateError naming the file otherwise."""
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise CertificateError(f"cannot read {path}: {exc.strerror or exc}") from exc
    try:
        return x509.load_pem_x509_certificate(data)
    except ValueError as exc:
        raise CertificateError(f"{path} is not a PEM certificate") from exc


def load_private_key(path: Path) -> PrivateKeyTypes:
    """The unencrypted PEM private key at `path`; CertificateError naming the file otherwise."""
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise CertificateError(f"cannot read {path}: {exc.strerror or exc}") from exc
    try:
        return serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as exc:
        raise CertificateError(f"{path} is not an unencrypted PEM private key") from exc


def validity_problem(cert: x509.Certificate, path: Path, what: str = "certificate") -> str:
    """Why `cert` is not valid now ("" when it is)."""
    now = dt.datetime.now(dt.UTC)
    if now < cert.not_valid_before_utc:
        return f"{what} {path} is not valid before {cert.not_valid_before_utc:%Y-%m-%d %H:%M} UTC"
    if now > cert.not_valid_after_utc:
        return f"{what} {path} expired on {cert.not_valid_after_utc:%Y-%m-%d}"
    return ""


def issuer_problem(cert: x509.Certificate, path: Path, ca: x509.Certificate,
                   ca_path: Path) -> str:
    """Why `cert` is not directly signed by `ca` ("" when it is)."""
    try:
        cert.verify_directly_issued_by(ca)
    except (ValueError, TypeError, InvalidSignature):
        return f"certificate {path} is not signed by the CA in tls.ca ({ca_path})"
    return ""


def key_problem(key: PrivateKeyTypes, key_path: Path, cert: x509.Certificate,
                cert_path: Path) -> str:
    """Why `key` is not the private key of `cert` ("" when it is)."""
    if _spki(key.public_key()) != _spki(cert.public_key()):
        return f"key {key_path} does not match the certificate in tls.cert ({cert_path})"
    return ""


def certificate_names(cert: x509.Certificate) -> list[str]:
    """The names a peer checks: the DNS subject alternative names, else the common name."""
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    except x509.ExtensionNotFound:
        return [common_name(cert)] if common_name(cert) else []
    return list(san.value.get_values_for_type(x509.DNSName))


def common_name(cert: x509.Certificate) -> str:
    names = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    return str(names[0].value) if names else ""


def name_problem(cert: x509.Certificate, path: Path, name: str, what: str = "name") -> str:
    """Why `cert` is not for `name` ("" when it is); `what` says where the name comes from
    (e.g. "node_id")."""
    names = certificate_names(cert)
    if name in names:
        return ""
    return f"certificate {path} is for {', '.join(names) or 'no name'}, not {what} {name}"


@dataclass(frozen=True)
class Expiry:
    """When a certificate expires and how many whole days are left (negative: expired)."""

    what: str  # e.g. "certificate", "CA certificate"
    path: Path
    not_after: dt.datetime
    days: int

    @property
    def warning(self) -> bool:
        """Expired, or expiring within WARN_DAYS days."""
        return self.days <= WARN_DAYS

    def describe(self) -> str:
        """One line for people: the file, the date, the days left, and a warning when due."""
        date = f"{self.not_after:%Y-%m-%d %H:%M} UTC"
        if self.days < 0:
            return f"{self.what} {self.path} EXPIRED on {date}: {RENEW_HINT}"
        text = f"{self.what} {self.path} expires {date} (in {self.days} days)"
        if self.warning:
            return f"{text}: WARNING, fewer than {WARN_DAYS + 1} days left; {RENEW_HINT}"
        return text


def expiry(cert: x509.Certificate, path: Path, what: str = "certificate",
           now: dt.datetime | None = None) -> Expiry:
    """The expiry of `cert` (read from `path`) as of `now` (default: the current time);
    days are whole days left, rounded down."""
    left = cert.not_valid_after_utc - (now or dt.datetime.now(dt.UTC))
    return Expiry(what, Path(path), cert.not_valid_after_utc, left.days)


def file_expiry(path: Path, what: str = "certificate") -> Expiry:
    """The expiry of the certificate at `path`; CertificateError naming the file."""
    return expiry(load_certificate(path), path, what)


def check_identity(ca: Path, cert: Path, key: Path, name: str | None = None,
                   what: str = "name") -> Problem | None:
    """The first problem of a CA, certificate and key triple, as (role, message): each file
    readable and PEM, both certificates valid now, the certificate signed by the CA, the key
    its own and (given `name`) the certificate for `name`. None when all hold."""
    try:
        ca_cert = load_certificate(ca)
    except CertificateError as exc:
        return "ca", str(exc)
    if problem := validity_problem(ca_cert, ca, "CA certificate"):
        return "ca", problem
    try:
        own = load_certificate(cert)
    except CertificateError as exc:
        return "cert", str(exc)
    if problem := validity_problem(own, cert) or issuer_problem(own, cert, ca_cert, ca):
        return "cert", problem
    try:
        private = load_private_key(key)
    except CertificateError as exc:
        return "key", str(exc)
    if problem := key_problem(private, key, own, cert):
        return "key", problem
    if name is not None and (problem := name_problem(own, cert, name, what)):
        return "cert", problem
    return None


def _spki(public: object) -> bytes:
    return public.public_bytes(  # type: ignore[attr-defined, no-any-return]
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)

"""Certificate lifetimes: days left and the 30-day warning (`common/certs.py`), and the CA's
`status`, `renew` and `renew_request` (`coordinator/ca.py`), on real certificates and files."""

from __future__ import annotations

import datetime as dt
import stat
from pathlib import Path

import pytest

from bridgestat.common import certs
from bridgestat.coordinator import ca
from bridgestat.coordinator.cli import main as cli


@pytest.fixture
def authority(tmp_path: Path) -> Path:
    ca.init_ca(tmp_path / "ca")
    return tmp_path / "ca"


def _issued(authority: Path, name: str, days_left: float, out: Path | None = None
            ) -> ca.Identity:
    """A certificate for `name` with `days_left` days of its MEMBER_DAYS lifetime left."""
    start = dt.datetime.now(dt.UTC) - dt.timedelta(days=ca.MEMBER_DAYS - days_left)
    return ca.issue(authority, name, out, valid_from=start)


def test_days_left_round_down_and_count_past_expiry(authority: Path) -> None:
    issued = _issued(authority, "member-01", 400)
    cert = certs.load_certificate(issued.cert)

    def days_at(before_end: dt.timedelta) -> int:
        return certs.expiry(cert, issued.cert, now=cert.not_valid_after_utc - before_end).days
    assert days_at(dt.timedelta(days=30, hours=23)) == 30
    assert days_at(dt.timedelta(seconds=1)) == 0
    assert days_at(dt.timedelta(hours=-1)) == -1


def test_expiry_of_a_real_certificate(authority: Path) -> None:
    issued = _issued(authority, "member-01", 100.5)
    found = certs.file_expiry(issued.cert)
    assert found.days == 100 and not found.warning
    assert found.path == issued.cert and found.what == "certificate"
    later = found.not_after - dt.timedelta(days=certs.WARN_DAYS, hours=1)
    assert certs.expiry(certs.load_certificate(issued.cert), issued.cert, now=later).days == 30


@pytest.mark.parametrize(("days_left", "warning", "text"), [
    (31.5, False, "(in 31 days)"),
    (30.5, True, ("(in 30 days): WARNING, fewer than 31 days left; renew it with "
                  "`bridgestat ca renew`")),
    (0.5, True, "(in 0 days): WARNING"),
    (-2.5, True, "EXPIRED on"),
])
def test_the_warning_starts_at_thirty_days(authority: Path, days_left: float, warning: bool,
                                           text: str) -> None:
    issued = _issued(authority, "member-01", days_left)
    found = certs.file_expiry(issued.cert)
    assert found.warning is warning
    assert text in found.describe() and str(issued.cert) in found.describe()


def test_status_lists_the_ca_first_then_the_soonest(authority: Path, tmp_path: Path) -> None:
    _issued(authority, "member-01", 400.5)
    _issued(authority, "coordinator", 10.5)
    elsewhere = _issued(authority, "member-02", 200.5, tmp_path / "m2")
    found = ca.status(authority, (elsewhere.cert,))
    assert [(f.path.name, f.days) for f in found] == [
        ("ca.pem", ca.CA_DAYS - 1), ("coordinator.pem", 10), ("member-02.pem", 200),
        ("member-01.pem", 400)]
    assert found[0].what == "CA certificate"


def test_ca_renews_in_place_with_a_new_key_and_a_fresh_lifetime(authority: Path) -> None:
    old = _issued(authority, "coordinator", 5.5)
    old_cert = certs.load_certificate(old.cert)
    old_key = old.key.read_bytes()
    renewed = ca.renew(authority, old.cert)
    assert renewed == ca.Identity("coordinator", old.cert, old.key)
    cert = certs.load_certificate(renewed.cert)
    assert cert.serial_number != old_cert.serial_number
    assert renewed.key.read_bytes() != old_key  # a new key, not the old one re-signed
    assert certs.file_expiry(renewed.cert).days == ca.MEMBER_DAYS - 1
    assert certs.check_identity(authority / ca.CA_CERT, renewed.cert, renewed.key,
                                "coordinator") is None
    assert stat.S_IMODE(renewed.key.stat().st_mode) == 0o600
    assert not [p for p in authority.iterdir() if p.name.startswith(".")]  # no temp files


def test_ca_refuses_to_renew_another_cas_certificate(authority: Path, tmp_path: Path) -> None:
    ca.init_ca(tmp_path / "rogue")
    stranger = ca.issue(tmp_path / "rogue", "member-01", tmp_path / "stranger")
    before = stranger.cert.read_bytes()
    with pytest.raises(ca.CaError, match=r"stranger/member-01\.pem is not signed by the CA"):
        ca.renew(authority, stranger.cert)
    assert stranger.cert.read_bytes() == before


def test_member_renews_through_a_request_without_touching_the_key_in_use(
        authority: Path, tmp_path: Path) -> None:
    live = _issued(authority, "member-07", 20.5, tmp_path / "etc")
    in_use = live.key.read_bytes(), live.cert.read_bytes()
    with pytest.raises(ca.CaError, match="the key in use"):
        ca.renew_request(live.cert, tmp_path / "etc")
    key, request = ca.renew_request(live.cert, tmp_path / "renew")
    assert (live.key.read_bytes(), live.cert.read_bytes()) == in_use
    cert = ca.sign_csr(authority, request)
    assert certs.check_identity(authority / ca.CA_CERT, cert, key, "member-07") is None
    assert certs.file_expiry(cert).days == ca.MEMBER_DAYS - 1


def test_cli_status_exits_1_within_the_warning(authority: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    _issued(authority, "member-01", 300.5)
    assert cli.main(["ca", "status", "--dir", str(authority)]) == 0
    _issued(authority, "coordinator", 29.5)
    assert cli.main(["ca", "status", "--dir", str(authority)]) == 1
    out = capsys.readouterr().out
    assert "coordinator.pem expires" in out and "(in 29 days): WARNING" in out


def test_cli_renew_both_ways(authority: Path, tmp_path: Path,
                             capsys: pytest.CaptureFixture[str]) -> None:
    old = _issued(authority, "coordinator", 3.5)
    assert cli.main(["ca", "renew", "--dir", str(authority), "--cert", str(old.cert)]) == 0
    assert f"({ca.MEMBER_DAYS - 1} days)" in capsys.readouterr().out
    assert cli.main(["ca", "renew", "--cert", str(old.cert), "--out",
                     str(tmp_path / "req")]) == 0
    assert (tmp_path / "req" / "coordinator.csr").is_file()
    assert cli.main(["ca", "renew", "--dir", str(authority), "--cert",
                     str(tmp_path / "nothing.pem")]) == 2
    assert "nothing.pem" in capsys.readouterr().err

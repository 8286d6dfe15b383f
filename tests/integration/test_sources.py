"""Every data source gives the node the same data and the same check (node/sources.py).

One synthetic member is written as CSV (coordinator.synth), then as Parquet (pyarrow), as an
Excel workbook (openpyxl) and into a real PostgreSQL server: a throwaway cluster that this
module creates with Debian's `postgresql` server binaries (installed by
scripts/ensure-postgresql, `make test`), started on a free loopback port and removed at the
end. The member's tables are loaded by an owner role into a private schema and exposed as
views in schema `bridge`; the node reads them as a separate role that may only SELECT those
views. Without the server binaries the PostgreSQL tests skip, except in CI, where they fail.

`bridgestat-node check` runs as a subprocess, as member IT runs it.
"""

from __future__ import annotations

import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import openpyxl
import pandas as pd
import psycopg
import pytest
import yaml
from psycopg import sql

from bridgestat.coordinator.demo import local, synth
from bridgestat.node import sources
from bridgestat.node.config import DataConfig, load_config
from bridgestat.node.errors import ConfigError, DataError
from bridgestat.node.frames import Frames
from bridgestat.node.planner import Policy, compile_query
from bridgestat.node.query import INTAKE, Occasion, QuerySpec, Statistic
from bridgestat.node.schema import ColumnType, Schema, TableSpec

MONTH_12 = Occasion(12, 9, 15)
QUERIES = [  # true (noise-free) aggregates through the node's own planner and frames
    QuerySpec(Statistic.COUNT, "participant", "", 1.0),
    QuerySpec(Statistic.HISTOGRAM, "participant", "household_type", 1.0),
    QuerySpec(Statistic.MEAN, "participant", "total_sessions", 1.0, group_by=("arm",)),
    QuerySpec(Statistic.MEAN, "participant", "goals_achieved", 1.0),
    QuerySpec(Statistic.MEAN, "assessment", "income_to_norm_ratio", 1.0, occasion=INTAKE),
    QuerySpec(Statistic.PAIRED_CHANGE, "assessment", "bridge_total", 1.0, occasion=MONTH_12),
    QuerySpec(Statistic.HISTOGRAM, "assessment", "on_social_assistance", 1.0,
              occasion=MONTH_12),
]
PASSWORD_ENV = "BRIDGESTAT_TEST_PG_PASSWORD"
NODE_ROLE, NODE_PASSWORD = "bridge_node", "node-pw-7c1e"
OWNER_ROLE, OWNER_PASSWORD = "bridge_owner", "owner-pw-93ad"
ADMIN_ROLE, ADMIN_PASSWORD = "bridge_admin", "admin-pw-5b20"
DATABASE = "member"
BAD_PERSON_ROW = 5  # 0-based data row of the participant given household_type 'castle'
BAD_ASSESSMENT_ROW = 7  # 0-based data row of the assessment given bridge_total 140
PG_TYPES = {ColumnType.KEY: "text", ColumnType.INTEGER: "integer",
            ColumnType.REAL: "double precision", ColumnType.BOOLEAN: "boolean",
            ColumnType.CATEGORICAL: "text"}


# --------------------------------------------------------------------------- the member


@dataclass(frozen=True)
class Member:
    """One synthetic member: its CSV folder and config, and its tables as typed frames."""

    folder: Path
    config: Path  # the CSV source's node.yaml
    schema: Schema
    typed: Mapping[str, pd.DataFrame]  # as pandas reads the CSV files (typed columns)


@pytest.fixture(scope="module")
def member(tmp_path_factory: pytest.TempPathFactory) -> Member:
    root = tmp_path_factory.mktemp("network")
    synth.write_network(root, members=1, seed=3, sizes=[150])
    config = local.write_configs(root, total_epsilon=3.0, max_per_query=1.0)[0].config
    schema = load_config(config).schema()
    typed = {t.name: pd.read_csv(config.parent / f"{t.name}.csv") for t in schema.tables}
    return Member(config.parent, config, schema, typed)


def _planted(member: Member) -> dict[str, pd.DataFrame]:
    """The member's typed tables with an out-of-vocabulary category and an out-of-bounds
    number planted (BAD_PERSON_ROW, BAD_ASSESSMENT_ROW)."""
    tables = {name: frame.copy() for name, frame in member.typed.items()}
    people = tables["participant"]
    people["household_type"] = people["household_type"].astype(object)
    people.loc[BAD_PERSON_ROW, "household_type"] = "castle"
    tables["assessment"].loc[BAD_ASSESSMENT_ROW, "bridge_total"] = 140.0
    return tables


def _write_csv(folder: Path, tables: Mapping[str, pd.DataFrame]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name, frame in tables.items():
        synth.write_csv(frame, folder / f"{name}.csv")
    return folder


def _write_parquet(folder: Path, tables: Mapping[str, pd.DataFrame]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name, frame in tables.items():
        frame.to_parquet(folder / f"{name}.parquet", index=False)
    return folder


def _write_workbook(path: Path, tables: Mapping[str, pd.DataFrame]) -> Path:
    """One sheet per table, cells typed as Excel holds them (numbers, booleans, text)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    book = openpyxl.Workbook(write_only=True)
    for name, frame in tables.items():
        sheet = book.create_sheet(name)
        sheet.append(list(frame.columns))
        columns = [frame[c].astype(object).where(frame[c].notna(), None).tolist()
                   for c in frame.columns]
        for row in zip(*columns, strict=True):
            sheet.append(list(row))
    book.save(path)
    return path


def _config(member: Member, folder: Path, name: str, data: dict[str, Any]) -> Path:
    """A node config like the member's CSV one, with another data source; written beside
    it (its other paths are relative), named after the test's folder."""
    doc = yaml.safe_load(member.config.read_text())
    doc["data"] = data
    path = member.config.with_name(f"node-{folder.name}-{name}.yaml")
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def _run(*args: str, env: Mapping[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "bridgestat.node.cli", *args],
                          capture_output=True, text=True, timeout=120, check=False,
                          env={**os.environ, **(env or {})})


# --------------------------------------------------------------------------- PostgreSQL


@dataclass(frozen=True)
class Cluster:
    """A running throwaway PostgreSQL server on 127.0.0.1 with the member's data loaded."""

    port: int
    bad_person: str  # participant_id whose household_type is 'castle' in schema bridge_bad
    bad_assessment: tuple[str, int]  # (participant_id, assessment_seq) with bridge_total 140

    def dsn(self, user: str = NODE_ROLE, port: int | None = None) -> str:
        return f"host=127.0.0.1 port={port or self.port} dbname={DATABASE} user={user}"

    def data(self, schema: str = "bridge", **tables: str) -> dict[str, Any]:
        """A postgresql `data:` config section reading views in `schema` as the node role."""
        mapping = {t: f"{schema}.{t}" for t in ("participant", "assessment", "goal",
                                                "coaching_contact")}
        return {"source": "postgresql", "dsn": self.dsn(), "password_env": PASSWORD_ENV,
                "tables": {**mapping, **tables}}


def _server_bin() -> Path | None:
    """The newest PostgreSQL server's bin folder (Debian: /usr/lib/postgresql/<v>/bin)."""
    found = [p.parent for p in Path("/usr/lib/postgresql").glob("*/bin/pg_ctl")]
    if found:
        return max(found, key=lambda p: int(p.parent.name) if p.parent.name.isdigit() else 0)
    pg_ctl = shutil.which("pg_ctl")
    return Path(pg_ctl).resolve().parent if pg_ctl else None


def _require_server() -> Path:
    """The server's bin folder; skip without it, except in CI, where that is a failure."""
    bin_dir = _server_bin()
    problem = None
    if bin_dir is None or not (bin_dir / "initdb").exists():
        problem = ("PostgreSQL server binaries not found; run scripts/ensure-postgresql "
                   "(Debian: apt-get install postgresql)")
    elif os.geteuid() == 0 and shutil.which("runuser") is None:
        problem = "running as root, but runuser is missing to start PostgreSQL as postgres"
    if problem is None:
        assert bin_dir is not None
        return bin_dir
    if os.environ.get("CI"):
        pytest.fail(f"CI is set but {problem}")
    pytest.skip(problem)


def _as_server_user(command: list[str]) -> list[str]:
    """PostgreSQL refuses to run as root: run it as the postgres OS user then."""
    return ["runuser", "-u", "postgres", "--", *command] if os.geteuid() == 0 else command


def _pg(bin_dir: Path, base: Path, *args: str) -> None:
    command = _as_server_user([str(bin_dir / args[0]), *args[1:]])
    done = subprocess.run(command, cwd=base, capture_output=True, text=True, timeout=60,
                          check=False)
    if done.returncode != 0:
        log = base / "server.log"
        tail = log.read_text()[-2000:] if log.exists() else ""
        raise RuntimeError(f"{' '.join(args[:1])} failed: {done.stdout}{done.stderr}{tail}")


@pytest.fixture(scope="module")
def cluster(member: Member) -> Iterator[Cluster]:
    """Create, start, fill, and finally stop and remove a PostgreSQL cluster."""
    bin_dir = _require_server()
    base = Path(tempfile.mkdtemp(prefix="bridgestat-pg-"))
    (base / "pw").write_text(ADMIN_PASSWORD + "\n")
    if os.geteuid() == 0:
        for path in (base, base / "pw"):
            shutil.chown(path, "postgres", "postgres")
    port = local.free_port()
    data_dir = base / "data"
    started = False
    try:
        _pg(bin_dir, base, "initdb", "-D", str(data_dir), "-U", ADMIN_ROLE, "--pwfile",
            str(base / "pw"), "--auth-local=trust", "--auth-host=scram-sha-256",
            "--encoding=UTF8", "--locale=C", "--no-sync")
        options = (f"-p {port} -k {base} -c listen_addresses=127.0.0.1 -c fsync=off "
                   "-c synchronous_commit=off -c full_page_writes=off -c max_connections=20")
        _pg(bin_dir, base, "pg_ctl", "-D", str(data_dir), "-l", str(base / "server.log"),
            "-w", "-t", "60", "-o", options, "start")
        started = True
        yield _fill(port, member)
    finally:
        if started:
            _pg(bin_dir, base, "pg_ctl", "-D", str(data_dir), "-m", "immediate", "-w", "stop")
        shutil.rmtree(base, ignore_errors=True)


def _fill(port: int, member: Member) -> Cluster:
    """Roles, database, the member's tables (private) and views (bridge, bridge_bad, ...)."""
    admin = f"host=127.0.0.1 port={port} dbname=postgres user={ADMIN_ROLE}"
    with psycopg.connect(admin, password=ADMIN_PASSWORD, autocommit=True) as conn:
        for role, password in ((OWNER_ROLE, OWNER_PASSWORD), (NODE_ROLE, NODE_PASSWORD)):
            conn.execute(sql.SQL("CREATE ROLE {} LOGIN PASSWORD {}").format(
                sql.Identifier(role), sql.Literal(password)))
        conn.execute(sql.SQL("CREATE DATABASE {} OWNER {}").format(
            sql.Identifier(DATABASE), sql.Identifier(OWNER_ROLE)))
        conn.execute(sql.SQL("REVOKE ALL ON DATABASE {} FROM PUBLIC").format(
            sql.Identifier(DATABASE)))
        conn.execute(sql.SQL("GRANT CONNECT ON DATABASE {} TO {}").format(
            sql.Identifier(DATABASE), sql.Identifier(NODE_ROLE)))
    people = member.typed["participant"]
    bad_person = str(people.loc[BAD_PERSON_ROW, "participant_id"])
    row = member.typed["assessment"].loc[BAD_ASSESSMENT_ROW]
    bad_assessment = (str(row["participant_id"]), int(row["assessment_seq"]))
    owner = f"host=127.0.0.1 port={port} dbname={DATABASE} user={OWNER_ROLE}"
    with psycopg.connect(owner, password=OWNER_PASSWORD, autocommit=True) as conn:
        for name in ("private", "bridge", "bridge_bad", "bridge_short"):
            conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(name)))
        for spec in member.schema.tables:
            _load_table(conn, spec, member.folder / f"{spec.name}.csv")
            _view(conn, "bridge", spec, {"contact_email": sql.SQL("'x@example.org'::text")})
            _view(conn, "bridge_bad", spec, _planted_sql(spec, bad_person, bad_assessment))
        short = member.schema.table("participant")
        _view(conn, "bridge_short", short, {"gender": None})
        for name in ("bridge", "bridge_bad", "bridge_short"):
            conn.execute(sql.SQL("GRANT USAGE ON SCHEMA {} TO {}").format(
                sql.Identifier(name), sql.Identifier(NODE_ROLE)))
            conn.execute(sql.SQL("GRANT SELECT ON ALL TABLES IN SCHEMA {} TO {}").format(
                sql.Identifier(name), sql.Identifier(NODE_ROLE)))
    return Cluster(port, bad_person, bad_assessment)


def _stored(spec: TableSpec) -> list[str]:
    return [c.name for c in spec.columns if c.derived is None]


def _load_table(conn: psycopg.Connection[Any], spec: TableSpec, csv_file: Path) -> None:
    """A typed table private.<table>, filled from the member's CSV with COPY."""
    columns = sql.SQL(", ").join(
        sql.SQL("{} {}").format(sql.Identifier(c.name), sql.SQL(PG_TYPES[c.type]))
        for c in spec.columns if c.derived is None)
    table = sql.Identifier("private", spec.name)
    conn.execute(sql.SQL("CREATE TABLE {} ({})").format(table, columns))
    names = sql.SQL(", ").join(sql.Identifier(c) for c in _stored(spec))
    copy = sql.SQL("COPY {} ({}) FROM STDIN (FORMAT csv, HEADER true)").format(table, names)
    with conn.cursor() as cur, cur.copy(copy) as writer:
        writer.write(csv_file.read_bytes())


def _view(conn: psycopg.Connection[Any], schema: str, spec: TableSpec,
          changes: Mapping[str, sql.Composable | None]) -> None:
    """schema.<table>: the private table's columns, some replaced (None: left out) or added."""
    items: list[sql.Composable] = []
    for name in _stored(spec):
        if name in changes and changes[name] is None:
            continue
        value = changes.get(name) or sql.Identifier(name)
        items.append(sql.SQL("{} AS {}").format(value, sql.Identifier(name)))
    items.extend(sql.SQL("{} AS {}").format(value, sql.Identifier(name))
                 for name, value in changes.items()
                 if value is not None and name not in _stored(spec))
    conn.execute(sql.SQL("CREATE VIEW {} AS SELECT {} FROM {}").format(
        sql.Identifier(schema, spec.name), sql.SQL(", ").join(items),
        sql.Identifier("private", spec.name)))


def _planted_sql(spec: TableSpec, person: str, assessment: tuple[str, int]
                 ) -> dict[str, sql.Composable | None]:
    if spec.name == "participant":
        return {"household_type": sql.SQL(
            "CASE WHEN participant_id = {} THEN 'castle' ELSE household_type END").format(
            sql.Literal(person))}
    if spec.name == "assessment":
        return {"bridge_total": sql.SQL(
            "CASE WHEN participant_id = {} AND assessment_seq = {} THEN 140 "
            "ELSE bridge_total END").format(sql.Literal(assessment[0]),
                                            sql.Literal(assessment[1]))}
    return {}


# --------------------------------------------------------------------------- helpers


def _canonical(frame: pd.DataFrame) -> pd.DataFrame:
    """Rows in one order (a database has none): sorted by every column."""
    return frame.sort_values(list(frame.columns), kind="stable").reset_index(drop=True)


def _aggregates(tables: Mapping[str, pd.DataFrame], schema: Schema) -> list[tuple[Any, ...]]:
    """The true per-cell aggregates of QUERIES, independent of row order (exact sums)."""
    frames = Frames(dict(tables), schema)
    policy = Policy(max_epsilon_per_query=5.0)
    out: list[tuple[Any, ...]] = []
    for query in QUERIES:
        for cell in frames.cells(compile_query(query, schema, policy)):
            values = np.asarray(cell.values)
            if np.issubdtype(values.dtype, np.integer):
                codes, counts = np.unique(values, return_counts=True)
                summary: tuple[Any, ...] = (tuple(codes.tolist()), tuple(counts.tolist()))
            else:
                finite = values[np.isfinite(values)].astype(np.float64)
                summary = (len(values) - len(finite), len(finite), math.fsum(finite),
                           math.fsum(finite * finite))
            out.append((query.statistic.value, query.column, cell.group, cell.n_rows, summary))
    return out


def _has_line(out: str, *parts: str) -> bool:
    return any(all(p in line for p in parts) for line in out.splitlines())


# --------------------------------------------------------------------------- sources agree


@pytest.mark.parametrize("source", ["parquet", "excel", "postgresql"])
def test_every_source_gives_the_csv_frames_and_true_aggregates(
        source: str, member: Member, tmp_path: Path, request: pytest.FixtureRequest,
        monkeypatch: pytest.MonkeyPatch) -> None:
    schema = member.schema
    from_csv = sources.load(DataConfig("csv", path=member.folder), schema)
    if source == "parquet":
        data = DataConfig("parquet", path=_write_parquet(tmp_path / "pq", member.typed))
    elif source == "excel":
        data = DataConfig("excel", path=_write_workbook(tmp_path / "export.xlsx",
                                                        member.typed))
    else:
        cluster: Cluster = request.getfixturevalue("cluster")
        monkeypatch.setenv(PASSWORD_ENV, NODE_PASSWORD)
        section = cluster.data()
        data = DataConfig("postgresql", dsn=section["dsn"], password_env=PASSWORD_ENV,
                          tables=section["tables"])
    loaded = sources.load(data, schema)
    for spec in schema.tables:
        expected, got = from_csv.tables[spec.name], loaded.tables[spec.name]
        if source == "postgresql":  # rows come ordered by key: compare as sets of rows
            expected, got = _canonical(expected), _canonical(got)
        pd.testing.assert_frame_equal(got.reset_index(drop=True),
                                      expected.reset_index(drop=True), check_exact=True)
    truth = _aggregates(from_csv.tables, schema)
    assert truth and all(cell[3] > 0 for cell in truth)
    assert _aggregates(loaded.tables, schema) == truth


# --------------------------------------------------------------------------- check, per source


def _source_configs(member: Member, folder: Path, planted: bool,
                    request: pytest.FixtureRequest, source: str) -> tuple[Path, dict[str, str]]:
    """A node config reading the member (planted: with the two bad values) from `source`."""
    tables = _planted(member) if planted else dict(member.typed)
    if source == "csv":
        return _config(member, folder, source, {
            "source": "csv", "path": str(_write_csv(folder / "csv", tables))}), {}
    if source == "parquet":
        return _config(member, folder, source, {
            "source": "parquet", "path": str(_write_parquet(folder / "pq", tables))}), {}
    if source == "excel":
        return _config(member, folder, source, {
            "source": "excel", "path": str(_write_workbook(folder / "export.xlsx", tables))}), {}
    cluster: Cluster = request.getfixturevalue("cluster")
    data = cluster.data("bridge_bad" if planted else "bridge")
    return _config(member, folder, source, data), {PASSWORD_ENV: NODE_PASSWORD}


@pytest.mark.parametrize("source", ["csv", "parquet", "excel", "postgresql"])
def test_check_passes_on_every_source(source: str, member: Member, tmp_path: Path,
                                      request: pytest.FixtureRequest) -> None:
    config, env = _source_configs(member, tmp_path, False, request, source)
    result = _run("check", "--config", str(config), env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    counts = {t: len(f) for t, f in member.typed.items()}
    rows = ", ".join(f"{t} {n}" for t, n in counts.items())
    assert f"Rows read: {rows}" in result.stdout, result.stdout
    assert "0 errors, 0 warnings: data can be served" in result.stdout, result.stdout


def _expected_rows(member: Member, source: str, cluster: Cluster | None
                   ) -> tuple[tuple[str, int], tuple[str, int]]:
    """(file, row) of the planted category and of the planted number, as each source
    numbers them: CSV lines and sheet rows (header = 1), Parquet rows from 1, database rows
    from 1 in the order of the key and unique columns."""
    if source == "csv":
        return ("participant.csv", BAD_PERSON_ROW + 2), ("assessment.csv", BAD_ASSESSMENT_ROW + 2)
    if source == "excel":
        return (("export.xlsx, sheet participant", BAD_PERSON_ROW + 2),
                ("export.xlsx, sheet assessment", BAD_ASSESSMENT_ROW + 2))
    if source == "parquet":
        return (("participant.parquet", BAD_PERSON_ROW + 1),
                ("assessment.parquet", BAD_ASSESSMENT_ROW + 1))
    assert cluster is not None
    ids = sorted(member.typed["participant"]["participant_id"].astype(str))
    assessment = member.typed["assessment"]
    keys = sorted(zip(assessment["participant_id"].astype(str),
                      assessment["assessment_seq"].astype(int), strict=True))
    return (("view bridge_bad.participant", ids.index(cluster.bad_person) + 1),
            ("view bridge_bad.assessment", keys.index(cluster.bad_assessment) + 1))


@pytest.mark.parametrize("source", ["csv", "parquet", "excel", "postgresql"])
def test_check_names_table_row_and_column_of_bad_values(source: str, member: Member,
                                                        tmp_path: Path,
                                                        request: pytest.FixtureRequest) -> None:
    config, env = _source_configs(member, tmp_path, True, request, source)
    cluster = request.getfixturevalue("cluster") if source == "postgresql" else None
    (person_file, person_row), (score_file, score_row) = _expected_rows(member, source, cluster)
    result = _run("check", "--config", str(config), env=env)
    out = result.stdout
    assert result.returncode == 1, out + result.stderr
    assert _has_line(out, f"{person_file}, row {person_row}, column household_type: "
                          "not_in_vocabulary: value 'castle'"), out
    assert _has_line(out, f"{score_file}, row {score_row}, column bridge_total: "
                          "out_of_bounds: value '140'"), out
    assert "1 error, 1 warning: data cannot be served" in out, out


# --------------------------------------------------------------------------- file source errors


def test_workbook_without_a_sheet_names_the_sheet(member: Member, tmp_path: Path) -> None:
    tables = {t: f for t, f in member.typed.items() if t != "goal"}
    book = _write_workbook(tmp_path / "export.xlsx", tables)
    config = _config(member, tmp_path, "excel", {"source": "excel", "path": str(book)})
    result = _run("check", "--config", str(config))
    assert result.returncode == 1, result.stdout + result.stderr
    assert _has_line(result.stdout, "export.xlsx, sheet goal: missing_file: sheet 'goal' not "
                                    "found in workbook 'export.xlsx'"), result.stdout
    with pytest.raises(DataError, match="sheet goal: missing_file"):
        sources.load(DataConfig("excel", path=book), member.schema)


def test_sheet_rows_keep_their_numbers_past_blank_rows(member: Member, tmp_path: Path) -> None:
    """Blank rows are skipped, and a problem still names the row Excel shows."""
    book = openpyxl.load_workbook(_write_workbook(tmp_path / "export.xlsx", _planted(member)))
    book["participant"].insert_rows(3, amount=2)  # two blank rows above data row 2
    book.save(tmp_path / "export.xlsx")
    report = sources.check(DataConfig("excel", path=tmp_path / "export.xlsx"), member.schema)
    (problem,) = [p for p in report.problems if p.kind == "not_in_vocabulary"]
    assert (problem.file, problem.row, problem.column) == (
        "export.xlsx, sheet participant", BAD_PERSON_ROW + 2 + 2, "household_type")
    assert report.rows["participant"] == len(member.typed["participant"])


def test_missing_workbook_or_parquet_file_is_named(member: Member, tmp_path: Path) -> None:
    config = _config(member, tmp_path, "excel",
                     {"source": "excel", "path": str(tmp_path / "nowhere.xlsx")})
    result = _run("check", "--config", str(config))
    assert result.returncode == 2, result.stdout + result.stderr
    assert ": data.path: workbook" in result.stderr and "nowhere.xlsx" in result.stderr
    folder = _write_parquet(tmp_path / "pq", member.typed)
    (folder / "coaching_contact.parquet").unlink()
    config = _config(member, tmp_path, "parquet", {"source": "parquet", "path": str(folder)})
    result = _run("check", "--config", str(config))
    assert result.returncode == 1, result.stdout + result.stderr
    assert _has_line(result.stdout, "coaching_contact.parquet: missing_file"), result.stdout
    with pytest.raises(DataError, match="coaching_contact.parquet"):
        sources.load(DataConfig("parquet", path=folder), member.schema)


# --------------------------------------------------------------------------- postgresql errors


def test_view_missing_a_column_is_named_at_start_up(member: Member, cluster: Cluster,
                                                    tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    data = cluster.data(participant="bridge_short.participant")
    config = _config(member, tmp_path, "short", data)
    result = _run("check", "--config", str(config), env={PASSWORD_ENV: NODE_PASSWORD})
    assert result.returncode == 1, result.stdout + result.stderr
    assert _has_line(result.stdout, "view bridge_short.participant, column gender: "
                                    "missing_column"), result.stdout
    monkeypatch.setenv(PASSWORD_ENV, NODE_PASSWORD)
    with pytest.raises(DataError, match="view bridge_short.participant, column gender"):
        sources.load(load_config(config).data, member.schema, str(config))


@pytest.mark.parametrize(("change", "key", "words"), [
    ({"goal": "bridge.goals"}, "data.tables.goal", "no table or view 'bridge.goals'"),
    ({"participant": "private.participant"}, "data.tables.participant",
     "may not read 'private.participant'"),
    ({"unknown": "bridge.goal"}, "data.tables.unknown", "is not a table of schema"),
    ({"dsn": "host=127.0.0.1 dbname=member user=bridge_node password=leaked"}, "data.dsn",
     "holds a password"),
    ({"password_env": "BRIDGESTAT_TEST_NO_SUCH_VARIABLE"}, "data.password_env", "is not set"),
])
def test_misconfigured_database_exits_2_naming_the_key(
        change: dict[str, str], key: str, words: str, member: Member, cluster: Cluster,
        tmp_path: Path) -> None:
    data = cluster.data()
    tables = {k: v for k, v in change.items() if k not in ("dsn", "password_env")}
    data["tables"] = {**data["tables"], **tables}
    data.update({k: v for k, v in change.items() if k in ("dsn", "password_env")})
    config = _config(member, tmp_path, "bad", data)
    result = _run("check", "--config", str(config), env={PASSWORD_ENV: NODE_PASSWORD})
    assert result.returncode == 2, result.stdout + result.stderr
    assert f": {key}: " in result.stderr, result.stderr
    assert any(w in result.stderr for w in words.split("|")), result.stderr
    assert "Traceback" not in result.stderr and "leaked" not in result.stderr


def test_unmapped_schema_table_is_named(member: Member, cluster: Cluster,
                                        tmp_path: Path) -> None:
    data = cluster.data()
    del data["tables"]["coaching_contact"]
    config = _config(member, tmp_path, "unmapped", data)
    result = _run("check", "--config", str(config), env={PASSWORD_ENV: NODE_PASSWORD})
    assert result.returncode == 2, result.stderr
    assert ": data.tables: no table or view given for schema table(s) coaching_contact" \
        in result.stderr, result.stderr


def test_wrong_password_names_the_server_not_the_password(member: Member, cluster: Cluster,
                                                           tmp_path: Path) -> None:
    config = _config(member, tmp_path, "pw", cluster.data())
    result = _run("check", "--config", str(config), env={PASSWORD_ENV: "not-the-password"})
    assert result.returncode == 2, result.stderr
    assert f": data.dsn: cannot connect to PostgreSQL at 127.0.0.1:{cluster.port}" \
        in result.stderr and "password authentication failed" in result.stderr, result.stderr
    assert "not-the-password" not in result.stderr + result.stdout


def test_unreachable_database_fails_fast_naming_the_dsn(member: Member, tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    closed = local.free_port()  # bound and released: nothing listens there
    data = {"source": "postgresql", "password_env": PASSWORD_ENV,
            "dsn": f"host=127.0.0.1 port={closed} dbname={DATABASE} user={NODE_ROLE}",
            "tables": {t.name: f"bridge.{t.name}" for t in member.schema.tables}}
    config = _config(member, tmp_path, "closed", data)
    started = time.monotonic()
    result = _run("check", "--config", str(config), env={PASSWORD_ENV: NODE_PASSWORD})
    assert time.monotonic() - started < 20
    assert result.returncode == 2, result.stderr
    assert f": data.dsn: cannot connect to PostgreSQL at 127.0.0.1:{closed}" in result.stderr
    assert "refused" in result.stderr.lower() and NODE_PASSWORD not in result.stderr
    monkeypatch.setenv(PASSWORD_ENV, NODE_PASSWORD)
    with pytest.raises(ConfigError) as raised:
        sources.load(load_config(config).data, member.schema, str(config))
    assert raised.value.key == "data.dsn"


# --------------------------------------------------------------------------- read-only


def test_node_connection_and_role_cannot_write(cluster: Cluster,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(PASSWORD_ENV, NODE_PASSWORD)
    section = cluster.data()
    data = DataConfig("postgresql", dsn=section["dsn"], password_env=PASSWORD_ENV,
                      tables=section["tables"])
    insert = "INSERT INTO bridge.goal (participant_id, pillar) VALUES ('p0', 'well_being')"
    # the node's own connection settings refuse writes even for a role that may write
    monkeypatch.setenv("BRIDGESTAT_TEST_OWNER_PASSWORD", OWNER_PASSWORD)
    owner = DataConfig("postgresql", dsn=cluster.dsn(OWNER_ROLE),
                       password_env="BRIDGESTAT_TEST_OWNER_PASSWORD", tables=section["tables"])
    with sources.connect(owner) as conn:
        assert conn.read_only
        with pytest.raises(psycopg.errors.ReadOnlySqlTransaction):
            conn.execute(insert)
    with sources.connect(data) as conn, pytest.raises(psycopg.errors.InsufficientPrivilege):
        conn.execute(insert)
    # and the node's role itself, even outside a read-only transaction, may only SELECT
    with psycopg.connect(cluster.dsn(), password=NODE_PASSWORD, autocommit=True) as conn:
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute(insert)
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("DELETE FROM private.goal")
        assert conn.execute("SELECT count(*) FROM bridge.goal").fetchone() is not None

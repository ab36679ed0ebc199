"""Source scans: no SQL built by formatting values into strings; no path built from a request's input."""

from __future__ import annotations

import ast
import re

from scripts.devservices import REPO

SOURCES = [p for d in ("api", "workers", "shared", "ui", "scripts") for p in (REPO / d).rglob("*.py")]
SQL = re.compile(r"\b(SELECT|INSERT|UPDATE|DELETE|CREATE|DROP|ALTER|TRUNCATE|REPLACE)\b.*\b(FROM|INTO|TABLE|SET|INDEX|"
                 r"WHERE|VALUES)\b", re.DOTALL)  # upper case, as all our SQL is written (messages are not)
EXECUTORS = {"execute", "executemany", "mogrify"}


def _text(node: ast.AST) -> str:
    """The literal parts of a string expression."""
    return " ".join(n.value for n in ast.walk(node) if isinstance(n, ast.Constant) and isinstance(n.value, str))


def _formatted_sql(tree: ast.AST) -> list[tuple[int, str]]:
    """(line, how) of each string expression that formats SQL, one entry per line."""
    found: dict[int, str] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.JoinedStr) and SQL.search(_text(node)):
            found.setdefault(node.lineno, "f-string")
        elif isinstance(node, ast.BinOp) and isinstance(node.op, ast.Mod | ast.Add) and SQL.search(_text(node)):
            found.setdefault(node.lineno, "% or + on a string")
        elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "format"
              and isinstance(node.func.value, ast.Constant) and SQL.search(str(node.func.value.value))):
            found.setdefault(node.lineno, "str.format")
        elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in EXECUTORS
              and node.args and isinstance(node.args[0], ast.JoinedStr | ast.BinOp)):
            found.setdefault(node.lineno, f"{node.func.attr}() of a built string")
    return sorted(found.items())


def test_no_sql_is_built_by_string_formatting():
    """Values go as driver parameters; identifiers through psycopg.sql (pgvector) or, for Manticore (no
    identifier quoting in its protocol), a template filled only with names validated at start-up."""
    offenders = [f"{p.relative_to(REPO)}:{line} ({how})"
                 for p in SOURCES for line, how in _formatted_sql(ast.parse(p.read_text(), str(p)))]
    assert offenders == []


def test_the_scan_catches_what_it_should():
    bad = '''
cur.execute(f"SELECT * FROM t WHERE id = {x}")
q = "DELETE FROM t WHERE id = '%s'" % x
q = "UPDATE t SET a = {}".format(x)
q = "INSERT INTO t VALUES (" + x + ")"
'''
    good = '''
cur.execute("SELECT * FROM t WHERE id = %s", (x,))
cur.execute(sql.SQL("SELECT * FROM {} WHERE id = %s").format(sql.Identifier(t)), (x,))
log.info(f"selected {n} images from the folder")
'''
    assert [line for line, _ in _formatted_sql(ast.parse(bad))] == [2, 3, 4, 5]
    assert _formatted_sql(ast.parse(good)) == []


def test_paths_come_from_ids_and_allowed_roots_only():
    """Every filesystem path the API and UI touch comes from ImageStore (validated ids) or resolve_under
    (INGEST_ROOTS): no route builds a Path from a request value."""
    for path in [*(REPO / "api").rglob("*.py"), *(REPO / "ui").rglob("*.py")]:
        source = path.read_text()
        assert not re.search(r"Path\((request|file|upload|body|query)\.", source), path
        assert "open(" not in source.replace("read_bytes", ""), path
    assert "resolve_under" in (REPO / "shared" / "services.py").read_text()  # where folder ingests start

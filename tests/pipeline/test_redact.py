"""Secrets are masked in validate output and in log lines (the fast checks; tests/run/test_secrets.py runs it all)."""

import json
import logging

from pipeline.cli import JsonFormatter
from pipeline.redact import RedactingFormatter, redact, remember
from tests.support.cli import cli_env, edgesieve


def test_validate_never_prints_a_password_written_into_a_url_or_a_token(tmp_path):
    (tmp_path / "r.csv").write_text("ts,a\n1,2\n")
    f = tmp_path / "p.yaml"
    f.write_text("""\
sources: [{id: r, type: replay, path: r.csv}]
sinks:
  - {id: cloud, type: influxdb, inputs: [r], url: "https://ops:${PW}@influx.example:8086", org: o, bucket: b,
     token: "${TOKEN}"}
""")
    result = edgesieve("validate", str(f), env=cli_env(PW="pa55-in-url-77", TOKEN="tok-en-99x"))
    assert result.returncode == 0, result.stderr
    assert "https://***@influx.example:8086" in result.stdout
    assert "pa55-in-url-77" not in result.stdout + result.stderr and "tok-en-99x" not in result.stdout + result.stderr


def test_log_lines_and_tracebacks_are_redacted_in_text_and_json():
    remember("s3cr3t-value-1")
    record = logging.LogRecord("x", logging.ERROR, __file__, 1, "login with %s at %s", ("s3cr3t-value-1", "mqtt://u:p@h"), None)
    try:
        raise RuntimeError("boom s3cr3t-value-1")
    except RuntimeError:
        import sys
        record.exc_info = sys.exc_info()
    text = RedactingFormatter(logging.Formatter("%(message)s")).format(record)
    assert "login with *** at mqtt://***@h" in text and "RuntimeError: boom ***" in text and "s3cr3t" not in text
    line = RedactingFormatter(JsonFormatter()).format(record)
    assert json.loads(line)["message"] == "login with *** at mqtt://***@h"


def test_redact_masks_url_credentials_without_touching_other_text():
    assert redact("see https://example.com/a@b and user@example.com") == "see https://example.com/a@b and user@example.com"
    assert redact("http://bob@host/x http://bob:pw@host/y") == "http://***@host/x http://***@host/y"

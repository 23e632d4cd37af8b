"""Paths in a pipeline file: a missing input is an error of `validate`; a `../` that leaves the pipeline's folder
is reported (warning, or error with `runtime.outside_paths: refuse`); absolute paths are the operator's choice."""

import pytest

from pipeline import ConfigError
from pipeline.loader import parse_pipeline
from tests.support.cli import edgesieve

PIPELINE = """\
sources:
  - {{id: r, type: replay, path: {data}}}
sinks:
  - {{id: out, type: file, inputs: [r], path: {out}}}
  - id: cloud
    type: influxdb
    inputs: [r]
    url: http://127.0.0.1:9
    org: o
    bucket: b
    token_file: {token}
runtime: {{outside_paths: {mode}}}
"""


def write(folder, data="r.csv", out="out/r.ndjson", token="token.txt", mode="warn"):
    folder.mkdir(parents=True, exist_ok=True)
    f = folder / "p.yaml"
    f.write_text(PIPELINE.format(data=data, out=out, token=token, mode=mode))
    return f


def test_missing_input_files_are_errors_of_validate_with_their_lines(tmp_path):
    f = write(tmp_path / "site")
    result = edgesieve("validate", str(f), cwd=tmp_path)
    assert result.returncode == 1
    assert f"{f}:2:33: source 'r' (replay): path: 'r.csv' does not exist" in result.stderr
    assert f"{f}:11:17: sink 'cloud' (influxdb): token_file: 'token.txt' does not exist" in result.stderr
    (tmp_path / "site" / "r.csv").write_text("ts,a\n1,2\n")
    (tmp_path / "site" / "token.txt").write_text("t0k3n\n")
    ok = edgesieve("validate", str(f), cwd=tmp_path)
    assert ok.returncode == 0, ok.stderr                         # outputs need not exist; inputs next to the file do


def test_a_path_leaving_the_pipeline_folder_is_reported_and_refused_on_request(tmp_path):
    (tmp_path / "r.csv").write_text("ts,a\n1,2\n")
    (tmp_path / "site" / "secrets").mkdir(parents=True)
    (tmp_path / "site" / "secrets" / "token.txt").write_text("t0k3n\n")
    f = write(tmp_path / "site", data="../r.csv", out="../../elsewhere/x.ndjson", token="secrets/token.txt")
    result = edgesieve("validate", str(f), cwd=tmp_path / "site")
    assert result.returncode == 0, result.stderr
    assert f"warning: {f}:2:33: source 'r' (replay): path: '../r.csv' leaves the pipeline's folder" in result.stderr
    assert f"warning: {f}:4:46: sink 'out' (file): path: '../../elsewhere/x.ndjson' leaves" in result.stderr
    assert "secrets/token.txt" not in result.stderr                # a path inside the folder is fine
    f = write(tmp_path / "site", data="../r.csv", token="secrets/token.txt", mode="refuse")
    with pytest.raises(ConfigError, match=r"p.yaml:2:33: source 'r' \(replay\): path: '../r.csv' leaves"):
        parse_pipeline(f)
    assert "leaves the pipeline's folder" in edgesieve("validate", str(f)).stderr


def test_absolute_paths_are_allowed_even_when_refusing_relative_escapes(tmp_path):
    (tmp_path / "r.csv").write_text("ts,a\n1,2\n")
    (tmp_path / "token.txt").write_text("t0k3n\n")
    f = write(tmp_path / "site", data=str(tmp_path / "r.csv"), out=str(tmp_path / "o.ndjson"),
              token=str(tmp_path / "token.txt"), mode="refuse")
    result = edgesieve("validate", str(f))
    assert result.returncode == 0 and "warning" not in result.stderr, result.stderr


def test_a_dotdot_that_stays_inside_the_folder_is_fine(tmp_path):
    (tmp_path / "site" / "data").mkdir(parents=True)
    (tmp_path / "site" / "r.csv").write_text("ts,a\n1,2\n")
    (tmp_path / "site" / "token.txt").write_text("t\n")
    f = write(tmp_path / "site", data="data/../r.csv", mode="refuse")
    parse_pipeline(f)

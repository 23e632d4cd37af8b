"""Model integrity: a pin beats side files, manifests and Ed25519-signed manifests, pointers stay in their folder.

Every refusal keeps the old model serving, is logged with the reason and counted (``model_refused``, on /metrics)."""

import json
import logging
import os

import pytest

from pipeline.batch import Batch
from pipeline.errors import ConfigError
from pipeline.inference.integrity import MANIFEST, SIGNATURE
from pipeline.inference.model_cli import main as model_cli
from pipeline.metrics import PrometheusCollector
from pipeline.stages.onnx import Onnx
from pipeline.testing import build_stage
from tests.support.onnx_models import sum_plus, write_sidecar
from tests.support.waiting import wait_for

FEEDS = {"x": {"source": "fields", "fields": ["a", "b", "c"]}}


def stage_for(model, **extra):
    return build_stage(Onnx, {"model": str(model), "feeds": FEEDS, "outputs": {"y": {"decode": "regression"}}, **extra})[0]


def y(stage) -> float:
    """The running model's answer for a=0, b=1, c=0: 1 + its bias."""
    return float(stage.process(Batch.from_records([{"ts": 0.0, "fields": {"a": 0.0, "b": 1.0, "c": 0.0}}])).fields["y"][0])


def refused(stage) -> int:
    return stage.ctx.metrics.get("under_test", "model_refused")


def scraped(stage) -> dict:
    """What /metrics would show for this stage: event -> value."""
    family = next(iter(PrometheusCollector(stage.ctx.metrics).collect()))
    return {s.labels["event"]: s.value for s in family.samples if s.labels["item"] == "under_test"}


def assert_swap_refused(stage, match):
    """A swap request is refused with ``match`` in the reason, and counted."""
    before = refused(stage)
    with pytest.raises(Exception, match=match):
        stage.request_swap().result(timeout=10)
    assert refused(stage) == before + 1


def keys(tmp_path, name="release"):
    assert model_cli(["keygen", str(tmp_path / name)]) == 0
    assert (tmp_path / name).stat().st_mode & 0o077 == 0          # the private key is its owner's only
    return tmp_path / name, tmp_path / f"{name}.pub"


def versioned(root, *biases):
    for i, bias in enumerate(biases, 1):
        sum_plus(root / f"v{i}" / "m.onnx", bias=bias)
    (root / "current").write_text("v1\n")
    return root


# ------------------------------------------------------------------ pin and side files
def test_a_pin_is_not_bypassed_by_a_matching_side_file_on_watch(tmp_path, caplog):
    model = sum_plus(tmp_path / "m.onnx", bias=1.0)
    pin = write_sidecar(model)
    stage = stage_for(model, sha256=pin, watch=0.02)
    try:
        assert y(stage) == 2.0
        caplog.set_level(logging.ERROR, logger="edgesieve.onnx")
        sum_plus(model, bias=50.0)                     # replaced ...
        write_sidecar(model)                           # ... with a side file that matches the new bytes
        assert wait_for(lambda: refused(stage) >= 1)
        assert y(stage) == 2.0                         # the pinned model keeps serving
        assert stage.swap_events[-1]["ok"] is False and f"expected {pin} (the pinned sha256)" in stage.swap_events[-1]["error"]
        assert "refused, the running model keeps serving" in caplog.text and pin in caplog.text
        assert scraped(stage)["model_refused"] >= 1
    finally:
        stage.close()


def test_a_pin_is_not_bypassed_by_a_side_file_on_a_requested_reread(tmp_path):
    model = sum_plus(tmp_path / "m.onnx", bias=1.0)
    stage = stage_for(model, sha256=write_sidecar(model))
    sum_plus(model, bias=50.0)
    write_sidecar(model)
    with pytest.raises(Exception, match="the pinned sha256"):
        stage.request_swap().result(timeout=10)
    assert y(stage) == 2.0 and refused(stage) == 1


def test_under_a_pin_a_new_path_needs_its_digest_even_with_a_side_file(tmp_path):
    stage = stage_for(sum_plus(tmp_path / "m.onnx", bias=1.0), sha256=write_sidecar(tmp_path / "m.onnx"))
    new = sum_plus(tmp_path / "n.onnx", bias=2.0, sidecar=True)
    with pytest.raises(Exception, match="has no sha256 to check against"):
        stage.request_swap(new).result(timeout=10)
    assert y(stage) == 2.0


def test_a_pin_at_start_ignores_a_side_file_that_matches_a_different_model(tmp_path):
    model = sum_plus(tmp_path / "m.onnx", bias=1.0)
    pin = write_sidecar(model)
    sum_plus(model, bias=9.0, sidecar=True)            # replaced before start, side file rewritten
    with pytest.raises(ConfigError, match="the pinned sha256"):
        stage_for(model, sha256=pin)


def test_without_pin_or_manifest_a_stale_side_file_still_refuses_tampered_bytes(tmp_path):
    model = sum_plus(tmp_path / "m.onnx", bias=1.0, sidecar=True)
    stage = stage_for(model)
    model.write_bytes(model.read_bytes() + b"\0")
    with pytest.raises(Exception, match=r"\(m.onnx.sha256\)"):
        stage.request_swap().result(timeout=10)
    assert y(stage) == 2.0 and refused(stage) == 1


# ------------------------------------------------------------------ manifests
def test_manifest_accepts_listed_versions_and_refuses_tampered_or_unlisted_ones(tmp_path):
    root = versioned(tmp_path / "models", 1.0, 2.0)
    assert model_cli(["manifest", str(root)]) == 0
    stage = stage_for(root, watch=0.02)
    try:
        assert stage.model_version == "v1"
        (root / "current").write_text("v2\n")                              # listed: swapped in
        assert wait_for(lambda: y(stage) == 3.0)
        sum_plus(root / "v3" / "m.onnx", bias=3.0, sidecar=True)           # not in the manifest; a side file is no help
        (root / "current").write_text("v3\n")
        assert wait_for(lambda: refused(stage) == 1)
        assert "'v3' is not listed in" in stage.swap_events[-1]["error"] and y(stage) == 3.0
        sum_plus(root / "v1" / "m.onnx", bias=66.0, sidecar=True)          # tampered v1 bytes, pointer swapped back
        (root / "current").write_text("v1\n")
        assert wait_for(lambda: refused(stage) == 2)
        assert f"({root / MANIFEST})" in stage.swap_events[-1]["error"] and y(stage) == 3.0
    finally:
        stage.close()


# ------------------------------------------------------------------ signatures
def test_a_signed_manifest_verifies_and_every_forgery_is_refused(tmp_path):
    private, public = keys(tmp_path)
    root = versioned(tmp_path / "models", 1.0, 2.0)
    assert model_cli(["manifest", str(root), "--sign", str(private)]) == 0
    assert model_cli(["verify", str(root), "--public-key", str(public)]) == 0
    stage = stage_for(root, public_key=str(public))
    assert y(stage) == 2.0

    def swap_refused(match):
        assert_swap_refused(stage, match)
        assert y(stage) == 2.0                                    # the old model keeps serving

    (root / "current").write_text("v2\n")
    fut = stage.request_swap()                                            # a signed version: accepted
    assert wait_for(lambda: y(stage) == 3.0) and fut.result() == "v2"
    (root / "current").write_text("v1\n")
    stage.request_swap()
    assert wait_for(lambda: y(stage) == 2.0)

    sum_plus(root / "v3" / "m.onnx", bias=30.0)                          # an attacker adds v3 to the manifest
    assert model_cli(["manifest", str(root)]) == 0                        # (rewritten, old signature kept)
    (root / "current").write_text("v3\n")
    swap_refused("does not match manifest.json")
    other, _ = keys(tmp_path, "attacker")                                 # ... or signs it with their own key
    assert model_cli(["manifest", str(root), "--sign", str(other)]) == 0
    swap_refused("signed with another key")
    (root / SIGNATURE).unlink()                                           # ... or removes the signature
    swap_refused("is not signed")
    assert model_cli(["manifest", str(root), "--sign", str(private)]) == 0  # the owner signs v1..v3
    manifest = json.loads((root / MANIFEST).read_text())
    assert set(manifest["versions"]) == {"v1", "v2", "v3"}
    (root / "v3" / "m.onnx").write_bytes((root / "v3" / "m.onnx").read_bytes() + b"\0")  # tampered after signing
    swap_refused("expected")
    assert model_cli(["verify", str(root), "--public-key", str(public)]) == 1


def test_a_public_key_refuses_to_start_without_a_signed_manifest(tmp_path):
    _, public = keys(tmp_path)
    root = versioned(tmp_path / "models", 1.0)
    with pytest.raises(ConfigError, match="has no manifest.json"):
        stage_for(root, public_key=str(public))
    assert model_cli(["manifest", str(root)]) == 0
    with pytest.raises(ConfigError, match="is not signed"):
        stage_for(root, public_key=str(public))
    with pytest.raises(ConfigError, match="is a single file"):
        stage_for(root / "v1" / "m.onnx", public_key=str(public))


def test_pin_and_signed_manifest_must_both_hold(tmp_path):
    private, public = keys(tmp_path)
    root = versioned(tmp_path / "models", 1.0, 2.0)
    assert model_cli(["manifest", str(root), "--sign", str(private)]) == 0
    pin = write_sidecar(root / "v1" / "m.onnx")
    stage = stage_for(root, public_key=str(public), sha256=pin)
    (root / "current").write_text("v2\n")                          # signed, but not the pinned digest
    with pytest.raises(Exception, match="the pinned sha256"):
        stage.request_swap().result(timeout=10)
    assert y(stage) == 2.0


# ------------------------------------------------------------------ pointers that leave the folder
@pytest.mark.parametrize("point", ["text ../", "symlink outside", "version symlinked outside", "model symlinked outside"])
def test_a_pointer_cannot_lead_out_of_the_model_folder(tmp_path, point):
    root = versioned(tmp_path / "models", 1.0)
    outside = sum_plus(tmp_path / "elsewhere" / "v9" / "m.onnx", bias=99.0, sidecar=True).parent
    stage = stage_for(root, watch=0.02)
    try:
        if point == "text ../":
            (root / "current").write_text("../elsewhere/v9\n")
        elif point == "symlink outside":
            (root / "current").unlink()
            os.symlink(outside, root / "current")
        elif point == "version symlinked outside":
            os.symlink(outside, root / "v9")
            (root / "current").write_text("v9\n")
        else:
            (root / "v9").mkdir()
            os.symlink(outside / "m.onnx", root / "v9" / "m.onnx")
            (root / "current").write_text("v9\n")
        with pytest.raises(Exception, match="folder"):
            stage.request_swap().result(timeout=10)
        assert y(stage) == 2.0 and refused(stage) >= 1
        assert "outside" in stage.swap_events[-1]["error"] or "refusing to leave the folder" in stage.swap_events[-1]["error"]
    finally:
        stage.close()


def test_a_symlink_pointer_to_a_version_inside_the_folder_still_works(tmp_path):
    root = versioned(tmp_path / "models", 1.0, 2.0)
    (root / "current").unlink()
    os.symlink(root / "v2", root / "current")       # absolute target, inside the folder
    assert stage_for(root).model_version == "v2"


def test_a_signed_current_and_the_serial_stop_rollbacks(tmp_path):
    private, public = keys(tmp_path)
    root = versioned(tmp_path / "models", 1.0, 2.0)
    old = tmp_path / "old"
    old.mkdir()
    assert model_cli(["manifest", str(root), "--current", "v1", "--sign", str(private)]) == 0
    for name in (MANIFEST, SIGNATURE):                                    # an attacker keeps a copy of this release
        (old / name).write_bytes((root / name).read_bytes())
    stage = stage_for(root, public_key=str(public))
    assert y(stage) == 2.0

    (root / "current").write_text("v2\n")                                 # the pointer alone cannot move
    assert_swap_refused(stage, "names 'v1' as current")
    assert model_cli(["manifest", str(root), "--current", "v2", "--sign", str(private)]) == 0   # the owner can
    assert json.loads((root / MANIFEST).read_text())["serial"] == 2
    fut = stage.request_swap()
    assert wait_for(lambda: y(stage) == 3.0) and fut.result() == "v2"
    for name in (MANIFEST, SIGNATURE):                                    # the old signed release put back
        (root / name).write_bytes((old / name).read_bytes())
    (root / "current").write_text("v1\n")
    assert_swap_refused(stage, "serial 1, older than serial 2")
    assert y(stage) == 3.0                                                # v2 keeps serving
    with pytest.raises(ConfigError, match="older than serial 2"):          # remembered across a restart
        build_stage(Onnx, {"model": str(root), "feeds": FEEDS, "outputs": {"y": {"decode": "regression"}},
                           "public_key": str(public)}, state_dir=stage.ctx.state_dir)
    assert model_cli(["manifest", str(root), "--current", "v9"]) == 1     # not a version: refused, nothing written
    assert json.loads((root / MANIFEST).read_text())["serial"] == 1

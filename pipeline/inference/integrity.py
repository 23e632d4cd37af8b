"""What a model must match before it loads: a pin, a (signed) manifest of a versioned folder, or a side file.

Every check that applies must pass, and the strongest source of truth decides which apply:

1. ``pin`` (the stage's ``sha256:``, or a digest given with a swap request): only that digest loads.
   Side files are never read, so writing a matching ``<model>.sha256`` beside a replaced model changes nothing.
2. A versioned folder's ``manifest.json`` (``{"versions": {"v1": "<sha256>", ...}}``): the version the
   ``current`` pointer names must be listed, with the digest of the bytes read. With a ``public_key``
   the manifest must exist and carry a valid Ed25519 signature (``manifest.json.sig``, base64) over its
   exact bytes, so models can travel through an untrusted channel: whoever can write the folder but does
   not hold the private key can only get a refusal.
3. Only when neither applies: ``<model>.sha256`` beside the file, when present (``sha256sum`` format).

>>> import tempfile, pathlib
>>> d = pathlib.Path(tempfile.mkdtemp())
>>> write_manifest(d, {"v1": "ab" * 32})["versions"]["v1"] == "ab" * 32
True
>>> read_manifest(d, None)["v1"] == "ab" * 32
True
"""
from __future__ import annotations

import base64
import binascii
import json
import re
from dataclasses import dataclass
from pathlib import Path

MANIFEST = "manifest.json"
SIGNATURE = MANIFEST + ".sig"
VERSION_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$")
_HEX64 = re.compile(r"^[0-9a-f]{64}$")


class IntegrityError(Exception):
    """A model or its manifest does not verify; the message says what to do."""


@dataclass(frozen=True)
class TrustPolicy:
    """What a model must match: ``pin`` (a sha256), a manifest signed by ``public_key`` (a PEM file), or neither."""

    pin: str | None = None
    public_key: Path | None = None
    require_digest: bool = False   # the pipeline pins: refuse a model without a pin or manifest, ignore side files
    serial_file: Path | None = None  # where the highest manifest serial loaded so far is kept (outside the folder)


def sidecar_sha256(model_file: Path) -> str | None:
    """The digest in ``<model>.sha256`` (``sha256sum`` format) when that file exists."""
    side = model_file.with_name(model_file.name + ".sha256")
    if not side.is_file():
        return None
    text = side.read_text(encoding="utf-8").strip()
    return text.split()[0].lower() if text else None


def load_public_key(path: Path):
    """An Ed25519 public key from a PEM file (as ``edgesieve model keygen`` writes it)."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
    from cryptography.hazmat.primitives.serialization import load_pem_public_key

    try:
        key = load_pem_public_key(Path(path).read_bytes())
    except OSError as exc:
        raise IntegrityError(f"cannot read public_key {path}: {exc.strerror or exc}") from None
    except ValueError:
        raise IntegrityError(f"public_key {path} is not a PEM public key (make one with `edgesieve model keygen`)") from None
    if not isinstance(key, Ed25519PublicKey):
        raise IntegrityError(f"public_key {path} is not an Ed25519 key (make one with `edgesieve model keygen`)")
    return key


def read_manifest(folder: Path, public_key: Path | None) -> dict[str, str] | None:
    """``{version: sha256}`` from ``folder/manifest.json``, its signature verified when a key is given.

    None when there is no manifest and no key asks for one."""
    doc = read_manifest_doc(folder, public_key)
    return None if doc is None else doc["versions"]


def read_manifest_doc(folder: Path, public_key: Path | None) -> dict | None:
    """The manifest: ``versions`` ({version: sha256}), ``current`` (the version to serve, or None) and ``serial``
    (an integer that grows with every manifest written, 0 when absent); the signature verified when a key is given."""
    folder = Path(folder)
    try:
        raw = (folder / MANIFEST).read_bytes()
    except FileNotFoundError:
        if public_key is None:
            return None
        raise IntegrityError(f"{folder} has no {MANIFEST}, but the pipeline names a public_key: models must come "
                             f"with a signed manifest (`edgesieve model manifest {folder} --sign KEY`)") from None
    except OSError as exc:
        raise IntegrityError(f"cannot read {folder / MANIFEST}: {exc.strerror or exc}") from None
    if public_key is not None:
        _verify_signature(folder, raw, public_key)
    try:
        doc = json.loads(raw)
        versions = doc["versions"]
        if not isinstance(versions, dict):
            raise TypeError
        out = {str(v): str(d).lower() for v, d in versions.items()}
        current, serial = doc.get("current"), doc.get("serial", 0)
        if current is not None and not isinstance(current, str) or type(serial) is not int or serial < 0:
            raise TypeError
    except (ValueError, KeyError, TypeError, AttributeError):
        raise IntegrityError(f"{folder / MANIFEST} is not a manifest: expected {{\"versions\": {{\"v1\": \"<sha256>\"}}}}"
                             " (optional: \"current\": a version name, \"serial\": a non-negative integer)") from None
    bad = [v for v, d in out.items() if not _HEX64.match(d)]
    if bad:
        raise IntegrityError(f"{folder / MANIFEST}: version {bad[0]!r} has no valid sha256 (64 hex digits)")
    return {"versions": out, "current": current, "serial": serial}


def _verify_signature(folder: Path, raw: bytes, public_key: Path) -> None:
    from cryptography.exceptions import InvalidSignature

    key = load_public_key(public_key)
    try:
        sig = base64.b64decode((folder / SIGNATURE).read_bytes().strip(), validate=True)
    except FileNotFoundError:
        raise IntegrityError(f"{folder / MANIFEST} is not signed ({SIGNATURE} is missing), but the pipeline names "
                             f"a public_key: sign it with `edgesieve model manifest {folder} --sign KEY`") from None
    except (OSError, binascii.Error, ValueError):
        raise IntegrityError(f"{folder / SIGNATURE} is not a base64 Ed25519 signature") from None
    try:
        key.verify(sig, raw)
    except InvalidSignature:
        raise IntegrityError(f"the signature {folder / SIGNATURE} does not match {MANIFEST} for public_key "
                             f"{public_key}: the manifest was changed or signed with another key") from None


def expected_digests(file: Path, folder: Path | None, version: str | None,
                     policy: TrustPolicy) -> tuple[list[tuple[str, str]], int | None]:
    """Every ``(sha256, where it comes from)`` the model's bytes must match, and the serial of the manifest that
    vouched for them (None: no manifest; `remember_serial` it once the model loaded); raises when one is required
    and missing."""
    checks: list[tuple[str, str]] = []
    serial = None
    if policy.pin:
        checks.append((policy.pin.lower(), "the pinned sha256"))
    if folder is not None:
        doc = read_manifest_doc(folder, policy.public_key)
        if doc is not None:
            manifest = doc["versions"]
            if version not in manifest:
                raise IntegrityError(f"version {version!r} is not listed in {folder / MANIFEST}: add it with "
                                     f"`edgesieve model manifest {folder}` (and sign it when a public_key is set)")
            _check_fresh(folder, version, doc, policy)
            serial = doc["serial"]
            checks.append((manifest[version], f"{folder / MANIFEST}" + (" (signed)" if policy.public_key else "")))
    elif policy.public_key is not None:
        raise IntegrityError(f"{file} is a single file, but the pipeline names a public_key: signed models live in a "
                             "versioned folder with a signed manifest (see docs/security.md)")
    if not checks and not policy.require_digest:     # under a pin a side file is never trusted
        side = sidecar_sha256(file)
        if side:
            checks.append((side, f"{file.name}.sha256"))
    if not checks and policy.require_digest:
        raise IntegrityError(f"model {file} has no sha256 to check against (the pipeline pins one): give the digest "
                             "with the swap request")
    return checks, serial


def _check_fresh(folder: Path, version: str, doc: dict, policy: TrustPolicy) -> None:
    """Rollback protection: the pointer must name the manifest's ``current``, and the manifest may not be older
    (a lower ``serial``) than one this stage loaded before."""
    if doc["current"] is not None and version != doc["current"]:
        raise IntegrityError(f"{folder}: the 'current' pointer names {version!r} but {MANIFEST} names "
                             f"{doc['current']!r} as current: the pointer was changed without a new manifest (a rollback?); "
                             f"serve another version with `edgesieve model manifest {folder} --current VERSION --sign KEY`")
    seen = loaded_serial(policy.serial_file, folder)
    if doc["serial"] < seen:
        raise IntegrityError(f"{folder / MANIFEST} has serial {doc['serial']}, older than serial {seen} loaded before "
                             f"(remembered in {policy.serial_file}): an old manifest was put back (a rollback?); "
                             "write and sign a new manifest, or delete that file to accept it")


def _serials(serial_file: Path) -> dict:
    """{model folder: highest manifest serial loaded} from ``serial_file`` ({} when there is none yet)."""
    try:
        seen = json.loads(Path(serial_file).read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        raise IntegrityError(f"cannot read {serial_file} (the manifest serials loaded before): {exc}; delete it to "
                             "start remembering afresh") from None
    return seen if isinstance(seen, dict) else {}


def loaded_serial(serial_file: Path | None, folder: Path) -> int:
    """The highest manifest serial loaded from ``folder`` so far (0: none remembered)."""
    if serial_file is None:
        return 0
    value = _serials(serial_file).get(str(Path(folder).resolve()), 0)
    return value if type(value) is int else 0


def remember_serial(serial_file: Path | None, folder: Path, serial: int | None) -> None:
    """After a model from ``folder`` loaded: keep the serial of the manifest that vouched for it, when highest."""
    if serial_file is None or serial is None or serial <= loaded_serial(serial_file, folder):
        return
    seen = _serials(serial_file)
    seen[str(Path(folder).resolve())] = serial
    from pipeline.statefiles import private_dir, write_private

    private_dir(Path(serial_file).parent)
    write_private(serial_file, (json.dumps(seen, indent=1, sort_keys=True) + "\n").encode())


def write_manifest(folder: Path, versions: dict[str, str], current: str | None = None,
                   serial: int | None = None) -> dict:
    """Write ``folder/manifest.json`` for ``{version: sha256}`` (sorted, so the same input gives the same bytes).

    ``serial`` defaults to one more than the manifest there now (1 for the first); ``current``, when given, is the
    only version a pointer may name while this manifest stands."""
    if serial is None:
        try:
            serial = int(json.loads((Path(folder) / MANIFEST).read_text(encoding="utf-8")).get("serial", 0)) + 1
        except (OSError, ValueError, TypeError, AttributeError):
            serial = 1
    if current is not None and current not in versions:
        raise IntegrityError(f"--current {current!r} is not a version in {folder} (have: {', '.join(sorted(versions))})")
    doc = {"format": "edgesieve-model-manifest/1", "serial": serial, "versions": dict(sorted(versions.items()))}
    if current is not None:
        doc["current"] = current
    (Path(folder) / MANIFEST).write_text(json.dumps(doc, indent=2) + "\n", encoding="utf-8")
    return doc


def sign_manifest(folder: Path, private_key: Path) -> Path:
    """Sign ``folder/manifest.json`` with an Ed25519 private key (PEM); writes ``manifest.json.sig``."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    from cryptography.hazmat.primitives.serialization import load_pem_private_key

    key = load_pem_private_key(Path(private_key).read_bytes(), password=None)
    if not isinstance(key, Ed25519PrivateKey):
        raise IntegrityError(f"{private_key} is not an Ed25519 private key")
    sig = key.sign((Path(folder) / MANIFEST).read_bytes())
    out = Path(folder) / SIGNATURE
    out.write_text(base64.b64encode(sig).decode() + "\n", encoding="ascii")
    return out

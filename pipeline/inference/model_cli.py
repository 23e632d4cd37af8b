"""``edgesieve model keygen | manifest | verify``: make keys, write and sign a versioned folder's manifest, check it.

A versioned model folder holds one folder (or ``.onnx`` file) per version and a ``current`` pointer::

    models/
      v1/camera_counter.onnx
      v2/camera_counter.onnx
      current            # "v2", or a symlink current -> v2
      manifest.json      # {"serial": 3, "current": "v2", "versions": {"v1": "<sha256>", ...}}  (edgesieve model manifest)
      manifest.json.sig  # Ed25519 signature of manifest.json, base64           (--sign KEY)

Sign where the private key lives (a build machine), ship the folder through any channel, and name the public
key in the pipeline (``public_key:`` of the ``onnx`` stage): a gateway loads only versions the key signed.
"""
from __future__ import annotations

import argparse
import hashlib
import os
import sys
from pathlib import Path

from .integrity import MANIFEST, VERSION_NAME, IntegrityError, read_manifest, sign_manifest, write_manifest


def version_files(folder: Path) -> dict[str, Path]:
    """``{version: model file}`` for every version in a versioned folder (a ``.onnx`` file or a folder with one)."""
    out = {}
    for entry in sorted(Path(folder).iterdir()):
        if not VERSION_NAME.match(entry.name) or entry.name in ("current", MANIFEST) or entry.name.startswith("manifest."):
            continue
        if entry.is_dir():
            found = sorted(entry.glob("*.onnx"))
            if len(found) == 1:
                out[entry.name] = found[0]
        elif entry.suffix == ".onnx":
            out[entry.name] = entry
    return out


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _keygen(args) -> int:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    private, public = Path(args.out), Path(args.out + ".pub")
    if private.exists() and not args.force:
        print(f"edgesieve model keygen: {private} exists (use --force to replace it)", file=sys.stderr)
        return 1
    key = Ed25519PrivateKey.generate()
    fd = os.open(private, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)  # the private key is for its owner only
    with os.fdopen(fd, "wb") as f:
        f.write(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                  serialization.NoEncryption()))
    public.write_bytes(key.public_key().public_bytes(serialization.Encoding.PEM,
                                                     serialization.PublicFormat.SubjectPublicKeyInfo))
    print(f"wrote {private} (private: keep it off the gateways) and {public} (name it as public_key: in the pipeline)")
    return 0


def _manifest(args) -> int:
    folder = Path(args.folder)
    versions = {v: _digest(p) for v, p in version_files(folder).items()}
    if not versions:
        print(f"edgesieve model manifest: {folder} holds no version (v1/model.onnx or v1.onnx)", file=sys.stderr)
        return 1
    try:
        doc = write_manifest(folder, versions, current=args.current)
    except IntegrityError as exc:
        print(f"edgesieve model manifest: {exc}", file=sys.stderr)
        return 1
    for v, d in versions.items():
        print(f"{v}  {d}" + ("  (current)" if v == args.current else ""))
    print(f"wrote {folder / MANIFEST} (serial {doc['serial']})")
    if args.sign:
        print(f"wrote {sign_manifest(folder, Path(args.sign))}")
    return 0


def _verify(args) -> int:
    folder = Path(args.folder)
    try:
        manifest = read_manifest(folder, Path(args.public_key) if args.public_key else None)
    except IntegrityError as exc:
        print(f"edgesieve model verify: {exc}", file=sys.stderr)
        return 1
    if manifest is None:
        print(f"edgesieve model verify: {folder} has no {MANIFEST}", file=sys.stderr)
        return 1
    files, bad = version_files(folder), 0
    for v, expected in manifest.items():
        got = _digest(files[v]) if v in files else None
        ok = got == expected
        bad += not ok
        print(f"{'ok ' if ok else 'BAD'} {v}  " + ("missing" if got is None else got if ok else f"{got} != {expected}"))
    print(("signature ok; " if args.public_key else "not signed-checked; ") + f"{len(manifest) - bad} of {len(manifest)} versions verify")
    return 1 if bad else 0


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="edgesieve model", description="Keys and manifests for versioned model folders.")
    sub = p.add_subparsers(dest="what", required=True)
    k = sub.add_parser("keygen", help="make an Ed25519 key pair: OUT (private, 0600) and OUT.pub")
    k.add_argument("out")
    k.add_argument("--force", action="store_true")
    m = sub.add_parser("manifest", help="write FOLDER/manifest.json with the sha256 of every version")
    m.add_argument("folder")
    m.add_argument("--sign", metavar="PRIVATE_KEY", help="also write manifest.json.sig with this private key")
    m.add_argument("--current", metavar="VERSION", help="the only version a 'current' pointer may name under this "
                   "manifest: with --sign, flipping the pointer back needs the key (rollback protection)")
    v = sub.add_parser("verify", help="check every version against the manifest (and its signature)")
    v.add_argument("folder")
    v.add_argument("--public-key", metavar="PEM")
    args = p.parse_args(argv)
    return {"keygen": _keygen, "manifest": _manifest, "verify": _verify}[args.what](args)

"""Official VTP checkpoints: download, manifest, verification.

    python -m vtp.weights download VTP-Small-f16d64
    python -m vtp.weights verify weights/VTP-Small-f16d64
    python -m vtp.weights list

A weights folder holds the files an official checkpoint ships (``config.json``,
``model.safetensors`` or an index and its shards, ``README.md``, ``figures/``) and ``manifest.json``,
which records every file's size and sha256 (schema ``vtp-weights-manifest/1``)::

    {"schema": "vtp-weights-manifest/1",
     "model": "VTP-Small-f16d64",
     "source": "https://huggingface.co/MiniMaxAI/VTP-Small-f16d64",   (null when recorded by hand)
     "created": "2025-01-01T12:00:00+00:00",
     "files": [{"path": "config.json", "size": 1234, "sha256": "<64 hex>"}, ...]}

``files`` lists every file of the folder, sorted by path (relative, POSIX separators), except
``manifest.json`` itself and hidden files and folders (``.cache/`` from huggingface_hub, the
verification stamp below). Verification fails when a listed file is missing or differs, and when the
folder holds a weights file (``*.safetensors``, ``*.bin``, ``model.safetensors.index.json``) the manifest
does not list: the loader could read it instead of the verified ones.

Hashing gigabytes at every model load is slow, so a successful sha256 check leaves a stamp,
``.manifest_verified.json`` (schema ``vtp-weights-stamp/1``): the sha256 of the manifest and, per
file, ``[size, mtime_ns, inode]`` as seen when the file was hashed. ``verify_manifest(folder,
full="auto")``, the load-time check, hashes only the files whose stat differs from the stamp (all of
them when the stamp is missing or belongs to another manifest) and compares sizes for the rest.

The hub clients (``modelscope``, ``huggingface_hub``) are optional extras, imported only by
``download``: ``pip install -e '.[download]'``. Nothing else here touches the network.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import hashlib
import importlib
import inspect
import json
import logging
import os
import socket
import sys
import threading
import time
import urllib.parse
import urllib.request
from pathlib import Path, PurePosixPath
from typing import Callable, Iterator

from .io_utils import atomic_write_bytes
from .layout import (
    BIN_NAME,
    CONFIG_NAME,
    SAFETENSORS_INDEX_NAME,
    SAFETENSORS_NAME,
    find_weights,
    is_weight_file,
    missing_files,
)

__all__ = [
    "KNOWN_MODELS",
    "MANIFEST_NAME",
    "ManifestError",
    "STAMP_NAME",
    "WeightsError",
    "download",
    "main",
    "sha256_file",
    "verify_manifest",
    "weights_identity",
    "write_manifest",
]

log = logging.getLogger(__name__)

KNOWN_MODELS: dict[str, dict[str, str]] = {
    "VTP-Small-f16d64": {"modelscope": "MiniMax-VL/VTP-Small-f16d64", "huggingface": "MiniMaxAI/VTP-Small-f16d64"},
    "VTP-Base-f16d64": {"modelscope": "MiniMax-VL/VTP-Base-f16d64", "huggingface": "MiniMaxAI/VTP-Base-f16d64"},
    "VTP-Large-f16d64": {"modelscope": "MiniMax-VL/VTP-Large-f16d64", "huggingface": "MiniMaxAI/VTP-Large-f16d64"},
}

MANIFEST_NAME = "manifest.json"
MANIFEST_SCHEMA = "vtp-weights-manifest/1"
STAMP_NAME = ".manifest_verified.json"
STAMP_SCHEMA = "vtp-weights-stamp/1"

WEIGHTS_NAME = SAFETENSORS_NAME
INDEX_NAME = SAFETENSORS_INDEX_NAME
# What the kit reads from a model repository; everything else there is left on the hub.
ALLOW_PATTERNS = [CONFIG_NAME, WEIGHTS_NAME, INDEX_NAME, "model-*.safetensors", "README.md", "figures/*"]

DEFAULT_ROOT = Path("weights")
SOURCES = ("modelscope", "huggingface")
HF_DEFAULT_ENDPOINT = "https://huggingface.co"
MODELSCOPE_DEFAULT_DOMAIN = "www.modelscope.cn"
MODULE_OF_SOURCE = {"modelscope": "modelscope", "huggingface": "huggingface_hub"}
PIP_OF_SOURCE = {"modelscope": "pip install modelscope", "huggingface": "pip install huggingface_hub"}
PIP_EXTRA = "pip install -e '.[download]'"

HASH_CHUNK_BYTES = 8 << 20
HUB_TIMEOUT_S = 10  # connect / read timeout handed to the hub clients, unless the user set one
PROBE_TIMEOUT_S = 3.0  # TCP probe of the hub host, name resolution included


class WeightsError(RuntimeError):
    """A weights folder does not match its manifest, is incomplete, or could not be downloaded.

    ``folder`` is the folder concerned (or None) and ``problems`` one line per bad file.
    """

    def __init__(self, message: str, *, folder: Path | None = None, problems: list[str] | None = None):
        super().__init__(message)
        self.folder = folder
        self.problems = list(problems or [])


class ManifestError(WeightsError):
    """manifest.json itself is malformed (not JSON, wrong schema, bad entries): a usage problem, not a
    verification failure."""


# ----------------------------------------------------------------------------------------------
# Hashing, listing


def sha256_file(path: str | os.PathLike) -> str:
    """Hex sha256 of a file's bytes, read in 8 MiB chunks."""
    digest = hashlib.sha256()
    buf = bytearray(HASH_CHUNK_BYTES)
    view = memoryview(buf)
    with open(path, "rb", buffering=0) as f:
        while n := f.readinto(buf):
            digest.update(view[:n])
    return digest.hexdigest()


def _stat_key(st: os.stat_result) -> list[int]:
    """What the stamp remembers of a file: [size, mtime_ns, inode]."""
    return [st.st_size, st.st_mtime_ns, st.st_ino]


def _hash_with_stat(path: Path, label: str) -> tuple[str, list[int] | None]:
    """(sha256, stat key), the key None when the file changed while it was being hashed."""
    before = _stat_key(os.stat(path))
    size = before[0]
    log.info("hashing %s (%s)", label, _fmt_bytes(size))
    t0 = time.perf_counter()
    digest = sha256_file(path)
    seconds = time.perf_counter() - t0
    if size >= 64 << 20:
        log.info("hashed %s in %.1f s (%s/s)", label, seconds, _fmt_bytes(size / max(seconds, 1e-9)))
    after = _stat_key(os.stat(path))
    return digest, (after if after == before else None)


def _payload_files(folder: Path) -> list[str]:
    """Relative POSIX paths of the files a manifest covers: all but manifest.json and hidden entries."""
    found = []
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        for name in filenames:
            if name.startswith("."):
                continue
            rel = Path(dirpath, name).relative_to(folder).as_posix()
            if rel != MANIFEST_NAME:
                found.append(rel)
    return sorted(found)


def _json_bytes(obj: dict) -> bytes:
    return (json.dumps(obj, indent=2) + "\n").encode("utf-8")


def _fmt_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.2f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


# ----------------------------------------------------------------------------------------------
# Manifest and verification stamp


def _canonical_model(name: str) -> str | None:
    """The KNOWN_MODELS spelling of ``name`` (case-insensitive), or None."""
    return next((known for known in KNOWN_MODELS if known.lower() == name.lower()), None)


def write_manifest(folder: str | os.PathLike, model: str | None = None, source: str | None = None) -> Path:
    """Hash every file of ``folder`` and write ``folder/manifest.json`` atomically; return its path.

    ``model`` defaults to the folder's name, ``source`` (where the files came from) to null. Also
    writes the verification stamp, since every file was just hashed.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"weights folder not found: {folder}")
    rel_paths = _payload_files(folder)
    if not rel_paths:
        raise WeightsError(f"{folder} holds no files to record in a manifest", folder=folder)

    t0 = time.perf_counter()
    entries, stamp_files = [], {}
    for rel in rel_paths:
        digest, key = _hash_with_stat(folder / rel, rel)
        if key is None:
            raise WeightsError(f"{folder / rel} changed while it was being hashed; run again", folder=folder)
        entries.append({"path": rel, "size": key[0], "sha256": digest})
        stamp_files[rel] = key
    total = sum(e["size"] for e in entries)
    log.info("hashed %d files, %s in %.1f s", len(entries), _fmt_bytes(total), time.perf_counter() - t0)

    if model is None:
        model = _canonical_model(folder.resolve().name) or folder.resolve().name
    manifest = {
        "schema": MANIFEST_SCHEMA,
        "model": model,
        "source": source,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "files": entries,
    }
    data = _json_bytes(manifest)
    path = folder / MANIFEST_NAME
    atomic_write_bytes(path, data)
    log.info("wrote %s (%d files)", path, len(entries))
    _write_stamp(folder, hashlib.sha256(data).hexdigest(), stamp_files)
    return path


def _load_manifest(folder: Path) -> tuple[dict, str] | None:
    """(manifest, sha256 of its bytes), None when there is none; ManifestError when it is malformed."""
    path = folder / MANIFEST_NAME
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return None

    def bad(reason: str) -> ManifestError:
        return ManifestError(
            f"{path} is not a valid weights manifest ({reason}); delete it and record a new one with "
            f"`python -m vtp.weights verify {folder} --write-manifest`",
            folder=folder,
        )

    try:
        manifest = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise bad(f"not JSON: {e}") from None
    if not isinstance(manifest, dict) or manifest.get("schema") != MANIFEST_SCHEMA:
        schema = manifest.get("schema") if isinstance(manifest, dict) else None
        raise bad(f"schema is {schema!r}, expected {MANIFEST_SCHEMA!r}")
    files = manifest.get("files")
    if not isinstance(files, list):
        raise bad("'files' is not a list")
    for entry in files:
        if not (
            isinstance(entry, dict)
            and isinstance(entry.get("path"), str)
            and isinstance(entry.get("size"), int)
            and isinstance(entry.get("sha256"), str)
        ):
            raise bad(f"file entry {entry!r} needs path (str), size (int), sha256 (str)")
        rel = PurePosixPath(entry["path"])
        if rel.is_absolute() or ".." in rel.parts or not rel.parts:
            raise bad(f"file path {entry['path']!r} is not relative to the folder")
    return manifest, hashlib.sha256(data).hexdigest()


def _read_stamp(folder: Path, manifest_sha256: str) -> dict[str, list[int]]:
    """The stamp's per-file stat keys, {} when it is missing, unreadable or for another manifest."""
    try:
        stamp = json.loads((folder / STAMP_NAME).read_bytes())
    except (OSError, ValueError):
        return {}
    if (
        not isinstance(stamp, dict)
        or stamp.get("schema") != STAMP_SCHEMA
        or stamp.get("manifest_sha256") != manifest_sha256
        or not isinstance(stamp.get("files"), dict)
    ):
        return {}
    return stamp["files"]


def _write_stamp(folder: Path, manifest_sha256: str, files: dict[str, list[int]]) -> None:
    stamp = {"schema": STAMP_SCHEMA, "manifest_sha256": manifest_sha256, "files": files}
    try:
        atomic_write_bytes(folder / STAMP_NAME, _json_bytes(stamp))
    except OSError as e:  # a read-only folder still verifies; it just cannot skip hashing next time
        log.warning("cannot write %s (%s); every load will hash the weights again", folder / STAMP_NAME, e)


def _remove_stamp(folder: Path) -> None:
    with contextlib.suppress(OSError):
        (folder / STAMP_NAME).unlink()


def verify_manifest(folder: str | os.PathLike, full: bool | str = True) -> dict | None:
    """Check the files of ``folder`` against its manifest.json.

    Returns None when the folder has no manifest. Otherwise every listed file must exist with the
    listed size, its sha256 must match when it is hashed, and every weights file of the folder
    (:func:`vtp.layout.is_weight_file`, hidden ones aside) must be listed:

    - ``full=True``: hash every file (what ``python -m vtp.weights verify`` does);
    - ``full="auto"``: hash only the files whose [size, mtime_ns, inode] differ from the stamp a
      previous successful check left (all files when there is no valid stamp);
    - ``full=False``: compare sizes only.

    A check that hashed files and passed (re)writes the stamp; a failed check removes it.
    Raises WeightsError naming the folder and every bad file (missing, size or sha256 differs, with
    expected and actual values; a weights file not listed), ManifestError when manifest.json is
    malformed, FileNotFoundError when the folder does not exist.
    Returns ``{"verified": "sha256" | "stat", "files": n, "hashed": k, "manifest_sha256": hex}``:
    "sha256" when this call hashed files (k of them), "stat" when sizes and stamp sufficed.
    """
    if full not in (True, False, "auto"):
        raise ValueError(f"full must be True, False or 'auto', got {full!r}")
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"weights folder not found: {folder}")
    loaded = _load_manifest(folder)
    if loaded is None:
        return None
    manifest, manifest_sha256 = loaded
    stamp = _read_stamp(folder, manifest_sha256) if full == "auto" else {}

    listed = {entry["path"] for entry in manifest["files"]}
    unlisted = [rel for rel in _payload_files(folder) if is_weight_file(rel) and rel not in listed]

    problems: list[str] = []
    new_stamp: dict[str, list[int]] = {}
    hashed = 0
    for entry in manifest["files"]:
        rel, path = entry["path"], folder / entry["path"]
        try:
            st = os.stat(path)
        except FileNotFoundError:
            problems.append(f"{rel}: missing")
            continue
        if st.st_size != entry["size"]:
            problems.append(f"{rel}: size differs: expected {entry['size']} bytes, actual {st.st_size} bytes")
            continue
        key = _stat_key(st)
        if full is False or (full == "auto" and stamp.get(rel) == key):
            new_stamp[rel] = key
            continue
        digest, key = _hash_with_stat(path, rel)
        hashed += 1
        if digest != entry["sha256"]:
            problems.append(f"{rel}: sha256 differs: expected {entry['sha256']}, actual {digest}")
        elif key is not None:
            new_stamp[rel] = key

    if problems or unlisted:
        _remove_stamp(folder)
        raise _mismatch(folder, manifest, problems, unlisted)
    if hashed:
        _write_stamp(folder, manifest_sha256, new_stamp)
    return {
        "verified": "sha256" if hashed else "stat",
        "files": len(manifest["files"]),
        "hashed": hashed,
        "manifest_sha256": manifest_sha256,
    }


def _mismatch(folder: Path, manifest: dict, bad: list[str], unlisted: list[str]) -> WeightsError:
    """The WeightsError of a failed check: every problem, one line each, and what to do."""
    summary, todo = [], []
    if bad:
        name = manifest.get("model") or folder.name
        hint = f"python -m vtp.weights download {name} --dest {folder}" if name in KNOWN_MODELS else "download it again"
        summary.append(f"{len(bad)} of {len(manifest['files'])} files do not match {MANIFEST_NAME}")
        todo.append(f"Fetch the files again ({hint}).")
    if unlisted:
        summary.append(f"{len(unlisted)} weights file(s) not listed in {MANIFEST_NAME}")
        todo.append(
            f"Remove the unlisted weights file(s): the loader could read them instead of the verified ones "
            f"(it takes {WEIGHTS_NAME} first, then {INDEX_NAME} and its shards, then {BIN_NAME})."
        )
    problems = bad + [f"{rel}: not listed in {MANIFEST_NAME} (a weights file the manifest does not vouch for)"
                      for rel in unlisted]
    return WeightsError(
        f"{folder}: {'; '.join(summary)}:\n"
        + "".join(f"  {p}\n" for p in problems)
        + " ".join(todo)
        + f" If you changed the folder on purpose, delete {folder / MANIFEST_NAME} and record a new one: "
        f"python -m vtp.weights verify {folder} --write-manifest",
        folder=folder,
        problems=problems,
    )


def weights_identity(folder: str | os.PathLike, files: list[str] | None = None) -> dict:
    """What identifies the weights read from ``folder``: ``{"path", "files", "sha256", "manifest"}``.

    ``files`` are the weight files the loader read (``model.checkpoint_files``: paths inside ``folder``,
    absolute, relative to the working directory or to ``folder``); None means those
    :func:`vtp.layout.find_weights` picks, the loader's own rule. The result describes exactly them:

    - ``path``: the folder, absolute;
    - ``files``: their names relative to the folder (POSIX), in path order;
    - ``sha256``: that of the file when there is one; for several, that of the text
      ``"<sha256>  <name>\\n"`` over the files in path order (sha256sum's format);
    - ``manifest``: True when manifest.json lists every one of them with the sha256 they have.

    A listed file's sha256 is taken from the manifest when the verification stamp vouches for it as it
    is now (its [size, mtime_ns, inode] unchanged since a successful verify_manifest); every other file
    is hashed. Raises FileNotFoundError (folder or file missing), ValueError (a file outside the folder),
    CheckpointError (``files`` None and no complete weights), ManifestError (malformed manifest.json).
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"weights folder not found: {folder}")
    paths = find_weights(folder)[1] if files is None else files
    names = sorted({_name_in_folder(folder, p) for p in paths})
    if not names:
        raise ValueError(f"weights_identity of {folder}: the list of files is empty")

    listed: dict[str, str] = {}
    vouched: dict[str, list[int]] = {}
    loaded = _load_manifest(folder)
    if loaded is not None:
        listed = {entry["path"]: entry["sha256"] for entry in loaded[0]["files"]}
        vouched = _read_stamp(folder, loaded[1])
    digests = {}
    for name in names:
        key = _stat_key(os.stat(folder / name))  # FileNotFoundError names the file
        if name in listed and vouched.get(name) == key:
            digests[name] = listed[name]
        else:
            digests[name] = sha256_file(folder / name)
    sha256 = digests[names[0]] if len(names) == 1 else _combined(names, digests)
    return {
        "path": str(folder.resolve()),
        "files": names,
        "sha256": sha256,
        "manifest": all(listed.get(name) == digests[name] for name in names),
    }


def _name_in_folder(folder: Path, file: str | os.PathLike) -> str:
    """``file``'s POSIX path relative to ``folder``; symbolic links are not followed (hub caches use them)."""
    root = os.path.abspath(folder)
    for candidate in (file, os.path.join(folder, file)):  # as given, then relative to the folder
        rel = os.path.relpath(os.path.abspath(candidate), root)
        if rel != os.curdir and Path(rel).parts[0] != os.pardir:
            return Path(rel).as_posix()
    raise ValueError(f"weights file {file} is not inside {folder}")


def _combined(names: list[str], digests: dict[str, str]) -> str:
    return hashlib.sha256("".join(f"{digests[n]}  {n}\n" for n in names).encode()).hexdigest()


# ----------------------------------------------------------------------------------------------
# Download


def model_page_urls(model: str) -> dict[str, str]:
    """The model's pages on each hub (HF_ENDPOINT, when set, replaces huggingface.co)."""
    ids = KNOWN_MODELS[model]
    hf = os.environ.get("HF_ENDPOINT", "").rstrip("/") or HF_DEFAULT_ENDPOINT
    pages = {
        "huggingface": f"{HF_DEFAULT_ENDPOINT}/{ids['huggingface']}",
        "modelscope": f"https://modelscope.cn/models/{ids['modelscope']}",
    }
    if hf != HF_DEFAULT_ENDPOINT:
        pages["huggingface mirror"] = f"{hf}/{ids['huggingface']}"
    return pages


def manual_instructions(model: str, dest: str | os.PathLike) -> str:
    """How to place the files of ``model`` in ``dest`` by hand, then record the manifest."""
    dest = Path(dest).as_posix()
    pages = "".join(f"  {url}\n" for url in model_page_urls(model).values())
    return (
        f"To place the files by hand, download them on a machine with network access from\n{pages}"
        f"and copy them into this layout:\n"
        f"  {dest}/config.json\n"
        f"  {dest}/{WEIGHTS_NAME}   (or {INDEX_NAME} and its model-*.safetensors shards, or {BIN_NAME})\n"
        f"  {dest}/README.md           (optional)\n"
        f"then record the manifest:\n"
        f"  python -m vtp.weights verify {dest} --write-manifest"
    )


@contextlib.contextmanager
def _scoped_env(set_: dict[str, str], defaults: dict[str, str]) -> Iterator[None]:
    """Set ``set_`` and, where the user has not, ``defaults`` in os.environ; restore on exit."""
    saved = {k: os.environ.get(k) for k in (*set_, *defaults)}
    os.environ.update(set_)
    for key, value in defaults.items():
        os.environ.setdefault(key, value)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def _probe(url: str, timeout: float) -> None:
    """Raise OSError unless a TCP connection to ``url``'s host opens within ``timeout`` seconds.

    Name resolution is bounded too (it runs in a daemon thread). Skipped when a proxy is
    configured for the host, since then the client does not connect directly.
    """
    parts = urllib.parse.urlsplit(url if "://" in url else f"https://{url}")
    host = parts.hostname or ""
    port = parts.port or (80 if parts.scheme == "http" else 443)
    proxies = urllib.request.getproxies()
    if (proxies.get(parts.scheme) or proxies.get("all")) and not urllib.request.proxy_bypass(host):
        log.info("a proxy is configured; not probing %s:%d", host, port)
        return
    outcome: dict[str, BaseException] = {}

    def connect() -> None:
        try:
            socket.create_connection((host, port), timeout=timeout).close()
        except BaseException as e:  # reported to the caller below
            outcome["error"] = e

    thread = threading.Thread(target=connect, name="vtp-weights-probe", daemon=True)
    thread.start()
    thread.join(timeout)
    if thread.is_alive():
        raise TimeoutError(f"cannot reach {host}:{port}: no answer within {timeout:g} s")
    if "error" in outcome:
        raise OSError(f"cannot reach {host}:{port}: {_one_line(outcome['error'])}")


def _one_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    first = text[0].strip() if text else ""
    first = first if len(first) <= 300 else first[:297] + "..."
    return f"{type(e).__name__}: {first}" if first else type(e).__name__


def _import_snapshot_download(source: str) -> Callable:
    """``snapshot_download`` of the source's client, WeightsError with the pip command when absent."""
    module_name = MODULE_OF_SOURCE[source]
    try:
        module = importlib.import_module(module_name)
    except ImportError:
        raise WeightsError(
            f"{module_name} is not installed; install it with `{PIP_OF_SOURCE[source]}` "
            f"(or `{PIP_EXTRA}` for both hubs)"
        ) from None
    fn = getattr(module, "snapshot_download", None)
    if fn is None:
        raise WeightsError(f"{module_name} has no snapshot_download; upgrade it: `pip install -U {module_name}`")
    return fn


def _accepts(fn: Callable) -> Callable[[str], bool]:
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return lambda name: True
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return lambda name: True
    return lambda name: name in params


def _fetch_modelscope(fn: Callable, model: str, dest: Path) -> None:
    accepts = _accepts(fn)
    if not accepts("local_dir"):
        raise WeightsError("this modelscope cannot download into a folder (no local_dir); `pip install -U modelscope`")
    kwargs: dict = {"model_id": KNOWN_MODELS[model]["modelscope"], "local_dir": str(dest)}
    if accepts("allow_patterns"):
        kwargs["allow_patterns"] = ALLOW_PATTERNS
    elif accepts("allow_file_pattern"):
        kwargs["allow_file_pattern"] = ALLOW_PATTERNS
    fn(**kwargs)


def _fetch_huggingface(fn: Callable, model: str, dest: Path, endpoint: str | None) -> None:
    accepts = _accepts(fn)
    kwargs: dict = {
        "repo_id": KNOWN_MODELS[model]["huggingface"],
        "local_dir": str(dest),
        "allow_patterns": ALLOW_PATTERNS,
    }
    if endpoint and accepts("endpoint"):  # for a huggingface_hub imported before HF_ENDPOINT was set
        kwargs["endpoint"] = endpoint
    with contextlib.suppress(ValueError):
        if accepts("etag_timeout"):
            kwargs["etag_timeout"] = float(os.environ["HF_HUB_ETAG_TIMEOUT"])
    fn(**kwargs)


def _hub_settings(source: str, endpoint: str | None) -> tuple[dict[str, str], dict[str, str], str]:
    """(variables to set, defaults unless the user set them, URL to probe) for one source."""
    timeout = str(HUB_TIMEOUT_S)
    if source == "huggingface":
        set_ = {"HF_ENDPOINT": endpoint} if endpoint else {}
        url = endpoint or os.environ.get("HF_ENDPOINT") or HF_DEFAULT_ENDPOINT
        return set_, {"HF_HUB_ETAG_TIMEOUT": timeout, "HF_HUB_DOWNLOAD_TIMEOUT": timeout}, url
    url = os.environ.get("MODELSCOPE_DOMAIN") or MODELSCOPE_DEFAULT_DOMAIN
    return {}, {"MODELSCOPE_API_HTTP_CLIENT_CONNECT_TIMEOUT": timeout}, url


def download(
    model: str,
    dest: str | os.PathLike | None = None,
    source: str = "auto",
    endpoint: str | None = None,
) -> Path:
    """Download ``model`` into ``dest`` (default ``weights/<model>``), write its manifest, return ``dest``.

    ``source`` is "modelscope", "huggingface" or "auto" (ModelScope, then Hugging Face, each if
    installed). ``endpoint`` is a Hugging Face endpoint or mirror (sets HF_ENDPOINT for the call).
    Raises WeightsError, with the pip command or the manual-placement steps, on any failure; a failed or
    interrupted download first removes what it created (``dest`` and the folders above it that it made,
    or, in a ``dest`` that existed before, the entries it added), so ``list`` does not show it as partial.
    """
    name = _canonical_model(model)
    if name is None:
        raise WeightsError(f"unknown model {model!r}; known models: {', '.join(KNOWN_MODELS)}")
    if source not in ("auto", *SOURCES):
        raise WeightsError(f"unknown source {source!r}; use auto, modelscope or huggingface")
    if endpoint and source == "modelscope":
        raise WeightsError(
            "--endpoint sets the Hugging Face endpoint (HF_ENDPOINT); it does not apply to --source modelscope"
        )
    endpoint = endpoint.rstrip("/") if endpoint else None
    dest = Path(dest) if dest is not None else DEFAULT_ROOT / name
    order = SOURCES if source == "auto" else (source,)
    undo = _Undo(dest)
    try:
        return _download(name, dest, source, order, endpoint)
    except BaseException:
        undo()
        raise


class _Undo:
    """Remembers what existed at ``dest`` before a download, to remove only what the download adds."""

    def __init__(self, dest: Path):
        self.dest = dest
        # the topmost folder of dest's path that does not exist yet: removing it removes all that mkdir made
        self.created_root = None
        for folder in (dest, *dest.parents):
            if folder.exists():
                break
            self.created_root = folder
        self.entries = set(os.listdir(dest)) if self.created_root is None and dest.is_dir() else None

    def __call__(self) -> None:
        import shutil

        if self.created_root is not None:
            if self.created_root.exists():
                shutil.rmtree(self.created_root, ignore_errors=True)
                log.info("removed %s, created by the failed download", self.created_root)
            return
        if self.entries is None or not self.dest.is_dir():
            return
        added = sorted(set(os.listdir(self.dest)) - self.entries)
        for entry in added:
            path = self.dest / entry
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path, ignore_errors=True)
            else:
                with contextlib.suppress(OSError):
                    path.unlink()
        if added:
            log.info("removed %s from %s, added by the failed download", ", ".join(added), self.dest)


def _download(name: str, dest: Path, source: str, order: tuple, endpoint: str | None) -> Path:

    failures: list[str] = []
    missing_libraries = 0
    for src in order:
        set_, defaults, probe_url = _hub_settings(src, endpoint)
        with _scoped_env(set_, defaults):
            pages = model_page_urls(name)
            page = pages.get("huggingface mirror", pages["huggingface"]) if src == "huggingface" else pages[src]
            try:
                fn = _import_snapshot_download(src)
            except WeightsError as e:
                if source != "auto":
                    raise WeightsError(f"{e}\n{manual_instructions(name, dest)}") from None
                log.info("%s: not installed, skipping it", MODULE_OF_SOURCE[src])
                failures.append(f"{src}: {e}")
                missing_libraries += 1
                continue
            log.info("downloading %s from %s into %s", name, page, dest)
            t0 = time.perf_counter()
            try:
                _probe(probe_url, PROBE_TIMEOUT_S)
                dest.mkdir(parents=True, exist_ok=True)
                if src == "modelscope":
                    _fetch_modelscope(fn, name, dest)
                else:
                    _fetch_huggingface(fn, name, dest, endpoint)
            except Exception as e:  # any client failure: report it, try the next source
                log.warning("%s failed after %.1f s: %s", src, time.perf_counter() - t0, _one_line(e))
                failures.append(f"{src}: {_one_line(e)}")
                continue
        missing = missing_files(dest)
        if missing:
            failures.append(f"{src}: downloaded, but {dest} lacks {', '.join(missing)}")
            continue
        log.info("downloaded %s from %s in %.1f s", name, src, time.perf_counter() - t0)
        write_manifest(dest, model=name, source=page)
        return dest

    if missing_libraries == len(order):
        raise WeightsError(
            f"no hub client is installed; install one with `{PIP_EXTRA}` "
            f"(or `{PIP_OF_SOURCE['modelscope']}` / `{PIP_OF_SOURCE['huggingface']}`)\n"
            + manual_instructions(name, dest)
        )
    raise WeightsError(
        f"could not download {name}:\n" + "".join(f"  {f}\n" for f in failures) + manual_instructions(name, dest)
    )


# ----------------------------------------------------------------------------------------------
# Command line

EPILOG = """\
examples:
  python -m vtp.weights download VTP-Small-f16d64
  HF_ENDPOINT=https://hf-mirror.com python -m vtp.weights download VTP-Base-f16d64 --source huggingface
  python -m vtp.weights verify weights/VTP-Small-f16d64
  python -m vtp.weights verify weights/VTP-Small-f16d64 --write-manifest   # files placed by hand
  python -m vtp.weights list

exit status: 0 ok, 1 verification failed, 2 usage or environment error (no network, no hub client,
a malformed manifest.json, a file that cannot be read)
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m vtp.weights",
        description="Download the official VTP checkpoints, record and verify their manifest.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="{download,verify,list}")

    p = sub.add_parser(
        "download",
        help="download a model into weights/MODEL and write its manifest",
        description="Download a model's config.json, model.safetensors, README.md and figures/, "
        "then write manifest.json.",
        epilog="example:\n"
        "  python -m vtp.weights download VTP-Small-f16d64 --source huggingface --endpoint https://hf-mirror.com",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("model", metavar="MODEL", help="one of: " + ", ".join(KNOWN_MODELS))
    p.add_argument(
        "--source",
        choices=("auto", *SOURCES),
        default="auto",
        help="hub to download from; auto tries modelscope, then huggingface, each if installed (default: auto)",
    )
    p.add_argument("--dest", type=Path, help="folder to download into (default: weights/MODEL)")
    p.add_argument(
        "--endpoint",
        metavar="URL",
        help="Hugging Face endpoint or mirror, e.g. https://hf-mirror.com (sets HF_ENDPOINT)",
    )
    p.set_defaults(func=_cmd_download)

    p = sub.add_parser(
        "verify",
        help="check every file of a weights folder against its manifest (sha256)",
        description="Check sizes and sha256 of every file listed in FOLDER/manifest.json.",
        epilog="example:\n  python -m vtp.weights verify weights/VTP-Small-f16d64 --write-manifest",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("folder", metavar="FOLDER", type=Path, help="weights folder, e.g. weights/VTP-Small-f16d64")
    p.add_argument(
        "--write-manifest", action="store_true", help="record a manifest of the folder's files when it has none"
    )
    p.set_defaults(func=_cmd_verify)

    p = sub.add_parser(
        "list",
        help="list the known models and which are present locally",
        epilog="example:\n  python -m vtp.weights list --root weights",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--root", type=Path, default=DEFAULT_ROOT, help="folder holding one subfolder per model (default: weights)"
    )
    p.set_defaults(func=_cmd_list)
    return parser


def _fail(message: object) -> None:
    print(f"error: {message}", file=sys.stderr)


def _cmd_download(args: argparse.Namespace) -> int:
    try:
        folder = download(args.model, dest=args.dest, source=args.source, endpoint=args.endpoint)
        manifest, _ = _load_manifest(folder)
    except (WeightsError, OSError) as e:
        _fail(e)
        return 2
    total = sum(f["size"] for f in manifest["files"])
    print(
        f"{manifest['model']}: {len(manifest['files'])} files ({_fmt_bytes(total)}) from {manifest['source']} "
        f"in {folder}; manifest {folder / MANIFEST_NAME}"
    )
    return 0


def _cmd_verify(args: argparse.Namespace) -> int:
    folder: Path = args.folder
    if not folder.is_dir():
        _fail(f"no such folder: {folder}")
        return 2
    if not (folder / MANIFEST_NAME).exists():
        if not args.write_manifest:
            _fail(
                f"no {MANIFEST_NAME} in {folder}; "
                f"record one with: python -m vtp.weights verify {folder} --write-manifest"
            )
            return 2
        missing = missing_files(folder)
        if missing:
            name = _canonical_model(folder.resolve().name)
            layout = manual_instructions(name, folder) if name else ""
            _fail(f"{folder} lacks {', '.join(missing)}; not recording a manifest of an incomplete folder\n{layout}")
            return 2
        try:
            path = write_manifest(folder)
            files = json.loads(path.read_bytes())["files"]
        except (WeightsError, OSError) as e:
            _fail(e)
            return 2
        print(f"wrote {path}: {len(files)} files ({_fmt_bytes(sum(f['size'] for f in files))})")
        return 0
    if args.write_manifest:
        log.info("%s exists; verifying against it (delete it to record a new one)", folder / MANIFEST_NAME)
    try:
        summary = verify_manifest(folder, full=True)
    except ManifestError as e:  # the manifest itself is unusable: nothing was verified
        _fail(e)
        return 2
    except WeightsError as e:
        _fail(e)
        return 1
    except OSError as e:
        _fail(f"cannot verify {folder}: {_one_line(e)}")
        return 2
    print(f"ok: {folder}: {summary['files']} files match {MANIFEST_NAME} (sha256)")
    return 0


def _cmd_list(args: argparse.Namespace) -> int:
    rows = [("model", "present", "manifest", "folder")]
    for name in KNOWN_MODELS:
        folder = args.root / name
        if not folder.is_dir():
            present = "no"
        else:
            present = "partial" if missing_files(folder) else "yes"
        manifest = "yes" if (folder / MANIFEST_NAME).is_file() else "no"
        rows.append((name, present, manifest, folder.as_posix()))
    widths = [max(len(row[i]) for row in rows) for i in range(3)]
    print("\n".join(f"{r[0]:<{widths[0]}}  {r[1]:<{widths[1]}}  {r[2]:<{widths[2]}}  {r[3]}" for r in rows))
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())

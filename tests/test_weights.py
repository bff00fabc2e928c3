"""vtp.weights: download (hub clients faked at snapshot_download), manifest, verify, stamp, CLI."""

from __future__ import annotations

import fnmatch
import hashlib
import json
import os
import socket
import sys
import threading
import time
import types
from pathlib import Path

import pytest

from vtp import weights

SMALL = "VTP-Small-f16d64"

# What the fake hubs serve: the kit's files plus one it must not fetch.
REPO_FILES = {
    "config.json": b'{"model_type": "vtp", "embed_dim": 64}\n',
    "model.safetensors": bytes(range(256)) * 64,
    "README.md": b"# VTP-Small-f16d64\n",
    "figures/overview.png": b"\x89PNG not really",
    "training_state.bin": b"large file the kit does not need",
}
KIT_FILES = sorted(set(REPO_FILES) - {"training_state.bin"})

ENV_VARS = (
    "HF_ENDPOINT", "HF_HUB_ETAG_TIMEOUT", "HF_HUB_DOWNLOAD_TIMEOUT", "HF_HUB_OFFLINE",
    "MODELSCOPE_DOMAIN", "MODELSCOPE_API_HTTP_CLIENT_CONNECT_TIMEOUT",
    "http_proxy", "https_proxy", "all_proxy", "no_proxy", "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "NO_PROXY",
)


def _no_network(*args, **kwargs):
    raise AssertionError(f"test tried to open a network connection: {args}")


@pytest.fixture(autouse=True)
def isolated(monkeypatch, tmp_path):
    """No network, a clean hub environment (restored afterwards), cwd in a temporary folder."""
    monkeypatch.setattr(socket, "create_connection", _no_network)
    monkeypatch.setattr(socket.socket, "connect", _no_network)
    for name in ENV_VARS:  # setenv first so that monkeypatch restores the variable whatever the code does
        monkeypatch.setenv(name, "x")
        monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)


@pytest.fixture
def cli(capsys):
    """Run ``python -m vtp.weights ARGS`` in-process: (exit code, stdout, stderr)."""

    def run(*args: str):
        code = weights.main([str(a) for a in args])
        out, err = capsys.readouterr()
        return code, out, err

    return run


class FakeHubs:
    """Stand-ins for modelscope / huggingface_hub whose snapshot_download writes REPO_FILES."""

    def __init__(self):
        self.calls = {"modelscope": [], "huggingface": []}
        self.errors: dict[str, BaseException] = {}
        self.probed: list[tuple[str, int]] = []

    def _serve(self, source, repo, local_dir, allow_patterns, kwargs):
        self.calls[source].append(
            {
                "repo": repo,
                "local_dir": local_dir,
                "allow_patterns": allow_patterns,
                "kwargs": kwargs,
                "env": dict(os.environ),
            }
        )
        if source in self.errors:
            raise self.errors[source]
        root = Path(local_dir)
        for rel, data in REPO_FILES.items():
            if allow_patterns is None or any(fnmatch.fnmatch(rel, p) for p in allow_patterns):
                (root / rel).parent.mkdir(parents=True, exist_ok=True)
                (root / rel).write_bytes(data)
        (root / ".cache" / "huggingface").mkdir(parents=True, exist_ok=True)  # as huggingface_hub leaves it
        (root / ".cache" / "huggingface" / "config.json.metadata").write_text("etag\n")
        return str(root)

    def modelscope_module(self):
        def snapshot_download(model_id=None, revision=None, cache_dir=None, *, local_dir=None,
                              allow_patterns=None, allow_file_pattern=None, max_workers=None):
            return self._serve("modelscope", model_id, local_dir, allow_patterns, {"revision": revision})

        module = types.ModuleType("modelscope")
        module.snapshot_download = snapshot_download
        return module

    def huggingface_module(self):
        def snapshot_download(repo_id, *, repo_type=None, local_dir=None, allow_patterns=None,
                              etag_timeout=10, endpoint=None):
            return self._serve("huggingface", repo_id, local_dir, allow_patterns,
                               {"endpoint": endpoint, "etag_timeout": etag_timeout})

        module = types.ModuleType("huggingface_hub")
        module.snapshot_download = snapshot_download
        return module

    def connect(self, address, timeout=None, *args):
        self.probed.append(address)
        return types.SimpleNamespace(close=lambda: None)


@pytest.fixture
def hubs(monkeypatch):
    fake = FakeHubs()
    monkeypatch.setitem(sys.modules, "modelscope", fake.modelscope_module())
    monkeypatch.setitem(sys.modules, "huggingface_hub", fake.huggingface_module())
    monkeypatch.setattr(socket, "create_connection", fake.connect)  # the connectivity probe succeeds
    return fake


def make_folder(root: Path, files=REPO_FILES) -> Path:
    for rel, data in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
    return root


@pytest.fixture
def hash_calls(monkeypatch):
    """Count sha256_file calls (by path name) while still hashing for real."""
    calls: list[str] = []
    real = weights.sha256_file

    def counting(path):
        calls.append(Path(path).name)
        return real(path)

    monkeypatch.setattr(weights, "sha256_file", counting)
    return calls


def bump_mtime(path: Path, seconds: int = 5) -> None:
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + seconds * 1_000_000_000))


# ----------------------------------------------------------------------------------------------
# download


@pytest.mark.parametrize(
    "source, repo, page",
    [
        ("modelscope", "MiniMax-VL/VTP-Small-f16d64", "https://modelscope.cn/models/MiniMax-VL/VTP-Small-f16d64"),
        ("huggingface", "MiniMaxAI/VTP-Small-f16d64", "https://huggingface.co/MiniMaxAI/VTP-Small-f16d64"),
    ],
)
def test_download_writes_kit_files_and_manifest(cli, hubs, tmp_path, source, repo, page):
    code, out, err = cli("download", SMALL, "--source", source)
    assert code == 0, err
    folder = tmp_path / "weights" / SMALL
    (call,) = hubs.calls[source]
    assert call["repo"] == repo and Path(call["local_dir"]) == Path("weights") / SMALL
    assert not (folder / "training_state.bin").exists(), "allow_patterns must keep unneeded files on the hub"

    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["schema"] == "vtp-weights-manifest/1"
    assert (manifest["model"], manifest["source"]) == (SMALL, page)
    assert [f["path"] for f in manifest["files"]] == KIT_FILES  # no manifest.json, no .cache/
    for entry in manifest["files"]:
        data = REPO_FILES[entry["path"]]
        assert entry["size"] == len(data)
        assert entry["sha256"] == hashlib.sha256(data).hexdigest()
    assert SMALL in out and str(Path("weights") / SMALL / "manifest.json") in out
    assert weights.verify_manifest(folder)["verified"] == "sha256"


def test_download_honours_dest_and_is_case_insensitive(cli, hubs, tmp_path):
    code, _, err = cli("download", "vtp-small-f16d64", "--source", "huggingface", "--dest", tmp_path / "elsewhere")
    assert code == 0, err
    assert json.loads((tmp_path / "elsewhere" / "manifest.json").read_text())["model"] == SMALL
    assert not (tmp_path / "weights").exists()


def test_auto_falls_back_to_huggingface_when_modelscope_fails(cli, hubs, tmp_path):
    hubs.errors["modelscope"] = ConnectionError("Read timed out")
    code, _, err = cli("download", SMALL)
    assert code == 0, err
    assert len(hubs.calls["modelscope"]) == 1 and len(hubs.calls["huggingface"]) == 1
    manifest = json.loads((tmp_path / "weights" / SMALL / "manifest.json").read_text())
    assert manifest["source"] == "https://huggingface.co/MiniMaxAI/VTP-Small-f16d64"


def test_auto_skips_a_hub_client_that_is_not_installed(cli, hubs, monkeypatch):
    monkeypatch.setitem(sys.modules, "modelscope", None)
    code, _, err = cli("download", SMALL)
    assert code == 0, err
    assert len(hubs.calls["huggingface"]) == 1


@pytest.mark.parametrize("how", ["flag", "env"])
def test_hf_endpoint_is_honoured(cli, hubs, monkeypatch, tmp_path, how):
    mirror = "https://hf-mirror.com"
    args = ["download", SMALL, "--source", "huggingface"]
    if how == "flag":
        args += ["--endpoint", mirror]
    else:
        monkeypatch.setenv("HF_ENDPOINT", mirror)
    code, _, err = cli(*args)
    assert code == 0, err
    (call,) = hubs.calls["huggingface"]
    assert call["env"]["HF_ENDPOINT"] == mirror
    assert hubs.probed == [("hf-mirror.com", 443)]
    manifest = json.loads((tmp_path / "weights" / SMALL / "manifest.json").read_text())
    assert manifest["source"] == f"{mirror}/MiniMaxAI/VTP-Small-f16d64"
    if how == "flag":
        assert call["kwargs"]["endpoint"] == mirror
        assert "HF_ENDPOINT" not in os.environ, "the flag must not leak into the rest of the process"


def test_hub_timeouts_default_to_short_values_but_respect_the_user(cli, hubs, monkeypatch):
    assert cli("download", SMALL, "--source", "huggingface")[0] == 0
    env = hubs.calls["huggingface"][0]["env"]
    assert (env["HF_HUB_ETAG_TIMEOUT"], env["HF_HUB_DOWNLOAD_TIMEOUT"]) == ("10", "10")
    assert hubs.calls["huggingface"][0]["kwargs"]["etag_timeout"] == 10.0

    monkeypatch.setenv("HF_HUB_ETAG_TIMEOUT", "42")
    assert cli("download", SMALL, "--source", "huggingface")[0] == 0
    assert hubs.calls["huggingface"][1]["env"]["HF_HUB_ETAG_TIMEOUT"] == "42"
    assert hubs.calls["huggingface"][1]["kwargs"]["etag_timeout"] == 42.0

    assert cli("download", SMALL, "--source", "modelscope")[0] == 0
    assert hubs.calls["modelscope"][0]["env"]["MODELSCOPE_API_HTTP_CLIENT_CONNECT_TIMEOUT"] == "10"


def assert_manual_instructions(err: str) -> None:
    for text in (
        "weights/VTP-Small-f16d64/config.json",
        "weights/VTP-Small-f16d64/model.safetensors",
        "https://huggingface.co/MiniMaxAI/VTP-Small-f16d64",
        "https://modelscope.cn/models/MiniMax-VL/VTP-Small-f16d64",
        "python -m vtp.weights verify weights/VTP-Small-f16d64 --write-manifest",
    ):
        assert text in err, f"{text!r} missing from:\n{err}"


def test_connection_error_exits_2_fast_with_manual_instructions(cli, hubs, tmp_path):
    reason = "Failed to establish a new connection: [Errno 101] Network is unreachable"
    hubs.errors["modelscope"] = ConnectionError(reason)
    hubs.errors["huggingface"] = OSError(f"{reason}\nTraceback details the user does not need")
    t0 = time.perf_counter()
    code, out, err = cli("download", SMALL)
    assert time.perf_counter() - t0 < 2
    assert code == 2 and out == ""
    assert f"modelscope: ConnectionError: {reason}" in err
    assert f"huggingface: OSError: {reason}\n" in err and "Traceback details" not in err
    assert_manual_instructions(err)
    assert not (tmp_path / "weights" / SMALL / "manifest.json").exists()


def test_unreachable_host_fails_the_probe_without_calling_the_hub(cli, hubs, monkeypatch):
    def refuse(address, timeout=None, *args):
        raise OSError(101, "Network is unreachable")

    monkeypatch.setattr(socket, "create_connection", refuse)
    code, _, err = cli("download", SMALL, "--source", "modelscope")
    assert code == 2
    assert hubs.calls["modelscope"] == []
    assert "cannot reach www.modelscope.cn:443" in err and "Network is unreachable" in err
    assert_manual_instructions(err)


def test_probe_gives_up_after_its_timeout(cli, hubs, monkeypatch):
    release = threading.Event()
    monkeypatch.setattr(socket, "create_connection", lambda *a, **k: release.wait(10))  # a silent network
    monkeypatch.setattr(weights, "PROBE_TIMEOUT_S", 0.2)
    try:
        t0 = time.perf_counter()
        code, _, err = cli("download", SMALL, "--source", "huggingface")
        assert time.perf_counter() - t0 < 1.5
    finally:
        release.set()
    assert code == 2 and "no answer within 0.2 s" in err
    assert hubs.calls["huggingface"] == []


@pytest.mark.parametrize(
    "source, pip", [("modelscope", "pip install modelscope"), ("huggingface", "pip install huggingface_hub")]
)
def test_missing_hub_client_exits_2_with_pip_command(cli, monkeypatch, source, pip):
    monkeypatch.setitem(sys.modules, weights.MODULE_OF_SOURCE[source], None)
    code, _, err = cli("download", SMALL, "--source", source)
    assert code == 2
    assert f"{weights.MODULE_OF_SOURCE[source]} is not installed" in err and pip in err
    assert_manual_instructions(err)


def test_no_hub_client_at_all_points_to_the_download_extra(cli, monkeypatch):
    monkeypatch.setitem(sys.modules, "modelscope", None)
    monkeypatch.setitem(sys.modules, "huggingface_hub", None)
    code, _, err = cli("download", SMALL)
    assert code == 2 and "pip install -e '.[download]'" in err


def test_older_modelscope_gets_allow_file_pattern(cli, hubs, monkeypatch, tmp_path):
    seen = {}

    def snapshot_download(model_id, revision=None, cache_dir=None, local_dir=None, allow_file_pattern=None):
        seen.update(model_id=model_id, allow_file_pattern=allow_file_pattern)
        return hubs._serve("modelscope", model_id, local_dir, allow_file_pattern, {})

    monkeypatch.setattr(sys.modules["modelscope"], "snapshot_download", snapshot_download)
    code, _, err = cli("download", SMALL, "--source", "modelscope")
    assert code == 0, err
    assert seen["allow_file_pattern"] == weights.ALLOW_PATTERNS
    assert not (tmp_path / "weights" / SMALL / "training_state.bin").exists()


def test_modelscope_without_local_dir_asks_for_an_upgrade(cli, hubs, monkeypatch):
    def snapshot_download(model_id, revision=None, cache_dir=None):
        raise AssertionError("must not be called")

    monkeypatch.setattr(sys.modules["modelscope"], "snapshot_download", snapshot_download)
    code, _, err = cli("download", SMALL, "--source", "modelscope")
    assert code == 2 and "pip install -U modelscope" in err


def test_incomplete_download_is_not_recorded(cli, hubs, monkeypatch, tmp_path):
    monkeypatch.delitem(REPO_FILES, "model.safetensors")
    code, _, err = cli("download", SMALL, "--source", "huggingface")
    assert code == 2 and "lacks model.safetensors" in err
    assert not (tmp_path / "weights" / SMALL / "manifest.json").exists()


def test_unknown_model_exits_2_listing_known_models(cli, hubs):
    code, _, err = cli("download", "VTP-Tiny")
    assert code == 2 and "unknown model 'VTP-Tiny'" in err
    assert all(name in err for name in weights.KNOWN_MODELS)
    assert hubs.calls == {"modelscope": [], "huggingface": []}


def test_endpoint_with_modelscope_source_is_a_usage_error(cli, hubs):
    code, _, err = cli("download", SMALL, "--source", "modelscope", "--endpoint", "https://hf-mirror.com")
    assert code == 2 and "HF_ENDPOINT" in err


# ----------------------------------------------------------------------------------------------
# manifest and verify


@pytest.fixture
def folder(tmp_path) -> Path:
    folder = make_folder(tmp_path / "weights" / SMALL)
    weights.write_manifest(folder, source="test")
    return folder


def test_write_manifest_excludes_hidden_entries_and_leaves_no_temporary_file(tmp_path):
    folder = make_folder(tmp_path / "m")
    (folder / ".cache").mkdir()
    (folder / ".cache" / "x").write_text("hidden")
    (folder / ".DS_Store").write_text("hidden")
    path = weights.write_manifest(folder)
    manifest = json.loads(path.read_text())
    assert [f["path"] for f in manifest["files"]] == sorted(REPO_FILES)
    assert manifest["model"] == "m" and manifest["source"] is None
    hidden = sorted(p.name for p in folder.iterdir() if p.name.startswith("."))
    assert hidden == [".DS_Store", ".cache", weights.STAMP_NAME]


def test_manifest_write_is_atomic(folder, monkeypatch):
    before = (folder / "manifest.json").read_bytes()

    def crash(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError, match="disk full"):
        weights.write_manifest(folder, source="other")
    assert (folder / "manifest.json").read_bytes() == before
    assert not list(folder.glob(".manifest.json.*"))


def test_verify_ok(cli, folder):
    code, out, err = cli("verify", folder)
    assert code == 0, err
    assert f"{len(REPO_FILES)} files match manifest.json" in out


def corrupt_byte(path: Path) -> None:
    with open(path, "r+b") as f:
        first = f.read(1)
        f.seek(0)
        f.write(bytes([first[0] ^ 0xFF]))
    bump_mtime(path)


@pytest.mark.parametrize(
    "damage, problem",
    [
        (corrupt_byte, "model.safetensors: sha256 differs: expected "),
        (
            lambda p: p.write_bytes(p.read_bytes()[:-10]),
            "model.safetensors: size differs: expected 16384 bytes, actual 16374 bytes",
        ),
        (Path.unlink, "model.safetensors: missing"),
    ],
    ids=["modified-byte", "truncated", "missing"],
)
def test_verify_detects_damage(cli, folder, damage, problem):
    damage(folder / "model.safetensors")
    code, out, err = cli("verify", folder)
    assert code == 1 and out == ""
    assert problem in err and str(folder) in err
    assert "1 of 5 files do not match" in err

    with pytest.raises(weights.WeightsError) as info:
        weights.verify_manifest(folder, full="auto")
    assert info.value.folder == folder
    assert len(info.value.problems) == 1 and info.value.problems[0].startswith(problem)


def test_verify_reports_every_bad_file_with_expected_and_actual_sha(folder):
    corrupt_byte(folder / "model.safetensors")
    (folder / "README.md").unlink()
    with pytest.raises(weights.WeightsError) as info:
        weights.verify_manifest(folder)
    actual = hashlib.sha256((folder / "model.safetensors").read_bytes()).hexdigest()
    expected = hashlib.sha256(REPO_FILES["model.safetensors"]).hexdigest()
    assert info.value.problems == [
        "README.md: missing",
        f"model.safetensors: sha256 differs: expected {expected}, actual {actual}",
    ]


def test_verify_without_manifest(cli, tmp_path):
    folder = make_folder(tmp_path / SMALL)
    code, _, err = cli("verify", folder)
    assert code == 2 and "--write-manifest" in err
    assert weights.verify_manifest(folder) is None

    code, out, err = cli("verify", folder, "--write-manifest")
    assert code == 0, err
    assert (folder / "manifest.json").is_file() and "5 files" in out
    assert cli("verify", folder)[0] == 0


def test_write_manifest_refuses_an_incomplete_folder(cli, tmp_path):
    folder = make_folder(tmp_path / SMALL, {"config.json": b"{}"})
    code, _, err = cli("verify", folder, "--write-manifest")
    assert code == 2 and "lacks model.safetensors" in err
    assert f"{folder.as_posix()}/model.safetensors" in err
    assert not (folder / "manifest.json").exists()


def test_verify_missing_folder_exits_2(cli, tmp_path):
    code, _, err = cli("verify", tmp_path / "nowhere")
    assert code == 2 and "no such folder" in err


@pytest.mark.parametrize(
    "text, words",
    [
        ('{"schema": "something-else"}', "schema is 'something-else'"),
        ("{not json", "not JSON"),
        ('{"schema": "vtp-weights-manifest/1", "files": {}}', "'files' is not a list"),
        ('{"schema": "vtp-weights-manifest/1", "files": [{"path": "../x", "size": 1, "sha256": "0"}]}',
         "file path '../x' is not relative to the folder"),
    ],
    ids=["schema", "not-json", "files-not-list", "path-outside"],
)
def test_malformed_manifest_is_a_usage_error(cli, folder, text, words):
    (folder / "manifest.json").write_text(text)
    code, out, err = cli("verify", folder)
    assert code == 2 and out == ""
    assert words in err and "is not a valid weights manifest" in err and "--write-manifest" in err
    with pytest.raises(weights.ManifestError, match="is not a valid weights manifest"):
        weights.verify_manifest(folder)


def test_unreadable_file_exits_2_with_a_clear_message(cli, folder, monkeypatch):
    def refuse(path):
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(weights, "sha256_file", refuse)
    code, out, err = cli("verify", folder)
    assert code == 2 and out == ""
    assert err.startswith(f"error: cannot verify {folder}: PermissionError: ") and "Permission denied" in err
    assert "Traceback" not in err


# ----------------------------------------------------------------------------------------------
# weights files the manifest does not list

SHARDS = {
    "config.json": b'{"model_type": "vtp"}\n',
    "model.safetensors.index.json": json.dumps(
        {"weight_map": {"a": "model-00001-of-00002.safetensors", "b": "model-00002-of-00002.safetensors"}}
    ).encode(),
    "model-00001-of-00002.safetensors": b"shard one" * 100,
    "model-00002-of-00002.safetensors": b"shard two" * 100,
}
SHARD_NAMES = ["model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"]


def combined_sha256(files: dict[str, bytes]) -> str:
    """sha256sum's output over ``files`` in name order, hashed: the identity of several files."""
    text = "".join(f"{hashlib.sha256(files[n]).hexdigest()}  {n}\n" for n in sorted(files))
    return hashlib.sha256(text.encode()).hexdigest()


@pytest.fixture
def sharded(tmp_path) -> Path:
    folder = make_folder(tmp_path / "sharded", SHARDS)
    weights.write_manifest(folder)
    return folder


@pytest.mark.parametrize(
    "name", ["model.safetensors", "pytorch_model.bin", "model.safetensors.index.json", "extra.safetensors"]
)
def test_unlisted_weights_file_fails_verification_naming_it(cli, sharded, name):
    if name == "model.safetensors.index.json":  # an index the manifest does not know of, next to a listed one
        (sharded / name).unlink()
        weights.write_manifest(sharded)
        (sharded / name).write_bytes(SHARDS[name])
    else:
        (sharded / name).write_bytes(b"weights nobody verified")
    code, out, err = cli("verify", sharded)
    assert code == 1 and out == ""
    assert f"{name}: not listed in manifest.json" in err
    assert "1 weights file(s) not listed in manifest.json" in err and "Remove the unlisted" in err
    for full in (True, "auto", False):
        with pytest.raises(weights.WeightsError) as info:
            weights.verify_manifest(sharded, full=full)
        assert info.value.problems == [f"{name}: not listed in manifest.json (a weights file the manifest "
                                       "does not vouch for)"]
    assert not (sharded / weights.STAMP_NAME).exists()


def test_unlisted_and_damaged_files_are_reported_together(sharded):
    (sharded / "model.safetensors").write_bytes(b"unverified")
    (sharded / SHARD_NAMES[0]).unlink()
    with pytest.raises(weights.WeightsError) as info:
        weights.verify_manifest(sharded)
    message = str(info.value)
    assert "1 of 4 files do not match manifest.json; 1 weights file(s) not listed in manifest.json" in message
    assert info.value.problems[0] == f"{SHARD_NAMES[0]}: missing"
    assert info.value.problems[1].startswith("model.safetensors: not listed")


def test_hidden_and_non_weight_files_need_no_listing(sharded):
    (sharded / ".partial.safetensors").write_bytes(b"hidden: a download in progress")
    (sharded / "NOTES.txt").write_text("not weights")
    assert weights.verify_manifest(sharded)["files"] == 4


# ----------------------------------------------------------------------------------------------
# one definition of a complete checkpoint (vtp.layout), shared by the loader, this tool and env_check


@pytest.mark.parametrize(
    "files, kind, missing",
    [
        ({"config.json": b"{}", "model.safetensors": b"w"}, "safetensors", []),
        (SHARDS, "sharded", []),
        ({"config.json": b"{}", "pytorch_model.bin": b"w"}, "bin", []),
        ({"config.json": b"{}", "pytorch_model.bin": b"w", "model.safetensors": b"w"}, "safetensors", []),
        ({k: v for k, v in SHARDS.items() if k != SHARD_NAMES[1]}, None, [SHARD_NAMES[1]]),
        ({"config.json": b"{}", "model.safetensors.index.json": b"[]"}, None,
         ["model.safetensors.index.json (unreadable: TypeError: "]),  # then Python's own words
        ({"config.json": b"{}", "model.safetensors.index.json": b'{"weight_map": {"a": "../w.safetensors"}}'},
         None, ["model.safetensors.index.json (bad shard name '../w.safetensors')"]),
        ({"model.safetensors": b"w"}, "safetensors", ["config.json"]),
        ({"README.md": b"#"}, None, ["config.json", "model.safetensors"]),
    ],
    ids=["single", "sharded", "bin", "single-before-bin", "shard-missing", "index-unreadable", "index-escapes",
         "no-config", "empty"],
)
def test_one_definition_of_a_complete_checkpoint(tmp_path, files, kind, missing):
    from vtp import layout

    def same(got: list[str], expected: list[str]) -> bool:
        return len(got) == len(expected) and all(
            g == e or (e.endswith(": ") and g.startswith(e)) for g, e in zip(got, expected)
        )

    folder = make_folder(tmp_path / "ckpt", files)
    assert same(layout.missing_files(folder), missing)
    if kind is None:
        with pytest.raises(layout.CheckpointError) as info:
            layout.find_weights(folder)
        assert same(info.value.missing, [m for m in missing if m != "config.json"])
    else:
        assert layout.find_weights(folder)[0] == kind


def test_env_check_uses_the_loader_rule(tmp_path):
    pytest.importorskip("torch")
    from verify.env_check import ERROR, OK, WARN, check_weights

    folder = make_folder(tmp_path / "bin", {"config.json": b"{}", "pytorch_model.bin": b"w"})
    assert check_weights(folder, require=True).status == WARN  # complete, but no manifest
    weights.write_manifest(folder)
    assert check_weights(folder, require=True).status == OK
    (folder / "pytorch_model.bin").unlink()
    row = check_weights(folder, require=True)
    assert row.status == ERROR and row.detail == f"{folder} lacks model.safetensors"


@pytest.mark.parametrize("content, words", [(b"", "the file is empty (0 bytes)"),
                                            (b"not a safetensors header", "not a readable safetensors file")])
def test_env_check_refuses_weights_it_cannot_read(tmp_path, content, words):
    pytest.importorskip("torch")
    from verify.env_check import ERROR, check_weights
    from vtp import layout

    folder = make_folder(tmp_path / "st", {"config.json": b"{}", "model.safetensors": content})
    assert layout.missing_files(folder) == [] and words in layout.unreadable_files(folder)[0]
    row = check_weights(folder, require=True)
    assert row.status == ERROR and words in row.detail


def test_write_manifest_accepts_a_bin_checkpoint(cli, tmp_path):
    folder = make_folder(tmp_path / SMALL, {"config.json": b"{}", "pytorch_model.bin": b"pickled tensors"})
    code, out, err = cli("verify", folder, "--write-manifest")
    assert code == 0, err
    assert "2 files" in out and cli("verify", folder)[0] == 0


# ----------------------------------------------------------------------------------------------
# verification stamp


def test_stamp_skips_hashing_until_a_file_changes(folder, hash_calls):
    assert (folder / weights.STAMP_NAME).is_file()  # write_manifest leaves one

    summary = weights.verify_manifest(folder, full="auto")
    assert hash_calls == []
    assert summary["verified"] == "stat" and summary["files"] == len(REPO_FILES)

    bump_mtime(folder / "README.md")  # touched, content unchanged: re-hashed once, then trusted again
    assert weights.verify_manifest(folder, full="auto")["verified"] == "sha256"
    assert hash_calls == ["README.md"]
    weights.verify_manifest(folder, full="auto")
    assert hash_calls == ["README.md"]

    corrupt_byte(folder / "model.safetensors")  # same size, new content
    with pytest.raises(weights.WeightsError, match="model.safetensors: sha256 differs"):
        weights.verify_manifest(folder, full="auto")
    assert hash_calls == ["README.md", "model.safetensors"]
    assert not (folder / weights.STAMP_NAME).exists(), "a failed check must not leave a stamp vouching for the folder"


def test_full_check_always_hashes(folder, hash_calls):
    assert weights.verify_manifest(folder, full=True)["hashed"] == len(REPO_FILES)
    assert sorted(hash_calls) == sorted(Path(p).name for p in REPO_FILES)


def test_stamp_of_another_manifest_is_ignored(folder, hash_calls):
    weights.verify_manifest(folder, full="auto")
    assert hash_calls == []
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["source"] = "rewritten"
    (folder / "manifest.json").write_text(json.dumps(manifest))
    assert weights.verify_manifest(folder, full="auto")["hashed"] == len(REPO_FILES)


def test_missing_stamp_means_full_hash(folder, hash_calls):
    (folder / weights.STAMP_NAME).unlink()
    assert weights.verify_manifest(folder, full="auto")["hashed"] == len(REPO_FILES)
    assert (folder / weights.STAMP_NAME).is_file()
    assert weights.verify_manifest(folder, full="auto")["hashed"] == 0


def test_size_only_check(folder, hash_calls):
    corrupt_byte(folder / "model.safetensors")
    assert weights.verify_manifest(folder, full=False)["verified"] == "stat"
    assert hash_calls == []


# ----------------------------------------------------------------------------------------------
# weights_identity, list


def test_weights_identity_reads_the_manifest(folder, hash_calls):
    expected = hashlib.sha256(REPO_FILES["model.safetensors"]).hexdigest()
    identity = {"path": str(folder.resolve()), "files": ["model.safetensors"], "sha256": expected}
    assert weights.weights_identity(folder) == {**identity, "manifest": True}
    assert hash_calls == []  # the stamp vouches for the file as it is

    (folder / "manifest.json").unlink()
    assert weights.weights_identity(folder) == {**identity, "manifest": False}
    assert hash_calls == ["model.safetensors"]


def test_weights_identity_hashes_what_the_stamp_does_not_vouch_for(folder, hash_calls):
    path = folder / "model.safetensors"
    bump_mtime(path)  # touched since the last check: hashed again, still matches the manifest
    assert weights.weights_identity(folder)["manifest"] is True
    assert hash_calls == ["model.safetensors"]

    corrupt_byte(path)  # changed, same size: the identity is that of the bytes, not of the manifest
    identity = weights.weights_identity(folder)
    assert identity["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert identity["manifest"] is False


def test_weights_identity_of_a_bin_checkpoint(tmp_path):
    data = b"pickled tensors" * 10
    folder = make_folder(tmp_path / "bin", {"config.json": b"{}", "pytorch_model.bin": data})
    identity = weights.weights_identity(folder)
    assert identity == {"path": str(folder.resolve()), "files": ["pytorch_model.bin"],
                        "sha256": hashlib.sha256(data).hexdigest(), "manifest": False}
    weights.write_manifest(folder)
    assert weights.weights_identity(folder) == {**identity, "manifest": True}


def test_weights_identity_describes_exactly_the_files_given(sharded, monkeypatch):
    expected = combined_sha256({n: SHARDS[n] for n in SHARD_NAMES})
    as_loaded = [str(sharded / n) for n in reversed(SHARD_NAMES)]  # model.checkpoint_files: paths, any order
    identity = {"path": str(sharded.resolve()), "files": SHARD_NAMES, "sha256": expected, "manifest": True}
    assert weights.weights_identity(sharded, files=as_loaded) == identity
    assert weights.weights_identity(sharded, files=SHARD_NAMES) == identity  # names relative to the folder
    monkeypatch.chdir(sharded.parent)
    assert weights.weights_identity("sharded", files=[f"sharded/{n}" for n in SHARD_NAMES]) == {
        **identity, "path": str(sharded.resolve())}

    one = weights.weights_identity(sharded, files=[SHARD_NAMES[0]])
    assert one["files"] == [SHARD_NAMES[0]] and one["sha256"] == hashlib.sha256(SHARDS[SHARD_NAMES[0]]).hexdigest()


def test_weights_identity_reports_the_unlisted_file_the_loader_would_read(sharded):
    (sharded / "model.safetensors").write_bytes(b"weights nobody verified")
    identity = weights.weights_identity(sharded)  # the loader's rule: model.safetensors comes first
    assert identity["files"] == ["model.safetensors"] and identity["manifest"] is False
    assert identity["sha256"] == hashlib.sha256(b"weights nobody verified").hexdigest()
    assert weights.weights_identity(sharded, files=SHARD_NAMES)["manifest"] is True


def test_weights_identity_errors(tmp_path, sharded):
    from vtp.layout import CheckpointError

    with pytest.raises(ValueError, match="is not inside"):
        weights.weights_identity(sharded, files=[str(tmp_path / "elsewhere.safetensors")])
    with pytest.raises(FileNotFoundError, match="model-00009"):
        weights.weights_identity(sharded, files=["model-00009-of-00009.safetensors"])
    empty = make_folder(tmp_path / "empty", {"config.json": b"{}"})
    with pytest.raises(CheckpointError, match="no weights found"):
        weights.weights_identity(empty)


def test_list_shows_presence_and_manifest(cli, tmp_path):
    weights.write_manifest(make_folder(tmp_path / "weights" / SMALL))
    make_folder(tmp_path / "weights" / "VTP-Base-f16d64", {"config.json": b"{}"})
    code, out, _ = cli("list")
    assert code == 0
    rows = {line.split()[0]: line.split()[1:] for line in out.splitlines()[1:]}
    assert rows == {
        SMALL: ["yes", "yes", f"weights/{SMALL}"],
        "VTP-Base-f16d64": ["partial", "no", "weights/VTP-Base-f16d64"],
        "VTP-Large-f16d64": ["no", "no", "weights/VTP-Large-f16d64"],
    }
    code, out, _ = cli("list", "--root", tmp_path / "none")
    assert code == 0 and [line.split()[1:3] for line in out.splitlines()[1:]] == [["no", "no"]] * 3


# ----------------------------------------------------------------------------------------------
# atomic writes (vtp.io_utils: the manifest, the stamp, reports, checkpoints and PNGs all use it)


@pytest.fixture
def umask():
    """Set the process umask for one test; restored afterwards."""
    saved = os.umask(0o022)
    os.umask(saved)
    yield os.umask
    os.umask(saved)


@pytest.mark.parametrize("mask", [0o022, 0o077, 0o002])
def test_atomic_writes_follow_the_umask(tmp_path, umask, mask):
    from vtp import io_utils

    umask(mask)
    written = [
        io_utils.atomic_write_bytes(tmp_path / "a.bin", b"x"),
        io_utils.atomic_write_json(tmp_path / "b.json", {"a": 1}),
        weights.write_manifest(make_folder(tmp_path / "w")),
        tmp_path / "w" / weights.STAMP_NAME,
    ]
    for path in written:
        assert path.stat().st_mode & 0o777 == 0o666 & ~mask, path


def hidden_temporaries(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".tmp"))


def test_atomic_path_gives_each_writer_its_own_temporary_file(tmp_path):
    from vtp.io_utils import atomic_path

    target = tmp_path / "out.json"
    with atomic_path(target) as first, atomic_path(target) as second:  # two writers at once
        assert first != second and first.parent == second.parent == tmp_path
        assert first.name.startswith(".out.json.") and first.name.endswith(".tmp")
        assert first.exists() and first.stat().st_size == 0
        first.write_text("first")
        second.write_text("second")
    assert target.read_text() == "first"  # the last to finish wins; neither write is lost half-way
    assert hidden_temporaries(tmp_path) == []

    with atomic_path(target) as third:
        third.write_text("third")
    assert target.read_text() == "third" and third != first and hidden_temporaries(tmp_path) == []


def test_atomic_path_removes_the_temporary_file_on_any_failure(tmp_path, monkeypatch):
    from vtp import io_utils

    target = io_utils.atomic_write_text(tmp_path / "keep.txt", "old")
    with pytest.raises(KeyError):
        with io_utils.atomic_path(target) as tmp:
            tmp.write_text("half")
            raise KeyError("writer failed")

    def fail(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(io_utils.os, "replace", fail)
    with pytest.raises(OSError, match="disk full"):
        io_utils.atomic_write_text(target, "new")
    assert target.read_text() == "old" and hidden_temporaries(tmp_path) == []

"""Shared fixtures: the parity fixture folder, tiny configs and tiny synthetic models (CPU, seconds)."""

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def fixtures_dir() -> Path:
    """`../shared/fixtures/vtp-parity` next to the repo; VTP_FIXTURES overrides."""
    env = os.environ.get("VTP_FIXTURES")
    return Path(env) if env else REPO.parent / "shared" / "fixtures" / "vtp-parity"


@pytest.fixture(scope="session")
def parity_dir() -> Path:
    d = fixtures_dir()
    if not (d / "default" / "model.safetensors").is_file():
        pytest.skip(f"parity fixtures not found at {d} (set VTP_FIXTURES to the vtp-parity folder)")
    return d


# A tiny config: widths 32 with 2 heads (head dim 16, a multiple of 4 as 2-D RoPE needs); the vocabulary
# keeps its real size so that tokenizer ids stay valid.
TINY = dict(
    vision_embed_dim=32, vision_depth=2, vision_num_heads=2, vision_feature_bottleneck=8,
    decoder_embed_dim=32, decoder_depth=2, decoder_num_heads=2,
    text_embed_dim=32, text_depth=2, text_num_heads=2, text_vocab_size=49408,
)


def tiny_config(**overrides):
    from vtp import VTPConfig

    data = dict(TINY)
    data.update(overrides)
    return VTPConfig.from_dict(data, source="tiny test config")


@pytest.fixture
def make_tiny():
    from vtp import VTPModel

    def make(seed=0, **overrides):
        return VTPModel.synthetic(tiny_config(**overrides), seed=seed)

    return make


@pytest.fixture(scope="session")
def tiny_model():
    from vtp import VTPModel

    return VTPModel.synthetic(tiny_config(), seed=0)


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory):
    """A tiny synthetic checkpoint folder in the official layout (config.json + model.safetensors)."""
    from vtp import VTPModel

    folder = tmp_path_factory.mktemp("tiny_checkpoint")
    VTPModel.synthetic(tiny_config(), seed=0).save_pretrained(folder)
    return folder


def one_shape_cases(path: Path, repeat: bool = True) -> Path:
    """The smallest cases file the harness runs: every task at 1x32x32 and two prompts, one warm call."""
    path.write_text("schema: vtp-cases/1\nversion: 1\nprompt_sets:\n  d: ['a dog', 'a cat']\nprofiles:\n"
                    "  default:\n    images: ['1x32x32']\n    text: [d]\n    zero_shot_prompts: d\n"
                    f"    timing: ['1x32x32']\n    warmup: 0\n    iters: 1\n    repeat: {str(repeat).lower()}\n")
    return path

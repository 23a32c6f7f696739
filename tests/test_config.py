"""config.toml → frozen dataclasses: defaults, types, unknown keys."""
import dataclasses

import pytest

from kbgate.config import Config, load_config
from kbgate.errors import ConfigError


def test_repository_config_loads_and_is_frozen(repo_root):
    cfg = load_config(repo_root / "config.toml")
    assert cfg.model.source == "bundled" and cfg.retrieval.k == 5
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.gate.negative_threshold = 0.1


def test_missing_file_gives_defaults(tmp_path):
    cfg = load_config(tmp_path / "none.toml")
    assert cfg == Config(root=str(tmp_path))


@pytest.mark.parametrize("toml,needle", [
    ("[gate]\nnegative_threshold = 'high'\n", "[gate] negative_threshold must be float"),
    ("[server]\nport = 80.5\n", "[server] port must be int"),
    ("[server]\nprot = 80\n", "unknown key [server] prot"),
    ("[serve]\nport = 80\n", "unknown section [serve]"),
    ("[slack]\nallow_http = 1\n", "[slack] allow_http must be bool"),
    ("[model\nsource=1", "not valid TOML"),
])
def test_bad_config_names_the_key(tmp_path, toml, needle):
    path = tmp_path / "config.toml"
    path.write_text(toml, encoding="utf-8")
    with pytest.raises(ConfigError, match=None) as e:
        load_config(path)
    assert needle in str(e.value)


def test_int_is_accepted_for_float_and_paths_resolve_against_the_file(tmp_path):
    (tmp_path / "config.toml").write_text("[gate]\nnegative_threshold = 1\n[index]\ndir = 'idx'\n")
    cfg = load_config(tmp_path / "config.toml")
    assert cfg.gate.negative_threshold == 1.0
    assert cfg.path(cfg.index.dir) == tmp_path / "idx"


def test_every_field_has_help():
    for section in dataclasses.fields(Config):
        if section.name == "root":
            continue
        for f in dataclasses.fields(section.type if isinstance(section.type, type) else
                                    type(getattr(Config(), section.name))):
            assert f.metadata.get("help"), f"{section.name}.{f.name} has no help"

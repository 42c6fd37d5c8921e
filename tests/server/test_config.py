"""`ServerConfig.from_file`: TOML (top level or `[serve]`) and JSON, dashes or underscores, overrides win, and an
unknown key or file type is an error naming it."""

from __future__ import annotations

import json

import pytest

from xpullm.server import ServerConfig


def test_toml_and_json_give_the_same_config(tmp_path) -> None:
    toml = tmp_path / "serve.toml"
    toml.write_text('[serve]\nport = 9001\nmodel-name = "tiny"\napi_key = "k"\nmax_queue = 3\n')
    flat = tmp_path / "flat.toml"
    flat.write_text('port = 9001\nmodel_name = "tiny"\napi-key = "k"\nmax-queue = 3\n')
    js = tmp_path / "serve.json"
    js.write_text(json.dumps({"port": 9001, "model_name": "tiny", "api_key": "k", "max_queue": 3}))
    want = ServerConfig(port=9001, model_name="tiny", api_key="k", max_queue=3)
    assert ServerConfig.from_file(toml) == ServerConfig.from_file(flat) == ServerConfig.from_file(js) == want
    # Command-line options win over the file; options not given (None) leave the file's value.
    assert ServerConfig.from_file(toml, port=9002, api_key=None) == ServerConfig(
        port=9002, model_name="tiny", api_key="k", max_queue=3
    )
    assert want.host == "127.0.0.1"  # loopback unless told otherwise


def test_bad_config_files_name_the_problem(tmp_path) -> None:
    typo = tmp_path / "serve.toml"
    typo.write_text("prot = 9001\n")
    with pytest.raises(ValueError, match="unknown key 'prot'"):
        ServerConfig.from_file(typo)
    yaml = tmp_path / "serve.yaml"
    yaml.write_text("port: 1\n")
    with pytest.raises(ValueError, match=r"expected a \.toml or \.json"):
        ServerConfig.from_file(yaml)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        ServerConfig.from_file(tmp_path / "missing.toml")

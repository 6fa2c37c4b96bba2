"""Properties of the config loader (Hypothesis; profiles in conftest.py): whatever ``key=value`` overrides and YAML
presets it is given, it answers with a config that reads back the same from the config.yaml a run writes, or with
one :class:`ConfigError` line; never another exception."""

from __future__ import annotations

import contextlib
import io
import tempfile
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import example, given
from hypothesis import strategies as st

from cifarlab import train
from cifarlab.config import Config, ConfigError, flatten, load_config, to_dict, to_yaml

pytestmark = pytest.mark.unit

KEYS = sorted(flatten(to_dict(Config())))
"""Every dotted key of the schema (optim.lr, logging.wandb.tags, ...)."""
SECTIONS = sorted({key.rsplit(".", 1)[0] for key in KEYS})

# Text that YAML, OmegaConf and a shell treat specially: quotes, brackets, flow and block indicators, tags, anchors,
# interpolations (escaped or not, calling a resolver or not), YAML 1.1's booleans and null, numbers that are not.
TOKENS = ["'", '"', "[", "]", "{", "}", ":", ": ", ",", "#", " #", "&a", "*a", "!", "!!str ", "!!python/name:os.system",
          "|", ">", "-", "- ", "? ", "%", "@", "`", "\\", "\\${", "\\${x}", "\\\\${optim.lr}", "${", "${optim.lr}",
          "${oc.env:HOME}", "${oc.decode:1}", "}", "=", "null", "~", "no", "yes", "on", "off", "true", "False", "1e3",
          "1.0e-3", ".inf", "-.inf", ".nan", "0x10", "0o7", "1_000", "2**32", "4294967296", "-1", "0", "1", "0.5", "é",
          "猫", "\u2028", "\t", " ", "\n"]
values = st.lists(st.one_of(st.sampled_from(TOKENS), st.text(max_size=4)), max_size=5).map("".join)
keys = st.one_of(st.sampled_from(KEYS), st.sampled_from(SECTIONS), st.sampled_from(KEYS).map(lambda k: k + ".x"),
                 st.text(max_size=8))
overrides = st.lists(st.one_of(st.builds(lambda k, v: f"{k}={v}", keys, values), values), max_size=4)


def reads_back(config: Config) -> None:
    """load -> config.yaml -> load is the identity."""
    with tempfile.TemporaryDirectory() as folder:
        saved = Path(folder) / "config.yaml"
        saved.write_text(to_yaml(config))
        again = load_config(str(saved))
    assert to_dict(again) == to_dict(config)


def loads_or_refuses_in_one_line(config_file: str | None, items: list[str]) -> Config | None:
    try:
        config = load_config(config_file, items)
    except ConfigError as error:
        assert len(str(error).splitlines()) == 1 and str(error).strip(), repr(str(error))
        return None
    reads_back(config)
    return config


@given(overrides)
@example(["model.name=\""])  # issue 33: a shell-quoting slip
@example(["train.mixed_precision={a:"])
@example(["model.bn_group_size=[1,2"])
@example(["data.std.x="])  # found: a key below a list was OmegaConf's TypeError, a traceback
@example(["data.mean.0=0.5"])
@example(["[=1"])  # found: OmegaConf's key parser raised an IndexError, a traceback
@example(["logging.wandb.notes=\\${x}"])  # found: config.yaml held ${x}, which did not load again
@example(["train.run_name=a\\${optim.lr}"])  # found: ... or read back as another value (a0.05)
@example(["model=-", "model.bn_group_size="])  # found: a ValueError (a key below the list the first one set)
@example(["model=-", "model.bn_group_size.x="])  # found: a TypeError
def test_overrides_load_and_read_back_or_are_refused_in_one_line(items: list[str]) -> None:
    loads_or_refuses_in_one_line(None, items)


# A preset: the schema's sections and keys (and some that are not), with values of every YAML type.
leaves = st.one_of(st.none(), st.booleans(), st.integers(min_value=-2**70, max_value=2**70), st.floats(),
                   st.text(max_size=6), values, st.lists(st.one_of(st.floats(), st.text(max_size=3)), max_size=4))
nested = st.recursive(leaves, lambda inner: st.dictionaries(st.sampled_from(["lr", "name", "x", "wandb", "tags"]),
                                                           inner, max_size=3), max_leaves=6)


def as_tree(pairs: dict[str, Any]) -> dict[str, Any]:
    """Dotted keys as nested mappings (a key below another key's value replaces that value)."""
    tree: dict[str, Any] = {}
    for key, value in pairs.items():
        node = tree
        *parents, last = key.split(".")
        for part in parents:
            node = node[part] if isinstance(node.get(part), dict) else node.setdefault(part, {})
            if not isinstance(node, dict):
                break
        else:
            node[last] = value
    return tree


presets = st.dictionaries(st.one_of(st.sampled_from(KEYS), st.sampled_from(SECTIONS), st.text(max_size=6)),
                          st.one_of(leaves, nested), max_size=6).map(as_tree)


@given(presets, overrides)
@example({"train": {"run_name": "${oc.env:HOME}\u2028"}}, [])  # found: the refusal printed the text's line break
def test_presets_load_and_read_back_or_are_refused_in_one_line(preset: dict[str, Any], items: list[str]) -> None:
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "preset.yaml"
        path.write_text(yaml.safe_dump(preset, allow_unicode=True))
        loads_or_refuses_in_one_line(str(path), items)


@given(st.text(max_size=60) | values)
@example("train: {epochs: 2\n")
@example("0")  # found: a preset holding a scalar was OmegaConf's IOError, a traceback
@example("!!set {a}")
@example("'NO'")  # found: OmegaConf read the string again as YAML (false) and failed its own assertion
@example("- a\n")  # found: a list read as "[train.mixed_precision]: Index 'train' (str) is not an int"
@example("optim:\n  \"a\\nb\": 1\n")  # found: a key with a line break made the message two lines
def test_preset_text_loads_or_is_refused_in_one_line(text: str) -> None:
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "preset.yaml"
        path.write_text(text, errors="surrogatepass")
        loads_or_refuses_in_one_line(str(path), [])


@given(overrides.map(lambda items: [item for item in items if not item.startswith("-")]))  # options: argparse's
@example(["model.name=\""])
def test_the_trainer_prints_the_config_or_one_error_line_with_exit_2(items: list[str]) -> None:
    """``python -m cifarlab.train --print-config ITEMS``, through its main(): what --print-config prints is the
    config the loader gives, and a refusal is one ``cifarlab: error:`` line and exit 2."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = train.main(["--print-config", *items])
    if code == 0:
        assert out.getvalue() == to_yaml(load_config(None, items)) and not err.getvalue()
    else:
        assert code == 2 and not out.getvalue()
        assert err.getvalue().startswith("cifarlab: error: ") and len(err.getvalue().splitlines()) == 1, err.getvalue()


# --- what the properties found, as plain regressions -----------------------------------------------------------------


@pytest.mark.parametrize(("text", "expected"), [
    ("0", "not a YAML mapping of config sections (data:, model:, optim:, train:, checkpoint:, logging:)"),
    ("- a\n", "not a YAML mapping of config sections (data:, model:, optim:, train:, checkpoint:, logging:)"),
])
def test_a_preset_that_is_no_mapping_is_refused_naming_the_sections(text: str, expected: str, tmp_path: Path) -> None:
    preset = tmp_path / "preset.yaml"
    preset.write_text(text)
    with pytest.raises(ConfigError) as raised:
        load_config(str(preset))
    assert str(raised.value) == f"--config {preset}: {expected}"


def test_a_key_below_a_list_is_refused_naming_the_list() -> None:
    with pytest.raises(ConfigError) as raised:
        load_config(None, ["optim.lr=0.1", "data.mean.0=0.5"])
    assert str(raised.value) == "data.mean.0: data.mean is a list, set whole (e.g. data.mean=[...]), not item by item"


def test_a_key_with_a_line_break_is_named_escaped_on_one_line(tmp_path: Path) -> None:
    preset = tmp_path / "preset.yaml"
    preset.write_text('optim:\n  "a\\nb": 1\n')
    with pytest.raises(ConfigError) as raised:
        load_config(str(preset))
    assert str(raised.value).startswith("unknown config key 'optim.a\\nb'; keys in 'optim': name, lr, momentum,")


def test_text_that_reads_as_an_interpolation_is_saved_escaped_and_reads_back(tmp_path: Path) -> None:
    config = load_config(None, ["logging.wandb.notes=\\${x}", "train.run_name=a\\\\\\${optim.lr}"])
    assert (config.logging.wandb.notes, config.train.run_name) == ("${x}", "a\\${optim.lr}")
    saved = tmp_path / "config.yaml"
    saved.write_text(to_yaml(config))
    assert to_dict(load_config(str(saved))) == to_dict(config)
